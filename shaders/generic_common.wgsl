// Shared by the generic-path kernels (joint_draws.wgsl, generic_signals.wgsl,
// generic_scores.wgsl, indecater.wgsl, unordered_set.wgsl, unordered_set_terms.wgsl);
// src/gpu/shaders.rs prepends it after common.wgsl.
// Keep in sync with `GenericParams` and `SignalGroup` in src/gpu/generic.rs.

// The parameters of one chunk of the generic path.
struct GenericParams {
    key: vec2<u32>,
    point: u32,
    samples: u32,
    // Global repetition index (within the sweep point) of the chunk's first repetition.
    rep_begin: u32,
    chunk_reps: u32,
    // Variables L and categories K.
    l: u32,
    k: u32,
    // Signal groups G of the chunk.
    n_groups: u32,
    // Philox blocks per repetition and variable, ceil(S / 4).
    blocks: u32,
    // Threads per row of the two-dimensional dispatch (workgroups in x times 64).
    row: u32,
    // Conditional groups C of the chunk (indecater.wgsl).
    n_conditional: u32,
    // Set groups of the chunk and the set size k = min(S, K) (unordered_set.wgsl).
    n_sets: u32,
    set_size: u32,
    // The quadrature nodes of unordered_set_terms.wgsl: the first one's index on the grid
    // y = n h, and their number.
    nodes_first: i32,
    n_nodes: u32,
}

// Losses of a signal group (keep in sync with `LOSS_*` in src/gpu/generic.rs).
const LOSS_QUADRATIC: u32 = 0u;
const LOSS_PNORM: u32 = 1u;
const LOSS_DECODER: u32 = 2u;
const LOSS_TABLE: u32 = 3u;

// One (loss, learning signal) of the generic score-function cells: the kernels compute the
// centred signal D_i = A_i - m of every draw, A_i = f(z_i) or MuProp's residual.
struct SignalGroup {
    // LOSS_*.
    loss: u32,
    // 1: MuProp's residual f - f(p) - sum_l (grad f(p)[l, z_l] - grad_l f(p) . p_l).
    residual: u32,
    // Offset of the loss's numbers in `data`.
    data: u32,
    // Offset of G'[l, j] = grad f(p)[l, j] - grad_l f(p) . p_l in `data` (residual only): L*K
    // high f32 parts, then L*K low parts.
    grad: u32,
    // Subtracted from the loss's sum (see src/gpu/generic.rs for what it folds in).
    shift: f32,
    // Exponent p of the pnorm loss.
    exponent: f32,
    // Output units H of the decoder loss.
    hidden: u32,
    // PAIR_*.
    pair: u32,
}

// A group alone; the first of a (loss, residual) pair of one loss, whose thread writes both
// rows; the second, which its predecessor wrote (keep in sync with src/gpu/generic.rs).
const PAIR_NONE: u32 = 0u;
const PAIR_FIRST: u32 = 1u;
const PAIR_SECOND: u32 = 2u;

// The flat index of a thread of a two-dimensional dispatch of 64-thread workgroups.
fn flat_index(gid: vec3<u32>) -> u32 {
    return gid.y * params.row + gid.x;
}

// e^x - 1 with a relative error of a few ulp (the generic losses and the unordered-set terms):
// a Taylor polynomial for |x| < 1/2 (the first omitted term is below 2^-30 of the value),
// exp(x) - 1 beyond.
fn expm1_accurate(x: f32) -> f32 {
    if abs(x) >= 0.5 {
        return exp(x) - 1.0;
    }
    var poly = 1.0 + x / 10.0;
    poly = 1.0 + x / 9.0 * poly;
    poly = 1.0 + x / 8.0 * poly;
    poly = 1.0 + x / 7.0 * poly;
    poly = 1.0 + x / 6.0 * poly;
    poly = 1.0 + x / 5.0 * poly;
    poly = 1.0 + x / 4.0 * poly;
    poly = 1.0 + x / 3.0 * poly;
    poly = 1.0 + x / 2.0 * poly;
    return x * poly;
}
