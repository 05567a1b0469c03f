//! `st-gumbel`: straight-through Gumbel-softmax (Jang et al. 2017). The forward pass uses the
//! exact sample `z = onehot(argmax(a + G))`; the backward pass uses the relaxation:
//! `g_hat = (1/tau) (diag(y) - y y^T) grad f(z)`, `y = softmax((a + G) / tau)`. Biased; one f
//! and one grad f per draw, K uniforms.

use super::{lane_sum, Context, Estimator, Family, RelaxedBatch, RELAXED_BATCH};

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
    fn add_relaxed_batch(&self, ctx: &Context, batch: &RelaxedBatch<'_>, acc: &mut [f64]) {
        // grad f(e_z) = 2 alpha e_z + beta; estimate_c = (1/tau) y_c (grad_c - y . grad),
        // y . grad = 2 alpha y_z + y . beta.
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            #[target_feature(enable = "avx2")]
            fn avx2(ctx: &Context, batch: &RelaxedBatch<'_>, acc: &mut [f64]) {
                straight_through_batch(ctx, batch, acc)
            }
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { avx2(ctx, batch, acc) };
        }
        straight_through_batch(ctx, batch, acc)
    }
}

/// The batch loop, compiled twice: for AVX2 (where the CPU has it) and as built. Same
/// results either way (see [`crate::fastmath::with_avx2`]).
#[inline(always)]
fn straight_through_batch(ctx: &Context, batch: &RelaxedBatch<'_>, acc: &mut [f64]) {
    let n = batch.n;
    let alpha2 = 2.0 * ctx.quad.alpha;
    let mut y_dot_grad = [0f64; RELAXED_BATCH];
    let y_dot_grad = &mut y_dot_grad[..n];
    for (s, &yz) in y_dot_grad.iter_mut().zip(batch.y_z) {
        *s = alpha2 * f64::from(yz);
    }
    for (c, &beta) in ctx.quad.beta.iter().enumerate() {
        for (s, &y) in y_dot_grad.iter_mut().zip(&batch.y[c * n..(c + 1) * n]) {
            *s += f64::from(y) * beta;
        }
    }
    let mut terms = [0f64; RELAXED_BATCH];
    let terms = &mut terms[..n];
    for (c, (a, &beta)) in acc.iter_mut().zip(&ctx.quad.beta).enumerate() {
        let yc = &batch.y[c * n..(c + 1) * n];
        for (((t, &y), &ydg), &z) in terms.iter_mut().zip(yc).zip(&*y_dot_grad).zip(batch.z) {
            let hit = if z == c as u32 { alpha2 } else { 0.0 };
            *t = f64::from(y) * (hit + beta - ydg);
        }
        *a += lane_sum(terms) / ctx.tau;
    }
}
