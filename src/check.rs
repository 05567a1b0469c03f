//! The regression check for CI: `mcgrad check --baseline FILE` reruns a baseline's sweeps
//! with a fresh seed and asks two kinds of question.
//!
//! **Quality**, for every (sweep, loss, estimator, S), two tests:
//! - *MSE changed?* Two-sided z-test of the mean squared error `E||G_hat - G||^2` (W space):
//!   the reference is the exact total variance where a closed form exists and the estimator is
//!   unbiased (no noise on that side), else the baseline's Monte Carlo MSE with its standard
//!   error. Catches a larger variance and a new bias alike, and a biased estimator whose
//!   error moved either way.
//! - *mean moved?* For estimators unbiased by construction, the mean against the exact
//!   gradient with standard errors from the *exact* variance of the S-draw average
//!   (`sqrt(Var / R)`; where no closed form exists, the sample variance floored by the
//!   estimator's reference variance); for biased estimators, the mean against the
//!   baseline's mean. Per coordinate, the largest `|z|` with a Bonferroni p-value over the
//!   coordinates.
//!
//! The default configuration has three sweeps on one problem: `main` (every estimator that
//! does not tune itself, S = 1 .. 256, R = 2000, tau = 1); `tau=0.5` (the estimators whose
//! figures depend on the temperature, at a second one, so that a lost `1/tau` shows);
//! and `mean` (the unbiased estimators with a counts lowering at S = 4096, R = 4000, where a
//! draw costs a few nanoseconds, so that a 1% scale error in REINFORCE shows: see
//! [`scale_error_power`]).
//!
//! All quality tests share a family-wise significance level (default 0.001) split evenly
//! among them (Bonferroni over the `2 x cells` tests, and over the coordinates within a mean
//! test), so unchanged code trips the check in about one run in a thousand or fewer.
//!
//! **Speed**, for each hot path: its best draws per second over several repetitions divided
//! by the best throughput of a fixed calibration workload timed in the same process,
//! interleaved with it. A shared, noisy machine slows both alike, and a neighbour's burst
//! slows some repetitions but rarely all of them, so the best of each is the machine's
//! uncontended pace (the median of per-repetition ratios that earlier versions took tripped
//! the check on unchanged code when a burst covered half the repetitions of a few
//! milliseconds each); the check fails when a path's ratio falls below the baseline's
//! divided by the slowdown limit (default 1.5). The hot loops run on the widest instruction
//! tier the CPU has ([`crate::fastmath::SimdTier`]: AVX-512, AVX2 or portable; the same bits
//! on each), and a tier's pace relative to the calibration is its own (the relaxed pass is
//! 1.6 times slower relative to it on an AVX2-only Zen 3 than on a Zen 4 with AVX-512), so a
//! baseline keeps one figure per (path, tier) and a check compares only the figures of the
//! tier it runs on; `--update` writes that tier's figures and keeps the other tiers'.
//!
//! A baseline is refused (bad input, exit 2) unless it covers its configuration exactly: one
//! quality record per cell its sweeps run, no duplicates, no strays; `alpha` in (0, 1), a
//! positive slowdown limit, positive speed figures for known paths.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::engine::{run_sweep, CpuEngine, Engine, SweepSpec};
use crate::error::{Error, Result};
use crate::estimators::{self, Context, Estimator, Family, Lowering};
use crate::fastmath::{simd_tier, SimdTier};
use crate::loss::Loss;
use crate::philox::{self, philox4x32_10};
use crate::problem::Problem;
use crate::record::{erfc, normal_two_sided, records, Record};
use crate::summary::SweepConfig;

/// Version tag of the baseline file format.
pub const SCHEMA: &str = "mcgrad-baseline/3";

/// The second temperature of the default configuration's `tau=0.5` sweep.
pub const SECOND_TAU: f64 = 0.5;

/// Draws S of the default configuration's `mean` sweep.
pub const MEAN_SAMPLES: u32 = 4096;

/// Repetitions R of the default configuration's `mean` sweep.
pub const MEAN_REPS: u32 = 4000;

/// A baseline: the sweeps to rerun, their quality figures and the speed ratios.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// The mcgrad version that wrote it.
    pub mcgrad_version: String,
    /// Seed the baseline's figures were made with.
    pub seed: u64,
    /// The sweeps to rerun, each with its name, on [`Baseline::problem`].
    pub sweeps: Vec<NamedSweep>,
    /// The problem, in the problem-file format.
    pub problem: serde_json::Value,
    /// Family-wise significance level of the quality tests, in (0, 1).
    pub alpha: f64,
    /// A path fails when its speed ratio falls below the baseline's divided by this (> 0).
    pub slowdown_limit: f64,
    /// Quality figures per (sweep, loss, estimator, S): exactly one per cell of the sweeps.
    pub quality: Vec<QualityFigure>,
    /// Speed ratios per (hot path, instruction tier) (empty: no speed comparison).
    pub speed: Vec<SpeedFigure>,
}

/// One sweep of a baseline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedSweep {
    /// Its name (`main`, `tau=0.5`, `mean`), which prefixes its findings.
    pub name: String,
    /// What it runs.
    pub config: SweepConfig,
}

/// The quality figures of one (sweep, loss, estimator, S).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QualityFigure {
    /// The sweep's name.
    pub sweep: String,
    /// Loss name.
    pub loss: String,
    /// Estimator id.
    pub estimator: String,
    /// Draws S.
    pub samples: u32,
    /// Monte Carlo MSE in W space.
    pub mse_w: f64,
    /// Its standard error.
    pub mse_w_se: f64,
    /// Exact total variance in W space, where a closed form exists.
    pub exact_total_var_w: Option<f64>,
    /// Whether the estimator is unbiased by construction.
    pub unbiased: bool,
    /// Monte Carlo mean of the S-draw estimate (logit space).
    pub mean: Vec<f64>,
    /// Standard error of `mean`, as the mean test computes it.
    pub mean_se: Vec<f64>,
}

/// The speed of one hot path relative to the calibration workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpeedFigure {
    /// Path name (`cpu/score-function`, `cpu/relaxed`).
    pub path: String,
    /// The instruction tier the hot loops ran on ([`SimdTier::name`]: `avx512`, `avx2`,
    /// `portable`).
    pub tier: String,
    /// Best draws per second of the repetitions.
    pub draws_per_second: f64,
    /// (Best path draws per second) / (best calibration units per second).
    pub ratio: f64,
}

/// One line of a check's verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// `variance`, `mean` or `speed`.
    pub kind: String,
    /// What was compared (`main:squared/reinforce/S=16`, `cpu/relaxed`).
    pub subject: String,
    /// The reference figure (exact or baseline).
    pub reference: f64,
    /// Where the reference comes from (`exact`, `baseline`).
    pub reference_source: String,
    /// The figure now.
    pub now: f64,
    /// The test statistic (z for variance, p-value for mean, slowdown factor for speed).
    pub statistic: f64,
    /// The threshold the statistic is compared with.
    pub threshold: f64,
    /// Whether this comparison regressed.
    pub regressed: bool,
}

/// The outcome of a check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Seed of the rerun.
    pub seed: u64,
    /// Number of quality comparisons (the Bonferroni divisor).
    pub quality_tests: usize,
    /// Every comparison.
    pub findings: Vec<Finding>,
    /// The instruction tier this run's hot loops ran on ([`SimdTier::name`]).
    pub speed_tier: String,
    /// Why speed was not compared, where it was not.
    pub speed_not_compared: Option<String>,
}

impl CheckReport {
    /// Whether any comparison regressed.
    pub fn regressed(&self) -> bool {
        self.findings.iter().any(|f| f.regressed)
    }

    /// A readable table: the regressions first, then a count of what held.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let bad: Vec<&Finding> = self.findings.iter().filter(|f| f.regressed).collect();
        let speed: Vec<&Finding> = self.findings.iter().filter(|f| f.kind == "speed").collect();
        out.push_str(&format!(
            "mcgrad check (seed {}): {} quality comparisons at family-wise alpha, {} speed paths\n",
            self.seed,
            self.quality_tests,
            speed.len()
        ));
        if let Some(why) = &self.speed_not_compared {
            out.push_str(&format!("\nspeed: not compared ({why})\n"));
        } else {
            out.push_str(&format!(
                "\nspeed (draws/s relative to the calibration workload, {} tier):\n",
                self.speed_tier
            ));
        }
        for f in &speed {
            out.push_str(&format!(
                "  {:<22} ratio {:>10.4} vs baseline {:>10.4}: {:.2}x slower (limit {:.2}x) {}\n",
                f.subject,
                f.now,
                f.reference,
                f.statistic,
                f.threshold,
                if f.regressed { "REGRESSED" } else { "ok" }
            ));
        }
        if bad.is_empty() {
            out.push_str(&format!(
                "\nall {} comparisons hold: no estimator's error or mean moved, no path slower\n",
                self.findings.len()
            ));
        } else {
            out.push_str(&format!("\n{} regression(s):\n", bad.len()));
            out.push_str(&format!(
                "  {:<8} {:<44} {:>12} {:>12} {:>10} {:>10}  reference\n",
                "kind", "what", "reference", "now", "statistic", "threshold"
            ));
            for f in bad {
                out.push_str(&format!(
                    "  {:<8} {:<44} {:>12.4e} {:>12.4e} {:>10.3e} {:>10.3e}  {}\n",
                    f.kind,
                    f.subject,
                    f.reference,
                    f.now,
                    f.statistic,
                    f.threshold,
                    f.reference_source
                ));
            }
            out.push_str(
                "\n(variance: |z| of the MSE change vs threshold; mean: p-value vs threshold; speed: slowdown vs limit)\n",
            );
        }
        out
    }
}

/// Options of a check (or of making a baseline).
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Seed of the rerun.
    pub seed: u64,
    /// Worker threads (0: one per core).
    pub threads: usize,
    /// Repetitions of each speed measurement (the best of each is taken).
    pub speed_repeats: usize,
    /// Whether to measure speed at all.
    pub speed: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            seed: fresh_seed(),
            threads: 0,
            speed_repeats: 5,
            speed: true,
        }
    }
}

/// A seed from the clock, for a rerun that is independent of the baseline's draws.
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ 0x9e37_79b9_7f4a_7c15
}

/// The main sweep of the default configuration: the seed problem's shape (D = 784, K = 10)
/// with W scaled by 0.2, so that probabilities spread over the classes (about 0.03 to 0.3)
/// instead of the seed problem's near-certain class, whose 1e-9 categories make every Monte
/// Carlo error heavy-tailed; every estimator and loss, S = 1 .. 256, R = 2000, tau = 1.
pub fn default_spec(seed: u64) -> SweepSpec {
    let mut problem = Problem::seeded(0, 784, 10);
    problem.w.iter_mut().for_each(|w| *w *= 0.2);
    // Every estimator defined on this problem (disarm, binary only, is not), but those that
    // tune themselves in a warm-up (rebar, relax): their variance depends on the warm-up's
    // draws, so a rerun with a fresh seed differs from the baseline by design, not by noise.
    let mut defined = estimators::defined_on(&problem, &Loss::QUADRATIC, 1.0);
    defined.retain(|e| !e.tunes_in_warm_up());
    SweepSpec {
        problem,
        losses: Loss::QUADRATIC.to_vec(),
        estimators: defined,
        samples: vec![1, 4, 16, 64, 256],
        reps: 2000,
        seed,
        tau: 1.0,
        settings: Default::default(),
    }
}

/// Whether `e`'s figures depend on the temperature: the relaxed family, and estimators whose
/// exact moments change with it (`reinmax`'s `softmax(a / tau)`).
fn depends_on_tau(e: &dyn Estimator, problem: &Problem, losses: &[Loss]) -> bool {
    e.family() == Family::Relaxed
        || losses.iter().any(|&loss| {
            let one = Context::new(problem, loss, 1.0);
            let other = Context::new(problem, loss, SECOND_TAU);
            match (e.exact_moments(&one, 1), e.exact_moments(&other, 1)) {
                (Some(a), Some(b)) => a.mean != b.mean,
                _ => false,
            }
        })
}

/// The default configuration: the sweeps `main` ([`default_spec`]), `tau=0.5` (the
/// estimators of `main` whose figures depend on tau, at [`SECOND_TAU`], S = 1, 16, 256) and
/// `mean` (the unbiased estimators of `main` with a counts lowering, S = [`MEAN_SAMPLES`],
/// R = [`MEAN_REPS`]; on one variable they read only category counts, so a draw costs a few
/// nanoseconds and a long run pays: it gives the mean test the power to see a 1% scale error
/// in REINFORCE, the noisiest of them).
pub fn default_plan(seed: u64) -> Vec<(String, SweepSpec)> {
    let main = default_spec(seed);
    let mut tau = main.clone();
    tau.estimators
        .retain(|e| depends_on_tau(*e, &main.problem, &main.losses));
    tau.tau = SECOND_TAU;
    tau.samples = vec![1, 16, 256];
    let mut mean = main.clone();
    mean.estimators.retain(|e| {
        e.is_unbiased()
            && matches!(
                e.lowering(),
                Some(Lowering::ScoreFunction {
                    signal: Some(_),
                    ..
                })
            )
    });
    mean.samples = vec![MEAN_SAMPLES];
    mean.reps = MEAN_REPS;
    vec![
        ("main".into(), main),
        (format!("tau={SECOND_TAU}"), tau),
        ("mean".into(), mean),
    ]
}

/// The seed of sweep `index` of a check with seed `seed` (each sweep its own draws).
fn sweep_seed(seed: u64, index: usize) -> u64 {
    seed.wrapping_add(index as u64)
}

/// The cells a sweep runs: (loss, estimator, S), with the engine's rule that an estimator
/// runs only where S reaches its minimum.
fn cells_of(spec: &SweepSpec) -> Vec<(String, String, u32)> {
    let mut cells = Vec::new();
    for &s in &spec.samples {
        for loss in &spec.losses {
            for e in spec.estimators_at(s) {
                cells.push((loss.name().to_string(), e.id().to_string(), s));
            }
        }
    }
    cells
}

/// The variance that the standard errors of a mean test come from, per coordinate: the exact
/// variance of the S-draw average where a closed form exists; else the sample variance,
/// floored by the estimator's reference variance where it has one.
fn mean_test_variance(r: &Record, e: &dyn Estimator, ctx: &Context) -> Vec<f64> {
    match &r.exact_var {
        Some(exact) => exact.clone(),
        None => {
            let reference = e.reference_variance(ctx, r.samples);
            r.var
                .iter()
                .enumerate()
                .map(|(j, v)| reference.as_ref().map_or(*v, |f| v.max(f[j])))
                .collect()
        }
    }
}

/// The scale of the loss below which a mean difference is rounding (as in the records).
fn rounding_scale(ctx: &Context) -> f64 {
    if ctx.l == 1 {
        ctx.p
            .iter()
            .zip(&ctx.f)
            .map(|(p, f)| p * f.abs())
            .sum::<f64>()
    } else {
        ctx.fbar.abs()
    }
    .max(1e-300)
}

/// The standard errors of a record's mean, as the mean test uses them.
fn mean_test_se(r: &Record, e: &dyn Estimator, ctx: &Context) -> Vec<f64> {
    let n = f64::from(r.reps);
    mean_test_variance(r, e, ctx)
        .iter()
        .map(|v| (v / n).sqrt())
        .collect()
}

/// The records of every sweep of `plan`, with each sweep's contexts.
fn run_plan(
    plan: &[(String, SweepSpec)],
    engine: &CpuEngine,
) -> Result<Vec<(Vec<Context>, Vec<Record>)>> {
    plan.iter()
        .map(|(_, spec)| {
            let recs = records(spec, &run_sweep(spec, engine, &|_| {})?);
            Ok((spec.contexts(), recs))
        })
        .collect()
}

fn context_of<'a>(spec: &SweepSpec, contexts: &'a [Context], loss: &str) -> &'a Context {
    let i = spec
        .losses
        .iter()
        .position(|l| l.name() == loss)
        .unwrap_or(0);
    &contexts[i]
}

impl Baseline {
    /// Measures a new baseline of the sweeps `plan` (named, as [`default_plan`] gives them).
    ///
    /// # Errors
    /// The sweeps' errors.
    pub fn measure(plan: &[(String, SweepSpec)], options: &CheckOptions) -> Result<Self> {
        let engine = CpuEngine::new(options.threads)?;
        let runs = run_plan(plan, &engine)?;
        let mut quality = Vec::new();
        for ((name, spec), (contexts, recs)) in plan.iter().zip(&runs) {
            for r in recs {
                let e = estimators::by_id(&r.estimator)?;
                let ctx = context_of(spec, contexts, &r.loss);
                quality.push(QualityFigure {
                    sweep: name.clone(),
                    loss: r.loss.clone(),
                    estimator: r.estimator.clone(),
                    samples: r.samples,
                    mse_w: r.mse_w,
                    mse_w_se: r.mse_w_se,
                    exact_total_var_w: r.exact_total_var_w,
                    unbiased: r.unbiased,
                    mean: r.mean.clone(),
                    mean_se: mean_test_se(r, e, ctx),
                });
            }
        }
        let speed = if options.speed {
            measure_speed(&engine, options.speed_repeats)?
        } else {
            Vec::new()
        };
        let first = &plan
            .first()
            .ok_or_else(|| Error::InvalidArgument("a baseline needs at least one sweep".into()))?
            .1;
        Ok(Self {
            schema: SCHEMA.into(),
            mcgrad_version: env!("CARGO_PKG_VERSION").into(),
            seed: first.seed,
            sweeps: plan
                .iter()
                .map(|(name, spec)| NamedSweep {
                    name: name.clone(),
                    config: SweepConfig::of(spec),
                })
                .collect(),
            problem: first.problem.to_json(),
            alpha: 0.001,
            slowdown_limit: 1.5,
            quality,
            speed,
        })
    }

    /// Reads a baseline file and checks it ([`Baseline::validate`]).
    ///
    /// # Errors
    /// [`Error::Read`], or [`Error::Baseline`] when it is not a baseline of this format or
    /// does not hold together.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.into(),
            source,
        })?;
        let bad = |message: String| Error::Baseline {
            path: path.into(),
            message,
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not a baseline file ({e})")))?;
        let schema = value.get("schema").and_then(|s| s.as_str()).unwrap_or("");
        if schema != SCHEMA {
            return Err(bad(format!(
                "format `{schema}`, this build reads `{SCHEMA}` (remove the file and run `mcgrad check --update --baseline FILE` to write a new one)"
            )));
        }
        let baseline: Baseline =
            serde_json::from_value(value).map_err(|e| bad(format!("not a baseline file ({e})")))?;
        baseline.validate().map_err(bad)?;
        Ok(baseline)
    }

    /// Checks that the baseline holds together: `alpha` in (0, 1), a positive slowdown limit,
    /// positive speed figures for known paths (each once), sweeps with distinct names that
    /// this build can run, and exactly one quality record per cell of the sweeps (none
    /// missing, none twice, none the sweeps do not run), each with finite figures.
    ///
    /// # Errors
    /// A one-line description of the first thing that does not hold.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.schema != SCHEMA {
            return Err(format!(
                "format `{}`, this build reads `{SCHEMA}`",
                self.schema
            ));
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(format!(
                "alpha must be a significance level in (0, 1), got {}",
                self.alpha
            ));
        }
        if !(self.slowdown_limit > 0.0 && self.slowdown_limit.is_finite()) {
            return Err(format!(
                "slowdown_limit must be a positive factor, got {}",
                self.slowdown_limit
            ));
        }
        let known: Vec<&str> = speed_paths().iter().map(|(name, _)| *name).collect();
        let mut paths = BTreeSet::new();
        for s in &self.speed {
            if !known.contains(&s.path.as_str()) {
                return Err(format!(
                    "speed path `{}` is not one this build measures ({})",
                    s.path,
                    known.join(", ")
                ));
            }
            if SimdTier::from_name(&s.tier).is_none() {
                return Err(format!(
                    "speed `{}`: tier `{}` is none of portable, avx2, avx512",
                    s.path, s.tier
                ));
            }
            if !paths.insert((s.path.as_str(), s.tier.as_str())) {
                return Err(format!(
                    "two speed records for `{}` on the {} tier",
                    s.path, s.tier
                ));
            }
            for (name, v) in [("ratio", s.ratio), ("draws_per_second", s.draws_per_second)] {
                if !(v > 0.0 && v.is_finite()) {
                    return Err(format!(
                        "speed `{}`: {name} must be positive, got {v}",
                        s.path
                    ));
                }
            }
        }
        if self.sweeps.is_empty() {
            return Err("no sweeps to rerun".into());
        }
        let plan = self.plan(0).map_err(|e| e.to_string())?;
        let mut expected = BTreeSet::new();
        for (name, spec) in &plan {
            spec.validate()
                .map_err(|e| format!("sweep `{name}`: {e}"))?;
            if expected.iter().any(|(n, ..): &(String, _, _, _)| n == name) {
                return Err(format!("two sweeps named `{name}`"));
            }
            for (loss, estimator, s) in cells_of(spec) {
                expected.insert((name.clone(), loss, estimator, s));
            }
        }
        let dim = plan[0].1.problem.dim();
        let mut seen = BTreeSet::new();
        for q in &self.quality {
            let key = (
                q.sweep.clone(),
                q.loss.clone(),
                q.estimator.clone(),
                q.samples,
            );
            let what = format!("{}:{}/{}/S={}", q.sweep, q.loss, q.estimator, q.samples);
            if !expected.contains(&key) {
                return Err(format!(
                    "a quality record for {what}, which the baseline's sweeps do not run"
                ));
            }
            if !seen.insert(key) {
                return Err(format!("two quality records for {what}"));
            }
            let finite = [q.mse_w, q.mse_w_se]
                .iter()
                .chain(&q.mean)
                .chain(&q.mean_se)
                .chain(&q.exact_total_var_w)
                .all(|v| v.is_finite());
            if !finite || q.mse_w < 0.0 || q.mse_w_se < 0.0 || q.mean_se.iter().any(|&v| v < 0.0) {
                return Err(format!(
                    "quality record {what}: a figure is negative or not finite"
                ));
            }
            if q.mean.len() != dim || q.mean_se.len() != dim {
                return Err(format!(
                    "quality record {what}: mean and mean_se need {dim} numbers each"
                ));
            }
        }
        let missing: Vec<String> = expected
            .difference(&seen)
            .map(|(n, l, e, s)| format!("{n}:{l}/{e}/S={s}"))
            .collect();
        if let Some(first) = missing.first() {
            return Err(format!(
                "{} of the {} cells its sweeps run have no quality record (first: {first})",
                missing.len(),
                expected.len()
            ));
        }
        Ok(())
    }

    /// Takes over `previous`'s speed figures of the tiers this baseline has none of (what
    /// `mcgrad check --update` keeps of the file it rewrites: one machine measures one tier).
    pub fn keep_other_tiers(&mut self, previous: &Baseline) {
        let ours: BTreeSet<String> = self.speed.iter().map(|f| f.tier.clone()).collect();
        self.speed.extend(
            previous
                .speed
                .iter()
                .filter(|f| !ours.contains(&f.tier))
                .cloned(),
        );
    }

    /// Writes the baseline (to a temporary file renamed into place).
    ///
    /// # Errors
    /// [`Error::Write`] if the file cannot be written.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Internal(format!("cannot serialise the baseline: {e}")))?;
        let tmp = path.with_extension("json.partial");
        let write = |p: &Path, t: &str| {
            std::fs::write(p, t).map_err(|source| Error::Write {
                path: p.into(),
                source,
            })
        };
        write(&tmp, &(text + "\n"))?;
        std::fs::rename(&tmp, path).map_err(|source| Error::Write {
            path: path.into(),
            source,
        })
    }

    /// The sweeps to rerun, named, with seeds derived from `seed`.
    ///
    /// # Errors
    /// [`Error::InvalidProblem`] or [`Error::Unknown`] for a problem or configuration this
    /// build cannot use.
    pub fn plan(&self, seed: u64) -> Result<Vec<(String, SweepSpec)>> {
        let problem = Problem::from_json_str(&self.problem.to_string())?;
        self.sweeps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Ok((
                    s.name.clone(),
                    s.config.to_spec(problem.clone(), sweep_seed(seed, i))?,
                ))
            })
            .collect()
    }
}

/// The one-sided normal quantile: `z` with `P(Z > z) = p` (bisection on erfc).
pub fn normal_upper_quantile(p: f64) -> f64 {
    let (mut lo, mut hi) = (-40.0f64, 40.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if 0.5 * erfc(mid / std::f64::consts::SQRT_2) > p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// The standard normal distribution function.
fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// Runs the check of `baseline`.
///
/// # Errors
/// [`Error::InvalidArgument`] for a baseline that does not hold together
/// ([`Baseline::validate`]); the sweeps' errors.
pub fn run_check(baseline: &Baseline, options: &CheckOptions) -> Result<CheckReport> {
    baseline
        .validate()
        .map_err(|m| Error::InvalidArgument(format!("baseline: {m}")))?;
    let plan = baseline.plan(options.seed)?;
    let engine = CpuEngine::new(options.threads)?;
    let runs = run_plan(&plan, &engine)?;
    let mut findings = quality_findings(baseline, &plan, &runs)?;
    let quality_tests = findings.len();
    let tier = simd_tier().name();
    let here: Vec<&SpeedFigure> = baseline.speed.iter().filter(|f| f.tier == tier).collect();
    let speed_not_compared = if !options.speed {
        Some("--no-speed".to_string())
    } else if baseline.speed.is_empty() {
        Some("the baseline has no speed figures".to_string())
    } else if here.is_empty() {
        let mut tiers: Vec<&str> = baseline.speed.iter().map(|f| f.tier.as_str()).collect();
        tiers.sort_unstable();
        tiers.dedup();
        Some(format!(
            "the baseline's speed figures are for the {} tier, this CPU runs the {tier} tier; `mcgrad check --update` adds its figures",
            tiers.join(" and ")
        ))
    } else {
        None
    };
    if speed_not_compared.is_none() {
        let measured = measure_speed(&engine, options.speed_repeats)?;
        for reference in here {
            let Some(m) = measured.iter().find(|m| m.path == reference.path) else {
                continue;
            };
            let slowdown = reference.ratio / m.ratio;
            findings.push(Finding {
                kind: "speed".into(),
                subject: m.path.clone(),
                reference: reference.ratio,
                reference_source: "baseline".into(),
                now: m.ratio,
                statistic: slowdown,
                threshold: baseline.slowdown_limit,
                regressed: slowdown > baseline.slowdown_limit,
            });
        }
    }
    Ok(CheckReport {
        seed: options.seed,
        quality_tests,
        findings,
        speed_tier: tier.into(),
        speed_not_compared,
    })
}

/// The per-test level of a baseline's quality tests: `alpha` over twice the number of cells
/// (an MSE test and a mean test each).
pub fn per_test_level(baseline: &Baseline) -> f64 {
    baseline.alpha / (2 * baseline.quality.len()).max(1) as f64
}

fn quality_findings(
    baseline: &Baseline,
    plan: &[(String, SweepSpec)],
    runs: &[(Vec<Context>, Vec<Record>)],
) -> Result<Vec<Finding>> {
    let per_test = per_test_level(baseline);
    let z_crit = normal_upper_quantile(per_test / 2.0);
    let mut findings = Vec::with_capacity(2 * baseline.quality.len());
    for q in &baseline.quality {
        let subject = format!("{}:{}/{}/S={}", q.sweep, q.loss, q.estimator, q.samples);
        let index = plan
            .iter()
            .position(|(name, _)| *name == q.sweep)
            .ok_or_else(|| Error::Internal(format!("no sweep for {subject}")))?;
        let (spec, (contexts, now)) = (&plan[index].1, &runs[index]);
        let r = now
            .iter()
            .find(|r| r.loss == q.loss && r.estimator == q.estimator && r.samples == q.samples)
            .ok_or_else(|| Error::Internal(format!("the rerun has no record for {subject}")))?;
        let ctx = context_of(spec, contexts, &q.loss);
        let e = estimators::by_id(&q.estimator)?;

        // MSE against the exact closed form where it exists, else the baseline; two-sided.
        let (reference, ref_se, source) = match (q.unbiased, r.exact_total_var_w) {
            (true, Some(exact)) => (exact, 0.0, "exact"),
            _ => (q.mse_w, q.mse_w_se, "baseline"),
        };
        let se = (r.mse_w_se * r.mse_w_se + ref_se * ref_se).sqrt();
        // Zero-variance cells (exact; MuProp on the seed and linear losses) differ only by
        // rounding: the floor is 1e-20 of the loss's largest MSE, far below any real change.
        let loss_scale = baseline
            .quality
            .iter()
            .filter(|o| o.loss == q.loss && o.sweep == q.sweep)
            .map(|o| o.mse_w)
            .fold(0.0, f64::max);
        let floor = 1e-20 * loss_scale + 1e-300;
        let z = (r.mse_w - reference) / se.max(floor);
        findings.push(Finding {
            kind: "variance".into(),
            subject: subject.clone(),
            reference,
            reference_source: source.into(),
            now: r.mse_w,
            statistic: z,
            threshold: z_crit,
            regressed: z.abs() > z_crit,
        });

        // The mean: unbiased against the exact gradient with exact standard errors; biased
        // against the baseline's mean, with both sides' errors.
        let se_now = mean_test_se(r, e, ctx);
        let rounding = 1e-9 * rounding_scale(ctx);
        let (target, source): (&[f64], &str) = if q.unbiased {
            (&ctx.grad, "exact gradient")
        } else {
            (&q.mean, "baseline mean")
        };
        let z_max = (0..r.mean.len())
            .map(|j| {
                let mut se = se_now[j];
                if q.unbiased {
                    // Against a Monte Carlo reference gradient, its own error adds.
                    se = ctx.grad_se.as_ref().map_or(se, |g| se.hypot(g[j]));
                } else {
                    se = se.hypot(q.mean_se[j]);
                }
                (r.mean[j] - target[j]).abs() / se.max(rounding)
            })
            .fold(0.0, f64::max);
        let p_value = (r.mean.len() as f64 * normal_two_sided(z_max)).min(1.0);
        let distance = r
            .mean
            .iter()
            .zip(target)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt();
        findings.push(Finding {
            kind: "mean".into(),
            subject,
            reference: 0.0,
            reference_source: source.into(),
            now: distance,
            statistic: p_value,
            threshold: per_test,
            regressed: p_value < per_test,
        });
    }
    Ok(findings)
}

/// The power of a check of `plan` (with family-wise level `alpha`) against a scale error
/// `estimate * (1 + eps)` in each unbiased estimator whose exact variances are known, from
/// those variances: per estimator, the largest over its cells and coordinates of
/// `P(|Z| > z_c)`, `Z ~ N(eps g_j / se_j, (1 + eps)^2)`, `se_j = sqrt(Var_j / R)`, where
/// `z_c` is the mean test's per-coordinate threshold. The largest single probability is a
/// lower bound on the chance that at least one of the estimator's tests fires.
pub fn scale_error_power(plan: &[(String, SweepSpec)], alpha: f64, eps: f64) -> Vec<(String, f64)> {
    let cells: usize = plan.iter().map(|(_, spec)| cells_of(spec).len()).sum();
    let per_test = alpha / (2 * cells).max(1) as f64;
    let mut power: Vec<(String, f64)> = Vec::new();
    for (_, spec) in plan {
        let contexts = spec.contexts();
        let dim = spec.problem.dim();
        let z_c = normal_upper_quantile(per_test / dim as f64 / 2.0);
        for &s in &spec.samples {
            for ctx in &contexts {
                for e in spec.estimators_at(s) {
                    if !e.is_unbiased() {
                        continue;
                    }
                    let Some(exact) = e.exact_moments(ctx, s) else {
                        continue;
                    };
                    let rounding = 1e-9 * rounding_scale(ctx);
                    let best = (0..dim)
                        .map(|j| {
                            let se = (exact.var[j] / f64::from(spec.reps)).sqrt().max(rounding);
                            let shift = eps * ctx.grad[j].abs() / se;
                            let sd = 1.0 + eps;
                            normal_cdf((shift - z_c) / sd) + normal_cdf((-shift - z_c) / sd)
                        })
                        .fold(0.0, f64::max);
                    match power.iter_mut().find(|(id, _)| id == e.id()) {
                        Some((_, p)) => *p = p.max(best),
                        None => power.push((e.id().to_string(), best)),
                    }
                }
            }
        }
    }
    power
}

/// Units of the calibration workload per call of [`calibration`].
const CALIBRATION_UNITS: u64 = 1 << 20;

/// The calibration workload: Philox blocks and float arithmetic (the hot paths' ingredients)
/// over the engine's threads. Returns a checksum so the work cannot be optimised away.
fn calibration(engine: &CpuEngine) -> u64 {
    engine.install(|| {
        (0..CALIBRATION_UNITS / 1024)
            .into_par_iter()
            .map(|chunk| {
                let mut acc = 0u64;
                let mut x = 1.0f32;
                for i in 0..1024u32 {
                    let w = philox4x32_10([i, chunk as u32, 7, 0], [1, 2]);
                    x = x * 0.999 + philox::uniform_f32(w[0]).max(1e-7).ln();
                    acc = acc.wrapping_add(u64::from(w[1] ^ x.to_bits()));
                }
                acc
            })
            .reduce(|| 0, u64::wrapping_add)
    })
}

/// The hot paths the speed check times: (name, the sweep that exercises it).
fn speed_paths() -> Vec<(&'static str, SweepSpec)> {
    let make = SweepSpec::family_workload;
    vec![
        (
            "cpu/score-function",
            make(Family::ScoreFunction, 4096, 1000),
        ),
        ("cpu/relaxed", make(Family::Relaxed, 256, 1000)),
    ]
}

/// Times every hot path against the calibration workload, interleaved, `repeats` times,
/// and gives each path's best rate over the best calibration rate of its repetitions.
///
/// # Errors
/// The sweeps' errors.
pub fn measure_speed(engine: &CpuEngine, repeats: usize) -> Result<Vec<SpeedFigure>> {
    let paths = speed_paths();
    let mut best_calibration = vec![0f64; paths.len()];
    let mut best_rate = vec![0f64; paths.len()];
    calibration(engine); // warm up the pool and caches
    for _ in 0..repeats.max(1) {
        for (i, (_, spec)) in paths.iter().enumerate() {
            let t0 = Instant::now();
            std::hint::black_box(calibration(engine));
            let calibration_rate = CALIBRATION_UNITS as f64 / t0.elapsed().as_secs_f64();
            let t0 = Instant::now();
            std::hint::black_box(run_sweep(spec, engine as &dyn Engine, &|_| {})?);
            let draws = u64::from(spec.samples[0]) * u64::from(spec.reps);
            let rate = draws as f64 / t0.elapsed().as_secs_f64();
            best_calibration[i] = best_calibration[i].max(calibration_rate);
            best_rate[i] = best_rate[i].max(rate);
        }
    }
    Ok(paths
        .iter()
        .zip(best_rate.into_iter().zip(best_calibration))
        .map(|((name, _), (rate, calibration_rate))| SpeedFigure {
            path: (*name).into(),
            tier: simd_tier().name().into(),
            draws_per_second: rate,
            ratio: rate / calibration_rate,
        })
        .collect())
}
