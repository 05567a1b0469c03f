//! `gumbel-softmax`: the Concrete / Gumbel-softmax relaxation (Jang et al. 2017; Maddison et
//! al. 2017). Per draw, `G_j = -log(-log u_j)`, `y = softmax((a + G) / tau)` and
//! `g_hat = (1/tau) (diag(y) - y y^T) grad f(y)`: the pathwise gradient of the relaxed loss
//! `f(y)`, with `f` extended off the vertices by its own formula. Biased for every tau > 0;
//! one f and one grad f per draw, K uniforms.

use super::{Context, Estimator, Family, RelaxedDraw};

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
    fn add_relaxed_draw(&self, ctx: &Context, draw: RelaxedDraw<'_>, acc: &mut [f64]) {
        // grad f(y) = 2 alpha y + beta, then (1/tau) (diag(y) - y y^T) grad f(y), in O(K).
        let q = &ctx.quad;
        let v = |j: usize| 2.0 * q.alpha * draw.y[j] + q.beta[j];
        let yv: f64 = draw.y.iter().enumerate().map(|(j, y)| y * v(j)).sum();
        let inv_tau = 1.0 / ctx.tau;
        for (j, (a, y)) in acc.iter_mut().zip(draw.y).enumerate() {
            *a += inv_tau * y * (v(j) - yv);
        }
    }
}
