// Joint categorical draws of L variables: for every repetition of a chunk, the categories
// z[i * L + l] of its S draws, draw-major. CPU twin: `draws::draw_joint_categories`.
// Variable l of draw i reads word i % 4 of the Philox block at counter
// [i / 4, rep, CATEGORICAL << 16 | l, point]; its category is #{j : u > S_lj}, clamped to
// the first and the last category with nonzero probability (src/draws.rs), so the
// categories are the CPU's bit for bit.
//
// One thread per (repetition, Philox block, variable), variable fastest.

@group(0) @binding(0) var<uniform> params: GenericParams;
// Per variable l, K + 1 numbers: the K - 1 thresholds S_lj, then the first and the last
// nonzero category.
@group(0) @binding(1) var<storage, read> thresholds: array<u32>;
@group(0) @binding(2) var<storage, read_write> z: array<u32>;

fn category(word: u32, base: u32, k: u32) -> u32 {
    var above = 0u;
    for (var j = 0u; j + 1u < k; j++) {
        above += select(0u, 1u, word > thresholds[base + j]);
    }
    return clamp(above, thresholds[base + k - 1u], thresholds[base + k]);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let index = flat_index(gid);
    let l = params.l;
    if index >= params.chunk_reps * params.blocks * l {
        return;
    }
    let v = index % l;
    let rest = index / l;
    let block = rest % params.blocks;
    let rep_local = rest / params.blocks;
    let w = philox4x32_10(philox_counter(block, params.rep_begin + rep_local, STREAM_CATEGORICAL, v, params.point), params.key);
    let base = v * (params.k + 1u);
    for (var q = 0u; q < 4u; q++) {
        let i = block * 4u + q;
        if i < params.samples {
            z[(rep_local * params.samples + i) * l + v] = category(w[q], base, params.k);
        }
    }
}
