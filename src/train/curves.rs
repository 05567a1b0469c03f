//! One training run: W from 0, one estimator at one learning rate, minibatch steps on the
//! engine's forward pass, and the learning curve (held-out loss, accuracy, gradient variance
//! at every evaluation point); and the speed-ups over `reinforce` read off the curves.

use std::time::Instant;

use crate::error::Result;
use crate::estimators::{reads_draws, Estimator, Family, MovingAverage};
use crate::gpu::train_draws::{DrawKind, TrainDrawParams};
use crate::philox::key_of;

use super::batches::BatchStream;
use super::config::TrainConfig;
use super::data::{Dataset, D, K};
use super::device::TrainEngine;
use super::model::{self, DrawKey, VarianceMethod};
use super::optim::Optimizer;

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
        _ if !reads_draws(est) => None,
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
