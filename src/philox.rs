//! Philox4x32-10 (Salmon et al., SC'11; Random123), the counter-based generator the CPU and
//! the GPU share. u32 arithmetic only, so `shaders/common.wgsl` mirrors it bit for bit.
//!
//! Counter layout (keep in sync with `shaders/common.wgsl`): the key is the seed, and the
//! 128-bit counter is `[block, repetition, stream << 16 | lane, sweep_point]`:
//! - categorical draws (stream [`STREAM_CATEGORICAL`]): one Philox block gives the uniforms of
//!   four consecutive draws, `block = draw / 4`, word `draw % 4`;
//! - Gumbel noise (stream [`STREAM_GUMBEL`]): one block per draw and group of four categories,
//!   `block = draw`, `lane = category / 4`, word `category % 4`;
//! - the seed problem's numbers (stream [`STREAM_PROBLEM`]).
//!
//! Repetition and draw have 32-bit fields of their own, so no counter repeats below
//! 2^32 repetitions x 2^32 blocks, whatever S x R is: S x R beyond 2^32 is safe.
//!
//! Uniforms: the categorical draws compare the whole word `u` against integer thresholds
//! (`u 2^-32` in `[0, 1)`, see [`crate::draws::CategoricalTable`]); `[0, 1)` as
//! `(u >> 8) 2^-24` where an f32 uniform is needed ([`uniform_f32`]), `(0, 1)` as
//! `((u >> 9) + 0.5) 2^-23` (Gumbel noise; see [`open_uniform_f32`] for why not 24 bits).

/// Philox multiplier for words 0 and 1.
pub const M0: u32 = 0xD251_1F53;
/// Philox multiplier for words 2 and 3.
pub const M1: u32 = 0xCD9E_8D57;
/// Weyl increment of key word 0.
pub const W0: u32 = 0x9E37_79B9;
/// Weyl increment of key word 1.
pub const W1: u32 = 0xBB67_AE85;

/// Stream of the categorical (inverse-CDF) draws.
pub const STREAM_CATEGORICAL: u32 = 0;
/// Stream of the Gumbel noise of the relaxed estimators.
pub const STREAM_GUMBEL: u32 = 1;
/// Stream of the seed problem's x, W and T.
pub const STREAM_PROBLEM: u32 = 2;
/// Stream of training data and minibatch order.
pub const STREAM_TRAIN: u32 = 3;
/// Stream of the estimators' own auxiliary noise (see [`crate::estimators::Noise`]).
pub const STREAM_AUX: u32 = 4;

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = u64::from(a) * u64::from(b);
    ((p >> 32) as u32, p as u32)
}

/// One Philox4x32 round.
#[inline(always)]
fn round(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (hi0, lo0) = mulhilo(M0, ctr[0]);
    let (hi1, lo1) = mulhilo(M1, ctr[2]);
    [hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0]
}

/// Philox4x32 with 10 rounds: four 32-bit random words from a counter and a key.
///
/// # Example
/// ```
/// // Random123's known-answer vector.
/// assert_eq!(
///     mcgrad::philox::philox4x32_10([0; 4], [0; 2]),
///     [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
/// );
/// ```
#[inline(always)]
pub fn philox4x32_10(mut ctr: [u32; 4], mut key: [u32; 2]) -> [u32; 4] {
    ctr = round(ctr, key);
    for _ in 1..10 {
        key = [key[0].wrapping_add(W0), key[1].wrapping_add(W1)];
        ctr = round(ctr, key);
    }
    ctr
}

/// Philox4x32-10 on N counters at once, structure of arrays (`ctr[word][lane]`), so the
/// compiler can vectorise the 32x32->64 multiplies across lanes. Lane l equals
/// `philox4x32_10([ctr[0][l], ctr[1][l], ctr[2][l], ctr[3][l]], key)`.
#[inline(always)]
pub fn philox4x32_10_lanes<const N: usize>(
    mut ctr: [[u32; N]; 4],
    mut key: [u32; 2],
) -> [[u32; N]; 4] {
    for r in 0..10 {
        if r > 0 {
            key = [key[0].wrapping_add(W0), key[1].wrapping_add(W1)];
        }
        let mut next = [[0u32; N]; 4];
        for l in 0..N {
            // The low words as 32-bit products, the high words by widening: this shape
            // vectorises best.
            let (lo0, lo1) = (M0.wrapping_mul(ctr[0][l]), M1.wrapping_mul(ctr[2][l]));
            let hi0 = ((u64::from(M0) * u64::from(ctr[0][l])) >> 32) as u32;
            let hi1 = ((u64::from(M1) * u64::from(ctr[2][l])) >> 32) as u32;
            next[0][l] = hi1 ^ ctr[1][l] ^ key[0];
            next[1][l] = lo1;
            next[2][l] = hi0 ^ ctr[3][l] ^ key[1];
            next[3][l] = lo0;
        }
        ctr = next;
    }
    ctr
}

/// Fills `out` with the words of consecutive Philox blocks: `out[4 b + w]` is word `w` of
/// `philox4x32_10([first_block + b, ctr[0], ctr[1], ctr[2]], key)` (the block number wrapping
/// at 2^32), for `b` in `0..out.len() / 4`; a last partial block gives its first words.
/// Exactly [`philox4x32_10`]'s words, eight blocks at a time in AVX2 registers where the CPU
/// has AVX2 ([`x8`]).
pub fn fill_blocks(key: [u32; 2], first_block: u32, ctr: [u32; 3], out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn avx2(key: [u32; 2], first_block: u32, ctr: [u32; 3], out: &mut [u32]) {
        use std::arch::x86_64::*;
        let keys = x8::RoundKeys::new(key);
        let (c1, c2, c3) = (
            _mm256_set1_epi32(ctr[0] as i32),
            _mm256_set1_epi32(ctr[1] as i32),
            _mm256_set1_epi32(ctr[2] as i32),
        );
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mut chunks = out.chunks_exact_mut(32);
        let mut block = first_block;
        for chunk in &mut chunks {
            let c0 = _mm256_add_epi32(_mm256_set1_epi32(block as i32), lane);
            // SAFETY: this function runs only where the CPU has AVX2.
            let words = unsafe { x8::philox(&keys, [c0, c1, c2, c3]) };
            // SAFETY: as above; `chunk` holds 32 words.
            unsafe { x8::store_block_major(words, chunk.try_into().expect("32 words")) };
            block = block.wrapping_add(8);
        }
        fill_blocks_scalar(key, block, ctr, chunks.into_remainder());
    }
    #[cfg(target_arch = "x86_64")]
    if crate::fastmath::has_avx2() {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx2(key, first_block, ctr, out) };
    }
    fill_blocks_scalar(key, first_block, ctr, out);
}

/// [`fill_blocks`] one block at a time.
fn fill_blocks_scalar(key: [u32; 2], first_block: u32, ctr: [u32; 3], out: &mut [u32]) {
    for (b, chunk) in out.chunks_mut(4).enumerate() {
        let block = first_block.wrapping_add(b as u32);
        let words = philox4x32_10([block, ctr[0], ctr[1], ctr[2]], key);
        chunk.copy_from_slice(&words[..chunk.len()]);
    }
}

/// Philox4x32-10 on eight counters at once in AVX2 registers, structure of arrays (register
/// `w` holds word `w` of the eight counters): the building block of the vectorised draws.
/// The 32x32->64 products are `_mm256_mul_epu32` on the even and the odd lanes, recombined
/// by blends into the high and low halves; every result is [`philox4x32_10`]'s bit for bit.
///
/// Every function here is `unsafe` and `#[inline(always)]`: call it only from a function
/// compiled with `#[target_feature(enable = "avx2")]`, on a CPU that has AVX2.
#[cfg(target_arch = "x86_64")]
pub mod x8 {
    use std::arch::x86_64::*;

    use super::{M0, M1, W0, W1};

    /// The ten round keys of a key, each word broadcast to eight lanes.
    #[derive(Clone, Copy, Debug)]
    pub struct RoundKeys {
        k0: [__m256i; 10],
        k1: [__m256i; 10],
    }

    impl RoundKeys {
        /// The round keys of `key` (key word `i` plus `r` times its Weyl increment, for
        /// round `r`).
        #[inline(always)]
        pub fn new(key: [u32; 2]) -> Self {
            let mut k = key;
            let mut k0 = [[0i32; 8]; 10];
            let mut k1 = [[0i32; 8]; 10];
            for r in 0..10 {
                if r > 0 {
                    k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
                }
                k0[r] = [k[0] as i32; 8];
                k1[r] = [k[1] as i32; 8];
            }
            // SAFETY: [i32; 8] and __m256i have the same size, and any bits are a valid
            // __m256i.
            unsafe {
                Self {
                    k0: std::mem::transmute::<[[i32; 8]; 10], [__m256i; 10]>(k0),
                    k1: std::mem::transmute::<[[i32; 8]; 10], [__m256i; 10]>(k1),
                }
            }
        }
    }

    /// The high and low 32-bit halves of `a * m` in each of the eight lanes (`m` the same
    /// in every lane).
    ///
    /// # Safety
    /// AVX2 only (see the module doc).
    #[inline(always)]
    unsafe fn mulhilo(a: __m256i, m: __m256i) -> (__m256i, __m256i) {
        // 64-bit products of lanes 0, 2, 4, 6 and of lanes 1, 3, 5, 7 (the low 32 bits of
        // each 64-bit lane are multiplied).
        let even = _mm256_mul_epu32(a, m);
        let odd = _mm256_mul_epu32(_mm256_srli_epi64::<32>(a), m);
        let hi = _mm256_blend_epi32::<0b1010_1010>(_mm256_srli_epi64::<32>(even), odd);
        let lo = _mm256_blend_epi32::<0b1010_1010>(even, _mm256_slli_epi64::<32>(odd));
        (hi, lo)
    }

    /// Philox4x32-10 of eight counters (`ctr[w]` holds word `w` of each).
    ///
    /// # Safety
    /// AVX2 only (see the module doc).
    #[inline(always)]
    pub unsafe fn philox(keys: &RoundKeys, mut ctr: [__m256i; 4]) -> [__m256i; 4] {
        let (m0, m1) = (_mm256_set1_epi32(M0 as i32), _mm256_set1_epi32(M1 as i32));
        for r in 0..10 {
            let (hi0, lo0) = mulhilo(ctr[0], m0);
            let (hi1, lo1) = mulhilo(ctr[2], m1);
            ctr = [
                _mm256_xor_si256(_mm256_xor_si256(hi1, ctr[1]), keys.k0[r]),
                lo1,
                _mm256_xor_si256(_mm256_xor_si256(hi0, ctr[3]), keys.k1[r]),
                lo0,
            ];
        }
        ctr
    }

    /// [`philox`] on `N` independent sets of eight counters, their rounds interleaved (one
    /// round's dependency chain is a multiply, shifts, blends and exclusive ors: `N` chains
    /// keep more of the vector units busy); the same bits as `N` calls of [`philox`]
    /// (tested).
    ///
    /// # Safety
    /// AVX2 only (see the module doc).
    #[inline(always)]
    pub unsafe fn philox_n<const N: usize>(
        keys: &RoundKeys,
        mut ctr: [[__m256i; 4]; N],
    ) -> [[__m256i; 4]; N] {
        let (m0, m1) = (_mm256_set1_epi32(M0 as i32), _mm256_set1_epi32(M1 as i32));
        for r in 0..10 {
            for c in ctr.iter_mut() {
                let (hi0, lo0) = mulhilo(c[0], m0);
                let (hi1, lo1) = mulhilo(c[2], m1);
                *c = [
                    _mm256_xor_si256(_mm256_xor_si256(hi1, c[1]), keys.k0[r]),
                    lo1,
                    _mm256_xor_si256(_mm256_xor_si256(hi0, c[3]), keys.k1[r]),
                    lo0,
                ];
            }
        }
        ctr
    }

    /// Stores eight blocks' words (`words[w]` word `w` of each) block-major:
    /// `out[4 b + w]` is word `w` of block `b`.
    ///
    /// # Safety
    /// AVX2 only (see the module doc).
    #[inline(always)]
    pub unsafe fn store_block_major(words: [__m256i; 4], out: &mut [u32; 32]) {
        // A 4x8 transpose: interleave words 0/1 and 2/3, then their 64-bit pairs, which
        // leaves blocks (0, 4), (1, 5), (2, 6), (3, 7) in the two halves of four registers.
        let t01l = _mm256_unpacklo_epi32(words[0], words[1]);
        let t01h = _mm256_unpackhi_epi32(words[0], words[1]);
        let t23l = _mm256_unpacklo_epi32(words[2], words[3]);
        let t23h = _mm256_unpackhi_epi32(words[2], words[3]);
        let b04 = _mm256_unpacklo_epi64(t01l, t23l);
        let b15 = _mm256_unpackhi_epi64(t01l, t23l);
        let b26 = _mm256_unpacklo_epi64(t01h, t23h);
        let b37 = _mm256_unpackhi_epi64(t01h, t23h);
        let p = out.as_mut_ptr().cast::<__m256i>();
        _mm256_storeu_si256(p, _mm256_permute2x128_si256::<0x20>(b04, b15));
        _mm256_storeu_si256(p.add(1), _mm256_permute2x128_si256::<0x20>(b26, b37));
        _mm256_storeu_si256(p.add(2), _mm256_permute2x128_si256::<0x31>(b04, b15));
        _mm256_storeu_si256(p.add(3), _mm256_permute2x128_si256::<0x31>(b26, b37));
    }
}

/// Philox4x32-10 on sixteen counters at once in AVX-512F registers, as [`x8`] on eight: the
/// 32x32->64 products are `_mm512_mul_epu32` on the even and the odd lanes, recombined by
/// masked blends; every result is [`philox4x32_10`]'s bit for bit (tested).
///
/// Every function here is `unsafe` and `#[inline(always)]`: call it only from a function
/// compiled with `#[target_feature(enable = "avx512f")]`, on a CPU that has AVX-512F.
#[cfg(target_arch = "x86_64")]
pub mod x16 {
    use std::arch::x86_64::*;

    use super::{M0, M1, W0, W1};

    /// The ten round keys of a key, each word broadcast to sixteen lanes.
    #[derive(Clone, Copy, Debug)]
    pub struct RoundKeys {
        k0: [__m512i; 10],
        k1: [__m512i; 10],
    }

    impl RoundKeys {
        /// The round keys of `key` (key word `i` plus `r` times its Weyl increment, for
        /// round `r`).
        #[inline(always)]
        pub fn new(key: [u32; 2]) -> Self {
            let mut k = key;
            let mut k0 = [[0i32; 16]; 10];
            let mut k1 = [[0i32; 16]; 10];
            for r in 0..10 {
                if r > 0 {
                    k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
                }
                k0[r] = [k[0] as i32; 16];
                k1[r] = [k[1] as i32; 16];
            }
            // SAFETY: [i32; 16] and __m512i have the same size, and any bits are a valid
            // __m512i.
            unsafe {
                Self {
                    k0: std::mem::transmute::<[[i32; 16]; 10], [__m512i; 10]>(k0),
                    k1: std::mem::transmute::<[[i32; 16]; 10], [__m512i; 10]>(k1),
                }
            }
        }
    }

    /// The high and low 32-bit halves of `a * m` in each of the sixteen lanes (`m` the same
    /// in every lane).
    ///
    /// # Safety
    /// AVX-512F only (see the module doc).
    #[inline(always)]
    unsafe fn mulhilo(a: __m512i, m: __m512i) -> (__m512i, __m512i) {
        let even = _mm512_mul_epu32(a, m);
        let odd = _mm512_mul_epu32(_mm512_srli_epi64::<32>(a), m);
        // The odd 32-bit lanes (mask 0xaaaa) from the second operand.
        let hi = _mm512_mask_blend_epi32(0xaaaa, _mm512_srli_epi64::<32>(even), odd);
        let lo = _mm512_mask_blend_epi32(0xaaaa, even, _mm512_slli_epi64::<32>(odd));
        (hi, lo)
    }

    /// Philox4x32-10 of sixteen counters (`ctr[w]` holds word `w` of each).
    ///
    /// # Safety
    /// AVX-512F only (see the module doc).
    #[inline(always)]
    pub unsafe fn philox(keys: &RoundKeys, mut ctr: [__m512i; 4]) -> [__m512i; 4] {
        let (m0, m1) = (_mm512_set1_epi32(M0 as i32), _mm512_set1_epi32(M1 as i32));
        for r in 0..10 {
            let (hi0, lo0) = mulhilo(ctr[0], m0);
            let (hi1, lo1) = mulhilo(ctr[2], m1);
            ctr = [
                _mm512_xor_si512(_mm512_xor_si512(hi1, ctr[1]), keys.k0[r]),
                lo1,
                _mm512_xor_si512(_mm512_xor_si512(hi0, ctr[3]), keys.k1[r]),
                lo0,
            ];
        }
        ctr
    }

    /// [`philox`] on `N` independent sets of sixteen counters, their rounds interleaved (one
    /// round's dependency chain is a multiply, two shifts and blends and an exclusive or: `N`
    /// chains keep more of the vector units busy), the three-way exclusive ors in one
    /// ternary-logic instruction each; the same bits as `N` calls of [`philox`] (tested).
    ///
    /// # Safety
    /// AVX-512F only (see the module doc).
    #[inline(always)]
    pub unsafe fn philox_n<const N: usize>(
        keys: &RoundKeys,
        mut ctr: [[__m512i; 4]; N],
    ) -> [[__m512i; 4]; N] {
        let (m0, m1) = (_mm512_set1_epi32(M0 as i32), _mm512_set1_epi32(M1 as i32));
        for r in 0..10 {
            for c in ctr.iter_mut() {
                let (hi0, lo0) = mulhilo(c[0], m0);
                let (hi1, lo1) = mulhilo(c[2], m1);
                // 0x96: a ^ b ^ c.
                *c = [
                    _mm512_ternarylogic_epi32::<0x96>(hi1, c[1], keys.k0[r]),
                    lo1,
                    _mm512_ternarylogic_epi32::<0x96>(hi0, c[3], keys.k1[r]),
                    lo0,
                ];
            }
        }
        ctr
    }
}

/// The key of a seed: its low and high 32-bit halves.
#[inline]
pub fn key_of(seed: u64) -> [u32; 2] {
    [seed as u32, (seed >> 32) as u32]
}

/// The counter of one Philox block (see the module doc for the layout).
#[inline(always)]
pub fn counter(block: u32, repetition: u32, stream: u32, lane: u32, sweep_point: u32) -> [u32; 4] {
    [block, repetition, (stream << 16) | lane, sweep_point]
}

/// A uniform in [0, 1) from a random word: `u32 >> 8` times 2^-24, exactly as in WGSL.
#[inline(always)]
pub fn uniform_f32(word: u32) -> f32 {
    (word >> 8) as i32 as f32 * (1.0 / 16_777_216.0)
}

/// A uniform in (0, 1), never 0 or 1, for `-log(-log u)`: `(u32 >> 9) + 0.5` times 2^-23.
///
/// The project notes' original `((u >> 8) + 0.5) 2^-24` (see docs/estimators.md) needs 25 significant bits: in f32 its top values
/// round to exactly 1.0 (once in 2^24 words, so about once per 1.7 million Gumbel draws of
/// K = 10) and `-log(-log 1)` is infinite. With 23 random bits every step is exact in f32.
#[inline(always)]
pub fn open_uniform_f32(word: u32) -> f32 {
    ((word >> 9) as i32 as f32 + 0.5) * (1.0 / 8_388_608.0)
}

/// A uniform f64 in [0, 1) with 53 random bits from two words.
#[inline]
pub fn uniform_f64(hi: u32, lo: u32) -> f64 {
    let bits = (u64::from(hi) << 21) ^ u64::from(lo >> 11);
    (bits & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
}

/// A sequential stream of uniforms over one Philox stream, for the host's own needs
/// (the seed problem, training data): word `i` comes from block `i / 4`.
#[derive(Clone, Debug)]
pub struct PhiloxStream {
    key: [u32; 2],
    stream: u32,
    sub: u32,
    block: u64,
    buf: [u32; 4],
    used: usize,
}

impl PhiloxStream {
    /// A stream keyed by `seed`, on Philox stream `stream` and sub-stream `sub`.
    pub fn new(seed: u64, stream: u32, sub: u32) -> Self {
        Self {
            key: key_of(seed),
            stream,
            sub,
            block: 0,
            buf: [0; 4],
            used: 4,
        }
    }

    /// The next 32-bit word.
    pub fn next_u32(&mut self) -> u32 {
        if self.used == 4 {
            let ctr = [
                self.block as u32,
                (self.block >> 32) as u32,
                self.stream << 16,
                self.sub,
            ];
            self.buf = philox4x32_10(ctr, self.key);
            self.block += 1;
            self.used = 0;
        }
        let w = self.buf[self.used];
        self.used += 1;
        w
    }

    /// The next uniform f64 in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        let hi = self.next_u32();
        let lo = self.next_u32();
        uniform_f64(hi, lo)
    }

    /// The next integer in `0..n` (Lemire's multiply-shift; n > 0, bias below 2^-32 * n).
    pub fn next_below(&mut self, n: u32) -> u32 {
        ((u64::from(self.next_u32()) * u64::from(n)) >> 32) as u32
    }

    /// A standard normal (Box-Muller).
    pub fn next_normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// The stream as a `rand` generator, so rand's distributions can draw from Philox with the
/// same value stability as the rest of mcgrad.
impl rand::RngCore for PhiloxStream {
    fn next_u32(&mut self) -> u32 {
        PhiloxStream::next_u32(self)
    }

    fn next_u64(&mut self) -> u64 {
        let lo = u64::from(PhiloxStream::next_u32(self));
        lo | (u64::from(PhiloxStream::next_u32(self)) << 32)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(4) {
            let word = PhiloxStream::next_u32(self).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer_vectors() {
        // Random123 kat_vectors, philox4x32_10.
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn lanes_agree_with_the_scalar_generator() {
        let ctrs = [
            [1, 2, 3, 4],
            [5, 6, 7, 8],
            [9, 10, 11, 12],
            [13, 14, 15, 16],
        ];
        let key = [0xdead_beef, 0x1234_5678];
        let out = philox4x32_10_lanes(ctrs, key);
        for l in 0..4 {
            let one = philox4x32_10([ctrs[0][l], ctrs[1][l], ctrs[2][l], ctrs[3][l]], key);
            assert_eq!(one, [out[0][l], out[1][l], out[2][l], out[3][l]]);
        }
    }

    #[test]
    fn filled_blocks_are_the_scalar_generator_s_words() {
        // Lengths around the eight-block chunks (and partial blocks), a block number that
        // wraps at 2^32, and the AVX2 path against the scalar one where the CPU has AVX2.
        for (first, len) in [
            (0u32, 0usize),
            (0, 3),
            (5, 32),
            (7, 33),
            (u32::MAX - 9, 131),
        ] {
            let (key, ctr) = ([0x0123_4567, 0x89ab_cdef], [17, 3 << 16 | 2, 9]);
            let mut out = vec![0u32; len];
            fill_blocks(key, first, ctr, &mut out);
            let want: Vec<u32> = (0..len)
                .map(|i| {
                    let block = first.wrapping_add((i / 4) as u32);
                    philox4x32_10([block, ctr[0], ctr[1], ctr[2]], key)[i % 4]
                })
                .collect();
            assert_eq!(out, want, "first block {first}, {len} words");
            let mut scalar = vec![0u32; len];
            fill_blocks_scalar(key, first, ctr, &mut scalar);
            assert_eq!(scalar, want);
        }
    }

    #[test]
    fn the_stream_serves_rand_distributions() {
        use rand::Rng;
        let mut a = PhiloxStream::new(3, STREAM_TRAIN, 0);
        let mut b = a.clone();
        let first = rand::RngCore::next_u64(&mut a);
        assert_eq!(first as u32, b.next_u32());
        assert_eq!((first >> 32) as u32, b.next_u32());
        let draws: Vec<u32> = (0..1000).map(|_| a.random_range(0..6)).collect();
        assert!(draws.iter().all(|&d| d < 6));
        assert!((0..6).all(|v| draws.contains(&v)));
    }

    #[test]
    fn uniforms_stay_in_range() {
        assert_eq!(uniform_f32(0), 0.0);
        assert!(uniform_f32(u32::MAX) < 1.0);
        assert!(open_uniform_f32(0) > 0.0);
        assert!(open_uniform_f32(u32::MAX) < 1.0);
        assert!(uniform_f64(u32::MAX, u32::MAX) < 1.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x8_philox_equals_the_scalar_philox_on_any_counters() {
        use std::arch::x86_64::*;
        if !crate::fastmath::has_avx2() {
            return;
        }
        #[target_feature(enable = "avx2")]
        fn words(ctr: [[u32; 8]; 4], key: [u32; 2]) -> [[u32; 8]; 4] {
            // SAFETY: unaligned loads and stores of eight lanes; the CPU has AVX2.
            unsafe {
                let c = ctr.map(|w| _mm256_loadu_si256(w.as_ptr().cast()));
                let out = x8::philox(&x8::RoundKeys::new(key), c);
                let mut v = [[0u32; 8]; 4];
                for (o, w) in v.iter_mut().zip(out) {
                    _mm256_storeu_si256(o.as_mut_ptr().cast(), w);
                }
                v
            }
        }
        /// The same counters through `philox_n::<3>`, as the second of three sets (the
        /// others the counters' words reversed and rotated, so that the three differ).
        #[target_feature(enable = "avx2")]
        fn words_n(ctr: [[u32; 8]; 4], key: [u32; 2]) -> [[[u32; 8]; 4]; 3] {
            // SAFETY: unaligned loads and stores of eight lanes; the CPU has AVX2.
            unsafe {
                let c = ctr.map(|w| _mm256_loadu_si256(w.as_ptr().cast()));
                let reversed = [c[3], c[2], c[1], c[0]];
                let rotated = [c[1], c[2], c[3], c[0]];
                let out = x8::philox_n(&x8::RoundKeys::new(key), [reversed, c, rotated]);
                let mut v = [[[0u32; 8]; 4]; 3];
                for (vs, os) in v.iter_mut().zip(out) {
                    for (o, w) in vs.iter_mut().zip(os) {
                        _mm256_storeu_si256(o.as_mut_ptr().cast(), w);
                    }
                }
                v
            }
        }
        for seed in 0..200u32 {
            let ctr: [[u32; 8]; 4] = std::array::from_fn(|w| {
                std::array::from_fn(|l| {
                    (seed * 31 + w as u32 * 8 + l as u32).wrapping_mul(0x9E37_79B9) ^ (seed << 7)
                })
            });
            let key = [seed.wrapping_mul(0x85EB_CA6B), u32::MAX - seed];
            // SAFETY: the CPU has AVX2, checked above.
            let got = unsafe { words(ctr, key) };
            // SAFETY: as above.
            let [got_reversed, got_n, got_rotated] = unsafe { words_n(ctr, key) };
            for l in 0..8 {
                let want = philox4x32_10([ctr[0][l], ctr[1][l], ctr[2][l], ctr[3][l]], key);
                assert_eq!([got[0][l], got[1][l], got[2][l], got[3][l]], want);
                let lane = |g: &[[u32; 8]; 4]| [g[0][l], g[1][l], g[2][l], g[3][l]];
                assert_eq!(lane(&got_n), want, "philox_n, lane {l}");
                let reversed = philox4x32_10([ctr[3][l], ctr[2][l], ctr[1][l], ctr[0][l]], key);
                assert_eq!(
                    lane(&got_reversed),
                    reversed,
                    "philox_n's first set, lane {l}"
                );
                let rotated = philox4x32_10([ctr[1][l], ctr[2][l], ctr[3][l], ctr[0][l]], key);
                assert_eq!(
                    lane(&got_rotated),
                    rotated,
                    "philox_n's third set, lane {l}"
                );
            }
        }
        // Random123's known answer, on every lane.
        // SAFETY: the CPU has AVX2, checked above.
        let got = unsafe { words([[0; 8]; 4], [0, 0]) };
        assert_eq!(
            [got[0][5], got[1][5], got[2][5], got[3][5]],
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x16_philox_equals_the_scalar_philox_on_any_counters() {
        use std::arch::x86_64::*;
        if !crate::fastmath::has_avx512() {
            return;
        }
        #[target_feature(enable = "avx512f")]
        fn words(ctr: [[u32; 16]; 4], key: [u32; 2]) -> [[u32; 16]; 4] {
            // SAFETY: unaligned loads and stores of sixteen lanes; the CPU has AVX-512F.
            unsafe {
                let c = ctr.map(|w| _mm512_loadu_si512(w.as_ptr().cast()));
                let out = x16::philox(&x16::RoundKeys::new(key), c);
                let mut v = [[0u32; 16]; 4];
                for (o, w) in v.iter_mut().zip(out) {
                    _mm512_storeu_si512(o.as_mut_ptr().cast(), w);
                }
                v
            }
        }
        /// The same counters through `philox_n::<2>`, as the second of two sets (the first
        /// set reversed word by word, so that the two differ).
        #[target_feature(enable = "avx512f")]
        fn words_n(ctr: [[u32; 16]; 4], key: [u32; 2]) -> [[[u32; 16]; 4]; 2] {
            // SAFETY: unaligned loads and stores of sixteen lanes; the CPU has AVX-512F.
            unsafe {
                let c = ctr.map(|w| _mm512_loadu_si512(w.as_ptr().cast()));
                let other = [c[3], c[2], c[1], c[0]];
                let out = x16::philox_n(&x16::RoundKeys::new(key), [other, c]);
                let mut v = [[[0u32; 16]; 4]; 2];
                for (vs, os) in v.iter_mut().zip(out) {
                    for (o, w) in vs.iter_mut().zip(os) {
                        _mm512_storeu_si512(o.as_mut_ptr().cast(), w);
                    }
                }
                v
            }
        }
        for seed in 0..200u32 {
            let ctr: [[u32; 16]; 4] = std::array::from_fn(|w| {
                std::array::from_fn(|l| {
                    (seed * 67 + w as u32 * 16 + l as u32).wrapping_mul(0x9E37_79B9) ^ (seed << 7)
                })
            });
            let key = [seed.wrapping_mul(0x85EB_CA6B), u32::MAX - seed];
            // SAFETY: the CPU has AVX-512F, checked above.
            let got = unsafe { words(ctr, key) };
            // SAFETY: as above.
            let [got_other, got_n] = unsafe { words_n(ctr, key) };
            for l in 0..16 {
                let want = philox4x32_10([ctr[0][l], ctr[1][l], ctr[2][l], ctr[3][l]], key);
                assert_eq!(
                    [got[0][l], got[1][l], got[2][l], got[3][l]],
                    want,
                    "lane {l}"
                );
                let lane = |g: &[[u32; 16]; 4]| [g[0][l], g[1][l], g[2][l], g[3][l]];
                assert_eq!(lane(&got_n), want, "philox_n, lane {l}");
                let other = philox4x32_10([ctr[3][l], ctr[2][l], ctr[1][l], ctr[0][l]], key);
                assert_eq!(lane(&got_other), other, "philox_n's other set, lane {l}");
            }
        }
    }
}
