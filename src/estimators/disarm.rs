//! `disarm`: DisARM, the antithetic estimator for binary variables of Dong, Mnih and Tucker 2020
//! ("DisARM: An Antithetic Gradient Estimator for Binary Latent Variables", NeurIPS;
//! reference code in google-research/google-research, folder `disarm`). K = 2 only: variable `l` is a Bernoulli
//! `b_l = z_l` with `P(b_l = 1) = p_l1 = sigma(theta_l)`, `theta_l = a_l1 - a_l0`. A draw
//! `b_l = 1[u_l < p_l1]` from uniforms `u` has the antithetic partner `b~_l = 1[1 - u_l < p_l1]`,
//! and per pair
//! `g_hat_theta_l = 1/2 (f(b) - f(b~)) (-1)^{b~_l} 1[b_l != b~_l] sigma(|theta_l|)`;
//! the logit gradient is `(-g_hat_theta_l, g_hat_theta_l)` (`d/da_l1 = d/dtheta_l`). Unbiased.
//!
//! Here each of the S joint draws `z_i` of the pass is the first half of a pair: its uniforms
//! are drawn given `z_i` from the repetition's auxiliary noise (`u_l = p_l1 v` where `b_l = 1`,
//! `p_l1 + (1 - p_l1) v` where `b_l = 0`, `v` uniform, so `u` is uniform and `b = 1[u < p1]`),
//! and the partner is evaluated: two loss evaluations per draw, `2 S` per estimate (the
//! paper's one pair is S = 1). Refuses K != 2.
//!
//! Variance: per variable the pair `(b_l, b~_l)` takes `(1,0)` and `(0,1)` with probability
//! `min(p_l0, p_l1)` each, and `(1,1)` or `(0,0)` otherwise, so the exact moments come from
//! enumerating these states (at most `3^L`). For a separable loss `f = c + sum_m t_m(b_m)`, with
//! `Delta_m = t_m(1) - t_m(0)`, `P_m = 2 min(p_m0, p_m1)` and `sigma_l = max(p_l0, p_l1)`:
//! `Var g_hat_theta_l = sigma_l^2 P_l (Delta_l^2 + sum_{m != l} P_m Delta_m^2) / 4 - g_l^2`,
//! divided by S for the S-draw average.

use rayon::prelude::*;

use super::{Context, Estimator, ExactMoments, Family, JointDraws};
use crate::error::{Error, Result};
use crate::oracle::{self, Method};

/// Most antithetic states `3^L` the exact moments enumerate.
pub const MAX_PAIR_STATES: f64 = 2e6;

/// DisARM for binary variables.
pub struct Disarm;

/// Adds one pair's estimate to `out` (L*2 numbers): `b`, `b~` and their losses.
#[inline]
fn add_pair(ctx: &Context, b: &[u32], b_anti: &[u32], f: f64, f_anti: f64, out: &mut [f64]) {
    let half = 0.5 * (f - f_anti);
    for (l, (&x, &y)) in b.iter().zip(b_anti).enumerate() {
        if x != y {
            let sigma_abs = ctx.p[2 * l].max(ctx.p[2 * l + 1]);
            let g = if y == 1 { -half } else { half } * sigma_abs;
            out[2 * l + 1] += g;
            out[2 * l] -= g;
        }
    }
}

impl Disarm {
    /// The exact moments by enumerating the antithetic states of every variable, or `None`
    /// past [`MAX_PAIR_STATES`] states (or where the gradient is only a reference).
    pub fn enumerated_moments(&self, ctx: &Context, s: u32) -> Option<ExactMoments> {
        let l = ctx.l;
        // Per variable: its states (b, b~, probability) of nonzero probability.
        let states: Vec<Vec<(u32, u32, f64)>> = (0..l)
            .map(|v| {
                let (p0, p1) = (ctx.p[2 * v], ctx.p[2 * v + 1]);
                let lo = p0.min(p1);
                let both = (p1 - p0).abs();
                let same = if p1 > p0 { 1 } else { 0 };
                [(1, 0, lo), (0, 1, lo), (same, same, both)]
                    .into_iter()
                    .filter(|s| s.2 > 0.0)
                    .collect()
            })
            .collect();
        let total: f64 = states.iter().map(|s| s.len() as f64).product();
        if total > MAX_PAIR_STATES || oracle::method(ctx) == Method::Reference {
            return None;
        }
        let n = ctx.dim();
        let mut raw = vec![0.0; 4 * n];
        let mut index = vec![0usize; l];
        let (mut b, mut b_anti) = (vec![0u32; l], vec![0u32; l]);
        let mut g = vec![0.0; n];
        loop {
            let mut prob = 1.0;
            for v in 0..l {
                let (x, y, q) = states[v][index[v]];
                b[v] = x;
                b_anti[v] = y;
                prob *= q;
            }
            g.iter_mut().for_each(|x| *x = 0.0);
            let (f, f_anti) = (
                ctx.objective.at_vertex(&b),
                ctx.objective.at_vertex(&b_anti),
            );
            add_pair(ctx, &b, &b_anti, f, f_anti, &mut g);
            for j in 0..n {
                let d = g[j] - ctx.grad[j];
                let d2 = d * d;
                raw[j] += prob * d;
                raw[n + j] += prob * d2;
                raw[2 * n + j] += prob * d2 * d;
                raw[3 * n + j] += prob * d2 * d2;
            }
            // Next state, mixed radix, the last variable fastest.
            let mut v = l;
            loop {
                if v == 0 {
                    return Some(moments_from_raw(ctx, &raw, s));
                }
                v -= 1;
                index[v] += 1;
                if index[v] < states[v].len() {
                    break;
                }
                index[v] = 0;
            }
        }
    }

    /// The closed form for a separable loss (see the module doc); no fourth moment.
    pub fn separable_moments(&self, ctx: &Context, s: u32) -> Option<ExactMoments> {
        let (terms, _) = ctx.objective.separable_terms()?;
        let l = ctx.l;
        let delta: Vec<f64> = (0..l).map(|v| terms[2 * v + 1] - terms[2 * v]).collect();
        let pair: Vec<f64> = (0..l)
            .map(|v| 2.0 * ctx.p[2 * v].min(ctx.p[2 * v + 1]))
            .collect();
        let spread: f64 = (0..l).map(|v| pair[v] * delta[v] * delta[v]).sum();
        let s = f64::from(s);
        let mut var = vec![0.0; 2 * l];
        for v in 0..l {
            let sigma = ctx.p[2 * v].max(ctx.p[2 * v + 1]);
            let others = spread - pair[v] * delta[v] * delta[v];
            let second = 0.25 * sigma * sigma * pair[v] * (delta[v] * delta[v] + others);
            let g = ctx.grad[2 * v + 1];
            let x = (second - g * g).max(0.0) / s;
            var[2 * v] = x;
            var[2 * v + 1] = x;
        }
        Some(ExactMoments {
            mean: ctx.grad.clone(),
            var,
            m4: None,
        })
    }
}

/// Mean, variance and fourth central moment of the S-draw average from the single-pair raw
/// moments about the exact gradient.
fn moments_from_raw(ctx: &Context, raw: &[f64], s: u32) -> ExactMoments {
    let n = ctx.dim();
    let s = f64::from(s);
    let (mut mean, mut var, mut m4) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    for j in 0..n {
        let (r1, r2, r3, r4) = (raw[j], raw[n + j], raw[2 * n + j], raw[3 * n + j]);
        let m2 = (r2 - r1 * r1).max(0.0);
        let c4 = (r4 - 4.0 * r1 * r3 + 6.0 * r1 * r1 * r2 - 3.0 * r1.powi(4)).max(0.0);
        mean[j] = ctx.grad[j] + r1;
        var[j] = m2 / s;
        m4[j] = (c4 + 3.0 * (s - 1.0) * m2 * m2) / (s * s * s);
    }
    ExactMoments {
        mean,
        var,
        m4: Some(m4),
    }
}

impl Estimator for Disarm {
    fn id(&self) -> &'static str {
        "disarm"
    }
    fn family(&self) -> Family {
        Family::ScoreFunction
    }
    fn is_unbiased(&self) -> bool {
        true
    }
    fn check(&self, ctx: &Context) -> Result<()> {
        if ctx.k != 2 {
            return Err(Error::InvalidArgument(format!(
                "disarm is defined for binary variables (K = 2) only, and this problem has K = {}; drop it or use arsm, its categorical counterpart",
                ctx.k
            )));
        }
        Ok(())
    }
    /// No baseline: every estimate reads its own repetition alone.
    fn keeps_moving_average(&self) -> bool {
        false
    }
    fn loss_evaluations(&self, _ctx: &Context, s: u32) -> f64 {
        2.0 * f64::from(s)
    }
    fn exact_moments(&self, ctx: &Context, s: u32) -> Option<ExactMoments> {
        if ctx.k != 2 {
            return None;
        }
        if oracle::method(ctx) == Method::Separable && ctx.l > 1 {
            return self.separable_moments(ctx, s);
        }
        self.enumerated_moments(ctx, s)
    }
    fn estimate(&self, ctx: &Context, d: &JointDraws<'_>, _: f64, out: &mut [f64]) -> Option<f64> {
        let l = ctx.l;
        // Per variable, contiguous: sigma(|theta_l|) = max(p_l0, p_l1), and the partner's
        // thresholds on the uniforms' random bits (a function of `p` alone, built once per
        // context).
        let sigma_abs: Vec<f64> = (0..l).map(|v| ctx.p[2 * v].max(ctx.p[2 * v + 1])).collect();
        let table = ctx
            .table_cache
            .get_or_build(self.id(), &[&ctx.p], None, || {
                let p1: Vec<f64> = (0..l).map(|v| ctx.p[2 * v + 1]).collect();
                partner_thresholds(&p1).into_iter().map(f64::from).collect()
            });
        let thresholds: Vec<u32> = table.iter().map(|&t| t as u32).collect();
        // Every draw's partner and its loss first (draw-major), then the pairs' terms.
        let mut anti = vec![0u32; d.s * l];
        let mut f_anti = vec![0.0; d.s];
        partners_and_losses(ctx, d, &thresholds, &mut anti, &mut f_anti);
        let (mut up, mut down) = (vec![0.0; l], vec![0.0; l]);
        add_pairs(l, d.z, &anti, d.f, &f_anti, &sigma_abs, &mut up, &mut down);
        let inv = 1.0 / d.s as f64;
        for (o, (&u, &w)) in out.chunks_exact_mut(2).zip(up.iter().zip(&down)) {
            o[0] = w * inv;
            o[1] = u * inv;
        }
        None
    }
}

/// Draw-major numbers (variables times draws) a task of [`partners_and_losses`] handles
/// at least; below twice as many the pass runs on the calling thread.
const PAIR_TASK_NUMBERS: usize = 1024;

/// Every draw's antithetic partner (`anti`, draw-major like `d.z`) and its loss (`f_anti`):
/// independent draw by draw, so in tasks of a fixed number of draws (the same partners and
/// losses whatever the thread count), in parallel where the pass is large enough.
fn partners_and_losses(
    ctx: &Context,
    d: &JointDraws<'_>,
    thresholds: &[u32],
    anti: &mut [u32],
    f_anti: &mut [f64],
) {
    let l = ctx.l;
    let per_task = PAIR_TASK_NUMBERS.div_ceil(l).max(1);
    let task = |t: usize, a: &mut [u32], fa: &mut [f64]| {
        let first = t * per_task;
        let n = a.len() / l;
        partners_of_draws(d, first, &d.z[first * l..(first + n) * l], thresholds, a);
        ctx.objective.at_vertices(a, fa);
    };
    if d.s * l >= 2 * PAIR_TASK_NUMBERS {
        anti.par_chunks_mut(per_task * l)
            .zip(f_anti.par_chunks_mut(per_task))
            .enumerate()
            .for_each(|(t, (a, fa))| task(t, a, fa));
    } else {
        for (t, (a, fa)) in anti
            .chunks_mut(per_task * l)
            .zip(f_anti.chunks_mut(per_task))
            .enumerate()
        {
            task(t, a, fa);
        }
    }
}

/// Adds every pair's `g_hat_theta_l` (0 where `b_l = b~_l`) to `up[l]` and subtracts it from
/// `down[l]`, pair after pair: the numbers [`add_pair`] adds to coordinates `2l + 1` and `2l`,
/// in the same order (a pair whose partner is the draw itself adds nothing and is skipped;
/// the zero terms of the other variables change no sum, which starts at +0 and so is never
/// -0). Contiguous per variable, so the terms vectorise (AVX2 where present, the same bits).
#[allow(clippy::too_many_arguments)]
fn add_pairs(
    l: usize,
    z: &[u32],
    anti: &[u32],
    f: &[f64],
    f_anti: &[f64],
    sigma_abs: &[f64],
    up: &mut [f64],
    down: &mut [f64],
) {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[allow(clippy::too_many_arguments)]
    fn avx2(
        l: usize,
        z: &[u32],
        anti: &[u32],
        f: &[f64],
        f_anti: &[f64],
        sigma_abs: &[f64],
        up: &mut [f64],
        down: &mut [f64],
    ) {
        add_pairs_lanes(l, z, anti, f, f_anti, sigma_abs, up, down);
    }
    #[cfg(target_arch = "x86_64")]
    if crate::fastmath::has_avx2() {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx2(l, z, anti, f, f_anti, sigma_abs, up, down) };
    }
    add_pairs_lanes(l, z, anti, f, f_anti, sigma_abs, up, down);
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn add_pairs_lanes(
    l: usize,
    z: &[u32],
    anti: &[u32],
    f: &[f64],
    f_anti: &[f64],
    sigma_abs: &[f64],
    up: &mut [f64],
    down: &mut [f64],
) {
    let (up, down, sigma_abs) = (&mut up[..l], &mut down[..l], &sigma_abs[..l]);
    for ((b, a), (&fb, &fa)) in z
        .chunks_exact(l)
        .zip(anti.chunks_exact(l))
        .zip(f.iter().zip(f_anti))
    {
        if a == b {
            continue;
        }
        let half = 0.5 * (fb - fa);
        for ((((u, w), &x), &y), &s) in up
            .iter_mut()
            .zip(down.iter_mut())
            .zip(b)
            .zip(a)
            .zip(sigma_abs)
        {
            let v = if y == 1 { -half } else { half } * s;
            let g = if x != y { v } else { 0.0 };
            *u += g;
            *w -= g;
        }
    }
}

/// The random bits of the uniform of variable `v` of draw `i` that decide its partner: the
/// top 23 bits `m` of its word (the uniform is `open_uniform_f32` of the word, `(m + 1/2)
/// 2^-23`, as [`super::conditional::uniform`] gives it).
const UNIFORM_SHIFT: u32 = 9;

/// Where a variable's partner switches: per variable `v`, the least `m` (the 23 random bits
/// of its uniform, see [`UNIFORM_SHIFT`]) from which [`partners`] gives `b~_v = 1`, given
/// `b_v = 0` (`out[v]`) and given `b_v = 1` (`out[L + v]`); 2^23 where it never does.
/// `partners` is monotone in the uniform (`u` grows with it, since every rounded step does,
/// so `1 - u < p_v1` turns from false to true once), so a binary search over the 2^23
/// values finds that index, and `b~_v = 1[m >= threshold]` is `partners`' value bit for bit
/// (test `partner_thresholds_split_every_uniform_as_the_partner_does`).
fn partner_thresholds(p1: &[f64]) -> Vec<u32> {
    let l = p1.len();
    let mut out = vec![0u32; 2 * l];
    for (v, &p) in p1.iter().enumerate() {
        for b in 0..2u32 {
            let partner = |m: u32| {
                let u = [f64::from(crate::philox::open_uniform_f32(
                    m << UNIFORM_SHIFT,
                ))];
                let mut a = [0u32];
                partners(&[b], &u, &[p], &mut a);
                a[0] == 1
            };
            let (mut lo, mut hi) = (0u32, 1u32 << (32 - UNIFORM_SHIFT));
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if partner(mid) {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            out[b as usize * l + v] = lo;
        }
    }
    out
}

/// The partners `anti` of the draws `first ..` whose categories `z` holds (draw-major),
/// each straight from its uniforms' random words and the [`partner_thresholds`] (the
/// partners [`partners`] gives from the uniforms, bit for bit): the Philox blocks eight at a
/// time in AVX2 registers where the CPU has AVX2, the same words either way.
fn partners_of_draws(
    d: &JointDraws<'_>,
    first: usize,
    z: &[u32],
    thresholds: &[u32],
    anti: &mut [u32],
) {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn avx2(d: &JointDraws<'_>, first: usize, z: &[u32], thresholds: &[u32], anti: &mut [u32]) {
        partners_of_draws_lanes::<true>(d, first, z, thresholds, anti);
    }
    #[cfg(target_arch = "x86_64")]
    if crate::fastmath::has_avx2() {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx2(d, first, z, thresholds, anti) };
    }
    partners_of_draws_lanes::<false>(d, first, z, thresholds, anti);
}

/// [`partners_of_draws`]; `X8`: the Philox blocks eight at a time in AVX2 registers (only
/// from a function compiled with AVX2, on a CPU that has it), else one at a time.
#[inline(always)]
fn partners_of_draws_lanes<const X8: bool>(
    d: &JointDraws<'_>,
    first: usize,
    z: &[u32],
    thresholds: &[u32],
    anti: &mut [u32],
) {
    let l = thresholds.len() / 2;
    let (t0, t1) = thresholds.split_at(l);
    let blocks = l.div_ceil(4);
    // The 23 random bits of every variable's uniform, in variable order (whole blocks).
    let mut bits = vec![0u32; blocks * 4];
    #[cfg(target_arch = "x86_64")]
    let keys = crate::philox::x8::RoundKeys::new(d.noise.key);
    for (j, (b, a)) in z.chunks_exact(l).zip(anti.chunks_exact_mut(l)).enumerate() {
        let draw = (first + j) as u32;
        #[allow(unused_mut)]
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if X8 {
            // SAFETY: X8 only from a function compiled with AVX2 (see above).
            done = unsafe { uniform_bits_x8(&keys, &d.noise, draw, &mut bits) };
        }
        for block in done..blocks {
            let words = d.noise.words(draw, block as u32);
            for (o, w) in bits[block * 4..block * 4 + 4].iter_mut().zip(words) {
                *o = w >> UNIFORM_SHIFT;
            }
        }
        #[allow(unused_mut)]
        let mut from = 0;
        #[cfg(target_arch = "x86_64")]
        if X8 {
            // SAFETY: as above.
            from = unsafe { select_partners_x8(b, &bits, t0, t1, a) };
        }
        for ((((y, &x), &m), &lo), &hi) in a[from..]
            .iter_mut()
            .zip(&b[from..])
            .zip(&bits[from..])
            .zip(&t0[from..])
            .zip(&t1[from..])
        {
            let t = if x == 1 { hi } else { lo };
            *y = u32::from(m >= t);
        }
    }
}

/// `a[v] = 1[bits[v] >= (b[v] == 1 ? t1[v] : t0[v])]` for the whole groups of eight
/// variables, in AVX2 registers (every number below 2^31, so the signed comparison is the
/// unsigned one); returns the variables done.
///
/// # Safety
/// Only from a function compiled with AVX2, on a CPU that has it.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn select_partners_x8(
    b: &[u32],
    bits: &[u32],
    t0: &[u32],
    t1: &[u32],
    a: &mut [u32],
) -> usize {
    use std::arch::x86_64::*;
    let whole = a.len() / 8 * 8;
    let (b, bits, t0, t1) = (&b[..whole], &bits[..whole], &t0[..whole], &t1[..whole]);
    // SAFETY (every intrinsic): AVX2, the caller's promise; every load and store reads or
    // writes eight numbers of a slice of `whole` numbers, from a multiple of eight below it.
    unsafe {
        let one = _mm256_set1_epi32(1);
        for v in (0..whole).step_by(8) {
            // (No closure: a closure is not compiled with the caller's target features.)
            let (x, lo, hi, m) = (
                _mm256_loadu_si256(b.as_ptr().add(v).cast()),
                _mm256_loadu_si256(t0.as_ptr().add(v).cast()),
                _mm256_loadu_si256(t1.as_ptr().add(v).cast()),
                _mm256_loadu_si256(bits.as_ptr().add(v).cast()),
            );
            let is_one = _mm256_cmpeq_epi32(x, one);
            let t = _mm256_blendv_epi8(lo, hi, is_one);
            let below = _mm256_cmpgt_epi32(t, m);
            _mm256_storeu_si256(
                a.as_mut_ptr().add(v).cast(),
                _mm256_andnot_si256(below, one),
            );
        }
    }
    whole
}

/// The random bits ([`UNIFORM_SHIFT`]) of the uniforms of draw `draw`'s whole groups of
/// eight Philox blocks into `bits` (variable order, four per block); returns the blocks done.
///
/// # Safety
/// Only from a function compiled with AVX2, on a CPU that has it.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn uniform_bits_x8(
    keys: &crate::philox::x8::RoundKeys,
    noise: &super::Noise,
    draw: u32,
    bits: &mut [u32],
) -> usize {
    use crate::philox::{x8, STREAM_AUX};
    use std::arch::x86_64::*;
    let blocks = bits.len() / 4;
    // SAFETY (every intrinsic): AVX2, the caller's promise.
    unsafe {
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let stream = _mm256_set1_epi32((STREAM_AUX << 16) as i32);
        let (c0, c1, c3) = (
            _mm256_set1_epi32(draw as i32),
            _mm256_set1_epi32(noise.rep as i32),
            _mm256_set1_epi32(noise.point as i32),
        );
        let mut first = 0;
        while blocks - first >= 8 {
            // Counter word 2 is `(STREAM_AUX << 16) | block`, as `Noise::words` has it.
            let c2 = _mm256_or_si256(
                stream,
                _mm256_add_epi32(_mm256_set1_epi32(first as i32), lane),
            );
            let words = x8::philox(keys, [c0, c1, c2, c3]);
            const SHIFT: i32 = UNIFORM_SHIFT as i32;
            let words = [
                _mm256_srli_epi32::<SHIFT>(words[0]),
                _mm256_srli_epi32::<SHIFT>(words[1]),
                _mm256_srli_epi32::<SHIFT>(words[2]),
                _mm256_srli_epi32::<SHIFT>(words[3]),
            ];
            let out: &mut [u32; 32] = (&mut bits[first * 4..first * 4 + 32])
                .try_into()
                .expect("32 words");
            x8::store_block_major(words, out);
            first += 8;
        }
        first
    }
}

/// The antithetic partner `b~` of the draw `b` from the uniforms `v` (see the module doc),
/// without branches: `u_l = p_l1 v_l` where `b_l = 1`, `p_l1 + (1 - p_l1) v_l` where it is 0,
/// and `b~_l = 1[1 - u_l < p_l1]`.
#[inline(always)]
fn partners(b: &[u32], v: &[f64], p1: &[f64], anti: &mut [u32]) {
    for (((y, &x), &w), &p) in anti.iter_mut().zip(b).zip(v).zip(p1) {
        let one = p * w;
        let zero = p + (1.0 - p) * w;
        let u = if x == 1 { one } else { zero };
        *y = u32::from(1.0 - u < p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimators::st::tests::{draws_of, joint};
    use crate::loss::Loss;

    /// L binary variables of uneven probabilities under a pnorm loss (at p = 1/2, as in
    /// reinmax-poly, the partner is the complement whatever the uniforms).
    fn uneven_context(l: usize) -> Context {
        let mut problem = crate::problem::Problem::free_logits(
            l,
            2,
            (0..2 * l).map(|i| (i as f64 * 0.9).sin()).collect(),
        );
        problem.b = (0..l).map(|i| (i as f64 * 0.3).cos().abs()).collect();
        problem.exponent = 1.5;
        Context::new(&problem, Loss::Pnorm, 1.0)
    }

    /// The estimate's bits as the paper's pairs are added one by one ([`add_pair`], the
    /// uniforms one at a time, the loss of each partner by `at_vertex`).
    fn pair_by_pair(ctx: &Context, z: &[u32], f: &[f64], d: &JointDraws<'_>) -> Vec<u64> {
        let l = ctx.l;
        let mut want = vec![0.0; ctx.dim()];
        let mut anti = vec![0u32; l];
        let mut uniforms = vec![0.0; l];
        for (i, (b, &fb)) in z.chunks_exact(l).zip(f).enumerate() {
            for (v, w) in uniforms.iter_mut().enumerate() {
                *w = crate::estimators::conditional::uniform(&d.noise, i as u32, v);
            }
            for (v, ((&x, y), &w)) in b.iter().zip(anti.iter_mut()).zip(&uniforms).enumerate() {
                let p1 = ctx.p[2 * v + 1];
                let u = if x == 1 { p1 * w } else { p1 + (1.0 - p1) * w };
                *y = u32::from(1.0 - u < p1);
            }
            if anti.as_slice() != b {
                let fa = ctx.objective.at_vertex(&anti);
                add_pair(ctx, b, &anti, fb, fa, &mut want);
            }
        }
        want.iter_mut().for_each(|o| *o *= 1.0 / f.len() as f64);
        want.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn disarm_gives_the_same_bits_on_any_number_of_threads() {
        // 96 variables of uneven probabilities: S = 64 runs the partners in parallel tasks,
        // S = 37 in tasks of uneven length; one thread, two and three give the same estimate,
        // that of the pairs added one by one.
        let ctx = uneven_context(96);
        for (s, rep) in [(64u32, 3u32), (37, 4)] {
            let (z, f) = draws_of(&ctx, s, rep);
            let d = joint(&z, &f, rep);
            let runs: Vec<Vec<u64>> = [1, 2, 3]
                .iter()
                .map(|&threads| {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let mut out = vec![0.0; ctx.dim()];
                    pool.install(|| Disarm.estimate(&ctx, &d, 0.0, &mut out));
                    out.iter().map(|x| x.to_bits()).collect()
                })
                .collect();
            assert!(ctx.l * s as usize >= 2 * PAIR_TASK_NUMBERS);
            assert_eq!(runs[0], runs[1], "S = {s}");
            assert_eq!(runs[0], runs[2], "S = {s}");
            assert_eq!(runs[0], pair_by_pair(&ctx, &z, &f, &d), "S = {s}");
        }
    }

    #[test]
    fn pair_terms_add_the_same_with_and_without_avx2() {
        let ctx = uneven_context(70);
        let l = ctx.l;
        let (z, f) = draws_of(&ctx, 40, 6);
        let d = joint(&z, &f, 6);
        let p1: Vec<f64> = (0..l).map(|v| ctx.p[2 * v + 1]).collect();
        let thresholds = partner_thresholds(&p1);
        let sigma_abs: Vec<f64> = (0..l).map(|v| ctx.p[2 * v].max(ctx.p[2 * v + 1])).collect();
        let mut anti = vec![0u32; 40 * l];
        let mut f_anti = vec![0.0; 40];
        partners_and_losses(&ctx, &d, &thresholds, &mut anti, &mut f_anti);
        let (mut up, mut down) = (vec![0.0; l], vec![0.0; l]);
        add_pairs(l, &z, &anti, &f, &f_anti, &sigma_abs, &mut up, &mut down);
        let (mut up_plain, mut down_plain) = (vec![0.0; l], vec![0.0; l]);
        add_pairs_lanes(
            l,
            &z,
            &anti,
            &f,
            &f_anti,
            &sigma_abs,
            &mut up_plain,
            &mut down_plain,
        );
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&up), bits(&up_plain));
        assert_eq!(bits(&down), bits(&down_plain));
        assert!(up.iter().any(|&g| g != 0.0));
        // The partners too, from draw 3 on (70 variables: two groups of eight Philox blocks
        // and two blocks one at a time, the last one partial), and the partners of the
        // uniforms one at a time.
        let mut plain = vec![0u32; 37 * l];
        partners_of_draws_lanes::<false>(&d, 3, &z[3 * l..], &thresholds, &mut plain);
        let mut fast = vec![0u32; 37 * l];
        partners_of_draws(&d, 3, &z[3 * l..], &thresholds, &mut fast);
        assert_eq!(fast, plain);
        assert_eq!(fast, anti[3 * l..]);
        let mut from_uniforms = vec![0u32; 37 * l];
        let mut uniforms = vec![0.0; l];
        for (j, (b, a)) in z[3 * l..]
            .chunks_exact(l)
            .zip(from_uniforms.chunks_exact_mut(l))
            .enumerate()
        {
            for (v, u) in uniforms.iter_mut().enumerate() {
                *u = crate::estimators::conditional::uniform(&d.noise, 3 + j as u32, v);
            }
            partners(b, &uniforms, &p1, a);
        }
        assert_eq!(fast, from_uniforms);
        assert!(fast.iter().zip(&z[3 * l..]).any(|(a, b)| a == b));
        assert!(fast.iter().zip(&z[3 * l..]).any(|(a, b)| a != b));
    }

    #[test]
    fn partner_thresholds_split_every_uniform_as_the_partner_does() {
        // Every one of the 2^23 uniforms, for probabilities at 1/2, near 0 and 1, and uneven:
        // the partner from the uniform is 1 exactly from the threshold on, given either draw.
        let p1 = [0.5, 0.3, 0.7, 1e-9, 1.0 - 1e-9, 0.123_456_789, 0.0, 1.0];
        let thresholds = partner_thresholds(&p1);
        let l = p1.len();
        for (v, &p) in p1.iter().enumerate() {
            for b in 0..2u32 {
                let t = thresholds[b as usize * l + v];
                for m in 0..1u32 << (32 - UNIFORM_SHIFT) {
                    let u = [f64::from(crate::philox::open_uniform_f32(
                        m << UNIFORM_SHIFT,
                    ))];
                    let mut a = [0u32];
                    partners(&[b], &u, &[p], &mut a);
                    assert_eq!(a[0], u32::from(m >= t), "p1 = {p}, b = {b}, m = {m}");
                }
            }
            // Away from 0, 1/2 and 1 (beyond the 23 bits' resolution), the partner of one of
            // the two draws depends on the uniform: a threshold inside the range.
            if (0.01..0.99).contains(&p) && p != 0.5 {
                let inside = |t: u32| t > 0 && t < 1 << (32 - UNIFORM_SHIFT);
                assert!(
                    inside(thresholds[v]) || inside(thresholds[l + v]),
                    "p1 = {p}"
                );
            }
        }
    }

    #[test]
    fn branch_free_pairs_give_the_per_pair_estimate_bit_for_bit() {
        // The estimate as the paper's pairs are added one by one ([`add_pair`], the loss of
        // each partner by `at_vertex`), against the branch-free batched form.
        let named = (crate::problems::by_name("reinmax-poly").unwrap().build)(0);
        let mut small = crate::problem::Problem::free_logits(
            5,
            2,
            (0..10).map(|i| (f64::from(i) * 0.9).sin()).collect(),
        );
        small.b = vec![0.45; 5];
        small.exponent = 1.5;
        small.decoder = Some(crate::problem::Decoder {
            h: 3,
            v: (0..30).map(|i| (f64::from(i) * 0.37).cos()).collect(),
            c: vec![0.1, -0.3, 0.2],
            target: vec![1.0, 0.0, 1.0],
        });
        let contexts = [
            Context::new(&named, Loss::Pnorm, 1.0),
            Context::new(&small, Loss::Pnorm, 1.0),
            Context::new(&small, Loss::Decoder, 1.0),
        ];
        for ctx in &contexts {
            let l = ctx.l;
            for (s, rep) in [(1u32, 0u32), (7, 1), (64, 2)] {
                let (z, f) = draws_of(ctx, s, rep);
                let d = joint(&z, &f, rep);
                let mut out = vec![0.0; ctx.dim()];
                Disarm.estimate(ctx, &d, 0.0, &mut out);
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let want = pair_by_pair(ctx, &z, &f, &d);
                assert_eq!(bits(&out), want, "{} L={l} S={s}", ctx.loss);
                assert!(out.iter().any(|&g| g != 0.0) || s == 1);
            }
        }
    }
}
