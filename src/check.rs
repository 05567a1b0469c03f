//! The regression check for CI: `mcgrad check --baseline FILE` reruns a baseline's
//! configuration with a fresh seed and asks two kinds of question.
//!
//! **Quality**, for every (loss, estimator, S):
//! - *noisier?* One-sided z-test of the mean squared error `E||G_hat - G||^2` (W space): the
//!   reference is the exact total variance where a closed form exists and the estimator is
//!   unbiased (no noise on that side), else the baseline's Monte Carlo MSE with its standard
//!   error. Catches a larger variance and a new bias alike.
//! - *biased?* For estimators that are unbiased by construction: the record's Bonferroni
//!   p-value of "mean = exact gradient" (standard errors floored by the exact variance).
//!
//! All quality tests share a family-wise significance level (default 0.001) split evenly
//! among them (Bonferroni), so unchanged code trips the check in about one run in a thousand
//! or fewer.
//!
//! **Speed**, for each hot path: draws per second divided by the throughput of a fixed
//! calibration workload timed in the same process, interleaved with it, median of several
//! repetitions. A shared, noisy machine slows both alike; the check fails when a path's ratio
//! falls below the baseline's divided by the slowdown limit (default 1.5).

use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::engine::{run_sweep, CpuEngine, Engine, SweepSpec};
use crate::error::{Error, Result};
use crate::estimators::{self, Family};
use crate::loss::Loss;
use crate::philox::{self, philox4x32_10};
use crate::problem::Problem;
use crate::record::{erfc, records, Record};
use crate::summary::SweepConfig;

/// Version tag of the baseline file format.
pub const SCHEMA: &str = "mcgrad-baseline/1";

/// A baseline: the configuration to rerun, its quality figures and its speed ratios.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// The mcgrad version that wrote it.
    pub mcgrad_version: String,
    /// Seed the baseline's figures were made with.
    pub seed: u64,
    /// The sweep to rerun.
    pub config: SweepConfig,
    /// The problem, in the problem-file format.
    pub problem: serde_json::Value,
    /// Family-wise significance level of the quality tests.
    pub alpha: f64,
    /// A path fails when its speed ratio falls below the baseline's divided by this.
    pub slowdown_limit: f64,
    /// Quality figures per (loss, estimator, S).
    pub quality: Vec<QualityFigure>,
    /// Speed ratios per hot path.
    pub speed: Vec<SpeedFigure>,
}

/// The quality figures of one (loss, estimator, S).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QualityFigure {
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
}

/// The speed of one hot path relative to the calibration workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpeedFigure {
    /// Path name (`cpu/score-function`, `cpu/relaxed`).
    pub path: String,
    /// Median draws per second.
    pub draws_per_second: f64,
    /// Median of (path draws per second) / (calibration units per second).
    pub ratio: f64,
}

/// One line of a check's verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// `variance`, `bias` or `speed`.
    pub kind: String,
    /// What was compared (`squared/reinforce/S=16`, `cpu/relaxed`).
    pub subject: String,
    /// The reference figure (exact or baseline).
    pub reference: f64,
    /// Where the reference comes from (`exact`, `baseline`).
    pub reference_source: String,
    /// The figure now.
    pub now: f64,
    /// The test statistic (z for variance, p-value for bias, slowdown factor for speed).
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
        out.push_str("\nspeed (draws/s relative to the calibration workload):\n");
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
                "\nall {} comparisons hold: no estimator is significantly noisier or biased, no path slower\n",
                self.findings.len()
            ));
        } else {
            out.push_str(&format!("\n{} regression(s):\n", bad.len()));
            out.push_str(&format!(
                "  {:<8} {:<34} {:>12} {:>12} {:>10} {:>10}  reference\n",
                "kind", "what", "reference", "now", "statistic", "threshold"
            ));
            for f in bad {
                out.push_str(&format!(
                    "  {:<8} {:<34} {:>12.4e} {:>12.4e} {:>10.3e} {:>10.3e}  {}\n",
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
                "\n(variance: z of the MSE increase vs threshold; bias: p-value vs threshold; speed: slowdown vs limit)\n",
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
    /// Repetitions of each speed measurement (the median is taken).
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

/// The configuration CI checks by default: the seed problem's shape (D = 784, K = 10) with W
/// scaled by 0.2, so that probabilities spread over the classes (about 0.03 to 0.3) instead
/// of the seed problem's near-certain class, whose 1e-9 categories make every Monte Carlo
/// error heavy-tailed; every estimator and loss, S = 1 .. 256, R = 2000.
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

impl Baseline {
    /// Measures a new baseline of `spec`.
    ///
    /// # Errors
    /// The sweep's errors.
    pub fn measure(spec: &SweepSpec, options: &CheckOptions) -> Result<Self> {
        let engine = CpuEngine::new(options.threads)?;
        let recs = records(spec, &run_sweep(spec, &engine, &|_| {})?);
        let speed = if options.speed {
            measure_speed(&engine, options.speed_repeats)?
        } else {
            Vec::new()
        };
        Ok(Self {
            schema: SCHEMA.into(),
            mcgrad_version: env!("CARGO_PKG_VERSION").into(),
            seed: spec.seed,
            config: SweepConfig::of(spec),
            problem: spec.problem.to_json(),
            alpha: 0.001,
            slowdown_limit: 1.5,
            quality: recs.iter().map(QualityFigure::of).collect(),
            speed,
        })
    }

    /// Reads a baseline file.
    ///
    /// # Errors
    /// [`Error::Read`], or [`Error::Baseline`] when it is not a baseline of this format.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.into(),
            source,
        })?;
        let baseline: Baseline = serde_json::from_str(&text).map_err(|e| Error::Baseline {
            path: path.into(),
            message: format!("not a baseline file ({e})"),
        })?;
        if baseline.schema != SCHEMA {
            return Err(Error::Baseline {
                path: path.into(),
                message: format!("format `{}`, this build reads `{SCHEMA}`", baseline.schema),
            });
        }
        Ok(baseline)
    }

    /// Writes the baseline (to a temporary file renamed into place).
    ///
    /// # Errors
    /// [`Error::Write`] if the file cannot be written.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Baseline {
            path: path.into(),
            message: e.to_string(),
        })?;
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

    /// The sweep to rerun, with `seed`.
    ///
    /// # Errors
    /// [`Error::Baseline`]-style errors for a problem or configuration this build cannot use.
    pub fn spec(&self, seed: u64) -> Result<SweepSpec> {
        let problem = Problem::from_json_str(&self.problem.to_string())?;
        self.config.to_spec(problem, seed)
    }
}

impl QualityFigure {
    fn of(r: &Record) -> Self {
        Self {
            loss: r.loss.clone(),
            estimator: r.estimator.clone(),
            samples: r.samples,
            mse_w: r.mse_w,
            mse_w_se: r.mse_w_se,
            exact_total_var_w: r.exact_total_var_w,
            unbiased: r.unbiased,
        }
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

/// Runs the check of `baseline`.
///
/// # Errors
/// The sweep's and the baseline's errors.
pub fn run_check(baseline: &Baseline, options: &CheckOptions) -> Result<CheckReport> {
    let spec = baseline.spec(options.seed)?;
    let engine = CpuEngine::new(options.threads)?;
    let now = records(&spec, &run_sweep(&spec, &engine, &|_| {})?);
    let mut findings = quality_findings(baseline, &now)?;
    let quality_tests = findings.len();
    if options.speed && !baseline.speed.is_empty() {
        let measured = measure_speed(&engine, options.speed_repeats)?;
        for reference in &baseline.speed {
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
    })
}

fn quality_findings(baseline: &Baseline, now: &[Record]) -> Result<Vec<Finding>> {
    let unbiased_tests = baseline.quality.iter().filter(|q| q.unbiased).count();
    let tests = baseline.quality.len() + unbiased_tests;
    let per_test = baseline.alpha / tests as f64;
    let z_crit = normal_upper_quantile(per_test);
    let mut findings = Vec::with_capacity(tests);
    for q in &baseline.quality {
        let subject = format!("{}/{}/S={}", q.loss, q.estimator, q.samples);
        let r = now
            .iter()
            .find(|r| r.loss == q.loss && r.estimator == q.estimator && r.samples == q.samples)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("the rerun has no record for {subject}"))
            })?;
        // Variance (MSE) against the exact closed form where it exists, else the baseline.
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
            .filter(|o| o.loss == q.loss)
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
            regressed: z > z_crit,
        });
        if q.unbiased {
            findings.push(Finding {
                kind: "bias".into(),
                subject,
                reference: 0.0,
                reference_source: "exact gradient".into(),
                now: r.bias_norm_w,
                statistic: r.bias_p_value,
                threshold: per_test,
                regressed: r.bias_p_value < per_test,
            });
        }
    }
    Ok(findings)
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times every hot path against the calibration workload, interleaved, `repeats` times.
///
/// # Errors
/// The sweeps' errors.
pub fn measure_speed(engine: &CpuEngine, repeats: usize) -> Result<Vec<SpeedFigure>> {
    let paths = speed_paths();
    let mut ratios = vec![Vec::new(); paths.len()];
    let mut rates = vec![Vec::new(); paths.len()];
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
            ratios[i].push(rate / calibration_rate);
            rates[i].push(rate);
        }
    }
    Ok(paths
        .iter()
        .zip(ratios.into_iter().zip(rates))
        .map(|((name, _), (ratio, rate))| SpeedFigure {
            path: (*name).into(),
            draws_per_second: median(rate),
            ratio: median(ratio),
        })
        .collect())
}
