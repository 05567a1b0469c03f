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
/// A threshold no 24-bit uniform reaches.
const NEVER: u32 = 1 << 24;

/// Inverse-CDF table of a categorical distribution on the 24-bit uniform grid.
///
/// With `m = word >> 8` and `U = m 2^-24`, the category is the least `k` with `U < C_k`
/// (`C_k = p_0 + ... + p_k`), and `U` past the total goes to the last category with nonzero
/// probability. `U < C_k` is `m < ceil(C_k 2^24)`, so the table holds those integers and the
/// category is `#{j : m >= T_j}`: branch-free, and exactly the f64 comparison.
#[derive(Clone, Debug)]
pub struct CategoricalTable {
    thresholds: Vec<u32>,
    fixed: [u32; FIXED_K - 1],
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
                (cdf * f64::from(NEVER)).ceil().min(f64::from(NEVER)) as u32
            })
            .collect();
        let mut fixed = [NEVER; FIXED_K - 1];
        if p.len() <= FIXED_K {
            fixed[..thresholds.len()].copy_from_slice(&thresholds);
        }
        let last_nonzero = p.iter().rposition(|&v| v > 0.0).unwrap_or(p.len() - 1) as u32;
        Self {
            thresholds,
            fixed,
            last_nonzero,
        }
    }

    /// The inverse-CDF thresholds `ceil(C_k 2^24)`, K - 1 of them.
    pub fn thresholds(&self) -> &[u32] {
        &self.thresholds
    }

    /// The last category with nonzero probability.
    pub fn last_nonzero(&self) -> u32 {
        self.last_nonzero
    }

    /// The category drawn by one random word.
    #[inline(always)]
    pub fn category(&self, word: u32) -> usize {
        let m = word >> 8;
        let below = if self.thresholds.len() < FIXED_K {
            self.fixed.iter().map(|&t| u32::from(m >= t)).sum::<u32>()
        } else {
            self.thresholds
                .iter()
                .map(|&t| u32::from(m >= t))
                .sum::<u32>()
        };
        below.min(self.last_nonzero) as usize
    }
}

/// Counts the categories of the S draws of repetition `rep` at sweep point `point` into
/// `counts` (which it zeroes first). Draw `i` uses word `i % 4` of Philox block `i / 4`.
pub fn count_categories(
    table: &CategoricalTable,
    key: [u32; 2],
    rep: u32,
    point: u32,
    samples: u32,
    counts: &mut [u32],
) {
    counts.iter_mut().for_each(|c| *c = 0);
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
    fastmath::with_avx2(|| draw_joint_lanes(tables, key, rep, point, samples, z));
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
        let mut block = 0;
        while block < blocks {
            let ctr = [
                std::array::from_fn(|b| block + b as u32),
                [rep; W],
                [lane; W],
                [point; W],
            ];
            let words = philox4x32_10_lanes(ctr, key);
            for b in 0..W.min((blocks - block) as usize) {
                for (w, word) in words.iter().enumerate() {
                    let i = (block as usize + b) * 4 + w;
                    if i < samples as usize {
                        z[i * l + var] = table.category(word[b]) as u32;
                    }
                }
            }
            block += W as u32;
        }
    }
}

/// Gumbel-softmax inputs: `(a - max a)` in f32 and `1 / tau`.
#[derive(Clone, Debug)]
pub struct RelaxedTable {
    shifted_logits: Vec<f32>,
    inv_tau: f32,
}

impl RelaxedTable {
    /// The table of logits `a` at temperature `tau`.
    pub fn new(a: &[f64], tau: f64) -> Self {
        let max = a.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let shifted_logits: Vec<f32> = a.iter().map(|v| (v - max) as f32).collect();
        Self {
            shifted_logits,
            inv_tau: (1.0 / tau) as f32,
        }
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
    /// `G_c = -ln(-ln u_c)` and returns `z = argmax(a + G)` (the lowest index on ties).
    /// `h` is scratch of K floats. Arithmetic in f32, as on the GPU.
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
        let mut words = [0u32; 4];
        for c in 0..k {
            if c % 4 == 0 {
                words = philox4x32_10(
                    philox::counter(draw, rep, STREAM_GUMBEL, first_lane + (c / 4) as u32, point),
                    key,
                );
            }
            h[c] = self.shifted_logits[c] + gumbel(words[c % 4]);
        }
        if let Some(out) = perturbed {
            for (o, &v) in out.iter_mut().zip(&h[..k]) {
                *o = f64::from(v);
            }
        }
        let (z, hmax) = argmax(&h[..k]);
        let mut sum = 0.0f32;
        for hc in h[..k].iter_mut() {
            *hc = exp_nonpositive((*hc - hmax) * self.inv_tau);
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
        fastmath::with_avx2(|| self.draw_batch_lanes(key, rep, point, first, n, y, z, y_z));
    }

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
                        let v = logit + gumbel(words[w][l]);
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
                    hc[l] = exp_nonpositive((hc[l] - hmax[l]) * self.inv_tau);
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

/// A standard Gumbel variable `-ln(-ln u)` from one random word, `u` in (0, 1).
#[inline(always)]
pub fn gumbel(word: u32) -> f32 {
    -fastmath::ln(-fastmath::ln(philox::open_uniform_f32(word)))
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

    #[test]
    fn thresholds_match_f64_comparison() {
        let p = [0.1, 0.0, 0.25, 0.65];
        let table = CategoricalTable::new(&p);
        let cdf = [0.1, 0.1, 0.35, 1.0];
        for m in (0u32..(1 << 24)).step_by(4099).chain([0, (1 << 24) - 1]) {
            let u = f64::from(m) / f64::from(NEVER);
            let want = cdf.iter().position(|&c| u < c).unwrap_or(3);
            assert_eq!(table.category(m << 8), want, "m = {m}");
        }
    }

    #[test]
    fn batched_relaxed_draws_equal_single_draws_bit_for_bit() {
        for k in [2usize, 3, 10, 17, 21] {
            let a: Vec<f64> = (0..k).map(|c| (c as f64 * 0.7).sin() * 3.0).collect();
            let table = RelaxedTable::new(&a, 0.5);
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
    fn mass_past_the_total_goes_to_last_nonzero_class() {
        // Total 0.5: any u >= 0.5 must go to class 1, the last with nonzero probability.
        let table = CategoricalTable::new(&[0.25, 0.25, 0.0]);
        assert_eq!(table.category(u32::MAX), 1);
    }
}
