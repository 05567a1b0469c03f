//! Proof that `mcgrad check` can fail and does not cry wolf: faults injected through the
//! library-only `mcgrad::faults` switch (an estimator made 2x noisier, an unbiased one given a
//! small bias, a hot path slowed 2x) are each caught, and unchanged code passes 20
//! consecutive checks with 20 different seeds. One test function, because faults are
//! process-wide.

use mcgrad::check::{default_spec, run_check, Baseline, CheckOptions, CheckReport};
use mcgrad::faults::{self, Faults};

fn options(seed: u64) -> CheckOptions {
    CheckOptions {
        seed,
        threads: 0,
        speed_repeats: 5,
        speed: true,
    }
}

fn regressed<'a>(report: &'a CheckReport, kind: &str) -> Vec<&'a str> {
    report
        .findings
        .iter()
        .filter(|f| f.regressed && f.kind == kind)
        .map(|f| f.subject.as_str())
        .collect()
}

#[test]
fn check_catches_regressions_and_passes_unchanged_code() {
    faults::clear();
    let baseline = Baseline::measure(&default_spec(1000), &options(1000)).unwrap();
    assert_eq!(baseline.speed.len(), 2);

    // Unchanged code: 20 consecutive checks, each with its own seed, all pass.
    for seed in 1..=20 {
        let report = run_check(&baseline, &options(seed)).unwrap();
        assert!(
            !report.regressed(),
            "seed {seed}: false alarm\n{}",
            report.table()
        );
    }

    // An estimator made 2x noisier (variance x 2, mean unchanged) is caught, and only it.
    faults::set(Faults {
        variance_factor: Some(("muprop".into(), 2.0)),
        ..Faults::default()
    });
    let report = run_check(&baseline, &options(77)).unwrap();
    let noisy = regressed(&report, "variance");
    assert!(
        !noisy.is_empty(),
        "2x variance not caught\n{}",
        report.table()
    );
    assert!(noisy.iter().all(|s| s.contains("/muprop/")), "{noisy:?}");

    // An unbiased estimator given a small bias (2% of the gradient's norm on one coordinate).
    faults::set(Faults {
        bias: Some(("rloo".into(), 0.02)),
        ..Faults::default()
    });
    let report = run_check(&baseline, &options(78)).unwrap();
    let biased = regressed(&report, "bias");
    assert!(!biased.is_empty(), "bias not caught\n{}", report.table());
    assert!(biased.iter().all(|s| s.contains("/rloo/")), "{biased:?}");

    // A hot path slowed 2x.
    faults::set(Faults {
        slowdown: Some(("score-function".into(), 2)),
        ..Faults::default()
    });
    let report = run_check(&baseline, &options(79)).unwrap();
    faults::clear();
    assert_eq!(
        regressed(&report, "speed"),
        vec!["cpu/score-function"],
        "{}",
        report.table()
    );
}
