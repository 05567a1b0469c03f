//! The gradient estimators, one module each with its formula in the doc comment, and the
//! registry that names them. Adding an estimator is adding one file here plus one line in
//! [`REGISTRY`].
//!
//! Every estimate is of the gradient with respect to the logits (`L*K` numbers `g`,
//! variable-major); the gradient with respect to W is the outer product `x^T g` (see
//! `docs/estimators.md`).
//!
//! One trait, [`Estimator`], is where an estimator lives:
//! - the **generic path**, [`Estimator::estimate`], maps a batch of S joint draws (the
//!   categories of every variable, their losses, and for the relaxed family the relaxed
//!   samples) to one S-draw estimate, on any problem and any loss where it is defined;
//! - its **exact moments** come from the linear form it declares ([`Estimator::linear_form`]),
//!   which the oracles of [`crate::oracle`] turn into moments for any L;
//! - its **lowerings** ([`Estimator::lowering`]) describe, as data, the fast paths it can run
//!   on: with one variable, the score-function family reads only per-repetition category
//!   counts ([`Estimator::estimate_from_counts`]), and the relaxed family under a quadratic
//!   loss only the sums of [`RelaxedMoments`] ([`Estimator::add_relaxed_sum`]). The CPU and
//!   GPU engines take their fast kernels from this data, never from ids; a test shows each
//!   lowered path equals the generic path on the same draws.
//!
//! [`estimate_one`] (in `apply.rs`) is the one place an estimator is applied to a
//! repetition's draws, in whichever form its path reads them; the engine and training share it.

mod apply;
mod arsm;
mod conditional;
mod disarm;
mod exact;
mod gumbel_rao;
mod gumbel_softmax;
mod indecater;
mod muprop;
mod muprop_c;
mod rebar;
mod reinforce;
mod reinforce_ema;
mod reinmax;
mod relax;
mod relaxed_reps;
mod rloo;
mod st;
mod st_gumbel;
mod sum_and_sample;
mod unordered_set;

pub use apply::{
    estimate_at, estimate_at_with, estimate_one, reads_draws, relaxed_moments, warmed_baseline,
    warmed_counts_baselines, DrawBuffers, DrawSource,
};
pub use arsm::Arsm;
pub use disarm::Disarm;
pub use exact::Exact;
pub use gumbel_rao::GumbelRao;
pub use gumbel_softmax::GumbelSoftmax;
pub use indecater::Indecater;
pub use muprop::Muprop;
pub use muprop_c::MupropC;
pub use rebar::Rebar;
pub use reinforce::Reinforce;
pub use reinforce_ema::ReinforceEma;
pub use reinmax::ReinMax;
pub use relax::Relax;
pub use relaxed_reps::{relaxed_sums_reps, with_scratch, RelaxedReps, RELAXED_REPS};
pub use rloo::Rloo;
pub use st::{average_with_table_batch, StraightThrough, TableCache};
pub use st_gumbel::StGumbel;
pub use sum_and_sample::SumAndSample;
pub use unordered_set::{set_block, set_integrals, SetIntegrals, UnorderedSet, QUADRATURE_STEP};

use crate::error::{Error, Result};
use crate::loss::{Loss, Quadratic};
use crate::objective::{Objective, VertexFinish};
use crate::oracle::{self, ExactKind};
use crate::problem::Problem;

/// Every estimator, in the order sweeps and plots show them.
pub static REGISTRY: &[&dyn Estimator] = &[
    &Exact,
    &Reinforce,
    &ReinforceEma,
    &Rloo,
    &Muprop,
    &MupropC,
    &GumbelSoftmax,
    &StGumbel,
    &Arsm,
    &Disarm,
    &UnorderedSet,
    &SumAndSample,
    &Indecater,
    &StraightThrough,
    &GumbelRao,
    &ReinMax,
    &Rebar,
    &Relax,
];

/// Decay of the exponential moving averages used as baselines (`reinforce-ema`, `muprop-c`).
pub const EMA_DECAY: f64 = 0.9;

/// Looks an estimator up by id.
///
/// # Errors
/// [`Error::Unknown`] listing the known ids.
pub fn by_id(id: &str) -> Result<&'static dyn Estimator> {
    REGISTRY
        .iter()
        .copied()
        .find(|e| e.id() == id)
        .ok_or_else(|| Error::Unknown {
            kind: "estimator",
            name: id.to_string(),
            known: ids().join(", "),
        })
}

/// The registry's estimators defined on `problem` under every loss of `losses` (those whose
/// [`Estimator::check`] passes: `disarm` needs K = 2, for one), in registry order.
pub fn defined_on(problem: &Problem, losses: &[Loss], tau: f64) -> Vec<&'static dyn Estimator> {
    let contexts: Vec<Context> = losses
        .iter()
        .map(|&l| Context::new(problem, l, tau))
        .collect();
    REGISTRY
        .iter()
        .copied()
        .filter(|e| contexts.iter().all(|c| e.check(c).is_ok()))
        .collect()
}

/// The ids of the registry, in order.
pub fn ids() -> Vec<&'static str> {
    REGISTRY.iter().map(|e| e.id()).collect()
}

/// Which draws an estimator reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// Reads each draw's categories (one uniform per variable and draw).
    ScoreFunction,
    /// Reads each draw's Gumbel noise (K uniforms per variable and draw).
    Relaxed,
}

/// The learning signal of a score-function estimator's linear form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Signal {
    /// `f(z)`.
    Loss,
    /// MuProp's residual `f(z) - f(p) - grad f(p) . (y_z - p)` (mean-field point `p`).
    MupropResidual,
}

/// The baseline a score-function estimator subtracts from its signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Baseline {
    /// None.
    None,
    /// A bias-corrected moving average of earlier repetitions' mean signal.
    MovingAverage,
    /// The mean signal of the other S - 1 draws (the estimate scales by `1/(S-1)`).
    LeaveOneOut,
}

/// The deterministic term a score-function estimator adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Constant {
    /// None.
    None,
    /// MuProp's mean-field term `J_l grad_l f(p)`.
    MeanField,
    /// The exact gradient itself (the `exact` estimator: no draws read).
    ExactGradient,
}

/// A fast path an estimator can run on, as data (the engines build their kernels from it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lowering {
    /// `scale sum_i (L(z_i) - b) (e_{z_i} - p) + c`: with one variable it reads only the
    /// category counts of a repetition.
    ScoreFunction {
        /// The signal `L` (`None`: no draws, as `exact`).
        signal: Option<Signal>,
        /// The baseline `b`.
        baseline: Baseline,
        /// The constant `c`.
        constant: Constant,
    },
    /// `(1/tau) J(y) grad f(v)`, `v = y` (soft) or the hard draw (straight-through): under a
    /// quadratic loss with one variable it reads only the sums of [`RelaxedMoments`].
    Relaxed {
        /// Whether the loss's gradient is taken at the hard draw.
        straight_through: bool,
    },
    /// `(1/S) sum_k n_k g(e_k)`: the average of a per-draw estimate that depends only on the
    /// drawn category (`st`, `reinmax`): with one variable it reads only the category counts
    /// of a repetition ([`Estimator::estimate_from_counts`]), on the CPU engine and on the GPU's
    /// counts kernels (which read `g(e_k)` of every k, `crate::gpu::params::hard_draw_cell`).
    HardDraw,
}

/// A per-variable conditional form of an estimator's generic estimate, as data: the GPU
/// engine's generic path runs it as a kernel of its own (`shaders/indecater.wgsl`), the CPU
/// engine through [`Estimator::estimate`]. Unlike a [`Lowering`] it reads the joint draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Conditional {
    /// `g_hat_lj = (1/S) sum_i p_lj (f(z_{i,-l}, j) - sum_c p_lc f(z_{i,-l}, c))` (IndeCateR):
    /// it reads only the sums over the draws `F_lj = sum_i f(z_{i,-l}, j)`, as
    /// `p_lj (F_lj - sum_c p_lc F_lc) / S`.
    EveryCategory,
    /// `unordered-set` (Kool et al. 2020, [`UnorderedSet`]): per variable, a set of
    /// `min(S, K)` categories by Gumbel-top-k from the repetition's auxiliary uniforms and the
    /// losses `f(z_{0,-l}, c)` of its members; the GPU engine runs it as its own kernels
    /// (`shaders/unordered_set.wgsl`, `shaders/unordered_set_terms.wgsl`).
    UnorderedSet,
}

/// The per-draw form `g_hat(z) = (A(z) - [centred] E A) (e_{z_l} - p_l) + c` whose moments the
/// oracles compute, exactly where the problem allows (see [`crate::oracle`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LinearForm {
    /// The signal `A`.
    pub signal: Signal,
    /// Whether `A` is centred by its exact mean (the ideal constant baseline).
    pub centred: bool,
    /// The constant `c`.
    pub constant: Constant,
}

/// The estimators' own settings (command-line flags), shared by every estimator of a sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Conditional Gumbel draws per hard draw of `gumbel-rao` (`--gr-samples`).
    pub gr_samples: u32,
    /// Categories summed exactly by `sum-and-sample` (`--rb-k`).
    pub rb_k: usize,
    /// REBAR's control-variate scale `eta` (`--rebar-eta`); `None`: chosen in the warm-up.
    pub rebar_eta: Option<f64>,
    /// REBAR's relaxation temperature (`--rebar-tau`); `None`: chosen in the warm-up.
    pub rebar_tau: Option<f64>,
    /// Repetitions of the warm-up that tunes REBAR's and RELAX's parameters before the
    /// measured repetitions (reported, not counted in the measurement).
    pub warmup: u32,
    /// Repetitions that warm up a moving-average baseline (`reinforce-ema`, `muprop-c`)
    /// before the measured repetitions (`--baseline-warmup`): the baseline enters the first
    /// measured repetition as the average of these, not at 0. See [`warmed_baseline`].
    pub baseline_warmup: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            gr_samples: 10,
            rb_k: 1,
            rebar_eta: None,
            rebar_tau: None,
            warmup: 200,
            baseline_warmup: DEFAULT_BASELINE_WARMUP,
        }
    }
}

/// MuProp's mean-field quantities at `y = p`, where the loss extends off the vertices.
#[derive(Clone, Debug, PartialEq)]
pub struct MeanField {
    /// `f(p)`.
    pub value: f64,
    /// `grad f(p)`, L*K numbers.
    pub grad: Vec<f64>,
    /// `grad f(p) . p_l` per variable, L numbers.
    pub grad_dot_p: Vec<f64>,
    /// `J_l grad_l f(p)` with `J_l = diag(p_l) - p_l p_l^T`, L*K numbers.
    pub jacobian_term: Vec<f64>,
}

/// Everything an estimator needs to know about one (problem, loss, temperature).
#[derive(Clone, Debug)]
pub struct Context {
    /// Number of variables L.
    pub l: usize,
    /// Categories per variable K.
    pub k: usize,
    /// Logits `a = xW`, L*K numbers.
    pub logits: Vec<f64>,
    /// Probabilities `p_l = softmax(a_l)`, L*K numbers.
    pub p: Vec<f64>,
    /// The loss.
    pub loss: Loss,
    /// The loss bound to the problem's data.
    pub objective: Objective,
    /// The loss as a quadratic form, for the quadratic losses.
    pub quad: Option<Quadratic>,
    /// With one variable, `f_k = f(e_k)` (K numbers); empty for L > 1.
    pub f: Vec<f64>,
    /// The objective `E f(z)` (exact, or the reference's estimate).
    pub fbar: f64,
    /// The gradient `dE f / da` (L*K numbers): exact, or a Monte Carlo reference.
    pub grad: Vec<f64>,
    /// Whether `grad` is exact or a reference.
    pub grad_kind: ExactKind,
    /// Standard errors of a reference `grad` (L*K numbers); `None` where exact.
    pub grad_se: Option<Vec<f64>>,
    /// Gumbel-softmax temperature.
    pub tau: f64,
    /// The estimators' own settings.
    pub settings: Settings,
    /// MuProp's mean-field point, where the loss extends off the vertices.
    pub mean_field: Option<MeanField>,
    /// With one variable, MuProp's learning signal per category,
    /// `f_k - f(p) - grad f(p) . (e_k - p)` (K numbers); empty otherwise.
    pub muprop_signal: Vec<f64>,
    /// MuProp's deterministic term `J_l grad_l f(p)` (L*K numbers; zeros without extension).
    pub muprop_mean_field: Vec<f64>,
    /// The parameters a warm-up tuned for this cell ([`Estimator::warm_up`]); `None` outside
    /// a cell that warmed up.
    pub warm: Option<std::sync::Arc<WarmUp>>,
    /// A table an estimator builds from this context once and reuses across its estimates
    /// (ReinMax's per-(variable, category) blocks; see [`TableCache`]).
    pub table_cache: TableCache,
}

/// What an estimator's warm-up ([`Estimator::warm_up`]) tuned before the measured
/// repetitions: its parameters, its cost, and a one-line report. Not part of the measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct WarmUp {
    /// The tuned parameters, in the estimator's own layout.
    pub params: Vec<f64>,
    /// Loss evaluations the warm-up spent (not counted in `loss_evaluations`).
    pub evaluations: f64,
    /// One line saying what was tuned, on how many draws, and to what.
    pub report: String,
}

impl Context {
    /// The context of `problem` under `loss` at temperature `tau`.
    ///
    /// # Panics
    /// If the problem lacks the loss's fields ([`Problem::check_loss`] says so first).
    pub fn new(problem: &Problem, loss: Loss, tau: f64) -> Self {
        Self::at_logits(problem, &problem.logits(), loss, tau)
    }

    /// [`Context::new`] with the problem's logits `a = xW` already computed (several losses
    /// of one problem share them).
    ///
    /// # Panics
    /// As [`Context::new`], and if `a` does not hold L*K numbers.
    pub fn at_logits(problem: &Problem, a: &[f64], loss: Loss, tau: f64) -> Self {
        let objective = Objective::new(problem, loss);
        Self::with_objective(problem.l, problem.k, a, objective, tau, true)
    }

    /// [`Context::new`] without running the oracle for several variables: `fbar` and `grad`
    /// are NaN until [`Context::set_logits`] asks for the truth (see there).
    ///
    /// # Panics
    /// As [`Context::new`].
    pub fn without_oracle(problem: &Problem, loss: Loss, tau: f64) -> Self {
        let objective = Objective::new(problem, loss);
        Self::with_objective(
            problem.l,
            problem.k,
            &problem.logits(),
            objective,
            tau,
            false,
        )
    }

    /// The context of one variable's logits `a` and target `t` under a quadratic `loss` at
    /// temperature `tau` (training's per-input context).
    pub fn from_logits(a: &[f64], t: &[f64], loss: Loss, tau: f64) -> Self {
        let mut problem = Problem::free_logits(1, a.len(), a.to_vec());
        problem.t = t.to_vec();
        Self::with_objective(1, a.len(), a, Objective::new(&problem, loss), tau, true)
    }

    fn with_objective(
        l: usize,
        k: usize,
        a: &[f64],
        objective: Objective,
        tau: f64,
        truth: bool,
    ) -> Self {
        let loss = objective.loss;
        let quad = objective.quadratic().cloned();
        let mean_field = objective.has_extension().then(|| MeanField {
            value: 0.0,
            grad: vec![0.0; l * k],
            grad_dot_p: vec![0.0; l],
            jacobian_term: vec![0.0; l * k],
        });
        let mut ctx = Self {
            l,
            k,
            logits: Vec::with_capacity(l * k),
            p: vec![0.0; l * k],
            loss,
            objective,
            quad,
            f: Vec::new(),
            fbar: 0.0,
            grad: Vec::new(),
            grad_kind: ExactKind::Exact,
            grad_se: None,
            tau,
            settings: Settings::default(),
            mean_field,
            muprop_signal: Vec::new(),
            muprop_mean_field: vec![0.0; l * k],
            warm: None,
            table_cache: TableCache::default(),
        };
        if l == 1 {
            // One variable: the K vertex values give everything in closed form.
            ctx.f = match &ctx.quad {
                Some(q) => q.vertex_values(),
                None => (0..k as u32)
                    .map(|c| ctx.objective.at_vertex(&[c]))
                    .collect(),
            };
        }
        ctx.set_logits(a, truth);
        ctx
    }

    /// Moves the context to the logits `a` (L*K numbers) in place, without allocating once
    /// its buffers exist: the probabilities, MuProp's mean field and, with one variable, the
    /// exact objective and gradient (K numbers: always computed). With several variables the
    /// objective and gradient come from [`oracle::gradient`] when `truth` is set; otherwise
    /// `fbar` and `grad` are NaN (so that nothing can read a stale value) and `grad_kind`
    /// says what the oracle would give ([`ExactKind::Reference`] where it has no exact
    /// method). The optimisation loop ([`crate::optimise`]) moves one context along its
    /// trajectory this way, asking for the truth only where it needs it.
    ///
    /// # Panics
    /// If `a` does not hold L*K numbers.
    pub fn set_logits(&mut self, a: &[f64], truth: bool) {
        let (l, k) = (self.l, self.k);
        assert_eq!(a.len(), l * k, "the logits must be L*K numbers");
        self.logits.clear();
        self.logits.extend_from_slice(a);
        self.p.resize(l * k, 0.0);
        for (al, pl) in a.chunks(k).zip(self.p.chunks_mut(k)) {
            softmax_into(al, pl);
        }
        if let Some(m) = self.mean_field.as_mut() {
            self.objective.grad(&self.p, &mut m.grad);
            for ((dot, g), pl) in m
                .grad_dot_p
                .iter_mut()
                .zip(m.grad.chunks(k))
                .zip(self.p.chunks(k))
            {
                *dot = g.iter().zip(pl).map(|(a, b)| a * b).sum();
            }
            for ((out, pl), gl) in m
                .jacobian_term
                .chunks_mut(k)
                .zip(self.p.chunks(k))
                .zip(m.grad.chunks(k))
            {
                jacobian_product_into(pl, gl, out);
            }
            m.value = self
                .objective
                .value(&self.p)
                .expect("the loss extends off the vertices");
            self.muprop_mean_field.copy_from_slice(&m.jacobian_term);
        }
        if l == 1 {
            self.fbar = self.p.iter().zip(&self.f).map(|(a, b)| a * b).sum();
            self.grad.resize(k, 0.0);
            for ((g, pj), fj) in self.grad.iter_mut().zip(&self.p).zip(&self.f) {
                *g = pj * (fj - self.fbar);
            }
            if let Some(m) = &self.mean_field {
                let gp_dot_p = m.grad_dot_p[0];
                self.muprop_signal.resize(k, 0.0);
                for ((out, fk), gk) in self.muprop_signal.iter_mut().zip(&self.f).zip(&m.grad) {
                    *out = fk - m.value - (gk - gp_dot_p);
                }
            }
        } else if truth {
            let truth = oracle::gradient(self);
            self.fbar = truth.objective;
            self.grad = truth.grad;
            self.grad_kind = truth.kind;
            self.grad_se = truth.se;
        } else {
            self.fbar = f64::NAN;
            self.grad.resize(l * k, 0.0);
            self.grad.iter_mut().for_each(|g| *g = f64::NAN);
            self.grad_kind = if oracle::method(self) == oracle::Method::Reference {
                ExactKind::Reference
            } else {
                ExactKind::Exact
            };
            self.grad_se = None;
        }
    }

    /// `L * K`, the number of gradient coordinates.
    pub fn dim(&self) -> usize {
        self.l * self.k
    }

    /// MuProp's residual at the joint vertex `z` with loss `f`:
    /// `f - f(p) - sum_l (grad f(p)[l, z_l] - grad_l f(p) . p_l)`.
    ///
    /// # Panics
    /// Without a mean field (a loss with no extension).
    #[inline]
    pub fn muprop_residual(&self, z: &[u32], f: f64) -> f64 {
        let m = self
            .mean_field
            .as_ref()
            .expect("MuProp needs the loss's extension");
        let k = self.k;
        let lin: f64 = z
            .iter()
            .enumerate()
            .map(|(l, &c)| m.grad[l * k + c as usize] - m.grad_dot_p[l])
            .sum();
        f - m.value - lin
    }
}

/// `(diag(y) - y y^T) v`, the softmax Jacobian times `v`, in O(K).
pub fn jacobian_product(y: &[f64], v: &[f64]) -> Vec<f64> {
    let yv: f64 = y.iter().zip(v).map(|(a, b)| a * b).sum();
    y.iter().zip(v).map(|(yj, vj)| yj * (vj - yv)).collect()
}

/// [`jacobian_product`] into `out` (the same arithmetic, no allocation).
pub fn jacobian_product_into(y: &[f64], v: &[f64], out: &mut [f64]) {
    let yv: f64 = y.iter().zip(v).map(|(a, b)| a * b).sum();
    for ((o, yj), vj) in out.iter_mut().zip(y).zip(v) {
        *o = yj * (vj - yv);
    }
}

/// [`crate::problem::softmax`] of `a` into `out` (the same arithmetic, no allocation).
fn softmax_into(a: &[f64], out: &mut [f64]) {
    let max = a.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    for (o, &v) in out.iter_mut().zip(a) {
        *o = (v - max).exp();
    }
    let sum: f64 = out.iter().sum();
    out.iter_mut().for_each(|v| *v /= sum);
}

/// Moments of an estimator's S-draw average, exact (see [`crate::oracle`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ExactMoments {
    /// Expected estimate, L*K numbers.
    pub mean: Vec<f64>,
    /// Per-coordinate variance of the S-draw average.
    pub var: Vec<f64>,
    /// Per-coordinate fourth central moment of the S-draw average, where known.
    pub m4: Option<Vec<f64>>,
}

/// The exact moments of the S-draw average of a single-draw estimate of the form
/// `g(e_k) = L_k (e_k - p) + c`:
/// `E g_j = sum_k p_k g_j(e_k)`, `Var_j = sum_k p_k (g_j(e_k) - E g_j)^2 / S`, and the fourth
/// central moment of a mean of S iid terms, `(mu4 + 3 (S - 1) sigma^4) / S^3`.
pub fn linear_form_moments(p: &[f64], signal: &[f64], c: &[f64], s: u32) -> ExactMoments {
    let k = p.len();
    let s = f64::from(s);
    let value = |cat: usize, j: usize| signal[cat] * (f64::from(u8::from(cat == j)) - p[j]) + c[j];
    let mut mean = vec![0.0; k];
    let mut var = vec![0.0; k];
    let mut m4 = vec![0.0; k];
    for j in 0..k {
        let mu: f64 = (0..k).map(|cat| p[cat] * value(cat, j)).sum();
        let (mut m2, mut q4) = (0.0, 0.0);
        for (cat, pc) in p.iter().enumerate() {
            let d = value(cat, j) - mu;
            m2 += pc * d * d;
            q4 += pc * d * d * d * d;
        }
        mean[j] = mu;
        var[j] = m2 / s;
        m4[j] = (q4 + 3.0 * (s - 1.0) * m2 * m2) / (s * s * s);
    }
    ExactMoments {
        mean,
        var,
        m4: Some(m4),
    }
}

/// `sum_k counts_k signal_k (e_k - p)_j` for every j, in O(K):
/// `counts_j signal_j - p_j sum_k counts_k signal_k`.
pub fn score_sum(counts: &[u32], signal: impl Fn(usize) -> f64, p: &[f64], out: &mut [f64]) {
    let mut total = 0.0;
    for (j, (&n, o)) in counts.iter().zip(out.iter_mut()).enumerate() {
        let w = f64::from(n) * signal(j);
        *o = w;
        total += w;
    }
    for (o, pj) in out.iter_mut().zip(p) {
        *o -= pj * total;
    }
}

/// Most repetitions in one call of [`estimate_counts_batch`].
pub const COUNTS_BATCH: usize = 64;

/// The counts lowering ([`Lowering::ScoreFunction`], one variable) of `estimator` for a batch
/// of `n <= COUNTS_BATCH` repetitions at once, vectorised across repetitions (AVX2 where
/// present): `counts` holds their category counts in f64, category-major (count of category
/// `j` of repetition `r` at `counts[j * stride + r]`, see [`transpose_counts`]), `out` receives
/// their estimates coordinate-major (`out[j * COUNTS_BATCH + r]`; so `&mut batch[i..]` puts
/// them at columns `i..i + n` of a batch of COUNTS_BATCH columns), and a moving-average
/// baseline is read and updated repetition by repetition.
///
/// Bit for bit each repetition's [`Estimator::estimate_from_counts`] (and
/// [`Estimator::baseline_signal`]) of the estimators with this lowering (a test compares
/// them): with signal `L_k` (`f_k`, or MuProp's `ctx.muprop_signal`) and baseline `b`,
/// `w_k = n_k (L_k - b)`, `out_j = (w_j - p_j sum_k w_k) scale + c_j` ([`score_sum`]), where
/// `b` is the moving average, the mean `sum_k n_k L_k / S` (leave-one-out, scale `1/(S-1)`),
/// or none (scale `1/S`).
///
/// # Panics
/// For an estimator without a score-function lowering, or `n` out of range.
#[allow(clippy::too_many_arguments)]
pub fn estimate_counts_batch(
    estimator: &dyn Estimator,
    ctx: &Context,
    counts: &[f64],
    stride: usize,
    n: usize,
    s: u32,
    baseline: &mut MovingAverage,
    out: &mut [f64],
) {
    let Some(Lowering::ScoreFunction {
        signal,
        baseline: kind,
        constant,
    }) = estimator.lowering()
    else {
        panic!("{} has no score-function lowering", estimator.id());
    };
    let k = ctx.k;
    assert!(
        (1..=COUNTS_BATCH).contains(&n) && n <= stride && out.len() >= (k - 1) * COUNTS_BATCH + n
    );
    assert!(counts.len() >= (k - 1) * stride + n);
    let sig: &[f64] = match (signal, constant) {
        (_, Constant::ExactGradient) | (None, _) => {
            for (j, &g) in ctx.grad[..k].iter().enumerate() {
                out[j * COUNTS_BATCH..j * COUNTS_BATCH + n]
                    .iter_mut()
                    .for_each(|o| *o = g);
            }
            return;
        }
        (Some(Signal::Loss), _) => &ctx.f,
        (Some(Signal::MupropResidual), _) => &ctx.muprop_signal,
    };
    let c: &[f64] = match constant {
        Constant::MeanField => &ctx.muprop_mean_field,
        _ => &[],
    };
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[allow(clippy::too_many_arguments)]
    fn avx2(
        sig: &[f64],
        p: &[f64],
        c: &[f64],
        kind: Baseline,
        counts: (&[f64], usize, usize),
        s: u32,
        baseline: &mut MovingAverage,
        out: &mut [f64],
    ) {
        if counts.2 == COUNTS_BATCH {
            counts_batch_lanes::<true>(sig, p, c, kind, counts, s, baseline, out);
        } else {
            counts_batch_lanes::<false>(sig, p, c, kind, counts, s, baseline, out);
        }
    }
    let counts = (counts, stride, n);
    #[cfg(target_arch = "x86_64")]
    if crate::fastmath::has_avx2() {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx2(sig, &ctx.p, c, kind, counts, s, baseline, out) };
    }
    if n == COUNTS_BATCH {
        counts_batch_lanes::<true>(sig, &ctx.p, c, kind, counts, s, baseline, out);
    } else {
        counts_batch_lanes::<false>(sig, &ctx.p, c, kind, counts, s, baseline, out);
    }
}

/// The counts of `reps` repetitions (`reps * K`, repetition-major) in f64, category-major
/// (`out[j * reps + r]`), as [`estimate_counts_batch`] reads them.
pub fn transpose_counts(counts: &[u32], k: usize, out: &mut Vec<f64>) {
    let reps = counts.len() / k.max(1);
    out.clear();
    out.resize(reps * k, 0.0);
    transpose_counts_strided(counts, k, reps, out);
}

/// [`transpose_counts`] into rows `stride >= reps` numbers apart: `out[j * stride + r]` for
/// `r < reps` (the rest of `out` is left as it is). Written eight repetitions (one cache line
/// of each row) at a time.
///
/// # Panics
/// If `stride < reps` or `out` is shorter than `(K - 1) * stride + reps`.
pub fn transpose_counts_strided(counts: &[u32], k: usize, stride: usize, out: &mut [f64]) {
    const T: usize = 8;
    let reps = counts.len() / k.max(1);
    if reps == 0 || k == 0 {
        return;
    }
    assert!(stride >= reps && out.len() >= (k - 1) * stride + reps);
    let full = reps / T * T;
    for r0 in (0..full).step_by(T) {
        let tile = &counts[r0 * k..(r0 + T) * k];
        for j in 0..k {
            let row = &mut out[j * stride + r0..j * stride + r0 + T];
            for (l, o) in row.iter_mut().enumerate() {
                *o = f64::from(tile[l * k + j]);
            }
        }
    }
    for r in full..reps {
        for j in 0..k {
            out[j * stride + r] = f64::from(counts[r * k + j]);
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
fn counts_batch_lanes<const FULL: bool>(
    sig: &[f64],
    p: &[f64],
    c: &[f64],
    kind: Baseline,
    (counts, stride, n): (&[f64], usize, usize),
    s: u32,
    baseline: &mut MovingAverage,
    out: &mut [f64],
) {
    const B: usize = COUNTS_BATCH;
    // A full batch with a constant n: every loop below is then whole vectors.
    let n = if FULL { B } else { n };
    let k = sig.len();
    let count_row = |j: usize| &counts[j * stride..j * stride + n];
    // The per-repetition baseline: sum_k n_k L_k / S where the estimator needs it.
    let mut b = [0f64; B];
    if kind != Baseline::None {
        let mut total = [-0.0f64; B];
        for j in 0..k {
            let row = count_row(j);
            for r in 0..n {
                total[r] += row[r] * sig[j];
            }
        }
        let sf = f64::from(s);
        for r in 0..n {
            b[r] = total[r] / sf;
        }
        if kind == Baseline::MovingAverage {
            // Serial: each repetition's baseline is the average of the earlier ones' signals.
            for r in 0..n {
                let signal = b[r];
                b[r] = baseline.value();
                baseline.push(signal);
            }
        }
    }
    let scale = if kind == Baseline::LeaveOneOut {
        1.0 / (f64::from(s) - 1.0)
    } else {
        1.0 / f64::from(s)
    };
    // w_j = n_j (L_j - b) and its total.
    let mut total = [0f64; B];
    for j in 0..k {
        let counts = count_row(j);
        let row = &mut out[j * B..j * B + n];
        let lj = sig[j];
        if kind == Baseline::None {
            for r in 0..n {
                row[r] = counts[r] * lj;
                total[r] += row[r];
            }
        } else {
            for r in 0..n {
                row[r] = counts[r] * (lj - b[r]);
                total[r] += row[r];
            }
        }
    }
    for j in 0..k {
        let row = &mut out[j * B..j * B + n];
        let pj = p[j];
        if c.is_empty() {
            for r in 0..n {
                row[r] = (row[r] - pj * total[r]) * scale;
            }
        } else {
            let cj = c[j];
            for r in 0..n {
                row[r] = (row[r] - pj * total[r]) * scale + cj;
            }
        }
    }
}

/// One relaxed draw, as the Gumbel estimators see it.
#[derive(Clone, Copy, Debug)]
pub struct RelaxedDraw<'a> {
    /// `y = softmax((a + G) / tau)`.
    pub y: &'a [f64],
    /// `argmax(a + G)`: the category the Gumbel-max trick draws.
    pub z: usize,
}

/// Adds one relaxed draw's estimate to `acc` through the relaxed-sums lowering (one
/// variable, quadratic loss).
pub fn add_relaxed_draw(
    estimator: &dyn Estimator,
    ctx: &Context,
    draw: RelaxedDraw<'_>,
    acc: &mut [f64],
) {
    let mut m = RelaxedMoments::new(ctx.k);
    m.add_draw(draw.y, draw.z);
    estimator.add_relaxed_sum(ctx, &m, acc);
}

/// Most draws in one [`RelaxedBatch`].
pub const RELAXED_BATCH: usize = 64;

/// Up to [`RELAXED_BATCH`] relaxed draws in structure-of-arrays form (`y` in f32, as drawn on
/// the GPU).
#[derive(Clone, Copy, Debug)]
pub struct RelaxedBatch<'a> {
    /// Number of draws n.
    pub n: usize,
    /// `y` of every draw, category-major: `y[c * n + d]` is `y_c` of draw d.
    pub y: &'a [f32],
    /// `z = argmax(a + G)` of every draw.
    pub z: &'a [u32],
    /// `y_z`, the relaxed weight of the drawn category, of every draw.
    pub y_z: &'a [f32],
}

/// What the relaxed estimators read of a set of draws. The losses are quadratic forms
/// (`grad f(y) = 2 alpha y + beta`), so a sum over draws of `y_c (v_c - y . v)` needs only
/// these sums (in f64), whatever the loss: the relaxed family's counterpart of the
/// score-function family's category counts, shared by every loss and relaxed estimator.
#[derive(Clone, Debug)]
pub struct RelaxedMoments {
    /// Number of categories K.
    pub k: usize,
    /// Number of draws.
    pub draws: u64,
    /// `sum_d y_c`.
    pub sum_y: Vec<f64>,
    /// `sum_d y_c y_c'`, K x K row-major.
    pub sum_yy: Vec<f64>,
    /// `sum_d y_c ||y||^2`.
    pub sum_y_norm_sq: Vec<f64>,
    /// `sum_d y_c y_z`.
    pub sum_y_yz: Vec<f64>,
    /// `sum_{d : z_d = c} y_c` (the relaxed weight where the hard draw landed).
    pub sum_hit: Vec<f64>,
    /// Scratch: a batch's `y` in f64, category-major, [`RELAXED_BATCH`] per category, then
    /// (AVX2 path) the rows `||y||^2` and `y_z`.
    scratch: Vec<f64>,
    /// Scratch for [`crate::estimators::apply::relaxed_moments`]: one batch of draws
    /// (`y` category-major, `z`, `y_z`), kept so that a repetition allocates nothing.
    pub(crate) draw_y: Vec<f32>,
    pub(crate) draw_z: Vec<u32>,
    pub(crate) draw_y_z: Vec<f32>,
}

impl RelaxedMoments {
    /// Empty sums for K categories.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            draws: 0,
            sum_y: vec![0.0; k],
            sum_yy: vec![0.0; k * k],
            sum_y_norm_sq: vec![0.0; k],
            sum_y_yz: vec![0.0; k],
            sum_hit: vec![0.0; k],
            scratch: vec![0.0; (k + 2) * RELAXED_BATCH],
            draw_y: vec![0.0; k * RELAXED_BATCH],
            draw_z: vec![0; RELAXED_BATCH],
            draw_y_z: vec![0.0; RELAXED_BATCH],
        }
    }

    /// `out[c] = sum_c' sum_yy[c][c'] b[c']`, each sum in the order `c' = 0, 1, ...` from
    /// `-0.0` (as `Iterator::sum`), for every c at once: by the symmetry of `sum_yy` (both
    /// halves receive the same additions, so they are equal bit for bit) row `c'` holds
    /// column `c'`, and the loop over c vectorises. `out` has K numbers.
    pub fn sum_yy_dot(&self, b: &[f64], out: &mut [f64]) {
        #[cfg(target_arch = "x86_64")]
        if self.k <= 16 && crate::fastmath::has_avx512() {
            #[target_feature(enable = "avx512f")]
            fn avx512(m: &RelaxedMoments, b: &[f64], out: &mut [f64]) {
                // SAFETY: compiled for AVX-512F, called only where the CPU has it; K <= 16.
                unsafe { m.sum_yy_dot_avx512(b, out) }
            }
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { avx512(self, b, out) };
        }
        #[cfg(target_arch = "x86_64")]
        if self.k <= 16 && crate::fastmath::has_avx2() {
            #[target_feature(enable = "avx2")]
            fn avx2(m: &RelaxedMoments, b: &[f64], out: &mut [f64]) {
                // SAFETY: compiled for AVX2, called only where the CPU has it; K <= 16.
                unsafe { m.sum_yy_dot_avx2(b, out) }
            }
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { avx2(self, b, out) };
        }
        self.sum_yy_dot_portable(b, out);
    }

    /// [`Self::sum_yy_dot`] for K <= 16 in AVX2: the K sums in four registers for the whole
    /// loop over rows (masked loads of each row; a sum kept in memory waited on its own store
    /// every row), the same additions in the same order (no fused multiply-add), so the same
    /// bits as [`Self::sum_yy_dot_portable`] (tested).
    ///
    /// # Safety
    /// The CPU must have AVX2, and K <= 16.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn sum_yy_dot_avx2(&self, b: &[f64], out: &mut [f64]) {
        use std::arch::x86_64::*;
        assert!(out.len() >= self.k);
        let masks = avx2_masks(self.k);
        let acc = self.sum_yy_dot_avx2_registers(b, &masks);
        for (j, a) in acc.iter().enumerate() {
            _mm256_maskstore_pd(out.as_mut_ptr().wrapping_add(4 * j), masks[j], *a);
        }
    }

    /// [`Self::sum_yy_dot_avx2`] left in its four registers (coordinate `4 j + i` in lane i
    /// of register j; lanes at or past K hold `-0.0`).
    ///
    /// # Safety
    /// The CPU must have AVX2, and K <= 16; `masks` are [`avx2_masks`] of K.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn sum_yy_dot_avx2_registers(
        &self,
        b: &[f64],
        masks: &[std::arch::x86_64::__m256i; 4],
    ) -> [std::arch::x86_64::__m256d; 4] {
        use std::arch::x86_64::*;
        let k = self.k;
        assert!(k <= 16 && b.len() >= k && self.sum_yy.len() == k * k);
        let mut acc = [_mm256_set1_pd(-0.0); 4];
        let rows = self.sum_yy.as_ptr();
        for (c2, &bc) in b[..k].iter().enumerate() {
            let bv = _mm256_set1_pd(bc);
            let r = rows.add(c2 * k);
            for (j, a) in acc.iter_mut().enumerate() {
                // In bounds: lanes at or past K are masked off (no access).
                let v = _mm256_maskload_pd(r.wrapping_add(4 * j), masks[j]);
                *a = _mm256_add_pd(*a, _mm256_mul_pd(v, bv));
            }
        }
        acc
    }

    /// [`Self::sum_yy_dot`] for K <= 16 in AVX-512F: the K sums in two registers for the
    /// whole loop over rows (masked loads of each row), the same additions in the same order
    /// (no fused multiply-add), so the same bits as [`Self::sum_yy_dot_portable`] (tested).
    ///
    /// # Safety
    /// The CPU must have AVX-512F, and K <= 16.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn sum_yy_dot_avx512(&self, b: &[f64], out: &mut [f64]) {
        use std::arch::x86_64::*;
        let k = self.k;
        assert!(k <= 16 && b.len() >= k && out.len() >= k && self.sum_yy.len() == k * k);
        let lo_mask: __mmask8 = if k >= 8 { 0xff } else { (1u8 << k) - 1 };
        let hi_mask: __mmask8 = if k >= 16 {
            0xff
        } else if k > 8 {
            (1u8 << (k - 8)) - 1
        } else {
            0
        };
        let mut lo = _mm512_set1_pd(-0.0);
        let mut hi = _mm512_set1_pd(-0.0);
        let rows = self.sum_yy.as_ptr();
        for (c2, &bc) in b[..k].iter().enumerate() {
            let bv = _mm512_set1_pd(bc);
            // In bounds: lanes past K are masked off (no access).
            let r = rows.add(c2 * k);
            let r_lo = _mm512_maskz_loadu_pd(lo_mask, r);
            let r_hi = _mm512_maskz_loadu_pd(hi_mask, r.add(8.min(k)));
            lo = _mm512_add_pd(lo, _mm512_mul_pd(r_lo, bv));
            hi = _mm512_add_pd(hi, _mm512_mul_pd(r_hi, bv));
        }
        _mm512_mask_storeu_pd(out.as_mut_ptr(), lo_mask, lo);
        _mm512_mask_storeu_pd(out.as_mut_ptr().add(8.min(k)), hi_mask, hi);
    }

    /// [`Self::sum_yy_dot`] in portable code (its reference, and the path of any K on any
    /// CPU; compiled for AVX2 where the CPU has it, the same bits, see
    /// [`crate::fastmath::has_avx2`]).
    #[inline(always)]
    fn sum_yy_dot_portable(&self, b: &[f64], out: &mut [f64]) {
        let k = self.k;
        let out = &mut out[..k];
        out.iter_mut().for_each(|o| *o = -0.0);
        for (row, &bc) in self.sum_yy.chunks_exact(k).zip(&b[..k]) {
            for (o, &v) in out.iter_mut().zip(row) {
                *o += v * bc;
            }
        }
    }

    /// Back to empty.
    pub fn clear(&mut self) {
        self.draws = 0;
        for v in [
            &mut self.sum_y,
            &mut self.sum_yy,
            &mut self.sum_y_norm_sq,
            &mut self.sum_y_yz,
            &mut self.sum_hit,
        ] {
            v.iter_mut().for_each(|x| *x = 0.0);
        }
    }

    /// Adds one draw (`y` and its argmax `z`).
    pub fn add_draw(&mut self, y: &[f64], z: usize) {
        let y32: Vec<f32> = y.iter().map(|&v| v as f32).collect();
        let batch = RelaxedBatch {
            n: 1,
            y: &y32,
            z: &[z as u32],
            y_z: &[y32[z]],
        };
        self.add_batch(&batch);
    }

    /// Adds a batch of draws; the loops run over draws and vectorise (AVX2 where present;
    /// the same results either way, see [`crate::fastmath::has_avx2`]).
    pub fn add_batch(&mut self, batch: &RelaxedBatch<'_>) {
        #[cfg(target_arch = "x86_64")]
        if crate::fastmath::has_avx2() {
            #[target_feature(enable = "avx2")]
            fn avx2(m: &mut RelaxedMoments, batch: &RelaxedBatch<'_>) {
                // SAFETY: compiled for AVX2, called only where the CPU has it.
                unsafe { m.add_batch_tiled(batch) }
            }
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { avx2(self, batch) };
        }
        self.add_batch_lanes(batch)
    }

    /// [`Self::add_batch`] in AVX2 intrinsics: the same sums to the last bit as
    /// [`Self::add_batch_lanes`] (tested), computed four dot products at a time. Every dot
    /// product of two rows is [`dot`]'s: eight lane sums over the chunks of eight, in chunk
    /// order, then the lanes summed in order, then the remainder's sum added. Here one row
    /// `y_c` meets four partner rows at once (its loads shared), and the four dots' lane
    /// sums are transposed so that the in-order lane sum runs on the four at once. The
    /// partners of `y_c` are `y_c..y_K`, `||y||^2` and `y_z` (rows K and K + 1 of the
    /// scratch).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn add_batch_tiled(&mut self, batch: &RelaxedBatch<'_>) {
        use std::arch::x86_64::*;
        let (n, k) = (batch.n, self.k);
        assert!(n <= RELAXED_BATCH && batch.y.len() >= k * n && batch.y_z.len() >= n);
        const B: usize = RELAXED_BATCH;
        let y = &mut self.scratch[..(k + 2) * B];
        // Rows K (||y||^2, summed over c in order from +0.0) and K + 1 (y_z), as in
        // `add_batch_lanes`.
        let (rows, extra) = y.split_at_mut(k * B);
        let (norm_sq, yz) = extra.split_at_mut(B);
        norm_sq[..n].iter_mut().for_each(|q| *q = 0.0);
        for c in 0..k {
            let yc = &mut rows[c * B..c * B + n];
            for ((v, &w), q) in yc
                .iter_mut()
                .zip(&batch.y[c * n..(c + 1) * n])
                .zip(&mut *norm_sq)
            {
                *v = f64::from(w);
                *q += *v * *v;
            }
        }
        for (v, &w) in yz.iter_mut().zip(&batch.y_z[..n]) {
            *v = f64::from(w);
        }
        let y = &self.scratch[..(k + 2) * B];
        let row = |c: usize| &y[c * B..c * B + n];
        let chunks = n / 8;
        for c in 0..k {
            let a = row(c);
            self.sum_y[c] += lane_sum(a);
            let mut p = c;
            while p < k + 2 {
                // Partners p..p + 4, the last repeated past the end (its results dropped).
                let part: [usize; 4] = std::array::from_fn(|t| (p + t).min(k + 1));
                let b = part.map(row);
                let mut lo = [_mm256_setzero_pd(); 4];
                let mut hi = [_mm256_setzero_pd(); 4];
                for i in 0..chunks {
                    let a0 = _mm256_loadu_pd(a.as_ptr().add(8 * i));
                    let a1 = _mm256_loadu_pd(a.as_ptr().add(8 * i + 4));
                    for t in 0..4 {
                        let b0 = _mm256_loadu_pd(b[t].as_ptr().add(8 * i));
                        let b1 = _mm256_loadu_pd(b[t].as_ptr().add(8 * i + 4));
                        lo[t] = _mm256_add_pd(lo[t], _mm256_mul_pd(a0, b0));
                        hi[t] = _mm256_add_pd(hi[t], _mm256_mul_pd(a1, b1));
                    }
                }
                // Transpose: lane j of every dot in one register, j = 0..7.
                #[inline(always)]
                unsafe fn transpose(r: [__m256d; 4]) -> [__m256d; 4] {
                    let t0 = _mm256_unpacklo_pd(r[0], r[1]);
                    let t1 = _mm256_unpackhi_pd(r[0], r[1]);
                    let t2 = _mm256_unpacklo_pd(r[2], r[3]);
                    let t3 = _mm256_unpackhi_pd(r[2], r[3]);
                    [
                        _mm256_permute2f128_pd::<0x20>(t0, t2),
                        _mm256_permute2f128_pd::<0x20>(t1, t3),
                        _mm256_permute2f128_pd::<0x31>(t0, t2),
                        _mm256_permute2f128_pd::<0x31>(t1, t3),
                    ]
                }
                let (l, h) = (transpose(lo), transpose(hi));
                // -0.0 + l0 is l0 exactly: the in-order sum of `dot` from its first lane.
                let mut sum = _mm256_add_pd(l[0], l[1]);
                sum = _mm256_add_pd(sum, l[2]);
                sum = _mm256_add_pd(sum, l[3]);
                sum = _mm256_add_pd(sum, h[0]);
                sum = _mm256_add_pd(sum, h[1]);
                sum = _mm256_add_pd(sum, h[2]);
                sum = _mm256_add_pd(sum, h[3]);
                let mut dots = [0f64; 4];
                _mm256_storeu_pd(dots.as_mut_ptr(), sum);
                if n % 8 != 0 {
                    for (d, bt) in dots.iter_mut().zip(b) {
                        let rest: f64 = a[8 * chunks..]
                            .iter()
                            .zip(&bt[8 * chunks..])
                            .map(|(x, y)| x * y)
                            .sum();
                        *d += rest;
                    }
                }
                for (t, &v) in dots.iter().enumerate().take(k + 2 - p) {
                    let c2 = p + t;
                    if c2 < k {
                        self.sum_yy[c * k + c2] += v;
                        if c2 != c {
                            self.sum_yy[c2 * k + c] += v;
                        }
                    } else if c2 == k {
                        self.sum_y_norm_sq[c] += v;
                    } else {
                        self.sum_y_yz[c] += v;
                    }
                }
                p += 4;
            }
        }
        add_hits(&mut self.sum_hit, batch.z, &y[(k + 1) * B..(k + 1) * B + n]);
        self.draws += n as u64;
    }

    /// [`Self::add_batch`] in portable code (the reference of the AVX2 path).
    #[inline(always)]
    fn add_batch_lanes(&mut self, batch: &RelaxedBatch<'_>) {
        let (n, k) = (batch.n, self.k);
        assert!(n <= RELAXED_BATCH);
        let mut norm_sq = [0f64; RELAXED_BATCH];
        let mut yz = [0f64; RELAXED_BATCH];
        let y = &mut self.scratch;
        for c in 0..k {
            let yc = &mut y[c * RELAXED_BATCH..c * RELAXED_BATCH + n];
            for ((v, &w), q) in yc
                .iter_mut()
                .zip(&batch.y[c * n..(c + 1) * n])
                .zip(&mut norm_sq)
            {
                *v = f64::from(w);
                *q += *v * *v;
            }
        }
        for (v, &w) in yz.iter_mut().zip(batch.y_z) {
            *v = f64::from(w);
        }
        let row = |c: usize| &y[c * RELAXED_BATCH..c * RELAXED_BATCH + n];
        for c in 0..k {
            let yc = row(c);
            self.sum_y[c] += lane_sum(yc);
            self.sum_y_norm_sq[c] += dot(yc, &norm_sq[..n]);
            self.sum_y_yz[c] += dot(yc, &yz[..n]);
            for c2 in c..k {
                let v = dot(yc, row(c2));
                self.sum_yy[c * k + c2] += v;
                if c2 != c {
                    self.sum_yy[c2 * k + c] += v;
                }
            }
        }
        add_hits(&mut self.sum_hit, batch.z, &yz[..n]);
        self.draws += n as u64;
    }
}

/// `sum_hit[z_d] += y_z[d]` for every draw, in draw order.
#[inline(always)]
fn add_hits(sum_hit: &mut [f64], z: &[u32], yz: &[f64]) {
    let k = sum_hit.len();
    if k <= HIT_LANES {
        // Every category's sum in a register, in draw order: the others gain +0.0, which
        // changes no bits (the sums and the y_z are >= +0). A memory-carried chain of
        // adds otherwise (a category drawn twice in a row waits on its own store).
        let mut hit = [0f64; HIT_LANES];
        hit[..k].copy_from_slice(sum_hit);
        for (&z, &v) in z.iter().zip(yz) {
            for (c, h) in hit.iter_mut().enumerate() {
                *h += if z as usize == c { v } else { 0.0 };
            }
        }
        sum_hit.copy_from_slice(&hit[..k]);
    } else {
        for (&z, &v) in z.iter().zip(yz) {
            sum_hit[z as usize] += v;
        }
    }
}

/// Calls `f` with [`RelaxedMoments::sum_yy_dot`] of `b` (K numbers; on the stack up to
/// K = 32).
pub fn with_sum_yy_dot<R>(m: &RelaxedMoments, b: &[f64], f: impl FnOnce(&[f64]) -> R) -> R {
    const STACK: usize = 32;
    if m.k <= STACK {
        let mut out = [0f64; STACK];
        m.sum_yy_dot(b, &mut out);
        f(&out[..m.k])
    } else {
        let mut out = vec![0f64; m.k];
        m.sum_yy_dot(b, &mut out);
        f(&out)
    }
}

/// Adds the relaxed-sums lowering of the Gumbel estimators under a quadratic loss to `acc`:
/// `acc[c] += (alpha2 X_c + beta_c sum y_c - alpha2 W_c - (sum_yy beta)_c) / tau`, with
/// `X_c = sum y_c^2` (the diagonal of `sum_yy`) and `W_c = sum y_c ||y||^2` for
/// `gumbel-softmax`, `X_c = sum_hit_c` and `W_c = sum y_c y_z` for `st-gumbel`
/// (`straight_through`). Up to K = 16 in AVX-512F where the CPU has it, every coordinate at
/// once; the same operations in the same order per coordinate as the portable loop, so the
/// same bits (tested).
pub fn add_quadratic_relaxed_sum(
    m: &RelaxedMoments,
    alpha2: f64,
    beta: &[f64],
    tau: f64,
    straight_through: bool,
    acc: &mut [f64],
) {
    let k = m.k;
    assert!(beta.len() >= k && acc.len() >= k);
    #[cfg(target_arch = "x86_64")]
    if k <= 16 && crate::fastmath::has_avx512() {
        #[target_feature(enable = "avx512f")]
        fn avx512(
            m: &RelaxedMoments,
            alpha2: f64,
            beta: &[f64],
            tau: f64,
            straight_through: bool,
            acc: &mut [f64],
        ) {
            // SAFETY: compiled for AVX-512F, called only where the CPU has it; K <= 16 and
            // the slices hold K numbers (asserted above).
            unsafe { quadratic_relaxed_sum_avx512(m, alpha2, beta, tau, straight_through, acc) }
        }
        // SAFETY: the CPU has AVX-512F, checked just above.
        return unsafe { avx512(m, alpha2, beta, tau, straight_through, acc) };
    }
    #[cfg(target_arch = "x86_64")]
    if k <= 16 && crate::fastmath::has_avx2() {
        #[target_feature(enable = "avx2")]
        fn avx2(
            m: &RelaxedMoments,
            alpha2: f64,
            beta: &[f64],
            tau: f64,
            straight_through: bool,
            acc: &mut [f64],
        ) {
            // SAFETY: compiled for AVX2, called only where the CPU has it; K <= 16 and the
            // slices hold K numbers (asserted above).
            unsafe { quadratic_relaxed_sum_avx2(m, alpha2, beta, tau, straight_through, acc) }
        }
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx2(m, alpha2, beta, tau, straight_through, acc) };
    }
    quadratic_relaxed_sum_portable(m, alpha2, beta, tau, straight_through, acc);
}

/// The load and store masks of four AVX2 registers of f64 over K <= 16 coordinates: lane i of
/// register j (coordinate `4 j + i`) set where it is below K.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn avx2_masks(k: usize) -> [std::arch::x86_64::__m256i; 4] {
    use std::arch::x86_64::_mm256_set_epi64x;
    let mask = |j: usize| {
        let lane = |i: usize| if 4 * j + i < k { -1i64 } else { 0 };
        // SAFETY: AVX, which every AVX2 CPU has; only called from AVX2 paths.
        unsafe { _mm256_set_epi64x(lane(3), lane(2), lane(1), lane(0)) }
    };
    [mask(0), mask(1), mask(2), mask(3)]
}

/// [`add_quadratic_relaxed_sum`] in AVX2: the K coordinates in four registers (masked past
/// K), `sum_yy beta` as [`RelaxedMoments::sum_yy_dot`]'s AVX2 path computes it, left in its
/// registers; per coordinate the portable loop's operations in its order (same bits, tested).
///
/// # Safety
/// The CPU must have AVX2; K <= 16; `beta` and `acc` hold at least K numbers.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn quadratic_relaxed_sum_avx2(
    m: &RelaxedMoments,
    alpha2: f64,
    beta: &[f64],
    tau: f64,
    straight_through: bool,
    acc: &mut [f64],
) {
    use std::arch::x86_64::*;
    let k = m.k;
    assert!(k <= 16 && beta.len() >= k && acc.len() >= k);
    let masks = avx2_masks(k);
    let ydb = m.sum_yy_dot_avx2_registers(beta, &masks);
    let (x, w) = quadratic_x_w(m, straight_through);
    let (a2, t) = (_mm256_set1_pd(alpha2), _mm256_set1_pd(tau));
    for (j, &ydb) in ydb.iter().enumerate() {
        let at = 4 * j;
        if at >= k {
            break;
        }
        // In bounds: lanes at or past K are masked off (no access). A macro, not a closure
        // (a closure would not inherit the caller's target features).
        macro_rules! load {
            ($p:expr) => {
                _mm256_maskload_pd($p.wrapping_add(at), masks[j])
            };
        }
        let term = _mm256_sub_pd(
            _mm256_sub_pd(
                _mm256_add_pd(
                    _mm256_mul_pd(a2, load!(x.as_ptr())),
                    _mm256_mul_pd(load!(beta.as_ptr()), load!(m.sum_y.as_ptr())),
                ),
                _mm256_mul_pd(a2, load!(w.as_ptr())),
            ),
            ydb,
        );
        let sum = _mm256_add_pd(load!(acc.as_ptr()), _mm256_div_pd(term, t));
        _mm256_maskstore_pd(acc.as_mut_ptr().wrapping_add(at), masks[j], sum);
    }
}

/// [`add_quadratic_relaxed_sum`] in portable code (its reference).
fn quadratic_relaxed_sum_portable(
    m: &RelaxedMoments,
    alpha2: f64,
    beta: &[f64],
    tau: f64,
    straight_through: bool,
    acc: &mut [f64],
) {
    let k = m.k;
    with_sum_yy_dot(m, beta, |y_dot_beta| {
        for (c, a) in acc[..k].iter_mut().enumerate() {
            let (x, w) = if straight_through {
                (m.sum_hit[c], m.sum_y_yz[c])
            } else {
                (m.sum_yy[c * k + c], m.sum_y_norm_sq[c])
            };
            *a += (alpha2 * x + beta[c] * m.sum_y[c] - alpha2 * w - y_dot_beta[c]) / tau;
        }
    });
}

/// The per-coordinate inputs of [`add_quadratic_relaxed_sum`]'s SIMD paths (K <= 16): `X`
/// (the diagonal of `sum_yy`, or `sum_hit` for `st-gumbel`) gathered into an array, and `W`
/// (`sum_y_norm_sq`, or `sum_y_yz`).
#[inline(always)]
fn quadratic_x_w(m: &RelaxedMoments, straight_through: bool) -> ([f64; 16], &[f64]) {
    let k = m.k;
    let mut x = [0f64; 16];
    for (c, xc) in x[..k].iter_mut().enumerate() {
        *xc = if straight_through {
            m.sum_hit[c]
        } else {
            m.sum_yy[c * k + c]
        };
    }
    let w = if straight_through {
        &m.sum_y_yz
    } else {
        &m.sum_y_norm_sq
    };
    (x, w)
}

/// [`add_quadratic_relaxed_sum`] in AVX-512F: the K coordinates in two registers (masked
/// past K), `sum_yy beta` as [`RelaxedMoments::sum_yy_dot`]'s AVX-512 path computes it.
///
/// # Safety
/// The CPU must have AVX-512F; K <= 16; `beta` and `acc` hold at least K numbers.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn quadratic_relaxed_sum_avx512(
    m: &RelaxedMoments,
    alpha2: f64,
    beta: &[f64],
    tau: f64,
    straight_through: bool,
    acc: &mut [f64],
) {
    use std::arch::x86_64::*;
    let k = m.k;
    let mut ydb = [0f64; 16];
    m.sum_yy_dot_avx512(beta, &mut ydb);
    let (x, w) = quadratic_x_w(m, straight_through);
    let (a2, t) = (_mm512_set1_pd(alpha2), _mm512_set1_pd(tau));
    for half in 0..2 {
        let at = 8 * half;
        if at >= k {
            break;
        }
        let mask: __mmask8 = if k - at >= 8 {
            0xff
        } else {
            (1u8 << (k - at)) - 1
        };
        // In bounds: lanes at or past K are masked off (no access). A macro, not a closure
        // (a closure would not inherit the caller's target features).
        macro_rules! load {
            ($p:expr) => {
                _mm512_maskz_loadu_pd(mask, $p.add(at))
            };
        }
        let term = _mm512_sub_pd(
            _mm512_sub_pd(
                _mm512_add_pd(
                    _mm512_mul_pd(a2, load!(x.as_ptr())),
                    _mm512_mul_pd(load!(beta.as_ptr()), load!(m.sum_y.as_ptr())),
                ),
                _mm512_mul_pd(a2, load!(w.as_ptr())),
            ),
            load!(ydb.as_ptr()),
        );
        let sum = _mm512_add_pd(load!(acc.as_ptr()), _mm512_div_pd(term, t));
        _mm512_mask_storeu_pd(acc.as_mut_ptr().add(at), mask, sum);
    }
}

/// Categories up to which [`RelaxedMoments::add_batch`] keeps the hit sums in registers.
const HIT_LANES: usize = 16;

/// A sum in eight partial sums (so the loop vectorises, in a fixed order).
#[inline(always)]
pub fn lane_sum(terms: &[f64]) -> f64 {
    let mut lanes = [0f64; 8];
    let chunks = terms.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, t) in lanes.iter_mut().zip(chunk) {
            *lane += t;
        }
    }
    lanes.iter().chain(rest).sum()
}

/// A dot product in eight partial sums (as [`lane_sum`]).
#[inline(always)]
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut lanes = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f64>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f64>()
}

/// An estimator's own auxiliary noise for one repetition (ARSM's Dirichlet, draws without
/// replacement, conditional Gumbels, ...): Philox blocks of the stream
/// [`crate::philox::STREAM_AUX`] at this repetition's counters, so that every engine and
/// every thread count reads the same numbers. Block `b`, lane `lane` is the counter
/// `[b, rep, AUX << 16 | lane, point]`; an estimator chooses its own layout of blocks and lanes
/// (lanes below 2^16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Noise {
    /// The sweep's Philox key.
    pub key: [u32; 2],
    /// The repetition.
    pub rep: u32,
    /// The sweep point.
    pub point: u32,
}

impl Noise {
    /// Four random words of block `block`, lane `lane`.
    #[inline]
    pub fn words(&self, block: u32, lane: u32) -> [u32; 4] {
        crate::philox::philox4x32_10(
            crate::philox::counter(block, self.rep, crate::philox::STREAM_AUX, lane, self.point),
            self.key,
        )
    }

    /// Four uniforms in (0, 1) (never 0 or 1) of block `block`, lane `lane`, in f64 with 23
    /// random bits each (as the Gumbel draws).
    #[inline]
    pub fn open_uniforms(&self, block: u32, lane: u32) -> [f64; 4] {
        self.words(block, lane)
            .map(|w| f64::from(crate::philox::open_uniform_f32(w)))
    }
}

/// A batch of S joint draws, as the generic path reads it.
#[derive(Clone, Copy, Debug)]
pub struct JointDraws<'a> {
    /// Number of draws S.
    pub s: usize,
    /// The categories, draw-major: `z[i * L + l]` is variable `l` of draw `i`. For the relaxed
    /// family, `argmax(a_l + G_l)`.
    pub z: &'a [u32],
    /// The loss of every draw, `f(z_i)` (score-function family; empty for the relaxed one).
    pub f: &'a [f64],
    /// The relaxed samples `y_l = softmax((a_l + G_l) / tau)`, draw-major, L*K per draw
    /// (relaxed family; empty for the score-function one).
    pub y: &'a [f64],
    /// The perturbed logits `a_l - max(a_l) + G_l` (f32 arithmetic, in f64), draw-major, L*K
    /// per draw (relaxed family; empty for the score-function one). `z_l` is their argmax.
    pub perturbed: &'a [f64],
    /// This repetition's auxiliary noise.
    pub noise: Noise,
}

impl JointDraws<'_> {
    /// Variable count L of these draws.
    pub fn variables(&self) -> usize {
        self.z.len() / self.s.max(1)
    }
}

/// `out[l*K + j] = sum_{i : z_il = j} A_i - p_lj sum_i A_i`, the sum over draws of
/// `A_i (e_{z_il} - p_l)`, in O(S L + L K).
pub fn weighted_scores(ctx: &Context, draws: &JointDraws<'_>, signal: &[f64], out: &mut [f64]) {
    let (l, k) = (ctx.l, ctx.k);
    out.iter_mut().for_each(|o| *o = 0.0);
    let mut total = 0.0;
    for (zi, &a) in draws.z.chunks_exact(l).zip(signal) {
        for (var, &c) in zi.iter().enumerate() {
            out[var * k + c as usize] += a;
        }
        total += a;
    }
    for (o, pj) in out.iter_mut().zip(&ctx.p) {
        *o -= pj * total;
    }
}

/// Adds `(1/tau) J(y_l) v_l` for every variable to `acc` (`J(y) = diag(y) - y y^T`): one
/// relaxed draw's pathwise gradient, given `v = grad f` at the point the estimator chooses.
pub fn add_relaxed_jacobian(ctx: &Context, y: &[f64], v: &[f64], acc: &mut [f64]) {
    let k = ctx.k;
    for ((yl, vl), al) in y
        .chunks_exact(k)
        .zip(v.chunks_exact(k))
        .zip(acc.chunks_exact_mut(k))
    {
        let yv: f64 = yl.iter().zip(vl).map(|(a, b)| a * b).sum();
        for ((a, yj), vj) in al.iter_mut().zip(yl).zip(vl) {
            *a += yj * (vj - yv) / ctx.tau;
        }
    }
}

/// A gradient estimator of `d E[f(z)] / d a`.
pub trait Estimator: Send + Sync {
    /// The id used on the command line and in results (`reinforce-ema`).
    fn id(&self) -> &'static str;

    /// Which draws it reads.
    fn family(&self) -> Family;

    /// Whether its expectation is the exact gradient.
    fn is_unbiased(&self) -> bool;

    /// The least number of draws S an estimate needs.
    fn min_samples(&self) -> u32 {
        1
    }

    /// Whether [`Estimator::estimate`] reads the draws' losses `JointDraws::f` (score-function
    /// family). The CPU's generic pass evaluates every draw's loss only for losses with a
    /// cell that reads them; the others get an empty `f`.
    fn reads_draw_losses(&self) -> bool {
        true
    }

    /// Whether it needs the loss defined off the vertices (MuProp's Taylor point, the relaxed
    /// family).
    fn needs_extension(&self) -> bool {
        false
    }

    /// Refuses a problem it is not defined on, saying why.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the estimator and the reason.
    fn check(&self, ctx: &Context) -> Result<()> {
        if self.needs_extension() && !ctx.objective.has_extension() {
            return Err(Error::InvalidArgument(format!(
                "{} needs the loss defined off the vertices, and the {} loss is not; drop it or choose another loss",
                self.id(),
                ctx.loss
            )));
        }
        Ok(())
    }

    /// Refuses a draw count S that its own noise cannot serve, saying why (every S by
    /// default).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the estimator, S and the largest S it takes.
    fn check_samples(&self, _ctx: &Context, _s: u32) -> Result<()> {
        Ok(())
    }

    /// Loss evaluations of one S-draw estimate (a gradient of the loss counts as one).
    fn loss_evaluations(&self, _ctx: &Context, s: u32) -> f64 {
        f64::from(s)
    }

    /// The generic path: the S-draw estimate from a batch of joint draws and the current
    /// moving-average baseline (0 where it has none), into `out` (L*K numbers). Returns the
    /// value this estimate contributes to the moving average, for estimators that keep one.
    fn estimate(
        &self,
        ctx: &Context,
        draws: &JointDraws<'_>,
        baseline: f64,
        out: &mut [f64],
    ) -> Option<f64>;

    /// Whether [`Estimator::warm_up`] tunes something (its figures then depend on the draws of
    /// the warm-up, and so on the seed, beyond the Monte Carlo noise of the measurement).
    fn tunes_in_warm_up(&self) -> bool {
        false
    }

    /// Tunes the estimator's own parameters (REBAR's `eta` and `tau`, RELAX's control variate)
    /// for one cell at draw count `s`, before its measured repetitions. `noise_for_rep(r)` is
    /// the noise of warm-up repetition `r`: repetition numbers past the measured ones, so no
    /// counter the measurement reads is reused. The engine hands the result to
    /// [`Estimator::estimate`] as `ctx.warm`. `None`: nothing to tune (the default).
    fn warm_up(
        &self,
        _ctx: &Context,
        _s: u32,
        _noise_for_rep: &dyn Fn(u32) -> Noise,
    ) -> Option<WarmUp> {
        None
    }

    /// The fast path it can be lowered to, if any.
    fn lowering(&self) -> Option<Lowering> {
        None
    }

    /// Whether it may keep a moving-average baseline, the one state carried from a
    /// repetition to the next: its lowering says so, and an estimator without a lowering may
    /// (its [`Estimator::estimate`] returns the value it feeds) unless it says otherwise.
    /// Where it keeps none, the CPU's generic path computes a block's repetitions in
    /// parallel (each estimate then depends on its own repetition's draws alone, so the bits
    /// are the same as one after another).
    fn keeps_moving_average(&self) -> bool {
        match self.lowering() {
            Some(Lowering::ScoreFunction { baseline, .. }) => baseline == Baseline::MovingAverage,
            Some(_) => false,
            None => true,
        }
    }

    /// Whether [`Estimator::estimate_losses`] does the work of a draw once for every loss
    /// (rather than once per loss, its default). The CPU's generic path then computes the
    /// estimates of its cells of one point (one per loss) together.
    fn shares_work_across_losses(&self) -> bool {
        false
    }

    /// The estimates of one repetition under several losses' contexts from the same draws,
    /// into `out` (`ctxs.len()` estimates of `dim` numbers, in order), each bit for bit
    /// [`Estimator::estimate`]'s with that context (a baseline of 0). Only for an estimator
    /// that keeps no moving average, on contexts of one problem, temperature and settings
    /// (one sweep point's losses). The default calls [`Estimator::estimate`] once per
    /// context; an estimator whose per-draw work does not depend on the loss (Gumbel-Rao's
    /// conditional draws) overrides it.
    fn estimate_losses(&self, ctxs: &[&Context], d: &JointDraws<'_>, out: &mut [f64]) {
        let Some(first) = ctxs.first() else {
            return;
        };
        let dim = first.dim();
        assert!(out.len() >= ctxs.len() * dim);
        for (ctx, out) in ctxs.iter().zip(out.chunks_exact_mut(dim)) {
            self.estimate(ctx, d, 0.0, out);
        }
    }

    /// The per-variable conditional form of its generic estimate, if it has one (a GPU kernel
    /// of the generic path; see [`Conditional`]).
    fn conditional(&self) -> Option<Conditional> {
        None
    }

    /// The per-draw linear form whose exact moments give its own, where it has one.
    fn linear_form(&self) -> Option<LinearForm> {
        None
    }

    /// Exact moments of the S-draw average, where the problem allows them.
    fn exact_moments(&self, ctx: &Context, s: u32) -> Option<ExactMoments> {
        let form = self.linear_form()?;
        oracle::linear_form_moments(ctx, form, s)
    }

    /// Per-coordinate variance of the S-draw average that standard errors should not go
    /// below: the exact variance where a closed form exists; for a moving-average baseline,
    /// that of the fixed baseline the average converges to. With rare categories a sample
    /// variance misses the draws that never happened; this floor keeps tests honest.
    fn reference_variance(&self, ctx: &Context, s: u32) -> Option<Vec<f64>> {
        self.exact_moments(ctx, s).map(|m| m.var)
    }

    /// Counts lowering: for estimators with a moving-average baseline, the value this
    /// repetition contributes to the average that later repetitions use (the average is never
    /// used by the repetition that produced it, so the estimator stays unbiased).
    fn baseline_signal(&self, _ctx: &Context, _counts: &[u32], _s: u32) -> Option<f64> {
        None
    }

    /// Counts lowering (one variable): the S-draw estimate from the category counts (which
    /// sum to S) and the current moving-average baseline (0 where the estimator has none).
    fn estimate_from_counts(
        &self,
        _ctx: &Context,
        _counts: &[u32],
        _s: u32,
        _baseline: f64,
        _out: &mut [f64],
    ) {
        unreachable!("{} has no counts lowering", self.id())
    }

    /// Counts lowering of a hard-draw estimator (one variable): its per-category estimates
    /// `g(e_c)` (row c of K numbers), from which [`average_with_table_batch`] gives the bits of
    /// [`Estimator::estimate_from_counts`] without recomputing them every repetition; `None`
    /// for an estimator whose counts estimate is not such an average. Depends only on `ctx`:
    /// the engine builds it for each sweep point and block.
    fn counts_table(&self, _ctx: &Context) -> Option<Vec<f64>> {
        None
    }

    /// Relaxed-sums lowering (one variable, quadratic loss): the sum of the per-draw estimates
    /// of the draws whose sums `m` holds, added to `acc`.
    fn add_relaxed_sum(&self, _ctx: &Context, _m: &RelaxedMoments, _acc: &mut [f64]) {
        unreachable!("{} has no relaxed-sums lowering", self.id())
    }
}

/// Whether `estimator` runs on the counts lowering for `ctx` (score-function form, one
/// variable).
pub fn uses_counts(estimator: &dyn Estimator, ctx: &Context) -> bool {
    ctx.l == 1 && matches!(estimator.lowering(), Some(Lowering::ScoreFunction { .. }))
}

/// Whether `estimator` runs on the joint-counts lowering for `ctx` (score-function form,
/// several variables).
pub fn uses_joint_counts(estimator: &dyn Estimator, ctx: &Context) -> bool {
    ctx.l > 1 && matches!(estimator.lowering(), Some(Lowering::ScoreFunction { .. }))
}

/// What the score-function lowering reads of one repetition's S joint draws with L > 1, per
/// (variable l, category j), L*K numbers each: every score-function-form estimate is linear in
/// these, so it costs O(L K) instead of O(S L). A view of a flat buffer laid out
/// `n | F | Q | [sum f, sum q]` (see [`fill_joint_counts`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JointCounts<'a> {
    /// Draws S.
    pub s: usize,
    /// `n_lj = #{i : z_il = j}`.
    pub n: &'a [f64],
    /// `F_lj = sum_{i : z_il = j} f(z_i)`.
    pub f: &'a [f64],
    /// `Q_lj = sum_{i : z_il = j} q_i` with `q_i = sum_m grad f(p)[m, z_im]` (MuProp's
    /// residual; zeros without a mean field).
    pub q: &'a [f64],
    /// `sum_i f(z_i)`.
    pub f_total: f64,
    /// `sum_i q_i`.
    pub q_total: f64,
}

impl<'a> JointCounts<'a> {
    /// Numbers of the flat buffer for `ctx`: `3 L K + 2`.
    pub fn buffer_len(ctx: &Context) -> usize {
        3 * ctx.dim() + 2
    }

    /// The view of a buffer that [`fill_joint_counts`] filled from S draws.
    pub fn view(ctx: &Context, s: usize, buffer: &'a [f64]) -> Self {
        let n = ctx.dim();
        Self {
            s,
            n: &buffer[..n],
            f: &buffer[n..2 * n],
            q: &buffer[2 * n..3 * n],
            f_total: buffer[3 * n],
            q_total: buffer[3 * n + 1],
        }
    }
}

/// Fills `buffer` ([`JointCounts::buffer_len`] numbers) with the sums of the draws `z`
/// (S x L, draw-major) with losses `f`, for `ctx` (which gives `grad f(p)` where the loss
/// extends).
pub fn fill_joint_counts(ctx: &Context, z: &[u32], f: &[f64], buffer: &mut [f64]) {
    let (l, k) = (ctx.l, ctx.k);
    let n = l * k;
    buffer.iter_mut().for_each(|v| *v = 0.0);
    let (counts, rest) = buffer.split_at_mut(n);
    let (fs, rest) = rest.split_at_mut(n);
    let (qs, totals) = rest.split_at_mut(n);
    let (mut f_total, mut q_total) = (0.0, 0.0);
    // Every index below is `var * K + c` with `var < L` and, checked here once, `c < K`: below
    // `L * K`, the length of every slice it indexes.
    // (The largest category, not `all`: a loop without an early exit vectorises.)
    let largest = z.iter().fold(0u32, |m, &c| m.max(c));
    assert!((largest as usize) < k, "a joint draw's category is past K");
    match ctx.mean_field.as_ref() {
        Some(m) => {
            let g = &m.grad[..n];
            for (zi, &fi) in z.chunks_exact(l).zip(f) {
                // SAFETY (the four `get_unchecked`s): the index is below L*K (see above).
                let q: f64 = zi
                    .iter()
                    .enumerate()
                    .map(|(var, &c)| unsafe { *g.get_unchecked(var * k + c as usize) })
                    .sum();
                for (var, &c) in zi.iter().enumerate() {
                    let i = var * k + c as usize;
                    unsafe {
                        *counts.get_unchecked_mut(i) += 1.0;
                        *fs.get_unchecked_mut(i) += fi;
                        *qs.get_unchecked_mut(i) += q;
                    }
                }
                f_total += fi;
                q_total += q;
            }
        }
        None => {
            // No mean field: q = 0 for every draw, and `0.0 + 0.0` leaves Q and its total at
            // the zeros they start from.
            for (zi, &fi) in z.chunks_exact(l).zip(f) {
                for (var, &c) in zi.iter().enumerate() {
                    let i = var * k + c as usize;
                    counts[i] += 1.0;
                    fs[i] += fi;
                }
                f_total += fi;
            }
        }
    }
    totals[0] = f_total;
    totals[1] = q_total;
}

/// Scratch of [`fill_joint_counts_by_variable`], kept across calls (one per worker).
#[derive(Clone, Debug, Default)]
pub struct JointScratch {
    /// `f_i` and `q_i` of each draw (S numbers each), for a loss that is not separable.
    f: Vec<f64>,
    q: Vec<f64>,
    /// Per bucket `(l, j)`: `[n, F, Q, unused]`, one 32-byte line each, so that one vector
    /// addition of `[1, f_i, q_i, 0]` adds a draw to its bucket.
    packed: Vec<Bucket>,
    /// `[t_b, g_b]` per bucket b (a separable loss's term and MuProp's gradient).
    pairs: Vec<[f64; 2]>,
    /// The bucket `var * K + c` of every draw's variable, variable-major as the draws.
    idx: Vec<u32>,
    /// `[1, f_i, q_i, 0]` of every draw (a separable loss), added to its buckets.
    adds: Vec<Bucket>,
}

/// `[n, F, Q, unused]` of one bucket (see [`JointScratch`]).
#[derive(Clone, Copy, Debug, Default)]
#[repr(align(32))]
struct Bucket([f64; 4]);

/// [`fill_joint_counts`] from the S draws laid out variable-major (`zt[l * S + i]`, as
/// [`crate::draws::draw_joint_categories_by_variable`] writes them), with their losses
/// evaluated here: the same sums bit for bit. Each `f_i` is [`Objective::at_vertex`]'s value
/// (for a separable loss its terms are summed in variable order, eight draws at a time in
/// registers) and each `q_i` sums its terms in variable order; every bucket `(l, j)` adds its
/// draws in draw order, a draw adding `[1, f_i, q_i, 0]` to each of its L buckets at once
/// (element-wise additions, each the one the draw-major form makes); the totals add the
/// draws in order.
pub fn fill_joint_counts_by_variable(
    ctx: &Context,
    zt: &[u32],
    s: usize,
    scratch: &mut JointScratch,
    buffer: &mut [f64],
) {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn avx2(ctx: &Context, zt: &[u32], s: usize, scratch: &mut JointScratch, buffer: &mut [f64]) {
        fill_by_variable_lanes(ctx, zt, s, scratch, buffer);
    }
    #[cfg(target_arch = "x86_64")]
    if crate::fastmath::has_avx2() {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx2(ctx, zt, s, scratch, buffer) };
    }
    fill_by_variable_lanes(ctx, zt, s, scratch, buffer);
}

/// Copies the buckets' `[n, F, Q, _]` into `counts`, `fs` and `qs` (as long as `packed`):
/// four buckets at a time through a 4x4 transpose in AVX2 registers where the CPU has AVX2,
/// else number by number (the same numbers moved).
fn unpack_buckets(packed: &[Bucket], counts: &mut [f64], fs: &mut [f64], qs: &mut [f64]) {
    let n = packed.len();
    let (counts, fs, qs) = (&mut counts[..n], &mut fs[..n], &mut qs[..n]);
    #[allow(unused_mut)]
    let mut whole = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::fastmath::has_avx2() {
        // SAFETY: the CPU has AVX2, checked just above.
        whole = unsafe { unpack_buckets_avx2(packed, counts, fs, qs) };
    }
    unpack_buckets_scalar(
        &packed[whole..],
        &mut counts[whole..],
        &mut fs[whole..],
        &mut qs[whole..],
    );
}

fn unpack_buckets_scalar(packed: &[Bucket], counts: &mut [f64], fs: &mut [f64], qs: &mut [f64]) {
    for (((bk, c), f), q) in packed.iter().zip(counts).zip(fs).zip(qs) {
        *c = bk.0[0];
        *f = bk.0[1];
        *q = bk.0[2];
    }
}

/// [`unpack_buckets`]' whole groups of four buckets; returns the buckets done.
///
/// # Safety
/// The CPU has AVX2; `counts`, `fs` and `qs` are as long as `packed`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn unpack_buckets_avx2(
    packed: &[Bucket],
    counts: &mut [f64],
    fs: &mut [f64],
    qs: &mut [f64],
) -> usize {
    use std::arch::x86_64::*;
    let whole = packed.len() / 4 * 4;
    assert!(counts.len() >= whole && fs.len() >= whole && qs.len() >= whole);
    // SAFETY (every load and store): four buckets (aligned to 32 bytes) from a multiple of
    // four below `whole`, and four numbers of each output from the same index.
    unsafe {
        for i in (0..whole).step_by(4) {
            let b = packed.as_ptr().add(i).cast::<f64>();
            let (b0, b1, b2, b3) = (
                _mm256_load_pd(b),
                _mm256_load_pd(b.add(4)),
                _mm256_load_pd(b.add(8)),
                _mm256_load_pd(b.add(12)),
            );
            // [n0 n1 Q0 Q1], [F0 F1 _ _], [n2 n3 Q2 Q3], [F2 F3 _ _].
            let lo01 = _mm256_unpacklo_pd(b0, b1);
            let hi01 = _mm256_unpackhi_pd(b0, b1);
            let lo23 = _mm256_unpacklo_pd(b2, b3);
            let hi23 = _mm256_unpackhi_pd(b2, b3);
            _mm256_storeu_pd(
                counts.as_mut_ptr().add(i),
                _mm256_permute2f128_pd::<0x20>(lo01, lo23),
            );
            _mm256_storeu_pd(
                fs.as_mut_ptr().add(i),
                _mm256_permute2f128_pd::<0x20>(hi01, hi23),
            );
            _mm256_storeu_pd(
                qs.as_mut_ptr().add(i),
                _mm256_permute2f128_pd::<0x31>(lo01, lo23),
            );
        }
    }
    whole
}

/// Adds draw `i`'s `add = [1, f_i, q_i, 0]` to its L buckets.
///
/// # Safety
/// `zt` holds `L * S` categories, each below K, and `packed` `L * K` buckets.
#[inline(always)]
unsafe fn add_draw(
    packed: &mut [Bucket],
    zt: &[u32],
    (l, k, s): (usize, usize, usize),
    i: usize,
    add: [f64; 4],
) {
    for var in 0..l {
        // SAFETY: `var * S + i < L * S` and the bucket is below L*K (the caller's promise).
        let bucket = unsafe {
            let c = *zt.get_unchecked(var * s + i) as usize;
            packed.get_unchecked_mut(var * k + c)
        };
        for (a, v) in bucket.0.iter_mut().zip(add) {
            *a += v;
        }
    }
}

/// `bucket += add`, element by element.
#[inline(always)]
fn add_to(bucket: &mut Bucket, add: &Bucket) {
    for (a, v) in bucket.0.iter_mut().zip(add.0) {
        *a += v;
    }
}

/// Adds draw `i`'s `adds[i]` to its `L` buckets `idx[var * S + i]`, draw by draw in order
/// (so each bucket adds its draws in draw order), for a fixed `L`.
///
/// # Safety
/// `idx` holds `L * S` bucket indices (S = `adds.len()`), each below `packed.len()`.
#[inline(always)]
unsafe fn add_draws<const L: usize>(packed: &mut [Bucket], idx: &[u32], adds: &[Bucket]) {
    let s = adds.len();
    debug_assert!(idx.len() >= L * s);
    for (i, add) in adds.iter().enumerate() {
        for var in 0..L {
            // SAFETY: the caller's promise.
            unsafe {
                let b = *idx.get_unchecked(var * s + i) as usize;
                add_to(packed.get_unchecked_mut(b), add);
            }
        }
    }
}

#[inline(always)]
fn fill_by_variable_lanes(
    ctx: &Context,
    zt: &[u32],
    s: usize,
    scratch: &mut JointScratch,
    buffer: &mut [f64],
) {
    const B: usize = 8;
    let (l, k) = (ctx.l, ctx.k);
    let n = l * k;
    let zt = &zt[..l * s];
    // (Every number of `buffer` is written at the end.)
    if s == 0 {
        buffer.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    // Every bucket below is `var * K + c` with `var < L` and, checked here once, `c < K`.
    let largest = zt.iter().fold(0u32, |m, &c| m.max(c));
    assert!((largest as usize) < k, "a joint draws' category is past K");
    let shape = (l, k, s);
    let grad = ctx.mean_field.as_ref().map(|m| &m.grad[..n]);
    let packed = &mut scratch.packed;
    packed.resize(n, Bucket::default());
    for bucket in packed.iter_mut() {
        *bucket = Bucket::default();
    }
    let (mut f_total, mut q_total) = (0.0, 0.0);
    match ctx.objective.separable_vertex_form() {
        Some((table, finish)) => {
            // Each bucket's term and MuProp gradient side by side (`[t_b, g_b]`, g = 0
            // without a mean field), so that one 16-byte addition adds both of a draw's
            // terms; and every draw's bucket index `var * K + c`, read twice below.
            let pairs = &mut scratch.pairs;
            pairs.resize(n, [0.0; 2]);
            match grad {
                Some(g) => {
                    for (pair, (&t, &g)) in pairs.iter_mut().zip(table[..n].iter().zip(g)) {
                        *pair = [t, g];
                    }
                }
                None => {
                    for (pair, &t) in pairs.iter_mut().zip(&table[..n]) {
                        *pair = [t, 0.0];
                    }
                }
            }
            let idx = &mut scratch.idx;
            idx.resize(l * s, 0);
            for (var, (out, row)) in idx.chunks_exact_mut(s).zip(zt.chunks_exact(s)).enumerate() {
                let base = (var * k) as u32;
                for (o, &c) in out.iter_mut().zip(row) {
                    *o = base + c;
                }
            }
            let (pairs, idx) = (&pairs[..n], &idx[..l * s]);
            let adds = &mut scratch.adds;
            adds.resize(s, Bucket::default());
            let zero: f64 = std::iter::empty::<f64>().sum();
            let mut first = 0;
            while first < s {
                // Eight draws (or the last few): their terms summed in variable order, then
                // added to the buckets draw by draw.
                let nb = (s - first).min(B);
                let mut acc = [[zero; 2]; B];
                for var in 0..l {
                    let row = &idx[var * s + first..var * s + first + nb];
                    // SAFETY (every `get_unchecked` below): a bucket index is below L*K, the
                    // length of `pairs` and `packed` (the categories checked above).
                    if let Ok(row) = <&[u32; B]>::try_from(row) {
                        // A whole block: eight independent sums with a fixed count.
                        for (a, &b) in acc.iter_mut().zip(row) {
                            let t = unsafe { pairs.get_unchecked(b as usize) };
                            a[0] += t[0];
                            a[1] += t[1];
                        }
                    } else {
                        for (a, &b) in acc.iter_mut().zip(row) {
                            let t = unsafe { pairs.get_unchecked(b as usize) };
                            a[0] += t[0];
                            a[1] += t[1];
                        }
                    }
                }
                // The finish on eight sums at once (a division for pnorm: the same bits
                // whether one or four at a time).
                let mut fs = [0.0; B];
                match finish {
                    VertexFinish::Mean(_) => {
                        for (f, a) in fs.iter_mut().zip(&acc) {
                            *f = finish.apply(a[0]);
                        }
                    }
                    VertexFinish::Affine { .. } => {
                        for (f, a) in fs.iter_mut().zip(&acc) {
                            *f = finish.apply(a[0]);
                        }
                    }
                }
                for d in 0..nb {
                    let fi = fs[d];
                    let qi = if grad.is_some() { acc[d][1] } else { 0.0 };
                    f_total += fi;
                    q_total += qi;
                    adds[first + d] = Bucket([1.0, fi, qi, 0.0]);
                }
                first += B;
            }
            // Then every draw, in order, to its L buckets (a loop of a fixed L where it is
            // small, unrolled).
            let adds = &adds[..s];
            // SAFETY (every arm): a bucket index is below L*K, the length of `packed`.
            unsafe {
                match l {
                    2 => add_draws::<2>(packed, idx, adds),
                    3 => add_draws::<3>(packed, idx, adds),
                    4 => add_draws::<4>(packed, idx, adds),
                    5 => add_draws::<5>(packed, idx, adds),
                    6 => add_draws::<6>(packed, idx, adds),
                    7 => add_draws::<7>(packed, idx, adds),
                    8 => add_draws::<8>(packed, idx, adds),
                    _ => {
                        for (i, add) in adds.iter().enumerate() {
                            for var in 0..l {
                                let b = *idx.get_unchecked(var * s + i) as usize;
                                add_to(packed.get_unchecked_mut(b), add);
                            }
                        }
                    }
                }
            }
        }
        None => {
            let (f, q) = (&mut scratch.f, &mut scratch.q);
            f.resize(s, 0.0);
            q.resize(s, 0.0);
            ctx.objective.at_vertices_by_variable(zt, f);
            match grad {
                Some(g) => crate::objective::separable_sums_by_variable(zt, l, k, g, q),
                None => q.iter_mut().for_each(|v| *v = 0.0),
            }
            for (i, (&fi, &qi)) in f.iter().zip(q.iter()).enumerate() {
                f_total += fi;
                q_total += qi;
                // SAFETY: as above.
                unsafe { add_draw(packed, zt, shape, i, [1.0, fi, qi, 0.0]) };
            }
        }
    }
    let (counts, rest) = buffer.split_at_mut(n);
    let (fs, rest) = rest.split_at_mut(n);
    let (qs, totals) = rest.split_at_mut(n);
    unpack_buckets(&packed[..n], counts, fs, qs);
    totals[0] = f_total;
    // Without a mean field the total stays at the zero it starts from.
    totals[1] = if grad.is_some() { q_total } else { 0.0 };
    totals[2..].iter_mut().for_each(|v| *v = 0.0);
}

/// The joint-counts lowering: the S-draw estimate of a score-function-form estimator (its
/// [`Lowering::ScoreFunction`]) from a repetition's [`JointCounts`] and the moving-average
/// baseline, into `out`; returns the baseline signal (the mean signal) for a moving average.
///
/// With signal `A` (the loss, or MuProp's residual `f - f(p) - q + sum_m grad_m f(p) . p_m`),
/// bucket sums `A_lj = sum_{z_il = j} A_i` and `A = sum_i A_i`:
/// `out_lj = scale (A_lj - b n_lj - p_lj (A - b S)) + c_lj` with `b` the moving average (or
/// the mean `A / S` for leave-one-out, scale `1/(S-1)`; else 0, scale `1/S`).
///
/// # Panics
/// For an estimator without a score-function lowering.
pub fn estimate_from_joint_counts(
    estimator: &dyn Estimator,
    ctx: &Context,
    sums: &JointCounts<'_>,
    baseline: f64,
    out: &mut [f64],
) -> Option<f64> {
    let Some(Lowering::ScoreFunction {
        signal,
        baseline: kind,
        constant,
    }) = estimator.lowering()
    else {
        panic!("{} has no score-function lowering", estimator.id());
    };
    let s = sums.s as f64;
    let c: &[f64] = match constant {
        Constant::None => &[],
        Constant::MeanField => &ctx.muprop_mean_field,
        Constant::ExactGradient => {
            out.copy_from_slice(&ctx.grad);
            return None;
        }
    };
    // A_lj = F_lj - shift n_lj - Q_lj for MuProp (shift = f(p) - sum_m grad_m f(p) . p_m).
    let (shift, total) = match signal {
        Some(Signal::MupropResidual) => {
            let m = ctx
                .mean_field
                .as_ref()
                .expect("MuProp needs the loss's extension");
            let shift = m.value - m.grad_dot_p.iter().sum::<f64>();
            (shift, sums.f_total - shift * s - sums.q_total)
        }
        _ => (0.0, sums.f_total),
    };
    let (b, scale) = match kind {
        Baseline::None => (0.0, 1.0 / s),
        Baseline::MovingAverage => (baseline, 1.0 / s),
        Baseline::LeaveOneOut => (total / s, 1.0 / (s - 1.0)),
    };
    let residual = matches!(signal, Some(Signal::MupropResidual));
    let centre = total - b * s;
    let form = JointForm {
        shift_b: shift + b,
        scale,
        centre,
        residual,
    };
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn avx2(form: &JointForm, sums: &JointCounts<'_>, p: &[f64], c: &[f64], out: &mut [f64]) {
        form.apply(sums, p, c, out);
    }
    #[cfg(target_arch = "x86_64")]
    if crate::fastmath::has_avx2() {
        // SAFETY: the CPU has AVX2, checked just above.
        unsafe { avx2(&form, sums, &ctx.p, c, out) };
        return (kind == Baseline::MovingAverage).then_some(total / s);
    }
    form.apply(sums, &ctx.p, c, out);
    (kind == Baseline::MovingAverage).then_some(total / s)
}

/// The per-coordinate arithmetic of [`estimate_from_joint_counts`]:
/// `out_i = scale (F_i - (shift + b) n_i - [Q_i] - p_i centre) + c_i`, with `c_i = 0` where
/// there is no constant (added all the same, as the scalar form did: `-0 + 0` is `+0`).
struct JointForm {
    shift_b: f64,
    scale: f64,
    centre: f64,
    residual: bool,
}

impl JointForm {
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    fn apply(&self, sums: &JointCounts<'_>, p: &[f64], c: &[f64], out: &mut [f64]) {
        let m = out.len();
        let (f, n, q, p) = (&sums.f[..m], &sums.n[..m], &sums.q[..m], &p[..m]);
        let (sb, scale, centre) = (self.shift_b, self.scale, self.centre);
        // `x - 0.0` is `x` for every x, so the loss signal leaves the Q term out.
        match (self.residual, c.len() >= m) {
            (true, true) => {
                for i in 0..m {
                    out[i] = scale * ((f[i] - sb * n[i] - q[i]) - p[i] * centre) + c[i];
                }
            }
            (true, false) => {
                for i in 0..m {
                    out[i] = scale * ((f[i] - sb * n[i] - q[i]) - p[i] * centre) + 0.0;
                }
            }
            (false, true) => {
                for i in 0..m {
                    out[i] = scale * ((f[i] - sb * n[i]) - p[i] * centre) + c[i];
                }
            }
            (false, false) => {
                for i in 0..m {
                    out[i] = scale * ((f[i] - sb * n[i]) - p[i] * centre) + 0.0;
                }
            }
        }
    }
}

/// Whether `estimator` runs on the hard-draw counts lowering for `ctx` (one variable).
pub fn uses_hard_draw_counts(estimator: &dyn Estimator, ctx: &Context) -> bool {
    ctx.l == 1 && estimator.lowering() == Some(Lowering::HardDraw)
}

/// Whether `estimator` runs on the relaxed-sums lowering for `ctx` (relaxed form, one
/// variable, quadratic loss).
pub fn uses_relaxed_sums(estimator: &dyn Estimator, ctx: &Context) -> bool {
    ctx.l == 1
        && ctx.quad.is_some()
        && matches!(estimator.lowering(), Some(Lowering::Relaxed { .. }))
}

impl std::fmt::Debug for dyn Estimator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.id())
    }
}

/// The default of [`Settings::baseline_warmup`]: with decay 0.9, the bias-corrected average
/// weighs the warm-up's first repetition by `0.9^49 / sum 0.9^i = 6e-4`, so the baseline
/// that enters the measurement has forgotten where it started.
pub const DEFAULT_BASELINE_WARMUP: u32 = 50;

/// A bias-corrected exponential moving average (decay [`EMA_DECAY`]), 0 before any value.
#[derive(Clone, Copy, Debug, Default)]
pub struct MovingAverage {
    sum: f64,
    weight: f64,
}

impl MovingAverage {
    /// The current average of the values pushed so far (0 if none).
    pub fn value(&self) -> f64 {
        if self.weight > 0.0 {
            self.sum / self.weight
        } else {
            0.0
        }
    }

    /// The weighted sum and the total weight, `value = sum / weight` (the GPU resumes the
    /// average from them).
    pub fn state(&self) -> (f64, f64) {
        (self.sum, self.weight)
    }

    /// Pushes a value.
    pub fn push(&mut self, v: f64) {
        self.sum = EMA_DECAY * self.sum + (1.0 - EMA_DECAY) * v;
        self.weight = EMA_DECAY * self.weight + (1.0 - EMA_DECAY);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn strided_transpose_is_the_transpose_with_padding() {
        // Whole tiles of eight repetitions and a remainder, against the definition and
        // against the unpadded transpose.
        let k = 3;
        for reps in [0usize, 5, 8, 21] {
            let counts: Vec<u32> = (0..reps * k).map(|i| (i * 7 % 11) as u32).collect();
            let stride = reps + 8;
            let mut out = vec![9.0; stride * k];
            transpose_counts_strided(&counts, k, stride, &mut out);
            for j in 0..k {
                for r in 0..stride {
                    // The padding is left as it was.
                    let want = if r < reps {
                        f64::from(counts[r * k + j])
                    } else {
                        9.0
                    };
                    assert_eq!(out[j * stride + r], want, "reps {reps} j {j} r {r}");
                }
            }
            let mut whole = Vec::new();
            transpose_counts(&counts, k, &mut whole);
            assert_eq!(whole.len(), reps * k);
            for j in 0..k {
                assert_eq!(
                    whole[j * reps..(j + 1) * reps],
                    out[j * stride..j * stride + reps]
                );
            }
        }
    }

    use super::*;

    /// Deterministic relaxed-looking batches: y >= 0 summing to about 1, some exact zeros.
    fn batch_data(k: usize, n: usize, seed: u32) -> (Vec<f32>, Vec<u32>, Vec<f32>) {
        let mut y = vec![0f32; k * n];
        let mut z = vec![0u32; n];
        let mut y_z = vec![0f32; n];
        for d in 0..n {
            let mut total = 0f32;
            for c in 0..k {
                let w = crate::philox::philox4x32_10([d as u32, c as u32, seed, 7], [1, 2])[0];
                let v = if w.is_multiple_of(11) {
                    0.0
                } else {
                    (w >> 8) as f32 / 16_777_216.0
                };
                y[c * n + d] = v;
                total += v;
            }
            let (mut best, mut zi) = (-1f32, 0);
            for c in 0..k {
                y[c * n + d] /= total.max(1e-30);
                if y[c * n + d] > best {
                    (best, zi) = (y[c * n + d], c);
                }
            }
            z[d] = zi as u32;
            y_z[d] = y[zi * n + d];
        }
        (y, z, y_z)
    }

    fn bits(v: &[f64]) -> Vec<u64> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn simd_relaxed_moments_equal_the_portable_sums_bit_for_bit() {
        // Each SIMD path the CPU runs, called by name (the dispatch picks only the widest).
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        fn tiled(m: &mut RelaxedMoments, batch: &RelaxedBatch<'_>) {
            unsafe { m.add_batch_tiled(batch) }
        }
        type Add = fn(&mut RelaxedMoments, &RelaxedBatch<'_>);
        let mut paths: Vec<(&str, Add)> = vec![("dispatched", |m, b| m.add_batch(b))];
        #[cfg(target_arch = "x86_64")]
        {
            if crate::fastmath::has_avx2() {
                paths.push(("avx2", |m, b| unsafe { tiled(m, b) }));
            }
        }
        for (path, add) in paths {
            simd_path_equals_the_portable_sums(path, add);
        }
    }

    fn simd_path_equals_the_portable_sums(
        path: &str,
        add: fn(&mut RelaxedMoments, &RelaxedBatch<'_>),
    ) {
        for k in [1usize, 2, 3, 5, 8, 9, 10, 16, 17, 20] {
            let (mut fast, mut portable) = (RelaxedMoments::new(k), RelaxedMoments::new(k));
            // The hit sums by their definition, one draw after another in memory.
            let mut naive_hit = vec![0f64; k];
            // Batches of every shape: full, partial with and without a remainder past the
            // chunks of eight, a single draw; sums carried across batches.
            for (i, n) in [64usize, 13, 1, 8, 64, 37, 16].into_iter().enumerate() {
                let (y, z, y_z) = batch_data(k, n, i as u32 + 100 * k as u32);
                let batch = RelaxedBatch {
                    n,
                    y: &y,
                    z: &z,
                    y_z: &y_z,
                };
                add(&mut fast, &batch);
                portable.add_batch_lanes(&batch);
                for (&zd, &v) in z.iter().zip(&y_z) {
                    naive_hit[zd as usize] += f64::from(v);
                }
                assert_eq!(bits(&fast.sum_hit), bits(&naive_hit), "K = {k}, batch {i}");
                for (name, a, b) in [
                    ("sum_y", &fast.sum_y, &portable.sum_y),
                    ("sum_yy", &fast.sum_yy, &portable.sum_yy),
                    (
                        "sum_y_norm_sq",
                        &fast.sum_y_norm_sq,
                        &portable.sum_y_norm_sq,
                    ),
                    ("sum_y_yz", &fast.sum_y_yz, &portable.sum_y_yz),
                    ("sum_hit", &fast.sum_hit, &portable.sum_hit),
                ] {
                    assert_eq!(
                        bits(a),
                        bits(b),
                        "{path}: {name}, K = {k}, batch {i} of {n}"
                    );
                }
                assert_eq!(fast.draws, portable.draws);
            }
            assert!(
                fast.sum_yy.iter().all(|v| *v > 0.0),
                "K = {k}: the test sums nothing"
            );
        }
    }

    #[test]
    fn quadratic_relaxed_sums_equal_the_portable_loop_bit_for_bit() {
        let mut checked = 0;
        for k in [1usize, 2, 7, 8, 9, 10, 15, 16, 17, 24] {
            let mut m = RelaxedMoments::new(k);
            let (y, z, y_z) = batch_data(k, 48, 9);
            m.add_batch(&RelaxedBatch {
                n: 48,
                y: &y,
                z: &z,
                y_z: &y_z,
            });
            let beta: Vec<f64> = (0..k).map(|c| (c as f64 * 1.7).cos() * 3.0).collect();
            for straight_through in [false, true] {
                for (alpha2, tau) in [(2.0, 1.0), (-0.7, 0.3), (1e-3, 7.0)] {
                    let start: Vec<f64> = (0..k).map(|c| c as f64 * 0.25 - 1.0).collect();
                    let (mut got, mut want) = (start.clone(), start);
                    add_quadratic_relaxed_sum(&m, alpha2, &beta, tau, straight_through, &mut got);
                    quadratic_relaxed_sum_portable(
                        &m,
                        alpha2,
                        &beta,
                        tau,
                        straight_through,
                        &mut want,
                    );
                    assert_eq!(bits(&got), bits(&want), "K = {k}, st {straight_through}");
                    // The portable loop is the estimators' formula, term by term.
                    for c in 0..k {
                        let (x, w) = if straight_through {
                            (m.sum_hit[c], m.sum_y_yz[c])
                        } else {
                            (m.sum_yy[c * k + c], m.sum_y_norm_sq[c])
                        };
                        let ydb: f64 = (0..k).map(|j| m.sum_yy[c * k + j] * beta[j]).sum();
                        let term = (alpha2 * x + beta[c] * m.sum_y[c] - alpha2 * w - ydb) / tau;
                        assert_eq!(got[c].to_bits(), (c as f64 * 0.25 - 1.0 + term).to_bits());
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(
            checked,
            2 * 3 * (1 + 2 + 7 + 8 + 9 + 10 + 15 + 16 + 17 + 24)
        );
    }

    #[test]
    fn sum_yy_dot_is_each_rows_in_order_sum() {
        for k in [1usize, 3, 8, 9, 10, 15, 16, 17, 33] {
            let mut m = RelaxedMoments::new(k);
            let (y, z, y_z) = batch_data(k, 40, 5);
            m.add_batch(&RelaxedBatch {
                n: 40,
                y: &y,
                z: &z,
                y_z: &y_z,
            });
            let beta: Vec<f64> = (0..k).map(|c| (c as f64 * 0.9).sin() * 1e3).collect();
            let want: Vec<f64> = (0..k)
                .map(|c| {
                    m.sum_yy[c * k..(c + 1) * k]
                        .iter()
                        .zip(&beta)
                        .map(|(s, b)| s * b)
                        .sum()
                })
                .collect();
            // The dispatched path (AVX-512 up to K = 16 where the CPU has it) and the
            // portable one.
            let got = with_sum_yy_dot(&m, &beta, |v| v.to_vec());
            assert_eq!(bits(&got), bits(&want), "K = {k}");
            let mut portable = vec![0.0; k];
            m.sum_yy_dot_portable(&beta, &mut portable);
            assert_eq!(bits(&portable), bits(&want), "K = {k}, portable");
        }
        // Signed zeros: all products -0.0 sum to -0.0, as `Iterator::sum` gives.
        let m = RelaxedMoments::new(3);
        let want: f64 = [0.0f64; 3].iter().map(|s| s * -1.0).sum();
        let got = with_sum_yy_dot(&m, &[-1.0; 3], |v| v.to_vec());
        assert_eq!(bits(&got), bits(&[want; 3]));
    }

    use crate::philox::PhiloxStream;
    use crate::problem::Problem;

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn joint_counts_estimates_keep_the_per_coordinate_formula_bit_for_bit() {
        // The vectorised per-coordinate loop against the formula as it was written before:
        // `scale (F - (shift + b) n - [Q]) - p centre) + c`, `c` 0 where there is none.
        let problem = (crate::problems::by_name("indecater-6x10").unwrap().build)(0);
        let ctx = Context::new(&problem, Loss::Pnorm, 1.0);
        let (l, k) = (ctx.l, ctx.k);
        let tables: Vec<_> = ctx
            .p
            .chunks(k)
            .map(crate::draws::CategoricalTable::new)
            .collect();
        let s = 37;
        let mut z = vec![0u32; s * l];
        crate::draws::draw_joint_categories(&tables, [1, 2], 3, 4, s as u32, &mut z);
        let f: Vec<f64> = z
            .chunks_exact(l)
            .map(|zi| ctx.objective.at_vertex(zi))
            .collect();
        let mut buffer = vec![0.0; JointCounts::buffer_len(&ctx)];
        fill_joint_counts(&ctx, &z, &f, &mut buffer);
        let sums = JointCounts::view(&ctx, s, &buffer);
        let mut checked = 0;
        for est in REGISTRY.iter().filter(|e| uses_joint_counts(**e, &ctx)) {
            let Some(Lowering::ScoreFunction {
                signal,
                baseline: kind,
                constant,
            }) = est.lowering()
            else {
                continue;
            };
            if constant == Constant::ExactGradient {
                continue;
            }
            let mut out = vec![0.0; ctx.dim()];
            let b_ma = 0.37;
            estimate_from_joint_counts(*est, &ctx, &sums, b_ma, &mut out);
            let sf = s as f64;
            let m = ctx.mean_field.as_ref().unwrap();
            let residual = signal == Some(Signal::MupropResidual);
            let (shift, total) = if residual {
                let shift = m.value - m.grad_dot_p.iter().sum::<f64>();
                (shift, sums.f_total - shift * sf - sums.q_total)
            } else {
                (0.0, sums.f_total)
            };
            let (b, scale) = match kind {
                Baseline::None => (0.0, 1.0 / sf),
                Baseline::MovingAverage => (b_ma, 1.0 / sf),
                Baseline::LeaveOneOut => (total / sf, 1.0 / (sf - 1.0)),
            };
            let c: &[f64] = if constant == Constant::MeanField {
                &ctx.muprop_mean_field
            } else {
                &[]
            };
            let centre = total - b * sf;
            for i in 0..ctx.dim() {
                let q = if residual { sums.q[i] } else { 0.0 };
                let a = sums.f[i] - (shift + b) * sums.n[i] - q;
                let want = scale * (a - ctx.p[i] * centre) + c.get(i).copied().unwrap_or(0.0);
                assert_eq!(out[i].to_bits(), want.to_bits(), "{} coord {i}", est.id());
            }
            checked += 1;
        }
        assert_eq!(
            checked, 5,
            "reinforce, reinforce-ema, rloo, muprop, muprop-c"
        );
    }

    #[test]
    fn buckets_unpack_the_same_with_and_without_avx2() {
        // Bucket counts below, at and past groups of four, with signed zeros and odd bits.
        for n in [1usize, 3, 4, 7, 8, 60, 61] {
            let packed: Vec<Bucket> = (0..n)
                .map(|i| {
                    let x = i as f64;
                    Bucket([x, (x * 0.37).sin() * 1e3, -(x * 0.11).cos() / 7.0, -0.0])
                })
                .collect();
            let mut fast = vec![vec![f64::NAN; n]; 3];
            let mut plain = fast.clone();
            let [c, f, q] = &mut fast[..] else {
                unreachable!()
            };
            unpack_buckets(&packed, c, f, q);
            let [c, f, q] = &mut plain[..] else {
                unreachable!()
            };
            unpack_buckets_scalar(&packed, c, f, q);
            let bits =
                |v: &[Vec<f64>]| -> Vec<u64> { v.iter().flatten().map(|x| x.to_bits()).collect() };
            assert_eq!(bits(&fast), bits(&plain), "{n} buckets");
            for (i, b) in packed.iter().enumerate() {
                assert_eq!(
                    [fast[0][i], fast[1][i], fast[2][i]].map(f64::to_bits),
                    [b.0[0], b.0[1], b.0[2]].map(f64::to_bits)
                );
            }
        }
    }

    #[test]
    fn joint_counts_by_variable_equal_the_draw_major_sums_bit_for_bit() {
        // Every loss (separable or not, with a mean field and without), problems with K below
        // and past the vector width, S with and without a remainder past blocks of eight.
        let mut small =
            Problem::free_logits(3, 5, (0..15).map(|i| (i as f64 * 0.7).sin()).collect());
        small.t = (0..15).map(|i| (i as f64 * 0.3).cos()).collect();
        small.b = vec![0.5, 2.5, 4.0];
        small.table = (0..125).map(|i| (i as f64 * 0.61).sin() * 3.0).collect();
        small.decoder = Some(crate::problem::Decoder {
            h: 2,
            v: (0..30).map(|i| (i as f64 * 0.23).cos()).collect(),
            c: vec![0.1, -0.3],
            target: vec![1.0, 0.0],
        });
        let indecater = (crate::problems::by_name("indecater-6x10").unwrap().build)(0);
        // L = 2 and L = 9: the bucket additions' unrolled form at its smallest L and their
        // loop past the unrolled ones.
        let wide = |l: usize, k: usize| {
            let mut p =
                Problem::free_logits(l, k, (0..l * k).map(|i| (i as f64 * 0.37).cos()).collect());
            p.t = (0..l * k).map(|i| (i as f64 * 0.53).sin()).collect();
            p
        };
        let (two, nine) = (wide(2, 4), wide(9, 3));
        let mut checked = 0;
        for problem in [&small, &indecater, &two, &nine] {
            for loss in Loss::ALL {
                if problem.check_loss(loss).is_err() {
                    continue;
                }
                let ctx = Context::new(problem, loss, 1.0);
                let (l, k) = (ctx.l, ctx.k);
                let tables: Vec<_> = ctx
                    .p
                    .chunks(k)
                    .map(crate::draws::CategoricalTable::new)
                    .collect();
                for s in [1usize, 7, 64, 101, 1100] {
                    let mut z = vec![0u32; s * l];
                    crate::draws::draw_joint_categories(&tables, [3, 1], 8, 0, s as u32, &mut z);
                    let mut f = vec![0.0; s];
                    ctx.objective.at_vertices(&z, &mut f);
                    let mut want = vec![0.0; JointCounts::buffer_len(&ctx)];
                    fill_joint_counts(&ctx, &z, &f, &mut want);
                    let zt: Vec<u32> = (0..s * l).map(|n| z[(n % s) * l + n / s]).collect();
                    let mut got = vec![f64::NAN; want.len()];
                    fill_joint_counts_by_variable(
                        &ctx,
                        &zt,
                        s,
                        &mut JointScratch::default(),
                        &mut got,
                    );
                    assert_eq!(bits(&got), bits(&want), "{loss} L = {l} S = {s}");
                    let mut portable = vec![f64::NAN; want.len()];
                    fill_by_variable_lanes(
                        &ctx,
                        &zt,
                        s,
                        &mut JointScratch::default(),
                        &mut portable,
                    );
                    assert_eq!(bits(&portable), bits(&want), "portable {loss} S = {s}");
                    if ctx.mean_field.is_some() {
                        assert!(want[2 * l * k..3 * l * k].iter().any(|&q| q != 0.0));
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked >= 40, "{checked}");
    }

    #[test]
    fn batched_counts_estimates_equal_each_estimators_own_bit_for_bit() {
        // Every estimator on the counts path, every quadratic loss, batches of uneven sizes
        // with the moving average carried across them, S = 1 (no draws but one), 7 and 300.
        let problem = Problem::seeded(3, 20, 6);
        let mut rng = PhiloxStream::new(11, 0, 0);
        let mut checked = 0;
        for loss in Loss::QUADRATIC {
            let ctx = Context::new(&problem, loss, 1.0);
            let k = ctx.k;
            for est in REGISTRY.iter().filter(|e| uses_counts(**e, &ctx)) {
                for s in [1u32, 7, 300]
                    .into_iter()
                    .filter(|&s| s >= est.min_samples())
                {
                    let reps = 150;
                    let counts: Vec<u32> = (0..reps)
                        .flat_map(|_| {
                            let mut c = vec![0u32; k];
                            for _ in 0..s {
                                c[rng.next_below(k as u32) as usize] += 1;
                            }
                            c
                        })
                        .collect();
                    let (mut ma_one, mut ma_batch) =
                        (MovingAverage::default(), MovingAverage::default());
                    let mut out = vec![0.0; k * COUNTS_BATCH];
                    let mut one = vec![0.0; k];
                    let mut r0 = 0;
                    for n in [1usize, 64, 5, 64, 16].into_iter().cycle() {
                        if r0 >= reps {
                            break;
                        }
                        let n = n.min(reps - r0);
                        let block = &counts[r0 * k..(r0 + n) * k];
                        let mut block_t = Vec::new();
                        transpose_counts(block, k, &mut block_t);
                        let mut ma_scalar = ma_batch;
                        estimate_counts_batch(
                            *est,
                            &ctx,
                            &block_t,
                            n,
                            n,
                            s,
                            &mut ma_batch,
                            &mut out,
                        );
                        // The scalar fallback gives the same bits.
                        if let Some(Lowering::ScoreFunction {
                            signal: Some(signal),
                            baseline: kind,
                            constant,
                        }) = est.lowering()
                        {
                            let sig = match signal {
                                Signal::Loss => &ctx.f,
                                Signal::MupropResidual => &ctx.muprop_signal,
                            };
                            let c: &[f64] = match constant {
                                Constant::MeanField => &ctx.muprop_mean_field,
                                _ => &[],
                            };
                            let mut scalar = vec![0.0; k * COUNTS_BATCH];
                            counts_batch_lanes::<false>(
                                sig,
                                &ctx.p,
                                c,
                                kind,
                                (&block_t[..], n, n),
                                s,
                                &mut ma_scalar,
                                &mut scalar,
                            );
                            for j in 0..k {
                                let row = j * COUNTS_BATCH..j * COUNTS_BATCH + n;
                                assert_eq!(scalar[row.clone()], out[row], "{} scalar", est.id());
                            }
                        }
                        for r in 0..n {
                            let c = &block[r * k..(r + 1) * k];
                            let b = ma_one.value();
                            let draws = DrawSource::Counts { counts: c, s };
                            if let Some(v) = estimate_one(*est, &ctx, draws, b, &mut one) {
                                ma_one.push(v);
                            }
                            for j in 0..k {
                                assert_eq!(
                                    out[j * COUNTS_BATCH + r].to_bits(),
                                    one[j].to_bits(),
                                    "{} {loss} S={s} rep {} coord {j}",
                                    est.id(),
                                    r0 + r
                                );
                            }
                        }
                        r0 += n;
                        checked += 1;
                    }
                    assert_eq!(ma_one.value().to_bits(), ma_batch.value().to_bits());
                }
            }
        }
        assert!(checked > 6 * 3 * 3, "{checked}");
    }
}
