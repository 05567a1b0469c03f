//! The optimisation loop every training run goes through, the digits classifier's
//! ([`super::curves`]) and any problem's ([`crate::optimise`]): a [`StepTask`] says how to
//! estimate the gradient at a step and what to record at an evaluation; [`run_steps`] owns
//! the rest, the same for both: the moving-average baseline (pushed after the step that
//! produced its signal, so an estimate never sees its own draws), the optimiser step, the
//! clock (wall seconds and loss evaluations of the steps only, evaluation excluded), the
//! evaluation schedule (step 0, every `eval_every` steps, and the last) and the progress
//! reports.

use std::time::Instant;

use crate::error::Result;
use crate::estimators::MovingAverage;

use super::optim::Optimizer;

/// What a training run records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// At step 0, every `eval_every` steps and at the last step.
    Full,
    /// Only at the end (tuning runs).
    FinalLoss,
}

/// What one step's gradient estimate produced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutcome {
    /// The objective at the parameters the step started from, where known (NaN otherwise).
    pub objective: f64,
    /// The value the step contributes to the moving-average baseline, if the estimator has one.
    pub baseline_signal: Option<f64>,
    /// Loss evaluations the step spent (a warm-up inside the step included).
    pub loss_evaluations: f64,
}

/// The running totals an evaluation sees.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Clock {
    /// Wall seconds of the steps so far (estimate, baseline, optimiser; evaluation excluded).
    pub seconds: f64,
    /// Loss evaluations of the steps so far.
    pub loss_evaluations: f64,
    /// Mean of the steps' [`StepOutcome::objective`] since the previous evaluation (None at
    /// step 0).
    pub steps_objective: Option<f64>,
}

/// One training task: the gradient at a step, and the record at an evaluation.
pub trait StepTask {
    /// The gradient estimate at `step` for the parameters `w` and the moving-average
    /// `baseline`, into `grad` (as many numbers as `w`; the direction the optimiser lowers).
    ///
    /// # Errors
    /// Whatever the task's device reports.
    fn step(
        &mut self,
        step: u32,
        w: &[f64],
        baseline: f64,
        grad: &mut [f64],
    ) -> Result<StepOutcome>;

    /// Records the evaluation after `step` steps at `w`.
    ///
    /// # Errors
    /// Whatever the task's device reports.
    fn evaluate(&mut self, step: u32, w: &[f64], baseline: f64, clock: &Clock) -> Result<()>;
}

/// How many steps, and when to evaluate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Optimiser steps.
    pub steps: u32,
    /// Evaluate every this many steps (with [`Record::Full`]).
    pub eval_every: u32,
    /// What to record.
    pub record: Record,
}

/// Runs `schedule.steps` steps of `task` from `w` (updated in place) with `opt`, evaluating
/// as the schedule says; `progress` gets the number of steps done since its last call.
///
/// # Errors
/// The first error of the task.
pub fn run_steps(
    task: &mut impl StepTask,
    w: &mut [f64],
    opt: &mut Optimizer,
    schedule: Schedule,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    let Schedule {
        steps,
        eval_every,
        record,
    } = schedule;
    let mut grad = vec![0.0; w.len()];
    let mut baseline = MovingAverage::default();
    let mut clock = Clock {
        seconds: 0.0,
        loss_evaluations: 0.0,
        steps_objective: None,
    };
    let (mut since_sum, mut since_n, mut reported) = (0.0, 0u32, 0u32);
    if record == Record::Full {
        task.evaluate(0, w, baseline.value(), &clock)?;
    }
    for step in 0..steps {
        let t0 = Instant::now();
        let outcome = task.step(step, w, baseline.value(), &mut grad)?;
        if let Some(s) = outcome.baseline_signal {
            // Pushed after this step's estimate: the baseline never sees its own draws.
            baseline.push(s);
        }
        opt.step(w, &grad);
        clock.seconds += t0.elapsed().as_secs_f64();
        clock.loss_evaluations += outcome.loss_evaluations;
        since_sum += outcome.objective;
        since_n += 1;
        let done = step + 1;
        let due = record == Record::Full && (done % eval_every == 0 || done == steps);
        if due || (record == Record::FinalLoss && done == steps) {
            clock.steps_objective = Some(since_sum / f64::from(since_n));
            task.evaluate(done, w, baseline.value(), &clock)?;
            (since_sum, since_n) = (0.0, 0);
        }
        if done % 16 == 0 || done == steps {
            progress(u64::from(done - reported));
            reported = done;
        }
    }
    if steps == 0 && record == Record::FinalLoss {
        task.evaluate(0, w, baseline.value(), &clock)?;
    }
    Ok(())
}
