//! The main job, `mcgrad run`: sweeps every selected estimator on one problem and writes the
//! results folder (problem, summary, CSV, plots). Owns the validated run configuration, the
//! choice of engine, and the staging folder that makes a results folder appear whole or not
//! at all.
//!
//! Everything the user can get wrong is checked before anything is written; the last check
//! creates the staging folder beside the destination (which proves it writable). The run
//! writes into that folder and renames it into place at the end, so an interrupted run never
//! leaves a half-written results folder.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::{run_sweep, CpuEngine, Engine, SweepSpec};
use crate::error::{Error, Result};
use crate::plot;
use crate::record::records;
use crate::summary::{Summary, Timing};

/// Which engine runs the sweep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// A hardware GPU if there is one (and K <= 16), else the CPU engine.
    #[default]
    Auto,
    /// The CPU engine (rayon).
    Cpu,
    /// The GPU engine (wgpu) on any adapter, software ones too.
    Gpu,
}

/// A validated run: every field has been checked, nothing has been written yet.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The results folder to create or replace.
    pub out: PathBuf,
    /// What to sweep.
    pub spec: SweepSpec,
    /// Which engine.
    pub backend: BackendChoice,
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

/// The engine for a backend choice: `cpu` the CPU engine; `gpu` any adapter (software ones
/// too) or the one `--adapter` names; `auto` a hardware GPU if there is one (or the named
/// adapter) and the problem fits the GPU engine (K <= 16), else the CPU engine, since a
/// software GPU is slower than the CPU engine.
///
/// # Errors
/// [`Error::GpuUnavailable`] for `gpu` when no adapter fits; [`Error::Gpu`] if the GPU's
/// kernels do not build; [`Error::InvalidArgument`] if the CPU thread pool cannot be built.
pub fn make_engine(
    backend: BackendChoice,
    adapter: Option<&str>,
    threads: usize,
    k: usize,
) -> Result<Box<dyn Engine>> {
    use crate::gpu::{params::MAX_K as MAX_GPU_K, GpuEngine, GpuPreference};
    let named = adapter.map(|a| GpuPreference::Named(a.to_string()));
    match backend {
        BackendChoice::Cpu => Ok(Box::new(CpuEngine::new(threads)?)),
        BackendChoice::Gpu => {
            if k > MAX_GPU_K {
                return Err(Error::InvalidArgument(format!(
                    "the GPU engine handles K <= {MAX_GPU_K} categories (this problem has {k}); use --backend cpu"
                )));
            }
            Ok(Box::new(GpuEngine::new(
                &named.unwrap_or(GpuPreference::Any),
            )?))
        }
        BackendChoice::Auto => {
            if k <= MAX_GPU_K {
                match GpuEngine::new(&named.unwrap_or(GpuPreference::HardwareOnly)) {
                    Ok(engine) => return Ok(Box::new(engine)),
                    Err(Error::GpuUnavailable(_)) => {}
                    Err(other) => return Err(other),
                }
            }
            Ok(Box::new(CpuEngine::new(threads)?))
        }
    }
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

/// A folder beside the destination that the run writes into; [`StagingDir::commit`] renames
/// it into place, and dropping it uncommitted removes it.
#[derive(Debug)]
pub struct StagingDir {
    staging: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl StagingDir {
    /// Creates the staging folder for `dest` (and `dest`'s parent folders if missing).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `dest` names no folder, is a file, or is a non-empty
    /// folder that is not a results folder (no `summary.json`: it is not ours to replace);
    /// [`Error::Write`] if the folder beside it cannot be created.
    pub fn create(dest: &Path) -> Result<Self> {
        let name = match dest.file_name() {
            Some(n)
                if dest
                    .components()
                    .next_back()
                    .is_some_and(|c| matches!(c, std::path::Component::Normal(_))) =>
            {
                n.to_string_lossy().into_owned()
            }
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "--out {}: must name a folder",
                    dest.display()
                )))
            }
        };
        if dest.exists() {
            if !dest.is_dir() {
                return Err(Error::InvalidArgument(format!(
                    "--out {}: exists and is not a folder",
                    dest.display()
                )));
            }
            let empty = std::fs::read_dir(dest)
                .map_err(|source| Error::Write {
                    path: dest.to_owned(),
                    source,
                })?
                .next()
                .is_none();
            if !empty && !dest.join("summary.json").is_file() {
                return Err(Error::InvalidArgument(format!(
                    "--out {}: exists and is not an mcgrad results folder (no summary.json); \
                     choose another folder or remove it",
                    dest.display()
                )));
            }
        }
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|source| Error::Write {
            path: dest.to_owned(),
            source,
        })?;
        let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if staging.exists() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        std::fs::create_dir(&staging).map_err(|source| Error::Write {
            path: dest.to_owned(),
            source,
        })?;
        Ok(Self {
            staging,
            dest: dest.to_owned(),
            committed: false,
        })
    }

    /// The folder to write into.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// Moves the staging folder into place, replacing an earlier results folder.
    ///
    /// # Errors
    /// [`Error::Write`] if a rename fails (the earlier folder is restored if it can be).
    pub fn commit(mut self) -> Result<()> {
        let write_err = |source| Error::Write {
            path: self.dest.clone(),
            source,
        };
        if self.dest.exists() {
            let old = self.staging.with_file_name(format!(
                ".{}.old-{}",
                self.dest.file_name().unwrap_or_default().to_string_lossy(),
                std::process::id()
            ));
            std::fs::rename(&self.dest, &old).map_err(write_err)?;
            if let Err(e) = std::fs::rename(&self.staging, &self.dest) {
                let _ = std::fs::rename(&old, &self.dest);
                return Err(write_err(e));
            }
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&self.staging, &self.dest).map_err(write_err)?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

fn write_file(dir: &Path, name: &str, contents: &[u8]) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, contents).map_err(|source| Error::Write {
        path: path.clone(),
        source,
    })?;
    Ok(PathBuf::from(name))
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
/// estimator that runs at no S, an unwritable or foreign `--out`. Afterwards, engine and
/// plot failures; the staging folder is then removed and `--out` left as it was.
pub fn execute(config: &RunConfig) -> Result<RunOutcome> {
    config.spec.validate()?;
    let notes = skip_notes(&config.spec)?;
    let engine = make_engine(
        config.backend,
        config.adapter.as_deref(),
        config.threads,
        config.spec.problem.k,
    )?;
    let staging = StagingDir::create(&config.out)?;
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

    let dir = staging.path();
    let problem_json = serde_json::to_string(&spec.problem.to_json())
        .map_err(|e| Error::InvalidArgument(format!("cannot serialise the problem: {e}")))?;
    let mut files = vec![
        write_file(dir, "problem.json", problem_json.as_bytes())?,
        write_file(dir, "summary.json", summary.to_json_text()?.as_bytes())?,
        write_file(dir, "summary.csv", summary.to_csv().as_bytes())?,
    ];
    files.extend(plot::write_all(&summary, &spec.problem, dir)?);
    staging.commit()?;
    Ok(RunOutcome { summary, files })
}
