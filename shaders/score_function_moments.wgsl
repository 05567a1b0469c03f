// The score-function estimates and their moments: each thread turns REPS_PER_THREAD
// consecutive repetitions' category counts into every score-function cell's S-draw estimate
// and adds their shifted power sums in registers; the workgroup adds the threads' sums and
// writes one partial per cell (moments.wgsl). CPU twin: the `Family::ScoreFunction` arm of
// `cpu_point` in src/engine.rs with each estimator's `estimate_from_counts`.
//
// Every score-function estimate has the form g_hat_j = scale sum_k n_k (L_k - b)(e_k - p)_j
// + c_j. With delta_k = n_k - S p_k, a centred signal Lt = L - p.L and A = delta.Lt it is
// g_hat_j - g_j = scale (delta_j Lt_j - p_j A - b' delta_j) + kappa_j, where the host folds
// the deterministic part into kappa and b' = b - p.L (src/gpu/params.rs). Computing the
// deviation this way keeps f32's digits for low-variance estimators.
//
// Baselines: none (b = 0); leave-one-out (b = mean of the S draws' losses, b' = A / S); or a
// moving average of earlier repetitions' A / S (decay 0.9, bias-corrected). The moving
// average of a repetition covers at least the WINDOW = 256 repetitions before it (older ones
// weigh below 0.9^256 < 2e-12): the workgroup's window is the 256 repetitions before its
// first (4 per thread) and its own 512 (8 per thread); each thread sums its segments' EMA
// states from zero, and a thread's state before its first repetition is the segments before
// it, each decayed by 0.9^length (a scan over workgroup memory). The window reaches into the
// previous chunk through `counts_history` (its last WINDOW repetitions' counts); at the
// point's repetition 0 the average resumes from its warmed-up state.
//
// Hard-draw cells (CELL_HARD_DRAW: st, reinmax; CPU twin their `estimate_from_counts`): the
// estimate is (1/S) sum_c n_c G_c with G_c = g(e_c), so g_hat_j - g_j =
// scale sum_c delta_c G_cj + kappa_j, kappa = sum_c p_c G_c - g (src/gpu/params.rs).

@group(0) @binding(0) var<uniform> params: SweepParams;
@group(0) @binding(1) var<storage, read> table: PointTable;
@group(0) @binding(2) var<storage, read> cells: array<ScoreCell>;
@group(0) @binding(3) var<storage, read> counts: array<u32>;
@group(0) @binding(4) var<storage, read> counts_history: array<u32>;
@group(0) @binding(5) var<storage, read_write> partials: array<f32>;

const EMA_DECAY: f32 = 0.9;
// Repetitions of the moving-average window before a workgroup (counts_history holds them
// for the chunk's first workgroup), 4 per thread.
const WINDOW: u32 = 256u;
const PRE_PER_THREAD: u32 = 4u;

// delta_k = n_k - S p_k of chunk repetition `rel` (negative: the previous chunk's last ones).
fn deltas(rel: i32) -> array<f32, 16> {
    var out: array<f32, 16>;
    for (var j = 0u; j < kdim(); j++) {
        var n: u32;
        if rel >= 0 {
            n = counts[u32(rel) * MAX_K + j];
        } else {
            n = counts_history[u32(rel + i32(WINDOW)) * MAX_K + j];
        }
        // Exact when n is near S p_j (Sterbenz), then the remainder.
        out[j] = (f32(n) - table.expected_hi[j]) - table.expected_lo[j];
    }
    return out;
}

fn signal(delta: array<f32, 16>, cell: u32) -> f32 {
    var a = 0.0;
    for (var j = 0u; j < kdim(); j++) {
        a += delta[j] * cells[cell].centred_signal[j];
    }
    return a;
}

// One EMA step of the state (weighted sum, weight) with the value x.
fn ema_step(state: vec2<f32>, x: f32) -> vec2<f32> {
    return EMA_DECAY * state + (1.0 - EMA_DECAY) * vec2<f32>(x, 1.0);
}

// The moving average's state before thread `lid`'s first repetition (see the header).
// Call from uniform control flow.
fn moving_average_state(lid: u32, group_start: u32, cell: u32) -> vec2<f32> {
    // The window before the workgroup: all of it in the point, or all before repetition 0
    // (group starts are multiples of WINDOW within the point).
    let at_point_start = params.rep_begin + group_start < WINDOW;
    var pre = vec2<f32>(0.0);
    if at_point_start {
        if lid == MOMENTS_WG - 1u {
            pre = vec2<f32>(cells[cell].warm_sum, cells[cell].warm_weight);
        }
    } else {
        for (var i = 0u; i < PRE_PER_THREAD; i++) {
            let rel = i32(group_start + PRE_PER_THREAD * lid + i) - i32(WINDOW);
            pre = ema_step(pre, signal(deltas(rel), cell) / params.samples_f);
        }
    }
    var own = vec2<f32>(0.0);
    for (var i = 0u; i < REPS_PER_THREAD; i++) {
        let rel = group_start + REPS_PER_THREAD * lid + i;
        var s = 0.0;
        if rel < params.chunk_reps {
            s = signal(deltas(i32(rel)), cell) / params.samples_f;
        }
        own = ema_step(own, s);
    }
    reduce_rows[2u * lid] = pre.x;
    reduce_rows[2u * lid + 1u] = pre.y;
    reduce_rows[2u * (MOMENTS_WG + lid)] = own.x;
    reduce_rows[2u * (MOMENTS_WG + lid) + 1u] = own.y;
    workgroupBarrier();
    // Decay over a segment of PRE_PER_THREAD and of REPS_PER_THREAD repetitions.
    let decay_pre = pow(EMA_DECAY, f32(PRE_PER_THREAD));
    let decay_own = pow(EMA_DECAY, f32(REPS_PER_THREAD));
    var state = vec2<f32>(0.0);
    for (var u = 0u; u < MOMENTS_WG; u++) {
        state = decay_pre * state + vec2<f32>(reduce_rows[2u * u], reduce_rows[2u * u + 1u]);
    }
    for (var u = 0u; u < lid; u++) {
        let v = MOMENTS_WG + u;
        state = decay_own * state + vec2<f32>(reduce_rows[2u * v], reduce_rows[2u * v + 1u]);
    }
    workgroupBarrier();
    return state;
}

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let k = kdim();
    let group_start = wid.x * REPS_PER_GROUP;
    let first_rep = group_start + lid * REPS_PER_THREAD;
    for (var cell = 0u; cell < params.n_cells; cell++) {
        let base = (wid.x * params.n_cells + cell) * partial_stride();
        let baseline = cells[cell].baseline;
        let scale = cells[cell].scale;
        let cosine = cells[cell].cosine != 0u;
        var g: array<f32, 16>;
        for (var j = 0u; j < k; j++) {
            g[j] = cells[cell].grad[j];
        }
        var ema = vec2<f32>(0.0);
        if baseline == BASELINE_MOVING_AVERAGE {
            ema = moving_average_state(lid, group_start, cell);
        }
        var acc: PowerSums;
        var shift: array<f32, 18>;
        for (var i = 0u; i < REPS_PER_THREAD; i++) {
            let rep_local = first_rep + i;
            let valid = rep_local < params.chunk_reps;
            var delta: array<f32, 16>;
            if valid {
                delta = deltas(i32(rep_local));
            }
            var d: array<f32, 16>;
            if baseline == CELL_HARD_DRAW {
                for (var j = 0u; j < k; j++) {
                    var sum = 0.0;
                    for (var c = 0u; c < k; c++) {
                        sum += delta[c] * cells[cell].per_category[c * MAX_K + j];
                    }
                    d[j] = scale * sum + cells[cell].kappa[j];
                }
            } else {
                let a = signal(delta, cell);
                var b_shift = -cells[cell].mean_signal;
                if baseline == BASELINE_LEAVE_ONE_OUT {
                    b_shift = a / params.samples_f;
                }
                if baseline == BASELINE_MOVING_AVERAGE {
                    // Without a warm-up, before any repetition the baseline is 0: b' = -p.L.
                    if ema.y > 0.0 {
                        b_shift = ema.x / ema.y;
                    }
                    ema = ema_step(ema, a / params.samples_f);
                }
                for (var j = 0u; j < k; j++) {
                    let lt = cells[cell].centred_signal[j];
                    d[j] = scale * (delta[j] * lt - table.p[j] * a - b_shift * delta[j]) + cells[cell].kappa[j];
                }
            }
            let vals = estimate_values(d, g, cosine);
            if i == 0u {
                shift = share_shifts(lid, base, vals, valid);
            }
            accumulate(&acc, vals, shift, valid);
        }
        reduce_sums(lid, base, acc);
    }
}
