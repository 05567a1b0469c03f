//! The draws, on the CPU: categorical draws by inverse CDF (one uniform each) and Gumbel
//! noise (K uniforms each), both from Philox counters laid out as in [`crate::philox`].
//! These are the CPU twins of `shaders/score_function_counts.wgsl` and
//! `shaders/relaxed_draws.wgsl`.
//!
//! With L variables, variable `l` of draw `i` reads lane `l` of the categorical stream
//! (counter `[i / 4, rep, CATEGORICAL << 16 | l, point]`, word `i % 4`) and lanes
//! `l * ceil(K/4) + c / 4` of the Gumbel stream; lane 0 is the single-variable layout, so one
//! variable draws exactly what it always drew.

use crate::fastmath::{self, exp_nonpositive};
use crate::philox::{self, philox4x32_10, philox4x32_10_lanes, STREAM_CATEGORICAL, STREAM_GUMBEL};

/// Largest K served by the fixed-width (vectorisable) threshold comparison.
const FIXED_K: usize = 17;
/// A threshold no word passes: `word > NEVER` is false for every 32-bit word.
const NEVER: u32 = u32::MAX;

/// Inverse-CDF table of a categorical distribution on the full 32-bit uniform grid.
///
/// With the word `w` read as `U = w 2^-32`, the category is the least `k` with `U < C_k`
/// (`C_k = p_0 + ... + p_k`, summed in f64), and `U` past the total goes to the last category
/// with nonzero probability. `U >= C_j` is `w >= ceil(C_j 2^32)`, that is `w > S_j` with
/// `S_j = ceil(C_j 2^32) - 1`, so the table holds those integers (clamped to `[0, 2^32 - 1]`)
/// and the category is `#{j : w > S_j}`, clamped to `[first_nonzero, last_nonzero]`:
/// branch-free, and exactly the f64 comparison. The clamps cover the two ends a 32-bit
/// threshold cannot hold: `C_j 2^32 > 2^32 - 1` (no word passes, and `S_j = 2^32 - 1` is
/// passed by none) and `C_j = 0` (every word passes; `S_j = 0` misses the word 0, which the
/// lower clamp puts back). Every class is drawn with its probability rounded to the 2^-32
/// grid: a class of probability 1e-8 is drawn within 2.3e-10 of it (the 24-bit grid of
/// earlier versions was 6e-8 coarse).
#[derive(Clone, Debug)]
pub struct CategoricalTable {
    thresholds: Vec<u32>,
    fixed: [u32; FIXED_K - 1],
    first_nonzero: u32,
    last_nonzero: u32,
}

impl CategoricalTable {
    /// The table of probabilities `p` (non-negative, summing to about 1).
    pub fn new(p: &[f64]) -> Self {
        let mut cdf = 0.0;
        let thresholds: Vec<u32> = p[..p.len() - 1]
            .iter()
            .map(|pk| {
                cdf += pk;
                threshold(cdf)
            })
            .collect();
        let mut fixed = [NEVER; FIXED_K - 1];
        if p.len() <= FIXED_K {
            fixed[..thresholds.len()].copy_from_slice(&thresholds);
        }
        let last_nonzero = p.iter().rposition(|&v| v > 0.0).unwrap_or(p.len() - 1) as u32;
        let first_nonzero = p.iter().position(|&v| v > 0.0).unwrap_or(0) as u32;
        Self {
            thresholds,
            fixed,
            first_nonzero: first_nonzero.min(last_nonzero),
            last_nonzero,
        }
    }

    /// The inverse-CDF thresholds `S_j = ceil(C_j 2^32) - 1` (clamped), K - 1 of them.
    pub fn thresholds(&self) -> &[u32] {
        &self.thresholds
    }

    /// The first category with nonzero probability.
    pub fn first_nonzero(&self) -> u32 {
        self.first_nonzero
    }

    /// The last category with nonzero probability.
    pub fn last_nonzero(&self) -> u32 {
        self.last_nonzero
    }

    /// The category drawn by one random word.
    #[inline(always)]
    pub fn category(&self, word: u32) -> usize {
        let above = if self.thresholds.len() < FIXED_K {
            self.fixed.iter().map(|&t| u32::from(word > t)).sum::<u32>()
        } else {
            self.thresholds
                .iter()
                .map(|&t| u32::from(word > t))
                .sum::<u32>()
        };
        above.clamp(self.first_nonzero, self.last_nonzero) as usize
    }
}

impl CategoricalTable {
    /// The categories drawn by N random words ([`CategoricalTable::category`] of each),
    /// lane by lane so that the comparisons vectorise.
    #[inline(always)]
    pub fn categories<const N: usize>(&self, words: &[u32; N]) -> [u32; N] {
        let mut above = [0u32; N];
        if self.thresholds.len() < FIXED_K {
            for &t in &self.fixed[..self.thresholds.len()] {
                for (a, &w) in above.iter_mut().zip(words) {
                    *a += u32::from(w > t);
                }
            }
        } else {
            for &t in &self.thresholds {
                for (a, &w) in above.iter_mut().zip(words) {
                    *a += u32::from(w > t);
                }
            }
        }
        above.map(|a| a.clamp(self.first_nonzero, self.last_nonzero))
    }
}

/// `ceil(c 2^32) - 1`, clamped to the 32-bit range: the largest word whose uniform is still
/// below `c` (exact: scaling by 2^32 and `ceil` are exact in f64).
fn threshold(c: f64) -> u32 {
    ((c * 4_294_967_296.0).ceil() - 1.0).clamp(0.0, f64::from(u32::MAX)) as u32
}

/// Counts the categories of the S draws of repetition `rep` at sweep point `point` into
/// `counts` (which it zeroes first). Draw `i` uses word `i % 4` of Philox block `i / 4`.
/// [`count_categories_reps`] of one repetition.
pub fn count_categories(
    table: &CategoricalTable,
    key: [u32; 2],
    rep: u32,
    point: u32,
    samples: u32,
    counts: &mut [u32],
) {
    count_categories_reps(table, key, rep, point, samples, counts);
}

/// Counts the categories of the S draws of repetitions `first_rep ..` (as many as `counts`
/// holds K-rows: `counts[r * K + c]` for repetition `first_rep + r`, zeroed first) at sweep
/// point `point`, as [`count_categories`] counts each.
///
/// With at most [`FIXED_K`] categories the words are not classified one by one: Philox runs
/// on eight blocks at once, and per threshold the pass tallies `G_j = #{w > S_j}`
/// (vectorised: AVX2 registers where present, [`crate::philox::x8`], with two repetitions
/// per register when S <= 16). The thresholds are non-decreasing, so the unclamped category
/// `#{j : w > S_j}` is `m` for exactly `G_{m-1} - G_m` words (`G_{-1} = S`, `G_{K-1} = 0`);
/// the clamp to `[first_nonzero, last_nonzero]` then moves the counts below and above onto
/// those two classes. The counts are the per-word ones exactly, with or without AVX2.
pub fn count_categories_reps(
    table: &CategoricalTable,
    key: [u32; 2],
    first_rep: u32,
    point: u32,
    samples: u32,
    counts: &mut [u32],
) {
    count_reps_with(
        fastmath::has_avx2(),
        table,
        key,
        first_rep,
        point,
        samples,
        counts,
    );
}

/// [`count_categories_reps`], through the AVX2 tallies where `avx2` (which the caller has
/// checked the CPU has) and else through the portable lanes.
fn count_reps_with(
    avx2: bool,
    table: &CategoricalTable,
    key: [u32; 2],
    first_rep: u32,
    point: u32,
    samples: u32,
    counts: &mut [u32],
) {
    let k = table.thresholds.len() + 1;
    assert_eq!(counts.len() % k, 0, "counts must hold whole K-rows");
    if table.thresholds.len() >= FIXED_K {
        for (r, c) in counts.chunks_exact_mut(k).enumerate() {
            c.iter_mut().for_each(|v| *v = 0);
            let rep = first_rep.wrapping_add(r as u32);
            count_categories_scalar(table, key, rep, point, samples, c);
        }
        return;
    }
    let mut above = [[0u32; FIXED_K - 1]; TALLY_REPS];
    for (chunk_index, chunk) in counts.chunks_mut(k * TALLY_REPS).enumerate() {
        let rep0 = first_rep.wrapping_add((chunk_index * TALLY_REPS) as u32);
        let n = chunk.len() / k;
        fill_tallies(avx2, table, key, rep0, point, samples, &mut above[..n]);
        for (a, c) in above[..n].iter().zip(chunk.chunks_exact_mut(k)) {
            counts_from_tallies(table, samples, a, c);
        }
    }
}

/// The threshold tallies of repetitions `rep0 ..` (one per row of `above`, at most
/// [`TALLY_REPS`]), through the AVX2 tallies where `avx2` (which the caller has checked the
/// CPU has) and else through the portable lanes.
fn fill_tallies(
    avx2: bool,
    table: &CategoricalTable,
    key: [u32; 2],
    rep0: u32,
    point: u32,
    samples: u32,
    above: &mut [[u32; FIXED_K - 1]],
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: the caller checked that the CPU has AVX2.
        unsafe {
            tally_x8::tallies(table, key, rep0, point, samples, above);
        }
    }
    if !avx2 || cfg!(not(target_arch = "x86_64")) {
        for (r, a) in above.iter_mut().enumerate() {
            *a = [0; FIXED_K - 1];
            tally_repetition(table, key, rep0.wrapping_add(r as u32), point, samples, a);
        }
    }
}

/// The counts of [`count_categories_reps`] for `reps` repetitions from `first_rep` on, written
/// in f64 and category-major: the count of category j of repetition `first_rep + r` at
/// `out[j * stride + r]` (the layout [`crate::estimators::estimate_counts_batch`] reads; the
/// rest of `out` is left as it is). The same counts, without rows of u32 and their
/// transpose in between.
///
/// # Panics
/// If `stride < reps` or `out` is shorter than `(K - 1) * stride + reps`.
#[allow(clippy::too_many_arguments)]
pub fn count_categories_reps_f64(
    table: &CategoricalTable,
    key: [u32; 2],
    first_rep: u32,
    point: u32,
    samples: u32,
    reps: usize,
    stride: usize,
    out: &mut [f64],
) {
    count_reps_f64_with(
        fastmath::has_avx2(),
        table,
        key,
        (first_rep, point, samples),
        reps,
        stride,
        out,
    );
}

/// [`count_categories_reps_f64`] through the AVX2 tallies where `avx2` (which the caller has
/// checked the CPU has) and else through the portable lanes.
fn count_reps_f64_with(
    avx2: bool,
    table: &CategoricalTable,
    key: [u32; 2],
    (first_rep, point, samples): (u32, u32, u32),
    reps: usize,
    stride: usize,
    out: &mut [f64],
) {
    let k = table.thresholds.len() + 1;
    if reps == 0 {
        return;
    }
    assert!(stride >= reps && out.len() >= (k - 1) * stride + reps);
    if table.thresholds.len() >= FIXED_K {
        let mut counts = vec![0u32; k];
        for r in 0..reps {
            let rep = first_rep.wrapping_add(r as u32);
            count_reps_with(avx2, table, key, rep, point, samples, &mut counts);
            for (j, &c) in counts.iter().enumerate() {
                out[j * stride + r] = f64::from(c);
            }
        }
        return;
    }
    // With the clamp folded into the tallies (`S` below the first drawn category's threshold,
    // 0 from the last one's on), category m's count is `T(m - 1) - T(m)` for every m, the
    // telescoped sums of `counts_from_tallies`.
    let (first, last) = (table.first_nonzero as isize, table.last_nonzero as isize);
    let column = |j: isize| -> Result<usize, u32> {
        if j < first {
            Err(samples)
        } else if j >= last {
            Err(0)
        } else {
            Ok(j as usize)
        }
    };
    let mut above = [[0u32; FIXED_K - 1]; TALLY_REPS];
    for r0 in (0..reps).step_by(TALLY_REPS) {
        let n = (reps - r0).min(TALLY_REPS);
        let rep0 = first_rep.wrapping_add(r0 as u32);
        fill_tallies(avx2, table, key, rep0, point, samples, &mut above[..n]);
        let tallies = &above[..n];
        for m in 0..k {
            let row = &mut out[m * stride + r0..m * stride + r0 + n];
            match (column(m as isize - 1), column(m as isize)) {
                (Err(a), Err(b)) => row.fill(f64::from(a - b)),
                (Err(a), Ok(j)) => {
                    for (o, t) in row.iter_mut().zip(tallies) {
                        *o = f64::from(a - t[j]);
                    }
                }
                (Ok(i), Err(b)) => {
                    for (o, t) in row.iter_mut().zip(tallies) {
                        *o = f64::from(t[i] - b);
                    }
                }
                (Ok(i), Ok(j)) => {
                    for (o, t) in row.iter_mut().zip(tallies) {
                        *o = f64::from(t[i] - t[j]);
                    }
                }
            }
        }
    }
}

/// Repetitions whose tallies [`count_reps_with`] keeps at once.
const TALLY_REPS: usize = 64;

/// The counts of one repetition from its threshold tallies (see [`count_categories_reps`]).
#[inline(always)]
fn counts_from_tallies(
    table: &CategoricalTable,
    samples: u32,
    above: &[u32; FIXED_K - 1],
    counts: &mut [u32],
) {
    counts.iter_mut().for_each(|c| *c = 0);
    let k = counts.len();
    let tally = |j: isize| -> u32 {
        if j < 0 {
            samples
        } else if (j as usize) < k - 1 {
            above[j as usize]
        } else {
            0
        }
    };
    let (first, last) = (table.first_nonzero as usize, table.last_nonzero as usize);
    for m in 0..k {
        let n = tally(m as isize - 1) - tally(m as isize);
        counts[m.clamp(first, last)] += n;
    }
}

/// The threshold tallies in AVX2 registers: eight Philox blocks per register
/// ([`crate::philox::x8`]), the words compared with every threshold as signed numbers after
/// flipping their top bits (an unsigned comparison), each comparison's all-ones mask
/// subtracted from the threshold's lane counters. Words past S are set to the least signed
/// number, which passes no threshold.
#[cfg(target_arch = "x86_64")]
mod tally_x8 {
    use std::arch::x86_64::*;

    use super::{CategoricalTable, FIXED_K};
    use crate::philox::{x8, STREAM_CATEGORICAL};

    /// `above[r][j]` = the number of draws of repetition `first_rep + r` whose word is above
    /// threshold j.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn tallies(
        table: &CategoricalTable,
        key: [u32; 2],
        first_rep: u32,
        point: u32,
        samples: u32,
        above: &mut [[u32; FIXED_K - 1]],
    ) {
        let t = &table.fixed[..table.thresholds.len()];
        let a = (key, first_rep, point, samples);
        match t.len() {
            0 => above.iter_mut().for_each(|a| *a = [0; FIXED_K - 1]),
            1 => run::<1>(t, a, above),
            2 => run::<2>(t, a, above),
            3 => run::<3>(t, a, above),
            4 => run::<4>(t, a, above),
            5 => run::<5>(t, a, above),
            6 => run::<6>(t, a, above),
            7 => run::<7>(t, a, above),
            8 => run::<8>(t, a, above),
            9 => run::<9>(t, a, above),
            10 => run::<10>(t, a, above),
            11 => run::<11>(t, a, above),
            12 => run::<12>(t, a, above),
            13 => run::<13>(t, a, above),
            14 => run::<14>(t, a, above),
            15 => run::<15>(t, a, above),
            16 => run::<16>(t, a, above),
            _ => unreachable!("at most FIXED_K - 1 thresholds"),
        }
    }

    /// [`tallies`] with NT thresholds.
    #[inline(always)]
    unsafe fn run<const NT: usize>(
        thresholds: &[u32],
        (key, first_rep, point, samples): ([u32; 2], u32, u32, u32),
        above: &mut [[u32; FIXED_K - 1]],
    ) {
        let keys = x8::RoundKeys::new(key);
        let mut t = [_mm256_setzero_si256(); NT];
        for j in 0..NT {
            t[j] = _mm256_set1_epi32((thresholds[j] ^ 0x8000_0000) as i32);
        }
        let c2 = _mm256_set1_epi32((STREAM_CATEGORICAL << 16) as i32);
        let c3 = _mm256_set1_epi32(point as i32);
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let blocks = samples.div_ceil(4);
        // Adds a word vector's comparisons to the counters (`valid`: the lanes in S).
        #[inline(always)]
        unsafe fn tally<const NT: usize>(
            acc: &mut [__m256i; NT],
            t: &[__m256i; NT],
            word: __m256i,
            valid: Option<__m256i>,
        ) {
            let flip = _mm256_set1_epi32(i32::MIN);
            let mut x = _mm256_xor_si256(word, flip);
            if let Some(v) = valid {
                x = _mm256_blendv_epi8(flip, x, v);
            }
            for j in 0..NT {
                acc[j] = _mm256_sub_epi32(acc[j], _mm256_cmpgt_epi32(x, t[j]));
            }
        }
        if blocks <= 4 {
            // Two repetitions per register: lanes 0-3 blocks 0-3 of one, lanes 4-7 of the
            // next. Word w of lane l is draw (l % 4) * 4 + w.
            let c0 = _mm256_setr_epi32(0, 1, 2, 3, 0, 1, 2, 3);
            let draw = _mm256_slli_epi32::<2>(_mm256_and_si256(lane, _mm256_set1_epi32(3)));
            let s = _mm256_set1_epi32(samples as i32);
            let mut valid = [_mm256_setzero_si256(); 4];
            for (w, v) in valid.iter_mut().enumerate() {
                *v = _mm256_cmpgt_epi32(s, _mm256_add_epi32(draw, _mm256_set1_epi32(w as i32)));
            }
            let all_valid = samples == 16;
            for (pair, two) in above.chunks_mut(2).enumerate() {
                let rep0 = first_rep.wrapping_add(2 * pair as u32);
                let c1 = _mm256_setr_epi32(
                    rep0 as i32,
                    rep0 as i32,
                    rep0 as i32,
                    rep0 as i32,
                    rep0.wrapping_add(1) as i32,
                    rep0.wrapping_add(1) as i32,
                    rep0.wrapping_add(1) as i32,
                    rep0.wrapping_add(1) as i32,
                );
                let words = x8::philox(&keys, [c0, c1, c2, c3]);
                let mut acc = [_mm256_setzero_si256(); NT];
                for w in 0..4 {
                    tally(&mut acc, &t, words[w], (!all_valid).then_some(valid[w]));
                }
                let (lo, hi) = half_sums(&acc);
                two[0] = lo;
                if let Some(second) = two.get_mut(1) {
                    *second = hi;
                }
            }
        } else {
            for (r, a) in above.iter_mut().enumerate() {
                let c1 = _mm256_set1_epi32(first_rep.wrapping_add(r as u32) as i32);
                let mut acc = [_mm256_setzero_si256(); NT];
                let mut block = 0u32;
                while block < blocks {
                    let c0 = _mm256_add_epi32(_mm256_set1_epi32(block as i32), lane);
                    let words = x8::philox(&keys, [c0, c1, c2, c3]);
                    // Draws left from this chunk on (at most 32 matter).
                    let left = (samples - 4 * block).min(32) as i32;
                    if left == 32 {
                        for word in words {
                            tally(&mut acc, &t, word, None);
                        }
                    } else {
                        let draw = _mm256_slli_epi32::<2>(lane);
                        let s = _mm256_set1_epi32(left);
                        for (w, word) in words.into_iter().enumerate() {
                            let index = _mm256_add_epi32(draw, _mm256_set1_epi32(w as i32));
                            let valid = _mm256_cmpgt_epi32(s, index);
                            tally(&mut acc, &t, word, Some(valid));
                        }
                    }
                    block += 8;
                }
                let (lo, hi) = half_sums(&acc);
                for j in 0..NT {
                    a[j] = lo[j] + hi[j];
                }
            }
        }
    }

    /// The sums of lanes 0-3 and of lanes 4-7 of each counter.
    #[inline(always)]
    unsafe fn half_sums<const NT: usize>(
        acc: &[__m256i; NT],
    ) -> ([u32; FIXED_K - 1], [u32; FIXED_K - 1]) {
        let (mut lo, mut hi) = ([0u32; FIXED_K - 1], [0u32; FIXED_K - 1]);
        let zero = _mm256_setzero_si256();
        let mut j = 0;
        while j < NT {
            let mut at = [zero; 4];
            for (i, a) in at.iter_mut().enumerate() {
                if j + i < NT {
                    *a = acc[j + i];
                }
            }
            // hadd(hadd(a0, a1), hadd(a2, a3)): the four counters' sums of lanes 0-3 in the
            // low half, of lanes 4-7 in the high half.
            let h = _mm256_hadd_epi32(
                _mm256_hadd_epi32(at[0], at[1]),
                _mm256_hadd_epi32(at[2], at[3]),
            );
            _mm_storeu_si128(lo[j..j + 4].as_mut_ptr().cast(), _mm256_castsi256_si128(h));
            _mm_storeu_si128(
                hi[j..j + 4].as_mut_ptr().cast(),
                _mm256_extracti128_si256::<1>(h),
            );
            j += 4;
        }
        (lo, hi)
    }
}

/// The threshold tallies of one repetition (see [`count_categories`]).
#[inline(always)]
fn tally_repetition(
    table: &CategoricalTable,
    key: [u32; 2],
    rep: u32,
    point: u32,
    samples: u32,
    above: &mut [u32; FIXED_K - 1],
) {
    let blocks = samples.div_ceil(4);
    let mut block = 0;
    while blocks - block >= 8 {
        tally_blocks::<8>(table, key, rep, point, block, samples, above);
        block += 8;
    }
    while block < blocks {
        tally_blocks::<4>(table, key, rep, point, block, samples, above);
        block += 4;
    }
}

/// Adds to `above[j]` the number of words `w > S_j` among the draws of Philox blocks
/// `block..block + W` (draws past `samples` left out).
#[inline(always)]
fn tally_blocks<const W: usize>(
    table: &CategoricalTable,
    key: [u32; 2],
    rep: u32,
    point: u32,
    block: u32,
    samples: u32,
    above: &mut [u32; FIXED_K - 1],
) {
    let ctr = [
        std::array::from_fn(|b| block + b as u32),
        [rep; W],
        [STREAM_CATEGORICAL << 16; W],
        [point; W],
    ];
    let words = philox4x32_10_lanes::<W>(ctr, key);
    // Draw (block + b) * 4 + w is in the repetition: a 0/1 mask per word.
    let valid: [[u32; W]; 4] = std::array::from_fn(|w| {
        std::array::from_fn(|b| u32::from((block as usize + b) * 4 + w < samples as usize))
    });
    let thresholds = &table.fixed[..table.thresholds.len()];
    for (a, &t) in above.iter_mut().zip(thresholds) {
        let mut lanes = [0u32; W];
        for w in 0..4 {
            for b in 0..W {
                lanes[b] += u32::from(words[w][b] > t) & valid[w][b];
            }
        }
        *a += lanes.iter().sum::<u32>();
    }
}

/// [`count_categories`] one word at a time (any K).
fn count_categories_scalar(
    table: &CategoricalTable,
    key: [u32; 2],
    rep: u32,
    point: u32,
    samples: u32,
    counts: &mut [u32],
) {
    let full_blocks = samples / 4;
    for block in 0..full_blocks {
        let words = philox4x32_10(
            philox::counter(block, rep, STREAM_CATEGORICAL, 0, point),
            key,
        );
        for w in words {
            counts[table.category(w)] += 1;
        }
    }
    let rest = (samples % 4) as usize;
    if rest > 0 {
        let words = philox4x32_10(
            philox::counter(full_blocks, rep, STREAM_CATEGORICAL, 0, point),
            key,
        );
        for &w in &words[..rest] {
            counts[table.category(w)] += 1;
        }
    }
}

/// The categories of the S draws of one repetition, in draw order (for tests and pinning).
pub fn categories(
    table: &CategoricalTable,
    key: [u32; 2],
    rep: u32,
    point: u32,
    samples: u32,
) -> Vec<u32> {
    (0..samples)
        .map(|i| {
            let words = philox4x32_10(
                philox::counter(i / 4, rep, STREAM_CATEGORICAL, 0, point),
                key,
            );
            table.category(words[(i % 4) as usize]) as u32
        })
        .collect()
}

/// The categories of S joint draws of L variables (one table per variable) into `z`,
/// draw-major (`z[i * L + l]`), as [`count_categories`] draws them for each variable's lane.
pub fn draw_joint_categories(
    tables: &[CategoricalTable],
    key: [u32; 2],
    rep: u32,
    point: u32,
    samples: u32,
    z: &mut [u32],
) {
    #[cfg(target_arch = "x86_64")]
    if fastmath::has_avx2() {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe {
            joint_avx2::draw(tables, key, rep, point, samples, z, Layout::DrawMajor, 0)
        };
    }
    draw_joint_lanes(tables, key, rep, point, samples, z);
}

/// [`draw_joint_categories`] laid out variable-major: `zt[l * S + i]` is variable `l` of draw
/// `i` (the same categories, transposed), the layout the joint-counts pass reads.
pub fn draw_joint_categories_by_variable(
    tables: &[CategoricalTable],
    key: [u32; 2],
    rep: u32,
    point: u32,
    samples: u32,
    zt: &mut [u32],
) {
    #[cfg(target_arch = "x86_64")]
    if fastmath::has_avx2() {
        // Whole groups of 64 draws in AVX-512 where the CPU has it, the rest (or all) in AVX2.
        let from = if fastmath::has_avx512() {
            // SAFETY: the CPU has AVX-512F, checked just above.
            unsafe { joint_avx512::draw_by_variable(tables, key, rep, point, samples, zt) }
        } else {
            0
        };
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe {
            joint_avx2::draw(
                tables,
                key,
                rep,
                point,
                samples,
                zt,
                Layout::VariableMajor,
                from,
            )
        };
    }
    draw_by_variable_scalar(tables, key, rep, point, samples, zt);
}

/// [`draw_joint_categories_by_variable`] in AVX2 alone (no AVX-512), for the tests that
/// compare the paths; `None` without AVX2.
#[cfg(test)]
fn draw_by_variable_avx2(
    tables: &[CategoricalTable],
    key: [u32; 2],
    rep: u32,
    point: u32,
    samples: u32,
    zt: &mut [u32],
) -> Option<()> {
    #[cfg(target_arch = "x86_64")]
    if fastmath::has_avx2() {
        // SAFETY: the CPU has AVX2, checked just above.
        unsafe {
            joint_avx2::draw(
                tables,
                key,
                rep,
                point,
                samples,
                zt,
                Layout::VariableMajor,
                0,
            )
        };
        return Some(());
    }
    let _ = (tables, key, rep, point, samples, zt);
    None
}

/// The joint draws variable-major in AVX-512F registers, 64 draws (sixteen Philox blocks) of
/// a variable a step and two variables at once ([`philox::x16::philox_n`]): the categories
/// by unsigned comparisons into mask registers, stored in draw order by a 4x16 transpose.
/// Each draw's category is that of the same word under the same thresholds and clamp as in
/// [`joint_avx2`] (tested).
#[cfg(target_arch = "x86_64")]
mod joint_avx512 {
    use std::arch::x86_64::*;

    use super::CategoricalTable;
    use crate::philox::{x16, STREAM_CATEGORICAL};

    /// The categories of the words in four registers under `table`: `#{j : w > S_j}`
    /// clamped to `[first_nonzero, last_nonzero]`.
    ///
    /// # Safety
    /// AVX-512F only.
    #[inline(always)]
    unsafe fn classify(words: [__m512i; 4], table: &CategoricalTable) -> [__m512i; 4] {
        let one = _mm512_set1_epi32(1);
        let mut above = [_mm512_setzero_si512(); 4];
        for &t in table.thresholds() {
            let tb = _mm512_set1_epi32(t as i32);
            for w in 0..4 {
                let passed = _mm512_cmpgt_epu32_mask(words[w], tb);
                above[w] = _mm512_mask_add_epi32(above[w], passed, above[w], one);
            }
        }
        let lo = _mm512_set1_epi32(table.first_nonzero() as i32);
        let hi = _mm512_set1_epi32(table.last_nonzero() as i32);
        for a in above.iter_mut() {
            *a = _mm512_min_epu32(_mm512_max_epu32(*a, lo), hi);
        }
        above
    }

    /// Stores sixteen blocks' categories (`cats[w]` word `w` of blocks 0..16) in draw order:
    /// `out[4 b + w]` is word `w` of block `b`.
    ///
    /// # Safety
    /// AVX-512F only.
    #[inline(always)]
    unsafe fn store_draw_order(cats: [__m512i; 4], out: &mut [u32; 64]) {
        // Within each 128-bit lane k: blocks 4k, 4k + 1, 4k + 2, 4k + 3 (four words each).
        let t01l = _mm512_unpacklo_epi32(cats[0], cats[1]);
        let t01h = _mm512_unpackhi_epi32(cats[0], cats[1]);
        let t23l = _mm512_unpacklo_epi32(cats[2], cats[3]);
        let t23h = _mm512_unpackhi_epi32(cats[2], cats[3]);
        let b0 = _mm512_unpacklo_epi64(t01l, t23l);
        let b1 = _mm512_unpackhi_epi64(t01l, t23l);
        let b2 = _mm512_unpacklo_epi64(t01h, t23h);
        let b3 = _mm512_unpackhi_epi64(t01h, t23h);
        // Then the 4x4 transpose of the 128-bit lanes: output j holds lane j of b0..b3.
        let u0 = _mm512_shuffle_i32x4::<0x44>(b0, b1);
        let u1 = _mm512_shuffle_i32x4::<0x44>(b2, b3);
        let u2 = _mm512_shuffle_i32x4::<0xee>(b0, b1);
        let u3 = _mm512_shuffle_i32x4::<0xee>(b2, b3);
        let p = out.as_mut_ptr().cast::<__m512i>();
        _mm512_storeu_si512(p, _mm512_shuffle_i32x4::<0x88>(u0, u1));
        _mm512_storeu_si512(p.add(1), _mm512_shuffle_i32x4::<0xdd>(u0, u1));
        _mm512_storeu_si512(p.add(2), _mm512_shuffle_i32x4::<0x88>(u2, u3));
        _mm512_storeu_si512(p.add(3), _mm512_shuffle_i32x4::<0xdd>(u2, u3));
    }

    /// The counters of Philox blocks `b0 .. b0 + 16` of variable `var`.
    ///
    /// # Safety
    /// AVX-512F only.
    #[inline(always)]
    unsafe fn counters(b0: u32, rep: u32, var: usize, point: u32) -> [__m512i; 4] {
        let lane = (STREAM_CATEGORICAL << 16) | var as u32;
        [
            _mm512_add_epi32(
                _mm512_set1_epi32(b0 as i32),
                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            ),
            _mm512_set1_epi32(rep as i32),
            _mm512_set1_epi32(lane as i32),
            _mm512_set1_epi32(point as i32),
        ]
    }

    /// Draws `0 .. 64 floor(S / 64)` of every variable into `zt` (`zt[l * S + i]`); returns
    /// how many draws of each variable it wrote.
    ///
    /// # Safety
    /// AVX-512F only.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn draw_by_variable(
        tables: &[CategoricalTable],
        key: [u32; 2],
        rep: u32,
        point: u32,
        samples: u32,
        zt: &mut [u32],
    ) -> usize {
        let keys = x16::RoundKeys::new(key);
        let (l, su) = (tables.len(), samples as usize);
        assert!(zt.len() >= l * su, "the joint draws need S * L numbers");
        let whole = su / 64 * 64;
        // A plain function, not a closure, which would be compiled without AVX-512.
        #[inline(always)]
        unsafe fn store(
            tables: &[CategoricalTable],
            zt: &mut [u32],
            su: usize,
            (var, first): (usize, usize),
            words: [__m512i; 4],
        ) {
            let cats = classify(words, &tables[var]);
            let row = &mut zt[var * su + first..var * su + first + 64];
            store_draw_order(cats, <&mut [u32; 64]>::try_from(row).expect("64 draws"));
        }
        for first in (0..whole).step_by(64) {
            let b0 = (first / 4) as u32;
            let mut var = 0;
            while var + 2 <= l {
                let [a, b] = x16::philox_n(
                    &keys,
                    [
                        counters(b0, rep, var, point),
                        counters(b0, rep, var + 1, point),
                    ],
                );
                store(tables, zt, su, (var, first), a);
                store(tables, zt, su, (var + 1, first), b);
                var += 2;
            }
            if var < l {
                let [a] = x16::philox_n(&keys, [counters(b0, rep, var, point)]);
                store(tables, zt, su, (var, first), a);
            }
        }
        whole
    }
}

/// Where [`joint_avx2::draw`] puts variable `l` of draw `i`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `z[i * L + l]`.
    DrawMajor,
    /// `z[l * S + i]`.
    VariableMajor,
}

/// [`draw_joint_categories_by_variable`] one Philox block and one word at a time.
fn draw_by_variable_scalar(
    tables: &[CategoricalTable],
    key: [u32; 2],
    rep: u32,
    point: u32,
    samples: u32,
    zt: &mut [u32],
) {
    let su = samples as usize;
    for (var, table) in tables.iter().enumerate() {
        let row = &mut zt[var * su..(var + 1) * su];
        for (b, chunk) in row.chunks_mut(4).enumerate() {
            let words = philox4x32_10(
                philox::counter(b as u32, rep, STREAM_CATEGORICAL, var as u32, point),
                key,
            );
            for (c, &w) in chunk.iter_mut().zip(&words) {
                *c = table.category(w) as u32;
            }
        }
    }
}

/// The joint draws in AVX2 registers: Philox on eight blocks at once ([`philox::x8`]), the
/// inverse-CDF comparisons on the 32 words in four registers, and the categories stored in
/// draw order by the 4x8 transpose of [`philox::x8::store_block_major`].
#[cfg(target_arch = "x86_64")]
mod joint_avx2 {
    use std::arch::x86_64::*;

    use super::{CategoricalTable, Layout, SIGN_BIT};
    use crate::philox::{x8, STREAM_CATEGORICAL};

    /// The categories of draws `4 b0 .. 4 b0 + 32` (Philox blocks `b0 .. b0 + 8` of counter
    /// `[block, ctr[0], ctr[1], ctr[2]]`) under `table`, in draw order: `#{j : w > S_j}`
    /// clamped to `[first_nonzero, last_nonzero]`, with the comparisons signed on words and
    /// thresholds whose top bit is flipped.
    ///
    /// # Safety
    /// AVX2 only.
    #[inline(always)]
    unsafe fn categories32(
        keys: &x8::RoundKeys,
        b0: u32,
        ctr: [__m256i; 3],
        table: &CategoricalTable,
        bounds: (__m256i, __m256i),
    ) -> [u32; 32] {
        let mut out = [0u32; 32];
        categories32_into(keys, b0, ctr, table, bounds, &mut out);
        out
    }

    /// [`categories32`] stored straight into `out`.
    ///
    /// # Safety
    /// AVX2 only.
    #[inline(always)]
    unsafe fn categories32_into(
        keys: &x8::RoundKeys,
        b0: u32,
        ctr: [__m256i; 3],
        table: &CategoricalTable,
        bounds: (__m256i, __m256i),
        out: &mut [u32; 32],
    ) {
        let words = x8::philox(keys, block_counters(b0, ctr));
        x8::store_block_major(classify(words, table, bounds), out);
    }

    /// The Philox counters of blocks `b0 .. b0 + 8`: `[block, ctr[0], ctr[1], ctr[2]]`.
    ///
    /// # Safety
    /// AVX2 only.
    #[inline(always)]
    unsafe fn block_counters(b0: u32, ctr: [__m256i; 3]) -> [__m256i; 4] {
        let block = _mm256_add_epi32(
            _mm256_set1_epi32(b0 as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        [block, ctr[0], ctr[1], ctr[2]]
    }

    /// The categories of the words in four registers under `table` (`bounds` its
    /// `[first_nonzero, last_nonzero]` broadcast).
    ///
    /// # Safety
    /// AVX2 only.
    #[inline(always)]
    pub(super) unsafe fn classify(
        words: [__m256i; 4],
        table: &CategoricalTable,
        bounds: (__m256i, __m256i),
    ) -> [__m256i; 4] {
        let sign = _mm256_set1_epi32(SIGN_BIT as i32);
        // A plain loop, not `map`, whose closure would be compiled without AVX2.
        let mut x = words;
        for w in x.iter_mut() {
            *w = _mm256_xor_si256(*w, sign);
        }
        let mut above = [_mm256_setzero_si256(); 4];
        for &t in table.thresholds() {
            let tb = _mm256_set1_epi32((t ^ SIGN_BIT) as i32);
            for w in 0..4 {
                // The comparison is -1 where the word passes the threshold.
                above[w] = _mm256_sub_epi32(above[w], _mm256_cmpgt_epi32(x[w], tb));
            }
        }
        for a in above.iter_mut() {
            *a = _mm256_min_epu32(_mm256_max_epu32(*a, bounds.0), bounds.1);
        }
        above
    }

    /// [`super::draw_joint_categories`] (`DrawMajor`) or
    /// [`super::draw_joint_categories_by_variable`] (`VariableMajor`), from draw `from` (a
    /// multiple of 32) of every variable on.
    ///
    /// # Safety
    /// AVX2 only.
    #[target_feature(enable = "avx2")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn draw(
        tables: &[CategoricalTable],
        key: [u32; 2],
        rep: u32,
        point: u32,
        samples: u32,
        z: &mut [u32],
        layout: Layout,
        from: usize,
    ) {
        assert!(
            from.is_multiple_of(32),
            "the AVX2 joint draws start at a block of 32"
        );
        let keys = x8::RoundKeys::new(key);
        let (l, su) = (tables.len(), samples as usize);
        assert!(z.len() >= l * su, "the joint draws need S * L numbers");
        for (var, table) in tables.iter().enumerate() {
            let lane = (STREAM_CATEGORICAL << 16) | var as u32;
            let ctr = [
                _mm256_set1_epi32(rep as i32),
                _mm256_set1_epi32(lane as i32),
                _mm256_set1_epi32(point as i32),
            ];
            let bounds = (
                _mm256_set1_epi32(table.first_nonzero() as i32),
                _mm256_set1_epi32(table.last_nonzero() as i32),
            );
            let mut first = from;
            while first < su {
                let n = (su - first).min(32);
                if layout == Layout::VariableMajor && su - first >= 64 {
                    // Two whole blocks at once, their Philox rounds interleaved
                    // (`x8::philox_n`): one block's ten rounds are a chain of dependent
                    // multiplies, shifts and exclusive ors that left the vector units idle.
                    // The same words.
                    let b0 = (first / 4) as u32;
                    let [w0, w1] = x8::philox_n(
                        &keys,
                        [block_counters(b0, ctr), block_counters(b0 + 8, ctr)],
                    );
                    let row = &mut z[var * su + first..var * su + first + 64];
                    let (r0, r1) = row.split_at_mut(32);
                    let r0 = <&mut [u32; 32]>::try_from(r0).expect("32 draws");
                    let r1 = <&mut [u32; 32]>::try_from(r1).expect("32 draws");
                    x8::store_block_major(classify(w0, table, bounds), r0);
                    x8::store_block_major(classify(w1, table, bounds), r1);
                    first += 64;
                    continue;
                }
                if layout == Layout::VariableMajor && n == 32 {
                    // A whole block stored straight into its row (no copy, no memcpy call).
                    let row = &mut z[var * su + first..var * su + first + 32];
                    let row = <&mut [u32; 32]>::try_from(row).expect("32 draws");
                    categories32_into(&keys, (first / 4) as u32, ctr, table, bounds, row);
                    first += 32;
                    continue;
                }
                let cats = categories32(&keys, (first / 4) as u32, ctr, table, bounds);
                match layout {
                    Layout::VariableMajor => {
                        z[var * su + first..var * su + first + n].copy_from_slice(&cats[..n]);
                    }
                    Layout::DrawMajor => {
                        for (j, &c) in cats[..n].iter().enumerate() {
                            z[(first + j) * l + var] = c;
                        }
                    }
                }
                first += 32;
            }
        }
    }
}

#[inline(always)]
fn draw_joint_lanes(
    tables: &[CategoricalTable],
    key: [u32; 2],
    rep: u32,
    point: u32,
    samples: u32,
    z: &mut [u32],
) {
    const W: usize = 8;
    let l = tables.len();
    let blocks = samples.div_ceil(4);
    for (var, table) in tables.iter().enumerate() {
        let lane = (STREAM_CATEGORICAL << 16) | var as u32;
        // The thresholds with their top bit flipped, for signed comparisons (AVX2 has no
        // unsigned one): `w > t` is `(w ^ 2^31) as i32 > (t ^ 2^31) as i32`.
        let thresholds = table.thresholds();
        let mut biased = [0i32; BIASED_K];
        let small = thresholds.len() <= BIASED_K;
        if small {
            for (b, &t) in biased.iter_mut().zip(thresholds) {
                *b = (t ^ SIGN_BIT) as i32;
            }
        }
        let biased = &biased[..thresholds.len().min(BIASED_K)];
        let (lo, hi) = (table.first_nonzero(), table.last_nonzero());
        let mut block = 0;
        while block < blocks {
            let ctr = [
                std::array::from_fn(|b| block + b as u32),
                [rep; W],
                [lane; W],
                [point; W],
            ];
            let words = philox4x32_10_lanes(ctr, key);
            // A plain loop, not `array::from_fn`, whose closure would be compiled apart
            // (without AVX2).
            let mut cats = [[0u32; W]; 4];
            for w in 0..4 {
                cats[w] = if small {
                    biased_categories(biased, lo, hi, &words[w])
                } else {
                    table.categories(&words[w])
                };
            }
            for b in 0..W.min((blocks - block) as usize) {
                for (w, cat) in cats.iter().enumerate() {
                    let i = (block as usize + b) * 4 + w;
                    if i < samples as usize {
                        z[i * l + var] = cat[b];
                    }
                }
            }
            block += W as u32;
        }
    }
}

/// Most thresholds (K - 1) that [`draw_joint_categories`] compares in signed form.
const BIASED_K: usize = 16;
/// The top bit of a word.
const SIGN_BIT: u32 = 1 << 31;

/// [`CategoricalTable::categories`] from thresholds with their top bit flipped (`biased`, as
/// i32) and the clamp `[lo, hi]`: the same categories, with one signed comparison per
/// threshold and lane.
#[inline(always)]
fn biased_categories<const N: usize>(
    biased: &[i32],
    lo: u32,
    hi: u32,
    words: &[u32; N],
) -> [u32; N] {
    let mut w = [0i32; N];
    for (x, &word) in w.iter_mut().zip(words) {
        *x = (word ^ SIGN_BIT) as i32;
    }
    let mut above = [0u32; N];
    for &t in biased {
        for (a, &x) in above.iter_mut().zip(&w) {
            *a += u32::from(x > t);
        }
    }
    for a in above.iter_mut() {
        *a = (*a).clamp(lo, hi);
    }
    above
}

/// The ways [`RelaxedTable::draw_batch`] runs, all with the same bits (tested): sixteen draws
/// a step in AVX-512F, eight in AVX2, or eight in portable code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BatchPath {
    Lanes,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx512,
}

/// Gumbel-softmax inputs: `(a - max a)` in f32 and `1 / tau`, and at `tau = 1` the
/// exponential race's weights `exp(a - max a)`.
///
/// At `tau = 1` a draw takes the race form: with `E_c = -ln u_c` (standard exponentials, so
/// that `G_c = -ln E_c`), `exp(a_c + G_c) = e^{a_c} / E_c`, hence `y = softmax(a + G)` is
/// `r / sum(r)` with `r_c = w_c / E_c`, `w_c = exp(a_c - max a)`, and `argmax(a + G) =
/// argmax r`. One logarithm and one division per category replace two logarithms and an
/// exponential; the same numbers in exact arithmetic, and in f32 within a few units in the
/// last place of the softmax form (tested).
#[derive(Clone, Debug)]
pub struct RelaxedTable {
    shifted_logits: Vec<f32>,
    inv_tau: f32,
    /// `exp(a - max a)` (computed in f64, rounded to f32) at `tau = 1`; empty otherwise.
    race_weights: Vec<f32>,
}

impl RelaxedTable {
    /// The table of logits `a` at temperature `tau`.
    pub fn new(a: &[f64], tau: f64) -> Self {
        let max = a.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let shifted_logits: Vec<f32> = a.iter().map(|v| (v - max) as f32).collect();
        let race_weights = if tau == 1.0 {
            a.iter().map(|v| (v - max).exp() as f32).collect()
        } else {
            Vec::new()
        };
        Self {
            shifted_logits,
            inv_tau: (1.0 / tau) as f32,
            race_weights,
        }
    }

    /// Whether draws take the race form (`tau = 1`, see the type's doc).
    pub fn race(&self) -> bool {
        !self.race_weights.is_empty()
    }

    /// `a - max(a)` in f32.
    pub fn shifted_logits(&self) -> &[f32] {
        &self.shifted_logits
    }

    /// `1 / tau` in f32.
    pub fn inv_tau(&self) -> f32 {
        self.inv_tau
    }

    /// One relaxed draw: fills `y = softmax((a + G) / tau)` from the draw's Gumbel noise
    /// `G_c = -ln(-ln u_c)` and returns `z = argmax(a + G)` (the lowest index on ties); at
    /// `tau = 1` in the race form (see the type's doc). `h` is scratch of K floats.
    /// Arithmetic in f32, as on the GPU.
    pub fn draw(
        &self,
        key: [u32; 2],
        rep: u32,
        point: u32,
        draw: u32,
        h: &mut [f32],
        y: &mut [f64],
    ) -> usize {
        self.draw_lanes(key, rep, point, draw, 0, h, y, None)
    }

    /// [`Self::draw`] reading the Gumbel stream from lane `first_lane` on.
    #[allow(clippy::too_many_arguments)]
    fn draw_lanes(
        &self,
        key: [u32; 2],
        rep: u32,
        point: u32,
        draw: u32,
        first_lane: u32,
        h: &mut [f32],
        y: &mut [f64],
        perturbed: Option<&mut [f64]>,
    ) -> usize {
        let k = self.shifted_logits.len();
        let race = self.race();
        let mut perturbed = perturbed;
        let mut words = [0u32; 4];
        for c in 0..k {
            if c % 4 == 0 {
                words = philox4x32_10(
                    philox::counter(draw, rep, STREAM_GUMBEL, first_lane + (c / 4) as u32, point),
                    key,
                );
            }
            let e = exponential(words[c % 4]);
            // `a - max a + G` with G = -ln E: the bits of `shifted + gumbel(word)`.
            let logit_plus_gumbel = || self.shifted_logits[c] + -fastmath::ln(e);
            h[c] = if race {
                self.race_weights[c] / e
            } else {
                logit_plus_gumbel()
            };
            if let Some(out) = perturbed.as_deref_mut() {
                out[c] = f64::from(if race { logit_plus_gumbel() } else { h[c] });
            }
        }
        let (z, hmax) = argmax(&h[..k]);
        let mut sum = 0.0f32;
        for hc in h[..k].iter_mut() {
            if !race {
                *hc = exp_nonpositive((*hc - hmax) * self.inv_tau);
            }
            sum += *hc;
        }
        let inv = 1.0 / sum;
        for (yc, hc) in y.iter_mut().zip(&h[..k]) {
            *yc = f64::from(hc * inv);
        }
        z
    }

    /// Draws `first .. first + n` of one repetition into a batch: `y` (category-major,
    /// `y[c * n + d]`), `z` and `y_z`. Bit for bit the arithmetic of [`Self::draw`], laid
    /// out eight draws wide so that every step (Philox included) vectorises.
    #[allow(clippy::too_many_arguments)]
    pub fn draw_batch(
        &self,
        key: [u32; 2],
        rep: u32,
        point: u32,
        first: u32,
        n: usize,
        y: &mut [f32],
        z: &mut [u32],
        y_z: &mut [f32],
    ) {
        self.draw_batch_on(self.batch_path(), key, rep, point, first, n, y, z, y_z);
    }

    /// The fastest of the (bit-identical) [`BatchPath`]s this CPU runs at this K.
    fn batch_path(&self) -> BatchPath {
        #[cfg(target_arch = "x86_64")]
        if self.shifted_logits.len() <= relaxed_avx2::MAX_K {
            if fastmath::has_avx512() {
                return BatchPath::Avx512;
            }
            if fastmath::has_avx2() {
                return BatchPath::Avx2;
            }
        }
        BatchPath::Lanes
    }

    /// [`Self::draw_batch`] on a given path (one the CPU runs, see [`Self::batch_path`]).
    #[allow(clippy::too_many_arguments)]
    fn draw_batch_on(
        &self,
        path: BatchPath,
        key: [u32; 2],
        rep: u32,
        point: u32,
        first: u32,
        n: usize,
        y: &mut [f32],
        z: &mut [u32],
        y_z: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        #[allow(clippy::too_many_arguments)]
        fn avx2(
            table: &RelaxedTable,
            key: [u32; 2],
            rep: u32,
            point: u32,
            first: u32,
            n: usize,
            y: &mut [f32],
            z: &mut [u32],
            y_z: &mut [f32],
        ) {
            // SAFETY: compiled for AVX2, called only where the CPU has it; K <= MAX_K.
            unsafe { relaxed_avx2::draw_batch(table, key, rep, point, first, n, y, z, y_z) };
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        #[allow(clippy::too_many_arguments)]
        fn avx512(
            table: &RelaxedTable,
            key: [u32; 2],
            rep: u32,
            point: u32,
            first: u32,
            n: usize,
            y: &mut [f32],
            z: &mut [u32],
            y_z: &mut [f32],
        ) {
            // SAFETY: compiled for AVX-512F, called only where the CPU has it; K <= MAX_K.
            unsafe { relaxed_avx512::draw_batch(table, key, rep, point, first, n, y, z, y_z) };
        }
        let k = self.shifted_logits.len();
        match path {
            #[cfg(target_arch = "x86_64")]
            BatchPath::Avx512 if k <= relaxed_avx2::MAX_K && fastmath::has_avx512() => {
                // SAFETY: the CPU has AVX-512F, checked just above.
                unsafe { avx512(self, key, rep, point, first, n, y, z, y_z) }
            }
            #[cfg(target_arch = "x86_64")]
            BatchPath::Avx2 if k <= relaxed_avx2::MAX_K && fastmath::has_avx2() => {
                // SAFETY: the CPU has AVX2, checked just above.
                unsafe { avx2(self, key, rep, point, first, n, y, z, y_z) }
            }
            _ => self.draw_batch_lanes(key, rep, point, first, n, y, z, y_z),
        }
    }

    /// [`Self::draw_batch`] without intrinsics: the portable twin of the AVX2 path, and the
    /// path where the CPU lacks AVX2 or K exceeds its bound.
    #[inline(always)]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    fn draw_batch_lanes(
        &self,
        key: [u32; 2],
        rep: u32,
        point: u32,
        first: u32,
        n: usize,
        y: &mut [f32],
        z: &mut [u32],
        y_z: &mut [f32],
    ) {
        const W: usize = 8;
        let k = self.shifted_logits.len();
        let race = self.race();
        let mut h = vec![[0f32; W]; k];
        for base in (0..n).step_by(W) {
            let lanes = W.min(n - base);
            let draw0 = first.wrapping_add(base as u32);
            let mut hmax = [f32::NEG_INFINITY; W];
            let mut zl = [0u32; W];
            for group in 0..k.div_ceil(4) {
                let ctr = [
                    std::array::from_fn(|l| draw0.wrapping_add(l as u32)),
                    [rep; W],
                    [(STREAM_GUMBEL << 16) | group as u32; W],
                    [point; W],
                ];
                let words = philox4x32_10_lanes(ctr, key);
                for w in 0..4.min(k - 4 * group) {
                    let c = 4 * group + w;
                    let logit = self.shifted_logits[c];
                    for l in 0..W {
                        let v = if race {
                            self.race_weights[c] / exponential(words[w][l])
                        } else {
                            logit + gumbel(words[w][l])
                        };
                        h[c][l] = v;
                        let better = v > hmax[l];
                        hmax[l] = if better { v } else { hmax[l] };
                        zl[l] = if better { c as u32 } else { zl[l] };
                    }
                }
            }
            let mut sum = [0f32; W];
            for hc in h.iter_mut() {
                for l in 0..W {
                    if !race {
                        hc[l] = exp_nonpositive((hc[l] - hmax[l]) * self.inv_tau);
                    }
                    sum[l] += hc[l];
                }
            }
            let inv: [f32; W] = std::array::from_fn(|l| 1.0 / sum[l]);
            for (c, hc) in h.iter().enumerate() {
                let out = &mut y[c * n + base..c * n + base + lanes];
                if lanes == W {
                    for l in 0..W {
                        out[l] = hc[l] * inv[l];
                    }
                } else {
                    for l in 0..lanes {
                        out[l] = hc[l] * inv[l];
                    }
                }
            }
            for l in 0..lanes {
                z[base + l] = zl[l];
                y_z[base + l] = h[zl[l] as usize][l] * inv[l];
            }
        }
    }
}

/// [`RelaxedTable::draw_batch`] in AVX2 intrinsics, eight draws a step: Philox on eight
/// counters ([`crate::philox::x8`], the words in registers), the Gumbel
/// noise and the softmax by [`fastmath::avx2`], the running maximum and its index kept in
/// registers. The operations and their order are those of `draw_batch_lanes`, so the bits are
/// the same (tested).
#[cfg(target_arch = "x86_64")]
pub(crate) mod relaxed_avx2 {
    use super::RelaxedTable;
    use crate::fastmath::avx2::{exp_nonpositive, ln_n};
    pub(crate) use crate::philox::x8::RoundKeys;
    use crate::philox::x8::{philox, philox_n};
    use crate::philox::STREAM_GUMBEL;
    use std::arch::x86_64::*;

    /// Largest K this path serves (the perturbed logits of a step stay on the stack).
    pub const MAX_K: usize = 64;

    /// `-ln u` with `u = ((w >> 9) + 0.5) 2^-23`, as [`super::exponential`], of four
    /// registers of words, their four chains interleaved ([`ln_n`]).
    #[inline(always)]
    unsafe fn exponentials(words: [__m256i; 4]) -> [__m256; 4] {
        let mut u = [_mm256_setzero_ps(); 4];
        for i in 0..4 {
            u[i] = _mm256_mul_ps(
                _mm256_add_ps(
                    _mm256_cvtepi32_ps(_mm256_srli_epi32::<9>(words[i])),
                    _mm256_set1_ps(0.5),
                ),
                _mm256_set1_ps(1.0 / 8_388_608.0),
            );
        }
        negated(ln_n(u))
    }

    /// `-ln(-ln u)`, as [`super::gumbel`]: `-ln E` of [`exponentials`]' `E`, four registers
    /// at once.
    #[inline(always)]
    unsafe fn gumbels(words: [__m256i; 4]) -> [__m256; 4] {
        negated(ln_n(exponentials(words)))
    }

    /// `-x` of four registers (the sign bit flipped; no closure, see [`ln_n`]).
    #[inline(always)]
    unsafe fn negated(mut x: [__m256; 4]) -> [__m256; 4] {
        for v in x.iter_mut() {
            *v = _mm256_xor_ps(*v, _mm256_set1_ps(-0.0));
        }
        x
    }

    /// Stores the first `lanes` of `v` at `out` (all eight when `lanes == 8`).
    #[inline(always)]
    unsafe fn store(out: &mut [f32], v: __m256, lanes: usize) {
        if lanes == 8 {
            _mm256_storeu_ps(out.as_mut_ptr(), v);
        } else {
            let mut tmp = [0f32; 8];
            _mm256_storeu_ps(tmp.as_mut_ptr(), v);
            out[..lanes].copy_from_slice(&tmp[..lanes]);
        }
    }

    /// One step of eight draws, lane i's Philox counters `[draw[i], rep[i], STREAM_GUMBEL <<
    /// 16 | group, point]`: leaves `h[c] = exp((a_c + G_c - max) / tau)` (c < K; at `tau = 1`
    /// the race form's `r_c = w_c / E_c`, see [`RelaxedTable`]) and returns `1 / sum_c h[c]`
    /// and the argmax `z` of every lane. The arithmetic of `draw_batch_lanes` (`y_c = h[c] *
    /// inv`), whatever the lanes' draws and repetitions: [`draw_batch`] runs eight draws of
    /// one repetition, the eight-repetition moments (`crate::estimators::relaxed_reps`) one
    /// draw of eight repetitions.
    ///
    /// # Safety
    /// The CPU must have AVX2; K at most [`MAX_K`].
    #[inline(always)]
    pub(crate) unsafe fn step(
        table: &RelaxedTable,
        keys: &RoundKeys,
        draw: __m256i,
        rep: __m256i,
        point: u32,
        h: &mut [std::mem::MaybeUninit<__m256>; MAX_K],
    ) -> (__m256, __m256i) {
        let k = table.shifted_logits.len();
        assert!(k <= MAX_K);
        let inv_tau = _mm256_set1_ps(table.inv_tau);
        let race = table.race();
        let mut hmax = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut zl = _mm256_setzero_si256();
        let counters = |group: usize| {
            [
                draw,
                rep,
                _mm256_set1_epi32(((STREAM_GUMBEL << 16) | group as u32) as i32),
                _mm256_set1_epi32(point as i32),
            ]
        };
        let groups = k.div_ceil(4);
        let mut group = 0;
        while group < groups {
            // Up to three groups' Philox rounds interleaved (independent dependency chains;
            // the same words as one group at a time).
            let mut words = [_mm256_setzero_si256(); 12];
            let n = (groups - group).min(3);
            match n {
                3 => {
                    let [a, b, c] = philox_n(
                        keys,
                        [counters(group), counters(group + 1), counters(group + 2)],
                    );
                    words[..4].copy_from_slice(&a);
                    words[4..8].copy_from_slice(&b);
                    words[8..].copy_from_slice(&c);
                }
                2 => {
                    let [a, b] = philox_n(keys, [counters(group), counters(group + 1)]);
                    words[..4].copy_from_slice(&a);
                    words[4..8].copy_from_slice(&b);
                }
                _ => words[..4].copy_from_slice(&philox(keys, counters(group))),
            }
            let cats = (k - 4 * group).min(4 * n);
            // Four categories' noise at a time, their chains of dependent steps (a logarithm
            // with its division, then the race's division) interleaved in program order: one
            // chain at a time filled the core's window of waiting instructions with a single
            // chain's steps (measured: about 10% more draws a second on a Zen 3). The same
            // operations per lane; a last quadruple's categories past K are computed and
            // dropped.
            let mut vs = [_mm256_setzero_ps(); 12];
            for q in (0..cats).step_by(4) {
                let quad: [__m256i; 4] = words[q..q + 4].try_into().expect("four words");
                if race {
                    let e = exponentials(quad);
                    for i in 0..4 {
                        let c = (4 * group + q + i).min(k - 1);
                        vs[q + i] = _mm256_div_ps(_mm256_set1_ps(table.race_weights[c]), e[i]);
                    }
                } else {
                    let g = gumbels(quad);
                    for i in 0..4 {
                        let c = (4 * group + q + i).min(k - 1);
                        vs[q + i] = _mm256_add_ps(_mm256_set1_ps(table.shifted_logits[c]), g[i]);
                    }
                }
            }
            for (w, &v) in vs.iter().enumerate().take(cats) {
                let c = 4 * group + w;
                h[c].write(v);
                let better = _mm256_cmp_ps::<_CMP_GT_OQ>(v, hmax);
                hmax = _mm256_blendv_ps(hmax, v, better);
                zl = _mm256_castps_si256(_mm256_blendv_ps(
                    _mm256_castsi256_ps(zl),
                    _mm256_castsi256_ps(_mm256_set1_epi32(c as i32)),
                    better,
                ));
            }
            group += n;
        }
        let mut sum = _mm256_setzero_ps();
        for hc in h[..k].iter_mut() {
            // Written above for every c < K.
            let e = if race {
                hc.assume_init()
            } else {
                exp_nonpositive(_mm256_mul_ps(
                    _mm256_sub_ps(hc.assume_init(), hmax),
                    inv_tau,
                ))
            };
            hc.write(e);
            sum = _mm256_add_ps(sum, e);
        }
        (_mm256_div_ps(_mm256_set1_ps(1.0), sum), zl)
    }

    /// See [`RelaxedTable::draw_batch`]; K at most [`MAX_K`].
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn draw_batch(
        table: &RelaxedTable,
        key: [u32; 2],
        rep: u32,
        point: u32,
        first: u32,
        n: usize,
        y: &mut [f32],
        z: &mut [u32],
        y_z: &mut [f32],
    ) {
        let k = table.shifted_logits.len();
        assert!(k <= MAX_K && y.len() >= k * n && z.len() >= n && y_z.len() >= n);
        // Left uninitialised (zeroing MAX_K registers' worth was a memset per batch): lane
        // c is written for every c < K before it is read, and only those are read.
        let mut h = [std::mem::MaybeUninit::<__m256>::uninit(); MAX_K];
        let lane_index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let keys = RoundKeys::new(key);
        for base in (0..n).step_by(8) {
            let lanes = 8.min(n - base);
            let draw0 = first.wrapping_add(base as u32);
            let ctr0 = _mm256_add_epi32(_mm256_set1_epi32(draw0 as i32), lane_index);
            let (inv, zl) = step(
                table,
                &keys,
                ctr0,
                _mm256_set1_epi32(rep as i32),
                point,
                &mut h,
            );
            let mut yz = _mm256_setzero_ps();
            for (c, hc) in h[..k].iter().enumerate() {
                // Written by `step` for every c < K.
                let yc = _mm256_mul_ps(hc.assume_init(), inv);
                store(&mut y[c * n + base..c * n + base + lanes], yc, lanes);
                let hit = _mm256_castsi256_ps(_mm256_cmpeq_epi32(zl, _mm256_set1_epi32(c as i32)));
                yz = _mm256_blendv_ps(yz, yc, hit);
            }
            store(&mut y_z[base..base + lanes], yz, lanes);
            let mut zs = [0u32; 8];
            _mm256_storeu_si256(zs.as_mut_ptr().cast(), zl);
            z[base..base + lanes].copy_from_slice(&zs[..lanes]);
        }
    }
}

/// [`RelaxedTable::draw_batch`] in AVX-512F intrinsics, sixteen draws a step: the steps of
/// [`relaxed_avx2`] on [`crate::philox::x16`] and [`fastmath::avx512`], with mask registers
/// for the comparisons, blends and the last step's partial stores. The operations and their
/// order are those of `draw_batch_lanes`, so the bits are the same (tested).
#[cfg(target_arch = "x86_64")]
pub(crate) mod relaxed_avx512 {
    pub(crate) use super::relaxed_avx2::MAX_K;
    use super::RelaxedTable;
    use crate::fastmath::avx512::{exp_nonpositive, ln};
    pub(crate) use crate::philox::x16::RoundKeys;
    use crate::philox::x16::{philox, philox_n};
    use crate::philox::STREAM_GUMBEL;
    use std::arch::x86_64::*;

    /// `-ln(-ln u)` with `u = ((w >> 9) + 0.5) 2^-23`, as [`super::gumbel`]: `-ln E` of
    /// [`exponential`]'s `E`.
    #[inline(always)]
    unsafe fn gumbel(words: __m512i) -> __m512 {
        _mm512_castsi512_ps(_mm512_xor_si512(
            _mm512_castps_si512(ln(exponential(words))),
            _mm512_set1_epi32(i32::MIN),
        ))
    }

    /// `-ln u` with `u = ((w >> 9) + 0.5) 2^-23`, as [`super::exponential`].
    #[inline(always)]
    unsafe fn exponential(words: __m512i) -> __m512 {
        let u = _mm512_mul_ps(
            _mm512_add_ps(
                _mm512_cvtepi32_ps(_mm512_srli_epi32::<9>(words)),
                _mm512_set1_ps(0.5),
            ),
            _mm512_set1_ps(1.0 / 8_388_608.0),
        );
        _mm512_castsi512_ps(_mm512_xor_si512(
            _mm512_castps_si512(ln(u)),
            _mm512_set1_epi32(i32::MIN),
        ))
    }

    /// One step of sixteen draws, lane i's Philox counters `[draw[i], rep[i], STREAM_GUMBEL
    /// << 16 | group, point]`: leaves `h[c] = exp((a_c + G_c - max) / tau)` (c < K; at `tau =
    /// 1` the race form's `r_c = w_c / E_c`, see [`RelaxedTable`]) and returns `1 / sum_c
    /// h[c]` and the argmax `z` of every lane. The arithmetic of
    /// `draw_batch_lanes` (`y_c = h[c] * inv`), whatever the lanes' draws and repetitions:
    /// [`draw_batch`] runs sixteen draws of one repetition, the eight-repetition moments
    /// (`crate::estimators::relaxed_reps`) two draws of eight repetitions.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; K at most [`MAX_K`].
    #[inline(always)]
    pub(crate) unsafe fn step(
        table: &RelaxedTable,
        keys: &RoundKeys,
        draw: __m512i,
        rep: __m512i,
        point: u32,
        h: &mut [std::mem::MaybeUninit<__m512>; MAX_K],
    ) -> (__m512, __m512i) {
        let k = table.shifted_logits.len();
        assert!(k <= MAX_K);
        let inv_tau = _mm512_set1_ps(table.inv_tau);
        let race = table.race();
        let mut hmax = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut zl = _mm512_setzero_si512();
        let counters = |group: usize| {
            [
                draw,
                rep,
                _mm512_set1_epi32(((STREAM_GUMBEL << 16) | group as u32) as i32),
                _mm512_set1_epi32(point as i32),
            ]
        };
        let groups = k.div_ceil(4);
        let mut group = 0;
        while group < groups {
            // Up to three groups' Philox rounds interleaved (independent dependency chains;
            // the same words as one group at a time).
            let mut words = [_mm512_setzero_si512(); 12];
            let n = (groups - group).min(3);
            match n {
                3 => {
                    let [a, b, c] = philox_n(
                        keys,
                        [counters(group), counters(group + 1), counters(group + 2)],
                    );
                    words[..4].copy_from_slice(&a);
                    words[4..8].copy_from_slice(&b);
                    words[8..].copy_from_slice(&c);
                }
                2 => {
                    let [a, b] = philox_n(keys, [counters(group), counters(group + 1)]);
                    words[..4].copy_from_slice(&a);
                    words[4..8].copy_from_slice(&b);
                }
                _ => words[..4].copy_from_slice(&philox(keys, counters(group))),
            }
            for (w, &word) in words.iter().enumerate().take((k - 4 * group).min(4 * n)) {
                let c = 4 * group + w;
                let v = if race {
                    _mm512_div_ps(_mm512_set1_ps(table.race_weights[c]), exponential(word))
                } else {
                    _mm512_add_ps(_mm512_set1_ps(table.shifted_logits[c]), gumbel(word))
                };
                h[c].write(v);
                let better = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, hmax);
                hmax = _mm512_mask_blend_ps(better, hmax, v);
                zl = _mm512_mask_blend_epi32(better, zl, _mm512_set1_epi32(c as i32));
            }
            group += n;
        }
        let mut sum = _mm512_setzero_ps();
        for hc in h[..k].iter_mut() {
            // Written above for every c < K.
            let e = if race {
                hc.assume_init()
            } else {
                exp_nonpositive(_mm512_mul_ps(
                    _mm512_sub_ps(hc.assume_init(), hmax),
                    inv_tau,
                ))
            };
            hc.write(e);
            sum = _mm512_add_ps(sum, e);
        }
        (_mm512_div_ps(_mm512_set1_ps(1.0), sum), zl)
    }

    /// See [`RelaxedTable::draw_batch`]; K at most [`MAX_K`].
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn draw_batch(
        table: &RelaxedTable,
        key: [u32; 2],
        rep: u32,
        point: u32,
        first: u32,
        n: usize,
        y: &mut [f32],
        z: &mut [u32],
        y_z: &mut [f32],
    ) {
        let k = table.shifted_logits.len();
        assert!(k <= MAX_K && y.len() >= k * n && z.len() >= n && y_z.len() >= n);
        // Left uninitialised (zeroing MAX_K registers' worth was a memset per batch): lane
        // c is written for every c < K before it is read, and only those are read.
        let mut h = [std::mem::MaybeUninit::<__m512>::uninit(); MAX_K];
        let lane_index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let keys = RoundKeys::new(key);
        for base in (0..n).step_by(16) {
            let lanes = 16.min(n - base);
            // The first `lanes` lanes: every store below writes only them (in bounds).
            let store_mask: __mmask16 = if lanes == 16 {
                0xffff
            } else {
                (1u16 << lanes) - 1
            };
            let draw0 = first.wrapping_add(base as u32);
            let ctr0 = _mm512_add_epi32(_mm512_set1_epi32(draw0 as i32), lane_index);
            let (inv, zl) = step(
                table,
                &keys,
                ctr0,
                _mm512_set1_epi32(rep as i32),
                point,
                &mut h,
            );
            let mut yz = _mm512_setzero_ps();
            for (c, hc) in h[..k].iter().enumerate() {
                let yc = _mm512_mul_ps(hc.assume_init(), inv);
                // In bounds: `c * n + base + lanes <= y.len()` (asserted above).
                _mm512_mask_storeu_ps(y.as_mut_ptr().add(c * n + base), store_mask, yc);
                let hit = _mm512_cmpeq_epi32_mask(zl, _mm512_set1_epi32(c as i32));
                yz = _mm512_mask_blend_ps(hit, yz, yc);
            }
            _mm512_mask_storeu_ps(y_z.as_mut_ptr().add(base), store_mask, yz);
            _mm512_mask_storeu_epi32(z.as_mut_ptr().add(base).cast(), store_mask, zl);
        }
    }
}

/// Gumbel-softmax inputs of L variables: one [`RelaxedTable`] per variable.
#[derive(Clone, Debug)]
pub struct JointRelaxedTable {
    variables: Vec<RelaxedTable>,
}

impl JointRelaxedTable {
    /// The tables of the logits `a` (L*K numbers, variable-major) at temperature `tau`.
    pub fn new(a: &[f64], k: usize, tau: f64) -> Self {
        Self {
            variables: a.chunks(k).map(|al| RelaxedTable::new(al, tau)).collect(),
        }
    }

    /// One joint relaxed draw: `y` (L*K numbers, in f64 from the f32 arithmetic), the
    /// perturbed logits `a - max(a) + G` (L*K) and the hard categories `z` (L numbers). `h`
    /// is scratch of K floats. Variable 0 draws exactly what [`RelaxedTable::draw`] draws.
    #[allow(clippy::too_many_arguments)]
    pub fn draw(
        &self,
        key: [u32; 2],
        rep: u32,
        point: u32,
        draw: u32,
        h: &mut [f32],
        y: &mut [f64],
        perturbed: &mut [f64],
        z: &mut [u32],
    ) {
        let k = self.variables[0].shifted_logits.len();
        let groups = k.div_ceil(4) as u32;
        for (var, table) in self.variables.iter().enumerate() {
            z[var] = table.draw_lanes(
                key,
                rep,
                point,
                draw,
                var as u32 * groups,
                h,
                &mut y[var * k..(var + 1) * k],
                Some(&mut perturbed[var * k..(var + 1) * k]),
            ) as u32;
        }
    }
}

/// A standard Gumbel variable `-ln(-ln u)` from one random word, `u` in (0, 1): `-ln E` of
/// [`exponential`]'s `E`.
#[inline(always)]
pub fn gumbel(word: u32) -> f32 {
    -fastmath::ln(exponential(word))
}

/// A standard exponential variable `E = -ln u` from one random word, `u` in (0, 1) (the race
/// form's noise; [`gumbel`] is `-ln E`).
#[inline(always)]
pub fn exponential(word: u32) -> f32 {
    -fastmath::ln(philox::open_uniform_f32(word))
}

/// Index and value of the first maximum.
#[inline(always)]
fn argmax(h: &[f32]) -> (usize, f32) {
    let mut z = 0;
    let mut hmax = f32::NEG_INFINITY;
    for (c, &v) in h.iter().enumerate() {
        if v > hmax {
            hmax = v;
            z = c;
        }
    }
    (z, hmax)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The category by the definition: the least k with `w 2^-32 < C_k`, else the last class
    /// with nonzero probability.
    fn by_definition(p: &[f64], word: u32) -> usize {
        let u = f64::from(word) / 4_294_967_296.0;
        let mut cdf = 0.0;
        let last = p.iter().rposition(|&v| v > 0.0).unwrap();
        for (k, pk) in p[..p.len() - 1].iter().enumerate() {
            cdf += pk;
            if u < cdf {
                return k.min(last);
            }
        }
        last
    }

    #[test]
    fn signed_threshold_comparisons_give_the_tables_categories() {
        // The joint draws' signed comparisons against `CategoricalTable::categories`: zero
        // classes at both ends, thresholds at 0 and 2^32 - 1, K = 17 (16 thresholds, the most
        // compared in signed form) and words at every threshold and the sign boundary.
        let mut ramp = vec![0.0; 17];
        ramp[1..]
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = (i + 1) as f64 / 136.0);
        let cases: [&[f64]; 5] = [
            &[0.1, 0.0, 0.25, 0.65],
            &[0.0, 0.0, 0.5, 0.5, 0.0],
            &[9.4e-8, 1.0 - 9.4e-8 - 1e-12, 1e-12],
            &[0.5, 0.5],
            &ramp,
        ];
        for p in cases {
            let table = CategoricalTable::new(p);
            let mut biased = [0i32; BIASED_K];
            for (b, &t) in biased.iter_mut().zip(table.thresholds()) {
                *b = (t ^ SIGN_BIT) as i32;
            }
            let biased = &biased[..table.thresholds().len()];
            let words: Vec<u32> = table
                .thresholds()
                .iter()
                .flat_map(|&t| [t.wrapping_sub(1), t, t.wrapping_add(1)])
                .chain([
                    0,
                    1,
                    SIGN_BIT - 1,
                    SIGN_BIT,
                    SIGN_BIT + 1,
                    u32::MAX - 1,
                    u32::MAX,
                ])
                .chain((0..=u32::MAX).step_by(1 << 24))
                .collect();
            for chunk in words.chunks(8) {
                let mut w = [0u32; 8];
                w[..chunk.len()].copy_from_slice(chunk);
                let (lo, hi) = (table.first_nonzero(), table.last_nonzero());
                assert_eq!(
                    biased_categories(biased, lo, hi, &w),
                    table.categories(&w),
                    "p = {p:?}, words {w:?}"
                );
                // The joint draws' AVX2 classification of the same words.
                #[cfg(target_arch = "x86_64")]
                if fastmath::has_avx2() {
                    #[target_feature(enable = "avx2")]
                    fn classify8(table: &CategoricalTable, w: &[u32; 8]) -> [u32; 8] {
                        use std::arch::x86_64::*;
                        // SAFETY: compiled for AVX2, called only where the CPU has it; the
                        // loads and stores are of eight lanes, in bounds.
                        unsafe {
                            let v = _mm256_loadu_si256(w.as_ptr().cast());
                            let bounds = (
                                _mm256_set1_epi32(table.first_nonzero() as i32),
                                _mm256_set1_epi32(table.last_nonzero() as i32),
                            );
                            let c = joint_avx2::classify([v; 4], table, bounds);
                            let mut out = [0u32; 8];
                            _mm256_storeu_si256(out.as_mut_ptr().cast(), c[3]);
                            out
                        }
                    }
                    // SAFETY: the CPU has AVX2, checked just above.
                    let got = unsafe { classify8(&table, &w) };
                    assert_eq!(got, table.categories(&w), "AVX2, p = {p:?}, words {w:?}");
                }
            }
        }
    }

    #[test]
    fn thresholds_match_f64_comparison() {
        let cases: [&[f64]; 4] = [
            &[0.1, 0.0, 0.25, 0.65],
            &[0.0, 0.0, 0.5, 0.5, 0.0],
            &[9.4e-8, 1.0 - 9.4e-8 - 1e-12, 1e-12],
            &[1e-9, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05 - 1e-9],
        ];
        for p in cases {
            let table = CategoricalTable::new(p);
            // Every threshold's neighbours, both ends, and a coarse grid of the range.
            let edges = table
                .thresholds()
                .iter()
                .flat_map(|&t| [t.wrapping_sub(1), t, t.wrapping_add(1)]);
            let grid = (0..=u32::MAX).step_by(1 << 20);
            for word in edges.chain(grid).chain([0, 1, u32::MAX - 1, u32::MAX]) {
                assert_eq!(
                    table.category(word),
                    by_definition(p, word),
                    "p = {p:?}, word = {word}"
                );
            }
        }
    }

    #[test]
    fn a_class_of_probability_1e_8_is_drawn_on_the_32_bit_grid() {
        // The number of words drawing class 0 is ceil(p 2^32): within one grid step
        // (2.3e-10) of p, 2.4e-8 relative here; a 24-bit grid gives 0 or 2^-24 = 6e-8.
        for p0 in [1e-8, 9.4e-8, 3.3e-9] {
            let table = CategoricalTable::new(&[p0, 0.5, 0.5 - p0]);
            let words = u64::from(table.thresholds()[0]) + 1;
            let drawn = words as f64 / 4_294_967_296.0;
            assert!(
                (drawn - p0).abs() <= 1.0 / 4_294_967_296.0,
                "p0 = {p0}: {drawn}"
            );
            assert_eq!(table.category(table.thresholds()[0]), 0);
            assert_eq!(table.category(table.thresholds()[0] + 1), 1);
        }
    }

    #[test]
    fn batched_relaxed_draws_equal_single_draws_bit_for_bit() {
        for (k, tau) in [2usize, 3, 10, 17, 21, 70]
            .into_iter()
            .flat_map(|k| [(k, 0.5), (k, 1.0)])
        {
            let a: Vec<f64> = (0..k).map(|c| (c as f64 * 0.7).sin() * 3.0).collect();
            let table = RelaxedTable::new(&a, tau);
            assert_eq!(table.race(), tau == 1.0);
            let n = 45;
            let (mut y, mut z, mut y_z) = (vec![0f32; k * n], vec![0u32; n], vec![0f32; n]);
            table.draw_batch([7, 9], 3, 2, 100, n, &mut y, &mut z, &mut y_z);
            let (mut h, mut yd) = (vec![0f32; k], vec![0f64; k]);
            for d in 0..n {
                let zd = table.draw([7, 9], 3, 2, 100 + d as u32, &mut h, &mut yd);
                assert_eq!(z[d] as usize, zd, "K = {k}, draw {d}");
                for c in 0..k {
                    assert_eq!(y[c * n + d], yd[c] as f32, "K = {k}, draw {d}, class {c}");
                }
                assert_eq!(y_z[d], yd[zd] as f32);
            }
        }
    }

    /// The race form at tau = 1 against the softmax form at tau = 1 (the table without race
    /// weights) on the same words: the same perturbed logits bit for bit (so the same
    /// exponential noise), the same argmax wherever the two largest `a + G` are not within
    /// 1e-5 of each other, and each `y_c` within 2^-17 (7.6e-6) of the softmax form's
    /// relative to it, plus 1e-30 absolute. The softmax form's own rounding error grows with
    /// `|a_c + G_c - max|` (up to about 20 here; the largest relative gap measured is 2.2e-6
    /// at K = 10), the race form's is a few units in the last place (6e-8). One weight off by
    /// 2^-16 relative fails it (a common factor cancels in `r / sum(r)`).
    #[test]
    fn race_form_is_the_softmax_form_at_tau_one() {
        for k in [1usize, 2, 5, 10, 17] {
            let a: Vec<f64> = (0..k).map(|c| (c as f64 * 1.7).sin() * 6.0).collect();
            let race = JointRelaxedTable::new(&a, k, 1.0);
            assert!(race.variables[0].race());
            let mut softmax = race.clone();
            softmax.variables[0].race_weights.clear();
            assert!(!softmax.variables[0].race());
            let (mut h, mut ties) = (vec![0f32; k], 0);
            let (mut y0, mut g0, mut z0) = (vec![0f64; k], vec![0f64; k], [0u32]);
            let (mut y1, mut g1, mut z1) = (vec![0f64; k], vec![0f64; k], [0u32]);
            for d in 0..20_000u32 {
                race.draw([5, 6], 7, 8, d, &mut h, &mut y0, &mut g0, &mut z0);
                softmax.draw([5, 6], 7, 8, d, &mut h, &mut y1, &mut g1, &mut z1);
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&g0), bits(&g1), "K = {k}, draw {d}");
                let mut sorted = g1.clone();
                sorted.sort_by(|a, b| b.total_cmp(a));
                if k > 1 && sorted[0] - sorted[1] < 1e-5 {
                    ties += 1;
                } else {
                    assert_eq!(z0, z1, "K = {k}, draw {d}");
                }
                for c in 0..k {
                    let tol = y1[c].abs() * 2f64.powi(-17) + 1e-30;
                    assert!(
                        (y0[c] - y1[c]).abs() <= tol,
                        "K = {k}, draw {d}, class {c}: {} against {}",
                        y0[c],
                        y1[c]
                    );
                }
            }
            assert!(ties < 10, "K = {k}: {ties} near ties");
        }
    }

    #[test]
    fn avx2_and_avx512_relaxed_draws_equal_the_portable_lanes_bit_for_bit() {
        #[cfg(target_arch = "x86_64")]
        if fastmath::has_avx2() {
            for k in [1usize, 2, 5, 8, 10, 13, 64] {
                let a: Vec<f64> = (0..k).map(|c| (c as f64 * 1.3).cos() * 4.0).collect();
                for tau in [0.1, 1.0, 3.0] {
                    let table = RelaxedTable::new(&a, tau);
                    for (n, first) in [(64usize, 0u32), (45, u32::MAX - 20), (7, 3), (1, 99)] {
                        let mut want = (vec![0f32; k * n], vec![0u32; n], vec![0f32; n]);
                        let mut got = (vec![1f32; k * n], vec![1u32; n], vec![1f32; n]);
                        let (key, rep, point) = ([11, 12], 13, 14);
                        table.draw_batch_lanes(
                            key,
                            rep,
                            point,
                            first,
                            n,
                            &mut want.0,
                            &mut want.1,
                            &mut want.2,
                        );
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        // The AVX2 path, and the AVX-512 path where the CPU has it (K <=
                        // MAX_K here), then the dispatched one.
                        let mut paths = vec![Some(BatchPath::Avx2)];
                        if fastmath::has_avx512() {
                            paths.push(Some(BatchPath::Avx512));
                        }
                        paths.push(None);
                        for path in paths {
                            let path = path.unwrap_or(table.batch_path());
                            table.draw_batch_on(
                                path, key, rep, point, first, n, &mut got.0, &mut got.1, &mut got.2,
                            );
                            let at = format!("{path:?}, K = {k}, tau = {tau}, n = {n}");
                            assert_eq!(bits(&got.0), bits(&want.0), "{at}");
                            assert_eq!(got.1, want.1, "{at}");
                            assert_eq!(bits(&got.2), bits(&want.2), "{at}");
                            got = (vec![1f32; k * n], vec![1u32; n], vec![1f32; n]);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn joint_draws_of_variable_zero_are_the_single_variable_draws() {
        let p = [0.1, 0.3, 0.6];
        let tables = vec![
            CategoricalTable::new(&p),
            CategoricalTable::new(&[0.5, 0.25, 0.25]),
        ];
        let s = 37;
        let mut z = vec![0u32; 2 * s as usize];
        draw_joint_categories(&tables, [3, 4], 5, 6, s, &mut z);
        let single = categories(&tables[0], [3, 4], 5, 6, s);
        let zero: Vec<u32> = z.chunks(2).map(|zi| zi[0]).collect();
        assert_eq!(zero, single);
        // Variable 1 reads another lane: its draws are not variable 0's.
        let one: Vec<u32> = z.chunks(2).map(|zi| zi[1]).collect();
        assert_ne!(one, categories(&tables[1], [3, 4], 5, 6, s));
    }

    #[test]
    fn joint_draws_are_each_words_category_in_both_layouts() {
        // Tables with zero classes at both ends and inside, K past the fixed width, and one
        // class of probability 1: every clamp and every threshold count.
        let probabilities: [Vec<f64>; 6] = [
            vec![0.1, 0.3, 0.6],
            vec![0.0, 0.25, 0.0, 0.5, 0.25, 0.0],
            vec![1.0, 0.0, 0.0],
            (0..10).map(|c| f64::from(c + 1) / 55.0).collect(),
            (0..20)
                .map(|c| if c % 3 == 0 { 0.0 } else { 1.0 / 13.0 })
                .collect(),
            (0..40).map(|_| 1.0 / 40.0).collect(),
        ];
        for p in &probabilities {
            for l in [1usize, 2, 6] {
                let tables: Vec<CategoricalTable> =
                    (0..l).map(|_| CategoricalTable::new(p)).collect();
                for s in [1u32, 3, 4, 31, 32, 33, 63, 64, 65, 100, 128, 160, 192] {
                    let su = s as usize;
                    // By definition: variable `var` of draw `i` reads word `i % 4` of block
                    // `i / 4` on lane `var`.
                    let want: Vec<u32> = (0..su * l)
                        .map(|n| {
                            let (i, var) = (n / l, n % l);
                            let words = philox4x32_10(
                                philox::counter(
                                    (i / 4) as u32,
                                    9,
                                    STREAM_CATEGORICAL,
                                    var as u32,
                                    2,
                                ),
                                [5, 6],
                            );
                            tables[var].category(words[i % 4]) as u32
                        })
                        .collect();
                    let mut z = vec![u32::MAX; su * l];
                    draw_joint_categories(&tables, [5, 6], 9, 2, s, &mut z);
                    assert_eq!(z, want, "K = {}, L = {l}, S = {s}", p.len());
                    let mut portable = vec![u32::MAX; su * l];
                    draw_joint_lanes(&tables, [5, 6], 9, 2, s, &mut portable);
                    assert_eq!(
                        portable,
                        want,
                        "portable, K = {}, L = {l}, S = {s}",
                        p.len()
                    );
                    let mut zt = vec![u32::MAX; su * l];
                    draw_joint_categories_by_variable(&tables, [5, 6], 9, 2, s, &mut zt);
                    let mut scalar = vec![u32::MAX; su * l];
                    draw_by_variable_scalar(&tables, [5, 6], 9, 2, s, &mut scalar);
                    // The AVX2 path alone (where the CPU has AVX-512, the dispatch above runs
                    // whole groups of 64 draws in it).
                    let mut avx2 = vec![u32::MAX; su * l];
                    let avx2 =
                        draw_by_variable_avx2(&tables, [5, 6], 9, 2, s, &mut avx2).map(|()| avx2);
                    for (n, &c) in want.iter().enumerate() {
                        let (i, var) = (n / l, n % l);
                        assert_eq!(zt[var * su + i], c, "by variable, draw {i} var {var}");
                        assert_eq!(scalar[var * su + i], c, "scalar, draw {i} var {var}");
                        if let Some(avx2) = &avx2 {
                            assert_eq!(avx2[var * su + i], c, "AVX2, draw {i} var {var}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn tallied_counts_equal_the_per_word_categories() {
        let cases: [&[f64]; 5] = [
            &[0.1, 0.0, 0.25, 0.65],
            &[0.0, 0.0, 0.5, 0.5, 0.0],
            &[0.25, 0.25, 0.0],
            &[1.0],
            &[0.05, 0.1, 0.15, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05],
        ];
        for p in cases {
            let table = CategoricalTable::new(p);
            for s in [1u32, 3, 4, 5, 16, 31, 32, 33, 45, 64, 100, 257] {
                for rep in [0u32, 9] {
                    let mut counts = vec![0u32; p.len()];
                    count_categories(&table, [5, 6], rep, 2, s, &mut counts);
                    let mut want = vec![0u32; p.len()];
                    for c in categories(&table, [5, 6], rep, 2, s) {
                        want[c as usize] += 1;
                    }
                    assert_eq!(counts, want, "p = {p:?}, S = {s}");
                    let mut scalar = vec![0u32; p.len()];
                    count_categories_scalar(&table, [5, 6], rep, 2, s, &mut scalar);
                    assert_eq!(scalar, want);
                }
            }
            let words: [u32; 6] = [0, 1, u32::MAX, 1 << 31, 123_456_789, 4_000_000_000];
            let cats = table.categories(&words);
            for (w, c) in words.iter().zip(cats) {
                assert_eq!(c as usize, table.category(*w));
            }
        }
    }

    #[test]
    fn counts_of_many_repetitions_equal_each_repetition_s_words() {
        // Every S from 1 to 40 (the two-repetitions-per-register path up to 16, partial
        // eight-block chunks past it) and a few larger, an odd number of repetitions (a
        // register half left over), repetition numbers that wrap at 2^32, K = 1, 2, 10, 17
        // and 18 (past the tallies), zero-probability classes at both ends; the AVX2 tallies
        // (where the CPU has them) and the portable lanes against the per-word categories.
        let tables: Vec<Vec<f64>> = vec![
            vec![1.0],
            vec![0.3, 0.7],
            vec![0.0, 0.1, 0.05, 0.2, 0.15, 0.1, 0.1, 0.1, 0.2, 0.0],
            (0..17).map(|c| (c + 1) as f64 / 153.0).collect(),
            (0..18).map(|c| (c + 1) as f64 / 171.0).collect(),
        ];
        let sizes = (1u32..=40).chain([63, 64, 65, 100, 257]);
        for p in &tables {
            let table = CategoricalTable::new(p);
            let k = p.len();
            for s in sizes.clone() {
                for (first, n) in [(0u32, 7usize), (u32::MAX - 2, 5), (11, 1)] {
                    let mut want = vec![0u32; n * k];
                    for (r, row) in want.chunks_exact_mut(k).enumerate() {
                        let rep = first.wrapping_add(r as u32);
                        for c in categories(&table, [5, 6], rep, 2, s) {
                            row[c as usize] += 1;
                        }
                    }
                    let mut got = vec![9u32; n * k];
                    count_categories_reps(&table, [5, 6], first, 2, s, &mut got);
                    assert_eq!(got, want, "K = {k}, S = {s}, reps from {first}");
                    let mut portable = vec![9u32; n * k];
                    count_reps_with(false, &table, [5, 6], first, 2, s, &mut portable);
                    assert_eq!(portable, want, "portable, K = {k}, S = {s}");
                }
            }
        }
    }

    #[test]
    fn f64_counts_are_the_u32_counts_category_major() {
        // The tables above plus one drawn only in its middle classes (both clamps) and one
        // with a single drawn class; S on both sides of 16 and 32; repetitions within one
        // tally chunk, exactly one, and across chunks (130 = 2 x 64 + 2), from a start that
        // wraps at 2^32; a stride past the repetitions (the numbers between are left alone);
        // the AVX2 tallies (where the CPU has them) and the portable lanes.
        let tables: Vec<Vec<f64>> = vec![
            vec![1.0],
            vec![0.3, 0.7],
            vec![0.0, 0.1, 0.05, 0.2, 0.15, 0.1, 0.1, 0.1, 0.2, 0.0],
            vec![0.0, 0.0, 0.5, 0.5, 0.0],
            vec![0.0, 1.0, 0.0],
            (0..17).map(|c| (c + 1) as f64 / 153.0).collect(),
            (0..18).map(|c| (c + 1) as f64 / 171.0).collect(),
        ];
        for p in &tables {
            let table = CategoricalTable::new(p);
            let k = p.len();
            for s in [1u32, 5, 16, 17, 33, 100] {
                for (first, reps) in [(0u32, 7usize), (u32::MAX - 70, 130), (11, 64), (3, 1)] {
                    let mut rows = vec![0u32; reps * k];
                    count_categories_reps(&table, [5, 6], first, 2, s, &mut rows);
                    let stride = reps + 3;
                    for avx2 in [false, fastmath::has_avx2()] {
                        let mut out = vec![-1.0f64; (k - 1) * stride + reps + 2];
                        count_reps_f64_with(
                            avx2,
                            &table,
                            [5, 6],
                            (first, 2, s),
                            reps,
                            stride,
                            &mut out,
                        );
                        for j in 0..k {
                            for r in 0..reps {
                                assert_eq!(
                                    out[j * stride + r],
                                    f64::from(rows[r * k + j]),
                                    "K = {k}, S = {s}, reps {reps} from {first}, category {j}, repetition {r}"
                                );
                            }
                            if j + 1 < k {
                                assert!(out[j * stride + reps..(j + 1) * stride]
                                    .iter()
                                    .all(|&v| v == -1.0));
                            }
                        }
                        assert!(out[(k - 1) * stride + reps..].iter().all(|&v| v == -1.0));
                    }
                }
            }
        }
    }

    #[test]
    fn mass_past_the_total_goes_to_last_nonzero_class() {
        // Total 0.5: any u >= 0.5 must go to class 1, the last with nonzero probability.
        let table = CategoricalTable::new(&[0.25, 0.25, 0.0]);
        assert_eq!(table.category(u32::MAX), 1);
    }
}
