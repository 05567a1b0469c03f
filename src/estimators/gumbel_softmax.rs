//! `gumbel-softmax`: the Concrete / Gumbel-softmax relaxation (Jang et al. 2017; Maddison et
//! al. 2017). Per draw, `G_j = -log(-log u_j)`, `y = softmax((a + G) / tau)` and
//! `g_hat = (1/tau) (diag(y) - y y^T) grad f(y)`: the pathwise gradient of the relaxed loss
//! `f(y)`, with `f` extended off the vertices by its own formula. Biased for every tau > 0;
//! one f and one grad f per draw, K uniforms.

use super::{lane_sum, Context, Estimator, Family, RelaxedBatch, RELAXED_BATCH};

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
    fn add_relaxed_batch(&self, ctx: &Context, batch: &RelaxedBatch<'_>, acc: &mut [f64]) {
        // grad f(y) = 2 alpha y + beta; estimate_c = (1/tau) y_c (grad_c - y . grad).
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            #[target_feature(enable = "avx2")]
            fn avx2(ctx: &Context, batch: &RelaxedBatch<'_>, acc: &mut [f64]) {
                relaxed_batch(ctx, batch, acc)
            }
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { avx2(ctx, batch, acc) };
        }
        relaxed_batch(ctx, batch, acc)
    }
}

/// The batch loop, compiled twice: for AVX2 (where the CPU has it) and as built. Same
/// results either way (see [`crate::fastmath::with_avx2`]).
#[inline(always)]
fn relaxed_batch(ctx: &Context, batch: &RelaxedBatch<'_>, acc: &mut [f64]) {
    let n = batch.n;
    let alpha2 = 2.0 * ctx.quad.alpha;
    let mut y_dot_grad = [0f64; RELAXED_BATCH];
    let y_dot_grad = &mut y_dot_grad[..n];
    for (c, &beta) in ctx.quad.beta.iter().enumerate() {
        for (s, &y) in y_dot_grad.iter_mut().zip(&batch.y[c * n..(c + 1) * n]) {
            let y = f64::from(y);
            *s += y * (alpha2 * y + beta);
        }
    }
    let mut terms = [0f64; RELAXED_BATCH];
    let terms = &mut terms[..n];
    for (c, (a, &beta)) in acc.iter_mut().zip(&ctx.quad.beta).enumerate() {
        let yc = &batch.y[c * n..(c + 1) * n];
        for ((t, &y), &ydg) in terms.iter_mut().zip(yc).zip(&*y_dot_grad) {
            let y = f64::from(y);
            *t = y * (alpha2 * y + beta - ydg);
        }
        *a += lane_sum(terms) / ctx.tau;
    }
}
