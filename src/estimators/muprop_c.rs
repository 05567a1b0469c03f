//! `muprop-c`: MuProp with a centred residual (the paper's "MuProp-C"). Per joint draw and
//! variable: `g_hat_l = [f(z) - f(p) - grad f(p) . (y_z - p) - b] (e_{z_l} - p_l) + J_l grad_l f(p)`,
//! where `b` is a bias-corrected moving average (decay 0.9) of the mean residual of *earlier*
//! estimates. Unbiased (b does not depend on the current draws); no closed-form variance. One
//! loss evaluation per draw plus one mean-field evaluation per estimate.

use super::muprop::residuals;
use super::{
    score_sum, weighted_scores, Baseline, Constant, Context, Estimator, Family, JointDraws,
    LinearForm, Lowering, Signal,
};
use crate::oracle;

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
    fn needs_extension(&self) -> bool {
        true
    }
    fn loss_evaluations(&self, _ctx: &Context, s: u32) -> f64 {
        f64::from(s) + 1.0
    }
    fn lowering(&self) -> Option<Lowering> {
        Some(Lowering::ScoreFunction {
            signal: Some(Signal::MupropResidual),
            baseline: Baseline::MovingAverage,
            constant: Constant::MeanField,
        })
    }
    fn reference_variance(&self, ctx: &Context, s: u32) -> Option<Vec<f64>> {
        // The residual centred by its exact mean, which the moving average converges to.
        let ideal = LinearForm {
            signal: Signal::MupropResidual,
            centred: true,
            constant: Constant::MeanField,
        };
        oracle::linear_form_moments(ctx, ideal, s).map(|m| m.var)
    }
    fn estimate(&self, ctx: &Context, d: &JointDraws<'_>, b: f64, out: &mut [f64]) -> Option<f64> {
        let r = residuals(ctx, d);
        let centred: Vec<f64> = r.iter().map(|v| v - b).collect();
        weighted_scores(ctx, d, &centred, out);
        let inv = 1.0 / d.s as f64;
        for (o, c) in out.iter_mut().zip(&ctx.muprop_mean_field) {
            *o = *o * inv + c;
        }
        Some(r.iter().sum::<f64>() * inv)
    }
    fn baseline_signal(&self, ctx: &Context, counts: &[u32], s: u32) -> Option<f64> {
        let total: f64 = counts
            .iter()
            .zip(&ctx.muprop_signal)
            .map(|(&n, l)| f64::from(n) * l)
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
        score_sum(counts, |k| ctx.muprop_signal[k] - baseline, &ctx.p, out);
        let inv = 1.0 / f64::from(s);
        for (o, c) in out.iter_mut().zip(&ctx.muprop_mean_field) {
            *o = *o * inv + c;
        }
    }
}
