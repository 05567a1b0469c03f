//! What a finished `mcgrad train` leaves: `curves.csv`, `curves.json`, the plots and
//! `weights.png` in the output folder (written whole through a temporary sibling folder), and
//! the results table printed at the end.

use std::path::Path;

use crate::error::{Error, Result};
use crate::estimators::{reads_draws, Context, Estimator, Family};
use crate::loss::Loss;

use super::curves::speedups_vs_reinforce;
use super::data::{D, K};
use super::job::TrainReport;
use super::{model, plot};

/// Checks that `out` can be replaced: absent, an empty folder, or an earlier output (see
/// [`crate::outdir::check`]).
pub(super) fn check_out(out: &Path) -> Result<()> {
    crate::outdir::check(out).map(|_| ())
}

/// Where the estimators, the W gradients and the optimiser ran: `gpu` or `cpu` when all the
/// runs agree, `mixed` otherwise (each estimator's entry says where its own ran).
fn estimators_and_optimizer(report: &TrainReport) -> &'static str {
    let mut places = report
        .curves
        .iter()
        .map(|c| c.steps_on.estimator_and_optimizer());
    let first = places.next().unwrap_or("cpu");
    if places.all(|p| p == first) {
        first
    } else {
        "mixed"
    }
}

/// A table of the final numbers, one line per estimator.
pub fn summary(report: &TrainReport) -> String {
    let b = &report.backend;
    let mut s = format!(
        "{} ({} train / {} test images), B = {}, S = {}, {} steps, {}, {} on {}; {:.1} s in all\n",
        report.data.0,
        report.data.1,
        report.data.3,
        report.plan.config.batch,
        report.plan.config.samples,
        report.plan.config.steps,
        report.plan.config.optimizer.name(),
        match (b.engine.as_str(), estimators_and_optimizer(report)) {
            ("gpu", "gpu") => "whole steps",
            ("gpu", "mixed") => "whole steps (forward pass and draws for some estimators)",
            _ => "forward pass and draws",
        },
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

/// Writes the report into `out`, through a staging folder renamed into place at the end
/// (see [`crate::outdir`]).
///
/// # Errors
/// [`Error::InvalidArgument`] for an `out` that is not ours to replace; [`Error::Write`] if
/// it cannot be created; [`Error::Output`] or [`Error::Plot`] while writing.
pub fn write_outputs(out: &Path, report: &TrainReport) -> Result<()> {
    let dir = crate::outdir::OutDir::create(out)?;
    dir.fill(|d| write_files(d, report))?;
    dir.commit().map(|_| ())
}

fn write_files(dir: &Path, report: &TrainReport) -> Result<()> {
    let csv_path = dir.join("curves.csv");
    std::fs::write(&csv_path, curves_csv(report)).map_err(io_err(&csv_path))?;
    let json_path = dir.join("curves.json");
    let json = serde_json::to_string_pretty(&curves_json(report))
        .map_err(|e| Error::Internal(format!("cannot serialise curves.json: {e}")))?;
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
                "draws_per_input_step": if reads_draws(*e) { cfg.samples } else { 0 },
                "uniforms_per_draw": if e.family() == Family::Relaxed { K } else { 1 },
                "variance_method": c.variance_method,
                "estimator_and_optimizer": c.steps_on.estimator_and_optimizer(),
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
            "requested": report.plan.backend.to_string(),
            "forward_pass": report.backend.engine,
            "draws": report.backend.engine,
            "estimators_and_optimizer": estimators_and_optimizer(report),
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

/// Loss evaluations per input per step of `est` with S draws, as stated in the results: the
/// estimator's own count for one input (`exact` K, MuProp S + 1 for the mean-field pass, the
/// others S).
pub fn loss_evaluations(est: &dyn Estimator, samples: u32) -> u32 {
    let ctx = Context::from_logits(
        &[0.0; K],
        &model::target(Loss::Squared, 0),
        Loss::Squared,
        1.0,
    );
    est.loss_evaluations(&ctx, samples) as u32
}
