// The Gumbel draws of the relaxed family: for every repetition of a chunk, the sum over its
// draws [draw_begin, draw_end) of every relaxed cell's per-draw estimate, added to `sums`
// (n_cells x 16 per repetition). CPU twin: `draws::RelaxedTable::draw` and each relaxed
// estimator's `add_relaxed_draw` (as `relaxed_repetition` in src/engine.rs runs them).
//
// Per draw: G_c = -log(-log u) from word c % 4 of Philox block (draw, lane c / 4) on the
// Gumbel stream; h = (a - max a) + G; z = argmax h (first maximum); y = softmax(h / tau) in
// f32 exactly as the CPU computes it. The losses are quadratic forms, so
// v = grad f(y) = 2 alpha y + beta serves every loss (v = 2 alpha e_z + beta straight
// through), and the estimate is (1/tau) y_j (v_j - y.v), computed around the argmax z so
// that f32 keeps the digits the CPU's f64 keeps.
//
// threads_per_rep (T) threads share one repetition (draws lane, lane + T, ...); their
// private sums are added in shared memory, cell by cell.
//
// The loops over categories and cells run to the runtime K and cell count; the unrolled
// variant (src/gpu/relaxed.rs `RelaxedDrawLoops::Unrolled`) rewrites each to the constant
// bound MAX_K or MAX_RELAXED_CELLS with a uniform `break` at the runtime one, so that a
// compiler can unroll them and keep `acc`, `h`, `y` and `diff` in registers.

@group(0) @binding(0) var<uniform> params: SweepParams;
@group(0) @binding(1) var<storage, read> table: PointTable;
@group(0) @binding(2) var<storage, read> cells: array<RelaxedCell>;
@group(0) @binding(3) var<storage, read_write> sums: array<f32>;


const RELAXED_WG: u32 = 128u;
// At most this many relaxed cells (3 losses x 2 estimators).
const MAX_RELAXED_CELLS: u32 = 6u;

var<workgroup> lane_sums: array<f32, 2048>;

@compute @workgroup_size(128)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let k = params.k;
    let lanes = params.threads_per_rep;
    let lane = lid % lanes;
    let rep_local = wid.x * (RELAXED_WG / lanes) + lid / lanes;
    let in_chunk = rep_local < params.chunk_reps;
    // tau = 1: the race form (see `exponential` in common.wgsl).
    let race = params.inv_tau == 1.0;
    var acc: array<f32, 96>;
    if in_chunk {
        let rep = params.rep_begin + rep_local;
        let n_draws = params.draw_end - params.draw_begin;
        var i = lane;
        loop {
            if i >= n_draws {
                break;
            }
            let draw = params.draw_begin + i;
            var h: array<f32, 16>;
            var words: vec4<u32>;
            var z = 0u;
            var hmax = -3.0e38;
            for (var c = 0u; c < k; c++) {
                if c % 4u == 0u {
                    words = philox4x32_10(philox_counter(draw, rep, STREAM_GUMBEL, c / 4u, params.point), params.key);
                }
                if race {
                    h[c] = exp(table.shifted_logits[c]) / exponential(words[c % 4u]);
                } else {
                    h[c] = table.shifted_logits[c] + gumbel(words[c % 4u]);
                }
                if h[c] > hmax {
                    hmax = h[c];
                    z = c;
                }
            }
            var total = 0.0;
            for (var c = 0u; c < k; c++) {
                if !race {
                    h[c] = exp((h[c] - hmax) * params.inv_tau);
                }
                total += h[c];
            }
            let inv = 1.0 / total;
            var y: array<f32, 16>;
            // y_z kept aside, so that no array is indexed by the draw's category.
            var y_z = 0.0;
            for (var c = 0u; c < k; c++) {
                y[c] = h[c] * inv;
                if c == z {
                    y_z = y[c];
                }
            }
            // v_j - y.v without cancellation where y_z ~ 1: with d_k = v_k - v_z,
            // v_j - y.v = d_j + v_z (1 - sum y) - sum_k y_k d_k, and 1 - y_z is exact.
            var others = 0.0;
            for (var c = 0u; c < k; c++) {
                if c != z {
                    others += y[c];
                }
            }
            let one_minus_total = (1.0 - y_z) - others;
            for (var cell = 0u; cell < params.n_cells; cell++) {
                let alpha2 = 2.0 * cells[cell].alpha;
                let soft = cells[cell].kind == RELAXED_SOFT;
                let beta_z = cells[cell].beta[z];
                var diff: array<f32, 16>;
                var spread = 0.0;
                for (var j = 0u; j < k; j++) {
                    // The vertex part of v_j - v_z: 2 alpha (y_j - y_z), or 2 alpha (e_z,j - 1).
                    var vertex = -1.0;
                    if soft {
                        vertex = y[j] - y_z;
                    } else if j == z {
                        vertex = 0.0;
                    }
                    diff[j] = alpha2 * vertex + (cells[cell].beta[j] - beta_z);
                    spread += y[j] * diff[j];
                }
                var vertex_z = 1.0;
                if soft {
                    vertex_z = y_z;
                }
                let v_z = alpha2 * vertex_z + beta_z;
                let shift = v_z * one_minus_total - spread;
                for (var j = 0u; j < k; j++) {
                    acc[cell * MAX_K + j] += cells[cell].inv_tau * y[j] * (diff[j] + shift);
                }
            }
            // i + lanes could pass 2^32 only after the last draw.
            if n_draws - i <= lanes {
                break;
            }
            i += lanes;
        }
    }
    for (var cell = 0u; cell < params.n_cells; cell++) {
        for (var j = 0u; j < k; j++) {
            lane_sums[lid * MAX_K + j] = acc[cell * MAX_K + j];
        }
        workgroupBarrier();
        for (var stride = lanes / 2u; stride > 0u; stride >>= 1u) {
            if lane < stride {
                for (var j = 0u; j < k; j++) {
                    lane_sums[lid * MAX_K + j] += lane_sums[(lid + stride) * MAX_K + j];
                }
            }
            workgroupBarrier();
        }
        if in_chunk && lane == 0u {
            let base = (rep_local * params.n_cells + cell) * MAX_K;
            for (var j = 0u; j < k; j++) {
                sums[base + j] += lane_sums[lid * MAX_K + j];
            }
        }
        workgroupBarrier();
    }
}
