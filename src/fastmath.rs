//! Fast f32 logarithm and exponential for the relaxed family's hot loop, written as plain
//! branch-free arithmetic so the compiler vectorises loops over them. Accuracy (tested
//! against std): relative error below 4e-7 for `ln`, below 3e-7 for `exp` on [-87, 0].
//! [`avx2`] holds the same two functions on eight lanes in AVX2 intrinsics, operation for
//! operation the scalar ones (no fused multiply-add), so they give the same bits (tested);
//! [`avx512`] the same on sixteen lanes.

const LN2: f32 = std::f32::consts::LN_2;

/// Natural logarithm of a positive, finite, normal `x`.
#[inline(always)]
pub fn ln(x: f32) -> f32 {
    let bits = x.to_bits();
    // x = 2^e m with m in [sqrt(1/2), sqrt(2)): take the mantissa in [1, 2), halve it past sqrt 2.
    let mut e = ((bits >> 23) & 0xff) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let big = m > std::f32::consts::SQRT_2;
    m = if big { m * 0.5 } else { m };
    e += i32::from(big);
    // ln m = 2 atanh(t), t = (m - 1) / (m + 1), |t| <= 0.1716: odd series to t^9.
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let poly = 1.0 + t2 * (1.0 / 3.0 + t2 * (1.0 / 5.0 + t2 * (1.0 / 7.0 + t2 * (1.0 / 9.0))));
    e as f32 * LN2 + 2.0 * t * poly
}

/// `exp(x)` for `x <= 0`; 0 below -87 (where f32 underflows).
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    let x = x.max(-87.0);
    // exp(x) = 2^n exp(r), n = round(x / ln 2), |r| <= ln2 / 2.
    // Round to nearest by the 1.5 * 2^23 trick (exact for |t| < 2^22; no libm call); the
    // integer then sits in the low bits of the sum, so no float-to-int conversion is needed.
    let t = x * std::f32::consts::LOG2_E;
    let shifted = t + 12_582_912.0;
    let n = shifted - 12_582_912.0;
    let n_int = shifted.to_bits() as i32 - 0x4b40_0000;
    // Cody-Waite: ln 2 = C1 + C2 with C1 exact in 9 bits, so n * C1 is exact.
    let r = (x - n * 0.693_359_4) - n * -2.121_944_4e-4;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n_int + 127).max(0) as u32) << 23);
    p * scale
}

/// [`ln`] and [`exp_nonpositive`] on eight f32 lanes: the same operations in the same order,
/// so every lane has the scalar function's bits; [`avx2::ln_n`] takes several registers at
/// once, their chains interleaved. Callers are `#[target_feature(enable = "avx2")]` functions
/// (these are `#[inline(always)]` into them).
#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    use std::arch::x86_64::*;

    /// Eight copies of `v`.
    #[inline(always)]
    unsafe fn c(v: f32) -> __m256 {
        _mm256_set1_ps(v)
    }

    /// [`super::ln`] of eight positive, finite, normal lanes.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[inline(always)]
    pub unsafe fn ln(x: __m256) -> __m256 {
        ln_n([x])[0]
    }

    /// [`ln`] of `N` registers at once, each step applied to all `N` before the next: the
    /// same operations on every lane (so the same bits), with the `N` chains of dependent
    /// steps interleaved in program order, so that the core's window of waiting
    /// instructions holds `N` chains' progress rather than one chain's.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[inline(always)]
    pub unsafe fn ln_n<const N: usize>(x: [__m256; N]) -> [__m256; N] {
        // Plain loops over the registers, no closures: a closure is compiled apart from the
        // `#[target_feature]` function that inlines this one, without AVX2.
        let zero = _mm256_setzero_ps();
        let (mut m, mut e, mut t, mut t2, mut poly) = (
            [zero; N],
            [_mm256_setzero_si256(); N],
            [zero; N],
            [zero; N],
            [zero; N],
        );
        for i in 0..N {
            let bits = _mm256_castps_si256(x[i]);
            e[i] = _mm256_sub_epi32(
                _mm256_and_si256(_mm256_srli_epi32::<23>(bits), _mm256_set1_epi32(0xff)),
                _mm256_set1_epi32(127),
            );
            m[i] = _mm256_castsi256_ps(_mm256_or_si256(
                _mm256_and_si256(bits, _mm256_set1_epi32(0x007f_ffff)),
                _mm256_set1_epi32(0x3f80_0000),
            ));
        }
        for i in 0..N {
            let big = _mm256_cmp_ps::<_CMP_GT_OQ>(m[i], _mm256_set1_ps(std::f32::consts::SQRT_2));
            m[i] = _mm256_blendv_ps(m[i], _mm256_mul_ps(m[i], _mm256_set1_ps(0.5)), big);
            // `big` is all ones (-1) where set: e + 1 is e - (-1).
            e[i] = _mm256_sub_epi32(e[i], _mm256_castps_si256(big));
        }
        let one = _mm256_set1_ps(1.0);
        for i in 0..N {
            t[i] = _mm256_div_ps(_mm256_sub_ps(m[i], one), _mm256_add_ps(m[i], one));
        }
        for i in 0..N {
            t2[i] = _mm256_mul_ps(t[i], t[i]);
            poly[i] = _mm256_add_ps(c(1.0 / 7.0), _mm256_mul_ps(t2[i], c(1.0 / 9.0)));
        }
        for coefficient in [1.0 / 5.0, 1.0 / 3.0, 1.0] {
            for i in 0..N {
                poly[i] = _mm256_add_ps(c(coefficient), _mm256_mul_ps(t2[i], poly[i]));
            }
        }
        for i in 0..N {
            poly[i] = _mm256_add_ps(
                _mm256_mul_ps(_mm256_cvtepi32_ps(e[i]), c(super::LN2)),
                _mm256_mul_ps(_mm256_mul_ps(c(2.0), t[i]), poly[i]),
            );
        }
        poly
    }

    /// [`super::exp_nonpositive`] of eight lanes (`x <= 0`, not NaN).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[inline(always)]
    pub unsafe fn exp_nonpositive(x: __m256) -> __m256 {
        // `f32::max` and `maxps` agree off NaN (and on -0.0 against -87).
        let x = _mm256_max_ps(x, c(-87.0));
        let t = _mm256_mul_ps(x, c(std::f32::consts::LOG2_E));
        let shifted = _mm256_add_ps(t, c(12_582_912.0));
        let n = _mm256_sub_ps(shifted, c(12_582_912.0));
        let n_int = _mm256_sub_epi32(_mm256_castps_si256(shifted), _mm256_set1_epi32(0x4b40_0000));
        let r = _mm256_sub_ps(
            _mm256_sub_ps(x, _mm256_mul_ps(n, c(0.693_359_4))),
            _mm256_mul_ps(n, c(-2.121_944_4e-4)),
        );
        let mut p = _mm256_add_ps(c(1.0 / 120.0), _mm256_mul_ps(r, c(1.0 / 720.0)));
        p = _mm256_add_ps(c(1.0 / 24.0), _mm256_mul_ps(r, p));
        p = _mm256_add_ps(c(1.0 / 6.0), _mm256_mul_ps(r, p));
        p = _mm256_add_ps(c(0.5), _mm256_mul_ps(r, p));
        p = _mm256_add_ps(c(1.0), _mm256_mul_ps(r, p));
        p = _mm256_add_ps(c(1.0), _mm256_mul_ps(r, p));
        let biased = _mm256_max_epi32(
            _mm256_add_epi32(n_int, _mm256_set1_epi32(127)),
            _mm256_setzero_si256(),
        );
        let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(biased));
        _mm256_mul_ps(p, scale)
    }
}

/// [`ln`] and [`exp_nonpositive`] on sixteen f32 lanes in AVX-512F: the operations of [`avx2`]
/// (and so of the scalar functions) in the same order, with mask registers for the blends, so
/// every lane has the scalar function's bits (tested). Callers are `#[target_feature(enable =
/// "avx512f")]` functions.
#[cfg(target_arch = "x86_64")]
pub mod avx512 {
    use std::arch::x86_64::*;

    /// Sixteen copies of `v`.
    #[inline(always)]
    unsafe fn c(v: f32) -> __m512 {
        _mm512_set1_ps(v)
    }

    /// [`super::ln`] of sixteen positive, finite, normal lanes.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[inline(always)]
    pub unsafe fn ln(x: __m512) -> __m512 {
        let bits = _mm512_castps_si512(x);
        let e = _mm512_sub_epi32(
            _mm512_and_si512(_mm512_srli_epi32::<23>(bits), _mm512_set1_epi32(0xff)),
            _mm512_set1_epi32(127),
        );
        let m = _mm512_castsi512_ps(_mm512_or_si512(
            _mm512_and_si512(bits, _mm512_set1_epi32(0x007f_ffff)),
            _mm512_set1_epi32(0x3f80_0000),
        ));
        let big = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(m, c(std::f32::consts::SQRT_2));
        let m = _mm512_mask_mul_ps(m, big, m, c(0.5));
        let e = _mm512_mask_add_epi32(e, big, e, _mm512_set1_epi32(1));
        let one = c(1.0);
        let t = _mm512_div_ps(_mm512_sub_ps(m, one), _mm512_add_ps(m, one));
        let t2 = _mm512_mul_ps(t, t);
        let mut poly = _mm512_add_ps(c(1.0 / 7.0), _mm512_mul_ps(t2, c(1.0 / 9.0)));
        poly = _mm512_add_ps(c(1.0 / 5.0), _mm512_mul_ps(t2, poly));
        poly = _mm512_add_ps(c(1.0 / 3.0), _mm512_mul_ps(t2, poly));
        poly = _mm512_add_ps(one, _mm512_mul_ps(t2, poly));
        _mm512_add_ps(
            _mm512_mul_ps(_mm512_cvtepi32_ps(e), c(super::LN2)),
            _mm512_mul_ps(_mm512_mul_ps(c(2.0), t), poly),
        )
    }

    /// [`super::exp_nonpositive`] of sixteen lanes (`x <= 0`, not NaN).
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[inline(always)]
    pub unsafe fn exp_nonpositive(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, c(-87.0));
        let t = _mm512_mul_ps(x, c(std::f32::consts::LOG2_E));
        let shifted = _mm512_add_ps(t, c(12_582_912.0));
        let n = _mm512_sub_ps(shifted, c(12_582_912.0));
        let n_int = _mm512_sub_epi32(_mm512_castps_si512(shifted), _mm512_set1_epi32(0x4b40_0000));
        let r = _mm512_sub_ps(
            _mm512_sub_ps(x, _mm512_mul_ps(n, c(0.693_359_4))),
            _mm512_mul_ps(n, c(-2.121_944_4e-4)),
        );
        let mut p = _mm512_add_ps(c(1.0 / 120.0), _mm512_mul_ps(r, c(1.0 / 720.0)));
        p = _mm512_add_ps(c(1.0 / 24.0), _mm512_mul_ps(r, p));
        p = _mm512_add_ps(c(1.0 / 6.0), _mm512_mul_ps(r, p));
        p = _mm512_add_ps(c(0.5), _mm512_mul_ps(r, p));
        p = _mm512_add_ps(c(1.0), _mm512_mul_ps(r, p));
        p = _mm512_add_ps(c(1.0), _mm512_mul_ps(r, p));
        let biased = _mm512_max_epi32(
            _mm512_add_epi32(n_int, _mm512_set1_epi32(127)),
            _mm512_setzero_si512(),
        );
        let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(biased));
        _mm512_mul_ps(p, scale)
    }
}

/// The widest vector instructions the engine's hot loops dispatch on: every tier gives the
/// same bits (tested path by path), only the pace differs, so speed figures are comparable
/// only within a tier (`mcgrad check` keeps one per tier).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdTier {
    /// Plain Rust, vectorised by the compiler for the x86-64 baseline (SSE2) or any other
    /// target.
    Portable,
    /// AVX2 loops (eight f32 lanes; with FMA, the relaxed pass's eight-repetition lowering
    /// in two registers of four repetitions).
    Avx2,
    /// AVX-512F with FMA (sixteen f32 lanes; the relaxed pass's eight-repetition lowering in
    /// one register).
    Avx512,
}

impl SimdTier {
    /// Every tier, narrowest first.
    pub const ALL: [SimdTier; 3] = [SimdTier::Portable, SimdTier::Avx2, SimdTier::Avx512];

    /// Its name in baselines and in `MCGRAD_SIMD` (`portable`, `avx2`, `avx512`).
    pub fn name(self) -> &'static str {
        match self {
            SimdTier::Portable => "portable",
            SimdTier::Avx2 => "avx2",
            SimdTier::Avx512 => "avx512",
        }
    }

    /// The tier of a name ([`SimdTier::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// The environment variable that lowers [`simd_tier`] (`portable` or `avx2`), to time or
/// test a narrower tier's loops on a wider CPU.
pub const SIMD_ENV: &str = "MCGRAD_SIMD";

/// The widest tier this CPU has (std caches the feature tests).
pub fn detected_tier() -> SimdTier {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::is_x86_feature_detected!("avx2");
        if avx2 && std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma")
        {
            SimdTier::Avx512
        } else if avx2 {
            SimdTier::Avx2
        } else {
            SimdTier::Portable
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        SimdTier::Portable
    }
}

/// The tier `MCGRAD_SIMD` names: `Ok(None)` when unset or empty, an error naming the
/// accepted values when it names no tier.
///
/// # Errors
/// A one-line message for a value that names no tier.
pub fn simd_cap_from_env() -> Result<Option<SimdTier>, String> {
    match std::env::var(SIMD_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => SimdTier::from_name(&v).map(Some).ok_or_else(|| {
            format!("{SIMD_ENV}={v} names no instruction tier (portable, avx2 or avx512)")
        }),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!(
            "{SIMD_ENV} is not valid text (portable, avx2 or avx512)"
        )),
    }
}

/// The tier the hot loops run on: [`detected_tier`], lowered to `MCGRAD_SIMD` where that
/// names a narrower one (a wider one changes nothing; a value naming no tier is ignored
/// here, and refused by the command line). Read once per process.
#[inline]
pub fn simd_tier() -> SimdTier {
    static TIER: std::sync::OnceLock<SimdTier> = std::sync::OnceLock::new();
    *TIER.get_or_init(|| {
        let detected = detected_tier();
        match simd_cap_from_env() {
            Ok(Some(cap)) => cap.min(detected),
            _ => detected,
        }
    })
}

/// Whether the hot loops take their AVX-512 paths ([`simd_tier`] is [`SimdTier::Avx512`]:
/// AVX-512F, FMA and AVX2); the relaxed draws then run sixteen lanes a step, with the same
/// bits as the AVX2 and portable paths.
#[inline(always)]
pub fn has_avx512() -> bool {
    simd_tier() >= SimdTier::Avx512
}

/// Whether the hot loops take their AVX2 paths ([`simd_tier`] is at least
/// [`SimdTier::Avx2`]).
///
/// The hot loops dispatch on it to a `#[target_feature(enable = "avx2")]` function whose body
/// is an `#[inline(always)]` function, so that the body is compiled for AVX2 (a closure handed
/// to a target-feature function is compiled apart, without the feature, unless it happens to be
/// inlined). The results are bit-identical either way: vectorising element-wise IEEE
/// arithmetic changes no rounding, enabling AVX2 enables no fused multiply-add, and Rust never
/// contracts `a * b + c` into one on its own.
#[inline(always)]
pub fn has_avx2() -> bool {
    simd_tier() >= SimdTier::Avx2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_is_accurate() {
        let mut worst: f64 = 0.0;
        for i in 1..2_000_000u32 {
            let x = i as f32 * (1.0 / 2_000_000.0);
            for v in [x, 1.0 - x * 1e-3, x * 1e-6, 1.0 + x * 50.0] {
                let want = f64::from(v).ln();
                let got = f64::from(ln(v));
                let err = if want.abs() > 1e-3 {
                    ((got - want) / want).abs()
                } else {
                    (got - want).abs() * 1e3
                };
                worst = worst.max(err);
            }
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
    }

    /// Inputs spread over every binade `ln` and `exp` see in the draws, and their edges.
    #[cfg(target_arch = "x86_64")]
    fn spread(i: u32) -> f32 {
        // Multiplicative walk through [2^-126, 2^127) and both sides of 1 and sqrt 2.
        let v = f32::from_bits(0x0080_0000 + i.wrapping_mul(2_654_435_761) % 0x7e80_0000);
        match i % 4 {
            0 => v,
            1 => 1.0 + (i as f32) * 1e-7,
            2 => std::f32::consts::SQRT_2 + (((i / 4) % 2000) as f32 - 1000.0) * 1.2e-7,
            _ => ((i >> 9) as f32 + 0.5) * (1.0 / 8_388_608.0),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_ln_and_exp_give_the_scalar_bits() {
        use std::arch::x86_64::*;
        if !has_avx2() {
            return;
        }
        #[target_feature(enable = "avx2")]
        fn lanes(xs: &[f32; 8], f: fn(__m256) -> __m256) -> [f32; 8] {
            let mut out = [0f32; 8];
            // SAFETY: in bounds, unaligned loads and stores of eight lanes.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), f(_mm256_loadu_ps(xs.as_ptr()))) };
            out
        }
        #[target_feature(enable = "avx2")]
        fn ln8(x: __m256) -> __m256 {
            // SAFETY: compiled for AVX2, called only where the CPU has it.
            unsafe { avx2::ln(x) }
        }
        #[target_feature(enable = "avx2")]
        fn exp8(x: __m256) -> __m256 {
            // SAFETY: as above.
            unsafe { avx2::exp_nonpositive(x) }
        }
        type Lanes = fn(__m256) -> __m256;
        // SAFETY: compiled for AVX2, called only where the CPU has it (checked above).
        let ln_lanes: Lanes = |x| unsafe { ln8(x) };
        // SAFETY: as above.
        let exp_lanes: Lanes = |x| unsafe { exp8(x) };
        let (mut checked_ln, mut checked_exp) = (0, 0);
        for block in 0..250_000u32 {
            let xs: [f32; 8] = std::array::from_fn(|l| spread(block * 8 + l as u32));
            // SAFETY: the CPU has AVX2 (checked above).
            let got = unsafe { lanes(&xs, ln_lanes) };
            for (x, g) in xs.iter().zip(got) {
                assert_eq!(g.to_bits(), ln(*x).to_bits(), "ln({x:e})");
                checked_ln += 1;
            }
            // exp on [-100, 0]: below -87 too, and -0.0.
            let es: [f32; 8] = std::array::from_fn(|l| {
                let i = block * 8 + l as u32;
                if i == 0 {
                    -0.0
                } else {
                    -((i.wrapping_mul(2_654_435_761) >> 8) as f32) * (100.0 / 16_777_216.0)
                }
            });
            // SAFETY: as above.
            let got = unsafe { lanes(&es, exp_lanes) };
            for (x, g) in es.iter().zip(got) {
                assert_eq!(g.to_bits(), exp_nonpositive(*x).to_bits(), "exp({x:e})");
                checked_exp += 1;
            }
        }
        assert_eq!((checked_ln, checked_exp), (2_000_000, 2_000_000));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_ln_and_exp_give_the_scalar_bits() {
        use std::arch::x86_64::*;
        if !has_avx512() {
            return;
        }
        #[target_feature(enable = "avx512f")]
        fn lanes(xs: &[f32; 16], exp: bool) -> [f32; 16] {
            let mut out = [0f32; 16];
            // SAFETY: compiled for AVX-512F, called only where the CPU has it; in bounds,
            // unaligned loads and stores of sixteen lanes.
            unsafe {
                let x = _mm512_loadu_ps(xs.as_ptr());
                let y = if exp {
                    avx512::exp_nonpositive(x)
                } else {
                    avx512::ln(x)
                };
                _mm512_storeu_ps(out.as_mut_ptr(), y);
            }
            out
        }
        let (mut checked_ln, mut checked_exp) = (0, 0);
        for block in 0..125_000u32 {
            let xs: [f32; 16] = std::array::from_fn(|l| spread(block * 16 + l as u32));
            // SAFETY: the CPU has AVX-512F (checked above).
            let got = unsafe { lanes(&xs, false) };
            for (x, g) in xs.iter().zip(got) {
                assert_eq!(g.to_bits(), ln(*x).to_bits(), "ln({x:e})");
                checked_ln += 1;
            }
            let es: [f32; 16] = std::array::from_fn(|l| {
                let i = block * 16 + l as u32;
                if i == 0 {
                    -0.0
                } else {
                    -((i.wrapping_mul(2_654_435_761) >> 8) as f32) * (100.0 / 16_777_216.0)
                }
            });
            // SAFETY: as above.
            let got = unsafe { lanes(&es, true) };
            for (x, g) in es.iter().zip(got) {
                assert_eq!(g.to_bits(), exp_nonpositive(*x).to_bits(), "exp({x:e})");
                checked_exp += 1;
            }
        }
        assert_eq!((checked_ln, checked_exp), (2_000_000, 2_000_000));
    }

    #[test]
    fn exp_is_accurate() {
        let mut worst: f64 = 0.0;
        for i in 0..1_000_000u32 {
            let x = -(i as f32) * (87.0 / 1_000_000.0);
            let want = f64::from(x).exp();
            let got = f64::from(exp_nonpositive(x));
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(
            exp_nonpositive(-1000.0),
            0.0f32.max(exp_nonpositive(-1000.0))
        );
    }
}
