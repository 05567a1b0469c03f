// Per repetition, signal group and variable: the sums over draws of the centred signal by
// category, bins[l*K + j] = sum_{i : z_il = j} D_i, the total sum_i D_i, and (group 0) the
// category counts n_lj. The host finishes each cell's estimate in f64 from these:
// scale (bins - p total + k_b (n - S p)) + c (src/gpu/generic.rs). CPU twin:
// `estimators::weighted_scores`, which is bins - p total.
//
// One thread per (repetition, group, variable), variable fastest; it walks the S draws once
// per 16 categories, with compensated (Kahan) sums in registers, in draw order.
// Output: sums[(rep * G + g) * (L*K + 1) + l*K + j], the total at L*K; counts[rep * L*K + l*K + j].

@group(0) @binding(0) var<uniform> params: GenericParams;
@group(0) @binding(1) var<storage, read> signals: array<f32>;
@group(0) @binding(2) var<storage, read> z: array<u32>;
@group(0) @binding(3) var<storage, read_write> sums: array<f32>;
@group(0) @binding(4) var<storage, read_write> counts: array<u32>;

const BINS: u32 = 16u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let index = flat_index(gid);
    let l = params.l;
    let k = params.k;
    let n_groups = params.n_groups;
    if index >= params.chunk_reps * n_groups * l {
        return;
    }
    let v = index % l;
    let g = (index / l) % n_groups;
    let rep_local = index / (l * n_groups);
    let s = params.samples;
    let width = l * k + 1u;
    let out = (rep_local * n_groups + g) * width;
    let d_at = (rep_local * n_groups + g) * s;
    let z_at = rep_local * s * l + v;
    for (var first = 0u; first < k; first += BINS) {
        var bins: array<f32, 16>;
        var comp: array<f32, 16>;
        var n: array<u32, 16>;
        var total = 0.0;
        var total_comp = 0.0;
        for (var i = 0u; i < s; i++) {
            let c = z[z_at + i * l];
            let d = signals[d_at + i];
            if first == 0u {
                let y = d - total_comp;
                let t = total + y;
                total_comp = (t - total) - y;
                total = t;
            }
            if c >= first && c < first + BINS {
                let q = c - first;
                let y = d - comp[q];
                let t = bins[q] + y;
                comp[q] = (t - bins[q]) - y;
                bins[q] = t;
                n[q] += 1u;
            }
        }
        let last = min(BINS, k - first);
        for (var q = 0u; q < last; q++) {
            sums[out + v * k + first + q] = bins[q] - comp[q];
            if g == 0u {
                counts[rep_local * (l * k) + v * k + first + q] = n[q];
            }
        }
        if first == 0u && v == 0u {
            sums[out + l * k] = total - total_comp;
        }
    }
}
