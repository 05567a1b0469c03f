//! The straight-through and relaxation-based estimators (`st`, `gumbel-rao`, `reinmax`,
//! `rebar`, `relax`) against their oracles, on problems with several variables:
//! - `st` and `reinmax` depend only on the hard draw: their exact mean and variance (by
//!   enumeration) agree with Monte Carlo, and their bias shows;
//! - `rebar` and `relax` are unbiased: their Monte Carlo mean agrees with the exact gradient,
//!   and their warm-up brings their variance below REINFORCE's on `rebar-toy`;
//! - `gumbel-rao` has `st-gumbel`'s mean (biased) and less variance;
//! - every one refuses the `table` loss (exit code 2); the flags reach the estimators.
//!
//! Every check is seeded (never flaky). "Agrees" means within 5 standard errors per
//! coordinate: a false-alarm probability of 5.7e-7 per normal comparison, below 1e-4 for the
//! few hundred comparisons here. "Shows its bias" means a largest z-score above 8 (a
//! Bonferroni p-value below 1e-13 over the coordinates).

// Index loops keep the formulas comparable to the module docs.
#![allow(clippy::needless_range_loop)]

use std::process::Command;

use mcgrad::engine::{run_sweep, CpuEngine, SweepSpec};
use std::sync::Arc;

use mcgrad::draws::JointRelaxedTable;
use mcgrad::estimators::{self, Context, JointDraws, Noise, Settings, WarmUp};
use mcgrad::loss::Loss;
use mcgrad::philox::key_of;
use mcgrad::problem::{Decoder, Problem};
use mcgrad::problems;
use mcgrad::record::{records, Record};

/// Three variables of three categories feeding a five-unit sigmoid decoder: a loss that
/// couples the variables, enumerated exactly (27 joint draws).
fn decoder_problem() -> Problem {
    let (l, k, h) = (3, 3, 5);
    let logits = (0..l * k).map(|i| 0.8 * (i as f64 * 1.3).sin()).collect();
    let mut p = Problem::free_logits(l, k, logits);
    p.decoder = Some(Decoder {
        h,
        v: (0..h * l * k)
            .map(|i| 1.5 * (i as f64 * 0.71).cos())
            .collect(),
        c: vec![0.2, -0.4, 0.1, 0.3, -0.1],
        target: vec![1.0, 0.0, 1.0, 0.0, 1.0],
    });
    p
}

/// `indecater-12x3` with the pnorm exponent 2 (a separable loss: closed-form oracles).
fn indecater_problem() -> Problem {
    let mut p = (problems::by_name("indecater-12x3").unwrap().build)(0);
    p.exponent = 2.0;
    p
}

/// The two multi-variable problems with their losses.
fn problems() -> Vec<(&'static str, Problem, Loss)> {
    vec![
        ("decoder-3x3", decoder_problem(), Loss::Decoder),
        ("indecater-12x3 p=2", indecater_problem(), Loss::Pnorm),
    ]
}

fn spec(problem: Problem, loss: Loss, ids: &[&str], s: &[u32], reps: u32, tau: f64) -> SweepSpec {
    SweepSpec {
        problem,
        losses: vec![loss],
        estimators: ids
            .iter()
            .map(|id| estimators::by_id(id).unwrap())
            .collect(),
        samples: s.to_vec(),
        reps,
        seed: 7,
        tau,
        settings: Settings::default(),
    }
}

fn sweep(spec: &SweepSpec) -> Vec<Record> {
    let points = run_sweep(spec, &CpuEngine::new(0).unwrap(), &|_| {}).unwrap();
    records(spec, &points)
}

fn context(spec: &SweepSpec) -> Context {
    spec.contexts().remove(0)
}

fn find<'a>(recs: &'a [Record], id: &str, s: u32) -> &'a Record {
    recs.iter()
        .find(|r| r.estimator == id && r.samples == s)
        .unwrap()
}

#[test]
fn st_and_reinmax_exact_moments_match_monte_carlo_and_their_bias_shows() {
    let reps = 20_000;
    let mut cubic = indecater_problem();
    cubic.exponent = 3.0;
    let mut cases = problems();
    cases.push(("indecater-12x3 p=3", cubic, Loss::Pnorm));
    for (name, problem, loss) in cases {
        let spec = spec(problem, loss, &["st", "reinmax"], &[1, 16], reps, 1.0);
        let ctx = context(&spec);
        let recs = sweep(&spec);
        for id in ["st", "reinmax"] {
            let est = estimators::by_id(id).unwrap();
            for s in [1, 16] {
                let r = find(&recs, id, s);
                let exact = est.exact_moments(&ctx, s).expect("enumerable");
                let m4 = exact.m4.as_ref().unwrap();
                let n = f64::from(reps);
                for j in 0..ctx.dim() {
                    let se = (exact.var[j] / n).sqrt().max(1e-12);
                    assert!(
                        (r.mean[j] - exact.mean[j]).abs() < 5.0 * se,
                        "{name} {id} S={s} mean[{j}]: {} vs exact {}",
                        r.mean[j],
                        exact.mean[j]
                    );
                    // Var of a sample variance: (mu4 - sigma^4) / R.
                    let var_se = ((m4[j] - exact.var[j].powi(2)) / n).sqrt().max(1e-12);
                    assert!(
                        (r.var[j] - exact.var[j]).abs() < 5.0 * var_se,
                        "{name} {id} S={s} var[{j}]: {} vs exact {}",
                        r.var[j],
                        exact.var[j]
                    );
                }
                // The exact bias is real, and the Monte Carlo run shows it.
                let bias: f64 = exact
                    .mean
                    .iter()
                    .zip(&ctx.grad)
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f64>()
                    .sqrt();
                if id == "reinmax" && name == "indecater-12x3 p=2" {
                    // ReinMax is second-order accurate (Liu et al. 2023): its mean is exact for
                    // a loss quadratic in each variable (here, at tau = 1), and the run agrees.
                    assert!(bias < 1e-12, "{name} {id}: exact bias {bias}");
                    assert!(r.bias_z_max < 5.0, "{name} {id}: z {}", r.bias_z_max);
                    continue;
                }
                assert!(bias > 1e-3, "{name} {id}: exact bias {bias}");
                // At S = 16 the standard error is a quarter of S = 1's.
                assert!(
                    s == 1 || r.bias_z_max > 8.0,
                    "{name} {id} S={s}: bias z {}",
                    r.bias_z_max
                );
                assert!(!r.unbiased && r.exact_var.is_some());
            }
        }
    }
}

#[test]
fn hard_draw_counts_lowering_equals_the_generic_path() {
    // One variable: the counts path (sum_k n_k g(e_k) / S) and the generic path over the same
    // draws agree to rounding.
    let mut problem = Problem::free_logits(1, 5, vec![0.3, -0.2, 0.9, 0.0, -1.1]);
    problem.b = vec![1.7];
    problem.exponent = 1.5;
    let ctx = Context::new(&problem, Loss::Pnorm, 0.8);
    let z = [2u32, 0, 2, 4, 1, 2, 3, 0];
    let mut counts = [0u32; 5];
    z.iter().for_each(|&c| counts[c as usize] += 1);
    let noise = Noise {
        key: [0, 0],
        rep: 0,
        point: 0,
    };
    let draws = JointDraws {
        s: z.len(),
        z: &z,
        f: &[],
        y: &[],
        perturbed: &[],
        noise,
    };
    for id in ["st", "reinmax"] {
        let est = estimators::by_id(id).unwrap();
        let (mut a, mut b) = (vec![0.0; 5], vec![0.0; 5]);
        est.estimate(&ctx, &draws, 0.0, &mut a);
        est.estimate_from_counts(&ctx, &counts, z.len() as u32, 0.0, &mut b);
        for j in 0..5 {
            assert!(
                (a[j] - b[j]).abs() < 1e-14,
                "{id} [{j}]: {} vs {}",
                a[j],
                b[j]
            );
        }
    }
}

#[test]
fn rebar_and_relax_are_unbiased_on_two_multi_variable_problems() {
    let reps = 6000;
    for (name, problem, loss) in problems() {
        // Tuned in the warm-up, and REBAR with the control variate at full strength (a tuned
        // eta near 0 would make any bracket look unbiased).
        let tuned = spec(problem, loss, &["rebar", "relax"], &[1, 8], reps, 0.5);
        let mut fixed = tuned.clone();
        fixed.estimators = vec![estimators::by_id("rebar").unwrap()];
        fixed.settings.rebar_eta = Some(1.0);
        fixed.settings.rebar_tau = Some(0.5);
        let mut recs = sweep(&tuned);
        recs.extend(sweep(&fixed));
        for r in &recs {
            assert!(r.unbiased);
            // Against an exact gradient: 5 se per coordinate (see the module doc).
            assert!(
                r.bias_z_max < 5.0,
                "{name} {} S={}: bias z {} (mean {:?} vs {:?})",
                r.estimator,
                r.samples,
                r.bias_z_max,
                r.mean,
                r.exact_grad
            );
            assert!(r.warm_up.is_some());
            assert_eq!(
                r.loss_evaluations_per_draw,
                if r.estimator == "rebar" { 3.0 } else { 1.0 }
            );
        }
    }
}

#[test]
fn relax_is_unbiased_whatever_its_network() {
    // A trained network is nearly a constant (a baseline), whose input gradient is small; a
    // random network with large weights exercises every term of the estimator (dropping the
    // gradient through z~ fails this test; a 10% error in it is below its power).
    for (name, problem, loss) in problems() {
        let mut ctx = Context::new(&problem, loss, 2.0);
        let n = ctx.dim();
        let len = 16 * n + 2 * 16 + 1;
        // Hidden units off saturation (|W1 y + b1| below about 1.5), output weights large.
        let params = (0..len)
            .map(|i| {
                let w = (i as f64 * 0.917).sin();
                if i < 16 * n + 16 {
                    0.7 * w
                } else {
                    4.0 * w
                }
            })
            .collect();
        ctx.warm = Some(Arc::new(WarmUp {
            params,
            evaluations: 0.0,
            report: String::new(),
        }));
        let relax = estimators::by_id("relax").unwrap();
        let table = JointRelaxedTable::new(&ctx.logits, ctx.k, ctx.tau);
        let (reps, s) = (200_000u32, 1usize);
        let key = key_of(3);
        let (mut y, mut g, mut z) = (vec![0.0; s * n], vec![0.0; s * n], vec![0u32; s * ctx.l]);
        let mut h = vec![0f32; ctx.k];
        let (mut sum, mut sum_sq) = (vec![0.0; n], vec![0.0; n]);
        let mut est = vec![0.0; n];
        for rep in 0..reps {
            for d in 0..s {
                table.draw(
                    key,
                    rep,
                    0,
                    d as u32,
                    &mut h,
                    &mut y[d * n..(d + 1) * n],
                    &mut g[d * n..(d + 1) * n],
                    &mut z[d * ctx.l..(d + 1) * ctx.l],
                );
            }
            let draws = JointDraws {
                s,
                z: &z,
                f: &[],
                y: &y,
                perturbed: &g,
                noise: Noise { key, rep, point: 0 },
            };
            relax.estimate(&ctx, &draws, 0.0, &mut est);
            for j in 0..n {
                sum[j] += est[j];
                sum_sq[j] += est[j] * est[j];
            }
        }
        let r = f64::from(reps);
        for j in 0..n {
            let mean = sum[j] / r;
            let se = ((sum_sq[j] / r - mean * mean) / r).sqrt();
            assert!(
                (mean - ctx.grad[j]).abs() < 5.0 * se,
                "{name} [{j}]: relax {mean} ± {se} vs exact {}",
                ctx.grad[j]
            );
        }
    }
}

#[test]
fn warm_up_brings_rebar_and_relax_below_reinforce_on_rebar_toy() {
    let reps = 20_000;
    let problem = (problems::by_name("rebar-toy").unwrap().build)(0);
    let mut spec = spec(
        problem,
        Loss::Pnorm,
        &["reinforce", "rebar", "relax"],
        &[1],
        reps,
        1.0,
    );
    let recs = sweep(&spec);
    let var = |recs: &[Record], id: &str| {
        let r = find(recs, id, 1);
        (r.total_var_w, r.total_var_w_se)
    };
    let (v_reinforce, se_reinforce) = var(&recs, "reinforce");
    for id in ["rebar", "relax"] {
        let (v, se) = var(&recs, id);
        // Far apart: the difference exceeds 5 combined standard errors.
        assert!(
            v + 5.0 * se.hypot(se_reinforce) < v_reinforce,
            "{id}: variance {v} ± {se} vs reinforce {v_reinforce} ± {se_reinforce}"
        );
    }
    // Without a warm-up RELAX's control variate is 0: REINFORCE's variance (5 se), so the
    // warm-up is what lowers it.
    spec.settings.warmup = 0;
    let cold = sweep(&spec);
    let (v, se) = var(&cold, "relax");
    assert!(
        (v - v_reinforce).abs() < 5.0 * se.hypot(se_reinforce),
        "untrained relax {v} vs reinforce {v_reinforce}"
    );
    let (v_cold, se_cold) = var(&cold, "rebar");
    let (v_warm, se_warm) = var(&recs, "rebar");
    assert!(
        v_warm < v_cold + 5.0 * se_cold.hypot(se_warm),
        "tuned rebar {v_warm} vs untuned {v_cold}"
    );
}

#[test]
fn rebar_with_eta_zero_is_reinforce() {
    // eta = 0 drops the control variate: f(b) s, REINFORCE's exact variance (5 se).
    let reps = 20_000;
    let (_, problem, loss) = problems().remove(0);
    let mut spec = spec(problem, loss, &["rebar", "reinforce"], &[2], reps, 1.0);
    spec.settings.rebar_eta = Some(0.0);
    spec.settings.rebar_tau = Some(0.3);
    let recs = sweep(&spec);
    let rebar = find(&recs, "rebar", 2);
    let exact = find(&recs, "reinforce", 2).exact_var.clone().unwrap();
    assert!(rebar.warm_up.as_deref().unwrap().contains("fixed by flags"));
    for j in 0..exact.len() {
        assert!(
            (rebar.var[j] - exact[j]).abs() < 5.0 * rebar.var_se[j].max(1e-12),
            "[{j}] {} vs {}",
            rebar.var[j],
            exact[j]
        );
    }
}

#[test]
fn gumbel_rao_has_st_gumbel_mean_with_less_variance() {
    let reps = 20_000;
    for (name, problem, loss) in problems() {
        let spec = spec(problem, loss, &["st-gumbel", "gumbel-rao"], &[1], reps, 0.5);
        let recs = sweep(&spec);
        let (st, gr) = (find(&recs, "st-gumbel", 1), find(&recs, "gumbel-rao", 1));
        assert!(
            gr.bias_z_max > 8.0,
            "{name}: gumbel-rao bias z {}",
            gr.bias_z_max
        );
        for j in 0..gr.mean.len() {
            let se = gr.mean_se[j].hypot(st.mean_se[j]).max(1e-12);
            assert!(
                (gr.mean[j] - st.mean[j]).abs() < 5.0 * se,
                "{name} [{j}]: gumbel-rao {} vs st-gumbel {}",
                gr.mean[j],
                st.mean[j]
            );
        }
        assert!(
            gr.total_var_w + 5.0 * gr.total_var_w_se.hypot(st.total_var_w_se) < st.total_var_w,
            "{name}: gumbel-rao variance {} vs st-gumbel {}",
            gr.total_var_w,
            st.total_var_w
        );
    }
}

#[test]
fn the_table_loss_is_refused_with_exit_code_2() {
    let mut problem = Problem::free_logits(2, 2, vec![0.1, -0.3, 0.5, 0.2]);
    problem.table = vec![1.0, 0.0, 0.5, 2.0];
    for id in ["st", "gumbel-rao", "reinmax", "rebar", "relax"] {
        let spec = spec(problem.clone(), Loss::Table, &[id], &[1], 10, 1.0);
        let err = spec.validate().unwrap_err();
        assert_eq!(err.exit_code(), 2, "{id}");
        assert!(err.to_string().contains("off the vertices"), "{id}: {err}");
    }
}

#[test]
fn the_binary_lists_and_passes_the_flags() {
    let help = Command::new(env!("CARGO_BIN_EXE_mcgrad"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in ["--gr-samples", "--rebar-eta", "--rebar-tau", "--warmup"] {
        assert!(help.contains(flag), "{flag} missing from run --help");
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_mcgrad"))
        .args([
            "run",
            "--problem",
            "rebar-toy",
            "--estimators",
            "st,gumbel-rao,reinmax,rebar,relax",
            "--samples",
            "1,4",
            "--reps",
            "50",
            "--rebar-eta",
            "0.5",
            "--rebar-tau",
            "0.7",
            "--gr-samples",
            "3",
            "--warmup",
            "5",
            "--backend",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("rebar: eta 0.5000, tau 0.7000 (fixed by flags"),
        "{stderr}"
    );
    assert!(
        stderr.contains("relax warm-up at S = 4: 5 Adam steps"),
        "{stderr}"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_mcgrad"))
        .args([
            "run",
            "--problem",
            "rebar-toy",
            "--gr-samples",
            "0",
            "--out",
        ])
        .arg(tmp.path().join("bad"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

/// Gumbel-Rao does a draw's conditional draws once for every loss of a sweep point: the
/// records of a sweep of four losses at once equal, bit for bit, those of each loss swept
/// alone (where there is nothing to share), on a problem of three variables, at S = 1 and 8,
/// on one thread and on every core.
#[test]
fn gumbel_rao_shares_its_draws_across_losses_with_each_losss_own_bits() {
    let (l, k) = (3, 4);
    let logits = (0..l * k).map(|i| 0.9 * (i as f64 * 0.7).sin()).collect();
    let mut problem = Problem::free_logits(l, k, logits);
    problem.t = (0..l * k).map(|i| (i as f64 * 0.37).cos().abs()).collect();
    problem.b = vec![0.3, 0.6, 0.9];
    let losses = [Loss::Squared, Loss::Seed, Loss::Linear, Loss::Pnorm];
    let together = |threads: usize| {
        let mut spec = spec(
            problem.clone(),
            losses[0],
            &["gumbel-rao"],
            &[1, 8],
            300,
            0.7,
        );
        spec.losses = losses.to_vec();
        spec.settings.gr_samples = 3;
        let points = run_sweep(&spec, &CpuEngine::new(threads).unwrap(), &|_| {}).unwrap();
        records(&spec, &points)
    };
    let bits = |mut recs: Vec<Record>| {
        recs.iter_mut().for_each(|r| r.seconds = 0.0);
        serde_json::to_string(&recs).unwrap()
    };
    let mut alone = Vec::new();
    for &loss in &losses {
        let mut spec = spec(problem.clone(), loss, &["gumbel-rao"], &[1, 8], 300, 0.7);
        spec.settings.gr_samples = 3;
        alone.extend(sweep(&spec));
    }
    // The sweep's records are point-major, then loss by loss; the losses alone, loss-major.
    let order = |r: &Record| (r.samples, losses.iter().position(|&l| l.name() == r.loss));
    alone.sort_by_key(order);
    let mut joint = together(0);
    joint.sort_by_key(order);
    assert_eq!(joint.len(), 8);
    assert!(joint.iter().all(|r| r.var.iter().any(|&v| v > 0.0)));
    let alone = bits(alone);
    assert_eq!(bits(joint), alone);
    let mut one_thread = together(1);
    one_thread.sort_by_key(order);
    assert_eq!(bits(one_thread), alone);
}

/// gumbel-rao's conditional draw j of draw i reads noise block `i M + j`, a 32-bit counter:
/// a sweep whose S x M passes 2^32 (where the blocks would wrap and repeat) is refused with
/// the largest S it takes, and one at 2^32 - 1 is not.
#[test]
fn gumbel_rao_refuses_more_conditional_draws_than_its_noise_blocks() {
    let problem = indecater_problem();
    let m = (1u32 << 16) + 1;
    let with = |s: u32| {
        let mut spec = spec(
            problem.clone(),
            Loss::Pnorm,
            &["gumbel-rao"],
            &[1, s],
            2,
            1.0,
        );
        spec.settings.gr_samples = m;
        spec.validate()
    };
    // 65535 (2^16 + 1) = 2^32 - 1 blocks: taken.
    assert!(with((1 << 16) - 1).is_ok());
    let err = with(1 << 16).unwrap_err().to_string();
    assert!(
        err.contains("gumbel-rao at S = 65536") && err.contains("S <= 65535"),
        "{err}"
    );
}
