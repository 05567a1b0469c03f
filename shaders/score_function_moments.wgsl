// The score-function estimates and their moments: one thread per repetition turns the
// repetition's category counts into every score-function cell's S-draw estimate and the
// workgroup reduces them (moments.wgsl). CPU twin: the `Family::ScoreFunction` arm of
// `cpu_point` in src/engine.rs with each estimator's `estimate_from_counts`.
//
// Every score-function estimate has the form g_hat_j = scale sum_k n_k (L_k - b)(e_k - p)_j
// + c_j. With delta_k = n_k - S p_k, a centred signal Lt = L - p.L and A = delta.Lt it is
// g_hat_j - g_j = scale (delta_j Lt_j - p_j A - b' delta_j) + kappa_j, where the host folds
// the deterministic part into kappa and b' = b - p.L (src/gpu/params.rs). Computing the
// deviation this way keeps f32's digits for low-variance estimators.
//
// Baselines: none (b = 0); leave-one-out (b = mean of the S draws' losses, b' = A / S); or a
// moving average of earlier repetitions' A / S (decay 0.9, bias-corrected, over the last
// MOMENTS_WG repetitions: older ones weigh below 0.9^256 < 2e-12). The window reaches into
// the previous chunk through `counts_history` (its last MOMENTS_WG repetitions' counts).
//
// Hard-draw cells (CELL_HARD_DRAW: st, reinmax; CPU twin their `estimate_from_counts`): the
// estimate is (1/S) sum_c n_c G_c with G_c = g(e_c), so g_hat_j - g_j =
// scale sum_c delta_c G_cj + kappa_j, kappa = sum_c p_c G_c - g (src/gpu/params.rs).

@group(0) @binding(0) var<uniform> params: SweepParams;
@group(0) @binding(1) var<storage, read> table: PointTable;
@group(0) @binding(2) var<storage, read> cells: array<ScoreCell>;
@group(0) @binding(3) var<storage, read> counts: array<u32>;
@group(0) @binding(4) var<storage, read> counts_history: array<u32>;
@group(0) @binding(5) var<storage, read_write> partials: array<PartialMoments>;


const EMA_DECAY: f32 = 0.9;

// Signals of the window: entry i is repetition (group start - MOMENTS_WG + i) of the chunk.
var<workgroup> window: array<f32, 512>;

// delta_k = n_k - S p_k of chunk repetition `rel` (negative: the previous chunk's last ones).
fn deltas(rel: i32) -> array<f32, 16> {
    var out: array<f32, 16>;
    for (var j = 0u; j < params.k; j++) {
        var n: u32;
        if rel >= 0 {
            n = counts[u32(rel) * MAX_K + j];
        } else {
            n = counts_history[u32(rel + i32(MOMENTS_WG)) * MAX_K + j];
        }
        // Exact when n is near S p_j (Sterbenz), then the remainder.
        out[j] = (f32(n) - table.expected_hi[j]) - table.expected_lo[j];
    }
    return out;
}

fn signal(delta: array<f32, 16>, cell: u32) -> f32 {
    var a = 0.0;
    for (var j = 0u; j < params.k; j++) {
        a += delta[j] * cells[cell].centred_signal[j];
    }
    return a;
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let k = params.k;
    let group_start = wid.x * MOMENTS_WG;
    let rep_local = group_start + lid;
    let in_chunk = rep_local < params.chunk_reps;
    // The repetition's index within the sweep point (meaningful where in_chunk).
    let rep = params.rep_begin + rep_local;
    var delta: array<f32, 16>;
    if in_chunk {
        delta = deltas(i32(rep_local));
    }
    for (var cell = 0u; cell < params.n_cells; cell++) {
        let a = signal(delta, cell);
        let baseline = cells[cell].baseline;
        var b_shift = -cells[cell].mean_signal;
        if baseline == BASELINE_LEAVE_ONE_OUT {
            b_shift = a / params.samples_f;
        }
        if baseline == BASELINE_MOVING_AVERAGE {
            for (var i = lid; i < 2u * MOMENTS_WG; i += MOMENTS_WG) {
                let rel = i32(group_start + i) - i32(MOMENTS_WG);
                var s = 0.0;
                // Only repetitions of this point: the global index rep_begin + rel >= 0.
                let in_point = rel >= 0 || params.rep_begin >= u32(-rel);
                if rel < i32(params.chunk_reps) && in_point {
                    s = signal(deltas(rel), cell) / params.samples_f;
                }
                window[i] = s;
            }
            workgroupBarrier();
            // window[lid + m] is repetition rep - MOMENTS_WG + m; the earliest is repetition 0.
            // Reaching back to repetition 0, the average resumes from its warmed-up state.
            var first = 0u;
            var sum = 0.0;
            var weight = 0.0;
            if rep < MOMENTS_WG {
                first = MOMENTS_WG - rep;
                sum = cells[cell].warm_sum;
                weight = cells[cell].warm_weight;
            }
            for (var m = first; m < MOMENTS_WG; m++) {
                sum = EMA_DECAY * sum + (1.0 - EMA_DECAY) * window[lid + m];
                weight = EMA_DECAY * weight + (1.0 - EMA_DECAY);
            }
            // Without a warm-up, before any repetition the baseline is 0, i.e. b' = -p.L.
            if weight > 0.0 {
                b_shift = sum / weight;
            }
            workgroupBarrier();
        }
        var d: array<f32, 16>;
        var g: array<f32, 16>;
        let scale = cells[cell].scale;
        if baseline == CELL_HARD_DRAW {
            for (var j = 0u; j < k; j++) {
                var acc = 0.0;
                for (var c = 0u; c < k; c++) {
                    acc += delta[c] * cells[cell].per_category[c * MAX_K + j];
                }
                d[j] = scale * acc + cells[cell].kappa[j];
                g[j] = cells[cell].grad[j];
            }
            reduce_cell(lid, wid.x, cell, d, g, in_chunk, cells[cell].cosine != 0u);
            continue;
        }
        for (var j = 0u; j < k; j++) {
            let lt = cells[cell].centred_signal[j];
            d[j] = scale * (delta[j] * lt - table.p[j] * a - b_shift * delta[j]) + cells[cell].kappa[j];
            g[j] = cells[cell].grad[j];
        }
        reduce_cell(lid, wid.x, cell, d, g, in_chunk, cells[cell].cosine != 0u);
    }
}
