//! `reinforce-ema`: REINFORCE with a moving-average baseline, per draw
//! `g_hat = (f_k - b) (e_k - p)`, where `b` is a bias-corrected exponential moving average
//! (decay 0.9) of the mean loss of *earlier* estimates (earlier repetitions, as earlier
//! training steps would be). `b` is independent of the current draws, so the estimator is
//! unbiased; its variance has no closed form (b is random), so none is reported.

use super::{score_sum, Context, Estimator, Family};

/// REINFORCE with an exponential-moving-average baseline.
pub struct ReinforceEma;

impl Estimator for ReinforceEma {
    fn id(&self) -> &'static str {
        "reinforce-ema"
    }
    fn family(&self) -> Family {
        Family::ScoreFunction
    }
    fn is_unbiased(&self) -> bool {
        true
    }
    fn baseline_signal(&self, ctx: &Context, counts: &[u32], s: u32) -> Option<f64> {
        let total: f64 = counts.iter().zip(&ctx.f).map(|(&n, f)| f64::from(n) * f).sum();
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
        score_sum(counts, |k| ctx.f[k] - baseline, &ctx.p, out);
        let inv = 1.0 / f64::from(s);
        out.iter_mut().for_each(|o| *o *= inv);
    }
}
