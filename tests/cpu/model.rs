//! The multi-variable model against its oracles: the exact gradient against central finite
//! differences for every loss, the separable closed forms against enumeration, every
//! estimator's Monte Carlo mean and variance against the exact moments on every loss kind,
//! the toys' known figures, the lowered paths against the generic path on the same draws, a
//! Monte Carlo reference against enumeration, bad problem files, and the single-variable
//! figures against the committed reference run.
//!
//! Monte Carlo checks are seeded (never flaky) and use 5 standard errors: a false-alarm
//! probability of 5.7e-7 per normal comparison, so the ~2,000 comparisons here would all pass
//! with probability above 0.998 for a fresh seed.

// Index loops keep the formulas comparable to docs/estimators.md.
#![allow(clippy::needless_range_loop)]

use mcgrad::draws::{draw_joint_categories, CategoricalTable, JointRelaxedTable, RelaxedTable};
use mcgrad::engine::{run_sweep, CpuEngine, SweepSpec};
use mcgrad::estimators::{
    self, estimate_from_joint_counts, fill_joint_counts, uses_counts, uses_joint_counts,
    uses_relaxed_sums, Context, JointCounts, JointDraws, Lowering, Noise, RelaxedBatch,
    RelaxedMoments, Signal, REGISTRY,
};
use mcgrad::loss::Loss;
use mcgrad::oracle::{self, ExactKind, Method};
use mcgrad::problem::{Decoder, Problem};
use mcgrad::problems;
use mcgrad::record::{records, Record};
use mcgrad::stats::variance_se;

/// Three variables of three categories with every loss's data, probabilities well spread.
fn small_problem() -> Problem {
    let (l, k) = (3, 3);
    let logits = vec![0.3, -0.2, 0.5, 1.0, 0.0, -0.7, -0.4, 0.6, 0.1];
    let mut p = Problem::free_logits(l, k, logits);
    p.t = (0..l * k).map(|i| (i as f64 * 0.73).sin().abs()).collect();
    p.b = vec![0.4, 1.7, 1.0];
    p.exponent = 1.5;
    p.decoder = Some(Decoder {
        h: 4,
        v: (0..4 * l * k).map(|i| (i as f64 * 0.41).cos()).collect(),
        c: vec![0.2, -0.3, 0.1, 0.0],
        target: vec![1.0, 0.0, 1.0, 0.0],
    });
    p.table = (0..27).map(|i| (f64::from(i) * 0.37).sin() * 2.0).collect();
    p
}

/// `E f` by brute-force enumeration, written independently of the oracles.
fn brute_objective(problem: &Problem, loss: Loss) -> f64 {
    let ctx = Context::new(problem, loss, 1.0);
    let (l, k) = (problem.l, problem.k);
    let mut total = 0.0;
    for index in 0..k.pow(l as u32) {
        let mut z = vec![0u32; l];
        let mut rest = index;
        for var in (0..l).rev() {
            z[var] = (rest % k) as u32;
            rest /= k;
        }
        let prob: f64 = (0..l).map(|v| ctx.p[v * k + z[v] as usize]).product();
        total += prob * ctx.objective.at_vertex(&z);
    }
    total
}

fn sweep(problem: &Problem, loss: Loss, ids: &[&str], samples: &[u32], reps: u32) -> Vec<Record> {
    let spec = SweepSpec {
        problem: problem.clone(),
        losses: vec![loss],
        estimators: ids
            .iter()
            .map(|id| estimators::by_id(id).unwrap())
            .collect(),
        samples: samples.to_vec(),
        reps,
        seed: 17,
        tau: 1.0,
        settings: Default::default(),
    };
    let points = run_sweep(&spec, &CpuEngine::new(0).unwrap(), &|_| {}).unwrap();
    records(&spec, &points)
}

#[test]
fn exact_gradient_matches_central_differences_for_every_loss() {
    let problem = small_problem();
    for loss in Loss::ALL {
        let ctx = Context::new(&problem, loss, 1.0);
        assert_eq!(ctx.grad_kind, ExactKind::Exact);
        assert!(
            (ctx.fbar - brute_objective(&problem, loss)).abs() < 1e-12,
            "{loss}"
        );
        for i in 0..problem.dim() {
            let h = 1e-5;
            let (mut up, mut down) = (problem.clone(), problem.clone());
            up.w[i] += h;
            down.w[i] -= h;
            let fd = (brute_objective(&up, loss) - brute_objective(&down, loss)) / (2.0 * h);
            assert!(
                (fd - ctx.grad[i]).abs() < 1e-8,
                "{loss} logit {i}: finite difference {fd} vs exact {}",
                ctx.grad[i]
            );
        }
    }
}

#[test]
fn separable_closed_forms_equal_enumeration() {
    let problem = small_problem();
    for loss in [Loss::Squared, Loss::Seed, Loss::Linear, Loss::Pnorm] {
        let ctx = Context::new(&problem, loss, 1.0);
        assert_eq!(oracle::method(&ctx), Method::Separable);
        for signal in [Signal::Loss, Signal::MupropResidual] {
            for centred in [false, true] {
                let closed =
                    oracle::conditionals_by(&ctx, Method::Separable, signal, centred).unwrap();
                let enumerated =
                    oracle::conditionals_by(&ctx, Method::Enumeration, signal, centred).unwrap();
                let pairs = [
                    (&closed.mean, &enumerated.mean),
                    (&closed.central[0], &enumerated.central[0]),
                    (&closed.central[1], &enumerated.central[1]),
                    (&closed.central[2], &enumerated.central[2]),
                ];
                for (a, b) in pairs {
                    for (x, y) in a.iter().zip(b.iter()) {
                        assert!(
                            (x - y).abs() < 1e-11 * (1.0 + y.abs()),
                            "{loss} {signal:?}: {x} vs {y}"
                        );
                    }
                }
            }
        }
    }
}

fn check_mean(r: &Record, ctx: &Context, reference_var: Option<&[f64]>) {
    let n = f64::from(r.reps);
    for j in 0..ctx.dim() {
        let floor = reference_var.map_or(0.0, |v| (v[j] / n).sqrt());
        let se = r.mean_se[j].max(floor).max(1e-13);
        let z = (r.mean[j] - ctx.grad[j]).abs() / se;
        assert!(
            z < 5.0,
            "{} {} S={} coord {j}: mean off by {z:.1} SE",
            r.estimator,
            r.loss,
            r.samples
        );
    }
}

#[test]
fn monte_carlo_agrees_with_the_exact_moments_on_every_loss_kind() {
    let problem = small_problem();
    let ids = [
        "exact",
        "reinforce",
        "reinforce-ema",
        "rloo",
        "muprop",
        "muprop-c",
    ];
    for loss in Loss::ALL {
        let ctx = Context::new(&problem, loss, 1.0);
        let defined: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| estimators::by_id(id).unwrap().check(&ctx).is_ok())
            .collect();
        // The table has no extension: MuProp is refused there, and only there.
        assert_eq!(
            defined.len(),
            if loss == Loss::Table { 4 } else { 6 },
            "{loss}"
        );
        for r in sweep(&problem, loss, &defined, &[1, 4], 20_000) {
            let est = estimators::by_id(&r.estimator).unwrap();
            assert_eq!(r.variables, 3);
            assert_eq!(r.exact_kind, Some(ExactKind::Exact));
            let reference = est.reference_variance(&ctx, r.samples);
            check_mean(&r, &ctx, reference.as_deref());
            let Some(exact) = est.exact_moments(&ctx, r.samples) else {
                continue;
            };
            for j in 0..ctx.dim() {
                let se = match &exact.m4 {
                    Some(m4) => variance_se(m4[j], exact.var[j], f64::from(r.reps)),
                    None => r.var_se[j],
                };
                let diff = (r.var[j] - exact.var[j]).abs();
                assert!(
                    diff <= 5.0 * se + 1e-24,
                    "{} {} S={} coord {j}: var {} vs exact {} (se {se})",
                    r.estimator,
                    r.loss,
                    r.samples,
                    r.var[j],
                    exact.var[j]
                );
            }
        }
    }
}

#[test]
fn relaxed_estimators_show_their_bias_on_several_variables() {
    let problem = small_problem();
    for loss in [Loss::Squared, Loss::Pnorm, Loss::Decoder] {
        for r in sweep(
            &problem,
            loss,
            &["gumbel-softmax", "st-gumbel"],
            &[16],
            4000,
        ) {
            assert!(
                r.bias_p_value < 1e-6,
                "{} {}: bias p = {}",
                r.estimator,
                r.loss,
                r.bias_p_value
            );
        }
    }
}

#[test]
fn toys_have_their_known_figures() {
    let rebar = (problems::by_name("rebar-toy").unwrap().build)(0);
    let ctx = Context::new(&rebar, Loss::Pnorm, 1.0);
    // p = (1/2, 1/2), f = (0.45^2, 0.55^2): g = +-0.025.
    assert!((ctx.grad[0] + 0.025).abs() < 1e-15 && (ctx.grad[1] - 0.025).abs() < 1e-15);
    let var = estimators::by_id("reinforce")
        .unwrap()
        .exact_moments(&ctx, 1)
        .unwrap()
        .var;
    // E[f^2 (e_z - p)_j^2] - g_j^2 = (0.2025^2 + 0.3025^2) / 8 - 0.025^2 = 0.0159390625.
    for v in var {
        assert!((v - 0.015_939_062_5).abs() < 1e-15, "{v}");
    }
    let relax = (problems::by_name("relax-toy").unwrap().build)(0);
    let ctx = Context::new(&relax, Loss::Pnorm, 1.0);
    assert!((ctx.grad[0] + 0.0005).abs() < 1e-15 && (ctx.grad[1] - 0.0005).abs() < 1e-15);
}

/// A lowered estimate and the generic one on the same draws agree to rounding, at the scale
/// of the terms they sum (`f_scale`: the largest |f|, where a zero gradient is rounding noise).
fn assert_close(a: &[f64], b: &[f64], f_scale: f64, what: &str) {
    let scale = b.iter().fold(f_scale, |m, v| m.max(v.abs()));
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-12 * scale, "{what}: {x} vs {y}");
    }
}

#[test]
fn lowered_paths_equal_the_generic_path_on_the_same_draws() {
    let seed_problem = Problem::seeded(4, 784, 10);
    let rebar = (problems::by_name("rebar-toy").unwrap().build)(0);
    let cases: Vec<(Problem, Vec<Loss>)> = vec![
        (seed_problem, Loss::QUADRATIC.to_vec()),
        (rebar, vec![Loss::Pnorm]),
    ];
    let key = [7, 11];
    let (rep, point, s) = (3u32, 2u32, 37u32);
    let mut checked = 0;
    for (problem, losses) in cases {
        let k = problem.k;
        for loss in losses {
            let ctx = Context::new(&problem, loss, 0.7);
            let noise = Noise { key, rep, point };
            // Score-function draws: counts for the lowering, joint categories for the generic.
            let table = CategoricalTable::new(&ctx.p);
            let mut z = vec![0u32; s as usize];
            draw_joint_categories(std::slice::from_ref(&table), key, rep, point, s, &mut z);
            let mut counts = vec![0u32; k];
            mcgrad::draws::count_categories(&table, key, rep, point, s, &mut counts);
            let f: Vec<f64> = z.iter().map(|&c| ctx.objective.at_vertex(&[c])).collect();
            // Relaxed draws, both ways.
            let relaxed = RelaxedTable::new(&ctx.logits, ctx.tau);
            let joint = JointRelaxedTable::new(&ctx.logits, k, ctx.tau);
            let (mut y32, mut hz, mut yz) = (vec![0f32; k * 37], vec![0u32; 37], vec![0f32; 37]);
            relaxed.draw_batch(key, rep, point, 0, 37, &mut y32, &mut hz, &mut yz);
            let mut moments = RelaxedMoments::new(k);
            moments.add_batch(&RelaxedBatch {
                n: 37,
                y: &y32,
                z: &hz,
                y_z: &yz,
            });
            let (mut y, mut g, mut rz, mut h) = (
                vec![0f64; k * 37],
                vec![0f64; k * 37],
                vec![0u32; 37],
                vec![0f32; k],
            );
            for d in 0..37 {
                joint.draw(
                    key,
                    rep,
                    point,
                    d as u32,
                    &mut h,
                    &mut y[d * k..(d + 1) * k],
                    &mut g[d * k..(d + 1) * k],
                    &mut rz[d..d + 1],
                );
            }
            assert_eq!(rz, hz, "the relaxed draws' categories agree");
            for &est in REGISTRY {
                if est.check(&ctx).is_err() || s < est.min_samples() {
                    continue;
                }
                let (mut lowered, mut generic) = (vec![0.0; k], vec![0.0; k]);
                let baseline = 0.37;
                if uses_counts(est, &ctx) {
                    est.estimate_from_counts(&ctx, &counts, s, baseline, &mut lowered);
                    let draws = JointDraws {
                        s: s as usize,
                        z: &z,
                        f: &f,
                        y: &[],
                        perturbed: &[],
                        noise,
                    };
                    let signal = est.estimate(&ctx, &draws, baseline, &mut generic);
                    let lowered_signal = est.baseline_signal(&ctx, &counts, s);
                    assert_eq!(signal.is_some(), lowered_signal.is_some(), "{}", est.id());
                    if let (Some(a), Some(b)) = (signal, lowered_signal) {
                        assert!(
                            (a - b).abs() <= 1e-12 * b.abs().max(1e-12),
                            "{} signal",
                            est.id()
                        );
                    }
                } else if uses_relaxed_sums(est, &ctx) {
                    est.add_relaxed_sum(&ctx, &moments, &mut lowered);
                    lowered.iter_mut().for_each(|v| *v /= f64::from(s));
                    let draws = JointDraws {
                        s: s as usize,
                        z: &rz,
                        f: &[],
                        y: &y,
                        perturbed: &g,
                        noise,
                    };
                    est.estimate(&ctx, &draws, baseline, &mut generic);
                } else {
                    // No lowering applies here (e.g. relaxed sums under a non-quadratic loss).
                    continue;
                }
                let f_scale = ctx.f.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                assert_close(&lowered, &generic, f_scale, &format!("{} {loss}", est.id()));
                checked += 1;
            }
        }
    }
    // Every registry entry with a lowering was compared on the seed problem's three losses.
    let lowered = REGISTRY.iter().filter(|e| e.lowering().is_some()).count();
    assert!(
        checked >= 3 * lowered,
        "{checked} comparisons for {lowered} lowered estimators"
    );
    assert!(REGISTRY
        .iter()
        .any(|e| matches!(e.lowering(), Some(Lowering::Relaxed { .. }))));
}

#[test]
fn joint_counts_equal_the_generic_path_on_the_same_draws() {
    let mut problems_losses: Vec<(Problem, Loss)> =
        Loss::ALL.iter().map(|&l| (small_problem(), l)).collect();
    problems_losses.push((
        (problems::by_name("indecater-6x10").unwrap().build)(2),
        Loss::Pnorm,
    ));
    let (key, rep, point, s) = ([5, 8], 4u32, 1u32, 29u32);
    let mut checked = 0;
    for (problem, loss) in problems_losses {
        let ctx = Context::new(&problem, loss, 1.0);
        let tables: Vec<CategoricalTable> =
            ctx.p.chunks(ctx.k).map(CategoricalTable::new).collect();
        let mut z = vec![0u32; s as usize * ctx.l];
        draw_joint_categories(&tables, key, rep, point, s, &mut z);
        let f: Vec<f64> = z
            .chunks(ctx.l)
            .map(|zi| ctx.objective.at_vertex(zi))
            .collect();
        let mut buffer = vec![0.0; JointCounts::buffer_len(&ctx)];
        fill_joint_counts(&ctx, &z, &f, &mut buffer);
        let sums = JointCounts::view(&ctx, s as usize, &buffer);
        let noise = Noise { key, rep, point };
        let draws = JointDraws {
            s: s as usize,
            z: &z,
            f: &f,
            y: &[],
            perturbed: &[],
            noise,
        };
        for &est in REGISTRY {
            if !uses_joint_counts(est, &ctx) || est.check(&ctx).is_err() {
                continue;
            }
            let (mut lowered, mut generic) = (vec![0.0; ctx.dim()], vec![0.0; ctx.dim()]);
            let a = estimate_from_joint_counts(est, &ctx, &sums, 0.21, &mut lowered);
            let b = est.estimate(&ctx, &draws, 0.21, &mut generic);
            let f_scale = f.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert_close(&lowered, &generic, f_scale, &format!("{} {loss}", est.id()));
            assert_eq!(a.is_some(), b.is_some(), "{}", est.id());
            if let (Some(a), Some(b)) = (a, b) {
                assert!((a - b).abs() <= 1e-12 * f_scale, "{} signal", est.id());
            }
            checked += 1;
        }
    }
    assert!(checked >= 6 * 5 + 4, "{checked}");
}

#[test]
fn a_monte_carlo_reference_agrees_with_enumeration_and_says_it_is_one() {
    // A decoder problem small enough to enumerate: the reference must land within 5 of its
    // own standard errors of the exact gradient.
    let problem = small_problem();
    let ctx = Context::new(&problem, Loss::Decoder, 1.0);
    let reference = oracle::reference(&ctx);
    assert_eq!(reference.kind, ExactKind::Reference);
    let se = reference.se.as_ref().unwrap();
    for j in 0..ctx.dim() {
        let z = (reference.grad[j] - ctx.grad[j]).abs() / se[j];
        assert!(z < 5.0, "coord {j}: reference off by {z:.1} SE");
    }
    // vae-decoder (10^20 configurations) gets a reference, marked so, and `exact` is refused.
    let vae = (problems::by_name("vae-decoder").unwrap().build)(0);
    let ctx = Context::new(&vae, Loss::Decoder, 1.0);
    assert_eq!(ctx.grad_kind, ExactKind::Reference);
    assert!(ctx.grad_se.is_some());
    assert!(estimators::by_id("exact").unwrap().check(&ctx).is_err());
    let r = &sweep(&vae, Loss::Decoder, &["rloo"], &[8], 50)[0];
    assert_eq!(r.exact_kind, Some(ExactKind::Reference));
    assert!(r.exact_grad_se.is_some() && r.exact_var.is_none());
}

fn mcgrad(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mcgrad"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_problem_files_for_each_new_field_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            r#"{"x": [1], "w": [[0, 0, 0, 0]], "variables": 0, "b": [0]}"#,
            "pnorm",
            "`variables`",
        ),
        (
            r#"{"x": [1], "w": [[0, 0, 0]], "variables": 2, "b": [0, 0]}"#,
            "pnorm",
            "multiple of L = 2",
        ),
        (
            r#"{"x": [1], "w": [[0, 0, 0, 0]], "variables": 2, "t": [1, 2, 3]}"#,
            "squared",
            "`t`",
        ),
        (
            r#"{"x": [1], "w": [[0, 0, 0, 0]], "variables": 2, "b": [0.5]}"#,
            "pnorm",
            "`b` has 1",
        ),
        (
            r#"{"x": [1], "w": [[0, 0, 0, 0]], "variables": 2}"#,
            "pnorm",
            "needs field `b`",
        ),
        (
            r#"{"x": [1], "w": [[0, 0, 0, 0]], "variables": 2, "table": [1, 2, 3]}"#,
            "table",
            "`table` has 3",
        ),
        (
            r#"{"x": [1], "w": [[0, 0, 0, 0]], "variables": 2}"#,
            "table",
            "needs field `table`",
        ),
        (
            r#"{"x": [1], "w": [[0, 0, 0, 0]], "variables": 2}"#,
            "decoder",
            "needs field `decoder`",
        ),
        (
            r#"{"x": [1], "w": [[0, 0, 0, 0]], "variables": 2, "decoder": {"c": [0], "target": [1]}}"#,
            "decoder",
            "`decoder.v` is missing",
        ),
        (
            r#"{"x": [1], "w": [[0, 0, 0, 0]], "variables": 2, "decoder": {"v": [[1, 2, 3]], "c": [0], "target": [1]}}"#,
            "decoder",
            "`decoder.v[0]` has 3",
        ),
        (
            r#"{"x": [1], "w": [[0, 0, 0, 0]], "variables": 2, "decoder": {"v": [[1, 2, 3, 4]], "c": [0, 1], "target": [1]}}"#,
            "decoder",
            "`decoder.c` has 2",
        ),
        (
            r#"{"x": [1], "w": [[0, 0, 0, 0]], "variables": 2, "decoder": {"v": [[1, 2, 3, 4]], "c": [0], "target": [2]}}"#,
            "decoder",
            "`decoder.target`[0]",
        ),
        (
            r#"{"x": [1e200], "w": [[1e200, 0]], "t": [0, 1]}"#,
            "squared",
            "overflows",
        ),
        (
            r#"{"x": [1], "w": [[0, 0]], "t": [1e300, 0]}"#,
            "squared",
            "overflows",
        ),
    ];
    for (i, (text, loss, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("p{i}.json"));
        std::fs::write(&path, text).unwrap();
        let out = dir.path().join(format!("out{i}"));
        let (code, err) = mcgrad(&[
            "--problem",
            path.to_str().unwrap(),
            "--loss",
            loss,
            "--reps",
            "2",
            "--samples",
            "2",
            "--quiet",
            "--backend",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 2, "{text}: {err}");
        assert!(err.contains(want), "{text}: got {err:?}, want {want:?}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(!out.exists(), "nothing written for {text}");
    }
    // The generic path keeps a repetition's draws whole: an S that would take more than its
    // bound is refused before anything is allocated.
    let (code, err) = mcgrad(&[
        "--problem",
        "indecater-6x10",
        "--estimators",
        "arsm",
        "--samples",
        "100000000",
        "--reps",
        "2",
        "--quiet",
        "--out",
        dir.path().join("big").to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("per repetition"), "{err}");
    // Estimators that need an extension are refused for the table loss, saying why.
    let path = dir.path().join("table.json");
    std::fs::write(
        &path,
        r#"{"x": [1], "w": [[0, 0, 0, 0]], "variables": 2, "table": [1, 2, 3, 4]}"#,
    )
    .unwrap();
    let (code, err) = mcgrad(&[
        "--problem",
        path.to_str().unwrap(),
        "--estimators",
        "muprop",
        "--quiet",
        "--out",
        dir.path().join("t").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("muprop needs the loss defined off the vertices"),
        "{err}"
    );
}

#[test]
fn single_variable_figures_are_unchanged() {
    // A fresh run of the reference configuration agrees exactly with the committed
    // results/reference/summary.json, timings aside.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/results/reference/summary.json"
    ))
    .unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let spec = SweepSpec {
        problem: Problem::seeded(0, 784, 10),
        losses: Loss::QUADRATIC.to_vec(),
        estimators: [
            "exact",
            "reinforce",
            "reinforce-ema",
            "rloo",
            "muprop",
            "muprop-c",
            "gumbel-softmax",
            "st-gumbel",
        ]
        .iter()
        .map(|id| estimators::by_id(id).unwrap())
        .collect(),
        samples: (0..=12).map(|e| 1 << e).collect(),
        reps: 1000,
        seed: 0,
        tau: 1.0,
        settings: Default::default(),
    };
    let points = run_sweep(&spec, &CpuEngine::new(0).unwrap(), &|_| {}).unwrap();
    let fresh = serde_json::to_value(records(&spec, &points)).unwrap();
    let ids: Vec<&str> = spec.estimators.iter().map(|e| e.id()).collect();
    // The reference run may hold more estimators than these eight: compare these.
    let old: Vec<&serde_json::Value> = reference["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| ids.contains(&r["estimator"].as_str().unwrap()))
        .collect();
    let new = fresh.as_array().unwrap();
    assert_eq!(old.len(), new.len());
    for (a, b) in old.iter().zip(new) {
        for (key, value) in a.as_object().unwrap() {
            if key != "seconds" {
                assert_eq!(
                    value, &b[key],
                    "{} {} S={} {key}",
                    a["estimator"], a["loss"], a["samples"]
                );
            }
        }
    }
}

/// `st` and `reinmax` read the hard draws alone, so a generic pass of only them evaluates no
/// loss per draw (`Estimator::reads_draw_losses`); their figures must be those of a generic
/// pass that also evaluates the losses for `sum-and-sample` (which reads them; `reinforce`
/// would take the joint-counts path instead), bit for bit, on a separable loss (the gradient-block
/// tables) and on one that couples the variables (the per-draw gradients).
#[test]
fn hard_draw_estimators_alone_give_the_figures_of_a_pass_that_evaluates_the_losses() {
    let cases = [
        ("indecater-6x10", Loss::Pnorm),
        ("vae-decoder", Loss::Decoder),
    ];
    for (name, loss) in cases {
        let problem = (problems::by_name(name).unwrap().build)(0);
        let alone = sweep(&problem, loss, &["st", "reinmax"], &[1, 4, 16], 300);
        let ids = ["sum-and-sample", "st", "reinmax"];
        let mixed = sweep(&problem, loss, &ids, &[1, 4, 16], 300);
        let alone = serde_json::to_value(alone).unwrap();
        let mixed = serde_json::to_value(mixed).unwrap();
        let mixed: Vec<&serde_json::Value> = mixed
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["estimator"] != "sum-and-sample")
            .collect();
        let alone = alone.as_array().unwrap();
        assert_eq!(alone.len(), mixed.len());
        assert_eq!(alone.len(), 6, "{name}: two estimators at three S");
        for (a, b) in alone.iter().zip(mixed) {
            for (key, value) in a.as_object().unwrap() {
                if key != "seconds" {
                    assert_eq!(
                        value, &b[key],
                        "{name}: {} S={} {key}",
                        a["estimator"], a["samples"]
                    );
                }
            }
        }
    }
}
