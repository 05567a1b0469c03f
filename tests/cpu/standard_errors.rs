//! Standard errors that come from the sample alone are reported as unreliable where a
//! category is too rare for the run to have seen its share of the variance (issue 12, item
//! 11). The score-function family's standard errors are floored by the exact (or reference)
//! variance, which sums over every category with its exact probability; the relaxed family's
//! (`gumbel-softmax`, `st-gumbel`, ...) have no closed form, so their records carry
//! `se_warning` instead, naming the category, whenever it is expected fewer than
//! `MIN_EXPECTED_DRAWS` times in the cell's R x S draws. Seeded, deterministic.

use mcgrad::engine::{run_sweep, CpuEngine, SweepSpec};
use mcgrad::estimators::{self, Settings};
use mcgrad::loss::Loss;
use mcgrad::problem::Problem;
use mcgrad::record::{rare_category_warning, records, Record, MIN_EXPECTED_DRAWS};

/// One variable of three categories, the last one rare: p about (0.57, 0.43, 1.2e-5).
fn rare_class_problem() -> Problem {
    let mut p = Problem::free_logits(1, 3, vec![0.3, 0.0, -11.0]);
    p.t = vec![0.2, 0.9, 0.5];
    p
}

fn sweep(samples: u32, reps: u32) -> Vec<Record> {
    let spec = SweepSpec {
        problem: rare_class_problem(),
        losses: vec![Loss::Squared],
        estimators: ["reinforce", "rloo", "gumbel-softmax", "st-gumbel"]
            .iter()
            .map(|id| estimators::by_id(id).unwrap())
            .collect(),
        samples: vec![samples],
        reps,
        seed: 5,
        tau: 1.0,
        settings: Settings::default(),
    };
    records(
        &spec,
        &run_sweep(&spec, &CpuEngine::new(0).unwrap(), &|_| {}).unwrap(),
    )
}

fn warning<'a>(recs: &'a [Record], id: &str) -> Option<&'a str> {
    recs.iter()
        .find(|r| r.estimator == id)
        .unwrap()
        .se_warning
        .as_deref()
}

#[test]
fn sample_only_standard_errors_on_a_rare_class_are_reported_as_unreliable() {
    // R x S = 40 000 draws: the rare class is expected 0.5 times.
    let recs = sweep(2, 20_000);
    for id in ["gumbel-softmax", "st-gumbel"] {
        let w = warning(&recs, id).unwrap_or_else(|| panic!("{id}: no warning"));
        assert!(w.contains("category 2 of variable 0"), "{id}: {w}");
    }
    // Floored by their exact variance: sound.
    for id in ["reinforce", "rloo"] {
        assert_eq!(warning(&recs, id), None, "{id}");
    }
    // R x S = 5 120 000 draws: the rare class is expected about 60 times: no warning.
    let recs = sweep(256, 20_000);
    for id in ["gumbel-softmax", "st-gumbel", "reinforce", "rloo"] {
        assert_eq!(warning(&recs, id), None, "{id}");
    }
}

#[test]
fn the_warning_threshold_is_the_expected_count_of_the_rarest_category() {
    let p = [0.5, 0.5 - 1e-6, 1e-6, 0.7, 0.3, 0.0];
    // Two variables of three; the zero-probability category is never drawn, so it is no risk.
    let at = |draws: u32| rare_category_warning(&p, 3, 1, draws);
    let limit = (MIN_EXPECTED_DRAWS / 1e-6) as u32;
    assert!(at(limit - 1000).is_some_and(|w| w.contains("category 2 of variable 0")));
    assert!(at(limit + 1000).is_none());
}
