//! `rloo`: REINFORCE leave-one-out (Kool et al. 2019): each joint draw's baseline is the mean
//! loss of the other S - 1 draws, `g_hat_l = 1/(S-1) sum_i (f(z_i) - mean_S f) (e_{z_il} - p_l)`,
//! which needs S >= 2. Unbiased; one loss evaluation per draw. It is a U-statistic of order 2
//! with kernel `h(z, z') = (f - f')(s - s') / 2`, so (Hoeffding), for any joint distribution,
//! `Var_j = Var((f - E f) s_j) / S + (Var f p_j (1 - p_j) + g_j^2) / (S (S-1))`.

use super::{
    linear_form_moments, score_sum, weighted_scores, Baseline, Constant, Context, Estimator,
    ExactMoments, Family, JointDraws, LinearForm, Lowering, Signal,
};
use crate::oracle;

/// REINFORCE with the leave-one-out baseline.
pub struct Rloo;

impl Estimator for Rloo {
    fn id(&self) -> &'static str {
        "rloo"
    }
    fn family(&self) -> Family {
        Family::ScoreFunction
    }
    fn is_unbiased(&self) -> bool {
        true
    }
    fn min_samples(&self) -> u32 {
        2
    }
    fn lowering(&self) -> Option<Lowering> {
        Some(Lowering::ScoreFunction {
            signal: Some(Signal::Loss),
            baseline: Baseline::LeaveOneOut,
            constant: Constant::None,
        })
    }
    fn exact_moments(&self, ctx: &Context, s: u32) -> Option<ExactMoments> {
        if s < 2 {
            return None;
        }
        // Var((f - E f) s_j) for one draw: the ideal-baseline estimator's variance, and Var f.
        let (one, sigma_f2) = if ctx.l == 1 {
            let centred: Vec<f64> = ctx.f.iter().map(|f| f - ctx.fbar).collect();
            let one = linear_form_moments(&ctx.p, &centred, &vec![0.0; ctx.k], 1);
            let sigma_f2: f64 = ctx.p.iter().zip(&centred).map(|(p, c)| p * c * c).sum();
            (one, sigma_f2)
        } else {
            let ideal = LinearForm {
                signal: Signal::Loss,
                centred: true,
                constant: Constant::None,
            };
            (
                oracle::linear_form_moments(ctx, ideal, 1)?,
                oracle::loss_variance(ctx)?,
            )
        };
        let s = f64::from(s);
        let var = (0..ctx.dim())
            .map(|j| {
                let pj = ctx.p[j];
                one.var[j] / s
                    + (sigma_f2 * pj * (1.0 - pj) + ctx.grad[j].powi(2)) / (s * (s - 1.0))
            })
            .collect();
        Some(ExactMoments {
            mean: ctx.grad.clone(),
            var,
            m4: None,
        })
    }
    fn estimate(&self, ctx: &Context, d: &JointDraws<'_>, _: f64, out: &mut [f64]) -> Option<f64> {
        let mean_f = d.f.iter().sum::<f64>() / d.s as f64;
        let signal: Vec<f64> = d.f.iter().map(|f| f - mean_f).collect();
        weighted_scores(ctx, d, &signal, out);
        let inv = 1.0 / (d.s as f64 - 1.0);
        out.iter_mut().for_each(|o| *o *= inv);
        None
    }
    fn estimate_from_counts(&self, ctx: &Context, counts: &[u32], s: u32, _: f64, out: &mut [f64]) {
        let mean_f: f64 = counts
            .iter()
            .zip(&ctx.f)
            .map(|(&n, f)| f64::from(n) * f)
            .sum::<f64>()
            / f64::from(s);
        score_sum(counts, |k| ctx.f[k] - mean_f, &ctx.p, out);
        let inv = 1.0 / (f64::from(s) - 1.0);
        out.iter_mut().for_each(|o| *o *= inv);
    }
}
