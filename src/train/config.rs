//! The options of `mcgrad train` as the library takes them ([`TrainOptions`], plain data: the
//! binary's command line converts into it), their validation into a [`Plan`] (before anything
//! is read or written), and the loading of the data they name.

use std::path::PathBuf;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::estimators::{self, Estimator, REGISTRY};
use crate::loss::Loss;

use super::data::{self, Splits};
use super::model::GradientSpec;
use super::optim::OptimizerKind;

/// The options of `mcgrad train`, unvalidated ([`plan`] checks them). [`Default`] gives the
/// command line's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOptions {
    /// Estimators to train with (ids), or `all` (those that can run with `samples`).
    pub estimators: Vec<String>,
    /// Optimiser steps of each estimator's reported run.
    pub steps: u32,
    /// Inputs per minibatch, B.
    pub batch: usize,
    /// Draws per input per step, S (each costs one loss evaluation).
    pub samples: u32,
    /// One learning rate for every estimator (skips tuning; wins over `lr_grid`).
    pub lr: Option<f64>,
    /// Learning rates to tune each estimator over (default: the optimiser's grid).
    pub lr_grid: Option<Vec<f64>>,
    /// Steps of each tuning run (default: a third of `steps`).
    pub tune_steps: Option<u32>,
    /// Optimiser.
    pub optimizer: OptimizerKind,
    /// Loss of a draw: `squared` or `linear`.
    pub loss: String,
    /// Gumbel-softmax temperature.
    pub tau: f64,
    /// Seed of the built-in data, the minibatch order and every draw.
    pub seed: u64,
    /// Output folder (replaced at the end if it holds an earlier `mcgrad train` output).
    pub out: PathBuf,
    /// Where the forward passes and the draws run.
    pub backend: Backend,
    /// GPU adapter to prefer, by name.
    pub adapter: Option<String>,
    /// Folder with MNIST's IDX files instead of the built-in digits.
    pub mnist: Option<PathBuf>,
    /// Training images (default: [`DEFAULT_TRAIN_SIZE`] built-in; all of MNIST's less 5000).
    pub train_size: Option<usize>,
    /// Validation and test images each (default: [`DEFAULT_TEST_SIZE`] built-in; MNIST's 10000).
    pub test_size: Option<usize>,
    /// Evaluate every this many steps.
    pub eval_every: u32,
    /// Monte Carlo repetitions of the gradient-variance probe (relaxed estimators).
    pub variance_reps: u32,
    /// No progress bar on stderr.
    pub quiet: bool,
}

impl Default for TrainOptions {
    /// The defaults of `mcgrad train` with no options.
    fn default() -> Self {
        Self {
            estimators: vec!["all".into()],
            steps: 3000,
            batch: 32,
            samples: 2,
            lr: None,
            lr_grid: None,
            tune_steps: None,
            optimizer: OptimizerKind::Adam,
            loss: "squared".into(),
            tau: 1.0,
            seed: 0,
            out: PathBuf::from("results/train-latest"),
            backend: Backend::Auto,
            adapter: None,
            mnist: None,
            train_size: None,
            test_size: None,
            eval_every: 50,
            variance_reps: 32,
            quiet: false,
        }
    }
}

/// Built-in training images by default.
pub const DEFAULT_TRAIN_SIZE: usize = 10_000;
/// Built-in validation and test images (each) by default.
pub const DEFAULT_TEST_SIZE: usize = 2000;

/// The settings of one training run (one estimator, one learning rate).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct TrainConfig {
    /// Loss of a draw.
    pub loss: Loss,
    /// Draws per input per step, S.
    pub samples: u32,
    /// Minibatch size, B.
    pub batch: usize,
    /// Optimiser steps.
    pub steps: u32,
    /// Evaluate every this many steps.
    pub eval_every: u32,
    /// Optimiser.
    pub optimizer: OptimizerKind,
    /// Gumbel-softmax temperature.
    pub tau: f64,
    /// Seed of the order and the draws.
    pub seed: u64,
    /// Monte Carlo repetitions of the variance probe (relaxed estimators).
    pub variance_reps: u32,
}

impl TrainConfig {
    pub(super) fn spec(&self) -> GradientSpec {
        GradientSpec {
            loss: self.loss,
            samples: self.samples,
            tau: self.tau,
        }
    }
}

/// A validated `mcgrad train` invocation.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Estimators, in registry order of the user's list.
    pub estimators: Vec<&'static dyn Estimator>,
    /// Settings shared by every run.
    pub config: TrainConfig,
    /// The learning-rate grid (one value when `--lr` is given: no tuning).
    pub grid: Vec<f64>,
    /// Steps of each tuning run (0 when not tuning).
    pub tune_steps: u32,
    /// Where the forward passes run (resolved by [`super::TrainEngine::new`] in [`super::run_train`]).
    pub backend: Backend,
    /// The GPU adapter to prefer, by name.
    pub adapter: Option<String>,
}

/// Checks the options and turns them into a [`Plan`]; nothing is read or written.
///
/// # Errors
/// [`Error::InvalidArgument`] or [`Error::Unknown`] naming the option at fault.
pub fn plan(args: &TrainOptions) -> Result<Plan> {
    let bad = |m: String| Err(Error::InvalidArgument(m));
    if args.steps == 0 {
        return bad("--steps must be at least 1".into());
    }
    if args.batch == 0 || args.batch > 1 << 16 {
        return bad(format!(
            "--batch must be between 1 and 65536 (got {})",
            args.batch
        ));
    }
    if args.samples == 0 {
        return bad("--samples must be at least 1".into());
    }
    if args.eval_every == 0 {
        return bad("--eval-every must be at least 1".into());
    }
    if args.variance_reps < 2 {
        return bad(format!(
            "--variance-reps must be at least 2 (got {})",
            args.variance_reps
        ));
    }
    if !(args.tau.is_finite() && args.tau > 0.0) {
        return bad(format!("--tau must be positive (got {})", args.tau));
    }
    let loss = Loss::parse(&args.loss)?;
    if loss == Loss::Seed {
        return bad("--loss seed cannot be trained: it is constant on one-hot draws (its gradient is 0); use squared or linear".into());
    }
    let all = args.estimators.iter().any(|e| e == "all");
    let estimators: Vec<&'static dyn Estimator> = if all {
        // Training reads counts or relaxed sums: the estimators with a lowering.
        REGISTRY
            .iter()
            .copied()
            .filter(|e| args.samples >= e.min_samples() && e.lowering().is_some())
            .collect()
    } else {
        let mut chosen = Vec::new();
        for id in &args.estimators {
            let e = estimators::by_id(id.trim())?;
            if e.lowering().is_none() {
                return bad(format!(
                    "{} cannot be trained: training reads category counts or relaxed sums, and {} reads the joint draws themselves (the sweep's generic path); use it with mcgrad run",
                    e.id(),
                    e.id()
                ));
            }
            if args.samples < e.min_samples() {
                return bad(format!(
                    "{} needs --samples {} or more (got {})",
                    e.id(),
                    e.min_samples(),
                    args.samples
                ));
            }
            chosen.push(e);
        }
        REGISTRY
            .iter()
            .copied()
            .filter(|r| chosen.iter().any(|c| c.id() == r.id()))
            .collect()
    };
    if estimators.is_empty() {
        return bad("--estimators: nothing to train".into());
    }
    let grid = match (&args.lr, &args.lr_grid) {
        (Some(lr), _) => vec![*lr],
        (None, Some(g)) => g.clone(),
        (None, None) => args.optimizer.default_grid(),
    };
    if grid.is_empty() || grid.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
        return bad(format!(
            "learning rates must be positive numbers (got {grid:?})"
        ));
    }
    let tune_steps = if grid.len() > 1 {
        args.tune_steps.unwrap_or((args.steps / 3).max(1))
    } else {
        0
    };
    if grid.len() > 1 && tune_steps == 0 {
        return bad("--tune-steps must be at least 1 when tuning over a grid".into());
    }
    check_sizes(args)?;
    let config = TrainConfig {
        loss,
        samples: args.samples,
        batch: args.batch,
        steps: args.steps,
        eval_every: args.eval_every,
        optimizer: args.optimizer,
        tau: args.tau,
        seed: args.seed,
        variance_reps: args.variance_reps,
    };
    if args.adapter.is_some() && args.backend == Backend::Cpu {
        return bad("--adapter names a GPU adapter; it needs --backend gpu or auto".into());
    }
    Ok(Plan {
        estimators,
        config,
        grid,
        tune_steps,
        backend: args.backend,
        adapter: args.adapter.clone(),
    })
}

/// The most draws per input per step, `--samples`.
pub const MAX_SAMPLES: u32 = 1 << 16;
/// The most draws of one step, B x S (on the GPU they take 64 bytes each: 1 GiB).
pub const MAX_STEP_DRAWS: u64 = 1 << 24;
/// The most evaluation points of one learning curve, `--steps / --eval-every`.
pub const MAX_EVAL_POINTS: u64 = 100_000;
/// The most repetitions of the variance probe, `--variance-reps`.
pub const MAX_VARIANCE_REPS: u32 = 1 << 16;

/// Checks every size option that drives memory against its limit, before anything is
/// allocated (the limits are the constants above and [`data::MAX_SPLIT_IMAGES`]).
fn check_sizes(args: &TrainOptions) -> Result<()> {
    let bad = |m: String| Err(Error::InvalidArgument(m));
    let gb = |bytes: f64| format!("{:.1} GB", bytes / 1e9);
    for (name, v) in [
        ("--train-size", args.train_size),
        ("--test-size", args.test_size),
    ] {
        match v {
            Some(0) => return bad(format!("{name} must be at least 1")),
            Some(n) if n > data::MAX_SPLIT_IMAGES => {
                return bad(format!(
                    "{name} {n}: at most {} images per split ({n} images would take {} of memory, {} bytes each)",
                    data::MAX_SPLIT_IMAGES,
                    gb(n as f64 * data::BYTES_PER_IMAGE as f64),
                    data::BYTES_PER_IMAGE
                ))
            }
            _ => {}
        }
    }
    if args.samples > MAX_SAMPLES {
        return bad(format!(
            "--samples {}: at most {MAX_SAMPLES} draws per input per step",
            args.samples
        ));
    }
    let step_draws = args.batch as u64 * u64::from(args.samples);
    if step_draws > MAX_STEP_DRAWS {
        return bad(format!(
            "--batch {} x --samples {} = {step_draws} draws per step: at most {MAX_STEP_DRAWS} \
             (on the GPU they would take {} of memory, 64 bytes each)",
            args.batch,
            args.samples,
            gb(step_draws as f64 * 64.0)
        ));
    }
    let points = u64::from(args.steps) / u64::from(args.eval_every.max(1)) + 2;
    if points > MAX_EVAL_POINTS {
        return bad(format!(
            "--steps {} / --eval-every {} = {points} evaluation points per curve: at most \
             {MAX_EVAL_POINTS} (they would take {} of memory per estimator); raise --eval-every",
            args.steps,
            args.eval_every,
            gb(points as f64 * std::mem::size_of::<super::CurvePoint>() as f64)
        ));
    }
    if !(2..=MAX_VARIANCE_REPS).contains(&args.variance_reps) {
        return bad(format!(
            "--variance-reps {}: must be between 2 (to estimate a variance) and {MAX_VARIANCE_REPS}",
            args.variance_reps
        ));
    }
    if !(args.tau.is_finite() && args.tau >= crate::engine::MIN_TAU) {
        return bad(format!(
            "--tau {}: must be at least {} (see `mcgrad run --help`)",
            args.tau,
            crate::engine::MIN_TAU
        ));
    }
    Ok(())
}

/// Loads the data a run asks for: MNIST from `--mnist` or the built-in digits.
///
/// # Errors
/// [`Error::Read`] / [`Error::InvalidData`] for missing or malformed MNIST files.
pub fn load_data(args: &TrainOptions) -> Result<Splits> {
    match &args.mnist {
        Some(dir) => {
            let mut s = data::load_mnist(dir)?;
            if let Some(n) = args.train_size {
                s.train = s.train.truncated(n);
            }
            if let Some(n) = args.test_size {
                s.validation = s.validation.truncated(n);
                s.test = s.test.truncated(n);
            }
            Ok(s)
        }
        None => Ok(data::builtin(
            args.seed,
            args.train_size.unwrap_or(DEFAULT_TRAIN_SIZE),
            args.test_size.unwrap_or(DEFAULT_TEST_SIZE),
        )),
    }
}
