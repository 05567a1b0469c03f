//! `sum-and-sample`: Rao-Blackwellised REINFORCE (Liu, Regier, Tripuraneni, Jordan and
//! McAuliffe 2019, "Rao-Blackwellized Stochastic Gradients for Discrete Distributions", ICML,
//! Section 3): the k most probable categories `C` (`--rb-k`, ties to the lower index) are
//! summed exactly and only the rest is sampled, from `p` restricted to the complement,
//! `q(c) = p_c / (1 - p(C))`. For one variable,
//! `g_hat = sum_{c in C} f_c p_c (e_c - p) + (1 - p(C)) (1/S) sum_i f(v_i) (e_{v_i} - p)`,
//! `v_i ~ q`: unbiased, because `E_q[(1 - p(C)) f(v) (e_v - p)] = sum_{c not in C} p_c f_c
//! (e_c - p)`. With `k >= K` nothing is sampled and the estimate is the exact gradient.
//!
//! Several variables (our extension, as IndeCateR conditions): for each joint draw `z_i` and
//! each variable `l` the same split is applied to the K losses `f(z_{i,-l}, .)` of variable
//! `l`, with its own complement draw `v_il ~ q_l`, and an S-draw estimate averages S draws:
//! unbiased by the decomposition of [`super::conditional`]. The complement draws are
//! inverse-CDF draws from the repetition's auxiliary noise (uniform `l` of draw `i`).
//!
//! Cost: one variable, `min(k, K)` evaluations for the sum plus S for the samples (none where
//! `k >= K`); several variables, `S L (min(k, K) + 1)` (`S L K` where `k >= K`).
//! Variance: `Var_j = Var[(1 - p(C)) f(v) (e_v - p)_j] / S` for one variable (the sum is
//! constant); in general the variance over `z_{-l}` and `v_l` of the per-draw block, divided by
//! S, which the enumeration of [`super::conditional`] computes exactly.

use super::conditional::{fill_uniforms, per_variable_moments, uniform};
use super::{Context, Estimator, ExactMoments, Family, JointDraws};

/// Rao-Blackwellised REINFORCE: sum the k most probable categories, sample the rest.
pub struct SumAndSample;

/// The summed categories of one variable: the `k` most probable (ties to the lower index),
/// as a membership mask, and their total probability.
fn summed_set(p: &[f64], k: usize) -> (Vec<bool>, f64) {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    let mut mask = vec![false; p.len()];
    for &c in order.iter().take(k) {
        mask[c] = true;
    }
    // The complement's mass is summed directly (not 1 - p(C)), so it keeps its precision.
    let rest: f64 = p
        .iter()
        .zip(&mask)
        .filter(|(_, &m)| !m)
        .map(|(a, _)| a)
        .sum();
    (mask, rest)
}

/// One variable's split: the summed part's block, and the complement's categories with
/// their cumulative probabilities under `q`.
struct Split {
    mask: Vec<bool>,
    rest: f64,
    complement: Vec<usize>,
    cdf: Vec<f64>,
}

impl Split {
    fn new(p: &[f64], k: usize) -> Self {
        let (mask, rest) = summed_set(p, k);
        // A complement without mass (rounding) is never drawn and contributes nothing.
        let complement: Vec<usize> = if rest > 0.0 {
            (0..p.len()).filter(|&c| !mask[c]).collect()
        } else {
            Vec::new()
        };
        let mut acc = 0.0;
        let cdf = complement
            .iter()
            .map(|&c| {
                acc += p[c] / rest;
                acc
            })
            .collect();
        Self {
            mask,
            rest,
            complement,
            cdf,
        }
    }

    /// Whether anything is sampled.
    fn samples(&self) -> bool {
        !self.complement.is_empty()
    }

    /// The complement category at uniform `u` (inverse CDF): the number of cumulative
    /// probabilities below `u` (the CDF is non-decreasing, so this is the binary search's
    /// partition point, counted without branches).
    fn draw(&self, u: f64) -> usize {
        let i: usize = self.cdf.iter().map(|&c| usize::from(c < u)).sum();
        self.complement[i.min(self.complement.len() - 1)]
    }

    /// Adds `sum_{c in C} f_c p_c (e_c - p)` to `out` (K numbers) from the losses of the
    /// summed categories (entries of `losses` outside `C` are not read).
    fn add_sum(&self, p: &[f64], losses: &[f64], out: &mut [f64]) {
        let mut total = 0.0;
        for c in (0..p.len()).filter(|&c| self.mask[c]) {
            let w = p[c] * losses[c];
            out[c] += w;
            total += w;
        }
        for (o, pj) in out.iter_mut().zip(p) {
            *o -= pj * total;
        }
    }

    /// Adds `(1 - p(C)) f(v) (e_v - p)` to `out`.
    fn add_sample(&self, p: &[f64], v: usize, f: f64, out: &mut [f64]) {
        let w = self.rest * f;
        out[v] += w;
        for (o, pj) in out.iter_mut().zip(p) {
            *o -= pj * w;
        }
    }
}

impl Estimator for SumAndSample {
    fn id(&self) -> &'static str {
        "sum-and-sample"
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
        let summed = ctx.settings.rb_k.min(ctx.k) as f64;
        let sampled = if ctx.settings.rb_k >= ctx.k { 0.0 } else { 1.0 };
        if ctx.l == 1 {
            summed + sampled * f64::from(s)
        } else {
            f64::from(s) * ctx.l as f64 * (summed + sampled)
        }
    }
    fn exact_moments(&self, ctx: &Context, s: u32) -> Option<ExactMoments> {
        let k = ctx.k;
        let splits: Vec<Split> = ctx
            .p
            .chunks(k)
            .map(|p| Split::new(p, ctx.settings.rb_k))
            .collect();
        per_variable_moments(ctx, Some(s), |l, losses, push| {
            let (p, split) = (&ctx.p[l * k..(l + 1) * k], &splits[l]);
            let mut base = vec![0.0; k];
            split.add_sum(p, losses, &mut base);
            if !split.samples() {
                push(1.0, &base);
                return;
            }
            for &v in &split.complement {
                let mut g = base.clone();
                split.add_sample(p, v, losses[v], &mut g);
                push(p[v] / split.rest, &g);
            }
        })
    }
    fn estimate(&self, ctx: &Context, d: &JointDraws<'_>, _: f64, out: &mut [f64]) -> Option<f64> {
        let (l, k) = (ctx.l, ctx.k);
        let splits: Vec<Split> = ctx
            .p
            .chunks(k)
            .map(|p| Split::new(p, ctx.settings.rb_k))
            .collect();
        out.iter_mut().for_each(|o| *o = 0.0);
        let inv = 1.0 / d.s as f64;
        let mut scratch = vec![0u32; l];
        let mut losses = vec![0.0; k];
        if l == 1 {
            // The sum does not depend on the draws: once per estimate.
            let (p, split) = (&ctx.p[..], &splits[0]);
            // One variable: the vertex losses are the context's (each use still counts).
            split.add_sum(p, &ctx.f, out);
            if split.samples() {
                let mut sampled = vec![0.0; k];
                for i in 0..d.s {
                    let v = split.draw(uniform(&d.noise, i as u32, 0));
                    split.add_sample(p, v, ctx.f[v], &mut sampled);
                }
                for (o, g) in out.iter_mut().zip(&sampled) {
                    *o += g * inv;
                }
            }
            return None;
        }
        let mut uniforms = vec![0.0; l];
        for (i, z) in d.z.chunks_exact(l).enumerate() {
            fill_uniforms(&d.noise, i as u32, &mut uniforms);
            for (var, split) in splits.iter().enumerate() {
                let p = &ctx.p[var * k..(var + 1) * k];
                let block = &mut out[var * k..(var + 1) * k];
                scratch.copy_from_slice(z);
                for c in (0..k).filter(|&c| split.mask[c]) {
                    scratch[var] = c as u32;
                    losses[c] = ctx.objective.at_vertex(&scratch);
                }
                split.add_sum(p, &losses, block);
                if split.samples() {
                    let v = split.draw(uniforms[var]);
                    scratch[var] = v as u32;
                    let f = ctx.objective.at_vertex(&scratch);
                    split.add_sample(p, v, f, block);
                }
            }
        }
        out.iter_mut().for_each(|o| *o *= inv);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_inverse_cdf_is_the_binary_search() {
        // Zero-probability categories in the complement (flat steps of the CDF), and
        // uniforms at and beside every cumulative probability.
        let p = [0.3, 0.0, 0.2, 0.05, 0.0, 0.25, 0.2];
        for k in 0..4 {
            let split = Split::new(&p, k);
            let mut us: Vec<f64> = split
                .cdf
                .iter()
                .flat_map(|&c| {
                    [
                        c,
                        f64::from_bits(c.to_bits() - 1),
                        f64::from_bits(c.to_bits() + 1),
                    ]
                })
                .collect();
            us.extend((1..1000).map(|i| f64::from(i) / 1000.0));
            for u in us {
                let searched = split.cdf.partition_point(|&c| c < u);
                let want = split.complement[searched.min(split.complement.len() - 1)];
                assert_eq!(split.draw(u), want, "k = {k}, u = {u}");
            }
        }
    }
}
