//! The whole `mcgrad train` job: validate the options, open the backend, load the data, tune
//! and train every estimator, write the outputs.

use std::io::IsTerminal;
use std::time::Instant;

use crate::error::{Error, Result};

use super::config::{load_data, plan, Plan, TrainOptions};
use super::curves::{train_estimator_on, Curve, Record};
use super::data::Splits;
use super::device::TrainEngine;
use super::output::{check_out, summary, write_outputs};
use super::tuning::{tune_lr_on, TuningPoint};

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
pub fn run_train(args: &TrainOptions) -> Result<()> {
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
    crate::error::print_stdout(&format!(
        "{}\nwrote {}\n",
        summary(&report),
        args.out.display()
    ))
}
