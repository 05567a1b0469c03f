//! The one-Bernoulli toys of REBAR (`t = 0.45`) and RELAX (`t = 0.499`), and ARM's
//! (`p0` in {0.49, 0.499, 0.501, 0.51}): one binary variable with free logits `[0, 0]`, the loss
//! `(z - t)^2` (`pnorm`, p = 2), optimised by Adam from `p(z = 1) = 1/2` with every estimator
//! of the registry defined on it, each with the same draws, over several seeds. RLOO needs two
//! draws a step and runs at S = 2 (every other estimator at S = 1, as the papers' batch of
//! one). One more trajectory, driven by REINFORCE on the first seed, carries every
//! estimator's gradient variance at the same parameters (REBAR's `SBNTrackGradVariances`);
//! each estimator's own trajectory carries its variance at its own parameters.

use serde_json::{json, Value};

use super::figure::{LineFigure, Panel, Series};
use super::runs::{self, band_series, of, Spread};
use crate::error::Result;
use crate::estimators;
use crate::loss::Loss;
use crate::optimise::{Direction, OptimiseReport, OptimiseSpec, SharedTrajectory};
use crate::problem::Problem;
use crate::train::OptimizerKind;

/// One toy run's settings.
#[derive(Clone, Debug)]
pub struct ToySetting {
    /// The target `t` of `(z - t)^2`.
    pub target: f64,
    /// Minimise (REBAR, RELAX) or maximise (ARM).
    pub direction: Direction,
    /// Adam steps.
    pub steps: u32,
    /// Evaluate every this many steps.
    pub eval_every: u32,
    /// Adam's learning rate.
    pub learning_rate: f64,
    /// Seeds.
    pub seeds: u64,
    /// Warm REBAR and RELAX up again every this many steps (0: once).
    pub rewarm_every: u32,
    /// Carry a shared trajectory (driven by REINFORCE on the first seed) along which every
    /// estimator's variance is measured at the same `W`.
    pub shared: bool,
    /// Only these estimators (empty: every one defined on the toy).
    pub only: Vec<&'static str>,
}

/// The runs of one toy setting.
pub struct ToyRuns {
    /// The setting.
    pub setting: ToySetting,
    /// The base spec (S = 1).
    pub spec: OptimiseSpec,
    /// The estimators' ids, registry order.
    pub ids: Vec<&'static str>,
    /// Every seed's report (RLOO's trajectories merged in from its S = 2 run).
    pub reports: Vec<OptimiseReport>,
}

/// The toy problem with target `t`: one Bernoulli, logits 0.
pub fn problem(target: f64) -> Problem {
    let mut p = Problem::free_logits(1, 2, vec![0.0, 0.0]);
    p.b = vec![target];
    p
}

/// Runs a toy setting.
///
/// # Errors
/// The optimiser's validation errors.
pub fn run(setting: &ToySetting) -> Result<ToyRuns> {
    let problem = problem(setting.target);
    let defined = estimators::defined_on(&problem, &[Loss::Pnorm], 1.0);
    let chosen: Vec<_> = defined
        .into_iter()
        .filter(|e| setting.only.is_empty() || setting.only.contains(&e.id()))
        .collect();
    let ids: Vec<&'static str> = chosen.iter().map(|e| e.id()).collect();
    let (two, one): (Vec<_>, Vec<_>) = chosen.into_iter().partition(|e| e.min_samples() > 1);
    let mut spec = OptimiseSpec::new(problem, Loss::Pnorm, one);
    spec.optimiser = OptimizerKind::Adam;
    spec.learning_rate = setting.learning_rate;
    spec.steps = setting.steps;
    spec.samples = 1;
    spec.eval_every = setting.eval_every;
    spec.variance_reps = 64;
    spec.own_variance = true;
    spec.track = vec![(0, 1)];
    spec.direction = setting.direction;
    spec.rewarm_every = setting.rewarm_every;
    spec.shared = if setting.shared {
        SharedTrajectory::Estimator(estimators::by_id("reinforce")?)
    } else {
        SharedTrajectory::None
    };
    let seeds = runs::seeds(setting.seeds);
    let mut reports = runs::per_seed(&spec, &seeds)?;
    if !two.is_empty() {
        let mut spec2 = spec.clone();
        spec2.estimators = two;
        spec2.samples = 2;
        spec2.shared = SharedTrajectory::None;
        let extra = runs::per_seed(&spec2, &seeds)?;
        for (r, e) in reports.iter_mut().zip(extra) {
            r.trajectories.extend(e.trajectories);
        }
    }
    Ok(ToyRuns {
        setting: setting.clone(),
        spec,
        ids,
        reports,
    })
}

/// The legend label of an estimator in a toy (RLOO's two draws a step said).
pub fn label(id: &str) -> String {
    if id == "rloo" {
        "rloo (S = 2)".into()
    } else {
        id.to_string()
    }
}

impl ToyRuns {
    /// The objective's value at the optimum (`p(z=1)` at 0 or 1).
    pub fn optimum(&self) -> f64 {
        let t = self.setting.target;
        let (f0, f1) = (t * t, (1.0 - t) * (1.0 - t));
        match self.setting.direction {
            Direction::Minimise => f0.min(f1),
            Direction::Maximise => f0.max(f1),
        }
    }

    /// The optimal `p(z = 1)`: 0 or 1.
    pub fn optimal_probability(&self) -> f64 {
        let t = self.setting.target;
        let one_is_better = match self.setting.direction {
            Direction::Minimise => (1.0 - t).powi(2) < t * t,
            Direction::Maximise => (1.0 - t).powi(2) > t * t,
        };
        f64::from(u8::from(one_is_better))
    }

    /// The final distance `|p(z=1) - optimal|` of every seed of `id`.
    pub fn final_distance(&self, id: &str) -> Vec<f64> {
        let opt = self.optimal_probability();
        of(&self.reports, id)
            .iter()
            .map(|t| (t.last().probabilities[0] - opt).abs())
            .collect()
    }

    /// The spread over seeds of the objective of `id`.
    pub fn objective(&self, id: &str) -> Vec<Spread> {
        runs::spread(&of(&self.reports, id), |p| p.objective)
    }

    /// The spread over seeds of `p(z = 1)` of `id`.
    pub fn probability(&self, id: &str) -> Vec<Spread> {
        runs::spread(&of(&self.reports, id), |p| p.probabilities[0])
    }

    /// The spread over seeds of `id`'s own-trajectory variance.
    pub fn own_variance(&self, id: &str) -> Vec<Spread> {
        runs::spread(&of(&self.reports, id), move |p| {
            p.variances
                .iter()
                .find(|v| v.estimator == id)
                .map_or(f64::NAN, |v| v.variance)
        })
    }

    /// Every estimator's variance along the shared trajectory: `(step, variance)`.
    pub fn shared_variance(&self, id: &str) -> Vec<(f64, f64)> {
        self.reports
            .iter()
            .find_map(|r| r.shared.as_ref())
            .map_or_else(Vec::new, |t| {
                t.points
                    .iter()
                    .filter_map(|p| {
                        let v = p.variances.iter().find(|v| v.estimator == id)?;
                        Some((f64::from(p.step), v.variance))
                    })
                    .collect()
            })
    }

    /// The panels of one toy figure for `ids`: the objective, `p(z = 1)`, and the variance
    /// (on the shared trajectory where it exists, else each estimator's own).
    pub fn panels(&self, ids: &[&str], title_suffix: &str) -> Vec<Panel> {
        let objective: Vec<Series> = ids
            .iter()
            .map(|id| band_series(id, &label(id), &self.objective(id)))
            .collect();
        let probability: Vec<Series> = ids
            .iter()
            .map(|id| band_series(id, &label(id), &self.probability(id)))
            .collect();
        let shared = self.reports.iter().any(|r| r.shared.is_some());
        let own: Vec<Series> = ids
            .iter()
            .filter(|id| **id != "exact")
            .map(|id| band_series(id, &label(id), &self.own_variance(id)))
            .collect();
        let at_same: Vec<Series> = ids
            .iter()
            .filter(|id| **id != "exact")
            .map(|id| Series::line(id, &label(id), self.shared_variance(id)))
            .filter(|s| !s.points.is_empty())
            .collect();
        let t = self.setting.target;
        let mut panels = vec![
            Panel {
                title: format!("exact objective E(z − {t})²{title_suffix}"),
                x_label: "Adam steps".into(),
                y_label: "E f".into(),
                log_y: false,
                y_range: None,
                series: objective,
                references: vec![(self.optimum(), "optimum".into())],
                x_names: vec![],
            },
            Panel {
                title: "p(z = 1)".into(),
                x_label: "Adam steps".into(),
                y_label: "p(z = 1)".into(),
                log_y: false,
                y_range: Some((0.0, 1.0)),
                series: probability,
                references: vec![],
                x_names: vec![],
            },
            Panel {
                title: "gradient variance on each estimator's own trajectory".into(),
                x_label: "Adam steps".into(),
                y_label: "Var of the S-draw estimate".into(),
                log_y: true,
                y_range: None,
                series: own,
                references: vec![],
                x_names: vec![],
            },
        ];
        if shared {
            panels.push(Panel {
                title: "variance at the same parameters (REINFORCE's trajectory, seed 0)".into(),
                x_label: "Adam steps".into(),
                y_label: "Var of the S-draw estimate".into(),
                log_y: true,
                y_range: None,
                series: at_same,
                references: vec![],
                x_names: vec![],
            });
        }
        panels
    }

    /// A figure of the panels for `ids`.
    pub fn figure(&self, stem: &str, title: &str, ids: &[&str]) -> LineFigure {
        LineFigure {
            stem: stem.into(),
            title: title.into(),
            columns: 2,
            panels: self.panels(ids, ""),
            note: format!(
                "Lines: mean over {} seeds; bands: smallest to largest seed.\nVariances: exact where the estimator has exact moments, else {} Monte Carlo repetitions; values of 0 are not drawn.",
                self.setting.seeds, self.spec.variance_reps
            ),
        }
    }

    /// The data rows (trajectories and shared variances) and the JSON of this setting.
    pub fn data(&self, name: &str, csv: &mut String, shared_csv: &mut String) -> Value {
        runs::trajectory_rows(name, &self.reports, csv);
        runs::shared_rows(name, &self.reports, shared_csv);
        json!({
            "setting": name,
            "target": self.setting.target,
            "config": runs::spec_json(&self.spec, &runs::seeds(self.setting.seeds)),
            "rloo_samples": 2,
            "optimum": self.optimum(),
            "optimal_probability": self.optimal_probability(),
            "finals": runs::finals_json(&self.reports, &self.ids),
        })
    }

    /// A Markdown table: per estimator, the final objective and `p(z=1)` (mean, min, max
    /// over seeds), the mean variance on the shared trajectory, time and evaluations.
    pub fn table(&self) -> String {
        let mut text = String::from("| estimator | final E f: mean [min, max] | final p(z = 1): mean [min, max] | mean variance on REINFORCE's trajectory (seed 0) | seconds per run | loss evaluations per run |\n|---|---|---|---|---|---|\n");
        for id in &self.ids {
            let trajs = of(&self.reports, id);
            let obj: Vec<f64> = trajs.iter().map(|t| t.last().objective).collect();
            let prob: Vec<f64> = trajs.iter().map(|t| t.last().probabilities[0]).collect();
            let secs: Vec<f64> = trajs.iter().map(|t| t.last().seconds).collect();
            let evals: Vec<f64> = trajs.iter().map(|t| t.last().loss_evaluations).collect();
            let shared: Vec<f64> = self.shared_variance(id).iter().map(|p| p.1).collect();
            let (om, olo, ohi) = super::claims::mean_min_max(&obj);
            let (pm, plo, phi) = super::claims::mean_min_max(&prob);
            text.push_str(&format!(
                "| `{}` | {} [{}, {}] | {} [{}, {}] | {} | {} | {} |\n",
                label(id),
                super::sig(om),
                super::sig(olo),
                super::sig(ohi),
                super::sig(pm),
                super::sig(plo),
                super::sig(phi),
                if shared.is_empty() {
                    "–".into()
                } else {
                    super::sig(super::claims::mean_min_max(&shared).0)
                },
                super::sig(super::claims::mean_min_max(&secs).0),
                super::sig(super::claims::mean_min_max(&evals).0),
            ));
        }
        text
    }

    /// Per seed, whether `a` ends nearer the optimal probability than `b` (ties: no).
    pub fn closer(&self, a: &str, b: &str) -> Vec<bool> {
        self.final_distance(a)
            .iter()
            .zip(self.final_distance(b))
            .map(|(x, y)| *x < y)
            .collect()
    }

    /// Per seed, whether `a`'s own-trajectory variance, averaged over the evaluations, is
    /// below `b`'s.
    pub fn quieter(&self, a: &str, b: &str) -> Vec<bool> {
        let mean_var = |id: &str| -> Vec<f64> {
            of(&self.reports, id)
                .iter()
                .map(|t| {
                    let v: Vec<f64> = t
                        .points
                        .iter()
                        .filter_map(|p| {
                            p.variances
                                .iter()
                                .find(|v| v.estimator == id)
                                .map(|v| v.variance)
                        })
                        .collect();
                    super::claims::mean_min_max(&v).0
                })
                .collect()
        };
        mean_var(a)
            .iter()
            .zip(mean_var(b))
            .map(|(x, y)| *x < y)
            .collect()
    }
}
