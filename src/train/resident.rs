//! Training with the whole step on the GPU (`shaders/train_step.wgsl` through
//! [`crate::gpu::train_step`]): the training set is uploaded once per session, W, the
//! optimiser's moments and the moving-average baseline stay on the GPU, and one submission
//! runs every step up to the next evaluation point (at most [`MAX_CHUNK_ROWS`] minibatch rows
//! a dispatch). The learning-rate grid of the tuning runs as one session, one workgroup per
//! rate. Only the steps' objectives and the baselines come back after a chunk, and W where an
//! evaluation needs it; the evaluation itself (held-out loss, probe variance) is the same as
//! the round-trip path's ([`super::curves`]).
//!
//! Which estimators: those whose lowering the kernel has a rule for ([`rule_for`]), under a
//! loss that is a quadratic form of the one-hot target ([`loss_form`]); before a rule is used
//! its CPU twin is checked against the estimator's own code on a few contexts and draws
//! ([`rule_for`] returns `None` on any disagreement). Everything else keeps the round-trip
//! path (forward pass and draws on the GPU, the rest on the CPU), as does a training set
//! larger than one of the device's storage buffers.

use crate::error::Result;
use crate::estimators::{
    estimate_one, Constant, Context, DrawSource, Estimator, Lowering, RelaxedBatch, RelaxedMoments,
};
use crate::gpu::train_step::{
    row_estimate_cpu, steps_per_dispatch, LossForm, RowDraws, StepRule, StepSpec, TrainStep,
};
use crate::loss::Loss;
use crate::philox::key_of;

use super::batches::BatchStream;
use super::config::TrainConfig;
use super::curves::{Curve, CurvePoint, Evaluator, Probe, Record, StepsOn};
use super::data::{Dataset, D, K};
use super::device::TrainEngine;
use super::model::target;
use super::stepper::Clock;

/// Most minibatch rows (steps x B) of one dispatch, so that one submission stays short on any
/// device (at B = 32: 1024 steps).
pub const MAX_CHUNK_ROWS: u32 = 1 << 15;

/// `loss` as the kernel's [`LossForm`], if it is a quadratic form whose `beta` is one value
/// off the label and another on it, the same for every label (`squared`, `linear`).
pub fn loss_form(loss: Loss) -> Option<LossForm> {
    if !loss.is_quadratic() || !loss.has_extension() {
        return None;
    }
    let q0 = loss.quadratic(&target(loss, 0));
    let form = LossForm {
        alpha: q0.alpha,
        beta_off: q0.beta[1],
        beta_hit: q0.beta[0],
        gamma: q0.gamma,
    };
    let same = (0..K as u8).all(|c| {
        let q = loss.quadratic(&target(loss, c));
        q.alpha == form.alpha
            && q.gamma == form.gamma
            && q.beta.iter().enumerate().all(|(j, &b)| {
                b == if j == usize::from(c) {
                    form.beta_hit
                } else {
                    form.beta_off
                }
            })
    });
    same.then_some(form)
}

/// The kernel's rule for `est` under `loss` at temperature `tau` with S = `samples`, if it has
/// one and its CPU twin ([`row_estimate_cpu`]) gives the estimator's own estimates
/// ([`estimate_one`]) on a few contexts and draws: the score-function lowering's signal,
/// baseline and constant as data; the hard-draw lowering as whichever of straight-through and
/// ReinMax reproduces the estimator; the relaxed lowering's soft or straight-through form.
pub fn rule_for(est: &dyn Estimator, loss: Loss, tau: f64, samples: u32) -> Option<StepRule> {
    let form = loss_form(loss)?;
    let candidates: Vec<StepRule> = match est.lowering()? {
        Lowering::ScoreFunction {
            signal,
            baseline,
            constant,
        } => vec![if constant == Constant::ExactGradient {
            StepRule::Score {
                signal: None,
                baseline,
                constant,
            }
        } else {
            StepRule::Score {
                signal,
                baseline,
                constant,
            }
        }],
        Lowering::HardDraw => vec![StepRule::StraightThrough, StepRule::ReinMax],
        Lowering::Relaxed { straight_through } => vec![StepRule::Relaxed { straight_through }],
    };
    candidates
        .into_iter()
        .find(|&rule| twin_agrees(est, rule, form, loss, tau, samples))
}

/// Whether the rule's CPU twin gives `est`'s own estimate (and moving-average signal) on
/// contexts of three labels with varied logits, and on every set of draws tried, to 1e-9
/// relative (both in f64 from the same numbers; only the order of the sums differs).
fn twin_agrees(
    est: &dyn Estimator,
    rule: StepRule,
    form: LossForm,
    loss: Loss,
    tau: f64,
    samples: u32,
) -> bool {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()));
    let s = samples.max(2);
    let key = key_of(0x7477_696e);
    for (case, label) in [0usize, 3, 9].into_iter().enumerate() {
        let a: Vec<f64> = (0..K)
            .map(|j| ((j * 7 + case * 3) as f64 * 0.61).sin() * (1.0 + case as f64))
            .collect();
        let ctx = Context::from_logits(&a, &target(loss, label as u8), loss, tau);
        let (mut want, mut got) = ([0f64; K], [0f64; K]);
        let baseline = 0.37;
        if rule.relaxed() {
            let table = crate::draws::RelaxedTable::new(&a, tau);
            let (mut h, mut y1) = (vec![0f32; K], vec![0f64; K]);
            let (mut y, mut z) = (Vec::new(), Vec::new());
            for d in 0..s {
                z.push(table.draw(key, case as u32, 1, d, &mut h, &mut y1) as u32);
                y.extend_from_slice(&y1);
            }
            // The sums the round-trip path reads (f32 weights, as the GPU returns them).
            let y32: Vec<f32> = y.iter().map(|&v| v as f32).collect();
            let mut m = RelaxedMoments::new(K);
            let n = s as usize;
            let mut cm = vec![0f32; K * n];
            for d in 0..n {
                for c in 0..K {
                    cm[c * n + d] = y32[d * K + c];
                }
            }
            let y_z: Vec<f32> = (0..n).map(|d| y32[d * K + z[d] as usize]).collect();
            m.add_batch(&RelaxedBatch {
                n,
                y: &cm,
                z: &z,
                y_z: &y_z,
            });
            let y64: Vec<f64> = y32.iter().map(|&v| f64::from(v)).collect();
            estimate_one(est, &ctx, DrawSource::RelaxedSums(&m), baseline, &mut want);
            row_estimate_cpu(
                rule,
                form,
                &a,
                label,
                RowDraws::Relaxed { y: &y64, z: &z },
                baseline,
                tau,
                s,
                &mut got,
            );
            if !want.iter().zip(&got).all(|(w, g)| close(*w, *g)) {
                return false;
            }
        } else {
            // Every draw on one class, and spread over several.
            let mut sets: Vec<Vec<u32>> = (0..K)
                .map(|c| {
                    let mut n = vec![0u32; K];
                    n[c] = s;
                    n
                })
                .collect();
            let mut spread = vec![0u32; K];
            for i in 0..s as usize {
                spread[(i * 3 + case) % K] += 1;
            }
            sets.push(spread);
            for n in &sets {
                let draws = DrawSource::Counts { counts: n, s };
                let want_signal = estimate_one(est, &ctx, draws, baseline, &mut want);
                let row = if rule.reads_draws() {
                    RowDraws::Counts(n)
                } else {
                    RowDraws::None
                };
                let (fbar, signal) =
                    row_estimate_cpu(rule, form, &a, label, row, baseline, tau, s, &mut got);
                let signal_ok = match want_signal {
                    Some(w) => rule.moving_average() && close(w, signal),
                    None => !rule.moving_average(),
                };
                if !signal_ok
                    || !close(fbar, ctx.fbar)
                    || !want.iter().zip(&got).all(|(w, g)| close(*w, *g))
                {
                    return false;
                }
            }
        }
    }
    true
}

/// The whole-step plan of `runs` runs of `est` on `engine`, if the engine is a GPU, the
/// estimator and loss have a rule ([`rule_for`]), the training set fits the device, and (on a
/// software adapter) one step fits a dispatch's loop budget
/// ([`crate::gpu::train_step::SOFTWARE_LOOP_BUDGET`]). `MCGRAD_TRAIN_ROUND_TRIP=1` in the
/// environment declines every plan (the round-trip path, for comparing the two).
pub(super) fn plan(
    engine: &TrainEngine,
    train: &Dataset,
    est: &dyn Estimator,
    cfg: &TrainConfig,
    runs: u32,
) -> Option<StepSpec> {
    let TrainEngine::Gpu(gpu) = engine else {
        return None;
    };
    if std::env::var("MCGRAD_TRAIN_ROUND_TRIP").is_ok_and(|v| v == "1") {
        return None;
    }
    let rule = rule_for(est, cfg.loss, cfg.tau, cfg.samples)?;
    let loss = loss_form(cfg.loss)?;
    let batch = u32::try_from(cfg.batch).ok()?;
    let max_steps = chunk_steps(cfg, batch);
    if steps_per_dispatch(gpu.context(), batch, cfg.samples, D, K, max_steps) == 0 {
        return None;
    }
    TrainStep::fits(gpu.context(), train.len(), D, runs, batch, max_steps).then_some(StepSpec {
        key: key_of(cfg.seed),
        rule,
        loss,
        optimizer: cfg.optimizer,
        tau: cfg.tau,
        samples: cfg.samples,
        batch,
    })
}

fn chunk_steps(cfg: &TrainConfig, batch: u32) -> u32 {
    (MAX_CHUNK_ROWS / batch).clamp(1, cfg.steps.max(1))
}

/// Trains one run per learning rate of `lrs` (from W = 0) with the whole step on the GPU, all
/// in one session, evaluating as the round-trip path does: with [`Record::Full`] at step 0,
/// every `eval_every` steps and the last; with [`Record::FinalLoss`] at the last step only.
/// The clock of a run counts the submissions of its steps (all the runs' together when there
/// are several) and the readback of what they return.
///
/// # Errors
/// [`crate::Error::Gpu`] if the GPU fails.
///
/// # Panics
/// On the CPU engine ([`plan`] gives no plan there).
#[allow(clippy::too_many_arguments)]
pub(super) fn train_runs(
    engine: &TrainEngine,
    spec: StepSpec,
    train: &Dataset,
    eval: &Dataset,
    est: &dyn Estimator,
    cfg: &TrainConfig,
    lrs: &[f64],
    record: Record,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<Curve>> {
    let TrainEngine::Gpu(gpu) = engine else {
        unreachable!("the whole-step plan is made for the GPU only")
    };
    let ctx = gpu.context();
    let batch = spec.batch;
    let max_steps = chunk_steps(cfg, batch);
    let session = {
        let _turn = gpu.turn();
        gpu.step_kernel().session(
            ctx,
            &train.x,
            &train.labels,
            D,
            K,
            spec,
            lrs,
            max_steps,
            steps_per_dispatch(ctx, batch, spec.samples, D, K, max_steps),
            false,
        )?
    };
    let probe = Probe::new(train, cfg.batch);
    let mut evaluator = Evaluator::new(engine, eval, &probe, est, cfg, record)?;
    let evaluations_per_step =
        f64::from(super::output::loss_evaluations(est, cfg.samples)) * cfg.batch as f64;
    let runs = lrs.len();
    let mut points: Vec<Vec<CurvePoint>> = vec![Vec::new(); runs];
    let mut ws = vec![vec![0f64; D * K]; runs];
    let mut clock = Clock {
        seconds: 0.0,
        loss_evaluations: 0.0,
        steps_objective: None,
    };
    if record == Record::Full {
        for (r, w) in ws.iter().enumerate() {
            points[r].push(evaluator.evaluate(0, w, 0.0, &clock)?);
        }
    }
    let mut order = BatchStream::new(cfg.seed, train.len());
    let (mut indices, mut chunk) = (Vec::new(), Vec::new());
    let mut since = vec![(0.0f64, 0u32); runs];
    let mut done = 0u32;
    while done < cfg.steps {
        let mut next = cfg.steps.min(done + max_steps);
        if record == Record::Full {
            next = next.min((done / cfg.eval_every + 1) * cfg.eval_every);
        }
        chunk.clear();
        for _ in done..next {
            order.next_batch(cfg.batch, &mut indices);
            chunk.extend_from_slice(&indices);
        }
        let due =
            next == cfg.steps || (record == Record::Full && next.is_multiple_of(cfg.eval_every));
        let t0 = std::time::Instant::now();
        let out = {
            let _turn = gpu.turn();
            session.run(ctx, gpu.step_kernel(), done, &chunk, due)?
        };
        clock.seconds += t0.elapsed().as_secs_f64();
        clock.loss_evaluations += evaluations_per_step * f64::from(next - done);
        for (s, o) in since.iter_mut().zip(&out.objectives) {
            s.0 += o.iter().map(|&v| f64::from(v)).sum::<f64>();
            s.1 += o.len() as u32;
        }
        progress(u64::from(next - done) * runs as u64);
        done = next;
        if due {
            for r in 0..runs {
                for (w, v) in ws[r].iter_mut().zip(&out.w[r]) {
                    *w = f64::from(*v);
                }
                let (sum, weight) = out.baseline[r];
                let baseline = if weight > 0.0 {
                    f64::from(sum) / f64::from(weight)
                } else {
                    0.0
                };
                let c = Clock {
                    steps_objective: Some(since[r].0 / f64::from(since[r].1.max(1))),
                    ..clock
                };
                points[r].push(evaluator.evaluate(done, &ws[r], baseline, &c)?);
                since[r] = (0.0, 0);
            }
        }
    }
    let method = evaluator.method;
    Ok(lrs
        .iter()
        .zip(points)
        .zip(ws)
        .map(|((&lr, points), w)| Curve {
            estimator: est.id(),
            lr,
            variance_method: method,
            points,
            w,
            steps_on: StepsOn::Gpu,
        })
        .collect())
}
