//! `muprop-c`: MuProp with a centred residual (the paper's "MuProp-C"):
//! `g_hat = [f_k - f(p) - grad f(p) . (e_k - p) - b] (e_k - p) + J grad f(p)`, where `b` is a
//! bias-corrected moving average (decay 0.9) of the mean residual of *earlier* estimates.
//! Unbiased (b does not depend on the current draws); no closed-form variance.

use super::{score_sum, Context, Estimator, Family};

/// MuProp with a moving-average-centred residual.
pub struct MupropC;

impl Estimator for MupropC {
    fn id(&self) -> &'static str {
        "muprop-c"
    }
    fn family(&self) -> Family {
        Family::ScoreFunction
    }
    fn is_unbiased(&self) -> bool {
        true
    }
    fn baseline_signal(&self, ctx: &Context, counts: &[u32], s: u32) -> Option<f64> {
        let total: f64 =
            counts.iter().zip(&ctx.muprop_signal).map(|(&n, l)| f64::from(n) * l).sum();
        Some(total / f64::from(s))
    }
    fn estimate_from_counts(
        &self,
        ctx: &Context,
        counts: &[u32],
        s: u32,
        baseline: f64,
        out: &mut [f64],
    ) {
        score_sum(counts, |k| ctx.muprop_signal[k] - baseline, &ctx.p, out);
        let inv = 1.0 / f64::from(s);
        for (o, c) in out.iter_mut().zip(&ctx.muprop_mean_field) {
            *o = *o * inv + c;
        }
    }
}
