//! `reinforce`: the score-function (likelihood-ratio) estimator (Williams 1992). Per joint
//! draw `z`, variable `l`: `g_hat_l = f(z) (e_{z_l} - p_l)` (the per-variable score); an S-draw
//! estimate averages S draws. Unbiased; one loss evaluation per draw.

use super::{
    score_sum, weighted_scores, Baseline, Constant, Context, Estimator, Family, JointDraws,
    LinearForm, Lowering, Signal,
};

/// REINFORCE without a baseline.
pub struct Reinforce;

impl Estimator for Reinforce {
    fn id(&self) -> &'static str {
        "reinforce"
    }
    fn family(&self) -> Family {
        Family::ScoreFunction
    }
    fn is_unbiased(&self) -> bool {
        true
    }
    fn linear_form(&self) -> Option<LinearForm> {
        Some(LinearForm {
            signal: Signal::Loss,
            centred: false,
            constant: Constant::None,
        })
    }
    fn lowering(&self) -> Option<Lowering> {
        Some(Lowering::ScoreFunction {
            signal: Some(Signal::Loss),
            baseline: Baseline::None,
            constant: Constant::None,
        })
    }
    fn estimate(&self, ctx: &Context, d: &JointDraws<'_>, _: f64, out: &mut [f64]) -> Option<f64> {
        weighted_scores(ctx, d, d.f, out);
        let inv = 1.0 / d.s as f64;
        out.iter_mut().for_each(|o| *o *= inv);
        None
    }
    fn estimate_from_counts(&self, ctx: &Context, counts: &[u32], s: u32, _: f64, out: &mut [f64]) {
        score_sum(counts, |k| ctx.f[k], &ctx.p, out);
        let inv = 1.0 / f64::from(s);
        out.iter_mut().for_each(|o| *o *= inv);
    }
}
