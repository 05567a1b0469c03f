//! `st-gumbel`: straight-through Gumbel-softmax (Jang et al. 2017). The forward pass uses the
//! exact sample `z = onehot(argmax(a + G))`; the backward pass uses the relaxation:
//! `g_hat = (1/tau) (diag(y) - y y^T) grad f(z)`, `y = softmax((a + G) / tau)`. Biased; one f
//! and one grad f per draw, K uniforms.

use super::{Context, Estimator, Family, RelaxedDraw};

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
    fn add_relaxed_draw(&self, ctx: &Context, draw: RelaxedDraw<'_>, acc: &mut [f64]) {
        // grad f(e_z) = 2 alpha e_z + beta
        let q = &ctx.quad;
        let v = |j: usize| 2.0 * q.alpha * f64::from(u8::from(j == draw.z)) + q.beta[j];
        let yv: f64 = draw.y.iter().enumerate().map(|(j, y)| y * v(j)).sum();
        let inv_tau = 1.0 / ctx.tau;
        for (j, (a, y)) in acc.iter_mut().zip(draw.y).enumerate() {
            *a += inv_tau * y * (v(j) - yv);
        }
    }
}
