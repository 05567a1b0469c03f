//! `exact`: the analytic gradient by enumeration over the K categories,
//! `g_j = p_j (f_j - fbar)`, `fbar = p . f` (K loss evaluations, no randomness).

use super::{Context, Estimator, ExactMoments, Family};

/// The exact gradient `g = J f = diag(p) f - p (p . f)`.
pub struct Exact;

impl Estimator for Exact {
    fn id(&self) -> &'static str {
        "exact"
    }
    fn family(&self) -> Family {
        Family::ScoreFunction
    }
    fn is_unbiased(&self) -> bool {
        true
    }
    fn exact_moments(&self, ctx: &Context, _s: u32) -> Option<ExactMoments> {
        Some(ExactMoments {
            mean: ctx.grad.clone(),
            var: vec![0.0; ctx.k],
            m4: Some(vec![0.0; ctx.k]),
        })
    }
    fn estimate_from_counts(&self, ctx: &Context, _: &[u32], _: u32, _: f64, out: &mut [f64]) {
        out.copy_from_slice(&ctx.grad);
    }
}
