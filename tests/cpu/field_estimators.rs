//! The field's score-function estimators (`arsm`, `disarm`, `unordered-set`, `sum-and-sample`,
//! `indecater`) against their exact oracles on problems with several variables: Monte Carlo
//! means against the exact gradient, Monte Carlo variances against the exact variances where
//! an estimator gives them, their cost in loss evaluations, their refusals (exit 2), the
//! set-probability quadrature of `unordered-set` against a sum over orderings, and
//! reproducibility whatever the thread count (their own noise comes from counters).
//!
//! Significance: every Monte Carlo comparison uses 5 standard errors, a two-sided false-alarm
//! probability of 5.7e-7 for one normal comparison. The tests here make fewer than 2,000 such
//! comparisons, so with a Bonferroni correction the whole file would pass for a fresh seed
//! with probability above 0.998; the seeds are fixed, so it is never flaky.

#![allow(clippy::needless_range_loop)]

use std::process::Command;

use mcgrad::engine::{run_sweep, CpuEngine, SweepSpec};
use mcgrad::estimators::{self, set_integrals, Context, Disarm, Settings};
use mcgrad::loss::Loss;
use mcgrad::philox::PhiloxStream;
use mcgrad::problem::Problem;
use mcgrad::problems;
use mcgrad::record::{records, Record};
use mcgrad::stats::variance_se;

/// Free logits `U[-1.2, 1.2)` for L variables of K categories, from a seed.
fn logits(seed: u64, l: usize, k: usize) -> Vec<f64> {
    let mut rng = PhiloxStream::new(seed, 9, 0);
    (0..l * k).map(|_| 2.4 * rng.next_f64() - 1.2).collect()
}

/// L variables of K categories under the `table` loss, values `U[-2, 3)`: not separable, so
/// the oracles enumerate the K^L configurations.
fn table_problem(seed: u64, l: usize, k: usize) -> Problem {
    let mut p = Problem::free_logits(l, k, logits(seed, l, k));
    let mut rng = PhiloxStream::new(seed, 9, 1);
    p.table = (0..k.pow(l as u32))
        .map(|_| 5.0 * rng.next_f64() - 2.0)
        .collect();
    p
}

/// L binary variables under `pnorm` with `b_l = 0.45`, p = 2 (separable: closed forms).
fn binary_pnorm(seed: u64, l: usize) -> Problem {
    let mut p = Problem::free_logits(l, 2, logits(seed, l, 2));
    p.b = vec![0.45; l];
    p.exponent = 2.0;
    p
}

fn sweep(
    problem: &Problem,
    loss: Loss,
    ids: &[&str],
    samples: &[u32],
    reps: u32,
    settings: Settings,
    threads: usize,
) -> Vec<Record> {
    let spec = SweepSpec {
        problem: problem.clone(),
        losses: vec![loss],
        estimators: ids
            .iter()
            .map(|id| estimators::by_id(id).unwrap())
            .collect(),
        samples: samples.to_vec(),
        reps,
        seed: 7,
        tau: 1.0,
        settings,
    };
    let points = run_sweep(&spec, &CpuEngine::new(threads).unwrap(), &|_| {}).unwrap();
    records(&spec, &points)
}

fn context(problem: &Problem, loss: Loss, settings: &Settings) -> Context {
    let mut ctx = Context::new(problem, loss, 1.0);
    ctx.settings = settings.clone();
    ctx
}

/// Checks a record of an unbiased estimator: its mean against the exact gradient and, where
/// the estimator gives exact moments, its variance against them. Returns whether exact
/// variances were compared; a failure is added to `failures` (every one is reported, not only
/// the first).
fn check_unbiased(r: &Record, ctx: &Context, failures: &mut Vec<String>) -> bool {
    let est = estimators::by_id(&r.estimator).unwrap();
    let n = f64::from(r.reps);
    let exact = est.exact_moments(ctx, r.samples);
    // Rounding of a zero-variance estimate, at the scale of the loss.
    let tiny = 1e-12 * (ctx.fbar.abs() + 1.0);
    for j in 0..ctx.dim() {
        // The exact variance keeps the error honest where a sample variance misses rare draws.
        let exact_se = exact.as_ref().map_or(0.0, |m| (m.var[j] / n).sqrt());
        let se = r.mean_se[j].max(exact_se);
        let diff = (r.mean[j] - ctx.grad[j]).abs();
        check(
            failures,
            diff <= 5.0 * se + tiny,
            format!(
                "{} {} S={} coord {j}: mean {} vs exact {} ({:.1} SE)",
                r.estimator,
                r.loss,
                r.samples,
                r.mean[j],
                ctx.grad[j],
                diff / se
            ),
        );
    }
    let Some(exact) = exact else { return false };
    for j in 0..ctx.dim() {
        check(
            failures,
            (exact.mean[j] - ctx.grad[j]).abs() <= 1e-10 * (ctx.grad[j].abs() + tiny),
            format!(
                "{} exact mean {j}: {} vs {}",
                r.estimator, exact.mean[j], ctx.grad[j]
            ),
        );
        let se = match &exact.m4 {
            Some(m4) => variance_se(m4[j], exact.var[j], n),
            None => r.var_se[j],
        };
        let diff = (r.var[j] - exact.var[j]).abs();
        check(
            failures,
            diff <= 5.0 * se + tiny * tiny,
            format!(
                "{} {} S={} coord {j}: var {} vs exact {} (se {se})",
                r.estimator, r.loss, r.samples, r.var[j], exact.var[j]
            ),
        );
    }
    true
}

fn check(failures: &mut Vec<String>, ok: bool, message: String) {
    if !ok {
        failures.push(message);
    }
}

fn assert_none(failures: &[String]) {
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const CATEGORICAL: [&str; 4] = ["arsm", "unordered-set", "sum-and-sample", "indecater"];

#[test]
fn categorical_estimators_are_unbiased_with_exact_variances_on_a_table_problem() {
    // L = 3, K = 3, a table loss: every estimator's exact variance is enumerable (but ARSM's,
    // whose Dirichlet noise is continuous).
    let problem = table_problem(1, 3, 3);
    let mut failures = Vec::new();
    for rb_k in [1, 2] {
        let settings = Settings {
            rb_k,
            ..Default::default()
        };
        let ctx = context(&problem, Loss::Table, &settings);
        let recs = sweep(
            &problem,
            Loss::Table,
            &CATEGORICAL,
            &[1, 2, 5],
            20_000,
            settings,
            0,
        );
        assert_eq!(recs.len(), 12);
        for r in &recs {
            let compared = check_unbiased(r, &ctx, &mut failures);
            assert_eq!(
                compared,
                r.estimator != "arsm",
                "{} S={}",
                r.estimator,
                r.samples
            );
            assert!(r.total_var_w > 1e-6, "{} has variance here", r.estimator);
        }
    }
    assert_none(&failures);
}

#[test]
fn categorical_estimators_are_unbiased_on_indecater_12x3() {
    // Twelve variables of three categories under pnorm (p = 1), the IndeCateR paper's setup.
    let named = problems::by_name("indecater-12x3").unwrap();
    let problem = (named.build)(3);
    let settings = Settings::default();
    let ctx = context(&problem, Loss::Pnorm, &settings);
    let mut failures = Vec::new();
    let recs = sweep(
        &problem,
        Loss::Pnorm,
        &CATEGORICAL,
        &[1, 4],
        6_000,
        settings,
        0,
    );
    for r in &recs {
        let compared = check_unbiased(r, &ctx, &mut failures);
        // IndeCateR is exact on a separable loss; sum-and-sample's variance is enumerated.
        match r.estimator.as_str() {
            "indecater" => {
                assert!(compared && r.exact_var.as_ref().unwrap().iter().all(|v| *v == 0.0));
                assert!(r.var.iter().all(|v| *v < 1e-25), "{:?}", r.var);
            }
            "sum-and-sample" => assert!(compared),
            _ => {}
        }
    }
    assert_none(&failures);
}

#[test]
fn disarm_is_unbiased_with_exact_variances_on_binary_problems() {
    // A table loss on 4 binary variables (enumerated states) and pnorm on 8 (closed form).
    let table = table_problem(4, 4, 2);
    let pnorm = binary_pnorm(5, 8);
    let mut failures = Vec::new();
    for (problem, loss) in [(table, Loss::Table), (pnorm, Loss::Pnorm)] {
        let ctx = context(&problem, loss, &Settings::default());
        let recs = sweep(
            &problem,
            loss,
            &["disarm", "arsm", "indecater"],
            &[1, 3],
            20_000,
            Settings::default(),
            0,
        );
        for r in &recs {
            let compared = check_unbiased(r, &ctx, &mut failures);
            if r.estimator == "disarm" {
                assert!(compared, "disarm has exact moments on {loss}");
                assert_eq!(r.loss_evaluations, 2.0 * f64::from(r.samples));
            }
        }
    }
    assert_none(&failures);
}

#[test]
fn disarm_closed_form_matches_enumeration() {
    let problem = binary_pnorm(6, 7);
    let ctx = Context::new(&problem, Loss::Pnorm, 1.0);
    for s in [1, 4] {
        let closed = Disarm.separable_moments(&ctx, s).unwrap();
        let enumerated = Disarm.enumerated_moments(&ctx, s).unwrap();
        for j in 0..ctx.dim() {
            assert!(
                (closed.var[j] - enumerated.var[j]).abs() < 1e-12 * enumerated.var[j] + 1e-20,
                "S={s} coord {j}: {} vs {}",
                closed.var[j],
                enumerated.var[j]
            );
            assert!((enumerated.mean[j] - ctx.grad[j]).abs() < 1e-12);
        }
    }
}

/// `p(S)` by summing over the orderings of S: `prod_i p_{o_i} / (mass not yet drawn)`, the
/// mass summed over the undrawn categories directly (not `1 - drawn`, which cancels).
fn set_probability_by_orderings(p: &[f64], set: &[usize]) -> f64 {
    fn walk(p: &[f64], left: &mut Vec<usize>, drawn: &mut Vec<bool>) -> f64 {
        if left.is_empty() {
            return 1.0;
        }
        let rest: f64 = (0..p.len()).filter(|&c| !drawn[c]).map(|c| p[c]).sum();
        let mut total = 0.0;
        for i in 0..left.len() {
            let c = left.remove(i);
            drawn[c] = true;
            total += p[c] / rest * walk(p, left, drawn);
            drawn[c] = false;
            left.insert(i, c);
        }
        total
    }
    walk(p, &mut set.to_vec(), &mut vec![false; p.len()])
}

#[test]
fn set_probabilities_match_the_sum_over_orderings() {
    // Spread, peaked and rare probabilities; sets of 1 to 5 items; the leave-one-out and
    // leave-two-out integrals are set probabilities of renormalised distributions.
    let cases: Vec<Vec<f64>> = vec![
        vec![0.1, 0.2, 0.3, 0.15, 0.25],
        vec![0.9, 0.05, 0.03, 0.019, 1e-3],
        vec![0.5, 0.3, 0.2 - 2e-9, 1e-9, 1e-9],
        vec![0.12, 0.08, 0.3, 0.1, 0.05, 0.2, 0.15],
    ];
    for p in &cases {
        let n = p.len();
        for k in 1..n {
            for start in 0..n {
                let set: Vec<usize> = (0..k).map(|i| (start + i) % n).collect();
                let q: f64 = (0..n).filter(|c| !set.contains(c)).map(|c| p[c]).sum();
                let alpha: Vec<f64> = set.iter().map(|&c| p[c] / q).collect();
                let sets = set_integrals(&alpha);
                let want = set_probability_by_orderings(p, &set);
                let got = sets.probability();
                assert!(
                    (got - want).abs() < 1e-10 * want,
                    "p(S) {set:?} of {p:?}: {got} vs {want}"
                );
                let scale = sets.log_scale.exp();
                for (i, &s) in set.iter().enumerate() {
                    // p^{D\s}(S \ s): renormalise without s.
                    let renorm: Vec<f64> = (0..n)
                        .map(|c| if c == s { 0.0 } else { p[c] / (1.0 - p[s]) })
                        .collect();
                    let rest: Vec<usize> = set.iter().copied().filter(|&c| c != s).collect();
                    let want = set_probability_by_orderings(&renorm, &rest);
                    let got = sets.without_one[i] * scale;
                    assert!(
                        (got - want).abs() < 1e-10 * want,
                        "leave {s} out: {got} vs {want}"
                    );
                    for (j, &t) in set.iter().enumerate().filter(|&(j, _)| j != i) {
                        let renorm: Vec<f64> = (0..n)
                            .map(|c| {
                                if c == s || c == t {
                                    0.0
                                } else {
                                    p[c] / (1.0 - p[s] - p[t])
                                }
                            })
                            .collect();
                        let rest: Vec<usize> =
                            set.iter().copied().filter(|&c| c != s && c != t).collect();
                        let want = set_probability_by_orderings(&renorm, &rest);
                        let got = sets.without_two[i * k + j] * scale;
                        assert!(
                            (got - want).abs() < 1e-10 * want,
                            "leave {s},{t} out: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn costs_are_counted_in_loss_evaluations() {
    let named = problems::by_name("indecater-6x10").unwrap();
    let problem = (named.build)(0);
    let settings = Settings {
        rb_k: 3,
        ..Default::default()
    };
    let ctx = context(&problem, Loss::Pnorm, &settings);
    let cost = |id: &str, s: u32| estimators::by_id(id).unwrap().loss_evaluations(&ctx, s);
    assert_eq!(cost("indecater", 64), 64.0 * 6.0 * 10.0);
    assert_eq!(cost("sum-and-sample", 64), 64.0 * 6.0 * 4.0);
    assert_eq!(cost("unordered-set", 4), 6.0 * 4.0);
    assert_eq!(cost("unordered-set", 64), 6.0 * 10.0);
    // ARSM: between the draw alone and every swap distinct, and the same on every call.
    let per_draw = cost("arsm", 1);
    assert!(per_draw > 1.0 && per_draw <= 1.0 + 45.0, "{per_draw}");
    assert_eq!(cost("arsm", 8), 8.0 * per_draw);
    // One variable: sum-and-sample sums k once per estimate.
    let seed = Problem::seeded(2, 20, 10);
    let ctx1 = context(&seed, Loss::Squared, &settings);
    let sas = estimators::by_id("sum-and-sample").unwrap();
    assert_eq!(sas.loss_evaluations(&ctx1, 16), 3.0 + 16.0);
    // ... and the records carry it, with the work-normalised variance.
    let recs = sweep(
        &problem,
        Loss::Pnorm,
        &["indecater", "sum-and-sample"],
        &[2],
        50,
        settings,
        0,
    );
    for r in &recs {
        assert_eq!(r.loss_evaluations, cost(&r.estimator, 2));
        assert!((r.work_var_w - r.total_var_w * r.loss_evaluations).abs() <= 1e-12 * r.work_var_w);
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    // Every estimator draws its own noise from counters, never from a thread's generator.
    let problem = table_problem(8, 3, 3);
    let ids = CATEGORICAL;
    let one = sweep(
        &problem,
        Loss::Table,
        &ids,
        &[3],
        64,
        Settings::default(),
        1,
    );
    let two = sweep(
        &problem,
        Loss::Table,
        &ids,
        &[3],
        64,
        Settings::default(),
        2,
    );
    for (a, b) in one.iter().zip(&two) {
        assert_eq!(a.mean, b.mean, "{}", a.estimator);
        assert_eq!(a.var, b.var, "{}", a.estimator);
    }
    let binary = table_problem(8, 3, 2);
    let one = sweep(
        &binary,
        Loss::Table,
        &["disarm"],
        &[3],
        64,
        Settings::default(),
        1,
    );
    let two = sweep(
        &binary,
        Loss::Table,
        &["disarm"],
        &[3],
        64,
        Settings::default(),
        2,
    );
    assert_eq!(one[0].mean, two[0].mean);
}

#[test]
fn disarm_refuses_more_than_two_categories_with_exit_2() {
    let ctx = Context::new(&table_problem(1, 3, 3), Loss::Table, 1.0);
    let err = estimators::by_id("disarm")
        .unwrap()
        .check(&ctx)
        .unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("K = 2"), "{err}");
    // The others are defined on any K and on the table loss (no relaxation needed).
    for id in CATEGORICAL {
        estimators::by_id(id).unwrap().check(&ctx).unwrap();
    }
    let binary = Context::new(&table_problem(1, 3, 2), Loss::Table, 1.0);
    estimators::by_id("disarm").unwrap().check(&binary).unwrap();
}

fn mcgrad(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mcgrad"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_command_line_runs_them_and_refuses_disarm_on_k_10() {
    let out = mcgrad(&[
        "run",
        "--estimators",
        "disarm",
        "--samples",
        "1",
        "--reps",
        "10",
        "--out",
        "/nonexistent/never-written",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("K = 2"));

    let dir = std::env::temp_dir().join(format!("mcgrad-field-{}", std::process::id()));
    let out = mcgrad(&[
        "run",
        "--problem",
        "indecater-12x3",
        "--estimators",
        "arsm,unordered-set,sum-and-sample,indecater",
        "--rb-k",
        "2",
        "--samples",
        "1,2",
        "--reps",
        "20",
        "--backend",
        "cpu",
        "--quiet",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let recs = summary["records"].as_array().unwrap();
    assert_eq!(recs.len(), 8);
    let sas = recs
        .iter()
        .find(|r| r["estimator"] == "sum-and-sample" && r["samples"] == 2)
        .unwrap();
    // --rb-k 2 reaches the estimator: S L (k + 1) = 2 * 12 * 3.
    assert_eq!(sas["loss_evaluations"].as_f64(), Some(72.0));
    assert!(dir.join("mse-evaluations.png").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
