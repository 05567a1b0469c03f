//! `reinforce-ema`: REINFORCE with a moving-average baseline, per joint draw and variable
//! `g_hat_l = (f(z) - b) (e_{z_l} - p_l)`, where `b` is a bias-corrected exponential moving
//! average (decay 0.9) of the mean loss of *earlier* estimates (earlier repetitions, as earlier
//! training steps would be). `b` is independent of the current draws, so the estimator is
//! unbiased; its variance has no closed form (b is random), so none is reported. One loss
//! evaluation per draw. The average is warmed up before the measured repetitions
//! ([`super::warmed_baseline`], `--baseline-warmup`, default 50), so the first measured
//! estimate does not start from `b = 0`.

use super::{
    score_sum, weighted_scores, Baseline, Constant, Context, Estimator, Family, JointDraws,
    LinearForm, Lowering, Signal,
};
use crate::oracle;

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
    fn lowering(&self) -> Option<Lowering> {
        Some(Lowering::ScoreFunction {
            signal: Some(Signal::Loss),
            baseline: Baseline::MovingAverage,
            constant: Constant::None,
        })
    }
    fn reference_variance(&self, ctx: &Context, s: u32) -> Option<Vec<f64>> {
        // The ideal constant baseline E f, which the moving average converges to.
        let ideal = LinearForm {
            signal: Signal::Loss,
            centred: true,
            constant: Constant::None,
        };
        oracle::linear_form_moments(ctx, ideal, s).map(|m| m.var)
    }
    fn estimate(&self, ctx: &Context, d: &JointDraws<'_>, b: f64, out: &mut [f64]) -> Option<f64> {
        let signal: Vec<f64> = d.f.iter().map(|f| f - b).collect();
        weighted_scores(ctx, d, &signal, out);
        let inv = 1.0 / d.s as f64;
        out.iter_mut().for_each(|o| *o *= inv);
        Some(d.f.iter().sum::<f64>() * inv)
    }
    fn baseline_signal(&self, ctx: &Context, counts: &[u32], s: u32) -> Option<f64> {
        let total: f64 = counts
            .iter()
            .zip(&ctx.f)
            .map(|(&n, f)| f64::from(n) * f)
            .sum();
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
