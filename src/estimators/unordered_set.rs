//! `unordered-set`: the unordered set estimator with its built-in baseline (Kool, van Hoof and
//! Welling 2020, "Estimating Gradients for Discrete Random Variables by Sampling without
//! Replacement", ICLR). A sample `S` of `k = min(S, K)` categories drawn without
//! replacement (Gumbel-top-k: the k largest `a_c + G_c`) gives
//! `g_hat = sum_{s in S} p_s R(S, s) (e_s - p) (f_s - B(S, s))`, with the leave-one-out ratio
//! `R(S, s) = p^{D\s}(S \ s) / p(S)` and the baseline
//! `B(S, s) = p_s f_s + sum_{s' in S, s' != s} p_{s'} f_{s'} p^{D\{s,s'}}(S \ {s,s'}) / p^{D\s}(S \ s)`,
//! where `p^{D\A}(T)` is the probability that k' = |T| draws without replacement from `p`
//! restricted to `D \ A` give the set T. Unbiased: the baseline's expectation given `s` is
//! `E f` whatever s (derived in `docs/estimators-field-sf.md`), which needs `k >= 2`: with `k = 1` there is no
//! baseline (`B = 0`) and the estimator is REINFORCE. With `k = K` the set is every category
//! and the estimate is the exact gradient.
//!
//! The set probabilities are integrals (exponential races, as in Kool et al.): with
//! `q = 1 - p(S)` and `alpha_i = p_i / q`, `p^{D\A}(T) = int_0^1 prod_{i in T} (1 - u^{alpha_i}) du`
//! for every `A` in S and `T = S \ A` (removing categories renormalises `p` and `q` alike, so
//! the exponents stay the same). They are computed here after the change of variables
//! `u = exp(-e^y)`, by the trapezoid rule in `y` with step [`QUADRATURE_STEP`] (the integrand is
//! analytic in a strip, so the error falls like `exp(-pi^2 / step)`); a test checks them against
//! the sum over orderings.
//!
//! Several variables (our extension, as IndeCateR conditions): variable `l` gets its own set
//! of `min(S, K)` categories and the losses `f(z_{-l}, c)` at the other variables' first joint
//! draw `z_0`: unbiased by the decomposition of [`super::conditional`]. Cost: `min(S, K)` loss
//! evaluations per variable, `L min(S, K)` per estimate. The Gumbels come from the
//! repetition's auxiliary noise (uniform `l K + c` of draw 0). Variance: exact by enumerating
//! the `C(K, k)` sets (and `z_{-l}`) where that is small; otherwise Monte Carlo only.
//!
//! GPU lowering ([`Conditional::UnorderedSet`]): the sets, their members' losses and each
//! member's term `p_s R(S, s) (f_s - B(S, s))` run as kernels of the GPU's generic path, the
//! set integrals in f32 on the same trapezoid rule; the host finishes in f64
//! (`crate::gpu::unordered_set`, which also holds their CPU twin).

use super::conditional::{fill_uniforms, per_variable_moments};
use super::indecater::indecater_block;
use super::{Conditional, Context, Estimator, ExactMoments, Family, JointDraws};

/// Trapezoid step of the set-probability integrals (in `y = ln(-ln u)`; keep in sync with
/// `QUADRATURE_STEP` in shaders/unordered_set_terms.wgsl).
pub const QUADRATURE_STEP: f64 = 0.2;
/// Most (sets x configurations of the other variables) the exact moments enumerate.
pub const MAX_SET_ENUMERATION: f64 = 2e5;

/// The unordered set estimator with built-in baseline.
pub struct UnorderedSet;

/// The set probabilities of one sample, each up to the common factor `exp(log_scale)`:
/// `full = p(S)`,
/// `without_one[i] = p^{D\s_i}(S \ s_i)`, `without_two[i*k + j] = p^{D\{s_i,s_j}}(S \ {s_i,s_j})`.
pub struct SetIntegrals {
    /// `p(S)`.
    pub full: f64,
    /// Leave one out.
    pub without_one: Vec<f64>,
    /// Leave two out (k x k, symmetric; the diagonal is not used).
    pub without_two: Vec<f64>,
    /// The log of the factor every integral above is divided by.
    pub log_scale: f64,
}

impl SetIntegrals {
    /// `p(S)` itself.
    pub fn probability(&self) -> f64 {
        self.full * self.log_scale.exp()
    }
}

/// The set probabilities for exponents `alpha_i = p_i / q` (see the module doc).
pub fn set_integrals(alpha: &[f64]) -> SetIntegrals {
    let k = alpha.len();
    let a_max = alpha.iter().copied().fold(0.0, f64::max);
    // Below y_lo every integrand is under e^-40 of its mass; above y_hi the weight e^{-x}
    // has left even a Gamma(k+1)-shaped integrand.
    let y_lo = (-a_max.ln()).min(0.0) - 40.0;
    let y_hi = (60.0 + 2.0 * (k as f64 + 1.0)).ln();
    let nodes = ((y_hi - y_lo) / QUADRATURE_STEP).ceil() as usize + 1;
    let mut log_factor = vec![0.0; nodes * k];
    let mut log_weight = vec![0.0; nodes];
    let mut shift = f64::NEG_INFINITY;
    for n in 0..nodes {
        let y = y_lo + n as f64 * QUADRATURE_STEP;
        let x = y.exp();
        let mut total = y - x;
        for (i, a) in alpha.iter().enumerate() {
            // ln(1 - e^{-a x}), accurate for small a x.
            let lf = (-(-a * x).exp_m1()).ln();
            log_factor[n * k + i] = lf;
            total += lf;
        }
        log_weight[n] = total;
        shift = shift.max(total);
    }
    let mut full = 0.0;
    let mut without_one = vec![0.0; k];
    let mut without_two = vec![0.0; k * k];
    let mut inv = vec![0.0; k];
    for n in 0..nodes {
        let w = (log_weight[n] - shift).exp();
        full += w;
        for i in 0..k {
            inv[i] = (-log_factor[n * k + i]).exp();
            without_one[i] += w * inv[i];
        }
        for i in 0..k {
            let wi = w * inv[i];
            for j in i + 1..k {
                without_two[i * k + j] += wi * inv[j];
            }
        }
    }
    for i in 0..k {
        for j in i + 1..k {
            without_two[j * k + i] = without_two[i * k + j];
        }
    }
    SetIntegrals {
        full,
        without_one,
        without_two,
        log_scale: shift + QUADRATURE_STEP.ln(),
    }
}

/// The estimate for one variable with probabilities `p` (K) from the set `items` (distinct
/// categories) and the losses `losses[c]` of its members, into `out` (K numbers).
pub fn set_block(p: &[f64], items: &[usize], losses: &[f64], out: &mut [f64]) {
    let k = p.len();
    if items.len() >= k {
        indecater_block(p, losses, out);
        return;
    }
    out.iter_mut().for_each(|o| *o = 0.0);
    let mut member = vec![false; k];
    items.iter().for_each(|&c| member[c] = true);
    // The rest's mass summed directly, so it keeps its precision.
    let q: f64 = (0..k).filter(|&c| !member[c]).map(|c| p[c]).sum();
    let alpha: Vec<f64> = items.iter().map(|&c| p[c] / q).collect();
    let sets = set_integrals(&alpha);
    let n = items.len();
    let mut total = 0.0;
    for (i, &s) in items.iter().enumerate() {
        // With one item there is no other to build a baseline from: REINFORCE.
        let mut baseline = if n > 1 { p[s] * losses[s] } else { 0.0 };
        for (j, &t) in items.iter().enumerate().filter(|&(j, _)| j != i) {
            baseline += p[t] * losses[t] * sets.without_two[i * n + j] / sets.without_one[i];
        }
        let w = p[s] * sets.without_one[i] / sets.full * (losses[s] - baseline);
        out[s] += w;
        total += w;
    }
    for (o, pj) in out.iter_mut().zip(p) {
        *o -= pj * total;
    }
}

/// Variable `l`'s set: the `k` categories of largest `a_lc + G_c` (Gumbel-top-k), from the
/// uniforms `u` of that variable (`G_c = -ln(-ln u_c)`).
fn draw_set(ctx: &Context, l: usize, u: &[f64], k: usize) -> Vec<usize> {
    let kk = ctx.k;
    let keys: Vec<f64> = (0..kk)
        .map(|c| ctx.logits[l * kk + c] - (-u[c].ln()).ln())
        .collect();
    let mut order: Vec<usize> = (0..kk).collect();
    order.sort_by(|&a, &b| keys[b].total_cmp(&keys[a]));
    order.truncate(k);
    order
}

/// Calls `visit(set)` for every `k`-subset of `0..n`, in lexicographic order.
fn subsets(n: usize, k: usize, visit: &mut dyn FnMut(&[usize])) {
    let mut set: Vec<usize> = (0..k).collect();
    loop {
        visit(&set);
        let Some(i) = (0..k).rev().find(|&i| set[i] < n - k + i) else {
            return;
        };
        set[i] += 1;
        for j in i + 1..k {
            set[j] = set[j - 1] + 1;
        }
    }
}

/// `C(n, k)` in floating point.
fn binomial(n: usize, k: usize) -> f64 {
    (0..k).map(|i| (n - i) as f64 / (i + 1) as f64).product()
}

impl Estimator for UnorderedSet {
    fn id(&self) -> &'static str {
        "unordered-set"
    }
    /// None: each estimate reads its own repetition's draws alone (so the CPU's generic path
    /// computes a block's repetitions in parallel).
    fn keeps_moving_average(&self) -> bool {
        false
    }
    fn family(&self) -> Family {
        Family::ScoreFunction
    }
    fn is_unbiased(&self) -> bool {
        true
    }
    fn loss_evaluations(&self, ctx: &Context, s: u32) -> f64 {
        (ctx.l * (s as usize).min(ctx.k)) as f64
    }
    fn conditional(&self) -> Option<Conditional> {
        Some(Conditional::UnorderedSet)
    }
    fn exact_moments(&self, ctx: &Context, s: u32) -> Option<ExactMoments> {
        let kk = ctx.k;
        let k = (s as usize).min(kk);
        let others = (kk as f64).powi(ctx.l as i32 - 1);
        if others * binomial(kk, k) > MAX_SET_ENUMERATION {
            return None;
        }
        per_variable_moments(ctx, None, |l, losses, push| {
            let p = &ctx.p[l * kk..(l + 1) * kk];
            let mut g = vec![0.0; kk];
            if k == kk {
                indecater_block(p, losses, &mut g);
                push(1.0, &g);
                return;
            }
            subsets(kk, k, &mut |set| {
                let q: f64 = (0..kk).filter(|c| !set.contains(c)).map(|c| p[c]).sum();
                let alpha: Vec<f64> = set.iter().map(|&c| p[c] / q).collect();
                let prob = set_integrals(&alpha).probability();
                set_block(p, set, losses, &mut g);
                push(prob, &g);
            });
        })
    }
    fn estimate(&self, ctx: &Context, d: &JointDraws<'_>, _: f64, out: &mut [f64]) -> Option<f64> {
        let (l, kk) = (ctx.l, ctx.k);
        let k = d.s.min(kk);
        let mut scratch = vec![0u32; l];
        let mut losses = vec![0.0; kk];
        let z0 = &d.z[..l];
        // Gumbels: uniforms l K + c of draw 0.
        let mut uniforms = vec![0.0; l * kk];
        fill_uniforms(&d.noise, 0, &mut uniforms);
        for var in 0..l {
            let set = draw_set(ctx, var, &uniforms[var * kk..(var + 1) * kk], k);
            scratch.copy_from_slice(z0);
            for &c in &set {
                scratch[var] = c as u32;
                losses[c] = ctx.objective.at_vertex(&scratch);
            }
            set_block(
                &ctx.p[var * kk..(var + 1) * kk],
                &set,
                &losses,
                &mut out[var * kk..(var + 1) * kk],
            );
        }
        None
    }
}
