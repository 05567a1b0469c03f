//! `indecater`: IndeCateR, the independent categorical REINFORCE of De Smet, Sansone and
//! Zuidberg Dos Martires 2023 ("Differentiable Sampling of Categorical Distributions Using the
//! CatLog-Derivative Trick", NeurIPS; eq. 9 and Algorithm 1). Because the variables are
//! independent, `d E f / d a_l = E_{z_{-l}} [ sum_c (d p_lc / d a_l) f(z_{-l}, c) ]`: for each
//! joint draw `z_i` and each variable `l` it sums over the K categories of `l` exactly, with
//! the other variables held at their draws. With `d p_lc / d a_lj = p_lc (1[c = j] - p_lj)`,
//! per draw, variable `l`, category `j`:
//! `g_hat_lj = p_lj ( f(z_{i,-l}, j) - sum_c p_lc f(z_{i,-l}, c) )`,
//! and an S-draw estimate averages S draws. Unbiased. Cost: `L*K` loss evaluations per draw,
//! `S*L*K` per estimate (one of the K is the draw's own `f(z_i)`, counted anyway, as the paper
//! does).
//!
//! Variance: block `l` is a function of `z_{-l}` alone, so with one variable the estimate is
//! the exact gradient, and for a loss that is a sum of per-variable terms
//! (`f = c + sum_m t_m(z_m)`) it is `p_lj (t_l(j) - p_l . t_l)` whatever `z_{-l}`: exact, zero
//! variance. Otherwise `Var_lj = Var_{z_{-l}}[g_hat_lj] / S`, computed here by enumerating
//! `z_{-l}` for every `l` (see [`super::conditional`]).
//!
//! Summed over the draws it reads only `F_lj = sum_i f(z_{i,-l}, j)`
//! ([`Conditional::EveryCategory`]): the GPU's generic path computes those sums in
//! `shaders/indecater.wgsl` and finishes `p_lj (F_lj - sum_c p_lc F_lc) / S` on the host.

use super::conditional::{conditional_losses, per_variable_moments};
use super::{Conditional, Context, Estimator, ExactMoments, Family, JointDraws};
use crate::oracle::{self, Method};

/// IndeCateR: per-variable conditional enumeration.
pub struct Indecater;

/// IndeCateR's block of variable `l` from the K losses `f(z_{-l}, .)`, into `out` (K numbers).
#[inline]
pub(super) fn indecater_block(p: &[f64], losses: &[f64], out: &mut [f64]) {
    let mean: f64 = p.iter().zip(losses).map(|(a, b)| a * b).sum();
    for ((o, pj), fj) in out.iter_mut().zip(p).zip(losses) {
        *o = pj * (fj - mean);
    }
}

impl Estimator for Indecater {
    fn id(&self) -> &'static str {
        "indecater"
    }
    fn family(&self) -> Family {
        Family::ScoreFunction
    }
    fn is_unbiased(&self) -> bool {
        true
    }
    fn loss_evaluations(&self, ctx: &Context, s: u32) -> f64 {
        f64::from(s) * (ctx.l * ctx.k) as f64
    }
    /// No baseline: every estimate reads its own repetition alone.
    fn keeps_moving_average(&self) -> bool {
        false
    }
    fn conditional(&self) -> Option<Conditional> {
        Some(Conditional::EveryCategory)
    }
    fn exact_moments(&self, ctx: &Context, s: u32) -> Option<ExactMoments> {
        if matches!(oracle::method(ctx), Method::OneVariable | Method::Separable) {
            // Exact whatever the draws (see the module doc).
            let zeros = vec![0.0; ctx.dim()];
            return Some(ExactMoments {
                mean: ctx.grad.clone(),
                var: zeros.clone(),
                m4: Some(zeros),
            });
        }
        per_variable_moments(ctx, Some(s), |l, losses, push| {
            let mut g = vec![0.0; ctx.k];
            indecater_block(&ctx.p[l * ctx.k..(l + 1) * ctx.k], losses, &mut g);
            push(1.0, &g);
        })
    }
    fn estimate(&self, ctx: &Context, d: &JointDraws<'_>, _: f64, out: &mut [f64]) -> Option<f64> {
        let (l, k) = (ctx.l, ctx.k);
        if l == 1 {
            // One variable: every draw gives the same block, the exact gradient, from the K
            // vertex losses (the S K evaluations are counted all the same).
            indecater_block(&ctx.p, &ctx.f, out);
            return None;
        }
        out.iter_mut().for_each(|o| *o = 0.0);
        let mut scratch = vec![0u32; l];
        let mut losses = vec![0.0; k];
        let mut block = vec![0.0; k];
        for z in d.z.chunks_exact(l) {
            for var in 0..l {
                conditional_losses(ctx, z, var, &mut scratch, &mut losses);
                indecater_block(&ctx.p[var * k..(var + 1) * k], &losses, &mut block);
                for (o, b) in out[var * k..(var + 1) * k].iter_mut().zip(&block) {
                    *o += b;
                }
            }
        }
        let inv = 1.0 / d.s as f64;
        out.iter_mut().for_each(|o| *o *= inv);
        None
    }
}
