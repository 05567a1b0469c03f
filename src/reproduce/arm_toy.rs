//! `arm-toy`: Yin and Zhou 2019 (ARM), Fig. 1. One Bernoulli, *maximise* `E (z - p0)^2` for
//! `p0` in {0.49, 0.499, 0.501, 0.51} with Adam from `p(z=1) = 1/2`: the optimum is
//! `p(z = 1) = 1` when `p0 < 1/2` and 0 when `p0 > 1/2`, and the figure shows each estimator's
//! probability trajectory. Settings and runs: [`super::toy`].

use serde_json::json;

use super::claims::Claim;
use super::figure::{LineFigure, Panel};
use super::runs::band_series;
use super::toy::{self, ToyRuns, ToySetting};
use super::{Options, Outcome};
use crate::error::Result;
use crate::optimise::Direction;

/// The paper's four targets.
pub const TARGETS: [f64; 4] = [0.49, 0.499, 0.501, 0.51];
const HEADLINE: [&str; 6] = ["exact", "reinforce", "arsm", "disarm", "rebar", "relax"];

fn setting(target: f64, quick: bool) -> ToySetting {
    ToySetting {
        target,
        direction: Direction::Maximise,
        steps: if quick { 400 } else { 2000 },
        eval_every: if quick { 10 } else { 20 },
        learning_rate: 0.01,
        seeds: 10,
        rewarm_every: if quick { 100 } else { 250 },
        shared: false,
        only: if quick {
            vec!["exact", "reinforce", "disarm"]
        } else {
            Vec::new()
        },
    }
}

fn figure(all: &[ToyRuns], ids: &[&str], stem: &str, title: &str) -> LineFigure {
    let panels = all
        .iter()
        .map(|r| Panel {
            title: format!(
                "p0 = {} (optimum p(z = 1) = {})",
                r.setting.target,
                r.optimal_probability()
            ),
            x_label: "Adam steps".into(),
            y_label: "p(z = 1)".into(),
            log_y: false,
            y_range: Some((0.0, 1.0)),
            series: ids
                .iter()
                .filter(|id| r.ids.contains(id))
                .map(|id| band_series(id, &toy::label(id), &r.probability(id)))
                .collect(),
            references: vec![],
            x_names: vec![],
        })
        .collect();
    LineFigure {
        stem: stem.into(),
        title: title.into(),
        columns: 2,
        panels,
        note: format!(
            "Lines: mean over {} seeds; bands: smallest to largest seed.",
            all.first().map_or(0, |r| r.setting.seeds)
        ),
    }
}

/// Runs the experiment.
///
/// # Errors
/// The optimiser's.
pub fn run(options: &Options) -> Result<Outcome> {
    let all: Vec<ToyRuns> = TARGETS
        .iter()
        .map(|&t| toy::run(&setting(t, options.quick)))
        .collect::<Result<_>>()?;
    let mut csv = String::from(super::runs::TRAJECTORY_HEADER);
    let mut unused = String::new();
    let data: Vec<_> = all
        .iter()
        .map(|r| r.data(&format!("p0={}", r.setting.target), &mut csv, &mut unused))
        .collect();
    let s = &all[0].setting;
    let mut claims = Vec::new();
    for r in &all {
        let opt = r.optimal_probability();
        let right_side: Vec<bool> = super::runs::of(&r.reports, "disarm")
            .iter()
            .map(|t| (t.last().probabilities[0] - opt).abs() < 0.5)
            .collect();
        claims.push(Claim::sign_test(
            format!(
                "p0 = {}: DisARM ends on the optimum's side (|p(z = 1) − {opt}| < 1/2) after {} steps",
                r.setting.target, s.steps
            ),
            &right_side,
            9,
        ));
    }
    for r in all
        .iter()
        .filter(|r| (r.setting.target - 0.5).abs() < 0.005)
    {
        claims.push(Claim::sign_test(
            format!(
                "p0 = {}: DisARM ends closer to the optimum than REINFORCE after {} steps",
                r.setting.target, s.steps
            ),
            &r.closer("disarm", "reinforce"),
            8,
        ));
    }
    let mut figures = vec![figure(
        &all,
        if options.quick {
            &["exact", "reinforce", "disarm"]
        } else {
            &HEADLINE
        },
        "probability",
        "ARM's toy: maximise E(z − p0)², one Bernoulli, Adam: p(z = 1) along training",
    )];
    if !options.quick {
        let ids: Vec<&str> = all[0].ids.clone();
        figures.push(figure(
            &all,
            &ids,
            "probability-all",
            "ARM's toy, every estimator defined on one Bernoulli",
        ));
    }
    let mut measured = String::new();
    for r in &all {
        measured.push_str(&format!(
            "**p0 = {}** (maximised; the optimum is E f = {:.6} at p(z = 1) = {}):\n\n{}\n",
            r.setting.target,
            r.optimum(),
            r.optimal_probability(),
            r.table()
        ));
    }
    Ok(Outcome {
        figures,
        csv,
        json: json!({ "runs": data }),
        setting: format!(
            "One Bernoulli variable with free logits `[0, 0]` and `f(z) = (z − p0)²` (`pnorm`, p = 2; the named problem `arm-toy` is `p0 = 0.49`), *maximised* for each `p0` in {{0.49, 0.499, 0.501, 0.51}} with Adam (learning rate {}) for {} steps from `p(z = 1) = 1/2`, one draw per step (RLOO two), the same Philox draws for every estimator, {} seeds, an evaluation every {} steps. Estimators: {}.",
            s.learning_rate,
            s.steps,
            s.seeds,
            s.eval_every,
            all[0].ids.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ")
        ),
        paper_reports: "Yin and Zhou (2019), Fig. 1: maximising `E (z − p0)²` for `p0` in {0.49, 0.499, 0.501, 0.51}, ARM's probability trajectories move to the optimum (1 for `p0 < 0.5`, 0 above) almost as fast as the true gradient in all four cases, while REINFORCE, REBAR and RELAX are slower and noisier, and close to `p0 = 0.5` (0.499, 0.501) can stall or head the wrong way.".into(),
        measured,
        differences: "- mcgrad has ARM's successors rather than ARM itself: `disarm` (Dong et al. 2020, ARM's antithetic pair with the common part removed, lower variance than ARM) and `arsm` (the categorical generalisation of ARM, which on two categories is an ARM-type estimator).\n- Two free logits instead of one (Adam moves their difference twice as fast); the paper's learning rate is not restated here: mcgrad uses Adam at 0.01, the REBAR/RELAX toys' setting.\n- REBAR and RELAX are tuned in periodic warm-ups rather than online.".into(),
        claims,
    })
}
