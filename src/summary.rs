//! The results files of a run and their readers: `summary.json` (the configuration, where it
//! ran and every record), `summary.csv` (the records' scalar columns) and the table printed on
//! stdout. A summary deserialises back, so a later check can rerun its configuration.
//!
//! Timings are the only figures that change between two runs of one configuration: they sit
//! in the records' `seconds` and the top-level `timing`, and [`Summary::without_timings`]
//! zeroes them so two summaries compare equal exactly when their numbers agree.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::engine::{BackendInfo, SweepSpec};
use crate::error::{Error, Result};
use crate::estimators;
use crate::loss::Loss;
use crate::problem::Problem;
use crate::record::Record;

/// The shape of the problem a run used (its numbers are in `problem.json` beside the summary).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProblemDims {
    /// Input dimension D.
    pub d: usize,
    /// Number of categories K per variable.
    pub k: usize,
    /// Number of variables L (1 in summaries that predate several variables).
    #[serde(default = "one_variable")]
    pub variables: usize,
}

fn one_variable() -> usize {
    1
}

fn default_exponent() -> f64 {
    crate::problem::DEFAULT_EXPONENT
}

/// What was swept: enough, with the seed and `problem.json`, to rerun it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepConfig {
    /// Loss names, in sweep order.
    pub losses: Vec<String>,
    /// Estimator ids, in sweep order.
    pub estimators: Vec<String>,
    /// Draw counts S.
    pub samples: Vec<u32>,
    /// Repetitions R per sweep point.
    pub reps: u32,
    /// Gumbel-softmax temperature.
    pub tau: f64,
    /// The problem's shape.
    pub problem: ProblemDims,
    /// Exponent of the `pnorm` loss (`--p`).
    #[serde(default = "default_exponent")]
    pub p: f64,
}

impl SweepConfig {
    /// The configuration of `spec`.
    pub fn of(spec: &SweepSpec) -> Self {
        Self {
            losses: spec.losses.iter().map(|l| l.name().to_string()).collect(),
            estimators: spec.estimators.iter().map(|e| e.id().to_string()).collect(),
            samples: spec.samples.clone(),
            reps: spec.reps,
            tau: spec.tau,
            problem: ProblemDims {
                d: spec.problem.d,
                k: spec.problem.k,
                variables: spec.problem.l,
            },
            p: spec.problem.exponent,
        }
    }

    /// The sweep this configuration describes, on `problem` with `seed`.
    ///
    /// # Errors
    /// [`Error::Unknown`] for a loss or estimator this build does not know;
    /// [`Error::InvalidProblem`] if `problem`'s shape is not the recorded one.
    pub fn to_spec(&self, mut problem: Problem, seed: u64) -> Result<SweepSpec> {
        let dims = &self.problem;
        if problem.d != dims.d || problem.k != dims.k || problem.l != dims.variables {
            return Err(Error::InvalidProblem(format!(
                "the summary was made on a {} x ({} x {}) problem, this one is {} x ({} x {})",
                dims.d, dims.variables, dims.k, problem.d, problem.l, problem.k
            )));
        }
        problem.exponent = self.p;
        Ok(SweepSpec {
            problem,
            losses: self
                .losses
                .iter()
                .map(|l| Loss::parse(l))
                .collect::<Result<_>>()?,
            estimators: self
                .estimators
                .iter()
                .map(|e| estimators::by_id(e))
                .collect::<Result<_>>()?,
            samples: self.samples.clone(),
            reps: self.reps,
            seed,
            tau: self.tau,
            settings: Default::default(),
        })
    }
}

/// Wall-clock times of a run (they differ between runs of one configuration).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// Seconds of the whole sweep.
    pub sweep_seconds: f64,
    /// Draws per second over the whole sweep.
    pub draws_per_second: f64,
}

/// The content of `summary.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The crate version that made it.
    pub mcgrad_version: String,
    /// Where the sweep ran.
    pub backend: BackendInfo,
    /// Seed of every random number (and of the problem, when none was given).
    pub seed: u64,
    /// What was swept.
    pub config: SweepConfig,
    /// Wall-clock times.
    pub timing: Timing,
    /// One record per (S, loss, estimator), in sweep order.
    pub records: Vec<Record>,
}

impl Summary {
    /// The summary of a finished sweep.
    pub fn new(
        spec: &SweepSpec,
        backend: BackendInfo,
        records: Vec<Record>,
        timing: Timing,
    ) -> Self {
        Self {
            mcgrad_version: env!("CARGO_PKG_VERSION").to_string(),
            backend,
            seed: spec.seed,
            config: SweepConfig::of(spec),
            timing,
            records,
        }
    }

    /// Checks that every figure of every record is a finite number (an absent optional
    /// figure, such as the SNR of an estimator without variance, is fine): a NaN would be
    /// written as `null` in `summary.json` and dropped from the plots, silently.
    ///
    /// # Errors
    /// [`Error::NonFinite`] naming the first figure that is NaN or infinite, with its
    /// estimator, loss and S.
    pub fn check_finite(&self) -> Result<()> {
        for r in &self.records {
            if let Some(figure) = non_finite_figure(r) {
                return Err(Error::NonFinite(format!(
                    "{figure} of {} on loss {} at S = {} is {}; nothing was written (check --tau and the scale of the problem)",
                    r.estimator,
                    r.loss,
                    r.samples,
                    figure_value(r, figure)
                )));
            }
        }
        Ok(())
    }

    /// A copy with every timing set to zero: two runs of one configuration give equal copies.
    pub fn without_timings(&self) -> Self {
        let mut s = self.clone();
        s.timing = Timing::default();
        s.records.iter_mut().for_each(|r| r.seconds = 0.0);
        s
    }

    /// The JSON text of `summary.json`: top-level fields first, then one record per line, so
    /// the file stays compact and diffs line by line.
    ///
    /// # Errors
    /// [`Error::Internal`] if a value cannot be serialised (a bug).
    pub fn to_json_text(&self) -> Result<String> {
        let mut out = String::from("{\n");
        for (key, value) in [
            ("mcgrad_version", json(&self.mcgrad_version)?),
            ("backend", json(&self.backend)?),
            ("seed", json(&self.seed)?),
            ("config", json(&self.config)?),
            ("timing", json(&self.timing)?),
        ] {
            let _ = writeln!(out, "  \"{key}\": {value},");
        }
        out.push_str("  \"records\": [\n");
        let records: Vec<String> = self
            .records
            .iter()
            .map(|r| json(r).map(|s| format!("    {s}")))
            .collect::<Result<_>>()?;
        out.push_str(&records.join(",\n"));
        out.push_str("\n  ]\n}\n");
        Ok(out)
    }

    /// Reads a `summary.json`.
    ///
    /// # Errors
    /// [`Error::Read`] if the file cannot be read, [`Error::Json`] if it is not a summary.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| Error::Json {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// The text of `summary.csv`: one row per record, scalar columns only (empty where a
    /// figure has no value), numbers in shortest round-trip scientific notation.
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "loss,estimator,family,unbiased,samples,reps,bias_norm_w,bias_norm_w_se,bias_z_max,bias_p_value,\
             total_var_w,total_var_w_se,exact_total_var_w,mse_w,mse_w_se,cosine,cosine_se,snr,snr_se,seconds\n",
        );
        let num = |v: f64| format!("{v:e}");
        let opt = |v: Option<f64>| v.map(num).unwrap_or_default();
        for r in &self.records {
            let cells = [
                r.loss.clone(),
                r.estimator.clone(),
                r.family.clone(),
                r.unbiased.to_string(),
                r.samples.to_string(),
                r.reps.to_string(),
                num(r.bias_norm_w),
                num(r.bias_norm_w_se),
                num(r.bias_z_max),
                num(r.bias_p_value),
                num(r.total_var_w),
                num(r.total_var_w_se),
                opt(r.exact_total_var_w),
                num(r.mse_w),
                num(r.mse_w_se),
                opt(r.cosine),
                opt(r.cosine_se),
                opt(r.snr),
                opt(r.snr_se),
                num(r.seconds),
            ];
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        out
    }

    /// The records at the largest draw count each (loss, estimator) ran at, in sweep order.
    pub fn largest_samples_records(&self) -> Vec<&Record> {
        let mut picked: Vec<&Record> = Vec::new();
        for r in &self.records {
            match picked
                .iter_mut()
                .find(|p| p.loss == r.loss && p.estimator == r.estimator)
            {
                Some(p) if r.samples > p.samples => *p = r,
                Some(_) => {}
                None => picked.push(r),
            }
        }
        picked.sort_by_key(|r| {
            let li = self.config.losses.iter().position(|l| *l == r.loss);
            let ei = self
                .config
                .estimators
                .iter()
                .position(|e| *e == r.estimator);
            (li, ei)
        });
        picked
    }

    /// The table printed after a run: one row per (loss, estimator) at its largest S, with
    /// the W-space bias norm, total variance (Monte Carlo and exact), SNR and the record's
    /// `seconds`, labelled "pass time": the wall time of the pass over the draws that its
    /// family shares at that S (every estimator of the family shows it whole) plus its own
    /// reduction, so the column does not add up.
    pub fn table(&self) -> String {
        let header = [
            "loss",
            "estimator",
            "S",
            "bias |E G^ - G|",
            "variance tr Cov G^",
            "exact variance",
            "SNR",
            "pass time (s)",
        ];
        let pm = |v: f64, se: f64| format!("{v:.3e} ± {se:.1e}");
        let rows: Vec<[String; 8]> = self
            .largest_samples_records()
            .into_iter()
            .map(|r| {
                [
                    r.loss.clone(),
                    r.estimator.clone(),
                    r.samples.to_string(),
                    pm(r.bias_norm_w, r.bias_norm_w_se),
                    pm(r.total_var_w, r.total_var_w_se),
                    r.exact_total_var_w
                        .map(|v| format!("{v:.3e}"))
                        .unwrap_or_else(|| "-".into()),
                    r.snr
                        .map(|v| format!("{v:.3}"))
                        .unwrap_or_else(|| "-".into()),
                    format!("{:.3}", r.seconds),
                ]
            })
            .collect();
        let width = |i: usize| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..header.len()).map(width).collect();
        let line = |cells: &[&str]| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                let pad = widths[i] - c.chars().count();
                // Text columns align left, numbers right.
                if i < 2 {
                    let _ = write!(s, "{c}{}  ", " ".repeat(pad));
                } else {
                    let _ = write!(s, "{}{c}  ", " ".repeat(pad));
                }
            }
            s.trim_end().to_string()
        };
        let mut out = line(&header);
        out.push('\n');
        out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1)));
        out.push('\n');
        let mut last_loss = None;
        for r in &rows {
            if last_loss.is_some() && last_loss != Some(&r[0]) {
                out.push('\n');
            }
            last_loss = Some(&r[0]);
            out.push_str(&line(&r.iter().map(String::as_str).collect::<Vec<_>>()));
            out.push('\n');
        }
        out
    }
}

/// Every figure of a record by name (an absent optional figure gives no value). A field
/// added to [`Record`] belongs here too.
fn figures(r: &Record) -> Vec<(&'static str, Vec<f64>)> {
    let opt = |v: Option<f64>| v.into_iter().collect::<Vec<_>>();
    vec![
        ("exact_grad", r.exact_grad.clone()),
        ("mean", r.mean.clone()),
        ("mean_se", r.mean_se.clone()),
        ("var", r.var.clone()),
        ("var_se", r.var_se.clone()),
        ("exact_var", r.exact_var.clone().unwrap_or_default()),
        ("bias", r.bias.clone()),
        ("bias_norm_w", vec![r.bias_norm_w]),
        ("bias_norm_w_se", vec![r.bias_norm_w_se]),
        ("bias_z_max", vec![r.bias_z_max]),
        ("bias_p_value", vec![r.bias_p_value]),
        ("total_var_w", vec![r.total_var_w]),
        ("total_var_w_se", vec![r.total_var_w_se]),
        ("exact_total_var_w", opt(r.exact_total_var_w)),
        ("mse_w", vec![r.mse_w]),
        ("mse_w_se", vec![r.mse_w_se]),
        ("cosine", opt(r.cosine)),
        ("cosine_se", opt(r.cosine_se)),
        ("snr", opt(r.snr)),
        ("snr_se", opt(r.snr_se)),
        ("seconds", vec![r.seconds]),
    ]
}

fn non_finite_figure(r: &Record) -> Option<&'static str> {
    figures(r)
        .into_iter()
        .find(|(_, values)| values.iter().any(|v| !v.is_finite()))
        .map(|(name, _)| name)
}

fn figure_value(r: &Record, figure: &str) -> String {
    figures(r)
        .into_iter()
        .find(|(name, _)| *name == figure)
        .and_then(|(_, values)| values.into_iter().find(|v| !v.is_finite()))
        .map_or_else(|| "not finite".into(), |v| v.to_string())
}

fn json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Internal(format!("cannot serialise: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{run_sweep, CpuEngine};

    fn small_summary() -> Summary {
        let spec = SweepSpec {
            problem: Problem::seeded(3, 6, 4),
            losses: vec![Loss::Squared, Loss::Seed],
            estimators: vec![
                estimators::by_id("reinforce").unwrap(),
                estimators::by_id("rloo").unwrap(),
            ],
            samples: vec![1, 4],
            reps: 50,
            seed: 9,
            tau: 0.5,
            settings: Default::default(),
        };
        let engine = CpuEngine::new(1).unwrap();
        let points = run_sweep(&spec, &engine, &|_| {}).unwrap();
        Summary::new(
            &spec,
            crate::engine::Engine::backend_info(&engine),
            crate::record::records(&spec, &points),
            Timing::default(),
        )
    }

    #[test]
    fn json_text_round_trips() {
        let s = small_summary();
        let back: Summary = serde_json::from_str(&s.to_json_text().unwrap()).unwrap();
        assert_eq!(s, back);
    }

    #[test]
    fn config_rebuilds_the_spec() {
        let s = small_summary();
        let spec = s.config.to_spec(Problem::seeded(3, 6, 4), s.seed).unwrap();
        assert_eq!(SweepConfig::of(&spec), s.config);
        assert!(s.config.to_spec(Problem::seeded(3, 5, 4), 0).is_err());
    }

    #[test]
    fn csv_has_one_row_per_record_and_a_fixed_width() {
        let s = small_summary();
        let csv = s.to_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 1 + s.records.len());
        let columns = lines[0].split(',').count();
        assert!(lines.iter().all(|l| l.split(',').count() == columns));
    }

    #[test]
    fn table_shows_the_largest_s_per_cell() {
        let s = small_summary();
        let picked = s.largest_samples_records();
        assert_eq!(picked.len(), 4);
        assert!(picked.iter().all(|r| r.samples == 4));
        assert_eq!(s.table().lines().filter(|l| l.contains("rloo")).count(), 2);
        // The time column is the family's shared pass, and says so.
        assert!(s.table().lines().next().unwrap().ends_with("pass time (s)"));
    }

    #[test]
    fn a_nan_figure_is_an_error_naming_where_it_came_from() {
        let mut summary = small_summary();
        assert!(summary.check_finite().is_ok());
        let r = &mut summary.records[1];
        r.var[0] = f64::NAN;
        let (estimator, loss, s) = (r.estimator.clone(), r.loss.clone(), r.samples);
        let err = summary.check_finite().unwrap_err();
        assert_eq!(err.exit_code(), 1);
        let m = err.to_string();
        assert!(
            m.contains("var of") && m.contains(&estimator) && m.contains(&loss),
            "{m}"
        );
        assert!(m.contains(&format!("S = {s}")), "{m}");
        summary.records[1].var[0] = 0.0;
        summary.records[2].snr = Some(f64::INFINITY);
        assert!(summary
            .check_finite()
            .unwrap_err()
            .to_string()
            .contains("snr"));
    }
}
