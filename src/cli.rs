//! The command line: raw arguments as clap parses them, their validation into the library's
//! configurations, and the dispatch to each subcommand. `mcgrad` with no subcommand is
//! `mcgrad run`. Adding a subcommand is a variant of [`Command`], its argument struct, and
//! one arm in [`dispatch`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use mcgrad::engine::SweepSpec;
use mcgrad::estimators;
use mcgrad::loss::Loss;
use mcgrad::problem::Problem;
use mcgrad::problems;
use mcgrad::run::{BackendChoice, RunConfig};
use mcgrad::{Error, Result};

/// Benchmark Monte Carlo gradient estimators of a softmax-categorical layer.
#[derive(Debug, Parser)]
#[command(
    name = "mcgrad",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do (default: `run`).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `run`, when no subcommand is named.
    #[command(flatten)]
    pub run: RunArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sweep every estimator over draw counts S and write results and plots (the default).
    Run(RunArgs),
    /// Learn the stochastic layer with each estimator and plot the learning curves.
    Train(mcgrad::train::TrainArgs),
    /// Rerun a baseline's configuration and fail (exit 1) on a quality or speed regression.
    Check(CheckArgs),
    /// List the GPU adapters wgpu finds, and which one each backend choice would take.
    Info,
    /// List the named problems `--problem` takes, with what each is and its source.
    Problems,
}

/// The options of `mcgrad check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Baseline file to compare against (written by `--update`).
    #[arg(long, value_name = "FILE", default_value = "results/baseline.json")]
    pub baseline: PathBuf,
    /// Write a new baseline to FILE instead of checking (reuses FILE's configuration if it
    /// exists, else the default check configuration).
    #[arg(long)]
    pub update: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Seed of the rerun (default: fresh from the clock; the report names it).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Skip the speed comparison.
    #[arg(long)]
    pub no_speed: bool,
    /// CPU worker threads (0: one per core).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub threads: usize,
}

/// The raw options of `mcgrad run`, as typed.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Results folder, created or replaced whole at the end of the run.
    #[arg(long, value_name = "DIR", default_value = "results/latest")]
    pub out: PathBuf,
    /// A named problem (see `mcgrad problems`) or a problem file `{"x": [D], "w": [D rows of
    /// L*K], "variables": L, "t": [L*K], "b": [L], "decoder": {...}, "table": [K^L]}`
    /// (default: `seed`, D = 784, K = 10, x, W, T ~ U[0,1) drawn from --seed).
    #[arg(long, value_name = "NAME|FILE")]
    pub problem: Option<String>,
    /// Exponent p >= 1 of the pnorm loss (default: the problem's, 2 unless it says otherwise).
    #[arg(long, value_name = "P")]
    pub p: Option<f64>,
    /// Seed of every random number.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Losses, comma-separated: squared, seed, linear, pnorm, decoder, table (default: the
    /// named problem's; for a file, every loss whose fields it holds).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub loss: Vec<String>,
    /// Estimators, comma-separated (default: all).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub estimators: Vec<String>,
    /// Draw counts S per estimate, comma-separated (default: 1,2,4,...,4096).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub samples: Vec<u32>,
    /// Repetitions R per (loss, estimator, S); at least 2.
    #[arg(long, value_name = "R", default_value_t = 1000)]
    pub reps: u32,
    /// Gumbel-softmax temperature.
    #[arg(long, value_name = "T", default_value_t = 1.0)]
    pub tau: f64,
    /// Engine.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// GPU adapter whose name contains NAME (see `mcgrad info`); GPU engine only.
    #[arg(long, value_name = "NAME")]
    pub adapter: Option<String>,
    /// CPU worker threads (0: one per core).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub threads: usize,
    /// No progress bar and no notes on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Conditional Gumbel draws per hard draw of `gumbel-rao` (M).
    #[arg(long, value_name = "M", default_value_t = 10)]
    pub gr_samples: u32,
    /// REBAR's control-variate scale eta (default: tuned in the warm-up).
    #[arg(long, value_name = "ETA")]
    pub rebar_eta: Option<f64>,
    /// REBAR's relaxation temperature (default: tuned in the warm-up, from --tau).
    #[arg(long, value_name = "T")]
    pub rebar_tau: Option<f64>,
    /// Warm-up steps per (loss, estimator, S) that tune REBAR's eta and tau and train RELAX's
    /// control variate before the measured repetitions (reported, not counted; 0: none).
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub warmup: u32,
}

/// The default draw counts: powers of 2 from 1 to 4096.
pub fn default_samples() -> Vec<u32> {
    (0..=12).map(|e| 1u32 << e).collect()
}

/// Keeps the first occurrence of each item.
fn dedup<T: PartialEq + Clone>(items: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for item in items {
        if !out.contains(item) {
            out.push(item.clone());
        }
    }
    out
}

impl RunArgs {
    /// Validates the options into a run configuration; reads the problem file.
    ///
    /// # Errors
    /// [`Error::Unknown`] for an unknown loss or estimator; the problem file's read and format
    /// errors; [`Error::InvalidArgument`] for S = 0, R < 2 or a non-positive tau.
    pub fn into_config(self) -> Result<RunConfig> {
        let (mut problem, default_losses) = load_problem(self.problem.as_deref(), self.seed)?;
        if let Some(p) = self.p {
            problem.exponent = p;
        }
        let losses = if self.loss.is_empty() {
            default_losses
        } else {
            dedup(&self.loss)
                .iter()
                .map(|l| Loss::parse(l.trim()))
                .collect::<Result<Vec<_>>>()?
        };
        for &loss in &losses {
            problem.check_loss(loss)?;
        }
        let estimators = if self.estimators.is_empty() {
            // Every estimator defined on this problem under every chosen loss.
            let contexts: Vec<_> = losses
                .iter()
                .map(|&l| mcgrad::estimators::Context::new(&problem, l, self.tau.max(1e-300)))
                .collect();
            estimators::REGISTRY
                .iter()
                .copied()
                .filter(|e| contexts.iter().all(|c| e.check(c).is_ok()))
                .collect()
        } else {
            dedup(&self.estimators)
                .iter()
                .map(|e| estimators::by_id(e.trim()))
                .collect::<Result<Vec<_>>>()?
        };
        let samples = if self.samples.is_empty() {
            default_samples()
        } else {
            dedup(&self.samples)
        };
        if samples.contains(&0) {
            return Err(Error::InvalidArgument(
                "--samples: S = 0 draws cannot estimate anything".into(),
            ));
        }
        let spec = SweepSpec {
            problem,
            losses,
            estimators,
            samples,
            reps: self.reps,
            seed: self.seed,
            tau: self.tau,
            settings: estimators::Settings {
                gr_samples: self.gr_samples,
                rebar_eta: self.rebar_eta,
                rebar_tau: self.rebar_tau,
                warmup: self.warmup,
                ..Default::default()
            },
        };
        if self.gr_samples == 0 {
            return Err(Error::InvalidArgument(
                "--gr-samples must be at least 1".into(),
            ));
        }
        if let Some(t) = self.rebar_tau.filter(|t| !(t.is_finite() && *t > 0.0)) {
            return Err(Error::InvalidArgument(format!(
                "--rebar-tau must be positive (got {t})"
            )));
        }
        if let Some(e) = self.rebar_eta.filter(|e| !e.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "--rebar-eta must be a finite number (got {e})"
            )));
        }
        spec.validate()?;
        Ok(RunConfig {
            out: self.out,
            spec,
            backend: self.backend,
            adapter: self.adapter,
            threads: self.threads,
            quiet: self.quiet,
        })
    }
}

/// The problem `--problem` names (a built-in name, else a file) with its default losses.
///
/// # Errors
/// The problem file's read and format errors.
pub fn load_problem(arg: Option<&str>, seed: u64) -> Result<(Problem, Vec<Loss>)> {
    let named = match arg {
        None => Some(problems::by_name("seed")?),
        Some(name) => problems::NAMED.iter().find(|p| p.name == name),
    };
    if let Some(named) = named {
        return Ok(((named.build)(seed), named.default_losses.to_vec()));
    }
    let path = std::path::Path::new(arg.unwrap_or_default());
    if !path.exists() && !arg.unwrap_or_default().contains(['/', '.']) {
        // Neither a file nor a name: say both.
        return Err(problems::by_name(arg.unwrap_or_default())
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

fn list_problems() {
    for p in problems::NAMED {
        println!("{:<16} {}", p.name, p.about);
        println!("{:<16} source: {}", "", p.source);
    }
}

/// Runs the parsed command line.
///
/// # Errors
/// Whatever the subcommand returns; [`Error::exit_code`] says how the process should exit.
pub fn dispatch(cli: Cli) -> Result<()> {
    match cli.command.unwrap_or(Command::Run(cli.run)) {
        Command::Run(args) => run(args),
        Command::Train(args) => mcgrad::train::run_train(&args),
        Command::Check(args) => check(args),
        Command::Info => {
            info();
            Ok(())
        }
        Command::Problems => {
            list_problems();
            Ok(())
        }
    }
}

fn info() {
    let adapters = mcgrad::gpu::adapter_list();
    println!(
        "mcgrad {}: {} GPU adapter(s)",
        env!("CARGO_PKG_VERSION"),
        adapters.len()
    );
    for a in &adapters {
        println!(
            "  {} [{} {}{}] driver: {}",
            a.name,
            a.backend,
            a.device_type,
            if a.hardware {
                ", hardware"
            } else {
                ", software"
            },
            a.driver
        );
    }
    let hardware = adapters.iter().any(|a| a.hardware);
    println!(
        "--backend auto uses {}; --backend gpu uses {}; CPU engine: {} threads",
        if hardware {
            "the hardware GPU"
        } else {
            "the CPU engine (no hardware GPU)"
        },
        adapters
            .first()
            .map_or("nothing (no adapter)", |a| a.name.as_str()),
        rayon::current_num_threads()
    );
}

fn check(args: CheckArgs) -> Result<()> {
    use mcgrad::check::{default_spec, run_check, Baseline, CheckOptions};
    let mut options = CheckOptions {
        threads: args.threads,
        speed: !args.no_speed,
        ..CheckOptions::default()
    };
    if let Some(seed) = args.seed {
        options.seed = seed;
    }
    if args.update {
        let spec = if args.baseline.exists() {
            Baseline::load(&args.baseline)?.spec(options.seed)?
        } else {
            default_spec(options.seed)
        };
        let baseline = Baseline::measure(&spec, &options)?;
        baseline.save(&args.baseline)?;
        println!(
            "wrote baseline {} ({} quality figures, {} speed paths, seed {})",
            args.baseline.display(),
            baseline.quality.len(),
            baseline.speed.len(),
            baseline.seed
        );
        return Ok(());
    }
    let baseline = Baseline::load(&args.baseline)?;
    let report = run_check(&baseline, &options)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?
        );
    } else {
        print!("{}", report.table());
    }
    if report.regressed() {
        return Err(Error::Regression(format!(
            "{} comparison(s) regressed against {}",
            report.findings.iter().filter(|f| f.regressed).count(),
            args.baseline.display()
        )));
    }
    Ok(())
}

fn run(args: RunArgs) -> Result<()> {
    let config = args.into_config()?;
    let outcome = mcgrad::run::execute(&config)?;
    let summary = &outcome.summary;
    println!(
        "mcgrad {}: {} engine ({}, {} threads), {} x {} problem, R = {}, largest S per estimator:",
        summary.mcgrad_version,
        summary.backend.engine,
        summary.backend.adapter,
        summary.backend.threads,
        summary.config.problem.d,
        summary.config.problem.k,
        summary.config.reps
    );
    println!("(bias and variance of the W-gradient estimate, ± one standard error; all S in summary.csv)\n");
    print!("{}", summary.table());
    println!(
        "\nswept {:.3e} draws in {:.2} s; wrote {} files to {}",
        summary.timing.draws_per_second * summary.timing.sweep_seconds,
        summary.timing.sweep_seconds,
        outcome.files.len(),
        config.out.display()
    );
    Ok(())
}
