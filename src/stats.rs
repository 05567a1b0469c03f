//! Streaming moments in f64: count, mean and the second to fourth central moment sums, updated
//! one value at a time (Welford) and merged pairwise (Chan et al.; Pebay 2008), never as
//! `E[x^2] - E[x]^2`. Merging in a fixed order makes results independent of thread count.
//! The CPU engine's cheaper form, [`MomentSums`], sums the powers of each value's distance
//! from a shift near the mean over a block of repetitions (vectorised, no division per value)
//! and merges the block's central moments the same way.

/// Streaming central moments of one scalar.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Moments {
    /// Number of values.
    pub n: f64,
    /// Their mean.
    pub mean: f64,
    /// Sum of squared deviations from the mean.
    pub m2: f64,
    /// Sum of cubed deviations.
    pub m3: f64,
    /// Sum of fourth-power deviations.
    pub m4: f64,
}

impl Moments {
    /// Adds one value.
    #[inline]
    pub fn push(&mut self, x: f64) {
        let n1 = self.n;
        self.n += 1.0;
        let n = self.n;
        let delta = x - self.mean;
        let delta_n = delta / n;
        let delta_n2 = delta_n * delta_n;
        let term1 = delta * delta_n * n1;
        self.mean += delta_n;
        self.m4 += term1 * delta_n2 * (n * n - 3.0 * n + 3.0) + 6.0 * delta_n2 * self.m2
            - 4.0 * delta_n * self.m3;
        self.m3 += term1 * delta_n * (n - 2.0) - 3.0 * delta_n * self.m2;
        self.m2 += term1;
    }

    /// Merges the moments of another set of values into these.
    pub fn merge(&mut self, b: &Moments) {
        if b.n == 0.0 {
            return;
        }
        if self.n == 0.0 {
            *self = *b;
            return;
        }
        let (na, nb) = (self.n, b.n);
        let n = na + nb;
        let d = b.mean - self.mean;
        let d2 = d * d;
        let m2 = self.m2 + b.m2 + d2 * na * nb / n;
        let m3 = self.m3
            + b.m3
            + d2 * d * na * nb * (na - nb) / (n * n)
            + 3.0 * d * (na * b.m2 - nb * self.m2) / n;
        let m4 = self.m4
            + b.m4
            + d2 * d2 * na * nb * (na * na - na * nb + nb * nb) / (n * n * n)
            + 6.0 * d2 * (na * na * b.m2 + nb * nb * self.m2) / (n * n)
            + 4.0 * d * (na * b.m3 - nb * self.m3) / n;
        *self = Moments {
            n,
            mean: self.mean + d * nb / n,
            m2,
            m3,
            m4,
        };
    }

    /// Unbiased sample variance (0 with fewer than two values).
    pub fn variance(&self) -> f64 {
        if self.n > 1.0 {
            self.m2 / (self.n - 1.0)
        } else {
            0.0
        }
    }

    /// Sample fourth central moment `M4 / n`.
    pub fn fourth_moment(&self) -> f64 {
        if self.n > 0.0 {
            self.m4 / self.n
        } else {
            0.0
        }
    }

    /// Standard error of the mean.
    pub fn mean_se(&self) -> f64 {
        if self.n > 1.0 {
            (self.variance() / self.n).sqrt()
        } else {
            f64::NAN
        }
    }

    /// Standard error of the sample variance, from the fourth moment:
    /// `Var(s^2) = (mu4 - sigma^4 (n - 3) / (n - 1)) / n`.
    pub fn variance_se(&self) -> f64 {
        variance_se(self.fourth_moment(), self.variance(), self.n)
    }
}

/// Standard error of a sample variance of `n` values with fourth central moment `mu4` and
/// variance `var`: `sqrt((mu4 - var^2 (n - 3) / (n - 1)) / n)`.
pub fn variance_se(mu4: f64, var: f64, n: f64) -> f64 {
    if n < 2.0 {
        return f64::NAN;
    }
    ((mu4 - var * var * (n - 3.0) / (n - 1.0)).max(0.0) / n).sqrt()
}

/// Relative size below which an estimate counts as zero for its cosine (see
/// [`EstimateMoments::push`]; keep in sync with `ZERO_ESTIMATE` in shaders/common.wgsl).
pub const ZERO_ESTIMATE: f64 = 1e-5;

/// The moments of one estimator's repeated S-draw estimates `g_hat_r` (K-vectors): per
/// coordinate, plus the per-repetition squared error `||g_hat_r - g||^2` and cosine
/// `cos(g_hat_r, g)` against the exact gradient `g`.
#[derive(Clone, Debug, PartialEq)]
pub struct EstimateMoments {
    /// Per-coordinate moments, K of them.
    pub coords: Vec<Moments>,
    /// Moments of `||g_hat_r - g||^2`.
    pub sq_error: Moments,
    /// Moments of `cos(g_hat_r, g)` (without the estimates that are 0 up to rounding, and
    /// empty when g is 0).
    pub cosine: Moments,
}

impl EstimateMoments {
    /// Empty moments for K coordinates.
    pub fn new(k: usize) -> Self {
        Self {
            coords: vec![Moments::default(); k],
            sq_error: Moments::default(),
            cosine: Moments::default(),
        }
    }

    /// Adds one estimate, compared with the exact gradient `exact`.
    pub fn push(&mut self, estimate: &[f64], exact: &[f64]) {
        let (mut err, mut dot, mut nn, mut ee) = (0.0, 0.0, 0.0, 0.0);
        for ((m, &v), &g) in self.coords.iter_mut().zip(estimate).zip(exact) {
            m.push(v);
            err += (v - g) * (v - g);
            dot += v * g;
            nn += v * v;
            ee += g * g;
        }
        self.sq_error.push(err);
        // An estimate that is zero up to rounding (below ZERO_ESTIMATE of |g_hat - g| + |g|,
        // as when every draw's loss equals its baseline) has no direction: its cosine is left
        // out, on every engine alike (the GPU's f32 leaves about 1e-7 where f64 leaves 0).
        if ee > 0.0 && nn > ZERO_ESTIMATE * ZERO_ESTIMATE * (err + ee) {
            self.cosine.push(dot / (nn * ee).sqrt());
        }
    }

    /// Merges another set of estimates into these.
    pub fn merge(&mut self, other: &EstimateMoments) {
        for (a, b) in self.coords.iter_mut().zip(&other.coords) {
            a.merge(b);
        }
        self.sq_error.merge(&other.sq_error);
        self.cosine.merge(&other.cosine);
    }

    /// Number of estimates.
    pub fn count(&self) -> f64 {
        self.sq_error.n
    }
}

/// A block of estimates in a cheaper form than [`EstimateMoments::push`]: per coordinate (and
/// for the squared error and the cosine) the sums of the first four powers of `x - c`, about a
/// shift `c` fixed for the block, structure of arrays so that a push is a few vectorised
/// multiply-adds and no division. [`MomentSums::flush_into`] turns the block's sums into
/// central moments and merges them (Pebay) into an [`EstimateMoments`], in a fixed order.
///
/// The shift is the target's running mean where it already holds values, else the block's
/// first value. With `mu` the block mean of `d = x - c`, `M2 = S2 - n mu^2`,
/// `M3 = S3 - 3 mu S2 + 2 n mu^3`, `M4 = S4 - 4 mu S3 + 6 mu^2 S2 - 3 n mu^4`. The rounding
/// of these differences is that of the sums, relative to the larger of the central moment
/// and `n mu^p`: with `c` within a few standard deviations of the mean (the running mean is
/// within one of it; a first value is one draw), `M2` is exact to a few ulps and `M3`, `M4`
/// to a few ulps times `1 + (mu / sigma)^4`, which the tests bound against two-pass moments
/// (relative 1e-13 for the mean, 1e-11 for `M2`, 1e-9 for `M4`). Not bit-identical to the
/// value-by-value Welford update.
#[derive(Clone, Debug)]
pub struct MomentSums {
    /// Coordinates K; slots `0..K` are the coordinates, slot K the squared error.
    dim: usize,
    /// Values in the block (the cosine has its own count).
    n: u64,
    n_cos: u64,
    /// Shifts (K + 1, then the cosine's), set at the block's first value where the target is
    /// empty.
    shift: Vec<f64>,
    shift_cos: f64,
    shift_pending: bool,
    shift_cos_pending: bool,
    /// Per slot, the sums of the first to fourth powers.
    sums: Vec<[f64; 4]>,
    cos: [f64; 4],
}

impl MomentSums {
    /// An empty block for K coordinates, shifted by `target`'s means.
    pub fn new(target: &EstimateMoments) -> Self {
        let dim = target.coords.len();
        let mut sums = Self {
            dim,
            n: 0,
            n_cos: 0,
            shift: vec![0.0; dim + 1],
            shift_cos: 0.0,
            shift_pending: true,
            shift_cos_pending: true,
            sums: vec![[0.0; 4]; dim + 1],
            cos: [0.0; 4],
        };
        sums.restart(target);
        sums
    }

    /// Empties the block and takes `target`'s means as the shifts.
    fn restart(&mut self, target: &EstimateMoments) {
        self.n = 0;
        self.n_cos = 0;
        self.sums.iter_mut().for_each(|x| *x = [0.0; 4]);
        self.cos = [0.0; 4];
        self.shift_pending = target.sq_error.n == 0.0;
        if !self.shift_pending {
            for (c, m) in self.shift.iter_mut().zip(&target.coords) {
                *c = m.mean;
            }
            self.shift[self.dim] = target.sq_error.mean;
        }
        self.shift_cos_pending = target.cosine.n == 0.0;
        if !self.shift_cos_pending {
            self.shift_cos = target.cosine.mean;
        }
    }

    /// Adds `n` estimates (at most [`PUSH_BATCH`]), each compared with the exact gradient
    /// `exact`: `batch` holds them coordinate-major, `batch[j * PUSH_BATCH + r]` is coordinate
    /// j of estimate r. The squared error and the cosine of each are the values
    /// [`EstimateMoments::push`] takes (the same arithmetic, lane by lane); the power sums add
    /// the batch in eight lanes, folded in a fixed order. Vectorised (AVX2 where present, with
    /// the same results).
    pub fn push_batch(&mut self, batch: &[f64], n: usize, exact: &[f64]) {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        fn avx2(sums: &mut MomentSums, batch: &[f64], n: usize, exact: &[f64]) {
            if n == PUSH_BATCH {
                sums.push_batch_lanes::<true, true>(batch, n, exact);
            } else {
                sums.push_batch_lanes::<true, false>(batch, n, exact);
            }
        }
        #[cfg(target_arch = "x86_64")]
        if crate::fastmath::has_avx2() {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { avx2(self, batch, n, exact) };
        }
        self.push_batch_lanes::<false, false>(batch, n, exact);
    }

    /// [`Self::push_batch`] with AVX2 registers or not, and with `n` the constant
    /// [`PUSH_BATCH`] (`FULL`, so that no loop has a remainder) or not: the same results.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    fn push_batch_lanes<const AVX2: bool, const FULL: bool>(
        &mut self,
        batch: &[f64],
        n: usize,
        exact: &[f64],
    ) {
        const B: usize = PUSH_BATCH;
        let n = if FULL { B } else { n };
        let dim = self.dim;
        assert!(
            (1..=B).contains(&n)
                && B.is_multiple_of(8)
                && batch.len() >= dim * B
                && exact.len() >= dim
        );
        let (mut err, mut dot, mut nn) = ([0f64; B], [0f64; B], [0f64; B]);
        // ||g||^2, the same sum for every estimate.
        let mut ee = 0.0;
        for &g in &exact[..dim] {
            ee += g * g;
        }
        // Eight estimates at a time, their sums kept in registers across the coordinates (the
        // lanes past n read stale numbers of the buffer and are never used).
        for base in (0..n).step_by(8) {
            let (mut e, mut d, mut q) = ([0f64; 8], [0f64; 8], [0f64; 8]);
            for (j, &g) in exact[..dim].iter().enumerate() {
                let row: &[f64; 8] = batch[j * B + base..j * B + base + 8].try_into().unwrap();
                for l in 0..8 {
                    let v = row[l];
                    e[l] += (v - g) * (v - g);
                    d[l] += v * g;
                    q[l] += v * v;
                }
            }
            err[base..base + 8].copy_from_slice(&e);
            dot[base..base + 8].copy_from_slice(&d);
            nn[base..base + 8].copy_from_slice(&q);
        }
        if self.shift_pending {
            for j in 0..dim {
                self.shift[j] = batch[j * B];
            }
            self.shift[dim] = err[0];
            self.shift_pending = false;
        }
        for j in 0..=dim {
            let row = if j < dim {
                &batch[j * B..j * B + n]
            } else {
                &err[..n]
            };
            let t = lane_power_sums::<AVX2>(row, self.shift[j], None);
            for (a, b) in self.sums[j].iter_mut().zip(t) {
                *a += b;
            }
        }
        self.n += n as u64;
        // The cosines: left out where the estimate is zero up to rounding (see
        // EstimateMoments::push).
        if ee <= 0.0 {
            return;
        }
        let mut cos = [0f64; B];
        let mut kept = [0u64; B];
        for r in 0..n {
            let keep = nn[r] > ZERO_ESTIMATE * ZERO_ESTIMATE * (err[r] + ee);
            kept[r] = if keep { u64::MAX } else { 0 };
            cos[r] = dot[r] / (nn[r] * ee).sqrt();
        }
        if self.shift_cos_pending {
            if let Some(r) = (0..n).find(|&r| kept[r] != 0) {
                self.shift_cos = cos[r];
                self.shift_cos_pending = false;
            }
        }
        let t = lane_power_sums::<AVX2>(&cos[..n], self.shift_cos, Some(&kept[..n]));
        for (a, b) in self.cos.iter_mut().zip(t) {
            *a += b;
        }
        self.n_cos += kept[..n].iter().map(|&k| k & 1).sum::<u64>();
    }

    /// [`Self::push_batch`] of `n` copies of one estimate (at most [`PUSH_BATCH`]), as an
    /// estimator that ignores its draws (`exact`) gives: the same results, bit for bit (a
    /// test compares them), in O(K) rather than O(n K). Every lane of the eight adds the same
    /// value `n / 8` times, so one lane's sums stand for all eight in the fold.
    pub fn push_repeated(&mut self, estimate: &[f64], n: usize, exact: &[f64]) {
        let dim = self.dim;
        assert!((1..=PUSH_BATCH).contains(&n) && estimate.len() >= dim && exact.len() >= dim);
        let mut ee = 0.0;
        for &g in &exact[..dim] {
            ee += g * g;
        }
        let (mut err, mut dot, mut nn) = (0.0, 0.0, 0.0);
        for (&v, &g) in estimate[..dim].iter().zip(&exact[..dim]) {
            err += (v - g) * (v - g);
            dot += v * g;
            nn += v * v;
        }
        if self.shift_pending {
            self.shift[..dim].copy_from_slice(&estimate[..dim]);
            self.shift[dim] = err;
            self.shift_pending = false;
        }
        let values = estimate[..dim].iter().chain(std::iter::once(&err));
        for ((sums, &c), &x) in self.sums.iter_mut().zip(&self.shift).zip(values) {
            let t = repeated_power_sums(x - c, n);
            for (a, b) in sums.iter_mut().zip(t) {
                *a += b;
            }
        }
        self.n += n as u64;
        if ee <= 0.0 {
            return;
        }
        let keep = nn > ZERO_ESTIMATE * ZERO_ESTIMATE * (err + ee);
        let cos = dot / (nn * ee).sqrt();
        if self.shift_cos_pending && keep {
            self.shift_cos = cos;
            self.shift_cos_pending = false;
        }
        let d = if keep { cos - self.shift_cos } else { 0.0 };
        let t = repeated_power_sums(d, n);
        for (a, b) in self.cos.iter_mut().zip(t) {
            *a += b;
        }
        if keep {
            self.n_cos += n as u64;
        }
    }

    /// Merges the block into `target` (coordinates, squared error, cosine, in that order)
    /// and starts an empty block shifted by `target`'s new means.
    pub fn flush_into(&mut self, target: &mut EstimateMoments) {
        if self.n > 0 {
            for j in 0..self.dim {
                let m = central(self.n, self.shift[j], self.sums[j]);
                target.coords[j].merge(&m);
            }
            let d = self.dim;
            let m = central(self.n, self.shift[d], self.sums[d]);
            target.sq_error.merge(&m);
        }
        if self.n_cos > 0 {
            target
                .cosine
                .merge(&central(self.n_cos, self.shift_cos, self.cos));
        }
        self.restart(target);
    }
}

/// Estimates per [`MomentSums::push_batch`].
pub const PUSH_BATCH: usize = crate::estimators::COUNTS_BATCH;

/// `sum (x - c)^p` for p = 1..4 over the `x[r]` whose `keep[r]` is all ones (every `x[r]`
/// without `keep`), in eight lanes (lane `l` adds `x[8 i + l]`) folded in a fixed order, then
/// the last `len % 8` values one by one. With `AVX2` (only inside an AVX2 function) the lanes
/// are two AVX2 registers, with the same arithmetic lane by lane, so the same results.
#[inline(always)]
fn lane_power_sums<const AVX2: bool>(x: &[f64], c: f64, keep: Option<&[u64]>) -> [f64; 4] {
    const W: usize = 8;
    let full = x.len() / W * W;
    if let Some(keep) = keep {
        assert_eq!(keep.len(), x.len());
    }
    let masked = |r: usize, d: f64| match keep {
        Some(keep) => f64::from_bits(d.to_bits() & keep[r]),
        None => d,
    };
    #[cfg(target_arch = "x86_64")]
    let mut t = if AVX2 {
        // SAFETY: only called with AVX2 = true from a function compiled for AVX2, which runs
        // only where the CPU has it; every load is of x[..full] or keep[..full].
        unsafe { avx2_power_lanes(&x[..full], c, keep.map(|k| &k[..full])) }
    } else {
        scalar_power_lanes(&x[..full], c, &masked)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let mut t = scalar_power_lanes(&x[..full], c, &masked);
    for (r, &v) in x.iter().enumerate().skip(full) {
        let d = masked(r, v - c);
        let d2 = d * d;
        t[0] += d;
        t[1] += d2;
        t[2] += d2 * d;
        t[3] += d2 * d2;
    }
    t
}

/// [`lane_power_sums`] of `n` values whose distances from the shift are all `d` (masked
/// values are `d = 0`): each of the eight lanes adds `d^p` `n / 8` times, the lanes fold in
/// order from 0, and the last `n % 8` add one by one; the same operations on the same numbers.
fn repeated_power_sums(d: f64, n: usize) -> [f64; 4] {
    let d2 = d * d;
    let powers = [d, d2, d2 * d, d2 * d2];
    let mut lane = [0f64; 4];
    for _ in 0..n / 8 {
        for (a, p) in lane.iter_mut().zip(powers) {
            *a += p;
        }
    }
    let mut t = [0f64; 4];
    for _ in 0..8 {
        for (a, l) in t.iter_mut().zip(lane) {
            *a += l;
        }
    }
    for _ in 0..n % 8 {
        for (a, p) in t.iter_mut().zip(powers) {
            *a += p;
        }
    }
    t
}

/// The eight-lane loop of [`lane_power_sums`] (`x.len()` a multiple of 8), each lane's
/// four sums folded in lane order from 0: `t_p = (((0 + a_p0) + a_p1) + ...) + a_p7`.
#[inline(always)]
fn scalar_power_lanes(x: &[f64], c: f64, masked: &impl Fn(usize, f64) -> f64) -> [f64; 4] {
    const W: usize = 8;
    let mut acc = [[0f64; W]; 4];
    for base in (0..x.len()).step_by(W) {
        for l in 0..W {
            let d = masked(base + l, x[base + l] - c);
            let d2 = d * d;
            acc[0][l] += d;
            acc[1][l] += d2;
            acc[2][l] += d2 * d;
            acc[3][l] += d2 * d2;
        }
    }
    acc.map(|a| a.iter().fold(0.0, |s, v| s + v))
}

/// [`scalar_power_lanes`] in AVX2 registers, with the same arithmetic lane by lane. The fold
/// runs on the four sums at once: the accumulators (four sums by eight lanes) are transposed
/// into eight vectors of the four sums' lane l, added in lane order to a vector of zeros.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn avx2_power_lanes(x: &[f64], c: f64, keep: Option<&[u64]>) -> [f64; 4] {
    use std::arch::x86_64::*;
    let cv = _mm256_set1_pd(c);
    // a[2 p + h]: sum of power p + 1, lanes 4 h .. 4 h + 3.
    let mut a = [_mm256_setzero_pd(); 8];
    for base in (0..x.len()).step_by(8) {
        for h in 0..2 {
            let mut d = _mm256_sub_pd(_mm256_loadu_pd(x.as_ptr().add(base + 4 * h)), cv);
            if let Some(keep) = keep {
                let m = _mm256_loadu_pd(keep.as_ptr().add(base + 4 * h).cast::<f64>());
                d = _mm256_and_pd(d, m);
            }
            let d2 = _mm256_mul_pd(d, d);
            a[h] = _mm256_add_pd(a[h], d);
            a[2 + h] = _mm256_add_pd(a[2 + h], d2);
            a[4 + h] = _mm256_add_pd(a[4 + h], _mm256_mul_pd(d2, d));
            a[6 + h] = _mm256_add_pd(a[6 + h], _mm256_mul_pd(d2, d2));
        }
    }
    let mut t = _mm256_setzero_pd();
    for h in 0..2 {
        // Rows (p1, p2, p3, p4) of lanes 4h..4h+3 into columns (lane l of p1..p4).
        let (p1, p2, p3, p4) = (a[h], a[2 + h], a[4 + h], a[6 + h]);
        let t0 = _mm256_unpacklo_pd(p1, p2);
        let t1 = _mm256_unpackhi_pd(p1, p2);
        let t2 = _mm256_unpacklo_pd(p3, p4);
        let t3 = _mm256_unpackhi_pd(p3, p4);
        t = _mm256_add_pd(t, _mm256_permute2f128_pd(t0, t2, 0x20));
        t = _mm256_add_pd(t, _mm256_permute2f128_pd(t1, t3, 0x20));
        t = _mm256_add_pd(t, _mm256_permute2f128_pd(t0, t2, 0x31));
        t = _mm256_add_pd(t, _mm256_permute2f128_pd(t1, t3, 0x31));
    }
    let mut out = [0f64; 4];
    _mm256_storeu_pd(out.as_mut_ptr(), t);
    out
}

/// The moments of `n` values from the sums of the powers of their deviations from `shift`.
fn central(n: u64, shift: f64, [s1, s2, s3, s4]: [f64; 4]) -> Moments {
    let nf = n as f64;
    let mu = s1 / nf;
    let mu2 = mu * mu;
    let m2 = (s2 - nf * mu2).max(0.0);
    let m3 = s3 - 3.0 * mu * s2 + 2.0 * nf * mu2 * mu;
    let m4 = (s4 - 4.0 * mu * s3 + 6.0 * mu2 * s2 - 3.0 * nf * mu2 * mu2).max(0.0);
    Moments {
        n: nf,
        mean: shift + mu,
        m2,
        m3,
        m4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(xs: &[f64]) -> (f64, f64, f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let c = |p: i32| xs.iter().map(|x| (x - mean).powi(p)).sum::<f64>();
        (mean, c(2), c(3), c(4))
    }

    #[test]
    fn push_and_merge_agree_with_two_pass_moments() {
        let xs: Vec<f64> = (0..1000)
            .map(|i| ((i * 7919) % 1013) as f64 / 97.0 + 1e6)
            .collect();
        let (mean, m2, m3, m4) = direct(&xs);
        let mut all = Moments::default();
        xs.iter().for_each(|&x| all.push(x));
        let mut merged = Moments::default();
        for chunk in xs.chunks(37) {
            let mut m = Moments::default();
            chunk.iter().for_each(|&x| m.push(x));
            merged.merge(&m);
        }
        for got in [all, merged] {
            assert!((got.mean - mean).abs() < 1e-13 * mean.abs());
            assert!((got.m2 - m2).abs() < 1e-8 * m2);
            assert!((got.m3 - m3).abs() < 1e-6 * m2.powf(1.5));
            assert!((got.m4 - m4).abs() < 1e-8 * m4);
        }
    }

    #[test]
    fn power_sum_blocks_agree_with_two_pass_moments() {
        // Values far from 0 and from the exact gradient (a biased estimator, a large mean),
        // in blocks of uneven sizes: mean, M2, M3 and M4 of every coordinate, the squared
        // error and the cosine against two-pass moments of the same values.
        let k = 3;
        let exact = [0.5, -2.0, 1e-3];
        let rows: Vec<Vec<f64>> = (0..5000)
            .map(|i| {
                (0..k)
                    .map(|j| {
                        ((i * 7919 + j * 104_729) % 1013) as f64 / 97.0 + 1e3 * j as f64 + 0.25
                    })
                    .collect()
            })
            .collect();
        let mut target = EstimateMoments::new(k);
        let mut sums = MomentSums::new(&target);
        let mut welford = EstimateMoments::new(k);
        // The scalar fallback, pushed the same batches, must give the same bits.
        let mut scalar_target = EstimateMoments::new(k);
        let mut scalar = MomentSums::new(&scalar_target);
        let mut batch = vec![0.0; k * PUSH_BATCH];
        let mut in_batch = 0;
        let push = |sums: &mut MomentSums, scalar: &mut MomentSums, batch: &[f64], n| {
            sums.push_batch(batch, n, &exact);
            scalar.push_batch_lanes::<false, false>(batch, n, &exact);
        };
        for (i, row) in rows.iter().enumerate() {
            for j in 0..k {
                batch[j * PUSH_BATCH + in_batch] = row[j];
            }
            in_batch += 1;
            welford.push(row, &exact);
            // Uneven batches first, then full ones (the constant-length path).
            if in_batch == PUSH_BATCH || (i < 2500 && i % 37 == 5) {
                push(&mut sums, &mut scalar, &batch, in_batch);
                in_batch = 0;
            }
            if [0, 17, 1200, 1201, 4000].contains(&i) {
                if in_batch > 0 {
                    push(&mut sums, &mut scalar, &batch, in_batch);
                    in_batch = 0;
                }
                sums.flush_into(&mut target);
                scalar.flush_into(&mut scalar_target);
            }
        }
        if in_batch > 0 {
            push(&mut sums, &mut scalar, &batch, in_batch);
        }
        sums.flush_into(&mut target);
        scalar.flush_into(&mut scalar_target);
        assert_eq!(
            target, scalar_target,
            "AVX2 and scalar power sums agree bit for bit"
        );
        let check = |got: &Moments, xs: &[f64], what: &str| {
            let (mean, m2, m3, m4) = direct(xs);
            assert_eq!(got.n, xs.len() as f64, "{what}");
            assert!(
                (got.mean - mean).abs() <= 1e-13 * mean.abs().max(m2.sqrt()),
                "{what} mean"
            );
            assert!(
                (got.m2 - m2).abs() <= 1e-11 * m2,
                "{what} m2 {} {m2}",
                got.m2
            );
            assert!((got.m3 - m3).abs() <= 1e-9 * m2.powf(1.5), "{what} m3");
            assert!((got.m4 - m4).abs() <= 1e-9 * m4, "{what} m4");
        };
        for j in 0..k {
            let xs: Vec<f64> = rows.iter().map(|r| r[j]).collect();
            check(&target.coords[j], &xs, "coordinate");
        }
        // The squared error and the cosine are exactly the values Welford's push saw: their
        // means agree with its to rounding.
        assert_eq!(target.sq_error.n, welford.sq_error.n);
        assert_eq!(target.cosine.n, welford.cosine.n);
        assert!(
            (target.sq_error.mean - welford.sq_error.mean).abs() <= 1e-12 * welford.sq_error.mean
        );
        assert!((target.cosine.m2 - welford.cosine.m2).abs() <= 1e-10 * welford.cosine.m2);
        assert!((target.sq_error.m4 - welford.sq_error.m4).abs() <= 1e-9 * welford.sq_error.m4);
    }
    #[test]
    fn repeated_pushes_equal_batches_of_copies() {
        // An estimate pushed n times at once gives the bits of a batch of n copies of it
        // (AVX2 where present, and the scalar fallback), whatever n (full batches, a
        // remainder past a multiple of 8, fewer than 8), with a pending shift or the
        // target's means, for a kept cosine, a dropped one (a zero estimate) and none (g = 0).
        let k = 4;
        let exacts = [vec![0.5, -2.0, 1e-3, 3.0], vec![0.0; 4]];
        let estimates = [
            vec![0.75, -1.5, 2e-3, 2.5],
            vec![0.0; 4],
            vec![1e5, -3e-7, 0.125, -8.0],
        ];
        for exact in &exacts {
            let mut batch_target = EstimateMoments::new(k);
            let mut batch_sums = MomentSums::new(&batch_target);
            let mut scalar_target = EstimateMoments::new(k);
            let mut scalar_sums = MomentSums::new(&scalar_target);
            let mut repeat_target = EstimateMoments::new(k);
            let mut repeat_sums = MomentSums::new(&repeat_target);
            let mut batch = vec![0.0; k * PUSH_BATCH];
            for (i, n) in [64usize, 13, 5, 64, 8, 1, 64, 63, 17]
                .into_iter()
                .enumerate()
            {
                for estimate in &estimates {
                    for j in 0..k {
                        batch[j * PUSH_BATCH..j * PUSH_BATCH + n].fill(estimate[j]);
                    }
                    batch_sums.push_batch(&batch, n, exact);
                    scalar_sums.push_batch_lanes::<false, false>(&batch, n, exact);
                    repeat_sums.push_repeated(estimate, n, exact);
                }
                if i % 3 == 1 {
                    batch_sums.flush_into(&mut batch_target);
                    scalar_sums.flush_into(&mut scalar_target);
                    repeat_sums.flush_into(&mut repeat_target);
                }
            }
            batch_sums.flush_into(&mut batch_target);
            scalar_sums.flush_into(&mut scalar_target);
            repeat_sums.flush_into(&mut repeat_target);
            assert!(batch_target.count() > 0.0);
            assert_eq!(batch_target, scalar_target, "AVX2 and scalar batches");
            assert_eq!(repeat_target, batch_target, "repeats and batches of copies");
            for (a, b) in repeat_target.coords.iter().zip(&batch_target.coords) {
                assert_eq!(a.m4.to_bits(), b.m4.to_bits());
            }
        }
    }
}
