//! `mcgrad train` with its forward passes on the GPU: the GPU forward pass agrees with the
//! CPU one within an f32 bound, a short GPU training run ends close to the CPU run, and the
//! backend choice (`auto`, `gpu`, `--adapter`) resolves as `mcgrad run`'s does.
//!
//! Without an adapter the GPU tests print "skipped: no GPU adapter" (straight to stderr, past
//! the harness's capture) and return; with `MCGRAD_REQUIRE_GPU=1` a missing adapter fails.
//! On this project's CI that is Mesa's lavapipe (`WGPU_BACKEND=vulkan`). Workloads are small:
//! software GPUs are slow.

use std::io::Write;

use mcgrad::backend::Backend;
use mcgrad::estimators::by_id;
use mcgrad::train::data::{self, D, K};
use mcgrad::train::model;
use mcgrad::train::{self, OptimizerKind, Record, TrainConfig, TrainEngine, TrainOptions};
use mcgrad::Error;

/// The training engine on any GPU adapter, or `None` (after saying so) where there is none.
fn gpu() -> Option<TrainEngine> {
    match TrainEngine::new(Backend::Gpu, None) {
        Ok(engine) => {
            let info = engine.backend_info();
            let _ = writeln!(
                std::io::stderr(),
                "GPU adapter: {} ({:?}, {:?})",
                info.adapter,
                info.graphics_backend,
                info.driver
            );
            assert!(engine.is_gpu() && info.engine == "gpu");
            Some(engine)
        }
        Err(Error::GpuUnavailable(why)) => {
            if std::env::var("MCGRAD_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("MCGRAD_REQUIRE_GPU=1 but no GPU adapter: {why}");
            }
            let _ = writeln!(std::io::stderr(), "skipped: no GPU adapter ({why})");
            None
        }
        Err(other) => panic!("the GPU training engine failed to start: {other}"),
    }
}

/// Unit roundoff of f32.
const U32: f64 = f32::EPSILON as f64 / 2.0;

/// Checks GPU logits against the CPU's f64 ones, entry by entry, within the f32 bound
/// `|a_gpu - a| <= 32 u sum_i |x_i w_ij|` (u = 2^-24).
///
/// Why 32: the kernel rounds W to f32 (1 rounding per product's factor), each of its 64
/// threads adds ceil(784 / 64) = 13 products in sequence, a 6-level tree adds the partials,
/// and the result is stored as f32: at most 1 + 13 + 6 + 1 = 21 roundings on any path, each
/// relative u of at most `sum_i |x_i w_ij|`, so the standard bound is `gamma_21 ~ 21 u`
/// times that sum; 32 leaves room for a product rounded apart from its addition (no FMA).
/// The pixels are f32 on both sides, so they add no error.
fn assert_logits_close(x: &[f32], w: &[f64], gpu: &[f64], cpu: &[f64], what: &str) {
    let mut worst_ratio = 0.0f64;
    for (b, (g_row, c_row)) in gpu.chunks_exact(K).zip(cpu.chunks_exact(K)).enumerate() {
        for j in 0..K {
            let scale: f64 = (0..D)
                .map(|i| (f64::from(x[b * D + i]) * w[i * K + j]).abs())
                .sum();
            let err = (g_row[j] - c_row[j]).abs();
            let tol = 32.0 * U32 * scale + 1e-30;
            assert!(
                err <= tol,
                "{what}: row {b}, class {j}: GPU {} vs CPU {} (error {err:e} > bound {tol:e})",
                g_row[j],
                c_row[j]
            );
            worst_ratio = worst_ratio.max(err / tol);
        }
    }
    eprintln!("{what}: worst error {worst_ratio:.3} of the f32 bound");
}

fn config(steps: u32) -> TrainConfig {
    TrainConfig {
        loss: mcgrad::loss::Loss::Squared,
        samples: 2,
        batch: 16,
        steps,
        eval_every: 50,
        optimizer: OptimizerKind::Adam,
        tau: 1.0,
        seed: 7,
        variance_reps: 4,
    }
}

#[test]
fn gpu_forward_in_training_agrees_with_the_cpu() {
    let Some(engine) = gpu() else { return };
    let splits = data::builtin(7, 400, 300);
    // A trained W (from 150 CPU steps of `exact`) and a rougher one with both signs.
    let trained = train::train_estimator(
        &splits.train,
        &splits.test,
        by_id("exact").unwrap(),
        &config(150),
        0.03,
        Record::FinalLoss,
        &|_| {},
    )
    .w;
    let rough: Vec<f64> = (0..D * K)
        .map(|i| 0.5 * (((i * 7919) % 201) as f64 - 100.0) / 100.0)
        .collect();

    // The minibatch pass: one pass made once, new x and W at every call (in-place updates).
    let b = 16;
    let mut step = engine.step_pass(b, 2).unwrap();
    let mut cpu_step = TrainEngine::Cpu.step_pass(b, 2).unwrap();
    for (call, w) in [&trained, &rough, &trained].into_iter().enumerate() {
        let x = &splits.train.x[call * b * D..(call + 1) * b * D];
        let (mut got, mut want) = (vec![0.0; b * K], vec![0.0; b * K]);
        step.run(x, w, &mut got).unwrap();
        cpu_step.run(x, w, &mut want).unwrap();
        let mut direct = vec![0.0; b * K];
        model::forward_batch(x, w, &mut direct);
        assert_eq!(want, direct, "the CPU pass is model::forward_batch");
        assert_logits_close(x, w, &got, &want, &format!("minibatch call {call}"));
    }

    // The held-out pass: the images uploaded once, W rewritten between calls.
    let mut fixed = engine.fixed_pass(&splits.test.x).unwrap();
    let n = splits.test.len();
    for (name, w) in [("trained", &trained), ("rough", &rough)] {
        let (mut got, mut want) = (vec![0.0; n * K], vec![0.0; n * K]);
        fixed.run(w, &mut got).unwrap();
        model::forward_batch(&splits.test.x, w, &mut want);
        assert_logits_close(
            &splits.test.x,
            w,
            &got,
            &want,
            &format!("held-out, {name} W"),
        );
        // The exact held-out loss from f32 logits: a logit error e moves each probability
        // by a factor of at most exp(2e), far below the 1e-5 asked here.
        let (g, c) = (
            model::evaluate_logits(&splits.test.labels, &got, mcgrad::loss::Loss::Squared),
            model::evaluate(&splits.test, w, mcgrad::loss::Loss::Squared),
        );
        assert!((g.loss - c.loss).abs() < 1e-5, "{name}: {g:?} vs {c:?}");
    }
}

fn short_args(backend: Backend) -> TrainOptions {
    TrainOptions {
        estimators: vec![
            "exact".into(),
            "reinforce".into(),
            "muprop-c".into(),
            "gumbel-softmax".into(),
            // The hard-draw lowering (`st`, `reinmax`) reads the GPU's category counts too (it
            // once read none, and stayed at W = 0 on the GPU).
            "st".into(),
        ],
        steps: 200,
        batch: 16,
        lr: Some(0.01),
        seed: 3,
        train_size: Some(1000),
        test_size: Some(300),
        eval_every: 50,
        variance_reps: 4,
        quiet: true,
        backend,
        ..TrainOptions::default()
    }
}

/// Same seed, same data, same draws: the GPU run differs from the CPU run only through f32
/// logits (relative error ~1e-7 to 1e-6, see [`assert_logits_close`]).
/// - `exact` (no draws) and `gumbel-softmax` (its gradient is a continuous function of the
///   logits and the Gumbel noise) only carry that perturbation along: every held-out loss
///   within 1e-3 (observed on lavapipe: 1e-8).
/// - `reinforce`, `muprop-c` and `st` count categorical draws: a draw whose uniform lands within
///   the logit error of a CDF boundary flips (rare per draw, but 200 steps x 16 inputs x 2
///   draws make a few thousand), and from there the two runs follow different but equally
///   distributed paths. Their final held-out loss must agree within 0.1: observed
///   differences on lavapipe 0.027 and 0.023, while the seed-to-seed standard deviation of
///   these runs on the CPU (seeds 1-6) is 0.15 for `reinforce` and 0.07 for `muprop-c`; a
///   broken forward pass would stay near the starting 1.8 or diverge.
/// - Step 0 is identical (W = 0 gives logits exactly 0 on both), and every GPU run learns.
#[test]
fn short_gpu_training_run_is_close_to_the_cpu_run() {
    let Some(engine) = gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let args = TrainOptions {
        out: dir.path().join("gpu"),
        ..short_args(Backend::Gpu)
    };
    let plan = train::plan(&args).unwrap();
    let splits = train::load_data(&args).unwrap();
    let t = std::time::Instant::now();
    let cpu = train::run_plan_on(&TrainEngine::Cpu, &plan, &splits, &|_| {}).unwrap();
    let cpu_s = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let gpu_report = train::run_plan_on(&engine, &plan, &splits, &|_| {}).unwrap();
    let gpu_s = t.elapsed().as_secs_f64();
    eprintln!("CPU run {cpu_s:.2} s, GPU run {gpu_s:.2} s");
    assert_eq!(cpu.backend.engine, "cpu");
    assert_eq!(gpu_report.backend.engine, "gpu");
    for (c, g) in cpu.curves.iter().zip(&gpu_report.curves) {
        assert_eq!(c.estimator, g.estimator);
        assert_eq!(c.points.len(), 5, "points at steps 0, 50, ..., 200");
        assert_eq!(c.points[0].heldout_loss, g.points[0].heldout_loss);
        assert_eq!(c.points[0].grad_variance, g.points[0].grad_variance);
        let (cl, gl) = (c.last().heldout_loss, g.last().heldout_loss);
        eprintln!(
            "{:<15} final held-out loss: CPU {cl:.5}, GPU {gl:.5} (difference {:.2e})",
            c.estimator,
            (cl - gl).abs()
        );
        let continuous = matches!(c.estimator, "exact" | "gumbel-softmax");
        assert!(
            (cl - gl).abs() < if continuous { 1e-3 } else { 0.1 },
            "{}: CPU {cl} vs GPU {gl}",
            c.estimator
        );
        assert!(
            gl < c.points[0].heldout_loss - 0.1,
            "{}: the GPU run did not learn ({gl})",
            c.estimator
        );
        if continuous {
            for (pc, pg) in c.points.iter().zip(&g.points) {
                assert!(
                    (pc.heldout_loss - pg.heldout_loss).abs() < 1e-3,
                    "{} at step {}: {pc:?} vs {pg:?}",
                    c.estimator,
                    pc.step
                );
            }
        }
    }

    // curves.json says where the forward passes ran.
    train::write_outputs(&args.out, &gpu_report).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(args.out.join("curves.json")).unwrap())
            .unwrap();
    let b = &json["backend"];
    assert_eq!(b["engine"], "gpu");
    assert_eq!(b["forward_pass"], "gpu");
    assert_eq!(b["draws"], "gpu");
    assert_eq!(b["estimators_and_optimizer"], "cpu");
    assert_eq!(b["requested"], "gpu");
    assert_eq!(b["adapter"], gpu_report.backend.adapter.as_str());
    assert!(!gpu_report.backend.adapter.is_empty());
}

/// `run_train` end to end with `--backend gpu`: the files and the recorded backend.
#[test]
fn run_train_on_the_gpu_writes_its_files() {
    let Some(_) = gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let args = TrainOptions {
        out: out.clone(),
        steps: 40,
        eval_every: 20,
        estimators: vec!["exact".into(), "rloo".into()],
        lr: None,
        lr_grid: Some(vec![0.003, 0.03]),
        tune_steps: Some(10),
        ..short_args(Backend::Gpu)
    };
    train::run_train(&args).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("curves.json")).unwrap()).unwrap();
    assert_eq!(json["backend"]["engine"], "gpu");
    assert_eq!(json["estimators"].as_array().unwrap().len(), 2);
    assert_eq!(
        json["estimators"][1]["tuning"].as_array().unwrap().len(),
        2,
        "both rates tuned on the GPU"
    );
    assert!(out.join("loss_vs_steps.png").is_file());
}

/// The backend choice, with or without a GPU: `cpu` is the CPU; `gpu` with an adapter name
/// that matches nothing is `GpuUnavailable`; `auto` takes a GPU exactly when a hardware
/// adapter exists (a software one, like lavapipe, is slower than the CPU here).
#[test]
fn backend_choice_follows_mcgrad_run() {
    assert!(!TrainEngine::new(Backend::Cpu, None).unwrap().is_gpu());
    assert!(matches!(
        TrainEngine::new(Backend::Gpu, Some("no-such-adapter-anywhere")),
        Err(Error::GpuUnavailable(_))
    ));
    assert!(
        !TrainEngine::new(Backend::Auto, Some("no-such-adapter-anywhere"))
            .unwrap()
            .is_gpu()
    );
    let hardware = mcgrad::gpu::adapter_list().iter().any(|a| a.hardware);
    let auto = TrainEngine::new(Backend::Auto, None).unwrap();
    assert_eq!(
        auto.is_gpu(),
        hardware,
        "auto chose {:?}",
        auto.backend_info()
    );
}

/// Learning-rate tuning runs its grid in parallel on the one device: the runs must not
/// disturb each other's round trips (without `GpuForward`'s lock, a map callback delivered
/// by another thread's poll made two of three `mcgrad train --backend gpu --steps 200` runs
/// on lavapipe fail with "the results were never mapped"; this test exercises the shared path but is too short to catch that
/// race reliably), and `exact`'s scores agree with
/// the CPU's (no draws: only the f32 logits differ): the same rate wins, and at the rates up
/// to 0.03 the scores agree within 0.01 (observed on lavapipe: below 1e-6 up to 0.01, 2e-4
/// at 0.03; the gaps between rates are 0.15 or more). Past 0.03 Adam is unstable on this
/// problem and amplifies the 1e-7 logit differences (observed: 2e-3 at 0.1, 2e-2 at 0.3), so
/// those scores are only printed.
#[test]
fn parallel_tuning_shares_the_gpu() {
    let Some(engine) = gpu() else { return };
    let splits = data::builtin(9, 600, 200);
    let grid = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3];
    let cfg = TrainConfig {
        batch: 8,
        ..config(150)
    };
    for id in ["exact", "reinforce"] {
        let est = by_id(id).unwrap();
        let run = |engine: &TrainEngine| {
            train::tune_lr_on(
                engine,
                &splits.train,
                &splits.validation,
                est,
                &cfg,
                &grid,
                150,
                &|_| {},
            )
            .unwrap()
        };
        let (cpu, gpu_scores) = (run(&TrainEngine::Cpu), run(&engine));
        assert_eq!(gpu_scores.1.len(), grid.len());
        if id == "exact" {
            assert_eq!(cpu.0, gpu_scores.0, "the same rate wins");
            for (c, g) in cpu.1.iter().zip(&gpu_scores.1) {
                eprintln!(
                    "exact, lr {}: CPU {:.6}, GPU {:.6}",
                    c.lr, c.validation_loss, g.validation_loss
                );
            }
            for (c, g) in cpu
                .1
                .iter()
                .zip(&gpu_scores.1)
                .filter(|(c, _)| c.lr <= 0.03)
            {
                assert!(
                    (c.validation_loss - g.validation_loss).abs() < 0.01,
                    "lr {}: CPU {} vs GPU {}",
                    c.lr,
                    c.validation_loss,
                    g.validation_loss
                );
            }
        }
    }
}

#[test]
fn gpu_training_draws_match_their_cpu_twins() {
    // The draws of a step made on the GPU beside the forward pass, against the CPU's draws
    // with the same Philox counters from the same (GPU) logits: the classes agree except
    // where a uniform falls between the f32 and the f64 cumulative sums (rare: at most 0.2%
    // here), and the relaxed weights agree to f32 accuracy.
    use mcgrad::draws::{count_categories, CategoricalTable, RelaxedTable};
    use mcgrad::gpu::train_draws::{DrawKind, TrainDrawParams, TrainDrawn};
    use mcgrad::philox::key_of;
    let Some(engine) = gpu() else { return };
    let splits = data::builtin(3, 600, 10);
    let w: Vec<f64> = (0..D * K)
        .map(|i| 0.02 * (((i * 7919) % 201) as f64 - 100.0) / 100.0)
        .collect();
    let (b, s) = (512usize, 8u32);
    let x = &splits.train.x[..b * D];
    let key = key_of(11);
    let params = TrainDrawParams {
        key,
        step: 5,
        batch: b as u32,
        samples: s,
        k: K as u32,
        rep_offset: 0,
        inv_tau: 2.0,
    };
    let mut step = engine.step_pass(b, s).unwrap();
    let mut logits = vec![0.0; b * K];

    let drawn = step
        .run_drawn(x, &w, &mut logits, Some((DrawKind::Categorical, params)))
        .unwrap();
    let Some(TrainDrawn::Counts(counts)) = drawn else {
        panic!("no counts")
    };
    let mut differing = 0u32;
    for row in 0..b {
        let p = mcgrad::problem::softmax(&logits[row * K..(row + 1) * K]);
        let mut want = [0u32; K];
        count_categories(&CategoricalTable::new(&p), key, row as u32, 5, s, &mut want);
        let got = &counts[row * 16..row * 16 + K];
        assert_eq!(
            got.iter().sum::<u32>(),
            s,
            "input {row}: counts must sum to S"
        );
        differing += got
            .iter()
            .zip(&want)
            .map(|(g, w)| g.abs_diff(*w))
            .sum::<u32>()
            / 2;
    }
    assert!(
        differing * 500 <= b as u32 * s,
        "{differing} of {} draws differ",
        b as u32 * s
    );

    let drawn = step
        .run_drawn(x, &w, &mut logits, Some((DrawKind::Gumbel, params)))
        .unwrap();
    let Some(TrainDrawn::Gumbel { weights, classes }) = drawn else {
        panic!("no relaxed draws")
    };
    let (mut h, mut y) = (vec![0f32; K], vec![0f64; K]);
    let mut flipped = 0;
    for row in 0..b {
        let table = RelaxedTable::new(&logits[row * K..(row + 1) * K], 0.5);
        for d in 0..s as usize {
            let z = table.draw(key, row as u32, 5, d as u32, &mut h, &mut y);
            let at = (row * s as usize + d) * 16;
            if classes[row * s as usize + d] as usize != z {
                flipped += 1;
                continue;
            }
            for c in 0..K {
                let diff = (f64::from(weights[at + c]) - y[c]).abs();
                assert!(
                    diff < 1e-5,
                    "input {row} draw {d} class {c}: {} vs {}",
                    weights[at + c],
                    y[c]
                );
            }
        }
    }
    assert!(flipped * 500 <= b * s as usize, "{flipped} argmax flips");
}

mod whole_steps {
    //! The whole-step kernel (`shaders/train_step.wgsl`) against its CPU twin
    //! (`gpu::train_step::steps_cpu`).
    use super::*;
    use mcgrad::gpu::train_step::{steps_cpu, StepSpec, TwinRun};
    use mcgrad::train::resident::{loss_form, rule_for};

    pub fn compare(id: &str, optimizer: OptimizerKind, lr: f64, steps: u32) -> (f64, u64) {
        let Some(engine) = gpu() else { return (0.0, 0) };
        let TrainEngine::Gpu(g) = &engine else {
            unreachable!()
        };
        let splits = data::builtin(5, 2000, 10);
        let train = &splits.train;
        let est = by_id(id).unwrap();
        let loss = mcgrad::loss::Loss::Squared;
        let batch: u32 = std::env::var("DBG_B").map_or(16, |v| v.parse().unwrap());
        let spec = StepSpec {
            key: mcgrad::philox::key_of(21),
            rule: rule_for(est, loss, 1.0, 2).expect("a rule"),
            loss: loss_form(loss).unwrap(),
            optimizer,
            tau: 1.0,
            samples: 2,
            batch,
        };
        let mut stream = mcgrad::train::BatchStream::new(0, 2000);
        let mut order = Vec::new();
        let mut idx = Vec::new();
        for _ in 0..steps {
            stream.next_batch(batch as usize, &mut idx);
            order.extend_from_slice(&idx);
        }
        let session = g
            .step_kernel()
            .session(
                g.context(),
                &train.x,
                &train.labels,
                D,
                K,
                spec,
                &[lr],
                steps,
                mcgrad::gpu::train_step::steps_per_dispatch(g.context(), batch, 2, D, K, steps),
                true,
            )
            .unwrap();
        let per: u32 = std::env::var("DBG_C").map_or(steps, |v| v.parse().unwrap());
        let mut out = mcgrad::gpu::train_step::ChunkResult::default();
        out.objectives.push(Vec::new());
        out.record.push(Vec::new());
        for c in 0..steps.div_ceil(per) {
            let a = (c * per * batch) as usize;
            let e = (((c + 1) * per).min(steps) * batch) as usize;
            let o = session
                .run(g.context(), g.step_kernel(), c * per, &order[a..e], true)
                .unwrap();
            out.objectives[0].extend(o.objectives[0].clone());
            out.record[0].extend(o.record[0].clone());
            out.w = o.w;
        }
        let mut twin = TwinRun::new(optimizer, lr, D, K);
        let watch: usize = std::env::var("DBG_W").map_or(0, |v| v.parse().unwrap());
        let chunk = steps_cpu(
            &spec,
            &train.x,
            &train.labels,
            D,
            K,
            0,
            &order,
            &mut twin,
            Some(&out.record[0]),
            &mut |g, a| eprintln!("G[{watch}] = {} (abs {})", g[watch], a[watch]),
        );
        let mut worst = 0.0f64;
        for (i, (gw, cw)) in out.w[0].iter().zip(&twin.w).enumerate() {
            let d = (f64::from(*gw) - cw).abs();
            if d > worst {
                worst = d;
                eprintln!("{id}: W[{i}] GPU {gw} CPU {cw}");
            }
        }
        for (s, (go, co)) in out.objectives[0].iter().zip(&chunk.objectives).enumerate() {
            eprintln!("step {s}: objective GPU {go} CPU {co}");
        }
        (worst, chunk.replaced_draws)
    }

    #[test]
    fn debug_exact() {
        let r = compare("exact", OptimizerKind::Sgd, 0.1, 3);
        eprintln!("{r:?}");
        let r = compare("exact", OptimizerKind::Adam, 0.01, 50);
        eprintln!("{r:?}");
    }
}
