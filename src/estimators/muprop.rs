//! `muprop`: MuProp (Gu et al. 2015, eq. 3), a score-function estimator with the first-order
//! Taylor expansion of `f` around the mean-field point `y = p` (all variables) as control
//! variate. Per joint draw `z` (one-hot `y_z`), variable `l`:
//! `g_hat_l = [f(z) - f(p) - grad f(p) . (y_z - p)] (e_{z_l} - p_l) + J_l grad_l f(p)`,
//! `J_l = diag(p_l) - p_l p_l^T`. Unbiased; one loss evaluation per draw plus one shared
//! mean-field evaluation of `f(p)` and `grad f(p)` per estimate. Exact (zero variance) when
//! `f` is linear, and on the notebook's `seed` loss. Needs the loss off the vertices.

use super::{
    score_sum, weighted_scores, Baseline, Constant, Context, Estimator, Family, JointDraws,
    LinearForm, Lowering, Signal,
};

/// MuProp with the mean-field point `p`.
pub struct Muprop;

/// MuProp's residual signal of every draw.
pub(super) fn residuals(ctx: &Context, d: &JointDraws<'_>) -> Vec<f64> {
    d.z.chunks_exact(ctx.l)
        .zip(d.f)
        .map(|(z, &f)| ctx.muprop_residual(z, f))
        .collect()
}

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
    fn needs_extension(&self) -> bool {
        true
    }
    fn loss_evaluations(&self, _ctx: &Context, s: u32) -> f64 {
        f64::from(s) + 1.0
    }
    fn linear_form(&self) -> Option<LinearForm> {
        Some(LinearForm {
            signal: Signal::MupropResidual,
            centred: false,
            constant: Constant::MeanField,
        })
    }
    fn lowering(&self) -> Option<Lowering> {
        Some(Lowering::ScoreFunction {
            signal: Some(Signal::MupropResidual),
            baseline: Baseline::None,
            constant: Constant::MeanField,
        })
    }
    fn estimate(&self, ctx: &Context, d: &JointDraws<'_>, _: f64, out: &mut [f64]) -> Option<f64> {
        weighted_scores(ctx, d, &residuals(ctx, d), out);
        let inv = 1.0 / d.s as f64;
        for (o, c) in out.iter_mut().zip(&ctx.muprop_mean_field) {
            *o = *o * inv + c;
        }
        None
    }
    fn estimate_from_counts(&self, ctx: &Context, counts: &[u32], s: u32, _: f64, out: &mut [f64]) {
        score_sum(counts, |k| ctx.muprop_signal[k], &ctx.p, out);
        let inv = 1.0 / f64::from(s);
        for (o, c) in out.iter_mut().zip(&ctx.muprop_mean_field) {
            *o = *o * inv + c;
        }
    }
}
