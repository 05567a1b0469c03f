//! The main job, `mcgrad run`: sweeps every selected estimator on one problem and writes the
//! results folder (problem, summary, CSV, plots). Owns the validated run configuration and
//! the choice of engine; the results folder itself is [`crate::outdir`]'s.
//!
//! Everything the user can get wrong is checked before anything is written; the last check
//! creates the staging folder beside the destination (which proves it writable). The run
//! writes into that folder and renames it into place at the end, so an interrupted run never
//! leaves a half-written results folder. A figure that came out NaN or infinite fails the
//! run (exit 1) before anything is written.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::backend::{select, Backend, Device};
use crate::engine::{run_sweep, CpuEngine, Engine, SweepSpec};
use crate::error::{Error, Result};
use crate::outdir::OutDir;
use crate::plot;
use crate::record::records;
use crate::summary::{Summary, Timing};

/// A validated run: every field has been checked, nothing has been written yet.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The results folder to create or replace.
    pub out: PathBuf,
    /// What to sweep.
    pub spec: SweepSpec,
    /// Which engine.
    pub backend: Backend,
    /// A GPU adapter name to prefer (GPU engine only).
    pub adapter: Option<String>,
    /// CPU worker threads (0: one per core).
    pub threads: usize,
    /// No progress bar and no notes.
    pub quiet: bool,
}

/// What a finished run produced.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// The summary written to `summary.json`.
    pub summary: Summary,
    /// Every file written, relative to the results folder.
    pub files: Vec<PathBuf>,
}

/// The engine for a backend choice, as [`crate::backend::select`] rules: `cpu` the CPU
/// engine; `gpu` any adapter (software ones too) or the one `--adapter` names; `auto` a
/// hardware GPU if there is one (or the named adapter) and the problem fits the GPU engine
/// (K <= 16), else the CPU engine, since a software GPU is slower than the CPU engine.
///
/// # Errors
/// [`Error::GpuUnavailable`] for `gpu` when no adapter fits; [`Error::InvalidArgument`] if
/// the CPU thread pool cannot be built; [`Error::Gpu`]
/// if the GPU's kernels do not build.
pub fn make_engine(
    backend: Backend,
    adapter: Option<&str>,
    threads: usize,
    k: usize,
) -> Result<Box<dyn Engine>> {
    use crate::gpu::{params::MAX_K as MAX_GPU_K, GpuEngine};
    // `gpu` takes any K: past the one-variable kernels' K the generic kernels run the
    // score-function cells and the other cells fall back to the CPU per cell, with a note
    // (`gpu::fallback_notes`). `auto` keeps the CPU engine there.
    let unfit = (backend == Backend::Auto && k > MAX_GPU_K).then(|| {
        format!("the GPU engine's fast kernels serve K <= {MAX_GPU_K} categories (this problem has {k})")
    });
    Ok(match select(backend, adapter, unfit, GpuEngine::new)? {
        Device::Cpu => Box::new(CpuEngine::new(threads)?),
        Device::Gpu(engine) => Box::new(engine),
    })
}

/// Notes about estimators skipped at some draw counts (RLOO needs S >= 2).
///
/// # Errors
/// [`Error::InvalidArgument`] if an estimator runs at none of the draw counts.
pub fn skip_notes(spec: &SweepSpec) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    for e in &spec.estimators {
        let skipped: Vec<String> = spec
            .samples
            .iter()
            .filter(|&&s| s < e.min_samples())
            .map(u32::to_string)
            .collect();
        if skipped.len() == spec.samples.len() {
            return Err(Error::InvalidArgument(format!(
                "{} needs S >= {} draws but --samples has none; add a larger S or drop it",
                e.id(),
                e.min_samples()
            )));
        }
        if !skipped.is_empty() {
            notes.push(format!(
                "note: {} needs S >= {}; skipped at S = {}",
                e.id(),
                e.min_samples(),
                skipped.join(", ")
            ));
        }
    }
    Ok(notes)
}

fn progress_bar(total: u64, quiet: bool) -> ProgressBar {
    let target = if quiet || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{wide_bar}] {human_pos}/{human_len} draws ({rate}, eta {eta})",
    ) {
        let rate = |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.2e} draws/s", state.per_sec());
        };
        bar.set_style(style.with_key("rate", rate).progress_chars("=> "));
    }
    bar
}

/// Runs the main job: the sweep, then `problem.json`, `summary.json`, `summary.csv` and the
/// plots, written into a staging folder that replaces `config.out` at the end.
///
/// # Errors
/// Bad input ([`Error::exit_code`] 2) before anything is written: an unusable backend, an
/// estimator that runs at no S, an unwritable or foreign `--out` (see [`OutDir::create`]).
/// Afterwards (exit 1): engine failures, a figure that is NaN or infinite
/// ([`Error::NonFinite`]), write ([`Error::Output`]) and plot failures; the staging folder
/// is then removed and `--out` left as it was.
pub fn execute(config: &RunConfig) -> Result<RunOutcome> {
    config.spec.validate()?;
    let mut notes = skip_notes(&config.spec)?;
    let engine = make_engine(
        config.backend,
        config.adapter.as_deref(),
        config.threads,
        config.spec.problem.k,
    )?;
    if engine.backend_info().engine == "gpu" {
        notes.extend(crate::gpu::fallback_notes(&config.spec, engine.as_ref()));
    }
    let out = OutDir::create(&config.out)?;
    if !config.quiet {
        notes.iter().for_each(|n| eprintln!("{n}"));
    }

    let spec = &config.spec;
    let bar = progress_bar(spec.total_draws(), config.quiet);
    let start = Instant::now();
    let points = run_sweep(spec, engine.as_ref(), &|n| bar.inc(n))?;
    let sweep_seconds = start.elapsed().as_secs_f64();
    bar.finish_and_clear();

    let timing = Timing {
        sweep_seconds,
        draws_per_second: spec.total_draws() as f64 / sweep_seconds.max(1e-9),
    };
    let summary = Summary::new(spec, engine.backend_info(), records(spec, &points), timing);
    if !config.quiet {
        for r in summary.records.iter().filter(|r| r.warm_up.is_some()) {
            eprintln!(
                "note: {} ({}): {}",
                r.estimator,
                r.loss,
                r.warm_up.as_deref().unwrap_or("")
            );
        }
    }

    summary.check_finite()?;
    let problem_json = serde_json::to_string(&spec.problem.to_json())
        .map_err(|e| Error::Internal(format!("cannot serialise the problem: {e}")))?;
    out.write("problem.json", problem_json.as_bytes())?;
    out.write("summary.json", summary.to_json_text()?.as_bytes())?;
    out.write("summary.csv", summary.to_csv().as_bytes())?;
    out.fill(|dir| plot::write_all(&summary, &spec.problem, dir))?;
    let files = out.commit()?;
    Ok(RunOutcome { summary, files })
}
