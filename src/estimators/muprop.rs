//! `muprop`: MuProp (Gu et al. 2015, eq. 3), a score-function estimator with the first-order
//! Taylor expansion of `f` around the mean-field point `p` as control variate:
//! `g_hat = [f_k - f(p) - grad f(p) . (e_k - p)] (e_k - p) + J grad f(p)`,
//! `J = diag(p) - p p^T`. Unbiased; one loss evaluation per draw plus one shared mean-field
//! pass. Exact (zero variance) when `f` is linear, and on the notebook's `seed` loss.

use super::{linear_form_moments, score_sum, Context, Estimator, ExactMoments, Family};

/// MuProp with the mean-field point `p`.
pub struct Muprop;

impl Estimator for Muprop {
    fn id(&self) -> &'static str {
        "muprop"
    }
    fn family(&self) -> Family {
        Family::ScoreFunction
    }
    fn is_unbiased(&self) -> bool {
        true
    }
    fn exact_moments(&self, ctx: &Context, s: u32) -> Option<ExactMoments> {
        Some(linear_form_moments(&ctx.p, &ctx.muprop_signal, &ctx.muprop_mean_field, s))
    }
    fn estimate_from_counts(&self, ctx: &Context, counts: &[u32], s: u32, _: f64, out: &mut [f64]) {
        score_sum(counts, |k| ctx.muprop_signal[k], &ctx.p, out);
        let inv = 1.0 / f64::from(s);
        for (o, c) in out.iter_mut().zip(&ctx.muprop_mean_field) {
            *o = *o * inv + c;
        }
    }
}
