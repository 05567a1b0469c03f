//! The GPU lowering of `unordered-set` ([`Conditional::UnorderedSet`], Kool et al. 2020; the
//! estimator and its formula are [`crate::estimators::UnorderedSet`]'s): what its two kernels
//! read, their f32 CPU twin, and the host's f64 finishing.
//!
//! Per repetition, variable `l` and loss, with `k = min(S, K)`:
//! - `shaders/unordered_set.wgsl` (one thread per category): the Gumbel-top-k set from the
//!   auxiliary uniforms of draw 0 (the category's rank among the keys `a_lc + G_c`, ties to
//!   the lower index as the CPU's stable sort) and, for each member, the centred losses
//!   `E_c = f(z_{0,-l}, c) - m` of every set group (a loss); CPU twin: the set and losses of
//!   `UnorderedSet::estimate`;
//! - `shaders/unordered_set_terms.wgsl` (one thread per member `s`): the member's term
//!   `g_s = p_s R(S, s) (f_s - B(S, s))`. By the chain rule of draws without replacement,
//!   `sum_{t in S \ s} p_t p^{D\{s,t}}(S \ {s,t}) = (1 - p_s) p^{D\s}(S \ s)` (draw the first
//!   of the rest, then the others), so the baseline's weights sum to one and
//!   `f_s - B(S, s) = sum_{t != s} p_t W_st (f_s - f_t)`, `W_st = p^{D\{s,t}}(S\{s,t}) / p^{D\s}(S\s)`:
//!   differences of losses, so `m` cancels and f32 keeps the losses' digits. Then
//!   `g_s = p_s / p(S) * sum_{t != s} p_t (f_s - f_t) p^{D\{s,t}}(S \ {s,t})`, with both
//!   integrals by the trapezoid rule of the CPU (step [`QUADRATURE_STEP`] in `y = ln(-ln u)`,
//!   the same truncation), as one sum over the nodes: `sum_n w_n / f_s(x_n) *
//!   sum_t p_t (E_s - E_t) / f_t(x_n)` over `sum_n w_n`, `w_n = h x_n e^{-x_n} prod_m f_m(x_n)`,
//!   `f_m(x) = 1 - e^{-alpha_m x}`. CPU twin: [`member_terms`].
//! - the host, in f64: `g_l = sum_s g_s (e_s - p_l)` ([`finish_variable`]).
//!
//! With `k = 1` the term is REINFORCE's `E_s` (the host adds `m`), with `k = K` IndeCateR's
//! `p_s (E_s - sum_c p_c E_c)`, as the CPU's.
//!
//! f32 design (no f64 in WGSL). The nodes lie on the global grid `y_n = n h` (offsetting the
//! CPU's grid changes the trapezoid sum by its own error, `exp(-pi^2 / h)` ~ 1e-21). The host
//! tabulates `x_n = e^{y_n}` rounded to f32 and `h x_n e^{-x_n}` as an f32 mantissa and an
//! integer exponent (in f64, exactly rounded), so the kernel takes no exponential of a large
//! argument; each factor `f_m` is `-expm1` of `alpha_m x_n` to a few ulp; products carry their
//! binary exponent apart (no underflow however small the set's probability) and are scaled
//! by the largest node's exponent; the two sums over the nodes are compensated. Each node's
//! weight is then off by about `(k + 2)` ulp, independently from node to node, and each
//! factor's error enters `g_s`'s numerator and denominator alike: the terms agree with the
//! CPU's f64 to a few 1e-7 of `p_s max_t |f_s - f_t|` (the test below bounds it by 2e-6 of
//! the estimate's largest coordinate over many sets; the GPU test's bar is 1e-5).
//!
//! Range: the kernel serves sets of at most [`MAX_SET`] members and probabilities of at
//! least [`MIN_PROBABILITY`] (every `alpha_m >= p_m` then keeps `f_m` above the floor
//! `2^-60` on every node that carries mass); elsewhere the cell falls back to the CPU.

use crate::engine::SweepSpec;
use crate::error::Result;
use crate::estimators::{Conditional, Estimator, MovingAverage, UnorderedSet, QUADRATURE_STEP};
use crate::gpu::generic::{self, GenericPlan, Readback};
use crate::gpu::GpuEngine;
use crate::philox::key_of;

/// Most members of a set the terms kernel serves (its exponent bookkeeping stays in f32
/// range below it).
pub const MAX_SET: usize = 32;
/// Smallest category probability the kernels serve.
pub const MIN_PROBABILITY: f64 = 1e-9;
/// Smallest factor `1 - e^{-alpha x}` the kernel divides by (`2^-60`).
pub const FLOOR: f32 = 8.673_617e-19;

/// The quadrature nodes `n = first .. first + x.len()`: `x_n = e^{n h}` in f32 and the weight
/// `h x_n e^{-x_n}` as `mantissa * 2^exponent` (mantissa in [0.5, 1)). Keep in sync with
/// `shaders/unordered_set_terms.wgsl`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Nodes {
    /// The first node's index on the grid `y = n h`.
    pub first: i32,
    /// `x_n`.
    pub x: Vec<f32>,
    /// The weights' mantissas.
    pub mantissa: Vec<f32>,
    /// The weights' binary exponents.
    pub exponent: Vec<i32>,
}

/// The nodes every set of up to `k_max` members of probabilities at least `p_min` reads: from
/// below the lowest start `min(-ln alpha_max, 0) - 40` (`alpha_max <= 1 / p_min`) to above the
/// highest end `ln(60 + 2 (k_max + 1))` (those of `set_integrals`).
pub fn nodes(p_min: f64, k_max: usize) -> Nodes {
    let h = QUADRATURE_STEP;
    let first = ((p_min.ln().min(0.0) - 40.0) / h).floor() as i32 - 2;
    let last = ((60.0 + 2.0 * (k_max as f64 + 1.0)).ln() / h).ceil() as i32 + 2;
    let mut out = Nodes {
        first,
        ..Default::default()
    };
    for n in first..=last {
        let x = (f64::from(n) * h).exp();
        let w = h * x * (-x).exp();
        let (m, e) = frexp64(w);
        out.x.push(x as f32);
        out.mantissa.push(m as f32);
        out.exponent.push(e);
    }
    out
}

/// `(m, e)` with `x = m 2^e`, `m` in [0.5, 1) (x positive and normal).
fn frexp64(x: f64) -> (f64, i32) {
    let e = x.log2().floor() as i32 + 1;
    let m = x * (-f64::from(e)).exp2();
    if m >= 1.0 {
        (m / 2.0, e + 1)
    } else if m < 0.5 {
        (m * 2.0, e - 1)
    } else {
        (m, e)
    }
}

/// `(m, e)` with `x = m 2^e`, `m` in [0.5, 1), by the bits (x positive and normal), as the
/// kernel's `split`.
fn split(x: f32) -> (f32, i32) {
    let bits = x.to_bits();
    let e = ((bits >> 23) & 0xff) as i32 - 126;
    (f32::from_bits((bits & 0x807f_ffff) | (126 << 23)), e)
}

/// `1 - e^{-t}` for `t >= 0` to a few ulp (the kernel's `one_minus_exp_neg`).
fn one_minus_exp_neg(t: f32) -> f32 {
    if t >= 0.5 {
        return 1.0 - (-t).exp();
    }
    // -expm1(-t) = t (1 - t/2 (1 - t/3 (...))): the first omitted term is below 2^-30.
    let x = -t;
    let mut poly = 1.0 + x / 10.0;
    for d in (2..=9).rev() {
        poly = 1.0 + x / d as f32 * poly;
    }
    t * poly
}

/// A compensated (Kahan) sum.
#[derive(Clone, Copy, Default)]
struct Kahan {
    sum: f32,
    comp: f32,
}

impl Kahan {
    fn add(&mut self, v: f32) {
        let y = v - self.comp;
        let t = self.sum + y;
        self.comp = (t - self.sum) - y;
        self.sum = t;
    }
    fn value(self) -> f32 {
        self.sum - self.comp
    }
}

/// The terms kernel for one (repetition, loss, variable), in f32 as the kernel computes it:
/// `out[s]` is member `s`'s term `g_s` (the module doc), from the variable's probabilities
/// `p` (K, f32), the set `members` (k distinct categories, in rank order) and their centred
/// losses `losses` (k, f32), on the grid `nodes`. The CPU twin of
/// `shaders/unordered_set_terms.wgsl`.
pub fn member_terms(p: &[f32], members: &[u32], losses: &[f32], nodes: &Nodes, out: &mut [f32]) {
    let (kk, k) = (p.len(), members.len());
    let pm = |j: usize| p[members[j] as usize];
    if k == 1 {
        // REINFORCE: the host adds m.
        out[0] = losses[0];
        return;
    }
    if k >= kk {
        // IndeCateR.
        let mut mean = Kahan::default();
        (0..k).for_each(|j| mean.add(pm(j) * losses[j]));
        let mean = mean.value();
        (0..k).for_each(|i| out[i] = pm(i) * (losses[i] - mean));
        return;
    }
    // The rest's mass, summed directly as the CPU does.
    let mut q = Kahan::default();
    for (c, &pc) in p.iter().enumerate() {
        if !members.contains(&(c as u32)) {
            q.add(pc);
        }
    }
    let q = q.value();
    let alpha: Vec<f32> = (0..k).map(|j| pm(j) / q).collect();
    let (lo, hi) = node_range(&alpha, nodes);
    let factor = |j: usize, n: usize| one_minus_exp_neg(alpha[j] * nodes.x[n]).max(FLOOR);
    // Pass 1: the largest node's binary exponent (within k + 1 of its true one).
    let mut top = i32::MIN;
    for n in lo..hi {
        let e = nodes.exponent[n] + (0..k).map(|j| split(factor(j, n)).1).sum::<i32>();
        top = top.max(e);
    }
    for (i, o) in out.iter_mut().enumerate().take(k) {
        let mut den = Kahan::default();
        let mut num = Kahan::default();
        for n in lo..hi {
            let (mut mant, mut exp) = (nodes.mantissa[n], nodes.exponent[n]);
            let mut own = 1.0;
            let mut diff = 0.0f32;
            for j in 0..k {
                let f = factor(j, n);
                if j == i {
                    own = f;
                    continue;
                }
                let (m, e) = split(mant * f);
                mant = m;
                exp += e;
                diff += pm(j) * (losses[i] - losses[j]) / f;
            }
            // w_n / f_s(x_n), scaled by 2^-top.
            let without = mant * 2f32.powi(exp - top);
            den.add(without * own);
            num.add(without * diff);
        }
        *o = pm(i) * (num.value() / den.value());
    }
}

/// The nodes `lo..hi` (indices into `nodes`) of a set with exponents `alpha`: those of the
/// CPU's `set_integrals` (`min(-ln alpha_max, 0) - 40` to `ln(60 + 2 (k + 1))`), on the grid.
fn node_range(alpha: &[f32], nodes: &Nodes) -> (usize, usize) {
    let h = QUADRATURE_STEP as f32;
    let a_max = alpha.iter().copied().fold(0.0f32, f32::max);
    let y_lo = (-a_max.ln()).min(0.0) - 40.0;
    let y_hi = (60.0 + 2.0 * (alpha.len() as f32 + 1.0)).ln();
    let clampi = |n: i32| (n - nodes.first).clamp(0, nodes.x.len() as i32) as usize;
    (
        clampi((y_lo / h).floor() as i32),
        clampi((y_hi / h).ceil() as i32 + 1),
    )
}

/// The host's finishing of one variable: `out = sum_s g_s (e_s - p)` (K numbers), from the
/// members and their terms (`m`, the losses' centre, added back where k = 1).
pub fn finish_variable(p: &[f64], members: &[u32], terms: &[f32], m: f64, out: &mut [f64]) {
    out.iter_mut().for_each(|o| *o = 0.0);
    let shift = if members.len() == 1 { m } else { 0.0 };
    let mut total = 0.0;
    for (&c, &t) in members.iter().zip(terms) {
        let g = f64::from(t) + shift;
        out[c as usize] += g;
        total += g;
    }
    for (o, pj) in out.iter_mut().zip(p) {
        *o -= pj * total;
    }
}

/// Why the kernels cannot serve `conditional` on probabilities `p` at S = `samples` with K
/// categories, or `None` if they can.
pub fn unsupported(conditional: Conditional, p: &[f64], k: usize, samples: u32) -> Option<String> {
    if conditional != Conditional::UnorderedSet {
        return None;
    }
    let set = (samples as usize).min(k);
    if set > MAX_SET && set < k {
        return Some(format!(
            "the set of min(S, K) = {set} categories is past the GPU kernel's {MAX_SET}"
        ));
    }
    let p_min = p.iter().copied().fold(f64::INFINITY, f64::min);
    // A whole set (k = K) or a single member reads no integrals.
    if p_min < MIN_PROBABILITY && set > 1 && set < k {
        return Some(format!(
            "a category probability {p_min:.1e} is below the GPU kernel's {MIN_PROBABILITY:e}"
        ));
    }
    None
}

/// What the unordered-set kernels produce for the cells of a sweep point, read back for
/// tests ([`GpuEngine::unordered_set_parts`]).
#[derive(Clone, Debug, Default)]
pub struct SetParts {
    /// The loss index (into the spec's losses) of each set group.
    pub losses: Vec<usize>,
    /// The set size `min(S, K)`.
    pub set_size: usize,
    /// The members, `[repetition][variable][rank]`.
    pub members: Vec<u32>,
    /// The members' losses, `[repetition][group][variable][rank]`, as the kernels hold them:
    /// the f32 centred value plus the group's centre, in f64.
    pub member_losses: Vec<f64>,
    /// The centred losses themselves (f32), laid out as `member_losses`.
    pub centred: Vec<f32>,
    /// The members' terms, laid out as `member_losses`.
    pub terms: Vec<f32>,
    /// The finished estimates, `[repetition][group][L*K]`.
    pub estimates: Vec<f64>,
    /// The quadrature nodes the terms kernel read.
    pub nodes: Nodes,
}

impl GpuEngine {
    /// The sets, member losses, terms and estimates of the unordered-set kernels for
    /// repetitions `rep_begin..rep_begin + reps` of sweep point `point`, one set group per
    /// loss of `spec`: the GPU side of the kernels' CPU twins, for tests.
    ///
    /// # Errors
    /// [`Error::Gpu`] if the device fails.
    pub fn unordered_set_parts(
        &self,
        spec: &SweepSpec,
        point: usize,
        rep_begin: u32,
        reps: u32,
    ) -> Result<SetParts> {
        let samples = spec.samples[point];
        let contexts = spec.contexts();
        let cells: Vec<(usize, &dyn Estimator)> = (0..contexts.len())
            .map(|li| (li, &UnorderedSet as &dyn Estimator))
            .collect();
        let plan = GenericPlan::new(&spec.problem, &contexts, &cells, samples)?;
        let mut parts = SetParts {
            losses: (0..contexts.len()).collect(),
            set_size: plan.set_size,
            nodes: nodes(
                plan.p
                    .iter()
                    .copied()
                    .fold(1.0, f64::min)
                    .max(MIN_PROBABILITY),
                plan.set_size,
            ),
            ..Default::default()
        };
        let (dim, size, l) = (plan.dim(), plan.set_size, plan.l);
        generic::run(
            &self.ctx,
            &self.generic,
            &plan,
            key_of(spec.seed),
            point as u32,
            samples,
            rep_begin,
            reps,
            self.limits.max_reps,
            Readback {
                set_losses: true,
                ..Default::default()
            },
            &mut |chunk| {
                parts.members.extend_from_slice(&chunk.members);
                parts.terms.extend_from_slice(&chunk.set_terms);
                parts.centred.extend_from_slice(&chunk.set_losses);
                for r in 0..chunk.reps as usize {
                    for (g, &group) in plan.sets.iter().enumerate() {
                        let m = plan.m[group as usize];
                        let at = (r * plan.sets.len() + g) * l * size;
                        parts.member_losses.extend(
                            chunk.set_losses[at..at + l * size]
                                .iter()
                                .map(|&e| f64::from(e) + m),
                        );
                        let cell = plan
                            .cells
                            .iter()
                            .position(|c| c.set == Some(g))
                            .unwrap_or(0);
                        let mut estimate = vec![0.0; dim];
                        plan.finish(
                            cell,
                            chunk,
                            r,
                            samples,
                            &mut MovingAverage::default(),
                            &mut estimate,
                        );
                        parts.estimates.extend_from_slice(&estimate);
                    }
                }
                Ok(())
            },
        )?;
        Ok(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimators::{set_block, set_integrals};

    /// A deterministic stream of numbers in [0, 1).
    fn stream(seed: u64) -> impl FnMut() -> f64 {
        let mut state = seed;
        move || {
            let w =
                crate::philox::philox4x32_10([state as u32, (state >> 32) as u32, 7, 9], [1, 2]);
            state += 1;
            f64::from(w[0]) / 4_294_967_296.0
        }
    }

    /// The f32 twin plus the host's finishing gives the CPU's f64 `set_block` to 2e-6 of the
    /// estimate's largest coordinate, over sets of every size up to the kernel's 32 (K = 4 to
    /// 70) on probabilities from flat to about 1e-10, losses far from 0 (the centre m cancels) and of both signs. Both read the
    /// same losses (the f32 centred values plus m), so this measures the integrals and the
    /// arithmetic after them, beyond the CPU's own quadrature defect (computed here).
    #[test]
    fn f32_terms_match_the_f64_estimator() {
        let mut next = stream(11);
        let mut worst = 0.0f64;
        for (kk, spread) in [
            (4, 0.5),
            (10, 1.0),
            (10, 4.0),
            (20, 3.0),
            (10, 9.0),
            (70, 2.0),
            (40, 10.0),
            (12, 12.0),
        ] {
            for trial in 0..12 {
                let logits: Vec<f64> = (0..kk).map(|_| (next() - 0.5) * 2.0 * spread).collect();
                let mx = logits.iter().copied().fold(f64::MIN, f64::max);
                let e: Vec<f64> = logits.iter().map(|a| (a - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                let p: Vec<f64> = e.iter().map(|x| x / z).collect();
                let nodes = nodes(p.iter().copied().fold(1.0, f64::min), kk);
                let m = 50.0 * (next() - 0.5);
                // The losses as the kernels hold them: f32 centred values (the GPU test
                // covers their rounding; this one the arithmetic that follows).
                let centred: Vec<f32> = (0..kk).map(|_| (3.0 * (next() - 0.5)) as f32).collect();
                let f: Vec<f64> = centred.iter().map(|&e| m + f64::from(e)).collect();
                for k in 1..=kk.min(MAX_SET) {
                    // A random k-subset, in random order.
                    let mut order: Vec<usize> = (0..kk).collect();
                    for i in 0..kk {
                        let j = i + ((next() * (kk - i) as f64) as usize).min(kk - i - 1);
                        order.swap(i, j);
                    }
                    order.truncate(k);
                    let members: Vec<u32> = order.iter().map(|&c| c as u32).collect();
                    let mut want = vec![0.0; kk];
                    set_block(&p, &order, &f, &mut want);
                    let p32: Vec<f32> = p.iter().map(|&x| x as f32).collect();
                    let losses: Vec<f32> = order.iter().map(|&c| centred[c]).collect();
                    let mut terms = vec![0.0f32; k];
                    member_terms(&p32, &members, &losses, &nodes, &mut terms);
                    let mut got = vec![0.0; kk];
                    finish_variable(&p, &members, &terms, m, &mut got);
                    let scale = want.iter().fold(1e-300f64, |a, v| a.max(v.abs()));
                    // The CPU's own quadrature satisfies the identity of the module doc only
                    // to its error: its `f_s - B(S, s)` is ours plus `(1 - c_s) f_s`, with
                    // `c_s = p_s + sum_t p_t W_st` (1 exactly). That defect, in f64:
                    let mut defect = vec![0.0; kk];
                    if k > 1 && k < kk {
                        let q: f64 = (0..kk).filter(|c| !order.contains(c)).map(|c| p[c]).sum();
                        let alpha: Vec<f64> = order.iter().map(|&c| p[c] / q).collect();
                        let sets = set_integrals(&alpha);
                        for (i, &si) in order.iter().enumerate() {
                            let mut c_s = p[si];
                            for (j, &t) in order.iter().enumerate().filter(|&(j, _)| j != i) {
                                c_s += p[t] * sets.without_two[i * k + j] / sets.without_one[i];
                            }
                            let r = sets.without_one[i] / sets.full;
                            defect[si] = p[si] * r * (1.0 - c_s) * f[si];
                        }
                    }
                    let total_defect: f64 = defect.iter().map(|d| d.abs()).sum();
                    for ((g, w), (d, pj)) in got.iter().zip(&want).zip(defect.iter().zip(&p)) {
                        let err = ((g - w).abs() - d.abs() - pj * total_defect).max(0.0) / scale;
                        worst = worst.max(err);
                        assert!(
                            err <= 2e-6,
                            "K = {kk} spread {spread} trial {trial} k = {k} p_min {:.1e}: {got:?} vs {want:?}",
                            p.iter().copied().fold(1.0, f64::min)
                        );
                    }
                }
            }
        }
        eprintln!("largest relative difference {worst:.2e}");
    }

    /// The kernels refuse what they cannot serve, with the reason, and only that.
    #[test]
    fn unsupported_says_why() {
        let flat = vec![0.1; 10];
        assert_eq!(unsupported(Conditional::UnorderedSet, &flat, 10, 4), None);
        assert_eq!(
            unsupported(Conditional::EveryCategory, &[1e-30, 1.0], 2, 1),
            None
        );
        let mut tiny = flat.clone();
        tiny[3] = 1e-10;
        let why = unsupported(Conditional::UnorderedSet, &tiny, 10, 4).unwrap();
        assert!(why.contains("below the GPU kernel's"), "{why}");
        // One member or every category reads no integrals.
        assert_eq!(unsupported(Conditional::UnorderedSet, &tiny, 10, 1), None);
        assert_eq!(unsupported(Conditional::UnorderedSet, &tiny, 10, 64), None);
        let wide = vec![1.0 / 100.0; 100];
        let why = unsupported(Conditional::UnorderedSet, &wide, 100, 33).unwrap();
        assert!(why.contains("past the GPU kernel's 32"), "{why}");
        assert_eq!(unsupported(Conditional::UnorderedSet, &wide, 100, 32), None);
    }

    /// The bookkeeping the kernel shares: `split` and `frexp64` give the mantissa and
    /// exponent, and the grid covers the CPU's range.
    #[test]
    fn splits_and_nodes() {
        for x in [1.0f32, 0.75, 3.0e-20, 1.0e30, FLOOR] {
            let (m, e) = split(x);
            assert!((0.5..1.0).contains(&m), "{x}");
            assert_eq!(m * 2f32.powi(e), x);
        }
        let (m, e) = frexp64(0.3);
        assert!((0.5..1.0).contains(&m) && (m * f64::from(e).exp2() - 0.3).abs() < 1e-16);
        let n = nodes(1e-12, 10);
        let y_first = f64::from(n.first) * QUADRATURE_STEP;
        assert!(y_first <= (1e-12f64).ln() - 40.0);
        let y_last = f64::from(n.first + n.x.len() as i32 - 1) * QUADRATURE_STEP;
        assert!(y_last >= (60.0 + 22.0f64).ln());
        assert!(n.mantissa.iter().all(|m| (0.5..1.0).contains(m)));
    }
}
