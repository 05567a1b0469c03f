//! The WGSL sources: one file per kernel under `shaders/`, each with `shaders/common.wgsl`
//! (Philox, the shared structs, f32 moments) prepended, and `shaders/moments.wgsl` (the
//! workgroup reduction, or `shaders/moments_subgroup.wgsl` for adapters with subgroups) for
//! the two moments kernels, `shaders/generic_common.wgsl` (the
//! generic path's structs) for the generic kernels, and `shaders/generic_loss.wgsl` (the
//! generic losses) for the three that evaluate losses.

macro_rules! kernel {
    ($($file:literal),+) => {
        concat!(include_str!("../../shaders/common.wgsl"), $(include_str!(concat!("../../shaders/", $file))),+)
    };
}

/// The batched forward pass (logits and softmax).
pub const FORWARD: &str = kernel!("forward.wgsl");
/// Philox words of given counters (a test kernel).
pub const PHILOX_WORDS: &str = kernel!("philox_words.wgsl");
/// Category counts of the score-function draws.
pub const SCORE_FUNCTION_COUNTS: &str = kernel!("score_function_counts.wgsl");
/// Score-function estimates and their partial moments.
pub const SCORE_FUNCTION_MOMENTS: &str = kernel!("moments.wgsl", "score_function_moments.wgsl");
/// Gumbel draws and per-repetition sums of the relaxed estimates.
pub const RELAXED_DRAWS: &str = kernel!("relaxed_draws.wgsl");
/// Relaxed estimates' partial moments.
pub const RELAXED_MOMENTS: &str = kernel!("moments.wgsl", "relaxed_moments.wgsl");
/// [`SCORE_FUNCTION_MOMENTS`] reduced with subgroup operations (`moments_subgroup.wgsl`).
pub const SCORE_FUNCTION_MOMENTS_SUBGROUP: &str =
    kernel!("moments_subgroup.wgsl", "score_function_moments.wgsl");
/// [`RELAXED_MOMENTS`] reduced with subgroup operations (`moments_subgroup.wgsl`).
pub const RELAXED_MOMENTS_SUBGROUP: &str = kernel!("moments_subgroup.wgsl", "relaxed_moments.wgsl");
/// The categorical draws of a training step (per input, from the forward pass's probabilities).
pub const TRAIN_CATEGORICAL: &str = kernel!("train_categorical.wgsl");
/// The Gumbel draws of a training step (per input, from the forward pass's logits).
pub const TRAIN_GUMBEL: &str = kernel!("train_gumbel.wgsl");
/// Joint categorical draws of L variables (the generic path).
pub const JOINT_DRAWS: &str = kernel!("generic_common.wgsl", "joint_draws.wgsl");
/// The loss and centred learning signals of every joint draw (the generic path).
pub const GENERIC_SIGNALS: &str = kernel!(
    "generic_common.wgsl",
    "generic_loss.wgsl",
    "generic_signals.wgsl"
);
/// Per-repetition sums of the signals by category (the generic path).
pub const GENERIC_SCORES: &str = kernel!("generic_common.wgsl", "generic_scores.wgsl");
/// IndeCateR's per-variable conditional losses of every draw (the generic path).
pub const INDECATER: &str = kernel!("generic_common.wgsl", "generic_loss.wgsl", "indecater.wgsl");
/// Their sums over the draws.
pub const CONDITIONAL_SUMS: &str = kernel!("generic_common.wgsl", "conditional_sums.wgsl");
/// The unordered-set estimator's sets and their members' losses (the generic path).
pub const UNORDERED_SET: &str = kernel!(
    "generic_common.wgsl",
    "generic_loss.wgsl",
    "unordered_set.wgsl"
);
/// The unordered-set estimator's per-member terms.
pub const UNORDERED_SET_TERMS: &str = kernel!("generic_common.wgsl", "unordered_set_terms.wgsl");
