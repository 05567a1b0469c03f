//! `st-gumbel`: straight-through Gumbel-softmax (Jang et al. 2017). The forward pass uses the
//! exact sample `z = onehot(argmax(a + G))`; the backward pass uses the relaxation:
//! `g_hat = (1/tau) (diag(y) - y y^T) grad f(z)`, `y = softmax((a + G) / tau)`. Biased; one f
//! and one grad f per draw, K uniforms.

use super::{
    add_quadratic_relaxed_sum, add_relaxed_jacobian, Context, Estimator, Family, JointDraws,
    Lowering, RelaxedMoments,
};

/// Straight-through Gumbel-softmax at temperature tau.
pub struct StGumbel;

impl Estimator for StGumbel {
    fn id(&self) -> &'static str {
        "st-gumbel"
    }
    fn family(&self) -> Family {
        Family::Relaxed
    }
    fn is_unbiased(&self) -> bool {
        false
    }
    fn needs_extension(&self) -> bool {
        true
    }
    fn lowering(&self) -> Option<Lowering> {
        Some(Lowering::Relaxed {
            straight_through: true,
        })
    }
    fn estimate(&self, ctx: &Context, d: &JointDraws<'_>, _: f64, out: &mut [f64]) -> Option<f64> {
        let n = ctx.dim();
        let mut v = vec![0.0; n];
        out.iter_mut().for_each(|o| *o = 0.0);
        for (y, z) in d.y.chunks_exact(n).zip(d.z.chunks_exact(ctx.l)) {
            let mut hard = vec![0.0; n];
            for (l, &c) in z.iter().enumerate() {
                hard[l * ctx.k + c as usize] = 1.0;
            }
            ctx.objective.grad(&hard, &mut v);
            add_relaxed_jacobian(ctx, y, &v, out);
        }
        let inv = 1.0 / d.s as f64;
        out.iter_mut().for_each(|o| *o *= inv);
        None
    }
    fn add_relaxed_sum(&self, ctx: &Context, m: &RelaxedMoments, acc: &mut [f64]) {
        // Per draw: (1/tau) y_c (v_c - y . v) with v = grad f(e_z) = 2 alpha e_z + beta, so
        // y . v = 2 alpha y_z + y . beta. Summed over draws:
        // (1/tau) [2 alpha sum_{z = c} y_c + beta_c sum y_c - 2 alpha sum y_c y_z
        //          - sum_c' beta_c' sum y_c y_c'].
        let quad = ctx
            .quad
            .as_ref()
            .expect("the relaxed-sums lowering needs a quadratic loss");
        let (alpha2, beta) = (2.0 * quad.alpha, &quad.beta);
        add_quadratic_relaxed_sum(m, alpha2, beta, ctx.tau, true, acc);
    }
}
