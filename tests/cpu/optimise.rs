//! Optimising a problem with every estimator (`mcgrad::optimise`, `mcgrad train --problem`):
//! the exact gradient reaches the toys' known optima; every trajectory is a function of its
//! seed alone (not of the other estimators, nor of the thread count); the variances measured
//! along the shared trajectory agree with the exact ones; warm-ups are counted; bad input
//! exits 2.

use std::process::Command;

use mcgrad::estimators::{self, Context, Estimator};
use mcgrad::loss::Loss;
use mcgrad::optimise::{
    optimise, optimise_many, variance, Direction, OptimiseReport, OptimiseSpec, SharedTrajectory,
    VarianceMethod, VarianceMode,
};
use mcgrad::oracle::ExactKind;
use mcgrad::problem::Problem;
use mcgrad::problems;
use mcgrad::train::OptimizerKind;

fn named(name: &str, seed: u64) -> Problem {
    (problems::by_name(name).unwrap().build)(seed)
}

/// IndeCateR's synthetic problem made small (4 variables of 3 categories, 81 joint
/// configurations), so that every estimator's exact moments are cheap: free logits from
/// `seed`, `f = (1/4) sum_l |z_l - b_l|`.
fn small_problem(seed: u64) -> Problem {
    let logits = (0..12)
        .map(|i| ((i as f64 + 1.0) * (seed as f64 + 1.7)).sin())
        .collect();
    let mut p = Problem::free_logits(4, 3, logits);
    p.b = vec![0.0, 2.0, 1.0, 0.0];
    p.exponent = 1.0;
    p
}

fn ids(list: &[&str]) -> Vec<&'static dyn Estimator> {
    list.iter()
        .map(|id| estimators::by_id(id).unwrap())
        .collect()
}

fn exact_spec(problem: Problem, steps: u32, lr: f64) -> OptimiseSpec {
    let mut spec = OptimiseSpec::new(problem, Loss::Pnorm, ids(&["exact"]));
    spec.steps = steps;
    spec.eval_every = steps;
    spec.learning_rate = lr;
    spec.optimiser = OptimizerKind::Adam;
    spec.track = vec![(0, 1)];
    spec
}

/// The toys' optima: `f(z) = (z - t)^2` with one Bernoulli has `f(0) = t^2 < f(1) = (1-t)^2`
/// for `t < 1/2`, so the minimum is `p(z = 1) -> 0` with `E f -> t^2`, and the maximum
/// `p(z = 1) -> 1` with `E f -> (1 - t)^2`. With free logits the optimum is approached, not
/// reached: `E f - t^2 = p(1) (1 - 2t)`, so `p(1) < 1e-3` puts the objective within
/// `1e-3 (1 - 2t)` of the optimum. Adam normalises the gradient's size away (relax-toy's is
/// 0.0005 at the start), so both toys move alike: 1000 steps at 0.1 reach p(1) ~ 1.3e-4 (its
/// steps shrink as the gradient, `p(1 - p)`, falls below its second-moment average).
#[test]
fn the_exact_gradient_reaches_the_toys_known_optima() {
    for (name, t) in [("rebar-toy", 0.45), ("relax-toy", 0.499)] {
        for direction in [Direction::Minimise, Direction::Maximise] {
            let mut spec = exact_spec(named(name, 0), 1000, 0.1);
            spec.direction = direction;
            let report = optimise(&spec, &|_| {}).unwrap();
            let last = report.trajectories[0].last();
            let first = &report.trajectories[0].points[0];
            assert_eq!(last.objective_kind, ExactKind::Exact);
            assert!(
                (first.probabilities[0] - 0.5).abs() < 1e-12,
                "starts at logits 0"
            );
            let (optimum, p1) = match direction {
                Direction::Minimise => (t * t, last.probabilities[0]),
                Direction::Maximise => ((1.0 - t) * (1.0 - t), 1.0 - last.probabilities[0]),
            };
            assert!(p1 < 1e-3, "{name} {direction:?}: p = {p1}");
            assert!(
                (last.objective - optimum).abs() <= 1e-3 * (1.0 - 2.0 * t) + 1e-15,
                "{name} {direction:?}: E f = {} vs optimum {optimum}",
                last.objective
            );
        }
    }
}

/// IndeCateR's synthetic problem: `f = (1/L) sum_l |z_l - b_l|` with `b` in the sample space has
/// minimum 0 at `z = b`; the exact gradient with RMSprop gets there (E f below 1e-3).
#[test]
fn the_exact_gradient_solves_a_multi_variable_problem() {
    let problem = named("indecater-12x3", 4);
    let b0 = problem.b[0] as usize;
    let mut spec = exact_spec(problem, 300, 0.1);
    spec.optimiser = OptimizerKind::RmsProp;
    spec.track = vec![(0, b0)];
    let report = optimise(&spec, &|_| {}).unwrap();
    let t = &report.trajectories[0];
    assert!(t.points[0].objective > 0.3, "starts away from the optimum");
    assert!(t.last().objective < 1e-3, "E f = {}", t.last().objective);
    assert!(t.last().probabilities[0] > 0.999);
}

/// The estimators of the registry defined on `problem` under `loss`.
fn defined(problem: &Problem, loss: Loss, samples: u32) -> Vec<&'static dyn Estimator> {
    let mut ctx = Context::new(problem, loss, 1.0);
    ctx.settings.warmup = 20;
    estimators::REGISTRY
        .iter()
        .copied()
        .filter(|e| e.check(&ctx).is_ok() && samples >= e.min_samples())
        .collect()
}

/// A report without its wall-clock figures (the only part that may differ between runs).
fn without_times(report: &OptimiseReport) -> String {
    let mut r = report.clone();
    for t in r.trajectories.iter_mut().chain(r.shared.iter_mut()) {
        t.points.iter_mut().for_each(|p| p.seconds = 0.0);
        if let Some(w) = t.warm_up.as_mut() {
            w.seconds = 0.0;
        }
    }
    format!("{:?}", r)
}

fn every_estimator_spec(seed: u64) -> OptimiseSpec {
    let problem = small_problem(1);
    let estimators = defined(&problem, Loss::Pnorm, 2);
    let mut spec = OptimiseSpec::new(problem, Loss::Pnorm, estimators);
    spec.settings.warmup = 20;
    spec.steps = 12;
    spec.eval_every = 6;
    spec.samples = 2;
    spec.variance_reps = 8;
    spec.learning_rate = 0.05;
    spec.track = vec![(0, 0), (3, 2)];
    spec.shared = SharedTrajectory::Exact;
    spec.rewarm_every = 6;
    spec.seed = seed;
    spec
}

/// Every trajectory depends on its seed alone: the same spec gives the same report on one
/// thread and on three (wall seconds aside), a trajectory is the same run alone or among
/// others, and another seed gives another trajectory.
#[test]
fn every_trajectory_is_reproducible_from_its_seed() {
    let spec = every_estimator_spec(7);
    assert!(spec.estimators.len() >= 15, "{:?}", spec.estimators);
    let on = |threads: usize, spec: &OptimiseSpec| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| optimise(spec, &|_| {}).unwrap())
    };
    let one = on(1, &spec);
    let three = on(3, &spec);
    assert_eq!(without_times(&one), without_times(&three));
    // Alone, or in a batch of seeds.
    for (i, est) in spec.estimators.iter().enumerate() {
        let alone = OptimiseSpec {
            estimators: vec![*est],
            shared: SharedTrajectory::None,
            ..spec.clone()
        };
        let r = on(2, &alone);
        let mut want = one.clone();
        want.trajectories = vec![want.trajectories[i].clone()];
        want.shared = None;
        assert_eq!(without_times(&r), without_times(&want), "{}", est.id());
    }
    // Common random numbers: an estimator listed twice runs the same trajectory twice.
    let twice = OptimiseSpec {
        estimators: ids(&["reinforce", "gumbel-softmax", "reinforce", "gumbel-softmax"]),
        shared: SharedTrajectory::None,
        ..spec.clone()
    };
    let r = on(2, &twice);
    assert_eq!(
        format!("{:?}", r.trajectories[0].w),
        format!("{:?}", r.trajectories[2].w)
    );
    assert_eq!(
        format!("{:?}", r.trajectories[1].w),
        format!("{:?}", r.trajectories[3].w)
    );
    let other = every_estimator_spec(8);
    let both = optimise_many(&[spec.clone(), other], &|_| {}).unwrap();
    assert_eq!(without_times(&both[0]), without_times(&one));
    // Another seed moves every estimator whose estimate varies somewhere else.
    for (a, b) in both[0].trajectories.iter().zip(&both[1].trajectories) {
        if a.points[0].variances[0].variance > 1e-20 {
            assert_ne!(a.last().objective, b.last().objective, "{}", a.estimator);
        } else {
            assert_eq!(a.last().objective, b.last().objective);
        }
    }
}

/// The shared trajectory's exact variances against its Monte Carlo probe, at the start and at
/// the end of a short exact-gradient run, for every estimator with exact moments. The Monte
/// Carlo total variance `sum_j s_j^2` over R repetitions has standard deviation at most
/// `sum_j sqrt((mu4_j - sigma_j^4) / R)` (each sample variance's, to first order; the sum's is
/// at most the sum of the parts'), with `mu4` the exact fourth central moment; the check allows
/// six of them plus 2% (the first-order formula's error at this R). Under a normal
/// approximation a six-sigma miss has probability 2e-9 per comparison; the draws are seeded,
/// so the test is deterministic.
#[test]
fn shared_trajectory_variances_equal_the_exact_ones() {
    const REPS: u32 = 4000;
    let mut compared = 0;
    for (name, samples) in [("rebar-toy", 3), ("small", 2)] {
        let problem = if name == "small" {
            small_problem(2)
        } else {
            named(name, 2)
        };
        let estimators = defined(&problem, Loss::Pnorm, samples);
        let mut spec = OptimiseSpec::new(problem.clone(), Loss::Pnorm, estimators.clone());
        spec.steps = 10;
        spec.eval_every = 10;
        spec.samples = samples;
        spec.learning_rate = 0.2;
        spec.settings.warmup = 20;
        spec.variance_reps = REPS;
        spec.own_variance = false;
        spec.shared = SharedTrajectory::Exact;
        let exact = optimise(&spec, &|_| {}).unwrap().shared.unwrap();
        spec.variance_mode = VarianceMode::MonteCarlo;
        let mc = optimise(&spec, &|_| {}).unwrap().shared.unwrap();
        assert_eq!(exact.w, mc.w, "the same trajectory");
        for (point, w) in [(0, problem.w.clone()), (1, exact.w.clone())] {
            let at = Problem {
                w,
                ..problem.clone()
            };
            let ctx = Context::new(&at, Loss::Pnorm, 1.0);
            let (pe, pm) = (&exact.points[point], &mc.points[point]);
            assert_eq!(pe.objective, ctx.fbar);
            for ((ve, vm), est) in pe.variances.iter().zip(&pm.variances).zip(&estimators) {
                assert_eq!(vm.method, VarianceMethod::MonteCarlo);
                if ve.method == VarianceMethod::MonteCarlo {
                    continue;
                }
                let b = variance::ideal_baseline(*est, &ctx, ctx.fbar);
                let m = variance::exact_moments_at(*est, &ctx, samples, b).unwrap();
                let total: f64 = m.var.iter().sum();
                assert!(
                    (ve.variance - total).abs() <= 1e-12 * total.max(1e-300),
                    "{name} {}: {} vs {total}",
                    ve.estimator,
                    ve.variance
                );
                let sd: f64 = match &m.m4 {
                    Some(m4) => m4
                        .iter()
                        .zip(&m.var)
                        .map(|(q, v)| ((q - v * v).max(0.0) / f64::from(REPS)).sqrt())
                        .sum(),
                    // Without a fourth moment: a normal's, times 3 for heavier tails.
                    None => 3.0 * total * (2.0 / f64::from(REPS)).sqrt(),
                };
                // (An exact variance of 0, indecater's on a separable loss, comes out of Monte
                // Carlo as rounding: 1e-30 absolute.)
                let tol = 6.0 * sd + 0.02 * total + 1e-30;
                assert!(
                    (vm.variance - total).abs() <= tol,
                    "{name} step {} {}: Monte Carlo {} vs exact {total} (tolerance {tol})",
                    pe.step,
                    ve.estimator,
                    vm.variance
                );
                compared += 1;
            }
        }
    }
    assert!(compared >= 16, "only {compared} comparisons");
}

/// Warm-ups are counted: REBAR's and RELAX's first step costs its warm-up's evaluations on top
/// of the step's own, and the report says so; estimators without one report none.
#[test]
fn warm_ups_are_counted_and_reported() {
    let mut spec = OptimiseSpec::new(
        named("rebar-toy", 0),
        Loss::Pnorm,
        ids(&["reinforce", "rebar", "relax"]),
    );
    spec.steps = 4;
    spec.eval_every = 1;
    spec.settings.warmup = 30;
    spec.rewarm_every = 2;
    let report = optimise(&spec, &|_| {}).unwrap();
    for t in &report.trajectories {
        let evals: Vec<f64> = t.points.iter().map(|p| p.loss_evaluations).collect();
        let per_step = t.loss_evaluations_per_step;
        assert_eq!(evals[0], 0.0);
        match &t.warm_up {
            None => {
                assert_eq!(t.estimator, "reinforce");
                assert_eq!(evals[4], 4.0 * per_step);
            }
            Some(w) => {
                assert_eq!(w.count, 2, "{}: warm-ups at steps 0 and 2", t.estimator);
                assert!(w.loss_evaluations > 0.0 && !w.last.is_empty());
                assert_eq!(
                    evals[4],
                    4.0 * per_step + w.loss_evaluations,
                    "{}",
                    t.estimator
                );
                assert!(
                    evals[1] - evals[0] > per_step,
                    "the first step pays the warm-up"
                );
            }
        }
    }
}

/// Moving a context to new logits in place gives the context built there, bit for bit.
#[test]
fn set_logits_equals_a_fresh_context() {
    for (name, loss) in [
        ("seed", Loss::Squared),
        ("rebar-toy", Loss::Pnorm),
        ("indecater-12x3", Loss::Pnorm),
        ("vae-decoder", Loss::Decoder),
    ] {
        let problem = named(name, 3);
        let mut moved = Context::without_oracle(&problem, loss, 0.7);
        let w: Vec<f64> = problem
            .w
            .iter()
            .enumerate()
            .map(|(i, v)| v + 0.01 * (i % 7) as f64)
            .collect();
        let at = Problem {
            w,
            ..problem.clone()
        };
        let truth = name != "vae-decoder";
        moved.set_logits(&at.logits(), truth);
        let fresh = if truth {
            Context::new(&at, loss, 0.7)
        } else {
            Context::without_oracle(&at, loss, 0.7)
        };
        assert_eq!(format!("{moved:?}"), format!("{fresh:?}"), "{name}");
    }
}

/// The optimisation loop's buffered estimate is `estimate_at`'s, bit for bit, for every
/// estimator on every path (counts, hard-draw counts, relaxed sums, joint counts, generic of
/// both families), with one set of buffers reused across estimators and shapes.
#[test]
fn buffered_estimates_equal_estimate_at() {
    let mut buffers = estimators::DrawBuffers::default();
    let mut seen = std::collections::HashSet::new();
    for (problem, loss) in [
        (named("seed", 1), Loss::Squared),
        (named("rebar-toy", 0), Loss::Pnorm),
        (small_problem(3), Loss::Pnorm),
        (named("indecater-6x10", 2), Loss::Pnorm),
    ] {
        let mut ctx = Context::new(&problem, loss, 0.8);
        ctx.settings.warmup = 5;
        for est in estimators::REGISTRY {
            if est.check(&ctx).is_err() {
                continue;
            }
            let mut local = ctx.clone();
            let key = [3, 4];
            if let Some(w) = est.warm_up(&ctx, 3, &|r| estimators::Noise {
                key,
                rep: 100 + r,
                point: 9,
            }) {
                local.warm = Some(std::sync::Arc::new(w));
            }
            seen.insert(format!("{:?}", mcgrad::engine::path_of(*est, &local)));
            for (rep, s) in [(0, 3), (5, 7), (2, 3)] {
                let (mut a, mut b) = (vec![0.0; ctx.dim()], vec![0.0; ctx.dim()]);
                let sa = estimators::estimate_at(*est, &local, key, rep, 9, s, 0.3, &mut a);
                let sb = estimators::estimate_at_with(
                    &mut buffers,
                    *est,
                    &local,
                    key,
                    rep,
                    9,
                    s,
                    0.3,
                    &mut b,
                );
                assert_eq!(
                    format!("{a:?} {sa:?}"),
                    format!("{b:?} {sb:?}"),
                    "{}",
                    est.id()
                );
            }
        }
    }
    assert_eq!(seen.len(), 6, "{seen:?}");
}

fn mcgrad(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mcgrad"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn train_problem_bad_input_exits_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out_s = out.to_str().unwrap();
    let cases: &[&[&str]] = &[
        &["--problem", "no-such-problem"],
        &["--problem", "indecater-6x10", "--estimators", "disarm"],
        &["--problem", "rebar-toy", "--estimators", "nope"],
        &["--problem", "rebar-toy", "--optimizer", "lbfgs"],
        &["--problem", "rebar-toy", "--lr", "0"],
        &["--problem", "rebar-toy", "--lr=-1"],
        &["--problem", "rebar-toy", "--lr", "nan"],
        &["--problem", "rebar-toy", "--steps", "0"],
        &["--problem", "rebar-toy", "--eval-every", "0"],
        &["--problem", "rebar-toy", "--samples", "0"],
        &["--problem", "rebar-toy", "--track", "1:0"],
        &["--problem", "rebar-toy", "--track", "zero"],
        &["--problem", "rebar-toy", "--shared", "nope"],
        &["--problem", "rebar-toy", "--loss", "squared"],
        &["--problem", "rebar-toy", "--mnist", "x"],
        &["--problem", "vae-decoder", "--estimators", "exact"],
        &[
            "--problem",
            "rebar-toy",
            "--estimators",
            "rloo",
            "--samples",
            "1",
        ],
        &["--maximise"],
        &["--track", "0:1"],
    ];
    for case in cases {
        let mut args = vec!["train", "--quiet", "--out", out_s];
        args.extend_from_slice(case);
        let o = mcgrad(&args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{case:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{case:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{case:?}: {stderr}");
        assert!(!out.exists(), "{case:?} wrote output");
    }
}

#[test]
fn train_problem_writes_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = mcgrad(&[
        "train",
        "--quiet",
        "--problem",
        "relax-toy",
        "--estimators",
        "reinforce,rloo,relax",
        "--steps",
        "40",
        "--eval-every",
        "20",
        "--warmup",
        "10",
        "--optimiser",
        "rmsprop",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "curves.csv",
        "variances.csv",
        "curves.json",
        "objective_vs_steps.png",
        "objective_vs_steps.svg",
        "grad_variance.png",
        "shared_variance.svg",
        "probabilities.png",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let csv = std::fs::read_to_string(out.join("curves.csv")).unwrap();
    // 3 own trajectories + the shared one, 3 points each, and the header.
    assert_eq!(csv.lines().count(), 1 + 4 * 3);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("curves.json")).unwrap()).unwrap();
    assert_eq!(json["config"]["optimiser"], "rmsprop");
    assert_eq!(json["shared"]["estimator"], "exact");
    assert_eq!(json["trajectories"][2]["warm_up"]["count"], 1);
    let vars = std::fs::read_to_string(out.join("variances.csv")).unwrap();
    assert_eq!(vars.lines().count(), 1 + 3 * 3);
}
