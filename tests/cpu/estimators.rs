//! The estimators against their oracles: exact gradients against finite differences, Monte
//! Carlo means and variances against the closed forms of docs/estimators.md, the zero-variance
//! facts, and the rank-one shortcut against a direct D x K computation.
//!
//! Every Monte Carlo check is seeded (never flaky) and uses a tolerance of 5 standard errors:
//! for one normal comparison that is a false-alarm probability of 5.7e-7, so even the few
//! hundred comparisons here would all pass with probability above 0.999 for a fresh seed.

// Index loops keep the formulas comparable to docs/estimators.md.
#![allow(clippy::needless_range_loop)]

use mcgrad::engine::{run_sweep, CpuEngine, SweepSpec};
use mcgrad::estimators::{self, linear_form_moments, Context, Estimator};
use mcgrad::loss::Loss;
use mcgrad::problem::{softmax, Problem};
use mcgrad::record::{records, Record};
use mcgrad::stats::variance_se;

/// A small problem with well-spread probabilities (every p_k between about 0.05 and 0.4).
fn spread_problem() -> Problem {
    let x = vec![1.0, 0.5, -0.3];
    let w = vec![
        0.2, -0.4, 0.9, 0.1, -0.6, //
        0.3, 0.8, -0.2, 0.4, 0.0, //
        -0.5, 0.1, 0.3, -0.9, 0.7,
    ];
    let t = vec![0.1, 0.7, 0.3, 0.9, 0.5];
    Problem::new(x, w, t).unwrap()
}

fn sweep(
    problem: Problem,
    losses: &[Loss],
    ids: &[&str],
    samples: &[u32],
    reps: u32,
    seed: u64,
) -> Vec<Record> {
    let spec = SweepSpec {
        problem,
        losses: losses.to_vec(),
        estimators: ids
            .iter()
            .map(|id| estimators::by_id(id).unwrap())
            .collect(),
        samples: samples.to_vec(),
        reps,
        seed,
        tau: 1.0,
        settings: Default::default(),
    };
    let points = run_sweep(&spec, &CpuEngine::new(0).unwrap(), &|_| {}).unwrap();
    records(&spec, &points)
}

fn objective(problem: &Problem, loss: Loss) -> f64 {
    let p = problem.probs();
    let f = loss.quadratic(&problem.t).vertex_values();
    p.iter().zip(&f).map(|(a, b)| a * b).sum()
}

#[test]
fn exact_gradient_matches_central_differences_in_w() {
    for problem in [spread_problem(), Problem::seeded(3, 6, 4)] {
        for loss in Loss::QUADRATIC {
            let ctx = Context::new(&problem, loss, 1.0);
            let h = 1e-6;
            for i in 0..problem.d {
                for j in 0..problem.k {
                    let (mut plus, mut minus) = (problem.clone(), problem.clone());
                    plus.w[i * problem.k + j] += h;
                    minus.w[i * problem.k + j] -= h;
                    let fd = (objective(&plus, loss) - objective(&minus, loss)) / (2.0 * h);
                    let analytic = problem.x[i] * ctx.grad[j];
                    assert!(
                        (fd - analytic).abs() < 1e-7,
                        "{loss} W[{i},{j}]: fd {fd} vs {analytic}"
                    );
                }
            }
        }
    }
}

/// Checks every coordinate of an unbiased estimator's record against its exact moments.
///
/// The standard error of a mean comes from the exact variance: with rare categories (the
/// seed problem has p_k near 1e-9) a sample standard deviation misses the draws that never
/// happened and would make a correct estimator look biased. The moving-average estimators
/// have no closed form; their error is at least that of the fixed baseline their average
/// converges to (`fbar` for `reinforce-ema`, the mean residual for `muprop-c`).
fn check_against_exact(r: &Record, est: &dyn Estimator, ctx: &Context) {
    let n = f64::from(r.reps);
    let exact = est.exact_moments(ctx, r.samples);
    let reference_var = est
        .reference_variance(ctx, r.samples)
        .expect("unbiased estimators have one");
    for j in 0..ctx.k {
        let se = r.mean_se[j].max((reference_var[j] / n).sqrt()).max(1e-14);
        let z = (r.mean[j] - ctx.grad[j]).abs() / se;
        assert!(
            z < 5.0,
            "{} {} S={} coord {j}: mean off by {z:.1} SE",
            r.estimator,
            r.loss,
            r.samples
        );
    }
    let Some(mut exact) = exact else { return };
    if exact.m4.is_none() {
        // RLOO: no closed-form fourth moment; enumerate the multinomial counts instead.
        exact.m4 = Some(multinomial_moments(est, ctx, r.samples).2);
    }
    for j in 0..ctx.k {
        // Var(s^2) from the exact fourth moment where known, else from the sample one.
        let se = match &exact.m4 {
            Some(m4) => variance_se(m4[j], exact.var[j], n),
            None => r.var_se[j],
        };
        let diff = (r.var[j] - exact.var[j]).abs();
        // Zero-variance cases compare rounding noise: allow (1e-12 |f|)^2.
        let scale: f64 = ctx.p.iter().zip(&ctx.f).map(|(p, f)| p * f.abs()).sum();
        assert!(
            diff <= 5.0 * se + (1e-12 * scale).powi(2),
            "{} {} S={} coord {j}: var {} vs exact {} (se {se})",
            r.estimator,
            r.loss,
            r.samples,
            r.var[j],
            exact.var[j]
        );
    }
}

/// Exact mean, variance and fourth central moment of a score-function estimator with a
/// fixed baseline, by enumerating every count vector of S draws over K categories with its
/// multinomial probability: an oracle independent of the closed forms (small S only).
fn multinomial_moments(
    est: &dyn Estimator,
    ctx: &Context,
    s: u32,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let k = ctx.k;
    let mut outcomes: Vec<(f64, Vec<f64>)> = Vec::new();
    let mut counts = vec![0u32; k];
    fn walk(
        j: usize,
        left: u32,
        counts: &mut Vec<u32>,
        est: &dyn Estimator,
        ctx: &Context,
        s: u32,
        out: &mut Vec<(f64, Vec<f64>)>,
    ) {
        let k = counts.len();
        if j == k - 1 {
            counts[j] = left;
            // multinomial probability S! / prod n_k! prod p_k^n_k, in logs
            let mut log_p = (1..=s).map(|v| f64::from(v).ln()).sum::<f64>();
            for (n, p) in counts.iter().zip(&ctx.p) {
                log_p -= (1..=*n).map(|v| f64::from(v).ln()).sum::<f64>();
                if *n > 0 {
                    log_p += f64::from(*n) * p.ln();
                }
            }
            let mut g = vec![0.0; k];
            est.estimate_from_counts(ctx, counts, s, 0.0, &mut g);
            out.push((log_p.exp(), g));
            return;
        }
        for n in 0..=left {
            counts[j] = n;
            walk(j + 1, left - n, counts, est, ctx, s, out);
        }
    }
    walk(0, s, &mut counts, est, ctx, s, &mut outcomes);
    let mean: Vec<f64> = (0..k)
        .map(|j| outcomes.iter().map(|(p, g)| p * g[j]).sum())
        .collect();
    let central = |q: i32| -> Vec<f64> {
        (0..k)
            .map(|j| {
                outcomes
                    .iter()
                    .map(|(p, g)| p * (g[j] - mean[j]).powi(q))
                    .sum()
            })
            .collect()
    };
    (mean.clone(), central(2), central(4))
}

#[test]
fn closed_forms_agree_with_multinomial_enumeration() {
    for problem in [spread_problem(), Problem::seeded(5, 784, 10)] {
        for loss in Loss::QUADRATIC {
            let ctx = Context::new(&problem, loss, 1.0);
            for id in ["reinforce", "rloo", "muprop", "exact"] {
                let est = estimators::by_id(id).unwrap();
                for s in [2, 3, 5] {
                    let closed = est.exact_moments(&ctx, s).unwrap();
                    let (mean, var, m4) = multinomial_moments(est, &ctx, s);
                    for j in 0..ctx.k {
                        let scale = ctx
                            .p
                            .iter()
                            .zip(&ctx.f)
                            .map(|(p, f)| p * f.abs())
                            .sum::<f64>();
                        assert!(
                            (closed.mean[j] - mean[j]).abs() < 1e-12 * scale,
                            "{id} {loss} S={s} mean {j}"
                        );
                        assert!(
                            (closed.var[j] - var[j]).abs() < 1e-10 * var[j] + 1e-24 * scale * scale,
                            "{id} {loss} S={s} var {j}: {} vs {}",
                            closed.var[j],
                            var[j]
                        );
                        if let Some(c4) = &closed.m4 {
                            assert!(
                                (c4[j] - m4[j]).abs() < 1e-9 * m4[j] + 1e-40,
                                "{id} {loss} S={s} m4 {j}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn unbiased_estimators_agree_with_exact_moments() {
    let ids = [
        "exact",
        "reinforce",
        "reinforce-ema",
        "rloo",
        "muprop",
        "muprop-c",
    ];
    for (problem, seed) in [(spread_problem(), 11), (Problem::seeded(5, 784, 10), 12)] {
        let recs = sweep(
            problem.clone(),
            &Loss::QUADRATIC,
            &ids,
            &[1, 4, 8],
            20_000,
            seed,
        );
        assert_eq!(recs.len(), 3 * (6 + 6 + 5), "rloo is skipped at S = 1 only");
        for r in &recs {
            let loss = Loss::parse(&r.loss).unwrap();
            let ctx = Context::new(&problem, loss, 1.0);
            check_against_exact(r, estimators::by_id(&r.estimator).unwrap(), &ctx);
        }
    }
}

#[test]
fn gumbel_estimators_show_their_bias() {
    let recs = sweep(
        spread_problem(),
        &[Loss::Squared, Loss::Linear],
        &["gumbel-softmax", "st-gumbel"],
        &[64],
        4000,
        3,
    );
    for r in &recs {
        assert!(
            r.bias_p_value < 1e-6,
            "{} {}: bias p = {}",
            r.estimator,
            r.loss,
            r.bias_p_value
        );
        assert!(!r.unbiased && r.exact_var.is_none());
    }
    // ...while an unbiased one under the same test does not.
    let recs = sweep(
        spread_problem(),
        &[Loss::Squared],
        &["reinforce"],
        &[64],
        4000,
        3,
    );
    assert!(
        recs[0].bias_p_value > 0.001,
        "reinforce bias p = {}",
        recs[0].bias_p_value
    );
}

#[test]
fn zero_variance_facts() {
    let problem = Problem::seeded(9, 784, 10);
    // seed loss: exact gradient 0, REINFORCE variance > 0, MuProp and ideal baseline 0.
    let ctx = Context::new(&problem, Loss::Seed, 1.0);
    assert!(ctx.grad.iter().all(|g| g.abs() < 1e-15), "{:?}", ctx.grad);
    let reinforce = estimators::by_id("reinforce")
        .unwrap()
        .exact_moments(&ctx, 1)
        .unwrap();
    assert!(reinforce.var.iter().sum::<f64>() > 1e-6);
    let muprop = estimators::by_id("muprop")
        .unwrap()
        .exact_moments(&ctx, 1)
        .unwrap();
    assert!(
        muprop.var.iter().all(|v| v.abs() < 1e-28),
        "{:?}",
        muprop.var
    );
    let centred: Vec<f64> = ctx.f.iter().map(|f| f - ctx.fbar).collect();
    let ideal = linear_form_moments(&ctx.p, &centred, &vec![0.0; ctx.k], 1);
    assert!(ideal.var.iter().all(|v| v.abs() < 1e-28));
    // linear loss: MuProp is exact.
    let ctx = Context::new(&spread_problem(), Loss::Linear, 1.0);
    let muprop = estimators::by_id("muprop")
        .unwrap()
        .exact_moments(&ctx, 1)
        .unwrap();
    assert!(muprop.var.iter().all(|v| v.abs() < 1e-28));
    // ... and so is its Monte Carlo variance, and REINFORCE's is not.
    let recs = sweep(
        spread_problem(),
        &[Loss::Linear, Loss::Seed],
        &["muprop", "reinforce"],
        &[8],
        500,
        1,
    );
    for r in recs {
        let zero = r.var.iter().all(|v| *v < 1e-25);
        assert_eq!(zero, r.estimator == "muprop", "{} {}", r.estimator, r.loss);
    }
}

#[test]
fn rank_one_figures_match_a_direct_d_by_k_computation() {
    // Per repetition, build the full D x K gradient G = x^T g_hat and take its moments
    // directly; compare with the rank-one figures the records report.
    let problem = spread_problem();
    let (d, k) = (problem.d, problem.k);
    let reps = 400u32;
    let s = 4u32;
    let recs = sweep(
        problem.clone(),
        &[Loss::Squared],
        &["reinforce"],
        &[s],
        reps,
        21,
    );
    let r = &recs[0];

    let ctx = Context::new(&problem, Loss::Squared, 1.0);
    let table = mcgrad::draws::CategoricalTable::new(&ctx.p);
    let key = mcgrad::philox::key_of(21);
    let est = estimators::by_id("reinforce").unwrap();
    let mut sum = vec![0.0; d * k];
    let mut sum_sq = vec![0.0; d * k];
    let mut counts = vec![0u32; k];
    let mut g = vec![0.0; k];
    for rep in 0..reps {
        mcgrad::draws::count_categories(&table, key, rep, 0, s, &mut counts);
        est.estimate_from_counts(&ctx, &counts, s, 0.0, &mut g);
        for i in 0..d {
            for j in 0..k {
                let gij = problem.x[i] * g[j];
                sum[i * k + j] += gij;
                sum_sq[i * k + j] += gij * gij;
            }
        }
    }
    let n = f64::from(reps);
    let mut total_var = 0.0;
    let mut bias_sq = 0.0;
    for i in 0..d {
        for j in 0..k {
            let mean = sum[i * k + j] / n;
            let var = (sum_sq[i * k + j] - n * mean * mean) / (n - 1.0);
            assert!((var - problem.x[i].powi(2) * r.var[j]).abs() < 1e-9 * (1.0 + var));
            total_var += var;
            bias_sq += (mean - problem.x[i] * ctx.grad[j]).powi(2);
        }
    }
    assert!((total_var - r.total_var_w).abs() < 1e-9 * total_var);
    assert!((bias_sq.sqrt() - r.bias_norm_w).abs() < 1e-9 * (1.0 + bias_sq.sqrt()));
}

#[test]
fn softmax_of_the_seed_problem_is_finite_and_peaked() {
    let p = Problem::seeded(0, 784, 10).probs();
    assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    let p = softmax(&[1e4, 0.0, -1e4, 5e3]);
    assert_eq!(p[0], 1.0);
}

#[test]
fn relaxed_sums_equal_the_per_draw_formula() {
    // The relaxed estimators read draws through quadratic-loss sums (RelaxedMoments); the sum
    // of their per-draw estimates must equal (1/tau) (diag(y) - y y^T) grad f, draw by draw.
    use mcgrad::draws::RelaxedTable;
    use mcgrad::estimators::{jacobian_product, RelaxedBatch, RelaxedMoments};
    let problem = spread_problem();
    let k = problem.k;
    let table = RelaxedTable::new(&problem.logits(), 0.7);
    let n = 45;
    let (mut y, mut z, mut y_z) = (vec![0f32; k * n], vec![0u32; n], vec![0f32; n]);
    table.draw_batch([3, 4], 1, 2, 0, n, &mut y, &mut z, &mut y_z);
    let mut moments = RelaxedMoments::new(k);
    moments.add_batch(&RelaxedBatch {
        n,
        y: &y,
        z: &z,
        y_z: &y_z,
    });
    for loss in Loss::QUADRATIC {
        let ctx = Context::new(&problem, loss, 0.7);
        for id in ["gumbel-softmax", "st-gumbel"] {
            let mut want = vec![0.0; k];
            for d in 0..n {
                let yd: Vec<f64> = (0..k).map(|c| f64::from(y[c * n + d])).collect();
                let point = if id == "st-gumbel" {
                    (0..k)
                        .map(|c| f64::from(u8::from(c == z[d] as usize)))
                        .collect()
                } else {
                    yd.clone()
                };
                let g = jacobian_product(&yd, &ctx.quad.as_ref().unwrap().grad(&point));
                for c in 0..k {
                    want[c] += g[c] / 0.7;
                }
            }
            let mut got = vec![0.0; k];
            estimators::by_id(id)
                .unwrap()
                .add_relaxed_sum(&ctx, &moments, &mut got);
            for c in 0..k {
                // Relative to the size of the terms that cancel: |grad f| per draw, n draws.
                let grad_scale = 2.0 * ctx.quad.as_ref().unwrap().alpha
                    + ctx
                        .quad
                        .as_ref()
                        .unwrap()
                        .beta
                        .iter()
                        .map(|b| b.abs())
                        .fold(0.0, f64::max);
                let scale = grad_scale * n as f64 / 0.7;
                assert!(
                    (got[c] - want[c]).abs() < 1e-13 * scale,
                    "{id} {loss} {c}: {} vs {}",
                    got[c],
                    want[c]
                );
            }
        }
    }
}

/// A sweep of `ids` on the seed problem's `seed` loss (constant over the categories, so the
/// ideal baseline E f removes every bit of variance) with `baseline_warmup` warm-up
/// repetitions, as (estimator, total variance) pairs.
fn seed_loss_variances(baseline_warmup: u32) -> Vec<(String, u32, f64)> {
    let spec = SweepSpec {
        problem: Problem::seeded(9, 784, 10),
        losses: vec![Loss::Seed],
        estimators: ["reinforce", "reinforce-ema"]
            .iter()
            .map(|id| estimators::by_id(id).unwrap())
            .collect(),
        samples: vec![1, 16],
        reps: 2000,
        seed: 3,
        tau: 1.0,
        settings: estimators::Settings {
            baseline_warmup,
            ..Default::default()
        },
    };
    let points = run_sweep(&spec, &CpuEngine::new(0).unwrap(), &|_| {}).unwrap();
    records(&spec, &points)
        .into_iter()
        .map(|r| (r.estimator.clone(), r.samples, r.total_var_w))
        .collect()
}

#[test]
fn moving_average_baselines_are_warmed_up_before_the_measurement() {
    // Warmed up, the moving average is the constant loss itself from the first measured
    // repetition on: reinforce-ema's variance is rounding, against REINFORCE's 1e2 to 1e3.
    // Started at 0 (`--baseline-warmup 0`), its first repetition is one plain-REINFORCE
    // estimate, and the reported variance about REINFORCE's divided by R (the defect).
    let warmed = seed_loss_variances(estimators::DEFAULT_BASELINE_WARMUP);
    let cold = seed_loss_variances(0);
    assert_eq!(warmed.len(), 4);
    for ((id, s, var), (_, _, cold_var)) in warmed.iter().zip(&cold) {
        let reinforce = warmed
            .iter()
            .find(|(i, si, _)| i == "reinforce" && si == s)
            .unwrap()
            .2;
        assert!(
            reinforce > 50.0,
            "REINFORCE variance {reinforce} at S = {s}"
        );
        if id == "reinforce-ema" {
            assert!(*var < 1e-20 * reinforce, "warmed, S = {s}: {var}");
            assert!(*cold_var > 1e-5 * reinforce, "cold, S = {s}: {cold_var}");
        } else {
            assert_eq!(var, cold_var, "{id} has no baseline to warm up");
        }
    }
}

#[test]
fn shared_warm_up_counts_give_each_cells_own_baseline() {
    // The engines warm up every one-variable moving average on counts drawn once for all
    // cells (`warmed_counts_baselines`): each baseline must be the bits of the cell's own
    // warm-up (`warmed_baseline`), whatever the warm-up length (past and short of the shared
    // draws' tasks of 16 repetitions), S, loss, and first repetition (across the u32 wrap).
    let problem = spread_problem();
    let key = mcgrad::philox::key_of(11);
    let sf: Vec<&'static dyn Estimator> = estimators::REGISTRY
        .iter()
        .copied()
        .filter(|e| {
            matches!(
                e.lowering(),
                Some(estimators::Lowering::ScoreFunction { .. })
            )
        })
        .collect();
    assert!(sf.iter().any(|e| e.id() == "reinforce-ema"));
    let mut warmed_any = false;
    for warmup in [0u32, 1, 15, 16, 17, 50] {
        for s in [1u32, 16, 100] {
            for first_rep in [0u32, 7, u32::MAX - 20] {
                let contexts: Vec<Context> = Loss::QUADRATIC
                    .iter()
                    .map(|&loss| {
                        let mut ctx = Context::new(&problem, loss, 1.0);
                        ctx.settings.baseline_warmup = warmup;
                        ctx
                    })
                    .collect();
                let cells: Vec<(&dyn Estimator, &Context)> = contexts
                    .iter()
                    .flat_map(|ctx| sf.iter().map(move |&e| (e, ctx)))
                    .collect();
                let shared = estimators::warmed_counts_baselines(&cells, key, 3, s, first_rep);
                for (&(est, ctx), got) in cells.iter().zip(&shared) {
                    let want = estimators::warmed_baseline(est, ctx, key, 3, s, first_rep);
                    let (gs, gw) = got.state();
                    let (ws, ww) = want.state();
                    assert_eq!(
                        (gs.to_bits(), gw.to_bits()),
                        (ws.to_bits(), ww.to_bits()),
                        "{} under {}: warm-up {warmup}, S = {s}, first repetition {first_rep}",
                        est.id(),
                        ctx.loss
                    );
                    warmed_any |= ww > 0.0;
                }
            }
        }
    }
    assert!(warmed_any, "no cell warmed up: the test compares nothing");
    // At K = 30000 the warm-up's counts come in chunks of 34 repetitions (2^20 numbers): 50
    // repetitions cross a chunk's end.
    let wide = Problem::seeded(3, 2, 30_000);
    for s in [1u32, 16] {
        let mut ctx = Context::new(&wide, Loss::Squared, 1.0);
        ctx.settings.baseline_warmup = 50;
        let cells: Vec<(&dyn Estimator, &Context)> = ["reinforce-ema", "reinforce", "muprop-c"]
            .iter()
            .map(|id| (estimators::by_id(id).unwrap(), &ctx))
            .collect();
        let shared = estimators::warmed_counts_baselines(&cells, key, 5, s, 9);
        for (&(est, ctx), got) in cells.iter().zip(&shared) {
            let want = estimators::warmed_baseline(est, ctx, key, 5, s, 9);
            assert_eq!(
                (got.state().0.to_bits(), got.state().1.to_bits()),
                (want.state().0.to_bits(), want.state().1.to_bits()),
                "{} at K = 30000, S = {s}",
                est.id()
            );
        }
    }
}
