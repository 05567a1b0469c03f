//! `relax`: RELAX (Grathwohl, Choi, Wu, Roeder and Duvenaud 2018, "Backpropagation through the
//! void", eq. 8 and Algorithm 2 for discrete variables). REBAR with a learned control variate:
//! a small network `c(y) = w2 . tanh(W1 y + b1) + b2` (one hidden layer of 16 tanh units, as
//! the paper's toy) on the relaxed sample `y = softmax(. / tau)` (all variables' L*K numbers).
//! Per draw, with `b`, `z`, `z~`, `s` as in [`super::rebar`]:
//! `g_hat = [f(b) - c(y~)] s + grad_a c(y(z)) - grad_a c(y(z~))`,
//! unbiased for every network (the same identity as REBAR's). tau is `--tau`.
//!
//! Cost per draw: one loss evaluation `f(b)` (the network is not the loss: three network
//! passes, not counted), K more uniforms (auxiliary noise as REBAR's). Needs the loss defined
//! off the vertices (the relaxation the network reads is only meaningful where the loss has
//! one, and the table loss has none).
//!
//! Warm-up (`--warmup` steps per cell, before the measured repetitions): the network is
//! trained to minimise the estimator's variance, as the paper does: each step draws
//! `min(S, 64)` draws on repetitions past the measured ones and takes an Adam step
//! (learning rate 0.01) along the single-draw gradient of `||g_hat||^2` with respect to the
//! network's parameters (exact, by forward-mode directional derivatives through the network:
//! `d/dphi (g . grad_a c) = d/dphi D c(y)[M g]` with `M = d y / d a`). The weights start at
//! `U(-1, 1) / sqrt(L K)` from the auxiliary noise of the repetition after the warm-up's,
//! `w2 = 0`, and `b2` at the first step's mean `f(b)` (so the network starts as a baseline).
//! Its loss evaluations (one per draw) are reported, not counted.

use super::gumbel_rao::log_probs;
use super::rebar::{
    add_conditional_pathwise, pathwise, relax_all, Adam, Draw, Scratch, WARMUP_DRAWS,
};
use super::{Context, Estimator, Family, JointDraws, Noise, WarmUp};
use crate::draws::JointRelaxedTable;

/// RELAX with a one-hidden-layer control variate trained in the warm-up.
pub struct Relax;

/// Hidden units of the control variate.
pub const HIDDEN: usize = 16;
/// Adam's learning rate for the network.
const LEARNING_RATE: f64 = 0.01;

/// The control variate's parameters `[W1 (H x n, row-major), b1 (H), w2 (H), b2]`.
struct Net<'a> {
    n: usize,
    params: &'a [f64],
}

/// The hidden layer at `y`: `t = tanh(W1 y + b1)`.
struct Hidden {
    t: [f64; HIDDEN],
}

impl Net<'_> {
    fn len(n: usize) -> usize {
        HIDDEN * n + 2 * HIDDEN + 1
    }
    fn w1(&self, j: usize) -> &[f64] {
        &self.params[j * self.n..(j + 1) * self.n]
    }
    fn b1(&self, j: usize) -> f64 {
        self.params[HIDDEN * self.n + j]
    }
    fn w2(&self, j: usize) -> f64 {
        self.params[HIDDEN * self.n + HIDDEN + j]
    }
    fn b2(&self) -> f64 {
        self.params[HIDDEN * self.n + 2 * HIDDEN]
    }

    fn hidden(&self, y: &[f64]) -> Hidden {
        let mut t = [0.0; HIDDEN];
        for (j, tj) in t.iter_mut().enumerate() {
            let h: f64 = self.w1(j).iter().zip(y).map(|(w, v)| w * v).sum::<f64>() + self.b1(j);
            *tj = h.tanh();
        }
        Hidden { t }
    }

    fn value(&self, hid: &Hidden) -> f64 {
        (0..HIDDEN).map(|j| self.w2(j) * hid.t[j]).sum::<f64>() + self.b2()
    }

    /// `grad_y c` into `out`.
    fn grad_y(&self, hid: &Hidden, out: &mut [f64]) {
        out.iter_mut().for_each(|o| *o = 0.0);
        for j in 0..HIDDEN {
            let a = self.w2(j) * (1.0 - hid.t[j] * hid.t[j]);
            for (o, w) in out.iter_mut().zip(self.w1(j)) {
                *o += a * w;
            }
        }
    }

    /// Adds `coef grad_phi c(y)` to `out`.
    fn add_param_grad(&self, y: &[f64], hid: &Hidden, coef: f64, out: &mut [f64]) {
        let n = self.n;
        for j in 0..HIDDEN {
            let sj = 1.0 - hid.t[j] * hid.t[j];
            let a = coef * self.w2(j) * sj;
            for (o, v) in out[j * n..(j + 1) * n].iter_mut().zip(y) {
                *o += a * v;
            }
            out[HIDDEN * n + j] += a;
            out[HIDDEN * n + HIDDEN + j] += coef * hid.t[j];
        }
        out[HIDDEN * n + 2 * HIDDEN] += coef;
    }

    /// Adds `coef grad_phi (D c(y)[delta])`, the gradient of the directional derivative of `c`
    /// along `delta`, to `out`.
    fn add_directional_param_grad(
        &self,
        y: &[f64],
        hid: &Hidden,
        delta: &[f64],
        coef: f64,
        out: &mut [f64],
    ) {
        let n = self.n;
        for j in 0..HIDDEN {
            let (tj, w2) = (hid.t[j], self.w2(j));
            let sj = 1.0 - tj * tj;
            let u: f64 = self.w1(j).iter().zip(delta).map(|(w, d)| w * d).sum();
            // D c = sum_j w2_j s_j u_j, s_j = 1 - t_j^2, ds_j/dh_j = -2 t_j s_j.
            let a = coef * w2 * sj;
            let b = coef * w2 * u * (-2.0 * tj * sj);
            for ((o, d), v) in out[j * n..(j + 1) * n].iter_mut().zip(delta).zip(y) {
                *o += a * d + b * v;
            }
            out[HIDDEN * n + j] += b;
            out[HIDDEN * n + HIDDEN + j] += coef * sj * u;
        }
    }
}

/// One draw's RELAX estimate `g` into `out`, given the network; returns the hidden layer at
/// `y` for the warm-up. With the tied randomness `z~ = z` in value (see [`Draw::complete`]),
/// so `y~ = y`: one network pass serves both points.
fn per_draw(
    ctx: &Context,
    net: &Net<'_>,
    draw: &Draw,
    sc: &mut Scratch,
    out: &mut [f64],
) -> Hidden {
    let tau = ctx.tau;
    relax_all(ctx, &draw.perturbed, tau, &mut sc.y);
    let hy = net.hidden(&sc.y);
    let c_y = net.value(&hy);
    net.grad_y(&hy, &mut sc.g);
    pathwise(ctx, &sc.y, &sc.g, tau, out);
    for (o, s) in out.iter_mut().zip(&draw.score) {
        *o += (draw.f - c_y) * s;
    }
    add_conditional_pathwise(ctx, draw, &sc.y, &sc.g, tau, -1.0, out);
    hy
}

/// The network of a cell: the warm-up's, else the untrained start (`c = 0`: REINFORCE).
fn params_of(ctx: &Context) -> Vec<f64> {
    ctx.warm
        .as_ref()
        .map_or_else(|| vec![0.0; Net::len(ctx.dim())], |w| w.params.clone())
}

impl Estimator for Relax {
    fn id(&self) -> &'static str {
        "relax"
    }
    /// None: each estimate reads its own repetition's draws alone (so the CPU's generic path
    /// computes a block's repetitions in parallel).
    fn keeps_moving_average(&self) -> bool {
        false
    }
    fn family(&self) -> Family {
        Family::Relaxed
    }
    fn is_unbiased(&self) -> bool {
        true
    }
    fn needs_extension(&self) -> bool {
        true
    }
    fn tunes_in_warm_up(&self) -> bool {
        true
    }
    fn warm_up(
        &self,
        ctx: &Context,
        s: u32,
        noise_for_rep: &dyn Fn(u32) -> Noise,
    ) -> Option<WarmUp> {
        let n = ctx.dim();
        let steps = ctx.settings.warmup;
        let mut params = vec![0.0; Net::len(n)];
        if steps == 0 {
            return Some(WarmUp {
                params,
                evaluations: 0.0,
                report: "relax: --warmup 0, the control variate stays 0 (REINFORCE)".into(),
            });
        }
        // Initial W1 from the noise of the repetition after the warm-up's.
        let init = noise_for_rep(steps);
        let scale = 1.0 / (n as f64).sqrt();
        for (i, w) in params[..HIDDEN * n].iter_mut().enumerate() {
            let u = init.open_uniforms((i / 4) as u32, 0)[i % 4];
            *w = (2.0 * u - 1.0) * scale;
        }
        let draws = s.min(WARMUP_DRAWS);
        let log_p = log_probs(ctx);
        let table = JointRelaxedTable::new(&ctx.logits, ctx.k, ctx.tau);
        let mut batch: Vec<Draw> = (0..draws).map(|_| Draw::new(ctx)).collect();
        let mut sc = Scratch::new(ctx);
        let (mut g, mut delta) = (vec![0.0; n], vec![0.0; n]);
        let mut grad = vec![0.0; params.len()];
        let mut adam = Adam::new(params.len(), LEARNING_RATE);
        for r in 0..steps {
            let noise = noise_for_rep(r);
            for (i, d) in batch.iter_mut().enumerate() {
                d.sample(ctx, &table, &log_p, &noise, i as u32, &mut sc);
            }
            if r == 0 {
                params[HIDDEN * n + 2 * HIDDEN] =
                    batch.iter().map(|d| d.f).sum::<f64>() / f64::from(draws);
            }
            grad.iter_mut().for_each(|v| *v = 0.0);
            let net = Net { n, params: &params };
            for d in &batch {
                let hy = per_draw(ctx, &net, d, &mut sc, &mut g);
                // d||g||^2/dphi = 2 [-(g . s) grad c(y~) + grad D c(y)[M_z g] - grad D c(y~)[M_z~ g]].
                let gs: f64 = g.iter().zip(&d.score).map(|(a, b)| a * b).sum();
                net.add_param_grad(&sc.y, &hy, -2.0 * gs, &mut grad);
                pathwise(ctx, &sc.y, &g, ctx.tau, &mut delta);
                net.add_directional_param_grad(&sc.y, &hy, &delta, 2.0, &mut grad);
                conditional_tangent(ctx, d, &sc.y, &g, &mut delta);
                net.add_directional_param_grad(&sc.y, &hy, &delta, -2.0, &mut grad);
            }
            let inv = 1.0 / f64::from(draws);
            grad.iter_mut().for_each(|v| *v *= inv);
            adam.step(&mut params, &grad);
        }
        let evaluations = f64::from(steps) * f64::from(draws);
        Some(WarmUp {
            params,
            evaluations,
            report: format!(
                "relax warm-up at S = {s}: {steps} Adam steps of {draws} draws on repetitions past the measured ones ({evaluations} loss evaluations, not counted) trained a {HIDDEN}-unit control variate"
            ),
        })
    }
    fn estimate(&self, ctx: &Context, d: &JointDraws<'_>, _: f64, out: &mut [f64]) -> Option<f64> {
        let (l, n) = (ctx.l, ctx.dim());
        let params = params_of(ctx);
        let net = Net { n, params: &params };
        let log_p = log_probs(ctx);
        let (mut draw, mut sc) = (Draw::new(ctx), Scratch::new(ctx));
        let mut g = vec![0.0; n];
        out.iter_mut().for_each(|o| *o = 0.0);
        for (z, pert) in d.z.chunks_exact(l).zip(d.perturbed.chunks_exact(n)) {
            draw.perturbed.copy_from_slice(pert);
            draw.z.copy_from_slice(z);
            draw.complete(ctx, &log_p);
            per_draw(ctx, &net, &draw, &mut sc, &mut g);
            out.iter_mut().zip(&g).for_each(|(o, x)| *o += x);
        }
        let inv = 1.0 / d.s as f64;
        out.iter_mut().for_each(|o| *o *= inv);
        None
    }
}

/// The tangent of `y~` when the logits move along `g`: `(1/tau) J(y~) (kappa . (g - (p . g) 1))`
/// per variable, into `out`.
fn conditional_tangent(ctx: &Context, draw: &Draw, yt: &[f64], g: &[f64], out: &mut [f64]) {
    let k = ctx.k;
    for var in 0..ctx.l {
        let r = var * k..(var + 1) * k;
        let (gl, pl, kl) = (&g[r.clone()], &ctx.p[r.clone()], &draw.kappa[r.clone()]);
        let pg: f64 = pl.iter().zip(gl).map(|(a, b)| a * b).sum();
        let dz: Vec<f64> = (0..k).map(|j| kl[j] * (gl[j] - pg)).collect();
        pathwise(ctx, &yt[r.clone()], &dz, ctx.tau, &mut out[r]);
    }
}
