//! One training run of the digits classifier: W from 0, one estimator at one learning rate,
//! minibatch steps on the engine's forward pass (through the loop every training run shares,
//! [`super::stepper`]), and the learning curve (held-out loss, accuracy, gradient variance
//! at every evaluation point); and the speed-ups over `reinforce` read off the curves.

use crate::error::Result;
use crate::estimators::{reads_draws, Estimator, Family};
use crate::gpu::train_draws::{DrawKind, TrainDrawParams};
use crate::philox::key_of;

use super::batches::BatchStream;
use super::config::TrainConfig;
use super::data::{Dataset, D, K};
use super::device::{FixedPass, StepPass, TrainEngine};
use super::model::{self, DrawKey, VarianceMethod};
use super::optim::Optimizer;
use super::stepper::{run_steps, Clock, Schedule, StepOutcome, StepTask};

/// Key offset of the Monte Carlo variance probes, so they never reuse training draws.
const VARIANCE_KEY_SALT: u64 = 0x7661_7269_616e_6365;

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
    /// Where the steps ran: [`StepsOn::Gpu`] (the whole step, `shaders/train_step.wgsl`),
    /// [`StepsOn::GpuForward`] (forward pass and draws on the GPU, the rest on the CPU) or
    /// [`StepsOn::Cpu`].
    #[serde(skip)]
    pub steps_on: StepsOn,
}

/// Where a run's training steps ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepsOn {
    /// Everything on the CPU.
    Cpu,
    /// The forward pass and the draws on the GPU (one round trip per step); the estimator,
    /// the W gradient and the optimiser on the CPU.
    GpuForward,
    /// The whole step on the GPU ([`super::resident`]).
    Gpu,
}

impl StepsOn {
    /// Where the estimator, the W gradient and the optimiser ran: `cpu` or `gpu`.
    pub fn estimator_and_optimizer(self) -> &'static str {
        match self {
            StepsOn::Gpu => "gpu",
            _ => "cpu",
        }
    }
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

pub use super::stepper::Record;

/// Trains W (from 0) with `est` at learning rate `lr` on `train`, evaluating on `eval`, with
/// the forward passes on the CPU (see [`train_estimator_on`]).
///
/// # Panics
/// If `train` is empty or `cfg.batch` is 0 (validated by [`super::plan`]).
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
/// [`crate::Error::Gpu`] if the GPU fails (never on the CPU).
///
/// # Panics
/// If `train` is empty or `cfg.batch` is 0 (validated by [`super::plan`]).
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
    if let Some(spec) = super::resident::plan(engine, train, est, cfg, 1) {
        let mut curves = super::resident::train_runs(
            engine,
            spec,
            train,
            eval,
            est,
            cfg,
            &[lr],
            record,
            progress,
        )?;
        return Ok(curves.remove(0));
    }
    let key = key_of(cfg.seed);
    let probe = Probe::new(train, cfg.batch);
    let mut task = DigitsTask {
        est,
        cfg,
        train,
        key,
        order: BatchStream::new(cfg.seed, train.len()),
        indices: Vec::with_capacity(cfg.batch),
        x: Vec::with_capacity(cfg.batch * D),
        labels: Vec::with_capacity(cfg.batch),
        logits: vec![0.0; cfg.batch * K],
        // The forward passes, made once: buffers and pipeline reused at every step.
        step_pass: engine.step_pass(cfg.batch, cfg.samples)?,
        // On the GPU the step's draws are made there, beside the forward pass.
        draw_kind: match est.family() {
            _ if !reads_draws(est) => None,
            Family::ScoreFunction => Some(DrawKind::Categorical),
            Family::Relaxed => Some(DrawKind::Gumbel),
        },
        evaluator: Evaluator::new(engine, eval, &probe, est, cfg, record)?,
        points: Vec::new(),
        evaluations_per_step: f64::from(super::output::loss_evaluations(est, cfg.samples))
            * cfg.batch as f64,
    };
    let mut w = vec![0.0; D * K];
    let mut opt = Optimizer::new(cfg.optimizer, lr, D * K);
    let schedule = Schedule {
        steps: cfg.steps,
        eval_every: cfg.eval_every,
        record,
    };
    run_steps(&mut task, &mut w, &mut opt, schedule, progress)?;
    Ok(Curve {
        estimator: est.id(),
        lr,
        variance_method: task.evaluator.method,
        points: task.points,
        w,
        steps_on: if engine.is_gpu() {
            StepsOn::GpuForward
        } else {
            StepsOn::Cpu
        },
    })
}

/// The variance probe: the first B training images (fixed along training).
pub(super) struct Probe {
    x: Vec<f32>,
    labels: Vec<u8>,
}

impl Probe {
    pub(super) fn new(train: &Dataset, batch: usize) -> Self {
        let probe: Vec<u32> = (0..batch.min(train.len()) as u32).collect();
        let mut x = Vec::new();
        model::gather(train, &probe, &mut x);
        let labels = probe.iter().map(|&i| train.labels[i as usize]).collect();
        Self { x, labels }
    }
}

/// An evaluation point of a run: the held-out set's exact loss and accuracy and (with
/// [`Record::Full`]) the probe batch's gradient variance, at a W the caller holds on the host.
/// The forward passes run on the engine (the images uploaded once).
pub(super) struct Evaluator<'a> {
    est: &'a dyn Estimator,
    cfg: &'a TrainConfig,
    eval: &'a Dataset,
    var_key: [u32; 2],
    eval_pass: FixedPass<'a>,
    probe_pass: Option<FixedPass<'a>>,
    eval_logits: Vec<f64>,
    probe_logits: Vec<f64>,
    probe: &'a Probe,
    /// How the last variance was obtained.
    pub(super) method: VarianceMethod,
}

impl<'a> Evaluator<'a> {
    pub(super) fn new(
        engine: &'a TrainEngine,
        eval: &'a Dataset,
        probe: &'a Probe,
        est: &'a dyn Estimator,
        cfg: &'a TrainConfig,
        record: Record,
    ) -> Result<Self> {
        Ok(Self {
            est,
            cfg,
            eval,
            var_key: key_of(cfg.seed ^ VARIANCE_KEY_SALT),
            eval_pass: engine.fixed_pass(&eval.x)?,
            probe_pass: match record {
                Record::Full => Some(engine.fixed_pass(&probe.x)?),
                Record::FinalLoss => None,
            },
            eval_logits: vec![0.0; eval.len() * K],
            probe_logits: vec![0.0; probe.labels.len() * K],
            probe,
            method: VarianceMethod::ClosedForm,
        })
    }

    /// The point after `step` steps at `w` with the moving average at `baseline`.
    pub(super) fn evaluate(
        &mut self,
        step: u32,
        w: &[f64],
        baseline: f64,
        clock: &Clock,
    ) -> Result<CurvePoint> {
        let cfg = self.cfg;
        self.eval_pass.run(w, &mut self.eval_logits)?;
        let e = model::evaluate_logits(&self.eval.labels, &self.eval_logits, cfg.loss);
        let (mut var, mut gsq) = (f64::NAN, f64::NAN);
        if let Some(pass) = self.probe_pass.as_mut() {
            pass.run(w, &mut self.probe_logits)?;
            let dk = DrawKey {
                key: self.var_key,
                step,
                rep_offset: 0,
            };
            let v = model::gradient_variance(
                self.est,
                cfg.spec(),
                &self.probe.x,
                &self.probe.labels,
                &self.probe_logits,
                baseline,
                dk,
                cfg.variance_reps,
            );
            (var, gsq, self.method) = (v.total, v.exact_grad_sq, v.method);
        }
        Ok(CurvePoint {
            step,
            train_seconds: clock.seconds,
            heldout_loss: e.loss,
            heldout_accuracy: e.accuracy,
            grad_variance: var,
            exact_grad_sq: gsq,
            train_loss: clock.steps_objective,
        })
    }
}

/// The digits classifier as a [`StepTask`]: a step is a minibatch's forward pass (on the
/// engine, with the draws on the GPU there) and the estimators' per-input estimates; an
/// evaluation is the held-out set's exact loss and accuracy and the probe batch's variance.
struct DigitsTask<'a> {
    est: &'a dyn Estimator,
    cfg: &'a TrainConfig,
    train: &'a Dataset,
    key: [u32; 2],
    order: BatchStream,
    indices: Vec<u32>,
    x: Vec<f32>,
    labels: Vec<u8>,
    logits: Vec<f64>,
    step_pass: StepPass<'a>,
    draw_kind: Option<DrawKind>,
    evaluator: Evaluator<'a>,
    points: Vec<CurvePoint>,
    evaluations_per_step: f64,
}

impl StepTask for DigitsTask<'_> {
    fn step(
        &mut self,
        step: u32,
        w: &[f64],
        baseline: f64,
        grad: &mut [f64],
    ) -> Result<StepOutcome> {
        let cfg = self.cfg;
        self.order.next_batch(cfg.batch, &mut self.indices);
        model::gather(self.train, &self.indices, &mut self.x);
        self.labels.clear();
        let train = self.train;
        self.labels
            .extend(self.indices.iter().map(|&i| train.labels[i as usize]));
        let dk = DrawKey {
            key: self.key,
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
        let drawn = self.step_pass.run_drawn(
            &self.x,
            w,
            &mut self.logits,
            self.draw_kind.map(|k| (k, draw_params)),
        )?;
        let bg = model::batch_gradient(
            self.est,
            cfg.spec(),
            &self.x,
            &self.labels,
            &self.logits,
            baseline,
            dk,
            drawn.as_ref(),
            grad,
        );
        Ok(StepOutcome {
            objective: bg.objective,
            baseline_signal: bg.baseline_signal,
            loss_evaluations: self.evaluations_per_step,
        })
    }

    fn evaluate(&mut self, step: u32, w: &[f64], baseline: f64, clock: &Clock) -> Result<()> {
        let point = self.evaluator.evaluate(step, w, baseline, clock)?;
        self.points.push(point);
        Ok(())
    }
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
