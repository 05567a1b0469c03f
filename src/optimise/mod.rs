//! Optimising any problem with every estimator: `mcgrad train --problem NAME|FILE`, and the
//! library API that `mcgrad reproduce` builds the field's published experiments on.
//!
//! A problem of the model ([`crate::problem`]: L categorical variables, logits `a = x W`) and a
//! loss give the objective `E f(z)` over `W`. [`optimise`] lowers it (or raises it, with
//! [`Direction::Maximise`]) from the problem's own `W` with each chosen estimator in turn, with
//! SGD, Adam or RMSprop ([`OptimizerKind`]) at one learning rate:
//!
//! - **Fair comparison.** Every estimator starts from the same `W` and reads the same draws:
//!   step `t` of every trajectory reads the Philox counters `(repetition 0, point t)` of the
//!   key of `seed` (common random numbers, as `mcgrad run` and the digits classifier).
//!   The per-step estimate is the estimators' own code, [`crate::estimators::estimate_at`],
//!   through the loop every training run shares ([`crate::train::stepper`]).
//! - **At every evaluation** (step 0, every `eval_every` steps, the last step), a trajectory
//!   records ([`EvalPoint`]): the objective at its `W`, exact (closed form or enumeration,
//!   [`crate::oracle`]) or, where no exact method exists, a Monte Carlo reference with its
//!   standard error, marked [`ExactKind::Reference`]; the probabilities of the tracked
//!   (variable, category) pairs; the wall seconds and loss evaluations spent so far (steps
//!   and warm-ups; evaluation excluded); and the gradient variance of its own estimator at
//!   its own `W` (with `own_variance`).
//! - **The shared trajectory** ([`SharedTrajectory`]): one more trajectory, driven by the
//!   exact gradient or by one estimator, along which the gradient variance of *every* chosen
//!   estimator is measured at the *same* parameters at every evaluation, as REBAR's
//!   `SBNTrackGradVariances`. That separates "noisier" from "went somewhere else".
//! - **Variances** ([`EstimatorVariance`]) are of the S-draw estimate in W space,
//!   `E ||G_hat - E G_hat||_F^2 = ||x||^2 sum_j Var(g_hat_j)`: exact where the estimator's
//!   linear form has exact moments on the problem ([`VarianceMethod::ClosedForm`] or
//!   [`VarianceMethod::Enumeration`], as the oracle computes them), else the sample variance
//!   of `variance_reps` Monte Carlo estimates ([`VarianceMethod::MonteCarlo`], on draws that
//!   no step reads). [`VarianceMode::MonteCarlo`] forces the Monte Carlo probe everywhere
//!   (tests compare it with the exact one). A moving-average baseline is held at its current
//!   value on an estimator's own trajectory, and at the mean signal it converges to (`E f`,
//!   or MuProp's `E f - f(p)`) on the shared one.
//! - **Warm-ups** (REBAR's `eta` and `tau`, RELAX's control variate: see
//!   [`Estimator::warm_up`]) run at step 0, and again every `rewarm_every` steps if that is
//!   set, at the current `W`, on draws no step reads. Their time and loss evaluations are
//!   counted in the trajectory's clock and reported ([`WarmUpReport`]). On the shared
//!   trajectory, each probed estimator warms up at its first evaluation (and again after
//!   `rewarm_every` steps) at the shared `W`; that is part of the measurement, not counted.
//!
//! Results depend only on the spec: each trajectory runs on one thread in a fixed order, the
//! oracles' parallel sums have a fixed partition, and independent trajectories (estimators,
//! seeds: [`optimise_many`]) run in parallel with rayon. Wall seconds aside, a run is
//! bit-identical on any number of threads.
//!
//! ```
//! use mcgrad::optimise::{optimise, OptimiseSpec, SharedTrajectory};
//! use mcgrad::{estimators, loss::Loss, problems};
//!
//! let problem = (problems::by_name("rebar-toy").unwrap().build)(0);
//! let mut spec = OptimiseSpec::new(problem, Loss::Pnorm, vec![
//!     estimators::by_id("reinforce").unwrap(),
//!     estimators::by_id("rloo").unwrap(),
//! ]);
//! spec.steps = 200;
//! spec.samples = 2;
//! spec.learning_rate = 0.05;
//! spec.track = vec![(0, 1)];
//! spec.shared = SharedTrajectory::Exact;
//! let report = optimise(&spec, &|_| {}).unwrap();
//! for t in &report.trajectories {
//!     let last = t.points.last().unwrap();
//!     println!("{}: E f = {:.5}, p(z = 1) = {:.3}", t.estimator, last.objective, last.probabilities[0]);
//! }
//! ```
//!
//! Modules: [`trajectory`] (one trajectory as a [`crate::train::StepTask`]), [`variance`] (the
//! variance probes), [`output`] (the files, plots and table of `mcgrad train --problem`).

pub mod output;
pub mod trajectory;
pub mod variance;

use rayon::prelude::*;

use crate::engine::{path_of, Path, MAX_REPETITION_NUMBERS, MIN_TAU};
use crate::error::{Error, Result};
use crate::estimators::{self, Context, Estimator, Settings};
use crate::loss::Loss;
use crate::oracle::ExactKind;
use crate::problem::Problem;
pub use crate::train::model::VarianceMethod;
pub use crate::train::OptimizerKind;

pub use output::{run_problem_train, ProblemTrainOptions};

/// Whether the objective is lowered or raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Lower `E f(z)` (the default).
    #[default]
    Minimise,
    /// Raise `E f(z)` (IndeCateR's 200-Bernoulli experiment).
    Maximise,
}

/// The trajectory along which every estimator's gradient variance is measured.
#[derive(Clone, Copy, Debug, Default)]
pub enum SharedTrajectory {
    /// None.
    #[default]
    None,
    /// Driven by the exact gradient (estimator `exact`; needs an exact oracle).
    Exact,
    /// Driven by this estimator's own estimates (its own draws, as its trajectory).
    Estimator(&'static dyn Estimator),
}

impl SharedTrajectory {
    /// The driving estimator, if any.
    pub fn driver(self) -> Option<&'static dyn Estimator> {
        match self {
            SharedTrajectory::None => None,
            SharedTrajectory::Exact => Some(&estimators::Exact),
            SharedTrajectory::Estimator(e) => Some(e),
        }
    }
}

/// How variances are measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum VarianceMode {
    /// Exactly where the estimator has exact moments on the problem, else by Monte Carlo.
    #[default]
    ExactWhereAvailable,
    /// By Monte Carlo for every estimator (to check the exact ones against).
    MonteCarlo,
}

/// Reference objective draws per evaluation where no exact oracle applies.
pub const REFERENCE_OBJECTIVE_DRAWS: u32 = 1 << 13;
/// The most draws per step, `--samples`.
pub const MAX_SAMPLES: u32 = 1 << 16;
/// The most evaluation points of one trajectory.
pub const MAX_EVAL_POINTS: u64 = 100_000;
/// The most repetitions of a Monte Carlo variance probe.
pub const MAX_VARIANCE_REPS: u32 = 1 << 16;

/// Everything one optimisation run needs. [`OptimiseSpec::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct OptimiseSpec {
    /// The problem; its `W` is every trajectory's starting point.
    pub problem: Problem,
    /// The loss.
    pub loss: Loss,
    /// The estimators, one trajectory each, in this order.
    pub estimators: Vec<&'static dyn Estimator>,
    /// The estimators' own settings (`warmup` is the number of steps of each warm-up).
    pub settings: Settings,
    /// Gumbel-softmax temperature of the relaxed estimators.
    pub tau: f64,
    /// The optimiser.
    pub optimiser: OptimizerKind,
    /// Its learning rate.
    pub learning_rate: f64,
    /// Optimiser steps.
    pub steps: u32,
    /// Draws per step, S.
    pub samples: u32,
    /// Evaluate every this many steps (and at step 0 and the last step).
    pub eval_every: u32,
    /// Repetitions of a Monte Carlo variance probe.
    pub variance_reps: u32,
    /// Exact variances where they exist, or Monte Carlo everywhere.
    pub variance_mode: VarianceMode,
    /// Whether each trajectory records its own estimator's variance at its own `W`.
    pub own_variance: bool,
    /// The (variable, category) pairs whose probabilities every evaluation records.
    pub track: Vec<(usize, usize)>,
    /// The trajectory along which every estimator's variance is measured.
    pub shared: SharedTrajectory,
    /// Minimise or maximise.
    pub direction: Direction,
    /// Warm up again every this many steps (0: only at step 0).
    pub rewarm_every: u32,
    /// Seed of every draw.
    pub seed: u64,
}

impl OptimiseSpec {
    /// A spec with the defaults: Adam at 0.01, 1000 steps, S = 2, an evaluation every 10
    /// steps, 32 Monte Carlo repetitions, own variances on, no tracked probabilities, no
    /// shared trajectory, minimising, one warm-up, seed 0, tau 1.
    pub fn new(problem: Problem, loss: Loss, estimators: Vec<&'static dyn Estimator>) -> Self {
        Self {
            problem,
            loss,
            estimators,
            settings: Settings::default(),
            tau: 1.0,
            optimiser: OptimizerKind::Adam,
            learning_rate: 0.01,
            steps: 1000,
            samples: 2,
            eval_every: 10,
            variance_reps: 32,
            variance_mode: VarianceMode::ExactWhereAvailable,
            own_variance: true,
            track: Vec::new(),
            shared: SharedTrajectory::None,
            direction: Direction::Minimise,
            rewarm_every: 0,
            seed: 0,
        }
    }

    /// The estimator context at the starting point (no oracle run: see
    /// [`Context::set_logits`]).
    pub fn start_context(&self) -> Context {
        trajectory::fresh_context(self)
    }

    /// Checks the spec: every estimator (and the shared trajectory's driver) must be defined
    /// on the problem and loss.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] (or the problem's own errors) naming what is wrong.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        self.problem.validate()?;
        self.problem.check_loss(self.loss)?;
        if self.steps == 0 {
            return bad("--steps must be at least 1".into());
        }
        if self.samples == 0 || self.samples > MAX_SAMPLES {
            return bad(format!(
                "--samples must be between 1 and {MAX_SAMPLES} (got {})",
                self.samples
            ));
        }
        if self.eval_every == 0 {
            return bad("--eval-every must be at least 1".into());
        }
        let points = u64::from(self.steps) / u64::from(self.eval_every) + 2;
        if points > MAX_EVAL_POINTS {
            return bad(format!(
                "--steps {} / --eval-every {} = {points} evaluation points: at most {MAX_EVAL_POINTS}; raise --eval-every",
                self.steps, self.eval_every
            ));
        }
        if !(2..=MAX_VARIANCE_REPS).contains(&self.variance_reps) {
            return bad(format!(
                "--variance-reps {}: must be between 2 and {MAX_VARIANCE_REPS}",
                self.variance_reps
            ));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad(format!(
                "--lr must be a positive number (got {})",
                self.learning_rate
            ));
        }
        if !(self.tau.is_finite() && self.tau >= MIN_TAU) {
            return bad(format!(
                "--tau must be at least {MIN_TAU} (got {})",
                self.tau
            ));
        }
        let (l, k) = (self.problem.l, self.problem.k);
        for &(var, cat) in &self.track {
            if var >= l || cat >= k {
                return bad(format!(
                    "--track {var}:{cat}: the problem has {l} variables of {k} categories (variable and category count from 0)"
                ));
            }
        }
        if self.estimators.is_empty() {
            return bad("--estimators: nothing to train".into());
        }
        let ctx = self.start_context();
        let driver = self.shared.driver();
        for e in self.estimators.iter().chain(driver.as_ref()) {
            e.check(&ctx)?;
            e.check_samples(&ctx, self.samples)?;
            if self.samples < e.min_samples() {
                return bad(format!(
                    "{} needs --samples {} or more (got {})",
                    e.id(),
                    e.min_samples(),
                    self.samples
                ));
            }
            // The generic and joint-counts paths keep one step's draws whole: bound them.
            let per_draw = l as u64 + 2 + 3 * self.problem.dim() as u64;
            if matches!(path_of(*e, &ctx), Path::Generic(_) | Path::JointCounts)
                && u64::from(self.samples) * per_draw > MAX_REPETITION_NUMBERS
            {
                return bad(format!(
                    "--samples {}: {} keeps {per_draw} numbers per draw on this problem; at most {MAX_REPETITION_NUMBERS} per step, so S <= {}",
                    self.samples,
                    e.id(),
                    MAX_REPETITION_NUMBERS / per_draw
                ));
            }
        }
        Ok(())
    }
}

/// One estimator's variance at one evaluation.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct EstimatorVariance {
    /// The estimator.
    pub estimator: &'static str,
    /// `E ||G_hat - E G_hat||_F^2` of its S-draw estimate in W space.
    pub variance: f64,
    /// How it was obtained (exact: closed form or enumeration; or Monte Carlo).
    pub method: VarianceMethod,
    /// Repetitions of a Monte Carlo probe (None where exact).
    pub reps: Option<u32>,
}

/// One evaluation of a trajectory.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EvalPoint {
    /// Steps taken.
    pub step: u32,
    /// `E f(z)` at this `W`: exact, or a Monte Carlo reference (see `objective_kind`).
    pub objective: f64,
    /// Whether `objective` is exact or a reference.
    pub objective_kind: ExactKind,
    /// The standard error of a reference objective (None where exact).
    pub objective_se: Option<f64>,
    /// `||G||_F^2` of the exact W gradient (None where there is no exact gradient).
    pub exact_grad_sq: Option<f64>,
    /// The probabilities of the tracked (variable, category) pairs, in the spec's order.
    pub probabilities: Vec<f64>,
    /// Variances at this `W`: the trajectory's own estimator (with `own_variance`), or every
    /// estimator of the spec on the shared trajectory.
    pub variances: Vec<EstimatorVariance>,
    /// Wall seconds of the steps and warm-ups so far (evaluation excluded).
    pub seconds: f64,
    /// Loss evaluations of the steps and warm-ups so far (each step counted by its
    /// estimator's [`Estimator::loss_evaluations`], refreshed every `eval_every` steps: only
    /// ARSM's, an expectation, depends on the parameters).
    pub loss_evaluations: f64,
}

/// What the warm-ups of one trajectory's estimator cost and tuned.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct WarmUpReport {
    /// Warm-ups run (1 + one per `rewarm_every` steps).
    pub count: u32,
    /// Their wall seconds (counted in the trajectory's clock).
    pub seconds: f64,
    /// Their loss evaluations (counted in the trajectory's clock).
    pub loss_evaluations: f64,
    /// The estimator's report of its last warm-up (what it tuned, to what).
    pub last: String,
}

/// One trajectory: an estimator's run from the common start.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Trajectory {
    /// The estimator that drove it.
    pub estimator: &'static str,
    /// The seed of its draws.
    pub seed: u64,
    /// Loss evaluations of one step's estimate at the start.
    pub loss_evaluations_per_step: f64,
    /// The evaluations, in step order.
    pub points: Vec<EvalPoint>,
    /// Its warm-ups, if its estimator tunes itself.
    pub warm_up: Option<WarmUpReport>,
    /// `W` after the last step (D x L*K, row-major).
    #[serde(skip)]
    pub w: Vec<f64>,
}

impl Trajectory {
    /// The last evaluation.
    ///
    /// # Panics
    /// Never: a trajectory always has its step-0 point.
    pub fn last(&self) -> &EvalPoint {
        self.points
            .last()
            .expect("a trajectory has its step-0 point")
    }
}

/// Everything one spec produced.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OptimiseReport {
    /// One trajectory per estimator of the spec, in its order.
    pub trajectories: Vec<Trajectory>,
    /// The shared trajectory, whose points carry every estimator's variance.
    pub shared: Option<Trajectory>,
}

/// Runs every estimator's trajectory (and the shared one) of `spec`, in parallel.
/// `progress` is called with the number of steps done since its last call (all
/// trajectories together: `steps` per trajectory).
///
/// # Errors
/// [`OptimiseSpec::validate`]'s errors.
pub fn optimise(spec: &OptimiseSpec, progress: &(dyn Fn(u64) + Sync)) -> Result<OptimiseReport> {
    let mut reports = optimise_many(std::slice::from_ref(spec), progress)?;
    Ok(reports.remove(0))
}

/// Runs several specs (seeds, settings) at once: every (spec, trajectory) pair is one job,
/// and the jobs run in parallel; the reports are in the order of `specs`.
///
/// # Errors
/// The first spec's [`OptimiseSpec::validate`] error, before anything runs.
pub fn optimise_many(
    specs: &[OptimiseSpec],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<OptimiseReport>> {
    for spec in specs {
        spec.validate()?;
    }
    // Job (spec, None) is the shared trajectory; (spec, Some(e)) estimator e's own.
    let jobs: Vec<(usize, Option<usize>)> = specs
        .iter()
        .enumerate()
        .flat_map(|(i, spec)| {
            let shared = spec.shared.driver().map(|_| (i, None));
            (0..spec.estimators.len())
                .map(move |e| (i, Some(e)))
                .chain(shared)
        })
        .collect();
    let done: Vec<Trajectory> = jobs
        .par_iter()
        .map(|&(i, e)| trajectory::run(&specs[i], e, progress))
        .collect::<Result<_>>()?;
    let mut reports: Vec<OptimiseReport> = specs
        .iter()
        .map(|_| OptimiseReport {
            trajectories: Vec::new(),
            shared: None,
        })
        .collect();
    for ((i, e), t) in jobs.into_iter().zip(done) {
        match e {
            Some(_) => reports[i].trajectories.push(t),
            None => reports[i].shared = Some(t),
        }
    }
    Ok(reports)
}
