//! `mcgrad train --problem NAME|FILE`: its options as the library takes them
//! ([`ProblemTrainOptions`], plain data), their validation into an [`OptimiseSpec`], and what
//! the run leaves in the output folder (written whole through [`crate::outdir`]):
//! `curves.csv` (one row per trajectory and evaluation), `variances.csv` (every estimator's
//! variance along the shared trajectory), `curves.json` (the configuration and everything
//! measured), and the figures as PNG and SVG: `objective_vs_steps`,
//! `objective_vs_evaluations`, `grad_variance` (each estimator's own, log),
//! `shared_variance` (every estimator's along the shared trajectory, log) and
//! `probabilities` (the tracked categories).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use plotters::prelude::{RGBColor, SeriesLabelPosition};

use crate::error::{Error, Result};
use crate::estimators::{self, Estimator, Settings, REGISTRY};
use crate::loss::Loss;
use crate::oracle::ExactKind;
use crate::plot::{ensure_font, estimator_style};
use crate::problem::Problem;
use crate::train::plot::{write_figure, LineFigure, Series};

use super::{
    optimise, Direction, OptimiseReport, OptimiseSpec, OptimizerKind, SharedTrajectory, Trajectory,
    VarianceMode,
};

/// The options of `mcgrad train --problem`, unvalidated ([`plan`] checks them).
#[derive(Clone, Debug, PartialEq)]
pub struct ProblemTrainOptions {
    /// The problem: a name of `mcgrad problems` or a problem file.
    pub problem: String,
    /// The pnorm exponent (default: the problem's).
    pub p: Option<f64>,
    /// The loss (default: the named problem's first; a file's first that it has fields for).
    pub loss: Option<String>,
    /// Estimator ids, or `all` (every one defined on the problem at `samples`).
    pub estimators: Vec<String>,
    /// The optimiser.
    pub optimiser: OptimizerKind,
    /// Its learning rate (default: [`OptimizerKind::default_problem_lr`]).
    pub lr: Option<f64>,
    /// Optimiser steps.
    pub steps: u32,
    /// Draws per step, S.
    pub samples: u32,
    /// Evaluate every this many steps.
    pub eval_every: u32,
    /// Monte Carlo repetitions of a variance probe without a closed form.
    pub variance_reps: u32,
    /// Tracked probabilities, `VARIABLE:CATEGORY` (default: the last category of the first
    /// four variables).
    pub track: Vec<String>,
    /// The shared trajectory's driver: `exact`, an estimator id, `none`, or `auto` (`exact`
    /// where the problem has an exact gradient, else none).
    pub shared: String,
    /// Raise the objective instead of lowering it.
    pub maximise: bool,
    /// Seed of the named problem's numbers and of every draw.
    pub seed: u64,
    /// Gumbel-softmax temperature.
    pub tau: f64,
    /// The estimators' own settings (`warmup`: steps of each warm-up).
    pub settings: Settings,
    /// Warm up again every this many steps (0: only at the start).
    pub rewarm_every: u32,
    /// Output folder.
    pub out: PathBuf,
    /// No progress bar.
    pub quiet: bool,
}

/// The problem `arg` names (a built-in name, else a file), with its default losses, and the
/// name to report.
///
/// # Errors
/// [`Error::Unknown`] for neither a name nor a file; the file's read and format errors.
pub fn load_problem(arg: &str, seed: u64) -> Result<(Problem, Vec<Loss>)> {
    if let Some(named) = crate::problems::NAMED.iter().find(|p| p.name == arg) {
        return Ok(((named.build)(seed), named.default_losses.to_vec()));
    }
    let path = Path::new(arg);
    if !path.exists() && !arg.contains(['/', '.']) {
        return Err(crate::problems::by_name(arg)
            .err()
            .unwrap_or_else(|| Error::InvalidArgument("--problem: no such problem".into())));
    }
    let problem = Problem::load(path)?;
    let losses = Loss::ALL
        .into_iter()
        .filter(|&l| problem.check_loss(l).is_ok())
        .collect();
    Ok((problem, losses))
}

/// Parses `VARIABLE:CATEGORY`.
fn parse_track(s: &str) -> Result<(usize, usize)> {
    let bad = || {
        Error::InvalidArgument(format!(
            "--track {s}: expected VARIABLE:CATEGORY (two numbers from 0, e.g. 0:1)"
        ))
    };
    let (a, b) = s.trim().split_once(':').ok_or_else(bad)?;
    Ok((
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    ))
}

/// Checks the options and turns them into a spec; reads the problem file, writes nothing.
///
/// # Errors
/// [`Error::InvalidArgument`], [`Error::Unknown`] or the problem's errors, naming the option.
pub fn plan(args: &ProblemTrainOptions) -> Result<OptimiseSpec> {
    let (mut problem, default_losses) = load_problem(&args.problem, args.seed)?;
    if let Some(p) = args.p {
        problem.exponent = p;
    }
    let loss = match &args.loss {
        Some(l) => Loss::parse(l.trim())?,
        None => *default_losses.first().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "--problem {}: the file holds the fields of no loss",
                args.problem
            ))
        })?,
    };
    problem.validate()?;
    problem.check_loss(loss)?;
    let mut spec = OptimiseSpec::new(problem, loss, Vec::new());
    spec.settings = args.settings.clone();
    spec.tau = args.tau;
    spec.optimiser = args.optimiser;
    spec.learning_rate = args.lr.unwrap_or(args.optimiser.default_problem_lr());
    spec.steps = args.steps;
    spec.samples = args.samples;
    spec.eval_every = args.eval_every;
    spec.variance_reps = args.variance_reps;
    spec.variance_mode = VarianceMode::ExactWhereAvailable;
    spec.direction = if args.maximise {
        Direction::Maximise
    } else {
        Direction::Minimise
    };
    spec.rewarm_every = args.rewarm_every;
    spec.seed = args.seed;
    spec.track = if args.track.is_empty() {
        let k = spec.problem.k;
        (0..spec.problem.l.min(4)).map(|l| (l, k - 1)).collect()
    } else {
        args.track
            .iter()
            .map(|t| parse_track(t))
            .collect::<Result<_>>()?
    };
    if !(args.tau.is_finite() && args.tau >= crate::engine::MIN_TAU) {
        return Err(Error::InvalidArgument(format!(
            "--tau must be at least {} (got {})",
            crate::engine::MIN_TAU,
            args.tau
        )));
    }
    let ctx = spec.start_context();
    let defined = |e: &dyn Estimator| e.check(&ctx).is_ok() && args.samples >= e.min_samples();
    spec.estimators = if args.estimators.iter().any(|e| e.trim() == "all") {
        REGISTRY.iter().copied().filter(|e| defined(*e)).collect()
    } else {
        let mut chosen: Vec<&'static dyn Estimator> = Vec::new();
        for id in &args.estimators {
            let e = estimators::by_id(id.trim())?;
            if !chosen.iter().any(|c| c.id() == e.id()) {
                chosen.push(e);
            }
        }
        chosen
    };
    spec.shared = match args.shared.trim() {
        "none" => SharedTrajectory::None,
        "auto" if estimators::Exact.check(&ctx).is_ok() => SharedTrajectory::Exact,
        "auto" => SharedTrajectory::None,
        "exact" => SharedTrajectory::Exact,
        id => SharedTrajectory::Estimator(estimators::by_id(id)?),
    };
    spec.validate()?;
    Ok(spec)
}

/// `mcgrad train --problem`: validates, optimises with every estimator, writes the output
/// folder and prints the table.
///
/// # Errors
/// Bad options before anything is written; [`Error::Write`] or [`Error::Plot`] while writing.
pub fn run_problem_train(args: &ProblemTrainOptions) -> Result<()> {
    let spec = plan(args)?;
    crate::outdir::check(&args.out)?;
    let trajectories = spec.estimators.len() + usize::from(spec.shared.driver().is_some());
    let total = u64::from(spec.steps) * trajectories as u64;
    let bar = if args.quiet || !std::io::stderr().is_terminal() {
        indicatif::ProgressBar::hidden()
    } else {
        let style = indicatif::ProgressStyle::with_template(
            "optimising {bar:40} {pos}/{len} steps ({elapsed} elapsed, ~{eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        indicatif::ProgressBar::new(total).with_style(style)
    };
    let t0 = std::time::Instant::now();
    let report = optimise(&spec, &|n| bar.inc(n));
    bar.finish_and_clear();
    let report = report?;
    let seconds = t0.elapsed().as_secs_f64();
    let dir = crate::outdir::OutDir::create(&args.out)?;
    dir.fill(|d| write_files(d, args, &spec, &report, seconds))?;
    dir.commit()?;
    crate::error::print_stdout(&format!(
        "{}\nwrote {}\n",
        summary(args, &spec, &report, seconds),
        args.out.display()
    ))
}

fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        String::new()
    }
}

fn kind_name(kind: ExactKind) -> &'static str {
    match kind {
        ExactKind::Exact => "exact",
        ExactKind::Reference => "reference",
    }
}

/// The table printed at the end: one line per estimator.
pub fn summary(
    args: &ProblemTrainOptions,
    spec: &OptimiseSpec,
    report: &OptimiseReport,
    seconds: f64,
) -> String {
    let kind = report
        .trajectories
        .first()
        .map_or("exact", |t| kind_name(t.last().objective_kind));
    let mut s = format!(
        "{} ({} variables of {} categories, {} loss), {} E f, {} at lr {}, S = {}, {} steps; {:.1} s in all\n",
        args.problem,
        spec.problem.l,
        spec.problem.k,
        spec.loss,
        match spec.direction {
            Direction::Minimise => "minimising",
            Direction::Maximise => "maximising",
        },
        spec.optimiser.name(),
        spec.learning_rate,
        spec.samples,
        spec.steps,
        seconds
    );
    s.push_str(&format!(
        "{:<15} {:>14} {:>13} {:>12} {:>12} {:>9}",
        "estimator",
        format!("E f ({kind})"),
        "grad var",
        "method",
        "loss evals",
        "seconds"
    ));
    for t in &report.trajectories {
        let p = t.last();
        let (var, method) = p
            .variances
            .first()
            .map_or((f64::NAN, "-"), |v| (v.variance, v.method.name()));
        s.push_str(&format!(
            "\n{:<15} {:>14.6} {:>13.3e} {:>12} {:>12.4e} {:>9.3}",
            t.estimator, p.objective, var, method, p.loss_evaluations, p.seconds
        ));
    }
    for t in &report.trajectories {
        if let Some(w) = &t.warm_up {
            s.push_str(&format!(
                "\n{}: {} warm-up(s), {:.3} s and {} loss evaluations, included in the figures above; the estimator's report of the last (worded for mcgrad run): {}",
                t.estimator, w.count, w.seconds, w.loss_evaluations, w.last
            ));
        }
    }
    if let Some(shared) = &report.shared {
        s.push_str(&format!(
            "\n(variances along the shared trajectory driven by {}: variances.csv)",
            shared.estimator
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

fn write_files(
    dir: &Path,
    args: &ProblemTrainOptions,
    spec: &OptimiseSpec,
    report: &OptimiseReport,
    seconds: f64,
) -> Result<()> {
    for (name, text) in [
        ("curves.csv", curves_csv(spec, report)),
        ("variances.csv", variances_csv(report)),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(io_err(&path))?;
    }
    let path = dir.join("curves.json");
    let json = serde_json::to_string_pretty(&curves_json(args, spec, report, seconds))
        .map_err(|e| Error::Internal(format!("cannot serialise curves.json: {e}")))?;
    std::fs::write(&path, json + "\n").map_err(io_err(&path))?;
    write_plots(dir, spec, report)
}

/// `curves.csv`: one row per (trajectory, evaluation); `trajectory` is `own` or `shared`.
pub fn curves_csv(spec: &OptimiseSpec, report: &OptimiseReport) -> String {
    let mut s = String::from(
        "trajectory,estimator,step,seconds,loss_evaluations,objective,objective_kind,objective_se,exact_grad_sq,grad_variance,variance_method,variance_reps",
    );
    for (l, k) in &spec.track {
        s.push_str(&format!(",p_{l}_{k}"));
    }
    s.push('\n');
    let own = report.trajectories.iter().map(|t| ("own", t));
    for (which, t) in own.chain(report.shared.iter().map(|t| ("shared", t))) {
        for p in &t.points {
            let own_var = (which == "own").then(|| p.variances.first()).flatten();
            s.push_str(&format!(
                "{which},{},{},{},{},{},{},{},{},{},{},{}",
                t.estimator,
                p.step,
                p.seconds,
                p.loss_evaluations,
                num(p.objective),
                kind_name(p.objective_kind),
                p.objective_se.map_or(String::new(), num),
                p.exact_grad_sq.map_or(String::new(), num),
                own_var.map_or(String::new(), |v| num(v.variance)),
                own_var.map_or("", |v| v.method.name()),
                own_var
                    .and_then(|v| v.reps)
                    .map_or(String::new(), |r| r.to_string()),
            ));
            for v in &p.probabilities {
                s.push_str(&format!(",{v}"));
            }
            s.push('\n');
        }
    }
    s
}

/// `variances.csv`: every estimator's variance at every evaluation of the shared trajectory.
pub fn variances_csv(report: &OptimiseReport) -> String {
    let mut s = String::from("driver,step,objective,estimator,variance,method,reps\n");
    if let Some(t) = &report.shared {
        for p in &t.points {
            for v in &p.variances {
                s.push_str(&format!(
                    "{},{},{},{},{},{},{}\n",
                    t.estimator,
                    p.step,
                    num(p.objective),
                    v.estimator,
                    num(v.variance),
                    v.method.name(),
                    v.reps.map_or(String::new(), |r| r.to_string())
                ));
            }
        }
    }
    s
}

fn trajectory_json(t: &Trajectory) -> serde_json::Value {
    serde_json::json!({
        "estimator": t.estimator,
        "seed": t.seed,
        "loss_evaluations_per_step": t.loss_evaluations_per_step,
        "warm_up": t.warm_up,
        "points": t.points,
    })
}

/// `curves.json`: the configuration, the definitions, and every trajectory.
pub fn curves_json(
    args: &ProblemTrainOptions,
    spec: &OptimiseSpec,
    report: &OptimiseReport,
    seconds: f64,
) -> serde_json::Value {
    serde_json::json!({
        "command": "train --problem",
        "mcgrad_version": env!("CARGO_PKG_VERSION"),
        "problem": {
            "name": args.problem,
            "variables": spec.problem.l,
            "categories": spec.problem.k,
            "d": spec.problem.d,
            "exponent": spec.problem.exponent,
        },
        "config": {
            "loss": spec.loss.name(),
            "estimators": spec.estimators.iter().map(|e| e.id()).collect::<Vec<_>>(),
            "optimiser": spec.optimiser.name(),
            "learning_rate": spec.learning_rate,
            "steps": spec.steps,
            "samples": spec.samples,
            "eval_every": spec.eval_every,
            "variance_reps": spec.variance_reps,
            "track": spec.track,
            "shared": spec.shared.driver().map(|e| e.id()),
            "direction": spec.direction,
            "seed": spec.seed,
            "tau": spec.tau,
            "warmup": spec.settings.warmup,
            "rewarm_every": spec.rewarm_every,
            "rb_k": spec.settings.rb_k,
            "gr_samples": spec.settings.gr_samples,
            "rebar_eta": spec.settings.rebar_eta,
            "rebar_tau": spec.settings.rebar_tau,
        },
        "definitions": {
            "objective": "E f(z) at the trajectory's W: exact (closed form or enumeration), or where objective_kind is \"reference\" the mean of f over REFERENCE_OBJECTIVE_DRAWS joint draws, with its standard error objective_se",
            "variances": "E||G_hat - E G_hat||_F^2 of the S-draw estimate in W space at this W; method closed-form or enumeration: exact; monte-carlo: sample variance over `reps` estimates on draws no step reads. Own trajectories: the estimator's own, with a moving-average baseline at its current value; the shared trajectory: every estimator's, at the same W, a moving-average baseline at the mean signal it converges to",
            "seconds": "wall seconds of the steps and warm-ups so far, one thread per trajectory (evaluation excluded)",
            "loss_evaluations": "loss evaluations of the steps and warm-ups so far (a gradient of the loss counts as one)",
            "probabilities": "p of the tracked (variable, category) pairs, in the order of config.track",
            "warm_up": "REBAR's and RELAX's warm-ups on the trajectory: count, seconds and loss_evaluations, all counted in the points' seconds and loss_evaluations; `last` is the estimator's own report, worded for mcgrad run, where warm-ups are not counted",
            "draws": "step t of every trajectory reads the Philox counters (repetition 0, point t) of the seed's key: common random numbers",
        },
        "total_seconds": seconds,
        "trajectories": report.trajectories.iter().map(trajectory_json).collect::<Vec<_>>(),
        "shared": report.shared.as_ref().map(trajectory_json),
    })
}

fn colour(id: &str) -> RGBColor {
    estimator_style(id).0
}

/// Writes the figures of `report` into `dir`.
///
/// # Errors
/// [`Error::Plot`] naming the figure.
pub fn write_plots(dir: &Path, spec: &OptimiseSpec, report: &OptimiseReport) -> Result<()> {
    ensure_font();
    let setting = format!(
        "{}, lr {}, S = {}",
        spec.optimiser.name(),
        spec.learning_rate,
        spec.samples
    );
    let kind = report
        .trajectories
        .first()
        .map_or(ExactKind::Exact, |t| t.points[0].objective_kind);
    let objective_label = format!("E f(z) ({} loss, {})", spec.loss, kind_name(kind));
    let series = |x: &dyn Fn(&super::EvalPoint) -> f64, y: &dyn Fn(&super::EvalPoint) -> f64| {
        report
            .trajectories
            .iter()
            .map(|t| {
                (
                    t.estimator.to_string(),
                    colour(t.estimator),
                    t.points.iter().map(|p| (x(p), y(p))).collect::<Vec<_>>(),
                )
            })
            .collect::<Vec<_>>()
    };
    let step = |p: &super::EvalPoint| f64::from(p.step);
    let nonnegative = spec.loss == Loss::Pnorm || spec.loss == Loss::Decoder;
    write_figure(
        dir,
        "objective_vs_steps",
        &LineFigure {
            title: format!("Objective against steps ({setting})"),
            x_label: "steps",
            y_label: &objective_label,
            x_steps: true,
            legend: SeriesLabelPosition::UpperRight,
            nonnegative,
            series: series(&step, &|p| p.objective),
        },
        false,
    )?;
    write_figure(
        dir,
        "objective_vs_evaluations",
        &LineFigure {
            title: format!("Objective against loss evaluations ({setting})"),
            x_label: "loss evaluations (steps and warm-ups)",
            y_label: &objective_label,
            x_steps: true,
            legend: SeriesLabelPosition::UpperRight,
            nonnegative,
            series: series(&|p| p.loss_evaluations, &|p| p.objective),
        },
        false,
    )?;
    let positive = |s: Vec<Series>| {
        s.into_iter()
            .filter(|(_, _, pts)| pts.iter().any(|p| p.1 > 0.0))
            .collect::<Vec<_>>()
    };
    let own = positive(series(&step, &|p| {
        p.variances.first().map_or(f64::NAN, |v| v.variance)
    }));
    if !own.is_empty() {
        write_figure(
            dir,
            "grad_variance",
            &LineFigure {
                title: format!(
                    "Gradient variance along each estimator's own trajectory ({setting})"
                ),
                x_label: "steps",
                y_label: "E||G_hat - G||^2 (log)",
                x_steps: true,
                legend: SeriesLabelPosition::UpperRight,
                nonnegative: true,
                series: own,
            },
            true,
        )?;
    }
    if let Some(shared) = &report.shared {
        let shared_series = positive(
            spec.estimators
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    (
                        e.id().to_string(),
                        colour(e.id()),
                        shared
                            .points
                            .iter()
                            .map(|p| (step(p), p.variances[i].variance))
                            .collect(),
                    )
                })
                .collect(),
        );
        if !shared_series.is_empty() {
            write_figure(
                dir,
                "shared_variance",
                &LineFigure {
                    title: format!(
                        "Gradient variance at the same W, along the trajectory of {} ({setting})",
                        shared.estimator
                    ),
                    x_label: "steps",
                    y_label: "E||G_hat - G||^2 (log)",
                    x_steps: true,
                    legend: SeriesLabelPosition::UpperRight,
                    nonnegative: true,
                    series: shared_series,
                },
                true,
            )?;
        }
    }
    if !spec.track.is_empty() {
        let mut prob_series = Vec::new();
        for t in &report.trajectories {
            for (i, (l, k)) in spec.track.iter().enumerate() {
                let label = if spec.track.len() == 1 {
                    t.estimator.to_string()
                } else {
                    format!("{} p[{l},{k}]", t.estimator)
                };
                prob_series.push((
                    label,
                    colour(t.estimator),
                    t.points
                        .iter()
                        .map(|p| (step(p), p.probabilities[i]))
                        .collect(),
                ));
            }
        }
        write_figure(
            dir,
            "probabilities",
            &LineFigure {
                title: format!("Tracked probabilities against steps ({setting})"),
                x_label: "steps",
                y_label: "p(z_l = k)",
                x_steps: true,
                legend: SeriesLabelPosition::UpperRight,
                nonnegative: true,
                series: prob_series,
            },
            false,
        )?;
    }
    Ok(())
}
