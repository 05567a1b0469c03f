//! `gumbel-softmax`: the Concrete / Gumbel-softmax relaxation (Jang et al. 2017; Maddison et
//! al. 2017). Per draw, `G_j = -log(-log u_j)`, `y = softmax((a + G) / tau)` and
//! `g_hat = (1/tau) (diag(y) - y y^T) grad f(y)`: the pathwise gradient of the relaxed loss
//! `f(y)`, with `f` extended off the vertices by its own formula. Biased for every tau > 0;
//! one f and one grad f per draw, K uniforms.

use super::{
    add_quadratic_relaxed_sum, add_relaxed_jacobian, Context, Estimator, Family, JointDraws,
    Lowering, RelaxedMoments,
};

/// The Gumbel-softmax (relaxed) estimator at temperature tau.
pub struct GumbelSoftmax;

impl Estimator for GumbelSoftmax {
    fn id(&self) -> &'static str {
        "gumbel-softmax"
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
            straight_through: false,
        })
    }
    fn estimate(&self, ctx: &Context, d: &JointDraws<'_>, _: f64, out: &mut [f64]) -> Option<f64> {
        let n = ctx.dim();
        let mut v = vec![0.0; n];
        out.iter_mut().for_each(|o| *o = 0.0);
        for (y, z) in d.y.chunks_exact(n).zip(d.z.chunks_exact(ctx.l)) {
            let _ = z;
            ctx.objective.grad(y, &mut v);
            add_relaxed_jacobian(ctx, y, &v, out);
        }
        let inv = 1.0 / d.s as f64;
        out.iter_mut().for_each(|o| *o *= inv);
        None
    }
    fn add_relaxed_sum(&self, ctx: &Context, m: &RelaxedMoments, acc: &mut [f64]) {
        // Per draw: (1/tau) y_c (v_c - y . v) with v = grad f(y) = 2 alpha y + beta, so
        // y . v = 2 alpha ||y||^2 + y . beta. Summed over draws:
        // (1/tau) [2 alpha sum y_c^2 + beta_c sum y_c - 2 alpha sum y_c ||y||^2
        //          - sum_c' beta_c' sum y_c y_c'].
        let quad = ctx
            .quad
            .as_ref()
            .expect("the relaxed-sums lowering needs a quadratic loss");
        let (alpha2, beta) = (2.0 * quad.alpha, &quad.beta);
        add_quadratic_relaxed_sum(m, alpha2, beta, ctx.tau, false, acc);
    }
}
