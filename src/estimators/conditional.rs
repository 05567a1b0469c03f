//! What the per-variable estimators share (`indecater`, `sum-and-sample`, and
//! `unordered-set` with several variables): each estimates the gradient of variable `l` from
//! the K losses `f(z_{-l}, c)`, `c = 0..K`, at the other variables' draws `z_{-l}` (the
//! IndeCateR decomposition, De Smet et al. 2023, eq. 5:
//! `d E f / d a_l = E_{z_{-l}} [ sum_c (d p_lc / d a_l) f(z_{-l}, c) ]`, exact because the
//! variables are independent). Here: those K losses, the estimators' own noise read as
//! uniforms, and the exact moments of such an estimator by enumerating `z_{-l}` (and the
//! estimator's own discrete noise) for every variable.

use rayon::prelude::*;

use super::{Context, ExactMoments, Noise};
use crate::oracle::{self, Method};

/// Most loss evaluations the per-variable enumeration spends (`L K^L`).
pub const MAX_CONDITIONAL_EVALUATIONS: f64 = 2.5e7;
/// Configurations of `z_{-l}` per enumeration chunk (a fixed partition: sums do not depend on
/// the thread count).
const CHUNK: u64 = 1 << 12;

/// `out[c] = f(z with variable l set to c)` for every category c: K loss evaluations
/// ([`crate::objective::Objective::conditional_vertices`]: for a separable loss the other
/// variables' terms are summed once). `scratch` is L numbers, overwritten.
#[inline]
pub fn conditional_losses(
    ctx: &Context,
    z: &[u32],
    l: usize,
    scratch: &mut [u32],
    out: &mut [f64],
) {
    ctx.objective.conditional_vertices(z, l, scratch, out);
}

/// The `n`-th uniform in (0, 1) of the auxiliary noise of draw `draw` (four per Philox lane:
/// uniform `n` is lane `n / 4`, word `n % 4`).
#[inline]
pub fn uniform(noise: &Noise, draw: u32, n: usize) -> f64 {
    noise.open_uniforms(draw, (n / 4) as u32)[n % 4]
}

/// Uniforms `0 .. out.len()` of draw `draw` (the numbers [`uniform`] gives), one Philox block
/// per four: eight Philox lanes at a time where there are at least four blocks (AVX2 where
/// present), the same words either way.
#[inline]
pub fn fill_uniforms(noise: &Noise, draw: u32, out: &mut [f64]) {
    if out.len() <= 12 {
        fill_uniforms_scalar(noise, draw, out);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn avx2(noise: &Noise, draw: u32, out: &mut [f64]) {
        fill_uniforms_lanes(noise, draw, out);
    }
    #[cfg(target_arch = "x86_64")]
    if crate::fastmath::has_avx2() {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx2(noise, draw, out) };
    }
    fill_uniforms_lanes(noise, draw, out);
}

/// [`fill_uniforms`] one Philox block at a time (the reference form).
fn fill_uniforms_scalar(noise: &Noise, draw: u32, out: &mut [f64]) {
    for (lane, chunk) in out.chunks_mut(4).enumerate() {
        let u = noise.open_uniforms(draw, lane as u32);
        chunk.copy_from_slice(&u[..chunk.len()]);
    }
}

#[inline(always)]
fn fill_uniforms_lanes(noise: &Noise, draw: u32, out: &mut [f64]) {
    use crate::philox::{open_uniform_f32, philox4x32_10_lanes, STREAM_AUX};
    const W: usize = 8;
    let blocks = out.len().div_ceil(4);
    let mut first = 0;
    // Eight lanes at a time while at least four blocks remain, then one at a time.
    while blocks - first >= 4 {
        let mut lane = [0u32; W];
        for (b, x) in lane.iter_mut().enumerate() {
            *x = (STREAM_AUX << 16) | (first + b) as u32;
        }
        let words = philox4x32_10_lanes(
            [[draw; W], [noise.rep; W], lane, [noise.point; W]],
            noise.key,
        );
        for b in 0..W.min(blocks - first) {
            for (w, word) in words.iter().enumerate() {
                if let Some(o) = out.get_mut((first + b) * 4 + w) {
                    *o = f64::from(open_uniform_f32(word[b]));
                }
            }
        }
        first += W.min(blocks - first);
    }
    fill_uniforms_scalar_from(noise, draw, first, out);
}

/// The blocks from `first` on, one at a time.
#[inline(always)]
fn fill_uniforms_scalar_from(noise: &Noise, draw: u32, first: usize, out: &mut [f64]) {
    for (lane, chunk) in out.chunks_mut(4).enumerate().skip(first) {
        let u = noise.open_uniforms(draw, lane as u32);
        chunk.copy_from_slice(&u[..chunk.len()]);
    }
}

/// The exact moments of an S-draw estimate made of per-variable blocks, by enumeration.
///
/// For variable `l` the estimator's block (K numbers) is a function of the K losses
/// `f(z_{-l}, .)` and of its own discrete noise: `block(l, losses, push)` calls
/// `push(probability, block)` once per outcome of that noise (probabilities summing to 1).
/// `average` is `Some(S)` where the estimate averages S independent such draws, `None` where
/// it is one such draw. The mean, variance and fourth central moment of every coordinate are
/// accumulated about the exact gradient (so a zero variance comes out as zero, not as a
/// difference of large numbers). `None` where the gradient is only a Monte Carlo reference or
/// the enumeration would pass [`MAX_CONDITIONAL_EVALUATIONS`].
pub fn per_variable_moments<B>(
    ctx: &Context,
    average: Option<u32>,
    block: B,
) -> Option<ExactMoments>
where
    B: Fn(usize, &[f64], &mut dyn FnMut(f64, &[f64])) + Sync,
{
    let (l, k) = (ctx.l, ctx.k);
    let others = (k as f64).powi(l as i32 - 1);
    if oracle::method(ctx) == Method::Reference
        || others * (l * k) as f64 > MAX_CONDITIONAL_EVALUATIONS
    {
        return None;
    }
    let others = others as u64;
    let mut mean = vec![0.0; l * k];
    let mut var = vec![0.0; l * k];
    let mut m4 = vec![0.0; l * k];
    for var_index in 0..l {
        let shift = &ctx.grad[var_index * k..(var_index + 1) * k];
        let chunks = others.div_ceil(CHUNK);
        // Raw moments 1..4 about the exact gradient, K each.
        let parts: Vec<Vec<f64>> = (0..chunks)
            .into_par_iter()
            .map(|chunk| {
                let mut acc = vec![0.0; 4 * k];
                let mut z = vec![0u32; l];
                let mut scratch = vec![0u32; l];
                let mut losses = vec![0.0; k];
                for index in chunk * CHUNK..((chunk + 1) * CHUNK).min(others) {
                    // Decode z_{-l}: the other variables, the last one least significant.
                    let mut rest = index;
                    let mut prob = 1.0;
                    for m in (0..l).rev().filter(|&m| m != var_index) {
                        let c = (rest % k as u64) as usize;
                        rest /= k as u64;
                        z[m] = c as u32;
                        prob *= ctx.p[m * k + c];
                    }
                    if prob == 0.0 {
                        continue;
                    }
                    conditional_losses(ctx, &z, var_index, &mut scratch, &mut losses);
                    block(var_index, &losses, &mut |q, g| {
                        let w = prob * q;
                        for j in 0..k {
                            let d = g[j] - shift[j];
                            let d2 = d * d;
                            acc[j] += w * d;
                            acc[k + j] += w * d2;
                            acc[2 * k + j] += w * d2 * d;
                            acc[3 * k + j] += w * d2 * d2;
                        }
                    });
                }
                acc
            })
            .collect();
        let mut raw = vec![0.0; 4 * k];
        for part in parts {
            raw.iter_mut().zip(part).for_each(|(a, b)| *a += b);
        }
        for j in 0..k {
            let (r1, r2, r3, r4) = (raw[j], raw[k + j], raw[2 * k + j], raw[3 * k + j]);
            let m2 = (r2 - r1 * r1).max(0.0);
            let c4 = (r4 - 4.0 * r1 * r3 + 6.0 * r1 * r1 * r2 - 3.0 * r1.powi(4)).max(0.0);
            let i = var_index * k + j;
            mean[i] = shift[j] + r1;
            var[i] = m2;
            m4[i] = c4;
        }
    }
    if let Some(s) = average {
        let s = f64::from(s);
        for (v, q) in var.iter_mut().zip(m4.iter_mut()) {
            *q = (*q + 3.0 * (s - 1.0) * *v * *v) / (s * s * s);
            *v /= s;
        }
    }
    Some(ExactMoments {
        mean,
        var,
        m4: Some(m4),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_uniforms_are_the_per_block_uniforms() {
        let noise = Noise {
            key: [3, 5],
            rep: 11,
            point: 1,
        };
        for len in [1, 3, 4, 12, 13, 16, 17, 31, 32, 33, 60, 100, 128, 257] {
            let mut bulk = vec![0.0; len];
            fill_uniforms(&noise, 6, &mut bulk);
            let mut one = vec![0.0; len];
            fill_uniforms_scalar(&noise, 6, &mut one);
            assert_eq!(bulk, one, "{len} uniforms");
            let mut plain = vec![0.0; len];
            fill_uniforms_lanes(&noise, 6, &mut plain);
            assert_eq!(plain, one, "{len} uniforms without AVX2");
            for (n, &u) in one.iter().enumerate() {
                assert_eq!(u, uniform(&noise, 6, n));
            }
        }
    }
}
