//! What the optimisation experiments share: one [`OptimiseSpec`] run once per seed (all
//! trajectories of all seeds in parallel through [`optimise_many`]), curves summarised over
//! seeds (mean, minimum and maximum at each evaluation), figure series with their band, and
//! the data rows of every trajectory.

use serde_json::{json, Value};

use super::{csv_field, Series};
use crate::error::Result;
use crate::estimators::{self, Estimator};
use crate::optimise::{
    optimise_many, EvalPoint, OptimiseReport, OptimiseSpec, SharedTrajectory, Trajectory,
};

/// The seeds `0 .. n`.
pub fn seeds(n: u64) -> Vec<u64> {
    (0..n).collect()
}

/// The estimators of `ids` (ids not in the registry are a bug of the experiment).
///
/// # Errors
/// [`crate::Error::Unknown`] for an id not in the registry.
pub fn estimators(ids: &[&str]) -> Result<Vec<&'static dyn Estimator>> {
    ids.iter().map(|id| estimators::by_id(id)).collect()
}

/// `base` run once per seed, every trajectory of every seed in parallel; the reports in the
/// order of `seeds`. Only the first seed keeps `base`'s shared trajectory (the variance of
/// every estimator along it is one measurement, not one per seed).
///
/// # Errors
/// The spec's validation errors.
pub fn per_seed(base: &OptimiseSpec, seeds: &[u64]) -> Result<Vec<OptimiseReport>> {
    let specs: Vec<OptimiseSpec> = seeds
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let mut spec = base.clone();
            spec.seed = s;
            if i > 0 {
                spec.shared = SharedTrajectory::None;
            }
            spec
        })
        .collect();
    optimise_many(&specs, &|_| {})
}

/// The trajectories of estimator `id` over the reports (one per seed).
pub fn of<'a>(reports: &'a [OptimiseReport], id: &str) -> Vec<&'a Trajectory> {
    reports
        .iter()
        .flat_map(|r| r.trajectories.iter().filter(|t| t.estimator == id))
        .collect()
}

/// One point of a curve summarised over seeds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// The step.
    pub step: f64,
    /// Mean over seeds.
    pub mean: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

/// `value` at each evaluation, summarised over the trajectories (which share their steps).
pub fn spread(trajs: &[&Trajectory], value: impl Fn(&EvalPoint) -> f64) -> Vec<Spread> {
    let Some(first) = trajs.first() else {
        return Vec::new();
    };
    (0..first.points.len())
        .map(|i| {
            let vals: Vec<f64> = trajs
                .iter()
                .filter_map(|t| t.points.get(i).map(&value))
                .collect();
            let (mean, min, max) = super::claims::mean_min_max(&vals);
            Spread {
                step: f64::from(first.points[i].step),
                mean,
                min,
                max,
            }
        })
        .collect()
}

/// A figure line through the means, with the band from minimum to maximum.
pub fn band_series(style: &str, label: &str, s: &[Spread]) -> Series {
    Series {
        style: style.to_string(),
        label: label.to_string(),
        points: s.iter().map(|p| (p.step, p.mean)).collect(),
        band: s.iter().map(|p| (p.step, p.min, p.max)).collect(),
        dashed: false,
    }
}

/// The header of [`trajectory_rows`].
pub const TRAJECTORY_HEADER: &str =
    "setting,estimator,seed,step,objective,objective_kind,probability,variance,seconds,loss_evaluations\n";

/// One row per evaluation of every trajectory of `reports`: the objective, the first tracked
/// probability, the trajectory's own variance (where recorded), the clock.
pub fn trajectory_rows(setting: &str, reports: &[OptimiseReport], csv: &mut String) {
    for t in reports.iter().flat_map(|r| &r.trajectories) {
        for p in &t.points {
            let own = p
                .variances
                .iter()
                .find(|v| v.estimator == t.estimator)
                .map_or(String::new(), |v| v.variance.to_string());
            csv.push_str(&format!(
                "{},{},{},{},{},{},{},{},{:.6},{}\n",
                csv_field(setting),
                t.estimator,
                t.seed,
                p.step,
                p.objective,
                if p.objective_kind == crate::oracle::ExactKind::Exact {
                    "exact"
                } else {
                    "reference"
                },
                p.probabilities
                    .first()
                    .map_or(String::new(), |v| v.to_string()),
                own,
                p.seconds,
                p.loss_evaluations
            ));
        }
    }
}

/// The header of [`shared_rows`].
pub const SHARED_HEADER: &str = "setting,driver,seed,step,estimator,variance,method\n";

/// One row per (evaluation, estimator) of the shared trajectories of `reports`.
pub fn shared_rows(setting: &str, reports: &[OptimiseReport], csv: &mut String) {
    for t in reports.iter().filter_map(|r| r.shared.as_ref()) {
        for p in &t.points {
            for v in &p.variances {
                csv.push_str(&format!(
                    "{},{},{},{},{},{},{:?}\n",
                    csv_field(setting),
                    t.estimator,
                    t.seed,
                    p.step,
                    v.estimator,
                    v.variance,
                    v.method
                ));
            }
        }
    }
}

/// Per estimator: the final objective and probability of every seed, its warm-up, its cost.
pub fn finals_json(reports: &[OptimiseReport], ids: &[&str]) -> Value {
    let per: Vec<Value> = ids
        .iter()
        .map(|id| {
            let trajs = of(reports, id);
            json!({
                "estimator": id,
                "seeds": trajs.iter().map(|t| t.seed).collect::<Vec<_>>(),
                "final_objective": trajs.iter().map(|t| t.last().objective).collect::<Vec<_>>(),
                "final_probabilities": trajs.iter().map(|t| t.last().probabilities.clone()).collect::<Vec<_>>(),
                "seconds": trajs.iter().map(|t| t.last().seconds).collect::<Vec<_>>(),
                "loss_evaluations": trajs.iter().map(|t| t.last().loss_evaluations).collect::<Vec<_>>(),
                "loss_evaluations_per_step": trajs.first().map(|t| t.loss_evaluations_per_step),
                "warm_up": trajs.first().and_then(|t| t.warm_up.as_ref().map(|w| w.last.clone())),
            })
        })
        .collect();
    Value::Array(per)
}

/// The configuration of a spec, for `data.json`.
pub fn spec_json(spec: &OptimiseSpec, seeds: &[u64]) -> Value {
    json!({
        "problem": spec.problem.to_json(),
        "loss": spec.loss.name(),
        "estimators": spec.estimators.iter().map(|e| e.id()).collect::<Vec<_>>(),
        "optimiser": spec.optimiser.name(),
        "learning_rate": spec.learning_rate,
        "steps": spec.steps,
        "samples": spec.samples,
        "eval_every": spec.eval_every,
        "variance_reps": spec.variance_reps,
        "direction": spec.direction,
        "tau": spec.tau,
        "warmup": spec.settings.warmup,
        "rewarm_every": spec.rewarm_every,
        "seeds": seeds,
    })
}
