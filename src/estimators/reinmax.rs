//! `reinmax`: ReinMax (Liu, Zhao, Chen and Gao 2023, "Bridging discrete and backpropagation:
//! Straight-through and beyond", Algorithm 2), a second-order straight-through estimator: it
//! integrates the gradient along the path from `p` to the hard draw with Heun's method instead
//! of the forward Euler step of plain straight-through. Per draw `z ~ Cat(p)` and variable `l`,
//! with `v = grad_l f(e_z)` and `pi_1 = (softmax(a_l / tau) + e_{z_l}) / 2`:
//! `g_hat_l = 2 J(pi_1) v - J(p_l) v / 2`, `J(y) = diag(y) - y y^T` (tau is `--tau`; the
//! paper recommends tau >= 1). Checked against the authors' `ReinMaxCore.backward`
//! (`LiyuanLucasLiu/ReinMax`). Biased; one gradient of the loss per draw (one loss
//! evaluation); needs the loss defined off the vertices.
//!
//! Like `st`, its estimate depends only on the hard draw: exact moments by enumeration and a
//! counts lowering with one variable (see [`super::st`]).

use super::st::{
    add_vertex_blocks, average_over_counts, average_over_draws, category_table, grad_at_vertex,
    hard_draw_moments,
};
use super::{Context, Estimator, ExactMoments, Family, JointDraws, Lowering};
use crate::problem::softmax;

/// ReinMax at temperature tau.
pub struct ReinMax;

/// `softmax(a_l / tau)` of every variable (L*K numbers), once per context.
fn prepare(ctx: &Context) -> Vec<f64> {
    ctx.logits
        .chunks_exact(ctx.k)
        .flat_map(|a| softmax(&a.iter().map(|v| v / ctx.tau).collect::<Vec<_>>()))
        .collect()
}

fn per_draw(ctx: &Context, sigma: &[f64], z: &[u32], scratch: &mut [f64], out: &mut [f64]) {
    let k = ctx.k;
    let (hard, v) = scratch.split_at_mut(ctx.dim());
    grad_at_vertex(ctx, z, hard, v);
    for (l, &c) in z.iter().enumerate() {
        let block = l * k..(l + 1) * k;
        block_at(
            &ctx.p[block.clone()],
            &v[block.clone()],
            &sigma[block.clone()],
            c as usize,
            &mut out[block],
        );
    }
}

/// Variable `l`'s block of the per-draw estimate where `z_l = c`, from `p_l`, `v_l =
/// grad_l f(e_z)` and `sigma_l = softmax(a_l / tau)`, into `out` (K numbers).
#[inline]
fn block_at(p: &[f64], vl: &[f64], sl: &[f64], c: usize, out: &mut [f64]) {
    // pi_1 = (sigma + e_c) / 2.
    let pi1_v = 0.5 * (sl.iter().zip(vl).map(|(a, b)| a * b).sum::<f64>() + vl[c]);
    let p_v: f64 = p.iter().zip(vl).map(|(a, b)| a * b).sum();
    for (j, o) in out.iter_mut().enumerate() {
        let pi1 = 0.5 * (sl[j] + f64::from(u8::from(j == c)));
        *o = 2.0 * pi1 * (vl[j] - pi1_v) - 0.5 * p[j] * (vl[j] - p_v);
    }
}

/// For a separable loss (block `l` of `grad f(e_z)` depends on `z_l` alone, see
/// [`crate::objective::Objective::vertex_gradient_blocks`]), the per-draw estimate's block of
/// every (variable `l`, category `c`), `(l*K + c)*K + j`: the blocks [`per_draw`] computes,
/// once per estimate instead of once per draw.
fn draw_blocks(ctx: &Context, sigma: &[f64], grads: &[f64]) -> Vec<f64> {
    let k = ctx.k;
    let mut table = vec![0.0; ctx.dim() * k];
    for (i, out) in table.chunks_exact_mut(k).enumerate() {
        let (l, c) = (i / k, i % k);
        let block = l * k..(l + 1) * k;
        block_at(
            &ctx.p[block.clone()],
            &grads[i * k..(i + 1) * k],
            &sigma[block],
            c,
            out,
        );
    }
    table
}

impl Estimator for ReinMax {
    fn id(&self) -> &'static str {
        "reinmax"
    }
    fn family(&self) -> Family {
        Family::ScoreFunction
    }
    fn is_unbiased(&self) -> bool {
        false
    }
    fn needs_extension(&self) -> bool {
        true
    }
    fn lowering(&self) -> Option<Lowering> {
        Some(Lowering::HardDraw)
    }
    /// The hard draws alone: their losses are never read.
    fn reads_draw_losses(&self) -> bool {
        false
    }
    fn exact_moments(&self, ctx: &Context, s: u32) -> Option<ExactMoments> {
        hard_draw_moments(ctx, &prepare(ctx), s, per_draw)
    }
    fn estimate(&self, ctx: &Context, d: &JointDraws<'_>, _: f64, out: &mut [f64]) -> Option<f64> {
        if let Some(grads) = ctx.objective.shared_vertex_gradient_blocks() {
            // The per-draw estimate's blocks read from a table (built once per context): the
            // same numbers, added in the same order as [`average_over_draws`] adds them. The
            // table is a function of tau, the logits, `p` and the loss's gradient blocks: the
            // first three are compared bit for bit on every estimate, the blocks (L*K*K
            // numbers, never changed once built) by their address.
            let tau = [ctx.tau];
            let key: [&[f64]; 3] = [&tau, &ctx.logits, &ctx.p];
            let table = ctx
                .table_cache
                .get_or_build(self.id(), &key, Some(grads), || {
                    draw_blocks(ctx, &prepare(ctx), grads)
                });
            out.iter_mut().for_each(|o| *o = 0.0);
            add_vertex_blocks(ctx.k, &table, d.z, out);
            let inv = 1.0 / d.s as f64;
            out.iter_mut().for_each(|o| *o *= inv);
        } else {
            average_over_draws(ctx, &prepare(ctx), d, per_draw, out);
        }
        None
    }
    fn estimate_from_counts(&self, ctx: &Context, counts: &[u32], s: u32, _: f64, out: &mut [f64]) {
        average_over_counts(ctx, &prepare(ctx), counts, s, per_draw, out);
    }
    fn counts_table(&self, ctx: &Context) -> Option<Vec<f64>> {
        Some(category_table(ctx, &prepare(ctx), per_draw))
    }
}

/// The per-draw form of [`ReinMax`]'s estimate (any loss): the reference its table form is
/// tested against.
#[cfg(test)]
pub(super) fn per_draw_average(ctx: &Context, d: &JointDraws<'_>, out: &mut [f64]) {
    average_over_draws(ctx, &prepare(ctx), d, per_draw, out);
}
