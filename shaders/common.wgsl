// Shared by every mcgrad kernel; src/gpu/shaders.rs prepends it to each kernel file.
// Owns: the Philox4x32-10 generator and its counter layout (keep in sync with src/philox.rs),
// the uniforms, the sweep parameters and tables (keep in sync with src/gpu/params.rs), and
// f32 streaming moments (the Chan/Pebay merge of src/stats.rs).

const PHILOX_M0: u32 = 0xD2511F53u;
const PHILOX_M1: u32 = 0xCD9E8D57u;
const PHILOX_W0: u32 = 0x9E3779B9u;
const PHILOX_W1: u32 = 0xBB67AE85u;
const STREAM_CATEGORICAL: u32 = 0u;
const STREAM_GUMBEL: u32 = 1u;

// Largest K the kernels serve (per-thread arrays are this long).
const MAX_K: u32 = 16u;
// Relative size below which an estimate counts as zero for its cosine (keep in sync with
// `stats::ZERO_ESTIMATE`).
const ZERO_ESTIMATE: f32 = 1e-5;
// A threshold no word passes: word > NEVER is false for every u32.
const NEVER: u32 = 0xFFFFFFFFu;

// Score-function cell kinds (keep in sync with src/gpu/params.rs).
const BASELINE_NONE: u32 = 0u;
const BASELINE_MOVING_AVERAGE: u32 = 1u;
const BASELINE_LEAVE_ONE_OUT: u32 = 2u;
// A cell kind, not a baseline: a hard-draw estimator (st, reinmax), which reads per_category.
const CELL_HARD_DRAW: u32 = 3u;
// Relaxed cell kinds.
const RELAXED_SOFT: u32 = 0u;
const RELAXED_STRAIGHT_THROUGH: u32 = 1u;

// The parameters of one dispatch (keep in sync with `SweepParams` in src/gpu/params.rs).
struct SweepParams {
    key: vec2<u32>,
    point: u32,
    samples: u32,
    // Global repetition index (within the sweep point) of the chunk's first repetition.
    rep_begin: u32,
    chunk_reps: u32,
    // Draws [draw_begin, draw_end) of every repetition of the chunk; draw_begin % 4 == 0.
    draw_begin: u32,
    draw_end: u32,
    k: u32,
    threads_per_rep: u32,
    n_cells: u32,
    inv_tau: f32,
    samples_f: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Per sweep point, shared by every cell (keep in sync with `PointTable`).
struct PointTable {
    // Inverse-CDF thresholds S_j = ceil(C_j 2^32) - 1 (a word's category is
    // #{j : word > S_j}); NEVER from the last nonzero class on.
    thresholds: array<u32, 16>,
    p: array<f32, 16>,
    // S p_j split into an f32 and its f32 remainder, so n_j - S p_j keeps its digits.
    expected_hi: array<f32, 16>,
    expected_lo: array<f32, 16>,
    // a - max(a) for the Gumbel draws.
    shifted_logits: array<f32, 16>,
    // The classes before the first with nonzero probability are never drawn.
    first_nonzero: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Streaming central moments of one scalar, in f32 within a workgroup.
struct PartialMoments {
    n: f32,
    mean: f32,
    m2: f32,
    m3: f32,
    m4: f32,
}

// The training draws' parameters (train_categorical.wgsl, train_gumbel.wgsl).
// Keep in sync with src/gpu/train_draws.rs (TrainDrawParams).
struct TrainDrawParams {
    key: vec2<u32>,
    step: u32,
    batch: u32,
    samples: u32,
    k: u32,
    rep_offset: u32,
    inv_tau: f32,
}

// The high word of the 64-bit product a * b for a constant a = a_hi 2^16 + a_lo, from the
// 16-bit limbs of b (WGSL has neither u64 nor a mul-hi): with t = a_lo b_lo,
// u = a_hi b_lo + (t >> 16) and w = a_lo b_hi + (u & 0xffff),
// hi = a_hi b_hi + (u >> 16) + (w >> 16). None overflows: u, w <= (2^16 - 1)^2 + 2^16 - 1.
// Four multiplies, three shifts, two masks and four adds (the a limbs are constants); the
// low word is one native multiply. (The earlier form took two more operations.)
fn mulhi(a_lo: u32, a_hi: u32, b: u32) -> u32 {
    let b_lo = b & 0xffffu;
    let b_hi = b >> 16u;
    let u = a_hi * b_lo + ((a_lo * b_lo) >> 16u);
    let w = a_lo * b_hi + (u & 0xffffu);
    return a_hi * b_hi + (u >> 16u) + (w >> 16u);
}

fn philox_round(ctr: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    let hi0 = mulhi(PHILOX_M0 & 0xffffu, PHILOX_M0 >> 16u, ctr.x);
    let hi1 = mulhi(PHILOX_M1 & 0xffffu, PHILOX_M1 >> 16u, ctr.z);
    return vec4<u32>(hi1 ^ ctr.y ^ key.x, PHILOX_M1 * ctr.z, hi0 ^ ctr.w ^ key.y, PHILOX_M0 * ctr.x);
}

// Philox4x32-10: four random words from a 128-bit counter and a 64-bit key.
fn philox4x32_10(counter: vec4<u32>, key_in: vec2<u32>) -> vec4<u32> {
    var key = key_in;
    var ctr = philox_round(counter, key);
    for (var i = 1u; i < 10u; i++) {
        key += vec2<u32>(PHILOX_W0, PHILOX_W1);
        ctr = philox_round(ctr, key);
    }
    return ctr;
}

// The counter of one Philox block: [block, repetition, stream << 16 | lane, sweep point].
fn philox_counter(block: u32, rep: u32, stream: u32, lane: u32, point: u32) -> vec4<u32> {
    return vec4<u32>(block, rep, (stream << 16u) | lane, point);
}

// A uniform in (0, 1), never 0 or 1: ((u >> 9) + 0.5) 2^-23, every step exact in f32
// (keep in sync with philox::open_uniform_f32; 24 bits would round the top value to 1.0).
fn open_uniform(word: u32) -> f32 {
    return (f32(word >> 9u) + 0.5) * (1.0 / 8388608.0);
}

// ln(x) with a relative error of a few ulp everywhere: near 1, where the driver's log may
// only promise an absolute error (2^-21 for Vulkan), it uses 2 atanh(s), s = (x-1)/(x+1),
// |s| <= 1/3 for x in [0.5, 2] (x - 1 is exact there).
fn accurate_log(x: f32) -> f32 {
    if x < 0.5 || x > 2.0 {
        return log(x);
    }
    let s = (x - 1.0) / (x + 1.0);
    let s2 = s * s;
    // 2 (s + s^3/3 + ... + s^17/17): the first omitted term is below 2^-30 of the sum.
    var poly = 1.0 / 17.0;
    poly = poly * s2 + 1.0 / 15.0;
    poly = poly * s2 + 1.0 / 13.0;
    poly = poly * s2 + 1.0 / 11.0;
    poly = poly * s2 + 1.0 / 9.0;
    poly = poly * s2 + 1.0 / 7.0;
    poly = poly * s2 + 1.0 / 5.0;
    poly = poly * s2 + 1.0 / 3.0;
    return 2.0 * s * (poly * s2 + 1.0);
}

// Gumbel noise -log(-log u) of one random word: -log E of `exponential`'s E.
fn gumbel(word: u32) -> f32 {
    return -accurate_log(exponential(word));
}

// Exponential noise E = -log u of one random word. At tau = 1 the relaxed draws take the race
// form (CPU twin: `draws::RelaxedTable`): exp(a_c + G_c) = exp(a_c) / E_c, so softmax(a + G)
// is r / sum(r) with r_c = exp(a_c - max a) / E_c, and argmax(a + G) = argmax r.
fn exponential(word: u32) -> f32 {
    return -accurate_log(open_uniform(word));
}

fn moments_of(x: f32, valid: bool) -> PartialMoments {
    if valid {
        return PartialMoments(1.0, x, 0.0, 0.0, 0.0);
    }
    return PartialMoments(0.0, 0.0, 0.0, 0.0, 0.0);
}

// The scalars the moments kernels reduce besides the K coordinates of one estimate's
// deviation d = g_hat - g from the exact gradient g (moments.wgsl, moments_subgroup.wgsl):
// ||d||^2, 1 - cos(g_hat, g), and whether g_hat counts as nonzero for its cosine (as
// EstimateMoments::push decides).
struct EstimateScalars {
    sq_error: f32,
    one_minus_cos: f32,
    has_direction: bool,
}

fn estimate_scalars(d: array<f32, 16>, g: array<f32, 16>, k: u32) -> EstimateScalars {
    var sq_error = 0.0;
    var dot = 0.0;
    var nn = 0.0;
    var ee = 0.0;
    var cross = 0.0;
    for (var i = 0u; i < k; i++) {
        let est = d[i] + g[i];
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
    let has_direction = nn > ZERO_ESTIMATE * ZERO_ESTIMATE * (sq_error + ee);
    return EstimateScalars(sq_error, one_minus_cos, has_direction);
}

// Merges the moments of two sets of values (Chan et al.; Pebay 2008), as Moments::merge.
fn moments_merge(a: PartialMoments, b: PartialMoments) -> PartialMoments {
    if b.n == 0.0 {
        return a;
    }
    if a.n == 0.0 {
        return b;
    }
    let na = a.n;
    let nb = b.n;
    let n = na + nb;
    let d = b.mean - a.mean;
    let d2 = d * d;
    let m2 = a.m2 + b.m2 + d2 * na * nb / n;
    let m3 = a.m3 + b.m3 + d2 * d * na * nb * (na - nb) / (n * n)
        + 3.0 * d * (na * b.m2 - nb * a.m2) / n;
    let m4 = a.m4 + b.m4 + d2 * d2 * na * nb * (na * na - na * nb + nb * nb) / (n * n * n)
        + 6.0 * d2 * (na * na * b.m2 + nb * nb * a.m2) / (n * n)
        + 4.0 * d * (na * b.m3 - nb * a.m3) / n;
    return PartialMoments(n, a.mean + d * nb / n, m2, m3, m4);
}

// One (loss, score-function estimator) (keep in sync with `ScoreCell` in src/gpu/params.rs).
// See score_function_moments.wgsl for what the fields mean.
struct ScoreCell {
    centred_signal: array<f32, 16>,
    kappa: array<f32, 16>,
    grad: array<f32, 16>,
    scale: f32,
    mean_signal: f32,
    baseline: u32,
    cosine: u32,
    // The warmed-up moving average before repetition 0: weighted sum of b - p.L, weight.
    warm_sum: f32,
    warm_weight: f32,
    _pad0: u32,
    _pad1: u32,
    // Hard-draw cells: the per-draw estimate g(e_c)_j at [c * 16 + j].
    per_category: array<f32, 256>,
}

// One (loss, relaxed estimator) (keep in sync with `RelaxedCell` in src/gpu/params.rs):
// the loss f(y) = alpha ||y||^2 + beta.y + gamma, the exact gradient and the kind.
struct RelaxedCell {
    beta: array<f32, 16>,
    grad: array<f32, 16>,
    alpha: f32,
    inv_tau: f32,
    kind: u32,
    cosine: u32,
}
