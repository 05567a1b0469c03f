//! `exact`: the analytic gradient, `g_lj = p_lj (E[f | z_l = j] - E f)`: with one variable by
//! enumeration over the K categories (`g_j = p_j (f_j - fbar)`, K loss evaluations), with
//! several by the oracles of [`crate::oracle`] (closed forms for separable losses, L*K
//! evaluations; otherwise enumeration of the K^L configurations). No randomness. Refused where
//! only a Monte Carlo reference exists.

use super::{Baseline, Constant, Context, Estimator, ExactMoments, Family, JointDraws, Lowering};
use crate::error::{Error, Result};
use crate::oracle::{self, ExactKind, Method};

/// The exact gradient.
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
    fn check(&self, ctx: &Context) -> Result<()> {
        if ctx.grad_kind == ExactKind::Reference {
            return Err(Error::InvalidArgument(format!(
                "exact: the {} loss on {} variables of {} categories has no exact gradient here (K^L is past {} and the loss couples the variables); drop it",
                ctx.loss,
                ctx.l,
                ctx.k,
                oracle::MAX_ENUMERATION
            )));
        }
        Ok(())
    }
    fn loss_evaluations(&self, ctx: &Context, _s: u32) -> f64 {
        match oracle::method(ctx) {
            Method::OneVariable => ctx.k as f64,
            Method::Separable => (ctx.l * ctx.k) as f64,
            _ => (ctx.k as f64).powi(ctx.l as i32),
        }
    }
    fn exact_moments(&self, ctx: &Context, _s: u32) -> Option<ExactMoments> {
        Some(ExactMoments {
            mean: ctx.grad.clone(),
            var: vec![0.0; ctx.dim()],
            m4: Some(vec![0.0; ctx.dim()]),
        })
    }
    fn lowering(&self) -> Option<Lowering> {
        Some(Lowering::ScoreFunction {
            signal: None,
            baseline: Baseline::None,
            constant: Constant::ExactGradient,
        })
    }
    fn estimate(&self, ctx: &Context, _: &JointDraws<'_>, _: f64, out: &mut [f64]) -> Option<f64> {
        out.copy_from_slice(&ctx.grad);
        None
    }
    fn estimate_from_counts(&self, ctx: &Context, _: &[u32], _: u32, _: f64, out: &mut [f64]) {
        out.copy_from_slice(&ctx.grad);
    }
}
