//! `mcgrad train`: learn the stochastic layer `z ~ Cat(softmax(x W))` with each estimator in
//! turn, on a classification-as-choice task, and record learning curves.
//!
//! Each input `x` (a 28 x 28 image) has a class `c`; the layer draws a class `z` and pays
//! `f(z)`, by default `squared` against the one-hot class (`f(e_k) = 2 [k != c]`), so the
//! objective `E f(z) = 2 (1 - p_c)` averaged over a minibatch is what W learns to lower.
//! Every step: gather the minibatch, the batched forward pass (on the CPU,
//! [`model::forward_batch`], or on the GPU, [`device`]), S draws per input, the estimator's
//! logit gradient per input, `G_hat = (1/B) sum_b x_b^T g_hat_b`, one optimiser step; all but
//! the forward pass run on the CPU. Every `eval_every` steps (and at the first and last): the exact expected loss of
//! the held-out test set by enumeration over the K classes, the accuracy of the most probable
//! class, and the variance of the gradient estimate at the current W (see
//! [`model::gradient_variance`]: the total W-space variance of the minibatch estimate on a
//! fixed probe batch, the first B training images, exact where a closed form exists).
//!
//! Fair comparison:
//! - every estimator sees the same minibatches in the same order ([`BatchStream`]) and the
//!   same Philox draws (common random numbers: input b of step t reads counter `(b, t)`);
//! - the budget is S draws per input per step, each costing one loss evaluation, for every
//!   estimator, with these exceptions stated in the results: `exact` evaluates all K losses
//!   and draws nothing; `muprop`/`muprop-c` add one mean-field evaluation of `f(p)` and
//!   `grad f(p)` per input; the Gumbel estimators evaluate `grad f` at each draw as well;
//! - each estimator gets its own learning rate, the best of a small grid by the exact
//!   validation loss after a short run (`--tune-steps`); the validation images are neither
//!   trained on nor reported;
//! - wall-clock time counts only the training steps (not evaluation or variance probes),
//!   and estimators run one after the other on one thread, so their times are comparable.

pub mod data;
pub mod device;
pub mod model;
pub mod optim;
pub mod plot;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::estimators::{self, Estimator, Family, MovingAverage, REGISTRY};
use crate::gpu::train_draws::{DrawKind, TrainDrawParams};
use crate::loss::Loss;
use crate::philox::{key_of, PhiloxStream, STREAM_TRAIN};

use data::{Dataset, Splits, D, K};
pub use device::TrainEngine;
use model::{DrawKey, GradientSpec, VarianceMethod};
pub use optim::{Optimizer, OptimizerKind};

/// Key offset of the Monte Carlo variance probes, so they never reuse training draws.
const VARIANCE_KEY_SALT: u64 = 0x7661_7269_616e_6365;

/// Where the forward passes and the draws of training run (the estimators' arithmetic and
/// the optimiser always run on the CPU; see [`device`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TrainBackend {
    /// A hardware GPU if there is one (or the `--adapter` named), else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// Any GPU adapter, software ones too (or the `--adapter` named).
    Gpu,
}

/// Options of `mcgrad train`.
#[derive(clap::Args, Clone, Debug)]
pub struct TrainArgs {
    /// Estimators to train with, comma-separated, or `all` (those that can run with --samples).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub estimators: Vec<String>,
    /// Optimiser steps of each estimator's reported run.
    #[arg(long, default_value_t = 3000)]
    pub steps: u32,
    /// Inputs per minibatch, B.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Draws per input per step, S (each costs one loss evaluation).
    #[arg(long, default_value_t = 2)]
    pub samples: u32,
    /// One learning rate for every estimator (skips tuning).
    #[arg(long, conflicts_with = "lr_grid")]
    pub lr: Option<f64>,
    /// Learning rates to tune each estimator over, comma-separated
    /// [default: 0.0003,0.001,0.003,0.01,0.03,0.1 for adam; 0.03,0.1,0.3,1,3,10 for sgd].
    #[arg(long, value_delimiter = ',')]
    pub lr_grid: Option<Vec<f64>>,
    /// Steps of each tuning run [default: a third of --steps].
    #[arg(long)]
    pub tune_steps: Option<u32>,
    /// Optimiser.
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adam)]
    pub optimizer: OptimizerKind,
    /// Loss of a draw: `squared` (against the one-hot class) or `linear` (cost 1 for a wrong class).
    #[arg(long, default_value = "squared")]
    pub loss: String,
    /// Gumbel-softmax temperature.
    #[arg(long, default_value_t = 1.0)]
    pub tau: f64,
    /// Seed of the built-in data, the minibatch order and every draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder (replaced at the end if it holds an earlier `mcgrad train` output).
    #[arg(long, default_value = "results/train-latest")]
    pub out: PathBuf,
    /// Where the batched forward pass (X W, B x 784 x 10) and the S draws per input of every
    /// step run: auto (a hardware GPU if present, else the CPU), cpu, or gpu (any adapter,
    /// software ones too). The estimators' arithmetic on the draws, the W gradient and the
    /// optimiser always run on the CPU.
    #[arg(long, value_enum, default_value_t = TrainBackend::Auto)]
    pub backend: TrainBackend,
    /// GPU adapter to prefer, by name (case-insensitive substring; `mcgrad info` lists them).
    #[arg(long)]
    pub adapter: Option<String>,
    /// Folder with MNIST's IDX files (gzip or not) instead of the built-in digits.
    #[arg(long)]
    pub mnist: Option<PathBuf>,
    /// Training images [default: 10000 built-in; all of MNIST's less 5000 for validation].
    #[arg(long)]
    pub train_size: Option<usize>,
    /// Validation and test images each [default: 2000 built-in; MNIST's 10000 test images].
    #[arg(long)]
    pub test_size: Option<usize>,
    /// Evaluate (held-out loss, accuracy, gradient variance) every N steps.
    #[arg(long, default_value_t = 50)]
    pub eval_every: u32,
    /// Monte Carlo repetitions of the gradient-variance probe for the relaxed estimators.
    #[arg(long, default_value_t = 32)]
    pub variance_reps: u32,
    /// No progress bar on stderr (the results table still goes to stdout).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(clap::Parser)]
struct DefaultsOnly {
    #[command(flatten)]
    args: TrainArgs,
}

impl Default for TrainArgs {
    /// The defaults of `mcgrad train` with no options.
    fn default() -> Self {
        <DefaultsOnly as clap::Parser>::parse_from(["train"]).args
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
    fn spec(&self) -> GradientSpec {
        GradientSpec {
            loss: self.loss,
            samples: self.samples,
            tau: self.tau,
        }
    }
}

/// The minibatch order: epoch `e` is a Fisher-Yates permutation of the training set drawn
/// from Philox sub-stream `(3 << 28) | e` of the training stream, and minibatches are taken
/// from the concatenated permutations. A fresh stream gives every estimator the same order.
#[derive(Clone, Debug)]
pub struct BatchStream {
    seed: u64,
    n: usize,
    epoch: u32,
    perm: Vec<u32>,
    pos: usize,
}

impl BatchStream {
    /// The order of `n` training images under `seed`.
    pub fn new(seed: u64, n: usize) -> Self {
        Self {
            seed,
            n,
            epoch: 0,
            perm: permutation(seed, n, 0),
            pos: 0,
        }
    }

    /// The next minibatch of `batch` image indices.
    pub fn next_batch(&mut self, batch: usize, out: &mut Vec<u32>) {
        out.clear();
        while out.len() < batch {
            if self.pos == self.n {
                self.epoch += 1;
                self.perm = permutation(self.seed, self.n, self.epoch);
                self.pos = 0;
            }
            out.push(self.perm[self.pos]);
            self.pos += 1;
        }
    }
}

fn permutation(seed: u64, n: usize, epoch: u32) -> Vec<u32> {
    let mut rng = PhiloxStream::new(
        seed,
        STREAM_TRAIN,
        (data::SPLIT_ORDER << 28) | (epoch & 0x0fff_ffff),
    );
    let mut p: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = rng.next_below(i as u32 + 1) as usize;
        p.swap(i, j);
    }
    p
}

/// One evaluation point of a learning curve.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct CurvePoint {
    /// Steps taken.
    pub step: u32,
    /// Wall seconds of the training steps so far (evaluation excluded).
    pub train_seconds: f64,
    /// Exact expected loss of the held-out set.
    pub heldout_loss: f64,
    /// Accuracy of the most probable class on the held-out set.
    pub heldout_accuracy: f64,
    /// Total W-space variance of the minibatch gradient estimate at this W (probe batch).
    pub grad_variance: f64,
    /// `||G||^2` of the exact probe-batch gradient at this W (for scale).
    pub exact_grad_sq: f64,
    /// Mean exact minibatch objective over the steps since the previous point (None at 0).
    pub train_loss: Option<f64>,
}

/// A learning curve of one estimator.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Curve {
    /// Estimator id.
    pub estimator: &'static str,
    /// Learning rate.
    pub lr: f64,
    /// How the variances were obtained.
    pub variance_method: VarianceMethod,
    /// The evaluation points, in step order.
    pub points: Vec<CurvePoint>,
    /// W after the last step (D x K row-major).
    #[serde(skip)]
    pub w: Vec<f64>,
}

impl Curve {
    /// The last point.
    ///
    /// # Panics
    /// Never: a curve always has its step-0 point.
    pub fn last(&self) -> &CurvePoint {
        self.points.last().expect("a curve has its step-0 point")
    }
}

/// What a training run records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// Every `eval_every` steps: loss, accuracy, variance on the evaluation set.
    Full,
    /// Only the loss at the end (tuning runs).
    FinalLoss,
}

/// Trains W (from 0) with `est` at learning rate `lr` on `train`, evaluating on `eval`, with
/// the forward passes on the CPU (see [`train_estimator_on`]).
///
/// # Panics
/// If `train` is empty or `cfg.batch` is 0 (validated by [`run_train`]).
pub fn train_estimator(
    train: &Dataset,
    eval: &Dataset,
    est: &dyn Estimator,
    cfg: &TrainConfig,
    lr: f64,
    record: Record,
    progress: &(dyn Fn(u64) + Sync),
) -> Curve {
    train_estimator_on(
        &TrainEngine::Cpu,
        train,
        eval,
        est,
        cfg,
        lr,
        record,
        progress,
    )
    .expect("the CPU forward pass cannot fail")
}

/// Trains W (from 0) with `est` at learning rate `lr` on `train`, evaluating on `eval`, with
/// every forward pass (the minibatch's, the probe batch's and the held-out set's) on
/// `engine`; the draws, estimators, optimiser and loss sums stay on the CPU in f64.
/// `progress` is called with the number of steps done since its last call.
///
/// # Errors
/// [`Error::Gpu`] if the GPU fails (never on the CPU).
///
/// # Panics
/// If `train` is empty or `cfg.batch` is 0 (validated by [`run_train`]).
#[allow(clippy::too_many_arguments)]
pub fn train_estimator_on(
    engine: &TrainEngine,
    train: &Dataset,
    eval: &Dataset,
    est: &dyn Estimator,
    cfg: &TrainConfig,
    lr: f64,
    record: Record,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Curve> {
    assert!(
        !train.is_empty() && cfg.batch > 0,
        "empty training set or batch"
    );
    let spec = cfg.spec();
    let key = key_of(cfg.seed);
    let var_key = key_of(cfg.seed ^ VARIANCE_KEY_SALT);
    let mut w = vec![0.0; D * K];
    let mut opt = Optimizer::new(cfg.optimizer, lr, D * K);
    let mut baseline = MovingAverage::default();
    let mut order = BatchStream::new(cfg.seed, train.len());
    let (mut indices, mut x) = (
        Vec::with_capacity(cfg.batch),
        Vec::with_capacity(cfg.batch * D),
    );
    let mut labels = Vec::with_capacity(cfg.batch);
    let mut logits = vec![0.0; cfg.batch * K];
    let mut grad = vec![0.0; D * K];
    // The variance probe: the first B training images (fixed along training).
    let probe: Vec<u32> = (0..cfg.batch.min(train.len()) as u32).collect();
    let mut probe_x = Vec::new();
    model::gather(train, &probe, &mut probe_x);
    let probe_labels: Vec<u8> = probe.iter().map(|&i| train.labels[i as usize]).collect();
    // The forward passes, made once: buffers and pipeline reused at every step.
    let mut step_pass = engine.step_pass(cfg.batch, cfg.samples)?;
    // On the GPU the step's draws are made there, beside the forward pass.
    let draw_kind = match est.family() {
        _ if est.id() == "exact" => None,
        Family::ScoreFunction => Some(DrawKind::Categorical),
        Family::Relaxed => Some(DrawKind::Gumbel),
    };
    let mut eval_pass = engine.fixed_pass(&eval.x)?;
    let mut probe_pass = match record {
        Record::Full => Some(engine.fixed_pass(&probe_x)?),
        Record::FinalLoss => None,
    };
    let mut eval_logits = vec![0.0; eval.len() * K];
    let mut probe_logits = vec![0.0; probe_labels.len() * K];

    let mut points = Vec::new();
    let mut method = VarianceMethod::ClosedForm;
    let (mut seconds, mut since_sum, mut since_n, mut reported) = (0.0, 0.0, 0u32, 0u32);
    let mut evaluate = |step: u32,
                        w: &[f64],
                        baseline: f64,
                        seconds: f64,
                        train_loss: Option<f64>|
     -> Result<()> {
        eval_pass.run(w, &mut eval_logits)?;
        let e = model::evaluate_logits(&eval.labels, &eval_logits, cfg.loss);
        let (mut var, mut gsq) = (f64::NAN, f64::NAN);
        if let Some(pass) = probe_pass.as_mut() {
            pass.run(w, &mut probe_logits)?;
            let dk = DrawKey {
                key: var_key,
                step,
                rep_offset: 0,
            };
            let v = model::gradient_variance(
                est,
                spec,
                &probe_x,
                &probe_labels,
                &probe_logits,
                baseline,
                dk,
                cfg.variance_reps,
            );
            (var, gsq, method) = (v.total, v.exact_grad_sq, v.method);
        }
        points.push(CurvePoint {
            step,
            train_seconds: seconds,
            heldout_loss: e.loss,
            heldout_accuracy: e.accuracy,
            grad_variance: var,
            exact_grad_sq: gsq,
            train_loss,
        });
        Ok(())
    };
    if record == Record::Full {
        evaluate(0, &w, baseline.value(), 0.0, None)?;
    }
    for step in 0..cfg.steps {
        let t0 = Instant::now();
        order.next_batch(cfg.batch, &mut indices);
        model::gather(train, &indices, &mut x);
        labels.clear();
        labels.extend(indices.iter().map(|&i| train.labels[i as usize]));
        let dk = DrawKey {
            key,
            step,
            rep_offset: 0,
        };
        let draw_params = TrainDrawParams {
            key: dk.key,
            step,
            batch: cfg.batch as u32,
            samples: cfg.samples,
            k: K as u32,
            rep_offset: dk.rep_offset,
            inv_tau: (1.0 / cfg.tau) as f32,
        };
        let drawn =
            step_pass.run_drawn(&x, &w, &mut logits, draw_kind.map(|k| (k, draw_params)))?;
        let bg = model::batch_gradient(
            est,
            spec,
            &x,
            &labels,
            &logits,
            baseline.value(),
            dk,
            drawn.as_ref(),
            &mut grad,
        );
        if let Some(s) = bg.baseline_signal {
            // Pushed after this step's estimate: the baseline never sees its own draws.
            baseline.push(s);
        }
        opt.step(&mut w, &grad);
        seconds += t0.elapsed().as_secs_f64();
        since_sum += bg.objective;
        since_n += 1;
        let done = step + 1;
        let due = record == Record::Full && (done % cfg.eval_every == 0 || done == cfg.steps);
        if due || (record == Record::FinalLoss && done == cfg.steps) {
            evaluate(
                done,
                &w,
                baseline.value(),
                seconds,
                Some(since_sum / f64::from(since_n)),
            )?;
            (since_sum, since_n) = (0.0, 0);
        }
        if done % 16 == 0 || done == cfg.steps {
            progress(u64::from(done - reported));
            reported = done;
        }
    }
    if cfg.steps == 0 && record == Record::FinalLoss {
        evaluate(0, &w, baseline.value(), 0.0, None)?;
    }
    Ok(Curve {
        estimator: est.id(),
        lr,
        variance_method: method,
        points,
        w,
    })
}

impl Curve {
    /// The first evaluated step at which the held-out loss is at most `loss`, if any.
    pub fn steps_to_reach(&self, loss: f64) -> Option<u32> {
        self.points
            .iter()
            .find(|p| p.heldout_loss <= loss)
            .map(|p| p.step)
    }
}

/// Speed-up of every curve over `reinforce` (the likelihood-ratio estimator without a
/// baseline), as the MuProp paper states its claim: with `L*` the final held-out loss of
/// `reinforce`, `speedup = steps_reinforce(L*) / steps(L*)` where `steps(L)` is the first
/// evaluated step with held-out loss at most L (None where a curve never reaches `L*`, or
/// without a `reinforce` curve). Returns `(L*, speed-ups)`.
pub fn speedups_vs_reinforce(curves: &[Curve]) -> Option<(f64, Vec<Option<f64>>)> {
    let reference = curves.iter().find(|c| c.estimator == "reinforce")?;
    let target = reference.last().heldout_loss;
    let base = f64::from(reference.steps_to_reach(target)?);
    let ups = curves
        .iter()
        .map(|c| {
            c.steps_to_reach(target)
                .filter(|&s| s > 0)
                .map(|s| base / f64::from(s))
        })
        .collect();
    Some((target, ups))
}

/// One tuning run's outcome.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct TuningPoint {
    /// Learning rate.
    pub lr: f64,
    /// Exact validation loss after the tuning run (infinite if it diverged).
    pub validation_loss: f64,
}

/// Tunes `est`'s learning rate over `grid`: a run of `tune_steps` steps per rate (in
/// parallel), scored by the exact loss of `validation`. Returns the best rate (ties go to
/// the smaller rate) and every score. Forward passes on the CPU (see [`tune_lr_on`]).
pub fn tune_lr(
    train: &Dataset,
    validation: &Dataset,
    est: &dyn Estimator,
    cfg: &TrainConfig,
    grid: &[f64],
    tune_steps: u32,
    progress: &(dyn Fn(u64) + Sync),
) -> (f64, Vec<TuningPoint>) {
    tune_lr_on(
        &TrainEngine::Cpu,
        train,
        validation,
        est,
        cfg,
        grid,
        tune_steps,
        progress,
    )
    .expect("the CPU forward pass cannot fail")
}

/// [`tune_lr`] with the forward passes on `engine` (the grid's runs share the device).
///
/// # Errors
/// [`Error::Gpu`] if the GPU fails.
#[allow(clippy::too_many_arguments)]
pub fn tune_lr_on(
    engine: &TrainEngine,
    train: &Dataset,
    validation: &Dataset,
    est: &dyn Estimator,
    cfg: &TrainConfig,
    grid: &[f64],
    tune_steps: u32,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(f64, Vec<TuningPoint>)> {
    let short = TrainConfig {
        steps: tune_steps,
        ..*cfg
    };
    let scores: Vec<TuningPoint> = grid
        .par_iter()
        .map(|&lr| {
            let c = train_estimator_on(
                engine,
                train,
                validation,
                est,
                &short,
                lr,
                Record::FinalLoss,
                progress,
            )?;
            let l = c.last().heldout_loss;
            Ok(TuningPoint {
                lr,
                validation_loss: if l.is_finite() { l } else { f64::INFINITY },
            })
        })
        .collect::<Result<_>>()?;
    let best = scores
        .iter()
        .fold(None::<TuningPoint>, |best, s| match best {
            Some(b)
                if b.validation_loss < s.validation_loss
                    || (b.validation_loss == s.validation_loss && b.lr <= s.lr) =>
            {
                Some(b)
            }
            _ => Some(*s),
        })
        .map_or(grid[0], |b| b.lr);
    Ok((best, scores))
}

/// Loss evaluations per input per step of `est` with S draws, as stated in the results:
/// `exact` K, MuProp S + 1 (the mean-field pass), the others S.
pub fn loss_evaluations(est: &dyn Estimator, samples: u32) -> u32 {
    match est.id() {
        "exact" => K as u32,
        "muprop" | "muprop-c" => samples + 1,
        _ => samples,
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
    /// Where the forward passes run (resolved by [`TrainEngine::new`] in [`run_train`]).
    pub backend: TrainBackend,
    /// The GPU adapter to prefer, by name.
    pub adapter: Option<String>,
}

/// Checks the options and turns them into a [`Plan`]; nothing is read or written.
///
/// # Errors
/// [`Error::InvalidArgument`] or [`Error::Unknown`] naming the option at fault.
pub fn plan(args: &TrainArgs) -> Result<Plan> {
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
    // Training reads one variable's category counts or relaxed sums: the estimators with a
    // lowering (the others need joint draws, which only `mcgrad run` has).
    let trainable = |e: &dyn Estimator| e.lowering().is_some();
    let estimators: Vec<&'static dyn Estimator> = if all {
        REGISTRY
            .iter()
            .copied()
            .filter(|e| args.samples >= e.min_samples() && trainable(*e))
            .collect()
    } else {
        let mut chosen = Vec::new();
        for id in &args.estimators {
            let e = estimators::by_id(id.trim())?;
            if !trainable(e) {
                return bad(format!(
                    "{} cannot be trained: it has no one-variable lowering; use it with `mcgrad run`",
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
    for (name, v) in [
        ("--train-size", args.train_size),
        ("--test-size", args.test_size),
    ] {
        if v == Some(0) || v.is_some_and(|n| n >= data::MAX_IMAGES) {
            return bad(format!("{name} must be between 1 and 2^28 - 1"));
        }
    }
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
    if args.adapter.is_some() && args.backend == TrainBackend::Cpu {
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

/// Loads the data a run asks for: MNIST from `--mnist` or the built-in digits.
///
/// # Errors
/// [`Error::Read`] / [`Error::InvalidData`] for missing or malformed MNIST files.
pub fn load_data(args: &TrainArgs) -> Result<Splits> {
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

/// Checks that `out` can be replaced: absent, an empty folder, or an earlier output.
fn check_out(out: &Path) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    let empty = std::fs::read_dir(out)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    if !out.is_dir() || !(empty || out.join("curves.json").is_file()) {
        return Err(Error::InvalidArgument(format!(
            "--out {}: exists and is not an earlier `mcgrad train` output; choose another folder or remove it",
            out.display()
        )));
    }
    Ok(())
}

/// Everything a finished run produced.
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// The plan it ran.
    pub plan: Plan,
    /// Where the data came from, and the split sizes (train, validation, test).
    pub data: (String, usize, usize, usize),
    /// Tuning scores per estimator (empty when not tuning).
    pub tuning: Vec<Vec<TuningPoint>>,
    /// One curve per estimator.
    pub curves: Vec<Curve>,
    /// Wall seconds of the whole run.
    pub seconds: f64,
    /// Where the forward passes ran.
    pub backend: crate::engine::BackendInfo,
}

/// Runs the plan on the data: tuning, then every estimator's reported run, with the forward
/// passes on the CPU whatever `plan.backend` says (see [`run_plan_on`]).
pub fn run_plan(plan: &Plan, splits: &Splits, progress: &(dyn Fn(u64) + Sync)) -> TrainReport {
    run_plan_on(&TrainEngine::Cpu, plan, splits, progress)
        .expect("the CPU forward pass cannot fail")
}

/// Runs the plan on the data with the forward passes on `engine`: tuning, then every
/// estimator's reported run.
///
/// # Errors
/// [`Error::Gpu`] if the GPU fails.
pub fn run_plan_on(
    engine: &TrainEngine,
    plan: &Plan,
    splits: &Splits,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<TrainReport> {
    let t0 = Instant::now();
    let (mut tuning, mut curves) = (Vec::new(), Vec::new());
    for &est in &plan.estimators {
        let (lr, scores) = if plan.grid.len() > 1 {
            tune_lr_on(
                engine,
                &splits.train,
                &splits.validation,
                est,
                &plan.config,
                &plan.grid,
                plan.tune_steps,
                progress,
            )?
        } else {
            (plan.grid[0], Vec::new())
        };
        tuning.push(scores);
        curves.push(train_estimator_on(
            engine,
            &splits.train,
            &splits.test,
            est,
            &plan.config,
            lr,
            Record::Full,
            progress,
        )?);
    }
    Ok(TrainReport {
        plan: plan.clone(),
        data: (
            splits.source.clone(),
            splits.train.len(),
            splits.validation.len(),
            splits.test.len(),
        ),
        tuning,
        curves,
        seconds: t0.elapsed().as_secs_f64(),
        backend: engine.backend_info(),
    })
}

/// `mcgrad train`: validates the options, loads the data, tunes and trains every estimator,
/// and writes `curves.csv`, `curves.json`, the plots (PNG and SVG) and `weights.png` into
/// `--out` (built in a temporary sibling folder and renamed into place at the end).
///
/// # Errors
/// Invalid options and data files before anything is written ([`Error::InvalidArgument`],
/// [`Error::Unknown`], [`Error::Read`], [`Error::InvalidData`]; [`Error::GpuUnavailable`]
/// for `--backend gpu` without a fitting adapter); [`Error::Gpu`] if the GPU fails while
/// training; [`Error::Write`] or [`Error::Plot`] while writing.
pub fn run_train(args: &TrainArgs) -> Result<()> {
    let plan = plan(args)?;
    check_out(&args.out)?;
    let engine = TrainEngine::new(plan.backend, plan.adapter.as_deref())?;
    let splits = load_data(args)?;
    if splits.train.is_empty() || splits.test.is_empty() || splits.validation.is_empty() {
        return Err(Error::InvalidArgument("the data has an empty split".into()));
    }
    let per_estimator =
        u64::from(plan.config.steps) + plan.grid.len() as u64 * u64::from(plan.tune_steps);
    let total = per_estimator * plan.estimators.len() as u64;
    let bar = if args.quiet || !std::io::stderr().is_terminal() {
        indicatif::ProgressBar::hidden()
    } else {
        let style = indicatif::ProgressStyle::with_template(
            "training {bar:40} {pos}/{len} steps ({elapsed} elapsed, ~{eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        indicatif::ProgressBar::new(total).with_style(style)
    };
    let report = run_plan_on(&engine, &plan, &splits, &|n| bar.inc(n));
    bar.finish_and_clear();
    let report = report?;
    write_outputs(&args.out, &report)?;
    // As `mcgrad run`: --quiet silences stderr (the progress bar), not the results table.
    println!("{}", summary(&report));
    println!("wrote {}", args.out.display());
    Ok(())
}

/// A table of the final numbers, one line per estimator.
pub fn summary(report: &TrainReport) -> String {
    let b = &report.backend;
    let mut s = format!(
        "{} ({} train / {} test images), B = {}, S = {}, {} steps, {}, forward pass and draws on {}; {:.1} s in all\n",
        report.data.0,
        report.data.1,
        report.data.3,
        report.plan.config.batch,
        report.plan.config.samples,
        report.plan.config.steps,
        report.plan.config.optimizer.name(),
        if b.engine == "gpu" {
            format!("the GPU ({})", b.adapter)
        } else {
            "the CPU".into()
        },
        report.seconds
    );
    let speedups = speedups_vs_reinforce(&report.curves);
    s.push_str(&format!(
        "{:<15} {:>8} {:>13} {:>9} {:>13} {:>9} {:>12}",
        "estimator", "lr", "heldout loss", "accuracy", "grad var", "train s", "vs reinforce"
    ));
    for (i, c) in report.curves.iter().enumerate() {
        let p = c.last();
        let up = match speedups.as_ref().map(|s| s.1[i]) {
            Some(Some(v)) => format!("{v:.2}x"),
            Some(None) => "never".into(),
            None => "-".into(),
        };
        s.push_str(&format!(
            "\n{:<15} {:>8} {:>13.4} {:>9.3} {:>13.3e} {:>9.2} {:>12}",
            c.estimator,
            c.lr,
            p.heldout_loss,
            p.heldout_accuracy,
            p.grad_variance,
            p.train_seconds,
            up
        ));
    }
    if let Some((target, _)) = speedups {
        s.push_str(&format!(
            "\n(vs reinforce: steps reinforce needs to first reach its final held-out loss {target:.4}, over the steps each estimator needs)"
        ));
    }
    s
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Write {
        path: path.to_owned(),
        source,
    }
}

/// Writes the report into `out`, through a temporary sibling folder renamed at the end.
///
/// # Errors
/// [`Error::Write`] or [`Error::Plot`].
pub fn write_outputs(out: &Path, report: &TrainReport) -> Result<()> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let name = out
        .file_name()
        .map_or("train".into(), |n| n.to_string_lossy().into_owned());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    let written = write_files(&tmp, report).and_then(|()| {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        if out.exists() {
            std::fs::rename(out, &old).map_err(io_err(out))?;
        }
        std::fs::rename(&tmp, out).map_err(io_err(out))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
        }
        Ok(())
    });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written
}

fn write_files(dir: &Path, report: &TrainReport) -> Result<()> {
    let csv_path = dir.join("curves.csv");
    std::fs::write(&csv_path, curves_csv(report)).map_err(io_err(&csv_path))?;
    let json_path = dir.join("curves.json");
    let json = serde_json::to_string_pretty(&curves_json(report)).expect("plain data serialises");
    std::fs::write(&json_path, json + "\n").map_err(io_err(&json_path))?;
    plot::write_plots(dir, report)
}

fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        String::new()
    }
}

/// `curves.csv`: one row per (estimator, evaluation point).
pub fn curves_csv(report: &TrainReport) -> String {
    let mut s = String::from(
        "estimator,lr,step,train_seconds,heldout_loss,heldout_accuracy,grad_variance,variance_method,exact_grad_sq,train_loss\n",
    );
    for c in &report.curves {
        for p in &c.points {
            s.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{}\n",
                c.estimator,
                c.lr,
                p.step,
                p.train_seconds,
                p.heldout_loss,
                p.heldout_accuracy,
                num(p.grad_variance),
                c.variance_method.name(),
                num(p.exact_grad_sq),
                p.train_loss.map_or(String::new(), num)
            ));
        }
    }
    s
}

/// `curves.json`: the configuration, the data, the costs, the tuning and the curves.
pub fn curves_json(report: &TrainReport) -> serde_json::Value {
    let cfg = &report.plan.config;
    let speedups = speedups_vs_reinforce(&report.curves);
    let estimators: Vec<serde_json::Value> = report
        .curves
        .iter()
        .zip(&report.tuning)
        .zip(&report.plan.estimators)
        .enumerate()
        .map(|(i, ((c, t), e))| {
            serde_json::json!({
                "id": c.estimator,
                "unbiased": e.is_unbiased(),
                "lr": c.lr,
                "tuning": t,
                "loss_evaluations_per_input_step": loss_evaluations(*e, cfg.samples),
                "draws_per_input_step": if e.id() == "exact" { 0 } else { cfg.samples },
                "uniforms_per_draw": if e.family() == Family::Relaxed { K } else { 1 },
                "variance_method": c.variance_method,
                "speedup_vs_reinforce": speedups.as_ref().and_then(|s| s.1[i]),
                "points": c.points,
            })
        })
        .collect();
    serde_json::json!({
        "command": "train",
        "mcgrad_version": env!("CARGO_PKG_VERSION"),
        "config": cfg,
        "lr_grid": report.plan.grid,
        "tune_steps": report.plan.tune_steps,
        "backend": {
            "engine": report.backend.engine,
            "adapter": report.backend.adapter,
            "graphics_backend": report.backend.graphics_backend,
            "driver": report.backend.driver,
            "threads": report.backend.threads,
            "requested": format!("{:?}", report.plan.backend).to_lowercase(),
            "forward_pass": report.backend.engine,
            "draws": report.backend.engine,
            "estimators_and_optimizer": "cpu",
        },
        "data": {
            "source": report.data.0,
            "train": report.data.1,
            "validation": report.data.2,
            "test": report.data.3,
            "d": D,
            "k": K,
        },
        "definitions": {
            "heldout_loss": "exact expected loss (1/N) sum_n sum_k p_nk f_nk on the test set, by enumeration over K",
            "grad_variance": "E||G_hat - E G_hat||_F^2 of the minibatch estimate on the probe batch (the first B training images) at the current W, moving-average baselines held at their current value",
            "train_seconds": "wall seconds of the training steps only, one thread (with the GPU backend: including the upload of x and W and the readback of the logits at every step)",
            "speedup_vs_reinforce": "steps reinforce needs to first reach its final held-out loss (speedup_target_loss), divided by the steps this estimator needs (null: never reached)",
            "budget": "S draws per input per step, one loss evaluation each; exact: K evaluations, no draws; muprop, muprop-c: + 1 mean-field f(p) and grad f(p); gumbel: + grad f per draw",
        },
        "speedup_target_loss": speedups.as_ref().map(|s| s.0),
        "total_seconds": report.seconds,
        "estimators": estimators,
    })
}
