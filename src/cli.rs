//! The command line: raw arguments as clap parses them, their validation into the library's
//! configurations, and the dispatch to each subcommand. `mcgrad` with no subcommand is
//! `mcgrad run`. Adding a subcommand is a variant of [`Command`], its argument struct, and
//! one arm in [`dispatch`].

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use mcgrad::backend::Backend;
use mcgrad::engine::SweepSpec;
use mcgrad::error::print_stdout;
use mcgrad::estimators;
use mcgrad::loss::Loss;
use mcgrad::problem::Problem;
use mcgrad::problems;
use mcgrad::run::RunConfig;
use mcgrad::train::TrainOptions;
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
    /// Learn the stochastic layer with each estimator and plot the learning curves; with
    /// --problem, optimise E f(z) of any problem with each estimator.
    Train(TrainArgs),
    /// Rerun a baseline's configuration and fail (exit 1) on a quality or speed regression.
    Check(CheckArgs),
    /// List the GPU adapters wgpu finds, and which one each backend choice would take.
    Info,
    /// List the named problems `--problem` takes, with what each is and its source.
    Problems,
    /// Regenerate a published experiment (figures, data, README) into results/papers/NAME.
    Reproduce(ReproduceArgs),
}

/// The options of `mcgrad reproduce`.
#[derive(Debug, Args)]
pub struct ReproduceArgs {
    /// The experiment (see --list).
    #[arg(value_name = "NAME", required_unless_present_any = ["list", "all"], conflicts_with_all = ["list", "all"])]
    pub name: Option<String>,
    /// List the experiments, with what each is and its source.
    #[arg(long)]
    pub list: bool,
    /// Every experiment, each into its own folder under --out (default results/papers).
    #[arg(long)]
    pub all: bool,
    /// The quick form: fewer steps, seeds and repetitions (what CI runs, under 30 s each).
    #[arg(long)]
    pub quick: bool,
    /// Output folder [default: results/papers/NAME; with --all, the folder that holds one
    /// folder per experiment, results/papers].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// CPU worker threads (0: one per core); results do not depend on it.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub threads: usize,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// The raw options of `mcgrad train`, as typed.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Optimise E f(z) over W of this problem instead of training the digits classifier: a
    /// named problem (see `mcgrad problems`) or a problem file (as `mcgrad run --problem`).
    /// Every estimator starts from the problem's W and reads the same draws.
    #[arg(long, value_name = "NAME|FILE")]
    pub problem: Option<String>,
    /// Estimators to train with, comma-separated, or `all` (those that can run with --samples).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub estimators: Vec<String>,
    /// Optimiser steps of each estimator's reported run.
    #[arg(long, default_value_t = 3000)]
    pub steps: u32,
    /// Inputs per minibatch, B.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Draws per input per step, S (each costs one loss evaluation).
    #[arg(long, default_value_t = 2)]
    pub samples: u32,
    /// One learning rate for every estimator (skips tuning) [with --problem, default: 0.01,
    /// or 0.1 for sgd].
    #[arg(long, conflicts_with = "lr_grid")]
    pub lr: Option<f64>,
    /// Learning rates to tune each estimator over, comma-separated
    /// [default: 0.0003,0.001,0.003,0.01,0.03,0.1 for adam and rmsprop; 0.03,0.1,0.3,1,3,10
    /// for sgd].
    #[arg(long, value_delimiter = ',')]
    pub lr_grid: Option<Vec<f64>>,
    /// Steps of each tuning run [default: a third of --steps].
    #[arg(long)]
    pub tune_steps: Option<u32>,
    /// Optimiser: sgd, adam or rmsprop.
    #[arg(
        long,
        alias = "optimiser",
        value_name = "sgd|adam|rmsprop",
        default_value = "adam"
    )]
    pub optimizer: String,
    /// Loss of a draw [default: squared; with --problem, the problem's]. Digits: `squared`
    /// (against the one-hot class) or `linear` (cost 1 for a wrong class).
    #[arg(long)]
    pub loss: Option<String>,
    /// Gumbel-softmax temperature, at least 1e-3 (`mcgrad::engine::MIN_TAU`).
    #[arg(long, default_value_t = 1.0)]
    pub tau: f64,
    /// Seed of the built-in data, the minibatch order and every draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder (replaced at the end if it holds an earlier `mcgrad train` output).
    #[arg(long, default_value = "results/train-latest")]
    pub out: PathBuf,
    /// Where the batched forward pass (X W, B x 784 x 10) and the S draws per input of every
    /// step run: auto (a hardware GPU if present, else the CPU), cpu, or gpu (any adapter,
    /// software ones too). The estimators' arithmetic on the draws, the W gradient and the
    /// optimiser always run on the CPU.
    #[arg(long, value_name = "auto|cpu|gpu", default_value = "auto")]
    pub backend: String,
    /// GPU adapter to prefer, by name (case-insensitive substring; `mcgrad info` lists them).
    #[arg(long)]
    pub adapter: Option<String>,
    /// Folder with MNIST's IDX files (gzip or not) instead of the built-in digits.
    #[arg(long)]
    pub mnist: Option<PathBuf>,
    /// Training images [default: 10000 built-in; all of MNIST's less 5000 for validation].
    #[arg(long)]
    pub train_size: Option<usize>,
    /// Validation and test images each [default: 2000 built-in; MNIST's 10000 test images].
    #[arg(long)]
    pub test_size: Option<usize>,
    /// Evaluate (held-out loss, accuracy, gradient variance) every N steps.
    #[arg(long, default_value_t = 50)]
    pub eval_every: u32,
    /// Monte Carlo repetitions of the gradient-variance probe for the relaxed estimators.
    #[arg(long, default_value_t = 32)]
    pub variance_reps: u32,
    /// No progress bar on stderr (the results table still goes to stdout).
    #[arg(long)]
    pub quiet: bool,
    /// With --problem: exponent p >= 1 of the pnorm loss [default: the problem's].
    #[arg(long, value_name = "P")]
    pub p: Option<f64>,
    /// With --problem: probabilities to record, VARIABLE:CATEGORY, comma-separated
    /// [default: the last category of the first four variables].
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub track: Vec<String>,
    /// With --problem: the trajectory along which every estimator's gradient variance is
    /// measured at the same W: exact, an estimator id, none, or auto (exact where the problem
    /// has an exact gradient).
    #[arg(long, value_name = "exact|ID|none|auto")]
    pub shared: Option<String>,
    /// With --problem: raise E f(z) instead of lowering it.
    #[arg(long)]
    pub maximise: bool,
    /// With --problem: steps of each warm-up that tunes REBAR's eta and tau and trains
    /// RELAX's control variate (counted in time and loss evaluations) [default: 200].
    #[arg(long, value_name = "N")]
    pub warmup: Option<u32>,
    /// With --problem: warm up again every N steps [default: 0, only at the start].
    #[arg(long, value_name = "N")]
    pub rewarm_every: Option<u32>,
    /// With --problem: categories that `sum-and-sample` sums exactly [default: 1].
    #[arg(long, value_name = "K")]
    pub rb_k: Option<usize>,
    /// With --problem: conditional Gumbel draws per hard draw of `gumbel-rao` [default: 10].
    #[arg(long, value_name = "M")]
    pub gr_samples: Option<u32>,
    /// With --problem: REBAR's eta [default: tuned in the warm-up].
    #[arg(long, value_name = "ETA")]
    pub rebar_eta: Option<f64>,
    /// With --problem: REBAR's temperature [default: tuned in the warm-up, from --tau].
    #[arg(long, value_name = "T")]
    pub rebar_tau: Option<f64>,
}

impl TrainArgs {
    /// The options of `mcgrad train --problem` as the library takes them.
    ///
    /// # Errors
    /// [`Error::Unknown`] for an unknown optimiser; [`Error::InvalidArgument`] for an option
    /// of the digits classifier, which a problem has no use for.
    pub fn into_problem_options(self) -> Result<mcgrad::optimise::ProblemTrainOptions> {
        let digits_only = [
            ("--lr-grid", self.lr_grid.is_some()),
            ("--tune-steps", self.tune_steps.is_some()),
            ("--adapter", self.adapter.is_some()),
            ("--mnist", self.mnist.is_some()),
            ("--train-size", self.train_size.is_some()),
            ("--test-size", self.test_size.is_some()),
            ("--backend gpu", self.backend == "gpu"),
        ];
        if let Some((name, _)) = digits_only.iter().find(|(_, given)| *given) {
            return Err(Error::InvalidArgument(format!(
                "{name} is an option of the digits classifier; --problem runs on the CPU with one learning rate (--lr)"
            )));
        }
        let defaults = mcgrad::estimators::Settings::default();
        if self.gr_samples == Some(0) {
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
        // The settings a flag names; the others keep their defaults.
        let mut settings = defaults.clone();
        settings.gr_samples = self.gr_samples.unwrap_or(defaults.gr_samples);
        settings.rb_k = self.rb_k.unwrap_or(defaults.rb_k);
        settings.rebar_eta = self.rebar_eta;
        settings.rebar_tau = self.rebar_tau;
        settings.warmup = self.warmup.unwrap_or(defaults.warmup);
        Ok(mcgrad::optimise::ProblemTrainOptions {
            problem: self.problem.unwrap_or_default(),
            p: self.p,
            loss: self.loss,
            estimators: self.estimators,
            optimiser: self.optimizer.parse()?,
            lr: self.lr,
            steps: self.steps,
            samples: self.samples,
            eval_every: self.eval_every,
            variance_reps: self.variance_reps,
            track: self.track,
            shared: self.shared.unwrap_or_else(|| "auto".into()),
            maximise: self.maximise,
            seed: self.seed,
            tau: self.tau,
            settings,
            rewarm_every: self.rewarm_every.unwrap_or(0),
            out: self.out,
            quiet: self.quiet,
        })
    }

    /// The options as the library takes them; `--backend` and `--optimizer` are parsed here,
    /// the rest is checked by [`mcgrad::train::plan`].
    ///
    /// # Errors
    /// [`Error::Unknown`] for an unknown backend or optimiser.
    pub fn into_options(self) -> Result<TrainOptions> {
        let problem_only = [
            ("--p", self.p.is_some()),
            ("--track", !self.track.is_empty()),
            ("--shared", self.shared.is_some()),
            ("--maximise", self.maximise),
            ("--warmup", self.warmup.is_some()),
            ("--rewarm-every", self.rewarm_every.is_some()),
            ("--rb-k", self.rb_k.is_some()),
            ("--gr-samples", self.gr_samples.is_some()),
            ("--rebar-eta", self.rebar_eta.is_some()),
            ("--rebar-tau", self.rebar_tau.is_some()),
        ];
        if let Some((name, _)) = problem_only.iter().find(|(_, given)| *given) {
            return Err(Error::InvalidArgument(format!(
                "{name} needs --problem (the digits classifier has no use for it)"
            )));
        }
        Ok(TrainOptions {
            backend: self.backend.parse()?,
            optimizer: self.optimizer.parse()?,
            estimators: self.estimators,
            steps: self.steps,
            batch: self.batch,
            samples: self.samples,
            lr: self.lr,
            lr_grid: self.lr_grid,
            tune_steps: self.tune_steps,
            loss: self.loss.unwrap_or_else(|| "squared".into()),
            tau: self.tau,
            seed: self.seed,
            out: self.out,
            adapter: self.adapter,
            mnist: self.mnist,
            train_size: self.train_size,
            test_size: self.test_size,
            eval_every: self.eval_every,
            variance_reps: self.variance_reps,
            quiet: self.quiet,
        })
    }
}

/// The options of `mcgrad check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Baseline file to compare against (written by `--update`).
    #[arg(long, value_name = "FILE", default_value = "results/baseline.json")]
    pub baseline: PathBuf,
    /// Write a new baseline to FILE instead of checking (reuses FILE's configuration if it
    /// exists, else the default check configuration). Speed is measured on this CPU's
    /// instruction tier (`mcgrad info` names it); FILE's figures for other tiers are kept.
    #[arg(long)]
    pub update: bool,
    /// With --update: write the default check configuration even where FILE has another
    /// (FILE's speed figures for other tiers are still kept).
    #[arg(long, requires = "update")]
    pub default_config: bool,
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
    /// Results folder, created or replaced whole at the end of the run (only an earlier
    /// mcgrad output, whose `.mcgrad-output` marker lists everything in it, is replaced).
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
    /// Losses, comma-separated (the known ones are listed by `loss_help`).
    #[arg(long, value_name = "LIST", value_delimiter = ',', help = loss_help())]
    pub loss: Vec<String>,
    /// Estimators, comma-separated (the known ones are listed by `estimators_help`).
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        help = estimators_help()
    )]
    pub estimators: Vec<String>,
    /// Draw counts S per estimate, comma-separated (default: 1,2,4,...,4096).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub samples: Vec<u32>,
    /// Repetitions R per (loss, estimator, S); at least 2.
    #[arg(long, value_name = "R", default_value_t = 1000)]
    pub reps: u32,
    /// Gumbel-softmax temperature, at least 1e-3 (`mcgrad::engine::MIN_TAU`: below it the
    /// f32 Gumbel kernels would leave f32's range).
    #[arg(long, value_name = "T", default_value_t = 1.0)]
    pub tau: f64,
    /// Engine: auto (a hardware GPU if there is one and K <= 16, else the CPU engine), cpu,
    /// or gpu (any adapter, software ones too).
    #[arg(long, value_name = "auto|cpu|gpu", default_value = "auto")]
    pub backend: String,
    /// GPU adapter whose name contains NAME (see `mcgrad info`); GPU engine only.
    #[arg(long, value_name = "NAME")]
    pub adapter: Option<String>,
    /// CPU worker threads (0: one per core).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub threads: usize,
    /// No progress bar and no notes on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Categories per variable that `sum-and-sample` sums exactly (the k most probable).
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub rb_k: usize,
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
    /// Warm-up repetitions per (loss, estimator, S) that set the moving-average baselines
    /// (reinforce-ema, muprop-c) before the measured repetitions (not measured; 0: start at 0).
    #[arg(long, value_name = "N", default_value_t = mcgrad::estimators::DEFAULT_BASELINE_WARMUP)]
    pub baseline_warmup: u32,
}

/// The most `--baseline-warmup` repetitions (each as costly as a measured one).
const MAX_BASELINE_WARMUP: u32 = 100_000;

/// The help of `--loss`, from [`Loss::ALL`] (so a new loss shows up without editing it).
fn loss_help() -> String {
    let names: Vec<&str> = Loss::ALL.iter().map(|l| l.name()).collect();
    format!(
        "Losses, comma-separated: {} (default: the named problem's; for a file, every loss whose fields it holds)",
        names.join(", ")
    )
}

/// The help of `--estimators`, from [`estimators::REGISTRY`].
fn estimators_help() -> String {
    let ids: Vec<&str> = estimators::REGISTRY.iter().map(|e| e.id()).collect();
    format!(
        "Estimators, comma-separated: {} (default: every one defined on the problem)",
        ids.join(", ")
    )
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
    /// [`Error::Unknown`] for an unknown backend, loss or estimator; the problem file's read
    /// and format errors; [`Error::InvalidArgument`] for S = 0, R < 2 or a non-positive tau.
    pub fn into_config(self) -> Result<RunConfig> {
        let backend: Backend = self.backend.parse()?;
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
            settings: mcgrad::estimators::Settings {
                rb_k: self.rb_k,
                gr_samples: self.gr_samples,
                rebar_eta: self.rebar_eta,
                rebar_tau: self.rebar_tau,
                warmup: self.warmup,
                baseline_warmup: self.baseline_warmup,
            },
        };
        if self.gr_samples == 0 {
            return Err(Error::InvalidArgument(
                "--gr-samples must be at least 1".into(),
            ));
        }
        if self.baseline_warmup > MAX_BASELINE_WARMUP {
            return Err(Error::InvalidArgument(format!(
                "--baseline-warmup must be at most {MAX_BASELINE_WARMUP} (got {}): the average forgets its start within about 100",
                self.baseline_warmup
            )));
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
            backend,
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

fn list_problems() -> Result<()> {
    let mut text = String::new();
    for p in problems::NAMED {
        text.push_str(&format!(
            "{:<16} {}\n{:<16} source: {}\n",
            p.name, p.about, "", p.source
        ));
    }
    print_stdout(&text)
}

/// Runs the parsed command line.
///
/// # Errors
/// Whatever the subcommand returns; [`Error::exit_code`] says how the process should exit.
pub fn dispatch(cli: Cli) -> Result<()> {
    mcgrad::fastmath::simd_cap_from_env().map_err(Error::InvalidArgument)?;
    match cli.command.unwrap_or(Command::Run(cli.run)) {
        Command::Run(args) => run(args),
        Command::Train(args) if args.problem.is_some() => {
            mcgrad::optimise::run_problem_train(&args.into_problem_options()?)
        }
        Command::Train(args) => mcgrad::train::run_train(&args.into_options()?),
        Command::Check(args) => check(args),
        Command::Info => info(),
        Command::Problems => list_problems(),
        Command::Reproduce(args) => reproduce(args),
    }
}

fn reproduce(args: ReproduceArgs) -> Result<()> {
    use mcgrad::reproduce::{self, EXPERIMENTS};
    if args.list {
        let mut text = String::new();
        for e in EXPERIMENTS {
            let _ = writeln!(
                text,
                "{:<20} {}\n{:<20} source: {}",
                e.name, e.about, "", e.source
            );
        }
        return print_stdout(&text);
    }
    let jobs: Vec<_> = if args.all {
        let root = args.out.unwrap_or_else(|| PathBuf::from("results/papers"));
        EXPERIMENTS.iter().map(|e| (e, root.join(e.name))).collect()
    } else {
        let name = args.name.unwrap_or_default();
        let e = reproduce::by_name(&name)?;
        vec![(e, args.out.unwrap_or_else(|| reproduce::default_out(&name)))]
    };
    let options = reproduce::Options {
        quick: args.quick,
        threads: args.threads,
    };
    let quiet = args.quiet;
    let written = reproduce::reproduce(&jobs, &options, &|line| {
        if !quiet {
            eprintln!("{line}");
        }
    })?;
    let mut text = String::new();
    for w in &written {
        let held = w.claims.iter().filter(|c| c.holds).count();
        let _ = writeln!(
            text,
            "{}: wrote {} files to {} in {:.1} s; {} of {} claims hold",
            w.name,
            w.files.len(),
            w.out.display(),
            w.seconds,
            held,
            w.claims.len()
        );
        for c in w.claims.iter().filter(|c| !c.holds) {
            let _ = writeln!(text, "  does not hold: {} ({})", c.statement, c.evidence);
        }
    }
    print_stdout(&text)
}

fn info() -> Result<()> {
    let adapters = mcgrad::gpu::adapter_list();
    let mut text = format!(
        "mcgrad {}: {} GPU adapter(s)\n",
        env!("CARGO_PKG_VERSION"),
        adapters.len()
    );
    for a in &adapters {
        let _ = writeln!(
            text,
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
    let _ = writeln!(
        text,
        "--backend auto uses {}; --backend gpu uses {}; CPU engine: {} threads, {} loops",
        if hardware {
            "the hardware GPU"
        } else {
            "the CPU engine (no hardware GPU)"
        },
        adapters
            .first()
            .map_or("nothing (no adapter)", |a| a.name.as_str()),
        rayon::current_num_threads(),
        mcgrad::fastmath::simd_tier().name()
    );
    print_stdout(&text)
}

fn check(args: CheckArgs) -> Result<()> {
    use mcgrad::check::{default_plan, run_check, Baseline, CheckOptions};
    let mut options = CheckOptions {
        threads: args.threads,
        speed: !args.no_speed,
        ..CheckOptions::default()
    };
    if let Some(seed) = args.seed {
        options.seed = seed;
    }
    if args.update {
        let previous = if args.baseline.exists() {
            Some(Baseline::load(&args.baseline)?)
        } else {
            None
        };
        let plan = match &previous {
            Some(p) if !args.default_config => p.plan(options.seed)?,
            _ => default_plan(options.seed),
        };
        let mut baseline = Baseline::measure(&plan, &options)?;
        let tier = mcgrad::fastmath::simd_tier().name();
        if let Some(p) = &previous {
            baseline.keep_other_tiers(p);
        }
        baseline.save(&args.baseline)?;
        return print_stdout(&format!(
            "wrote baseline {} ({} quality figures, {} speed figures of which {} measured on the {} tier, seed {})\n",
            args.baseline.display(),
            baseline.quality.len(),
            baseline.speed.len(),
            baseline.speed.iter().filter(|f| f.tier == tier).count(),
            tier,
            baseline.seed
        ));
    }
    let baseline = Baseline::load(&args.baseline)?;
    let report = run_check(&baseline, &options)?;
    if args.json {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::Internal(format!("cannot serialise the report: {e}")))?;
        print_stdout(&(json + "\n"))?;
    } else {
        print_stdout(&report.table())?;
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

/// `D = 784, K = 10` or `D = 1, L = 6 variables of K = 10`.
fn shape(dims: &mcgrad::summary::ProblemDims) -> String {
    if dims.variables == 1 {
        format!("D = {}, K = {}", dims.d, dims.k)
    } else {
        format!(
            "D = {}, L = {} variables of K = {}",
            dims.d, dims.variables, dims.k
        )
    }
}

fn run(args: RunArgs) -> Result<()> {
    let config = args.into_config()?;
    let outcome = mcgrad::run::execute(&config)?;
    let summary = &outcome.summary;
    let backend = &summary.backend;
    let threads = if backend.engine == "gpu" {
        format!("CPU fallback on {} threads", backend.threads)
    } else {
        format!("{} threads", backend.threads)
    };
    let mut text = format!(
        "mcgrad {}: {} engine ({}, {}), {}, R = {}, largest S per estimator:\n",
        summary.mcgrad_version,
        backend.engine,
        backend.adapter,
        threads,
        shape(&summary.config.problem),
        summary.config.reps
    );
    text.push_str("(bias and variance of the W-gradient estimate, ± one standard error; all S in summary.csv)\n\n");
    text.push_str(&summary.table());
    let _ = writeln!(
        text,
        "\nswept {:.3e} draws in {:.2} s; wrote {} files to {}",
        summary.timing.draws_per_second * summary.timing.sweep_seconds,
        summary.timing.sweep_seconds,
        outcome.files.len(),
        config.out.display()
    );
    print_stdout(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command line's defaults are the library's: `mcgrad train` with no options is
    /// `TrainOptions::default()`.
    #[test]
    fn train_defaults_are_the_library_defaults() {
        let cli = Cli::try_parse_from(["mcgrad", "train"]).unwrap();
        let Some(Command::Train(args)) = cli.command else {
            panic!("not the train subcommand");
        };
        assert_eq!(args.into_options().unwrap(), TrainOptions::default());
    }
}
