//! `st-gumbel`: straight-through Gumbel-softmax (Jang et al. 2017). The forward pass uses the
//! exact sample `z = onehot(argmax(a + G))`; the backward pass uses the relaxation:
//! `g_hat = (1/tau) (diag(y) - y y^T) grad f(z)`, `y = softmax((a + G) / tau)`. Biased; one f
//! and one grad f per draw, K uniforms.

use super::{Context, Estimator, Family, RelaxedMoments};

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
    fn add_relaxed_sum(&self, ctx: &Context, m: &RelaxedMoments, acc: &mut [f64]) {
        // Per draw: (1/tau) y_c (v_c - y . v) with v = grad f(e_z) = 2 alpha e_z + beta, so
        // y . v = 2 alpha y_z + y . beta. Summed over draws:
        // (1/tau) [2 alpha sum_{z = c} y_c + beta_c sum y_c - 2 alpha sum y_c y_z
        //          - sum_c' beta_c' sum y_c y_c'].
        let (k, alpha2, beta) = (ctx.k, 2.0 * ctx.quad.alpha, &ctx.quad.beta);
        for (c, a) in acc.iter_mut().enumerate() {
            let row = &m.sum_yy[c * k..(c + 1) * k];
            let y_dot_beta: f64 = row.iter().zip(beta).map(|(s, b)| s * b).sum();
            *a += (alpha2 * m.sum_hit[c] + beta[c] * m.sum_y[c]
                - alpha2 * m.sum_y_yz[c]
                - y_dot_beta)
                / ctx.tau;
        }
    }
}
