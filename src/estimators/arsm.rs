//! `arsm`: augment-REINFORCE-swap-merge (Yin, Yue and Zhou 2019, "ARSM: Augment-REINFORCE-
//! Swap-Merge Estimator for Gradient Backpropagation Through Categorical Variables", ICML;
//! reference code mingzhang-yin/ARSM). Augment: the draw is `z_l = argmin_c (ln pi_lc - a_lc)`
//! with `pi_l ~ Dirichlet(1_K)` per variable. Swap: the pseudo action `z^{m<->j}` takes the
//! same argmin after swapping entries `m` and `j` of every `pi_l` (all variables at once, as
//! the reference code's multivariate form does), so `z^{j<->j} = z`. With
//! `F_mj = f(z^{m<->j})` (symmetric), per draw, variable `l`, category `c`:
//! `g_hat_lc = sum_m (1/K - pi_lm) (F_mc - (1/K) sum_j F_mj)`,
//! and an S-draw estimate averages S draws. Unbiased.
//!
//! Merge: many of the `K(K-1)/2` swaps give the same joint pseudo action, and the loss is
//! evaluated once per distinct one (`z` itself reuses the draw's loss). The cost per draw is
//! therefore random, between 1 and `1 + K(K-1)/2`; [`Arsm::expected_evaluations`] reports its
//! mean, estimated once from 2048 draws with fixed counters (so it is the same on every run).
//!
//! The Dirichlet is drawn given the pass's category `z` (so ARSM sees the same draws as the
//! other estimators): with `E_c = pi_c * sum E`, `E_c ~ Exp(1)`, the race is
//! `argmin_c E_c e^{-a_c}`, an exponential race won by `c` with probability `p_c`; given the
//! winner `z`, its time is `T ~ Exp(sum_c e^{a_c})` and every other `E_c = T e^{a_c} + Exp(1)`
//! (memorylessness), drawn from the repetition's auxiliary noise (K uniforms per variable and
//! draw). Variance: continuous noise, no closed form here (Monte Carlo only).

use super::conditional::fill_uniforms;
use super::{Context, Estimator, Family, JointDraws, Noise};
use crate::draws::{draw_joint_categories, CategoricalTable};
use crate::philox::key_of;

/// Draws behind [`Arsm::expected_evaluations`].
pub const COST_DRAWS: u32 = 2048;

/// ARSM for categorical variables.
pub struct Arsm;

/// One draw's augmented race: `ln pi`, the race `ln pi - a` and, per variable, the three
/// smallest race entries' categories (fewer where K < 3).
struct Race {
    ln_pi: Vec<f64>,
    pi: Vec<f64>,
    race: Vec<f64>,
    best: Vec<[usize; 3]>,
    uniforms: Vec<f64>,
    /// `e^a` of the shifted logits and its per-variable sum, once per estimate.
    exp_phi: Vec<f64>,
    rate: Vec<f64>,
    /// Scratch: one pseudo action.
    action: Vec<u32>,
    /// Scratch (one variable): which categories a swap has reached.
    distinct: Vec<bool>,
}

/// The logits shifted by their per-variable maximum (`e^a` cannot overflow).
fn shifted_logits(ctx: &Context) -> Vec<f64> {
    ctx.logits
        .chunks(ctx.k)
        .flat_map(|a| {
            let m = a.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            a.iter().map(move |x| x - m)
        })
        .collect()
}

impl Race {
    fn new(ctx: &Context, phi: &[f64]) -> Self {
        let exp_phi: Vec<f64> = phi.iter().map(|x| x.exp()).collect();
        let rate = exp_phi.chunks(ctx.k).map(|e| e.iter().sum()).collect();
        Self {
            ln_pi: vec![0.0; ctx.dim()],
            pi: vec![0.0; ctx.dim()],
            race: vec![0.0; ctx.dim()],
            best: vec![[0; 3]; ctx.l],
            uniforms: vec![0.0; ctx.dim()],
            exp_phi,
            rate,
            action: vec![0; ctx.l],
            distinct: vec![false; ctx.k],
        }
    }

    /// Draws `pi` given the draw `z` (see the module doc) from uniforms `v * K + c` of
    /// `draw`'s auxiliary noise.
    fn draw(&mut self, k: usize, phi: &[f64], z: &[u32], noise: &Noise, draw: u32) {
        fill_uniforms(noise, draw, &mut self.uniforms);
        for (v, &zv) in z.iter().enumerate() {
            let phi_v = &phi[v * k..(v + 1) * k];
            let t = -self.uniforms[v * k + zv as usize].ln() / self.rate[v];
            let e = &mut self.pi[v * k..(v + 1) * k];
            for (c, (ec, &x)) in e
                .iter_mut()
                .zip(&self.exp_phi[v * k..(v + 1) * k])
                .enumerate()
            {
                *ec = t * x;
                if c != zv as usize {
                    *ec -= self.uniforms[v * k + c].ln();
                }
            }
            let total: f64 = e.iter().sum();
            let ln_total = total.ln();
            for (c, &phi_c) in phi_v.iter().enumerate() {
                let i = v * k + c;
                self.ln_pi[i] = self.pi[i].ln() - ln_total;
                self.pi[i] /= total;
                self.race[i] = self.ln_pi[i] - phi_c;
            }
            // The three smallest race entries, in order (usize::MAX where K < 3).
            let r = &self.race[v * k..(v + 1) * k];
            let mut best = [usize::MAX; 3];
            for c in 0..k {
                let mut item = c;
                for b in best.iter_mut() {
                    if *b == usize::MAX || r[item] < r[*b] {
                        std::mem::swap(b, &mut item);
                        if item == usize::MAX {
                            break;
                        }
                    }
                }
            }
            self.best[v] = best;
        }
    }

    /// Variable `v`'s action after swapping entries `m` and `j` of `pi_v`.
    #[inline]
    fn swapped(&self, k: usize, phi: &[f64], v: usize, m: usize, j: usize) -> u32 {
        let o = v * k;
        let (rm, rj) = (
            self.ln_pi[o + j] - phi[o + m],
            self.ln_pi[o + m] - phi[o + j],
        );
        let mut best = if rm <= rj { (m, rm) } else { (j, rj) };
        if let Some(&c) = self.best[v]
            .iter()
            .find(|&&c| c != m && c != j && c != usize::MAX)
        {
            if self.race[o + c] < best.1 {
                best = (c, self.race[o + c]);
            }
        }
        best.0 as u32
    }
}

/// Fills `f_swap` (K x K, symmetric) with the losses of every pseudo action, evaluating each
/// distinct one once (`evaluate = false`: counts without evaluating), and returns the number
/// of distinct pseudo actions, `z` included.
#[allow(clippy::too_many_arguments)]
fn pseudo_losses(
    ctx: &Context,
    phi: &[f64],
    race: &mut Race,
    z: &[u32],
    f_z: f64,
    evaluate: bool,
    seen: &mut Seen,
    f_swap: &mut [f64],
) -> usize {
    let (l, k) = (ctx.l, ctx.k);
    if l == 1 {
        // One variable: a pseudo action is a category, its loss the context's vertex loss;
        // the distinct ones are counted with a mask.
        let mut count = 1;
        let mut distinct = std::mem::take(&mut race.distinct);
        distinct.iter_mut().for_each(|d| *d = false);
        for m in 0..k {
            f_swap[m * k + m] = f_z;
            for j in m + 1..k {
                let a = race.swapped(k, phi, 0, m, j) as usize;
                let f = if a == z[0] as usize {
                    f_z
                } else {
                    if !distinct[a] {
                        distinct[a] = true;
                        count += 1;
                    }
                    ctx.f[a]
                };
                f_swap[m * k + j] = f;
                f_swap[j * k + m] = f;
            }
        }
        race.distinct = distinct;
        return count;
    }
    seen.clear();
    let mut action = std::mem::take(&mut race.action);
    for m in 0..k {
        f_swap[m * k + m] = f_z;
        for j in m + 1..k {
            for (v, a) in action.iter_mut().enumerate() {
                *a = race.swapped(k, phi, v, m, j);
            }
            let f = if action.as_slice() == z {
                f_z
            } else if let Some(i) = seen
                .actions
                .chunks_exact(l)
                .position(|a| a == action.as_slice())
            {
                seen.f[i]
            } else {
                let f = if evaluate {
                    ctx.objective.at_vertex(&action)
                } else {
                    0.0
                };
                seen.actions.extend_from_slice(&action);
                seen.f.push(f);
                f
            };
            f_swap[m * k + j] = f;
            f_swap[j * k + m] = f;
        }
    }
    race.action = action;
    1 + seen.f.len()
}

/// The distinct pseudo actions of one draw met so far and their losses, flat (L categories
/// each), so that a draw allocates nothing once the buffers have grown.
#[derive(Default)]
struct Seen {
    actions: Vec<u32>,
    f: Vec<f64>,
}

impl Seen {
    fn clear(&mut self) {
        self.actions.clear();
        self.f.clear();
    }
}

impl Arsm {
    /// The mean number of distinct loss evaluations per draw (`z` included), over
    /// [`COST_DRAWS`] draws with fixed counters.
    pub fn expected_evaluations(&self, ctx: &Context) -> f64 {
        let (l, k) = (ctx.l, ctx.k);
        let tables: Vec<CategoricalTable> = ctx.p.chunks(k).map(CategoricalTable::new).collect();
        let key = key_of(0x6172_736d);
        let mut z = vec![0u32; COST_DRAWS as usize * l];
        draw_joint_categories(&tables, key, 0, u32::MAX, COST_DRAWS, &mut z);
        let noise = Noise {
            key,
            rep: 0,
            point: u32::MAX,
        };
        let phi = shifted_logits(ctx);
        let mut race = Race::new(ctx, &phi);
        let mut seen = Seen::default();
        let mut f_swap = vec![0.0; k * k];
        let total: usize = z
            .chunks_exact(l)
            .enumerate()
            .map(|(i, zi)| {
                race.draw(k, &phi, zi, &noise, i as u32);
                pseudo_losses(ctx, &phi, &mut race, zi, 0.0, false, &mut seen, &mut f_swap)
            })
            .sum();
        total as f64 / f64::from(COST_DRAWS)
    }
}

impl Estimator for Arsm {
    fn id(&self) -> &'static str {
        "arsm"
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
        f64::from(s) * self.expected_evaluations(ctx)
    }
    fn estimate(&self, ctx: &Context, d: &JointDraws<'_>, _: f64, out: &mut [f64]) -> Option<f64> {
        let (l, k) = (ctx.l, ctx.k);
        let phi = shifted_logits(ctx);
        let mut race = Race::new(ctx, &phi);
        let mut seen = Seen::default();
        let mut f_swap = vec![0.0; k * k];
        let mut centred = vec![0.0; k * k];
        out.iter_mut().for_each(|o| *o = 0.0);
        let inv_k = 1.0 / k as f64;
        for (i, (z, &f)) in d.z.chunks_exact(l).zip(d.f).enumerate() {
            race.draw(k, &phi, z, &d.noise, i as u32);
            pseudo_losses(ctx, &phi, &mut race, z, f, true, &mut seen, &mut f_swap);
            // F_mc - (1/K) sum_j F_mj.
            for m in 0..k {
                let row = &f_swap[m * k..(m + 1) * k];
                let mean = row.iter().sum::<f64>() * inv_k;
                for (c, x) in centred[m * k..(m + 1) * k].iter_mut().zip(row) {
                    *c = x - mean;
                }
            }
            for v in 0..l {
                let pi = &race.pi[v * k..(v + 1) * k];
                let block = &mut out[v * k..(v + 1) * k];
                for (m, pm) in pi.iter().enumerate() {
                    let w = inv_k - pm;
                    for (o, c) in block.iter_mut().zip(&centred[m * k..(m + 1) * k]) {
                        *o += w * c;
                    }
                }
            }
        }
        let inv = 1.0 / d.s as f64;
        out.iter_mut().for_each(|o| *o *= inv);
        None
    }
}
