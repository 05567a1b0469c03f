//! `mcgrad reproduce`: the field's published toy experiments, each regenerated from one
//! command into its own results folder (`results/papers/NAME/` by default): figures (PNG and
//! SVG), the data as CSV and JSON, and a `README.md` that gives the setting, the command,
//! the paper's figure it matches, what the paper reports, what mcgrad measured (rendered from
//! the data) and where they differ and why.
//!
//! Each experiment is one module and one entry of [`EXPERIMENTS`]: a function from
//! [`Options`] to an [`Outcome`] (figures, data, the README's sections and the [`Claim`]s it
//! checks). This module owns the registry, the output folders (through [`crate::outdir`]:
//! staged, then renamed into place) and the README's frame. Every experiment has a quick
//! form (`--quick`, under 30 s on two cores) whose claims `tests/cpu/reproduce.rs` asserts; seeds
//! run in parallel (rayon) and every result depends only on its seed, never on the thread
//! count.

pub mod claims;
pub mod figure;
pub mod runs;
pub mod toy;

mod arm_toy;
mod indecater_synthetic;
mod rebar_toy;
mod reinmax_poly;
mod relax_toy;

use std::path::{Path, PathBuf};
use std::time::Instant;

pub use claims::Claim;
pub use figure::{LineFigure, Panel, Series};

use crate::error::{Error, Result};
use crate::outdir::{self, OutDir};

/// How to run an experiment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// The quick form: fewer steps, seeds or repetitions (what CI runs).
    pub quick: bool,
    /// Worker threads (0: one per core). Results do not depend on it.
    pub threads: usize,
}

/// What an experiment produced, before it is written.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The figures; the first is the one the repository's README shows.
    pub figures: Vec<LineFigure>,
    /// The data, one row per line (`data.csv`).
    pub csv: String,
    /// The configuration and the data (`data.json`).
    pub json: serde_json::Value,
    /// The setting, in Markdown (what was run, with which parameters).
    pub setting: String,
    /// What the paper reports, in Markdown.
    pub paper_reports: String,
    /// What mcgrad measured, in Markdown, rendered from the data.
    pub measured: String,
    /// Where mcgrad and the paper differ, and why, in Markdown.
    pub differences: String,
    /// The qualitative claims checked on the data.
    pub claims: Vec<Claim>,
}

/// One published experiment.
pub struct Experiment {
    /// The name `mcgrad reproduce` takes (and the folder under `results/papers/`).
    pub name: &'static str,
    /// What it is, in one line.
    pub about: &'static str,
    /// The paper and its figure or table.
    pub source: &'static str,
    /// Runs it.
    pub run: fn(&Options) -> Result<Outcome>,
}

/// Every experiment, in the order `--list` and `--all` take them.
pub static EXPERIMENTS: &[Experiment] = &[
    Experiment {
        name: "rebar-toy",
        about: "one Bernoulli, minimise E(z - 0.45)^2: loss and gradient variance against steps",
        source: "Tucker et al. 2017 (REBAR), Fig. 1",
        run: rebar_toy::run,
    },
    Experiment {
        name: "relax-toy",
        about: "one Bernoulli, minimise E(z - 0.499)^2: which estimators reach the optimum",
        source: "Grathwohl et al. 2018 (RELAX), Fig. 1",
        run: relax_toy::run,
    },
    Experiment {
        name: "arm-toy",
        about: "one Bernoulli, maximise E(z - p0)^2 for p0 in {0.49, 0.499, 0.501, 0.51}: probability trajectories",
        source: "Yin and Zhou 2019 (ARM), Fig. 1",
        run: arm_toy::run,
    },
    Experiment {
        name: "reinmax-poly",
        about: "128 Bernoulli variables, minimise E mean |z - 0.45|^p for p in {1.5, 2, 3}: training loss over 10 seeds",
        source: "Liu et al. 2023 (ReinMax), polynomial programming",
        run: reinmax_poly::run,
    },
    Experiment {
        name: "indecater-synthetic",
        about: "variance and 1 - cosine at 1000 draws on (12,3), (6,10), (3,100) categoricals, and the 200-Bernoulli optimisation",
        source: "De Smet et al. 2023 (IndeCateR), synthetic experiments",
        run: indecater_synthetic::run,
    },
];

/// Looks an experiment up by name.
///
/// # Errors
/// [`Error::Unknown`] listing the names.
pub fn by_name(name: &str) -> Result<&'static Experiment> {
    EXPERIMENTS
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| Error::Unknown {
            kind: "experiment",
            name: name.to_string(),
            known: EXPERIMENTS
                .iter()
                .map(|e| e.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The default results folder of an experiment: `results/papers/NAME`.
pub fn default_out(name: &str) -> PathBuf {
    Path::new("results").join("papers").join(name)
}

/// What one reproduction wrote.
#[derive(Clone, Debug)]
pub struct Written {
    /// The experiment.
    pub name: &'static str,
    /// The folder.
    pub out: PathBuf,
    /// Files written, relative to it.
    pub files: Vec<PathBuf>,
    /// The claims and whether each held.
    pub claims: Vec<Claim>,
    /// Wall seconds.
    pub seconds: f64,
}

/// Runs each `(experiment, folder)` and writes its folder. Every folder is checked before
/// anything runs, so a bad `--out` is refused (exit 2) before any work.
///
/// # Errors
/// Bad input (exit 2): a folder that [`outdir::check`] refuses, a thread count the pool
/// refuses. While running (exit 1): the experiment's failures, write and plot failures (the
/// folder is then left as it was).
pub fn reproduce(
    jobs: &[(&'static Experiment, PathBuf)],
    options: &Options,
    progress: &dyn Fn(&str),
) -> Result<Vec<Written>> {
    for (_, out) in jobs {
        outdir::check(out)?;
    }
    if options.threads > crate::engine::MAX_THREADS {
        return Err(Error::InvalidArgument(format!(
            "--threads {}: at most {} worker threads (0: one per core)",
            options.threads,
            crate::engine::MAX_THREADS
        )));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.threads)
        .build()
        .map_err(|e| Error::InvalidArgument(format!("--threads: {e}")))?;
    let threads = pool.current_num_threads();
    let mut written = Vec::new();
    for (experiment, out) in jobs {
        progress(&format!("reproducing {} ...", experiment.name));
        let dir = OutDir::create(out)?;
        let start = Instant::now();
        let outcome = pool.install(|| (experiment.run)(options))?;
        let seconds = start.elapsed().as_secs_f64();
        let mut figure_files = Vec::new();
        for fig in &outcome.figures {
            figure_files.extend(dir.fill(|d| crate::plot::render(fig, d))?);
        }
        dir.write("data.csv", outcome.csv.as_bytes())?;
        let json = serde_json::json!({
            "experiment": experiment.name,
            "source": experiment.source,
            "mcgrad_version": env!("CARGO_PKG_VERSION"),
            "quick": options.quick,
            "threads": threads,
            "seconds": seconds,
            "claims": outcome.claims,
            "data": outcome.json,
        });
        let text = serde_json::to_string_pretty(&json)
            .map_err(|e| Error::Internal(format!("cannot serialise the data: {e}")))?;
        dir.write("data.json", text.as_bytes())?;
        let readme = readme(experiment, &outcome, options, out, seconds, threads);
        dir.write("README.md", readme.as_bytes())?;
        let files = dir.commit()?;
        written.push(Written {
            name: experiment.name,
            out: out.clone(),
            files,
            claims: outcome.claims,
            seconds,
        });
    }
    Ok(written)
}

/// The command that regenerates `name` (quick or not) into `out`.
fn command(name: &str, options: &Options, out: &Path) -> String {
    let mut cmd = format!("mcgrad reproduce {name}");
    if options.quick {
        cmd.push_str(" --quick");
    }
    if out != default_out(name) {
        cmd.push_str(&format!(" --out {}", out.display()));
    }
    cmd
}

/// The README of a reproduction: the frame around the experiment's own sections.
fn readme(
    experiment: &Experiment,
    outcome: &Outcome,
    options: &Options,
    out: &Path,
    seconds: f64,
    threads: usize,
) -> String {
    let mut text = format!("# {}: {}\n\n", experiment.name, experiment.about);
    text.push_str(&format!("**Reproduces:** {}.\n\n", experiment.source));
    text.push_str(&format!(
        "**Command:** `{}` (written by mcgrad {} in {:.1} s on {} threads, {}{}).\n\n",
        command(experiment.name, options, out),
        env!("CARGO_PKG_VERSION"),
        seconds,
        threads,
        std::env::consts::ARCH,
        if options.quick {
            "; the quick form, with fewer steps and seeds than the full one"
        } else {
            ""
        }
    ));
    for fig in &outcome.figures {
        text.push_str(&format!("![{}]({}.png)\n\n", fig.title, fig.stem));
    }
    text.push_str("## Setting\n\n");
    text.push_str(outcome.setting.trim_end());
    text.push_str("\n\n## What the paper reports\n\n");
    text.push_str(outcome.paper_reports.trim_end());
    text.push_str("\n\n## What mcgrad measured\n\n");
    text.push_str(outcome.measured.trim_end());
    text.push_str(
        "\n\n### Claims checked on these data\n\n| claim | evidence | holds |\n|---|---|---|\n",
    );
    for c in &outcome.claims {
        let cell = |t: &str| t.replace('|', "\\|");
        text.push_str(&format!(
            "| {} | {} | {} |\n",
            cell(&c.statement),
            cell(&c.evidence),
            if c.holds { "yes" } else { "**no**" }
        ));
    }
    text.push_str("\n## Where mcgrad and the paper differ, and why\n\n");
    text.push_str(outcome.differences.trim_end());
    text.push_str("\n\n## Files\n\n- `data.csv`, `data.json`: the data behind every figure (the JSON adds the configuration and the claims).\n");
    for fig in &outcome.figures {
        text.push_str(&format!(
            "- `{0}.png`, `{0}.svg`: {1}.\n",
            fig.stem, fig.title
        ));
    }
    text
}

/// A number with four significant digits, for READMEs.
pub fn sig(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        format!("{v:.3e}")
    } else {
        let digits = (3 - a.log10().floor() as i32).max(0) as usize;
        format!("{v:.digits$}")
    }
}

/// A CSV field: quoted if it holds a comma or a quote.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        for (i, e) in EXPERIMENTS.iter().enumerate() {
            assert!(EXPERIMENTS[i + 1..].iter().all(|o| o.name != e.name));
            assert_eq!(by_name(e.name).unwrap().name, e.name);
        }
        assert!(matches!(by_name("nope"), Err(Error::Unknown { .. })));
    }

    #[test]
    fn numbers_and_fields_read_well() {
        assert_eq!(sig(0.012345), "0.01235");
        assert_eq!(sig(123.456), "123.5");
        assert_eq!(sig(1.5e-7), "1.500e-7");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("ab"), "ab");
    }
}
