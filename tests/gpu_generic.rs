//! The GPU's generic path (several variables, any loss) against the CPU's: joint draws bit
//! for bit, the loss of every draw, every score-function estimator's per-repetition
//! estimates, whole sweeps, the unordered-set kernels against their CPU twins, and the order
//! of cells when some fall back to the CPU.
//!
//! Without an adapter every test prints "skipped: no GPU adapter" (straight to stderr, past
//! the test harness's capture) and returns; with `MCGRAD_REQUIRE_GPU=1` a missing adapter
//! fails. CI runs them on Mesa's lavapipe (Vulkan) and llvmpipe (`WGPU_BACKEND=gl`).
//! Workloads are small: software GPUs are slow.

use std::io::Write;

use mcgrad::draws::{draw_joint_categories, CategoricalTable};
use mcgrad::engine::{run_sweep, CpuEngine, Engine, SweepSpec};
use mcgrad::estimators::{
    self, Conditional, Context, Estimator, Family, JointDraws, Lowering, MovingAverage, Noise,
};
use mcgrad::gpu::{fallback_notes, ChunkLimits, GpuEngine, GpuPreference};
use mcgrad::loss::Loss;
use mcgrad::philox::{self, key_of, philox4x32_10};
use mcgrad::problem::Problem;
use mcgrad::problems;
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

/// Free logits `sin(0.37 i) * spread` of L variables of K categories.
fn free(l: usize, k: usize, spread: f64) -> Problem {
    Problem::free_logits(
        l,
        k,
        (0..l * k)
            .map(|i| (i as f64 * 0.37).sin() * spread)
            .collect(),
    )
}

/// L = 3, K = 5 with a target for the quadratic losses.
fn quadratic_problem() -> Problem {
    let mut p = free(3, 5, 1.5);
    p.t = (0..15).map(|i| (i as f64 * 0.71).cos()).collect();
    p
}

/// L = 3, K = 3 with a table of the 27 joint configurations.
fn table_problem() -> Problem {
    let mut p = free(3, 3, 1.0);
    p.table = (0..27)
        .map(|i| (f64::from(i) * 0.9).cos() * 2.0 + 1.0)
        .collect();
    p
}

/// The named problem `name` at seed 3.
fn named(name: &str) -> Problem {
    (problems::by_name(name).unwrap().build)(3)
}

/// The setups of the generic losses: (problem, loss).
fn setups() -> Vec<(Problem, Vec<Loss>)> {
    vec![
        (quadratic_problem(), Loss::QUADRATIC.to_vec()),
        (named("indecater-6x10"), vec![Loss::Pnorm]),
        (named("vae-decoder"), vec![Loss::Decoder]),
        (table_problem(), vec![Loss::Table]),
    ]
}

fn spec(problem: Problem, losses: Vec<Loss>, samples: Vec<u32>, reps: u32) -> SweepSpec {
    SweepSpec {
        estimators: estimators::defined_on(&problem, &losses, 0.5),
        problem,
        losses,
        samples,
        reps,
        seed: 0x5eed_0000_0000_0011,
        tau: 0.5,
        settings: Default::default(),
    }
}

/// The registry's estimators with a GPU form on the generic path (a score-function lowering
/// or a conditional form, as `indecater`'s) that accept every context.
fn score_function_estimators(contexts: &[Context]) -> Vec<&'static dyn Estimator> {
    estimators::REGISTRY
        .iter()
        .copied()
        .filter(|e| {
            matches!(e.lowering(), Some(Lowering::ScoreFunction { .. }))
                || e.conditional().is_some()
        })
        .filter(|e| contexts.iter().all(|ctx| e.check(ctx).is_ok()))
        .collect()
}

#[test]
fn joint_draws_compare_all_32_bits_of_the_word() {
    let Some(engine) = gpu() else { return };
    let key = key_of(77);
    // Variable 0 puts its first threshold on the first word of repetition `rep`
    // (`C_0 2^32 = w`: class 1, the 24-bit grid said 0 when the low bits of w are nonzero);
    // variable 1 has two leading classes of probability 0.
    for rep in 0..6 {
        let w = philox4x32_10(
            philox::counter(0, rep, philox::STREAM_CATEGORICAL, 0, 5),
            key,
        )[0];
        let c0 = f64::from(w) / 4_294_967_296.0;
        // L = 2 with K = 4: [c0, 1 - c0, 0, 0] and [0, 0, 0.3, 0.7].
        let p = vec![c0, 1.0 - c0, 0.0, 0.0, 0.0, 0.0, 0.3, 0.7];
        let tables: Vec<CategoricalTable> = p.chunks(4).map(CategoricalTable::new).collect();
        let got = engine.joint_categories(&p, 4, key, 5, 9, rep, 1).unwrap();
        let mut want = vec![0u32; 18];
        draw_joint_categories(&tables, key, rep, 5, 9, &mut want);
        assert_eq!(want[0], 1, "CPU, repetition {rep}");
        assert!(
            want.chunks(2).all(|z| z[1] >= 2),
            "CPU drew a class of probability 0"
        );
        assert_eq!(got, want, "GPU, repetition {rep}");
    }
}

#[test]
fn joint_draws_are_the_cpus_bit_for_bit() {
    let Some(engine) = gpu() else { return };
    let key = key_of(0x1234_5678_9abc);
    // L = 3, K = 5 where variable 1's probabilities sum to 0.99 with its last two categories
    // at 0 (1% of its draws pass every threshold and are clamped to the last nonzero
    // category), and L = 20, K = 10; odd S (a partial Philox block), repetitions near the top
    // of u32.
    let mut clamped = free(3, 5, 1.0).probs();
    clamped[5..10].copy_from_slice(&[0.3, 0.3, 0.39, 0.0, 0.0]);
    // Small chunks: several chunks per call.
    let chunked = GpuEngine::new(&GpuPreference::Any)
        .unwrap()
        .with_limits(ChunkLimits {
            max_reps: 16,
            ..ChunkLimits::default()
        });
    for (engine, p, k, samples, rep_begin, reps) in [
        (&engine, clamped, 5, 37, 11, 40),
        (&engine, free(20, 10, 2.0).probs(), 10, 64, 0, 24),
        (
            &chunked,
            free(20, 10, 2.0).probs(),
            10,
            5,
            u32::MAX - 40,
            40,
        ),
        (&chunked, free(3, 5, 3.0).probs(), 5, 1, 7, 33),
    ] {
        let l = p.len() / k;
        let tables: Vec<CategoricalTable> = p.chunks(k).map(CategoricalTable::new).collect();
        let got = engine
            .joint_categories(&p, k, key, 5, samples, rep_begin, reps)
            .unwrap();
        let per_rep = samples as usize * l;
        assert_eq!(got.len(), reps as usize * per_rep);
        let mut want = vec![0u32; per_rep];
        for r in 0..reps {
            draw_joint_categories(&tables, key, rep_begin + r, 5, samples, &mut want);
            let row = &got[r as usize * per_rep..(r as usize + 1) * per_rep];
            assert_eq!(
                row,
                &want[..],
                "L = {l}, K = {k}, S = {samples}, repetition {}",
                rep_begin + r
            );
        }
    }
}

/// The CPU's joint draws and losses of repetition `rep` (z draw-major, f per loss).
fn cpu_draws(
    spec: &SweepSpec,
    contexts: &[Context],
    point: usize,
    rep: u32,
) -> (Vec<u32>, Vec<Vec<f64>>) {
    let (l, k) = (spec.problem.l, spec.problem.k);
    let s = spec.samples[point];
    let tables: Vec<CategoricalTable> =
        contexts[0].p.chunks(k).map(CategoricalTable::new).collect();
    let mut z = vec![0u32; s as usize * l];
    draw_joint_categories(&tables, key_of(spec.seed), rep, point as u32, s, &mut z);
    let f = contexts
        .iter()
        .map(|ctx| z.chunks(l).map(|zi| ctx.objective.at_vertex(zi)).collect())
        .collect();
    (z, f)
}

#[test]
fn losses_of_every_draw_match_the_cpu() {
    let Some(engine) = gpu() else { return };
    for (problem, losses) in setups() {
        let spec = spec(problem, losses, vec![3, 29], 1 << 10);
        let contexts = spec.contexts();
        for point in 0..spec.samples.len() {
            let s = spec.samples[point] as usize;
            let (rep_begin, reps) = (100, 12);
            let got = engine
                .generic_losses(&spec, point, rep_begin, reps)
                .unwrap();
            for r in 0..reps {
                let (_, f) = cpu_draws(&spec, &contexts, point, rep_begin + r);
                for (li, ctx) in contexts.iter().enumerate() {
                    let row = &got[(li * reps as usize + r as usize) * s..][..s];
                    for (g, w) in row.iter().zip(&f[li]) {
                        // f32 arithmetic on a sum of at most a few hundred terms, centred
                        // (see generic_signals.wgsl): within 1e-6 of |f| and of the terms'
                        // scale 1, where f is about 0 (24 f32 bits leave 6e-8).
                        assert!(
                            (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                            "{} S = {s} rep {r}: gpu {g} cpu {w}",
                            ctx.loss
                        );
                    }
                }
            }
        }
    }
}

/// The CPU generic path's estimates of `cells` for repetitions `rep_begin..+reps`
/// (`[repetition][cell][L*K]`), moving averages starting empty at `rep_begin`.
fn cpu_estimates(
    spec: &SweepSpec,
    contexts: &[Context],
    cells: &[(usize, &'static dyn Estimator)],
    point: usize,
    rep_begin: u32,
    reps: u32,
) -> (Vec<f64>, Vec<f64>) {
    let dim = spec.problem.dim();
    let s = spec.samples[point] as usize;
    let mut baselines = vec![MovingAverage::default(); cells.len()];
    let mut out = Vec::new();
    let mut f_scale = vec![0.0f64; contexts.len()];
    for r in 0..reps {
        let rep = rep_begin + r;
        let (z, f) = cpu_draws(spec, contexts, point, rep);
        for (li, fl) in f.iter().enumerate() {
            f_scale[li] = fl.iter().fold(f_scale[li], |m, v| m.max(v.abs()));
        }
        for (c, &(li, e)) in cells.iter().enumerate() {
            let draws = JointDraws {
                s,
                z: &z,
                f: &f[li],
                y: &[],
                perturbed: &[],
                noise: Noise {
                    key: key_of(spec.seed),
                    rep,
                    point: point as u32,
                },
            };
            let mut estimate = vec![0.0; dim];
            if let Some(v) = e.estimate(&contexts[li], &draws, baselines[c].value(), &mut estimate)
            {
                baselines[c].push(v);
            }
            out.extend_from_slice(&estimate);
        }
    }
    (out, f_scale)
}

#[test]
fn estimates_match_the_cpu_generic_path_for_every_loss_and_estimator() {
    let Some(engine) = gpu() else { return };
    // Chunks of 16 repetitions: the moving averages cross chunk borders.
    let engine = engine.with_limits(ChunkLimits {
        max_reps: 16,
        ..ChunkLimits::default()
    });
    for (problem, losses) in setups() {
        let mut spec = spec(problem, losses, vec![2, 64], 1 << 10);
        let contexts = spec.contexts();
        spec.estimators = score_function_estimators(&contexts);
        let dim = spec.problem.dim();
        for point in 0..spec.samples.len() {
            let (rep_begin, reps) = (7, 40);
            let (cells, got) = engine
                .generic_estimates(&spec, point, rep_begin, reps)
                .unwrap();
            assert_eq!(
                cells.len(),
                contexts.len() * spec.estimators_at(spec.samples[point]).len(),
                "every score-function estimator with a lowering runs on the GPU"
            );
            let (want, f_scale) = cpu_estimates(&spec, &contexts, &cells, point, rep_begin, reps);
            assert_eq!(got.len(), want.len());
            // Each cell's scale: its largest coordinate over the repetitions. A single
            // estimate can cancel to any size (RLOO at S = 2 is (f_1 - f_2)/2 times scores),
            // and f32 keeps digits of the signal, not of the cancelled difference. A cell
            // 1e4 times smaller than the loss is zero up to rounding (RLOO under a constant
            // loss), where the f32 loss leaves about 1e-7 of |f|.
            let mut scales = vec![0.0f64; cells.len()];
            for (i, w) in want.chunks(dim).enumerate() {
                let c = i % cells.len();
                let floor = 1e-4 * f_scale[cells[c].0];
                scales[c] = w.iter().fold(scales[c].max(floor), |m, v| m.max(v.abs()));
            }
            let mut worst = (0.0f64, String::new());
            for (i, (g, w)) in got.chunks(dim).zip(want.chunks(dim)).enumerate() {
                let (li, e) = cells[i % cells.len()];
                let scale = scales[i % cells.len()];
                // unordered-set's estimate is one set's losses, f(z_{0,-l}, c): no average over
                // draws dilutes their f32 rounding, which is within 1e-6 of max(|f|, 1) (the
                // losses test) and enters a coordinate at most once (its weights
                // p_s p_t W_st sum to p_s (1 - p_s) <= 1/4 per member, twice over with
                // e_s - p): that allowance is the loss kernel's, not the set kernels' (which
                // `unordered_set_kernels_match_their_cpu_twins` checks on the GPU's losses).
                let allowance = if e.conditional() == Some(Conditional::UnorderedSet) {
                    1e-6 * f_scale[li].max(1.0)
                } else {
                    0.0
                };
                for (gj, wj) in g.iter().zip(w) {
                    let err = ((gj - wj).abs() - allowance).max(0.0) / scale;
                    if err > worst.0 {
                        worst = (
                            err,
                            format!(
                                "{} {} S={} rep {}: gpu {gj:e} cpu {wj:e}",
                                spec.losses[li],
                                e.id(),
                                spec.samples[point],
                                rep_begin as usize + i / cells.len()
                            ),
                        );
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
                worst.0 <= 1e-5,
                "estimates differ: {:.2e} {}",
                worst.0,
                worst.1
            );
        }
    }
}

/// The scale of the terms of a loss's estimates: the largest |f| over 4096 CPU draws, plus
/// MuProp's mean-field term.
fn term_scale(spec: &SweepSpec, ctx: &Context) -> f64 {
    let k = spec.problem.k;
    let l = spec.problem.l;
    let tables: Vec<CategoricalTable> = ctx.p.chunks(k).map(CategoricalTable::new).collect();
    let mut z = vec![0u32; 4096 * l];
    draw_joint_categories(&tables, [1, 2], 0, 0, 4096, &mut z);
    let f = z
        .chunks(l)
        .fold(0.0f64, |m, zi| m.max(ctx.objective.at_vertex(zi).abs()));
    f + ctx
        .muprop_mean_field
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()))
}

/// Asserts two sweeps' records agree to `rel`, each figure against its natural scale (as
/// tests/gpu.rs compares them): a vector against its largest coordinate but at least 1e-3 of
/// the loss's term scale; figures that are rounding noise on both engines not at all.
fn assert_records_agree(spec: &SweepSpec, gpu: &[Record], cpu: &[Record], rel: f64) {
    assert_eq!(gpu.len(), cpu.len());
    let contexts = spec.contexts();
    let scales: Vec<f64> = contexts.iter().map(|c| term_scale(spec, c)).collect();
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
        let li = spec.losses.iter().position(|l| l.name() == c.loss).unwrap();
        let mean_scale = max_abs(&c.mean)
            .max(max_abs(&c.exact_grad))
            .max(1e-3 * scales[li]);
        let noise = 1e-6 * scales[li];
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
        if g.mse_w.max(c.mse_w) > (x_norm * noise).powi(2) {
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

#[test]
fn gpu_sweep_matches_cpu_sweep_on_generic_problems() {
    let Some(engine) = gpu() else { return };
    let cpu = CpuEngine::new(2).unwrap();
    // A small decoder (enumerable, so `exact` runs too) stands in for vae-decoder here, whose
    // relaxed cells would take minutes on the CPU fallback; its per-repetition estimates are
    // checked above.
    let mut decoder = free(3, 4, 1.0);
    decoder.decoder = Some(mcgrad::problem::Decoder {
        h: 30,
        v: (0..30 * 12).map(|i| (i as f64 * 0.13).sin()).collect(),
        c: (0..30).map(|i| (f64::from(i) * 0.7).cos()).collect(),
        target: (0..30).map(|i| f64::from(i % 2)).collect(),
    });
    for (problem, losses) in [
        (quadratic_problem(), Loss::QUADRATIC.to_vec()),
        (named("indecater-6x10"), vec![Loss::Pnorm]),
        (decoder, vec![Loss::Decoder]),
        (table_problem(), vec![Loss::Table]),
    ] {
        let mut spec = spec(problem, losses, vec![1, 3, 64], 300);
        // The relaxed estimators refuse the table loss (no extension).
        let contexts = spec.contexts();
        spec.estimators
            .retain(|e| contexts.iter().all(|c| e.check(c).is_ok()));
        let want = records(&spec, &run_sweep(&spec, &cpu, &|_| {}).unwrap());
        let got = records(&spec, &run_sweep(&spec, &engine, &|_| {}).unwrap());
        assert_records_agree(&spec, &got, &want, 1e-5);
    }
}

#[test]
fn mixed_gpu_and_fallback_cells_come_in_the_cpu_engines_order() {
    let Some(engine) = gpu() else { return };
    let cpu = CpuEngine::new(2).unwrap();
    // Three quadratic losses on L = 3: the score-function cells run on the GPU, the relaxed
    // ones (no GPU kernel on the generic path) on the CPU; losses and estimators interleave.
    let mut spec = spec(
        quadratic_problem(),
        Loss::QUADRATIC.to_vec(),
        vec![1, 8],
        50,
    );
    // The eight estimators that predate the field's (those have no GPU lowering yet).
    let ids = [
        "exact",
        "reinforce",
        "reinforce-ema",
        "rloo",
        "muprop",
        "muprop-c",
        "gumbel-softmax",
        "st-gumbel",
    ];
    spec.estimators = ids
        .iter()
        .map(|id| estimators::by_id(id).unwrap())
        .collect();
    let notes = fallback_notes(&spec, &engine);
    assert_eq!(
        notes,
        vec![
            "note: gumbel-softmax on the generic path runs on the CPU (no GPU kernel for the relaxed family on the generic path)".to_string(),
            "note: st-gumbel on the generic path runs on the CPU (no GPU kernel for the relaxed family on the generic path)".to_string(),
        ]
    );
    assert!(fallback_notes(&spec, &cpu).is_empty());
    let contexts = spec.contexts();
    for point in 0..spec.samples.len() {
        let s = spec.samples[point];
        let want = cpu.run_point(&spec, point, &|_| {}).unwrap();
        let got = engine.run_point(&spec, point, &|_| {}).unwrap();
        let order = |p: &mcgrad::engine::PointMoments| -> Vec<(Loss, &'static str)> {
            p.cells.iter().map(|c| (c.loss, c.estimator.id())).collect()
        };
        assert_eq!(order(&got), order(&want), "S = {s}");
        for (g, w) in got.cells.iter().zip(&want.cells) {
            let li = spec.losses.iter().position(|&l| l == w.loss).unwrap();
            if w.estimator.family() == Family::Relaxed {
                // The fallback cells are the CPU engine's own.
                assert_eq!(g.moments, w.moments, "{} {}", w.loss, w.estimator.id());
            } else {
                assert!(engine.lowers(w.estimator, &contexts[li], s));
                assert_eq!(g.moments.count(), w.moments.count());
            }
        }
    }
}

/// The CPU's unordered set of variable `v` (the estimator's Gumbel-top-k): keys
/// `a_vc - ln(-ln u_c)` in f64 from uniform `v K + c` of draw 0 of the repetition's auxiliary
/// noise, largest first, equal keys by category; the first `size`.
fn cpu_set(ctx: &Context, noise: &Noise, v: usize, size: usize) -> Vec<u32> {
    let k = ctx.k;
    let keys: Vec<f64> = (0..k)
        .map(|c| {
            let n = v * k + c;
            let u = noise.open_uniforms(0, (n / 4) as u32)[n % 4];
            ctx.logits[n] - (-u.ln()).ln()
        })
        .collect();
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| keys[b].total_cmp(&keys[a]));
    order.into_iter().take(size).map(|c| c as u32).collect()
}

/// The unordered-set kernels against their CPU twins, stage by stage, on four multi-variable
/// problems (indecater-6x10 under pnorm, vae-decoder, the quadratic losses, a table) at set
/// sizes 1, 2, 5 and K: the sets are the CPU's Gumbel-top-k sets exactly; the members' losses
/// are the CPU's within the loss kernel's 1e-6 of max(|f|, 1); each member's term is the f32
/// twin's (`member_terms`) on the GPU's own losses to 1e-5 of the variable's largest term
/// (the twin and the kernel differ in their exp and log, a few ulp); and the finished
/// estimate is the CPU estimator's f64 `set_block` on the same losses to 1e-5 of the
/// estimate's largest coordinate (the twin's own test bounds the f32 integrals' share by
/// 3e-7), floored at 1e-4 of the losses' scale as the test above.
#[test]
fn unordered_set_kernels_match_their_cpu_twins() {
    let Some(engine) = gpu() else { return };
    // Chunks of 16 repetitions: the readback crosses chunk borders.
    let engine = engine.with_limits(ChunkLimits {
        max_reps: 16,
        ..ChunkLimits::default()
    });
    for (problem, losses) in [
        (named("indecater-6x10"), vec![Loss::Pnorm]),
        (named("vae-decoder"), vec![Loss::Decoder]),
        (quadratic_problem(), Loss::QUADRATIC.to_vec()),
        (table_problem(), vec![Loss::Table]),
    ] {
        let spec = spec(problem, losses, vec![1, 2, 5, 64], 1 << 10);
        let contexts = spec.contexts();
        let (l, k, groups) = (spec.problem.l, spec.problem.k, contexts.len());
        let mut worst_term = 0.0f64;
        let mut worst_estimate = 0.0f64;
        for point in 0..spec.samples.len() {
            let (rep_begin, reps) = (3, 24);
            let parts = engine
                .unordered_set_parts(&spec, point, rep_begin, reps)
                .unwrap();
            let size = parts.set_size;
            assert_eq!(size, (spec.samples[point] as usize).min(k));
            assert_eq!(parts.members.len(), reps as usize * l * size);
            for r in 0..reps as usize {
                let rep = rep_begin + r as u32;
                let (z, _) = cpu_draws(&spec, &contexts, point, rep);
                let noise = Noise {
                    key: key_of(spec.seed),
                    rep,
                    point: point as u32,
                };
                for v in 0..l {
                    let members = &parts.members[(r * l + v) * size..][..size];
                    let what = |g: usize| {
                        format!(
                            "{} S = {} rep {rep} variable {v}",
                            spec.losses[g], spec.samples[point]
                        )
                    };
                    assert_eq!(
                        members,
                        &cpu_set(&contexts[0], &noise, v, size)[..],
                        "{}",
                        what(0)
                    );
                    for (g, ctx) in contexts.iter().enumerate() {
                        let at = ((r * groups + g) * l + v) * size;
                        let losses = &parts.member_losses[at..at + size];
                        let mut zl = z[..l].to_vec();
                        let mut f = vec![0.0; k];
                        for (&c, &got) in members.iter().zip(losses) {
                            zl[v] = c;
                            let want = ctx.objective.at_vertex(&zl);
                            assert!(
                                (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                                "{}: loss of {c}: gpu {got} cpu {want}",
                                what(g)
                            );
                            f[c as usize] = got;
                        }
                        let p = &ctx.p[v * k..(v + 1) * k];
                        let p32: Vec<f32> = p.iter().map(|&x| x as f32).collect();
                        let mut twin = vec![0.0f32; size];
                        mcgrad::gpu::unordered_set::member_terms(
                            &p32,
                            members,
                            &parts.centred[at..at + size],
                            &parts.nodes,
                            &mut twin,
                        );
                        let term_scale = twin.iter().fold(1e-30f32, |m, t| m.max(t.abs()));
                        for (a, b) in parts.terms[at..at + size].iter().zip(&twin) {
                            let err = f64::from((a - b).abs() / term_scale);
                            worst_term = worst_term.max(err);
                            assert!(
                                err <= 1e-5,
                                "{}: terms gpu {:?} twin {twin:?}",
                                what(g),
                                &parts.terms[at..at + size]
                            );
                        }
                        let items: Vec<usize> = members.iter().map(|&c| c as usize).collect();
                        let mut want = vec![0.0; k];
                        estimators::set_block(p, &items, &f, &mut want);
                        let got = &parts.estimates[(r * groups + g) * l * k + v * k..][..k];
                        let f_max = losses.iter().fold(0.0f64, |m, x| m.max(x.abs()));
                        let scale = want
                            .iter()
                            .fold(1e-4 * f_max.max(1e-300), |m, x| m.max(x.abs()));
                        for (a, b) in got.iter().zip(&want) {
                            let err = (a - b).abs() / scale;
                            worst_estimate = worst_estimate.max(err);
                            assert!(
                                err <= 1e-5,
                                "{}: estimate gpu {got:?} cpu {want:?}",
                                what(g)
                            );
                        }
                    }
                }
            }
        }
        let _ = writeln!(
            std::io::stderr(),
            "{:?}: largest relative difference of the terms {worst_term:.2e}, of the estimates {worst_estimate:.2e}",
            spec.losses
        );
    }
}

/// A pass of score-function cells alone allocates nothing for the kernels it does not run:
/// sized per repetition, IndeCateR's losses (S * L * K numbers a repetition) took 210 MB at
/// S = 64, L*K = 200 and 4096 repetitions, past the 128 MB a storage binding may hold on
/// Mesa's lavapipe and llvmpipe (the error read "Buffer binding 5 range 209715200 exceeds
/// `max_*_buffer_binding_size`"). 3000 repetitions need 154 MB there.
#[test]
fn a_pass_without_indecater_or_sets_allocates_no_buffers_for_them() {
    let Some(engine) = gpu() else { return };
    let mut problem = free(20, 10, 1.0);
    problem.t = (0..200).map(|i| (f64::from(i) * 0.71).cos()).collect();
    let spec = SweepSpec {
        estimators: Vec::new(),
        problem,
        losses: vec![Loss::Linear],
        samples: vec![64],
        reps: 3000,
        seed: 7,
        tau: 0.5,
        settings: Default::default(),
    };
    let contexts = spec.contexts();
    let reinforce = estimators::by_id("reinforce").unwrap();
    let moments = engine
        .generic_moments(&spec, 0, &contexts, &[(0, reinforce)], &|_| {})
        .expect("the generic pass runs");
    let cell = &moments[0];
    assert_eq!(cell.coords[0].n, 3000.0);
    // Unbiased: every coordinate's mean within 4.5 standard errors of the exact gradient
    // (two-sided, about 7e-6 per coordinate, under 1.4e-3 over all 200).
    for (m, g) in cell.coords.iter().zip(&contexts[0].grad) {
        let se = (m.m2 / (m.n - 1.0) / m.n).sqrt();
        assert!(
            (m.mean - g).abs() <= 4.5 * se + 1e-12,
            "mean {} exact {g} se {se}",
            m.mean
        );
    }
}
