//! Streaming moments in f64: count, mean and the second to fourth central moment sums, updated
//! one value at a time (Welford) and merged pairwise (Chan et al.; Pebay 2008), never as
//! `E[x^2] - E[x]^2`. Merging in a fixed order makes results independent of thread count.

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
/// [`EstimateMoments::push`]; keep in sync with `ZERO_ESTIMATE` in shaders/moments.wgsl).
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
}
