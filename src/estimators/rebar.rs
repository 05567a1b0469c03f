//! `rebar`: REBAR (Tucker, Mnih, Maddison, Lawson and Sohl-Dickstein 2017, "REBAR: Low-variance,
//! unbiased gradient estimates for discrete latent variable models", eq. 8, categorical form
//! of appendix C). Per draw, Gumbels `G` give the hard draw `b = argmax(a + G)` (per variable)
//! and `y = softmax((a + G) / tau)`; conditional Gumbels `G~ ~ G | b` (see
//! [`super::gumbel_rao`]) give `y~ = softmax((log p + G~) / tau)`. With `h(.) = f(softmax(. / tau))`
//! and the score `s = e_b - p` (per variable):
//! `g_hat = f(b) s - eta [h(z~) s + grad_a h(z~) - grad_a h(z)]`,
//! where `grad_a h(z) = (1/tau) J(y) grad f(y)` (the Gumbel-softmax gradient) and `grad_a h(z~)`
//! differentiates `z~` through its reparameterisation given `b`:
//! `d z~_i / d log p_i = kappa_i` (0 at `b`), `d log p / d a = I - 1 p^T`. The bracket has mean
//! zero for every `eta` and `tau` (`E_b E_{z~|b}` is `E_z`), so REBAR is unbiased.
//!
//! Cost per draw: `f(b)`, `f(y~)` with `grad f(y~)` (one evaluation: a value and its
//! gradient at one point count once, as for the Gumbel estimators), `grad f(y)`: three loss
//! evaluations, what [`Estimator::loss_evaluations`] reports; K more uniforms for `G~` (auxiliary noise block = draw, lanes
//! `l ceil(K/4) ..`). Needs the loss defined off the vertices.
//!
//! `eta` and `tau` come from `--rebar-eta` / `--rebar-tau`; whichever is not given is tuned per
//! cell in a warm-up of `--warmup` steps before the measured repetitions, minimising the
//! variance as the paper does: each step draws `min(S, 64)` draws on repetitions past the
//! measured ones. Writing `g_hat = A - eta C` (`A = f(b) s`, `C` the bracket, `E C = 0`), the
//! variance is `E||A - eta C||^2 - ||grad||^2`; `log tau` takes an Adam step (learning rate
//! 0.1) along the single-draw gradient `-2 eta g_hat . dC/dlog tau` (a central difference on
//! the same noise), and `eta` is set to the minimiser `E[A . C] / E[C . C]` from running
//! averages over the steps (decay 0.9), the fixed point of the paper's gradient steps in
//! `eta`. Defaults before tuning: `eta = 1`, `tau = --tau`; `tau` stays in [0.01, 100]. The
//! warm-up's loss evaluations (seven per draw) are reported, not counted.

use super::gumbel_rao::{log_probs, tempered_softmax};
use super::{Context, Estimator, Family, JointDraws, Noise, WarmUp};
use crate::draws::JointRelaxedTable;

/// REBAR with `eta` and `tau` fixed by flags or tuned in the warm-up.
pub struct Rebar;

/// Most draws of one warm-up step.
pub(super) const WARMUP_DRAWS: u32 = 64;
/// Relative step of the central difference in `log tau`.
const LOG_TAU_STEP: f64 = 1e-3;
/// Adam's learning rate for `log tau`.
const LEARNING_RATE: f64 = 0.1;
/// The range `tau` is kept in while tuning.
const TAU_RANGE: (f64, f64) = (0.01, 100.0);
/// The range `eta` is kept in while tuning.
const ETA_RANGE: (f64, f64) = (-1e4, 1e4);
/// Decay of the warm-up's running averages of `A . C` and `C . C`.
const ETA_DECAY: f64 = 0.9;

/// Adam (Kingma and Ba 2015) on a parameter vector, minimising.
#[derive(Clone, Debug)]
pub(super) struct Adam {
    lr: f64,
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl Adam {
    pub(super) fn new(n: usize, lr: f64) -> Self {
        Self {
            lr,
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
        }
    }

    /// One step along `-grad`.
    pub(super) fn step(&mut self, params: &mut [f64], grad: &[f64]) {
        const B1: f64 = 0.9;
        const B2: f64 = 0.999;
        self.t += 1;
        let (c1, c2) = (1.0 - B1.powi(self.t), 1.0 - B2.powi(self.t));
        for ((x, g), (m, v)) in params
            .iter_mut()
            .zip(grad)
            .zip(self.m.iter_mut().zip(self.v.iter_mut()))
        {
            *m = B1 * *m + (1.0 - B1) * g;
            *v = B2 * *v + (1.0 - B2) * g * g;
            *x -= self.lr * (*m / c1) / ((*v / c2).sqrt() + 1e-8);
        }
    }
}

/// One joint draw as REBAR and RELAX read it: the perturbed logits (any shift per variable),
/// the hard draw, and the conditional Gumbels given it with their derivatives.
pub(super) struct Draw {
    /// `a + G` up to a shift per variable (L*K).
    pub perturbed: Vec<f64>,
    /// The hard draw (L).
    pub z: Vec<u32>,
    /// `d z~ / d log p` per coordinate (L*K).
    pub kappa: Vec<f64>,
    /// The score `e_b - p` (L*K).
    pub score: Vec<f64>,
    /// `f(b)`.
    pub f: f64,
}

impl Draw {
    pub(super) fn new(ctx: &Context) -> Self {
        let n = ctx.dim();
        Self {
            perturbed: vec![0.0; n],
            z: vec![0; ctx.l],
            kappa: vec![0.0; n],
            score: vec![0.0; n],
            f: 0.0,
        }
    }

    /// Completes the draw from its `perturbed` and `z`: the conditional Gumbels with the
    /// randomness tied to the draw's own (REBAR's reference code, `_u_to_v`): the uniforms
    /// `v` are those the conditional sampler maps to `z` itself, so `z~ = z` in value and
    /// only its dependence on `a` differs. Given `b`, these `v` are uniform and independent
    /// of `b`, so the identity behind unbiasedness holds as for independent `v`. In the
    /// coordinates `log p + G`, with `W = exp(-z_b)`: `-log v_i = exp(-G_i) - p_i W` for
    /// `i != b`, `kappa_i = -log v_i / (-log v_i + W p_i)`. Also the score and `f(b)`.
    #[allow(clippy::needless_range_loop)] // j indexes four arrays of the formula
    pub(super) fn complete(&mut self, ctx: &Context, log_p: &[f64]) {
        let k = ctx.k;
        for (var, &c) in self.z.iter().enumerate() {
            let r = var * k..(var + 1) * k;
            let lp = &log_p[r.clone()];
            // `perturbed` is `a - max(a) + G`; `log p + G` adds `max(log p)`.
            let shift = lp.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let b = c as usize;
            let zb = self.perturbed[var * k + b] + shift;
            let w = (-zb).exp();
            for j in 0..k {
                let i = var * k + j;
                if j == b {
                    self.kappa[i] = 0.0;
                } else {
                    let g = self.perturbed[i] + shift - lp[j];
                    let wp = w * lp[j].exp();
                    let e = ((-g).exp() - wp).max(0.0);
                    self.kappa[i] = if e + wp > 0.0 { e / (e + wp) } else { 1.0 };
                }
                self.score[i] = f64::from(u8::from(j == b)) - ctx.p[i];
            }
        }
        self.f = ctx.objective.at_vertex(&self.z);
    }

    /// Fills the draw `i` of repetition `noise` with the engine's own Gumbel draws (the
    /// warm-up's draws: repetitions past the measured ones).
    pub(super) fn sample(
        &mut self,
        ctx: &Context,
        table: &JointRelaxedTable,
        log_p: &[f64],
        noise: &Noise,
        i: u32,
        scratch: &mut Scratch,
    ) {
        table.draw(
            noise.key,
            noise.rep,
            noise.point,
            i,
            &mut scratch.h,
            &mut scratch.y,
            &mut self.perturbed,
            &mut self.z,
        );
        self.complete(ctx, log_p);
    }
}

/// Buffers of one thread's draws.
pub(super) struct Scratch {
    pub h: Vec<f32>,
    pub y: Vec<f64>,
    pub g: Vec<f64>,
}

impl Scratch {
    pub(super) fn new(ctx: &Context) -> Self {
        let n = ctx.dim();
        Self {
            h: vec![0.0; ctx.k],
            y: vec![0.0; n],
            g: vec![0.0; n],
        }
    }
}

/// `softmax(x_l / tau)` of every variable.
pub(super) fn relax_all(ctx: &Context, x: &[f64], tau: f64, y: &mut [f64]) {
    for (xl, yl) in x.chunks_exact(ctx.k).zip(y.chunks_exact_mut(ctx.k)) {
        tempered_softmax(xl, tau, yl);
    }
}

/// `out = (1/tau) J(y) v` per variable (the pathwise gradient through `z`), replacing `out`.
pub(super) fn pathwise(ctx: &Context, y: &[f64], v: &[f64], tau: f64, out: &mut [f64]) {
    let k = ctx.k;
    for ((yl, vl), ol) in y
        .chunks_exact(k)
        .zip(v.chunks_exact(k))
        .zip(out.chunks_exact_mut(k))
    {
        let yv: f64 = yl.iter().zip(vl).map(|(a, b)| a * b).sum();
        for ((o, yj), vj) in ol.iter_mut().zip(yl).zip(vl) {
            *o = yj * (vj - yv) / tau;
        }
    }
}

/// Adds `coef` times the gradient through the conditional `z~`,
/// `(I - p 1^T) diag(kappa) (1/tau) J(y~) v` per variable, to `out`.
pub(super) fn add_conditional_pathwise(
    ctx: &Context,
    draw: &Draw,
    yt: &[f64],
    v: &[f64],
    tau: f64,
    coef: f64,
    out: &mut [f64],
) {
    let k = ctx.k;
    for var in 0..ctx.l {
        let r = var * k..(var + 1) * k;
        let (yl, vl) = (&yt[r.clone()], &v[r.clone()]);
        let (kl, pl) = (&draw.kappa[r.clone()], &ctx.p[r.clone()]);
        let yv: f64 = yl.iter().zip(vl).map(|(a, b)| a * b).sum();
        let ol = &mut out[r];
        let mut total = 0.0;
        for j in 0..k {
            let rj = coef * kl[j] * yl[j] * (vl[j] - yv) / tau;
            ol[j] += rj;
            total += rj;
        }
        for (o, pj) in ol.iter_mut().zip(pl) {
            *o -= pj * total;
        }
    }
}

/// REBAR's control variate of one draw at temperature `tau`, mean zero:
/// `c = f(y~) s + grad_a h(z~) - grad_a h(z)`, into `out`. With the tied randomness `z~ = z`
/// in value, so `y~ = y` and one value and one gradient of the relaxed loss serve both
/// points: two loss evaluations.
fn control_variate(ctx: &Context, draw: &Draw, tau: f64, sc: &mut Scratch, out: &mut [f64]) {
    relax_all(ctx, &draw.perturbed, tau, &mut sc.y);
    let f_y = ctx
        .objective
        .value(&sc.y)
        .expect("checked: the loss extends");
    ctx.objective.grad(&sc.y, &mut sc.g);
    pathwise(ctx, &sc.y, &sc.g, tau, out);
    for (o, s) in out.iter_mut().zip(&draw.score) {
        *o = f_y * s - *o;
    }
    add_conditional_pathwise(ctx, draw, &sc.y, &sc.g, tau, 1.0, out);
}

/// `(eta, tau)` of a cell: the warm-up's, else the flags', else the defaults.
fn parameters(ctx: &Context) -> (f64, f64) {
    if let Some(w) = &ctx.warm {
        return (w.params[0], w.params[1]);
    }
    (
        ctx.settings.rebar_eta.unwrap_or(1.0),
        ctx.settings.rebar_tau.unwrap_or(ctx.tau),
    )
}

impl Estimator for Rebar {
    fn id(&self) -> &'static str {
        "rebar"
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
    fn loss_evaluations(&self, _ctx: &Context, s: u32) -> f64 {
        3.0 * f64::from(s)
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
        let set = &ctx.settings;
        let (mut eta, tau) = parameters(ctx);
        let (tune_eta, tune_tau) = (set.rebar_eta.is_none(), set.rebar_tau.is_none());
        let steps = set.warmup;
        if !(tune_eta || tune_tau) || steps == 0 {
            return Some(WarmUp {
                params: vec![eta, tau],
                evaluations: 0.0,
                report: format!(
                    "rebar: eta {eta:.4}, tau {tau:.4} ({}; no warm-up)",
                    if steps == 0 {
                        "--warmup 0"
                    } else {
                        "fixed by flags"
                    }
                ),
            });
        }
        let n = ctx.dim();
        let draws = s.min(WARMUP_DRAWS);
        let log_p = log_probs(ctx);
        let table = JointRelaxedTable::new(&ctx.logits, ctx.k, ctx.tau);
        let (mut draw, mut sc) = (Draw::new(ctx), Scratch::new(ctx));
        let (mut c0, mut cp, mut cm) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        let mut log_tau = tau.ln();
        let mut adam = Adam::new(1, LEARNING_RATE);
        let (mut ac, mut cc) = (0.0, 0.0);
        for r in 0..steps {
            let noise = noise_for_rep(r);
            let (mut d_log_tau, mut step_ac, mut step_cc) = (0.0, 0.0, 0.0);
            let tau = log_tau.exp();
            for i in 0..draws {
                draw.sample(ctx, &table, &log_p, &noise, i, &mut sc);
                control_variate(ctx, &draw, tau, &mut sc, &mut c0);
                control_variate(ctx, &draw, tau * LOG_TAU_STEP.exp(), &mut sc, &mut cp);
                control_variate(ctx, &draw, tau * (-LOG_TAU_STEP).exp(), &mut sc, &mut cm);
                // g = A - eta C with A = f(b) s; d||g||^2 / d log tau = -2 eta g . dC.
                for j in 0..n {
                    let a = draw.f * draw.score[j];
                    let g = a - eta * c0[j];
                    d_log_tau += -2.0 * eta * g * (cp[j] - cm[j]) / (2.0 * LOG_TAU_STEP);
                    step_ac += a * c0[j];
                    step_cc += c0[j] * c0[j];
                }
            }
            let inv = 1.0 / f64::from(draws);
            if tune_eta {
                // E||A - eta C||^2 is least at eta = E[A . C] / E[C . C] (E C = 0).
                ac = ETA_DECAY * ac + (1.0 - ETA_DECAY) * step_ac * inv;
                cc = ETA_DECAY * cc + (1.0 - ETA_DECAY) * step_cc * inv;
                if cc > 0.0 {
                    eta = (ac / cc).clamp(ETA_RANGE.0, ETA_RANGE.1);
                }
            }
            if tune_tau {
                let mut params = [log_tau];
                adam.step(&mut params, &[d_log_tau * inv]);
                log_tau = params[0].clamp(TAU_RANGE.0.ln(), TAU_RANGE.1.ln());
            }
        }
        let tau = log_tau.exp();
        let evaluations = f64::from(steps) * f64::from(draws) * 7.0;
        Some(WarmUp {
            params: vec![eta, tau],
            evaluations,
            report: format!(
                "rebar warm-up at S = {s}: {steps} steps of {draws} draws on repetitions past the measured ones ({evaluations} loss evaluations, not counted): eta {eta:.4}{}, tau {tau:.4}{}",
                if tune_eta { "" } else { " (fixed)" },
                if tune_tau { "" } else { " (fixed)" },
            ),
        })
    }
    fn estimate(&self, ctx: &Context, d: &JointDraws<'_>, _: f64, out: &mut [f64]) -> Option<f64> {
        let (l, n) = (ctx.l, ctx.dim());
        let (eta, tau) = parameters(ctx);
        let log_p = log_probs(ctx);
        let (mut draw, mut sc) = (Draw::new(ctx), Scratch::new(ctx));
        let mut c = vec![0.0; n];
        out.iter_mut().for_each(|o| *o = 0.0);
        for (z, g) in d.z.chunks_exact(l).zip(d.perturbed.chunks_exact(n)) {
            draw.perturbed.copy_from_slice(g);
            draw.z.copy_from_slice(z);
            draw.complete(ctx, &log_p);
            control_variate(ctx, &draw, tau, &mut sc, &mut c);
            for ((o, s), cj) in out.iter_mut().zip(&draw.score).zip(&c) {
                *o += draw.f * s - eta * cj;
            }
        }
        let inv = 1.0 / d.s as f64;
        out.iter_mut().for_each(|o| *o *= inv);
        None
    }
}
