// Shared by the two moments kernels (score_function_moments.wgsl, relaxed_moments.wgsl):
// the reduction of one estimate per repetition to per-workgroup shifted power sums. Each
// workgroup of MOMENTS_WG threads holds REPS_PER_GROUP consecutive repetitions,
// REPS_PER_THREAD consecutive ones per thread. For every cell a repetition gives K + 2
// scalars: the K coordinates of the deviation d = g_hat - g from the exact gradient,
// ||d||^2, and 1 - cos(g_hat, g). Per cell the workgroup
//   1. takes as each scalar's shift c the mean of the threads' first repetitions' values
//      (at most MOMENTS_WG of them: within a few sigma / 8 of the mean),
//   2. sums x (S1) and (x - c)^p, p = 2..4 (S2..S4), over each thread's repetitions in
//      registers (no barrier),
//   3. adds the threads' sums in workgroup memory in a fixed order (one barrier per 56
//      rows), and writes one partial per cell: K + 2 times [c, S1, S2, S3, S4], then the
//      count n and the cosine's count n_cos (partial_stride() floats).
// The host turns each partial into central moments in f64 and merges them (Pebay) in
// workgroup order (src/gpu/moments.rs). Expects `params: SweepParams` and
// `partials: array<f32>` (read_write) in the including kernel.
//
// Exactness: f32 power sums of 512 values about a shift within about sigma / 8 of their
// mean; the central moments M2 = S2 - n mu^2 etc. then lose nothing to cancellation
// ((mu / sigma)^2 ~ 1/64), and their error is the f32 rounding of the two-level sums
// (8 adds per thread, 64 per row; the rows compensated (Kahan)): a few f32 ulps of each
// sum. The mean comes from S1, the compensated sum of the values themselves, not of x - c:
// each x - c rounds in f32 by up to half an ulp of sigma, and where an estimate takes few
// distinct values (small S) those roundings do not average out; the mean's digits are then
// those of the f32 estimates, as with a Welford mean. The host uses S1 - n c for the
// central moments (exact in f64).

// K: fixed per pipeline where SPECIAL_K is nonzero (src/gpu/shaders.rs `PerK` sets it, so
// the loops over the categories have constant bounds), else the parameters' K.
const SPECIAL_K: u32 = 0u;
fn kdim() -> u32 {
    if SPECIAL_K != 0u {
        return SPECIAL_K;
    }
    return params.k;
}

const MOMENTS_WG: u32 = 64u;
const REPS_PER_THREAD: u32 = 8u;
// MOMENTS_WG * REPS_PER_THREAD (keep in sync with REPS_PER_GROUP in src/gpu/chunks.rs).
const REPS_PER_GROUP: u32 = 512u;
// Relative size below which an estimate counts as zero for its cosine (keep in sync with
// `stats::ZERO_ESTIMATE`).
const ZERO_ESTIMATE: f32 = 1e-5;
// Rows of the reduction per barrier, and the stride of a row (one float of padding, so the
// threads summing rows read different banks).
const REDUCE_ROWS: u32 = 56u;
const ROW_STRIDE: u32 = 65u;

var<workgroup> reduce_rows: array<f32, 3640>;
var<workgroup> shared_shifts: array<f32, 18>;

// Floats of one cell's partial: (K + 2) x [shift, S1..S4], n, n_cos.
fn partial_stride() -> u32 {
    return 5u * (kdim() + 2u) + 2u;
}

// One repetition's K + 2 scalars, and whether its cosine counts.
struct EstimateValues {
    v: array<f32, 18>,
    cos_valid: bool,
}

// The scalars of the estimate g + d. `cosine` says whether the cosine is defined (the exact
// gradient is nonzero), as EstimateMoments::push decides.
fn estimate_values(d: array<f32, 16>, g: array<f32, 16>, cosine: bool) -> EstimateValues {
    let k = kdim();
    var out: EstimateValues;
    var sq_error = 0.0;
    var dot = 0.0;
    var nn = 0.0;
    var ee = 0.0;
    var cross = 0.0;
    for (var i = 0u; i < k; i++) {
        let est = d[i] + g[i];
        out.v[i] = d[i];
        sq_error += d[i] * d[i];
        dot += est * g[i];
        nn += est * est;
        ee += g[i] * g[i];
        // Lagrange: |e|^2 |g|^2 - (e.g)^2 = sum_{i<j} (e_i g_j - e_j g_i)^2, and with
        // e = g + d each term is (d_i g_j - d_j g_i)^2: no cancellation near cos = 1.
        for (var j = i + 1u; j < k; j++) {
            let t = d[i] * g[j] - d[j] * g[i];
            cross += t * t;
        }
    }
    let norm = sqrt(nn) * sqrt(ee);
    var one_minus_cos = 1.0 - dot / norm;
    if dot > 0.0 {
        one_minus_cos = cross / (norm * (norm + dot));
    }
    out.v[k] = sq_error;
    out.v[k + 1u] = one_minus_cos;
    out.cos_valid = cosine && nn > ZERO_ESTIMATE * ZERO_ESTIMATE * (sq_error + ee);
    return out;
}

// Step 1: every thread passes its first repetition's values (`valid` where it has one); the
// shifts come back (and go into the partial at `base`). Call from uniform control flow.
fn share_shifts(lid: u32, base: u32, first: EstimateValues, valid: bool) -> array<f32, 18> {
    let k = kdim();
    for (var q = 0u; q < k + 2u; q++) {
        var x = 0.0;
        if valid && (q <= k || first.cos_valid) {
            x = first.v[q];
        }
        reduce_rows[q * ROW_STRIDE + lid] = x;
    }
    reduce_rows[(k + 2u) * ROW_STRIDE + lid] = select(0.0, 1.0, valid);
    reduce_rows[(k + 3u) * ROW_STRIDE + lid] = select(0.0, 1.0, valid && first.cos_valid);
    workgroupBarrier();
    if lid < k + 2u {
        var count_row = k + 2u;
        if lid == k + 1u {
            count_row = k + 3u;
        }
        var sum = 0.0;
        var count = 0.0;
        for (var t = 0u; t < MOMENTS_WG; t++) {
            sum += reduce_rows[lid * ROW_STRIDE + t];
            count += reduce_rows[count_row * ROW_STRIDE + t];
        }
        var shift = 0.0;
        if count > 0.0 {
            shift = sum / count;
        }
        shared_shifts[lid] = shift;
        partials[base + 5u * lid] = shift;
    }
    workgroupBarrier();
    var out: array<f32, 18>;
    for (var q = 0u; q < k + 2u; q++) {
        out[q] = shared_shifts[q];
    }
    workgroupBarrier();
    return out;
}

// A thread's running sums: per scalar the sum of x (S1, unshifted, with its Kahan
// compensation) and of (x - c)^p, p = 2..4, and the counts.
struct PowerSums {
    s: array<vec4<f32>, 18>,
    s1_lost: array<f32, 18>,
    n: f32,
    n_cos: f32,
}

// Kahan: adds x to *sum, carrying the rounding lost in *lost.
fn kahan_add(sum: ptr<function, f32>, lost: ptr<function, f32>, x: f32) {
    let y = x - *lost;
    let t = *sum + y;
    *lost = (t - *sum) - y;
    *sum = t;
}

// Step 2: adds one repetition's values (where `valid`).
fn accumulate(acc: ptr<function, PowerSums>, vals: EstimateValues, shift: array<f32, 18>, valid: bool) {
    if !valid {
        return;
    }
    let k = kdim();
    for (var q = 0u; q < k + 2u; q++) {
        if q == k + 1u && !vals.cos_valid {
            break;
        }
        let x = vals.v[q] - shift[q];
        let x2 = x * x;
        var s1 = (*acc).s[q].x;
        var lost = (*acc).s1_lost[q];
        kahan_add(&s1, &lost, vals.v[q]);
        (*acc).s1_lost[q] = lost;
        (*acc).s[q] = vec4<f32>(s1, (*acc).s[q].y + x2, (*acc).s[q].z + x2 * x, (*acc).s[q].w + x2 * x2);
    }
    (*acc).n += 1.0;
    if vals.cos_valid {
        (*acc).n_cos += 1.0;
    }
}

// Step 3: adds the threads' sums in a fixed order and writes them into the partial at `base`
// (whose shifts share_shifts wrote). Call from uniform control flow.
fn reduce_sums(lid: u32, base: u32, acc: PowerSums) {
    let k = kdim();
    let rows = 4u * (k + 2u) + 2u;
    for (var first = 0u; first < rows; first += REDUCE_ROWS) {
        for (var r = first; r < min(first + REDUCE_ROWS, rows); r++) {
            var x = acc.n_cos;
            if r < 4u * (k + 2u) {
                x = acc.s[r / 4u][r % 4u];
                if r % 4u == 0u {
                    // The thread's S1 with its compensation folded in.
                    x -= acc.s1_lost[r / 4u];
                }
            } else if r == 4u * (k + 2u) {
                x = acc.n;
            }
            reduce_rows[(r - first) * ROW_STRIDE + lid] = x;
        }
        workgroupBarrier();
        let r = first + lid;
        if lid < REDUCE_ROWS && r < rows {
            var sum = 0.0;
            var lost = 0.0;
            for (var t = 0u; t < MOMENTS_WG; t++) {
                kahan_add(&sum, &lost, reduce_rows[lid * ROW_STRIDE + t]);
            }
            sum -= lost;
            // Row 4q + p - 1 is S_p of scalar q, at 5q + p; then n and n_cos.
            var at = 5u * (k + 2u) + (r - 4u * (k + 2u));
            if r < 4u * (k + 2u) {
                at = 5u * (r / 4u) + r % 4u + 1u;
            }
            partials[base + at] = sum;
        }
        workgroupBarrier();
    }
}
