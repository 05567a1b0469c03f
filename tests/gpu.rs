//! GPU kernels against their CPU twins, and the GPU engine against the CPU engine.
//!
//! Without an adapter every test prints "skipped: no GPU adapter" (straight to stderr, past
//! the test harness's capture) and returns; with `MCGRAD_REQUIRE_GPU=1` a missing adapter
//! fails. CI runs them on Mesa's lavapipe (Vulkan) and llvmpipe (`WGPU_BACKEND=gl`).
//! Workloads are small: software GPUs are slow.

use std::io::Write;

use mcgrad::draws::{count_categories, CategoricalTable, RelaxedTable};
use mcgrad::engine::{run_sweep, CpuEngine, Engine, SweepSpec};
use mcgrad::estimators::{self, RelaxedDraw};
use mcgrad::gpu::{
    forward::forward_cpu, philox_kernel::philox_words, ChunkLimits, ChunkPlan, Forward, GpuContext,
    GpuEngine, GpuPreference, MomentsReduction, PhiloxMultiply, RelaxedDrawLoops,
};
use mcgrad::loss::Loss;
use mcgrad::philox::{self, key_of, philox4x32_10, PhiloxStream};
use mcgrad::problem::Problem;
use mcgrad::record::{records, Record};
use mcgrad::Error;

/// A GPU engine on any adapter, or `None` (after saying so) where there is none.
fn gpu() -> Option<GpuEngine> {
    match GpuEngine::new(&GpuPreference::Any) {
        Ok(engine) => {
            let info = engine.backend_info();
            let _ = writeln!(
                std::io::stderr(),
                "GPU adapter: {} ({:?}, {:?})",
                info.adapter,
                info.graphics_backend,
                info.driver
            );
            Some(engine)
        }
        Err(Error::GpuUnavailable(why)) => {
            if std::env::var("MCGRAD_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("MCGRAD_REQUIRE_GPU=1 but no GPU adapter: {why}");
            }
            let _ = writeln!(std::io::stderr(), "skipped: no GPU adapter ({why})");
            None
        }
        Err(other) => panic!("the GPU engine failed to start: {other}"),
    }
}

fn spec(problem: Problem, samples: Vec<u32>, reps: u32) -> SweepSpec {
    SweepSpec {
        estimators: estimators::defined_on(&problem, &Loss::QUADRATIC, 0.5),
        problem,
        losses: Loss::QUADRATIC.to_vec(),
        samples,
        reps,
        seed: 0x5eed_0000_0000_0007,
        tau: 0.5,
        settings: Default::default(),
    }
}

#[test]
fn philox_matches_known_answers_and_the_cpu() {
    let Some(engine) = gpu() else { return };
    // Random123 kat_vectors, then counters from the engine's layout, then random ones.
    let mut counters = vec![
        [0; 4],
        [u32::MAX; 4],
        [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
    ];
    let keys = [[0, 0], [u32::MAX; 2], [0xa4093822, 0x299f31d0]];
    let want = [
        [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
        [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
    ];
    for i in 0..3 {
        let got = philox_words(engine.context(), &counters[i..=i], keys[i]).unwrap();
        assert_eq!(got[0], want[i], "known-answer vector {i}");
    }
    let mut rng = PhiloxStream::new(9, 7, 0);
    counters.extend((0..1000).map(|_| {
        [
            rng.next_u32(),
            rng.next_u32(),
            rng.next_u32(),
            rng.next_u32(),
        ]
    }));
    let key = [rng.next_u32(), rng.next_u32()];
    let got = philox_words(engine.context(), &counters, key).unwrap();
    for (c, g) in counters.iter().zip(&got) {
        assert_eq!(*g, philox4x32_10(*c, key), "counter {c:x?}");
    }
}

#[test]
fn forward_matches_its_cpu_twin() {
    let Some(engine) = gpu() else { return };
    let (d, k, batch) = (784, 10, 5);
    let mut rng = PhiloxStream::new(3, philox::STREAM_TRAIN, 0);
    let x: Vec<f32> = (0..batch * d).map(|_| rng.next_f64() as f32).collect();
    let w: Vec<f32> = (0..d * k).map(|_| rng.next_f64() as f32).collect();
    let forward = Forward::new(engine.context()).unwrap();
    let uploaded = forward.batch(engine.context(), &x, &w, d, k).unwrap();
    uploaded.launch(engine.context(), &forward).unwrap();
    let (logits, probs) = uploaded.read(engine.context()).unwrap();
    let (want_logits, want_probs) = forward_cpu(&x, &w, d, k);
    for b in 0..batch {
        // f32 sums of D non-negative products: relative error a few 1e-7 at most here.
        let row = b * k..(b + 1) * k;
        let worst = row
            .clone()
            .map(|i| (f64::from(logits[i]) - want_logits[i]).abs())
            .fold(0.0, f64::max);
        let scale = want_logits[row.clone()]
            .iter()
            .fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(
            worst <= 1e-5 * scale,
            "row {b}: logits off by {worst:e} (scale {scale})"
        );
        // A logit error e moves each probability by at most a factor exp(2e).
        for i in row {
            let tol = want_probs[i] * (4.0 * worst + 1e-5) + 1e-7;
            assert!(
                (f64::from(probs[i]) - want_probs[i]).abs() <= tol,
                "prob {i}: {} vs {}",
                probs[i],
                want_probs[i]
            );
        }
        let total: f64 = probs[b * k..(b + 1) * k]
            .iter()
            .map(|&p| f64::from(p))
            .sum();
        assert!((total - 1.0).abs() < 1e-5);
    }
}

#[test]
fn f32_cdf_ties_from_the_gpu_forward_pass_are_rare() {
    // The engine draws from the host's f64 thresholds (the CPU's exactly); this counts how
    // many categories would change if the CDF came from the GPU's f32 forward pass instead.
    let Some(engine) = gpu() else { return };
    let problem = Problem::seeded(0, 784, 10);
    let x: Vec<f32> = problem.x.iter().map(|&v| v as f32).collect();
    let w: Vec<f32> = problem.w.iter().map(|&v| v as f32).collect();
    let forward = Forward::new(engine.context()).unwrap();
    let uploaded = forward.batch(engine.context(), &x, &w, 784, 10).unwrap();
    uploaded.launch(engine.context(), &forward).unwrap();
    let (_, probs) = uploaded.read(engine.context()).unwrap();
    let exact = CategoricalTable::new(&problem.probs());
    let from_f32 = CategoricalTable::new(&probs.iter().map(|&p| f64::from(p)).collect::<Vec<_>>());
    let n = 1 << 20;
    let mut rng = PhiloxStream::new(1, 5, 0);
    let differ = (0..n)
        .filter(|_| {
            let word = rng.next_u32();
            exact.category(word) != from_f32.category(word)
        })
        .count();
    let _ = writeln!(
        std::io::stderr(),
        "f32 CDF ties: {differ} of {n} categories differ"
    );
    // Each threshold moves by about (f32 logit error ~ 2e-5) x p_j of the 2^24 grid.
    assert!(
        differ as f64 <= 1e-3 * n as f64,
        "{differ} of {n} categories differ"
    );
}

/// Probabilities whose thresholds sit on the words the draws will read: for the first word
/// `w` of repetition `rep` (point 3), `C_0 2^32 = w + 1` (the word is class 0, the least
/// `k` with `w 2^-32 < C_k`) or `C_0 2^32 = w` (class 1), behind `zeros` classes of
/// probability 0; the 24-bit grid of earlier versions got these wrong whenever the low 8
/// bits of `w` mattered. (The lower clamp changes only the word 0, which Philox draws once in
/// 2^32; `draws::tests::thresholds_match_f64_comparison` checks it on the CPU.)
fn on_the_word(key: [u32; 2], rep: u32, zeros: usize, class_zero: bool) -> (Vec<f64>, usize) {
    let w = philox4x32_10(
        philox::counter(0, rep, philox::STREAM_CATEGORICAL, 0, 3),
        key,
    )[0];
    let c0 = (f64::from(w) + f64::from(u8::from(class_zero))) / 4_294_967_296.0;
    let mut p = vec![0.0; zeros];
    p.extend([c0, (1.0 - c0) / 2.0, (1.0 - c0) / 2.0]);
    (p, zeros + usize::from(!class_zero))
}

#[test]
fn counts_compare_all_32_bits_of_the_word() {
    let Some(engine) = gpu() else { return };
    let key = key_of(42);
    for rep in 0..8 {
        for (zeros, class_zero) in [(0, true), (0, false), (2, true), (1, false)] {
            let (p, want_class) = on_the_word(key, rep, zeros, class_zero);
            let got = engine.category_counts(&p, key, 3, 1, rep, 1).unwrap();
            let mut want = vec![0u32; p.len()];
            count_categories(&CategoricalTable::new(&p), key, rep, 3, 1, &mut want);
            assert_eq!(want[want_class], 1, "CPU, repetition {rep}, p = {p:?}");
            assert_eq!(got, want, "GPU, repetition {rep}, p = {p:?}");
        }
    }
}

#[test]
fn counts_match_the_cpu_twin_including_draw_ranges_and_high_repetitions() {
    let Some(engine) = gpu() else { return };
    let p = Problem::seeded(2, 8, 7).probs();
    let table = CategoricalTable::new(&p);
    let key = key_of(42);
    // Draw ranges of 8 draws force several dispatches per repetition.
    let split = GpuEngine::new(&GpuPreference::Any)
        .unwrap()
        .with_limits(ChunkLimits {
            max_reps: 256,
            max_draws: 256 * 8,
        });
    for (engine, samples, rep_begin) in [
        (&engine, 1, 0),
        (&engine, 203, 17),
        (&engine, 4099, u32::MAX - 299),
        (&split, 37, 5),
        (&split, 203, u32::MAX - 255),
    ] {
        let reps =
            (300u64.min((1u64 << 32) - u64::from(rep_begin)) as u32).min(engine.limits().max_reps);
        let got = engine
            .category_counts(&p, key, 3, samples, rep_begin, reps)
            .unwrap();
        let mut want = vec![0u32; p.len()];
        for r in 0..reps {
            count_categories(&table, key, rep_begin + r, 3, samples, &mut want);
            let row = &got[r as usize * p.len()..(r as usize + 1) * p.len()];
            assert_eq!(
                row,
                &want[..],
                "S = {samples}, repetition {}",
                rep_begin + r
            );
        }
    }
}

#[test]
fn relaxed_estimates_match_the_cpu_twin() {
    let Some(engine) = gpu() else { return };
    assert_eq!(engine.relaxed_draw_loops(), RelaxedDrawLoops::Runtime);
    relaxed_estimates_match_the_cpu_twin_on(&engine);
    // The draws kernel with loops to constant bounds (`MCGRAD_RELAXED_DRAWS=unrolled`).
    let unrolled = engine
        .with_relaxed_draw_loops(RelaxedDrawLoops::Unrolled)
        .unwrap();
    assert_eq!(unrolled.relaxed_draw_loops(), RelaxedDrawLoops::Unrolled);
    relaxed_estimates_match_the_cpu_twin_on(&unrolled);
}

fn relaxed_estimates_match_the_cpu_twin_on(engine: &GpuEngine) {
    let mut spec = spec(Problem::seeded(4, 8, 6), vec![5, 40], 64);
    spec.estimators = estimators::REGISTRY
        .iter()
        .copied()
        .filter(|e| matches!(e.lowering(), Some(estimators::Lowering::Relaxed { .. })))
        .collect();
    let logits = spec.problem.logits();
    let contexts = spec.contexts();
    let table = RelaxedTable::new(&logits, spec.tau);
    let k = spec.problem.k;
    for point in 0..spec.samples.len() {
        let s = spec.samples[point];
        let got = engine.relaxed_estimates(&spec, point, 11, 64).unwrap();
        let width = contexts.len() * spec.estimators.len() * k;
        let (mut h, mut y) = (vec![0f32; k], vec![0f64; k]);
        for r in 0..64u32 {
            let mut acc = vec![0f64; width];
            for draw in 0..s {
                let z = table.draw(
                    key_of(spec.seed),
                    11 + r,
                    point as u32,
                    draw,
                    &mut h,
                    &mut y,
                );
                for (li, ctx) in contexts.iter().enumerate() {
                    for (ei, e) in spec.estimators.iter().enumerate() {
                        let off = (li * spec.estimators.len() + ei) * k;
                        estimators::add_relaxed_draw(
                            *e,
                            ctx,
                            RelaxedDraw { y: &y, z },
                            &mut acc[off..off + k],
                        );
                    }
                }
            }
            let row = &got[r as usize * width..(r as usize + 1) * width];
            for (cell, (g, w)) in row.chunks(k).zip(acc.chunks(k)).enumerate() {
                let scale = w.iter().fold(0.0f64, |m, v| m.max(v.abs())) / f64::from(s);
                // f32 per-draw arithmetic and sums against f64: 1e-5 of the cell's scale, and
                // f32 rounding (ten ulps) of the terms' scale where the estimate is ~0 (the
                // `seed` loss, whose relaxed estimates are 0 up to rounding).
                let floor =
                    1e-6 * term_scale(&spec, spec.losses[cell / spec.estimators.len()].name());
                for (gj, wj) in g.iter().zip(w) {
                    assert!(
                        (gj - wj / f64::from(s)).abs() <= 1e-5 * scale + floor,
                        "S {s} rep {r} cell {cell}: {g:?} vs {w:?}"
                    );
                }
            }
        }
    }
}

/// The scale of the terms a loss's estimates are made of: `max |f_k|` plus `max |grad f|`.
fn term_scale(spec: &SweepSpec, loss: &str) -> f64 {
    let loss = Loss::parse(loss).unwrap();
    let q = loss.quadratic(&spec.problem.t);
    let f = q.vertex_values().iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let grad = q.beta.iter().fold(0.0f64, |m, v| m.max(v.abs())) + 2.0 * q.alpha.abs();
    f + grad / spec.tau
}

/// Asserts two sweeps' records agree to `rel`, each figure against its natural scale: a
/// vector against its largest coordinate, but at least 1e-3 of the loss's term scale (a
/// coordinate that is ~0 on both engines, such as every estimate under the `seed` loss
/// where g = 0, is rounding noise: f32 leaves about 1e-7 of the terms' scale); a figure
/// that is rounding noise on both engines (a zero-variance estimator's variance, the cosine
/// to a zero gradient) not at all.
fn assert_records_agree(spec: &SweepSpec, gpu: &[Record], cpu: &[Record], rel: f64) {
    assert_eq!(gpu.len(), cpu.len());
    let mut worst = (0.0f64, String::new());
    let mut check = |what: &str, r: &Record, a: f64, b: f64, scale: f64| {
        let err = (a - b).abs() / scale.max(a.abs()).max(b.abs()).max(1e-300);
        if err > worst.0 {
            worst = (
                err,
                format!(
                    "{} {} S={} {what}: gpu {a:e} cpu {b:e}",
                    r.loss, r.estimator, r.samples
                ),
            );
        }
    };
    let max_abs = |v: &[f64]| v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    for (g, c) in gpu.iter().zip(cpu) {
        assert_eq!(
            (&g.loss, &g.estimator, g.samples),
            (&c.loss, &c.estimator, c.samples)
        );
        let mean_scale = max_abs(&c.mean)
            .max(max_abs(&c.exact_grad))
            .max(1e-3 * term_scale(spec, &c.loss));
        // Below this, a spread is the rounding of the estimates (f64 on the CPU, f32 here:
        // about ten f32 ulps of the terms' scale).
        let noise = 1e-6 * term_scale(spec, &c.loss);
        let degenerate = c.var.iter().sum::<f64>().sqrt() <= noise;
        for j in 0..c.mean.len() {
            check("mean", g, g.mean[j], c.mean[j], mean_scale);
            check("bias", g, g.bias[j], c.bias[j], mean_scale);
            if !degenerate {
                check("var", g, g.var[j], c.var[j], max_abs(&c.var));
                check(
                    "mean_se",
                    g,
                    g.mean_se[j],
                    c.mean_se[j],
                    max_abs(&c.mean_se),
                );
                check("var_se", g, g.var_se[j], c.var_se[j], max_abs(&c.var_se));
            }
        }
        let x_norm = spec.problem.x_norm_sq().sqrt();
        check(
            "bias_norm_w",
            g,
            g.bias_norm_w,
            c.bias_norm_w,
            x_norm * mean_scale,
        );
        // A mean squared error at the rounding level of the terms is noise on both engines.
        let mse_noise = (x_norm * noise).powi(2);
        if g.mse_w.max(c.mse_w) > mse_noise {
            check("mse_w", g, g.mse_w, c.mse_w, 0.0);
        }
        if !degenerate {
            check("total_var_w", g, g.total_var_w, c.total_var_w, 0.0);
            check("total_var_w_se", g, g.total_var_w_se, c.total_var_w_se, 0.0);
            check("mse_w_se", g, g.mse_w_se, c.mse_w_se, 0.0);
            check("bias_norm_w_se", g, g.bias_norm_w_se, c.bias_norm_w_se, 0.0);
            if let (Some(a), Some(b)) = (g.snr, c.snr) {
                check("snr", g, a, b, 0.0);
            }
        }
        // The cosine to the exact gradient is defined only where it is not rounding noise.
        let g_norm = c.exact_grad.iter().map(|v| v * v).sum::<f64>().sqrt();
        if g_norm > 1e-9 * max_abs(&c.mean).max(1e-300) && !degenerate {
            if let (Some(a), Some(b)) = (g.cosine, c.cosine) {
                check("cosine", g, a, b, 1.0);
            }
            if let (Some(a), Some(b)) = (g.cosine_se, c.cosine_se) {
                check("cosine_se", g, a, b, 0.0);
            }
        }
    }
    let _ = writeln!(
        std::io::stderr(),
        "largest relative difference: {:.2e} ({})",
        worst.0,
        worst.1
    );
    assert!(
        worst.0 <= rel,
        "records differ by {:.2e}: {}",
        worst.0,
        worst.1
    );
}

/// Every record of `engine` agrees with the CPU engine's to 1e-5 relative on the seed
/// problem (D = 784, K = 10) and a small one (D = 8, K = 5), at S = 1, 3 and 64.
fn agrees_with_the_cpu_on_two_problems(engine: &GpuEngine) {
    let cpu = CpuEngine::new(2).unwrap();
    for problem in [Problem::seeded(0, 784, 10), Problem::seeded(5, 8, 5)] {
        let spec = spec(problem, vec![1, 3, 64], 600);
        let want = records(&spec, &run_sweep(&spec, &cpu, &|_| {}).unwrap());
        let got = records(&spec, &run_sweep(&spec, engine, &|_| {}).unwrap());
        assert_records_agree(&spec, &got, &want, 1e-5);
    }
}

#[test]
fn gpu_sweep_matches_cpu_sweep_on_the_same_seed() {
    let Some(engine) = gpu() else { return };
    agrees_with_the_cpu_on_two_problems(&engine);
    let info = engine.backend_info();
    assert_eq!(info.engine, "gpu");
    assert!(info.graphics_backend.is_some() && info.driver.is_some());
    // The header's thread count is that of the CPU fallback (rayon's global pool), not 1.
    assert_eq!(info.threads, rayon::current_num_threads());
}

/// Philox's multiply as one 64-bit product (`MCGRAD_PHILOX_MULTIPLY=int64`) gives the same
/// words as the CPU and the same records, bit for bit, as the 16-bit limbs, on both
/// families, wherever the device has 64-bit integers (lavapipe; NVIDIA). A device without
/// them (GL llvmpipe) refuses the form with an error.
#[test]
fn philox_with_64_bit_products_gives_the_limbs_bits_where_the_device_has_them() {
    let Some(engine) = gpu() else { return };
    assert_eq!(engine.context().philox_multiply(), PhiloxMultiply::Limbs);
    let int64 = GpuContext::new(&GpuPreference::Any)
        .unwrap()
        .with_philox_multiply(PhiloxMultiply::Int64);
    let ctx = match int64 {
        Ok(ctx) => ctx,
        Err(e) => {
            assert!(!engine
                .context()
                .features
                .contains(wgpu::Features::SHADER_INT64));
            assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
            let _ = writeln!(std::io::stderr(), "no 64-bit integers: {e}");
            return;
        }
    };
    let mut rng = PhiloxStream::new(3, 1, 0);
    let counters: Vec<[u32; 4]> = (0..4096)
        .map(|i| match i {
            0 => [0; 4],
            1 => [u32::MAX; 4],
            _ => [
                rng.next_u32(),
                rng.next_u32(),
                rng.next_u32(),
                rng.next_u32(),
            ],
        })
        .collect();
    let key = [rng.next_u32(), rng.next_u32()];
    let got = philox_words(&ctx, &counters, key).unwrap();
    for (c, g) in counters.iter().zip(&got) {
        assert_eq!(*g, philox4x32_10(*c, key), "counter {c:x?}");
    }
    let wide = GpuEngine::with_context(ctx).unwrap();
    let spec = spec(Problem::seeded(5, 8, 5), vec![1, 7, 64], 600);
    let want = run_sweep(&spec, &engine, &|_| {}).unwrap();
    let got = run_sweep(&spec, &wide, &|_| {}).unwrap();
    let (want, got) = (records(&spec, &want), records(&spec, &got));
    assert_eq!(want.len(), got.len());
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(w.mean, g.mean, "{} {} S={}", w.loss, w.estimator, w.samples);
        assert_eq!(w.var, g.var, "{} {} S={}", w.loss, w.estimator, w.samples);
    }
}

/// The subgroup variant of the moments kernels (`shaders/moments_subgroup.wgsl`) agrees
/// with the CPU as the workgroup tree does, on both families and across chunk borders (the
/// moving averages' windows), wherever the adapter has subgroups (lavapipe: 8 lanes; the
/// H100: 32). An adapter without them (GL llvmpipe) refuses the variant with an error.
#[test]
fn the_subgroup_moments_reduction_matches_the_cpu_where_the_adapter_has_it() {
    let Some(engine) = gpu() else { return };
    let (features, info) = (engine.context().features, engine.context().info.clone());
    assert_eq!(engine.moments_reduction(), MomentsReduction::WorkgroupTree);
    let Some(subgroup) = MomentsReduction::subgroup(features, &info) else {
        let refused = engine.with_moments_reduction(MomentsReduction::Subgroup(32));
        assert!(matches!(refused, Err(Error::InvalidArgument(_))));
        let _ = writeln!(std::io::stderr(), "no subgroup operations on {}", info.name);
        return;
    };
    let MomentsReduction::Subgroup(size) = subgroup else {
        unreachable!()
    };
    // Another size than the adapter's is refused.
    let other = GpuEngine::new(&GpuPreference::Any)
        .unwrap()
        .with_moments_reduction(MomentsReduction::Subgroup(size * 2));
    assert!(matches!(other, Err(Error::InvalidArgument(_))));
    let engine = engine.with_moments_reduction(subgroup).unwrap();
    assert_eq!(engine.moments_reduction(), subgroup);
    agrees_with_the_cpu_on_two_problems(&engine);
    let chunked = engine.with_limits(ChunkLimits {
        max_reps: 256,
        max_draws: 256 * 8,
    });
    let spec = spec(Problem::seeded(6, 8, 5), vec![2, 41], 700);
    let cpu = CpuEngine::new(2).unwrap();
    let want = records(&spec, &run_sweep(&spec, &cpu, &|_| {}).unwrap());
    let got = records(&spec, &run_sweep(&spec, &chunked, &|_| {}).unwrap());
    assert_records_agree(&spec, &got, &want, 1e-5);
}

#[test]
fn chunked_and_unchunked_runs_agree() {
    let Some(engine) = gpu() else { return };
    let spec = spec(Problem::seeded(6, 8, 5), vec![2, 41], 700);
    let whole = records(&spec, &run_sweep(&spec, &engine, &|_| {}).unwrap());
    // 256 repetitions per chunk (three chunks, the moving averages crossing two borders) and
    // 8 draws per dispatch range.
    let chunked = GpuEngine::new(&GpuPreference::Any)
        .unwrap()
        .with_limits(ChunkLimits {
            max_reps: 256,
            max_draws: 256 * 8,
        });
    let done = std::sync::atomic::AtomicU64::new(0);
    let parts = records(
        &spec,
        &run_sweep(&spec, &chunked, &|n| {
            done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap(),
    );
    assert_eq!(done.into_inner(), spec.total_draws());
    // Same estimates; only the order of f32 sums and of the moment merges differs.
    assert_records_agree(&spec, &parts, &whole, 1e-5);
}

#[test]
fn counters_stay_distinct_beyond_two_to_the_32_draws() {
    // S x R = 2^33 + ...: the plan covers every (repetition, draw) once, in u32 fields.
    let (samples, reps) = (1u32 << 21 | 3, 1u32 << 12 | 5);
    assert!(u64::from(samples) * u64::from(reps) > 1 << 32);
    let plan = ChunkPlan::new(samples, ChunkLimits::default(), u32::MAX);
    let mut next_rep = 0u64;
    let mut total = 0u64;
    for (begin, len) in plan.rep_chunks(reps) {
        assert_eq!(
            u64::from(begin),
            next_rep,
            "repetition chunks are contiguous"
        );
        next_rep += u64::from(len);
        let mut next_draw = 0u64;
        for (db, de) in plan.draw_ranges(samples) {
            assert_eq!(u64::from(db), next_draw);
            assert_eq!(db % 4, 0, "a range starts on a Philox block");
            next_draw = u64::from(de);
            total += u64::from(len) * u64::from(de - db);
        }
        assert_eq!(next_draw, u64::from(samples));
    }
    assert_eq!(next_rep, u64::from(reps));
    assert_eq!(total, u64::from(samples) * u64::from(reps));
    // The counters of the last draw of two repetitions differ; the block field is draw / 4.
    let last = philox::counter(
        (samples - 1) / 4,
        reps - 1,
        philox::STREAM_CATEGORICAL,
        0,
        0,
    );
    let other = philox::counter(
        (samples - 1) / 4,
        reps - 2,
        philox::STREAM_CATEGORICAL,
        0,
        0,
    );
    assert_ne!(last, other);
    // The extremes do not wrap: the last repetitions of a u32 range chunk cleanly.
    let end: Vec<_> = plan
        .rep_chunks(u32::MAX)
        .skip_while(|&(b, _)| b < u32::MAX - 70_000)
        .collect();
    assert_eq!(
        end.last().map(|&(b, l)| u64::from(b) + u64::from(l)),
        Some(u64::from(u32::MAX))
    );
}

#[test]
fn a_lost_device_is_an_error_not_a_hang() {
    let Some(engine) = gpu() else { return };
    let spec = spec(Problem::seeded(1, 8, 4), vec![4], 300);
    engine.context().device.destroy();
    match engine.run_point(&spec, 0, &|_| {}) {
        Err(Error::Gpu(message)) => {
            // Captured (shown only if the test fails): a passing run should not print a
            // line that reads like a device failure.
            eprintln!("lost device reported as: {message}");
        }
        other => panic!("expected a GPU error, got {other:?}"),
    }
}

/// `st` and `reinmax` (the hard-draw lowering) run on the GPU's counts kernels with one
/// variable, so the sweep comparison above covers them; past the counts kernels' K = 16,
/// `--backend gpu` is no longer refused: the score-function cells run on the generic kernels
/// and agree with the CPU engine, and the other cells fall back per cell with a note.
#[test]
fn hard_draw_cells_run_on_the_gpu_and_k_past_16_runs_on_the_generic_kernels() {
    let Some(engine) = gpu() else { return };
    let hard_draw: Vec<_> = estimators::REGISTRY
        .iter()
        .copied()
        .filter(|e| e.lowering() == Some(estimators::Lowering::HardDraw))
        .collect();
    assert!(hard_draw.len() >= 2, "st and reinmax");
    let spec10 = spec(Problem::seeded(0, 784, 10), vec![1, 64], 100);
    for ctx in &spec10.contexts() {
        for &e in &hard_draw {
            for &s in &spec10.samples {
                assert_eq!(
                    engine.fallback_reason(e, ctx, s),
                    None,
                    "{} {}",
                    e.id(),
                    ctx.loss
                );
            }
        }
    }
    assert!(mcgrad::gpu::fallback_notes(&spec10, &engine)
        .iter()
        .all(|n| !hard_draw
            .iter()
            .any(|e| n.contains(&format!(" {} ", e.id())))));

    let wide = mcgrad::run::make_engine(mcgrad::backend::Backend::Gpu, None, 2, 20)
        .expect("--backend gpu takes K = 20");
    assert_eq!(wide.backend_info().engine, "gpu");
    let spec20 = spec(Problem::seeded(4, 8, 20), vec![1, 3, 64], 300);
    let contexts = spec20.contexts();
    let reinforce = estimators::by_id("reinforce").unwrap();
    assert!(contexts
        .iter()
        .all(|ctx| wide.fallback_reason(reinforce, ctx, 64).is_none()));
    let notes = mcgrad::gpu::fallback_notes(&spec20, wide.as_ref());
    assert!(
        notes.iter().any(|n| n
            .starts_with("note: st on the hard-draw-counts path runs on the CPU")
            && n.contains("K = 20")),
        "{notes:?}"
    );
    let cpu = CpuEngine::new(2).unwrap();
    let want = records(&spec20, &run_sweep(&spec20, &cpu, &|_| {}).unwrap());
    let got = records(
        &spec20,
        &run_sweep(&spec20, wide.as_ref(), &|_| {}).unwrap(),
    );
    assert_records_agree(&spec20, &got, &want, 1e-5);
}

/// Kernel profiling by timestamp queries: where the adapter has them, a profiled sweep point
/// reports a positive device time for each kernel it ran, and nothing once profiling is off;
/// where it has none (GL), profiling cannot be turned on and reports nothing.
#[test]
fn timestamp_queries_time_each_kernel_where_the_adapter_has_them() {
    let Some(engine) = gpu() else { return };
    let ctx = engine.context();
    let spec = spec(Problem::seeded(3, 8, 5), vec![16], 300);
    let on = ctx.set_profiling(true);
    assert_eq!(on, ctx.has_timestamps());
    engine.run_point(&spec, 0, &|_| {}).unwrap();
    let times = ctx.kernel_times();
    let _ = writeln!(
        std::io::stderr(),
        "timestamps: {}; {times:?}",
        ctx.has_timestamps()
    );
    if on {
        for kernel in [
            "score-function counts",
            "score-function moments",
            "relaxed draws",
            "relaxed moments",
        ] {
            let t = times
                .iter()
                .find(|t| t.kernel == kernel)
                .unwrap_or_else(|| panic!("{kernel} was not timed: {times:?}"));
            assert!(t.passes >= 1 && t.seconds > 0.0, "{t:?}");
        }
    } else {
        assert!(times.is_empty());
    }
    ctx.set_profiling(false);
    engine.run_point(&spec, 0, &|_| {}).unwrap();
    assert!(ctx.kernel_times().is_empty(), "profiling off times nothing");
}
