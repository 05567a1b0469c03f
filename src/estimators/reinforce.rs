//! `reinforce`: the score-function (likelihood-ratio) estimator (Williams 1992),
//! per draw `z = e_k`: `g_hat = f_k (e_k - p)`; an S-draw estimate averages S draws.
//! Unbiased; one loss evaluation per draw.

use super::{linear_form_moments, score_sum, Context, Estimator, ExactMoments, Family};

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
    fn exact_moments(&self, ctx: &Context, s: u32) -> Option<ExactMoments> {
        Some(linear_form_moments(&ctx.p, &ctx.f, &vec![0.0; ctx.k], s))
    }
    fn estimate_from_counts(&self, ctx: &Context, counts: &[u32], s: u32, _: f64, out: &mut [f64]) {
        score_sum(counts, |k| ctx.f[k], &ctx.p, out);
        let inv = 1.0 / f64::from(s);
        out.iter_mut().for_each(|o| *o *= inv);
    }
}
