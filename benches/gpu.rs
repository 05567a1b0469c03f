//! GPU engine throughput in draws per second, at the default problem size (D = 784, K = 10)
//! and all three losses: the score-function pass (every score-function estimator) and the
//! Gumbel pass (both relaxed estimators), timed with `iter_custom` around the engine's work
//! only (the engine and its pipelines are built once, outside the timing). Issue 14's targets
//! on an NVIDIA H100: 1e11 draws/s for the score-function pass at S = 4096, 3e10 at S = 256,
//! 1e10 for the Gumbel pass at S = 1024. The forward layer's bench is `benches/forward.rs`.
//! The `gpu_generic` group times the generic path (several variables, any loss) on
//! `vae-decoder`; the `gpu_unordered_set` group times the unordered-set kernels alone on
//! `indecater-6x10` (pnorm loss) at S = 4 and S = 10 (sets of 4 and of all K = 10
//! categories); the `gpu_counts_wg` group sweeps the counts kernel's workgroup size at
//! S = 4096 (to choose it per adapter); the `gpu_moments_reduction` group runs the
//! score-function pass at S = 256 and the Gumbel pass at S = 64 (where the moments kernels
//! weigh most) with each moments reduction the adapter has (`tree`, and `subgroup` where it
//! has subgroups: `MCGRAD_MOMENTS_REDUCTION`); the `gpu_philox_multiply` group runs the
//! score-function pass at S = 4096 and the Gumbel pass at S = 1024 (where the draws weigh
//! most) with Philox's multiply in 16-bit limbs and, where the device has 64-bit integers, as
//! one 64-bit product (`MCGRAD_PHILOX_MULTIPLY`); the `gpu_relaxed_draws` group runs the
//! Gumbel pass at S = 64 and 1024 with the relaxed draws kernel's loops to runtime and to
//! constant bounds (`MCGRAD_RELAXED_DRAWS`); the `gpu_chunk_reps` group runs the
//! score-function pass at S = 256 and the Gumbel pass at S = 64 with 2^16 and 2^18
//! repetitions per chunk (`MCGRAD_GPU_CHUNK_REPS`).
//!
//! After each workload, one more run with timestamp queries on (where the adapter has them,
//! `wgpu::Features::TIMESTAMP_QUERY`) prints every kernel's device time and the draws per
//! second of the device time alone (`kernel times: ...`), outside criterion's timing. The
//! generic path's line also gives the decoder loss's FP32 operations per second and their
//! share of the FP32 peak in `MCGRAD_FP32_PEAK` (FLOP/s; default 6.7e13, the H100 SXM's
//! non-tensor FP32 peak), counting `H (L + 12)` operations per loss evaluation (H output units
//! of L gathered adds each, and about 12 for each unit's softplus step and target term), one
//! evaluation per draw and loss (a loss's MuProp residual group shares its evaluation).
//!
//! `MCGRAD_BENCH_QUICK=1` shrinks every workload so CI only checks that the bench runs.
//! Without a GPU adapter it prints "skipped: no GPU adapter" and exits successfully.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mcgrad::engine::{Engine, SweepSpec};
use mcgrad::estimators::{Estimator, Family, Lowering};
use mcgrad::gpu::{
    ChunkLimits, GpuContext, GpuEngine, GpuPreference, KernelTime, MomentsReduction,
    PhiloxMultiply, RelaxedDrawLoops,
};
use mcgrad::loss::Loss;

fn quick() -> bool {
    std::env::var_os("MCGRAD_BENCH_QUICK").is_some()
}

fn engine() -> Option<GpuEngine> {
    match GpuEngine::new(&GpuPreference::Any) {
        Ok(engine) => {
            let info = engine.backend_info();
            eprintln!(
                "GPU adapter: {} ({:?}, {:?})",
                info.adapter, info.graphics_backend, info.driver
            );
            Some(engine)
        }
        Err(e) => {
            eprintln!("skipped: no GPU adapter ({e})");
            None
        }
    }
}

/// Runs `work` once with timestamp queries on and prints each kernel's device time, and the
/// draws per second of the device time (`draws` draws); returns the device seconds (`None`
/// where the adapter has no timestamp queries).
fn profile(engine: &GpuEngine, name: &str, draws: u64, work: &dyn Fn()) -> Option<f64> {
    let ctx = engine.context();
    if !ctx.set_profiling(true) {
        eprintln!("kernel times {name}: the adapter has no timestamp queries");
        return None;
    }
    let _ = ctx.kernel_times();
    work();
    let times: Vec<KernelTime> = ctx.kernel_times();
    ctx.set_profiling(false);
    let total: f64 = times.iter().map(|t| t.seconds).sum();
    let list: Vec<String> = times
        .iter()
        .map(|t| {
            format!(
                "{} {:.3} ms / {} passes",
                t.kernel,
                t.seconds * 1e3,
                t.passes
            )
        })
        .collect();
    println!(
        "kernel times {name}: {}; device total {:.3} ms, {:.3e} draws/s of device time",
        list.join(", "),
        total * 1e3,
        draws as f64 / total.max(1e-12)
    );
    Some(total)
}

fn spec(family: Family, samples: u32, reps: u32) -> SweepSpec {
    SweepSpec::family_workload(family, samples, reps)
}

fn configure(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group.sample_size(10);
    if quick() {
        group
            .warm_up_time(Duration::from_millis(100))
            .measurement_time(Duration::from_millis(300));
    }
}

fn passes(c: &mut Criterion) {
    let Some(engine) = engine() else { return };
    let mut group = c.benchmark_group("gpu_sweep");
    configure(&mut group);
    let score_sizes: &[(u32, u32)] = if quick() {
        &[(64, 512)]
    } else {
        &[(256, 1 << 18), (4096, 1 << 16)]
    };
    let gumbel_sizes: &[(u32, u32)] = if quick() {
        &[(16, 256)]
    } else {
        &[(64, 1 << 16), (1024, 1 << 15)]
    };
    for (family, name, sizes) in [
        (Family::ScoreFunction, "score-function", score_sizes),
        (Family::Relaxed, "gumbel", gumbel_sizes),
    ] {
        for &(s, r) in sizes {
            let spec = spec(family, s, r);
            profile(
                &engine,
                &format!("{name} S={s}/R={r}"),
                u64::from(s) * u64::from(r),
                &|| {
                    engine
                        .run_point(&spec, 0, &|_| {})
                        .expect("GPU sweep point");
                },
            );
            group.throughput(Throughput::Elements(u64::from(s) * u64::from(r)));
            group.bench_with_input(
                BenchmarkId::new(name, format!("S={s}/R={r}")),
                &spec,
                |b, spec| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let t0 = Instant::now();
                            let point =
                                engine.run_point(spec, 0, &|_| {}).expect("GPU sweep point");
                            total += t0.elapsed();
                            std::hint::black_box(point);
                        }
                        total
                    })
                },
            );
        }
    }
    group.finish();
}

/// The generic path on `vae-decoder` (L = 20 variables of K = 10, a 784-unit decoder loss) at
/// S = 64: every score-function estimator with a lowering, timed around
/// [`GpuEngine::generic_moments`] alone (the contexts, whose reference gradient is a Monte
/// Carlo run of its own, are made once outside the timing), in draws per second.
fn generic(c: &mut Criterion) {
    let Some(engine) = engine() else { return };
    let mut group = c.benchmark_group("gpu_generic");
    configure(&mut group);
    let (s, r) = if quick() { (64, 16) } else { (64, 4096) };
    let named = mcgrad::problems::by_name("vae-decoder").expect("a named problem");
    let spec = SweepSpec {
        problem: (named.build)(1),
        losses: vec![Loss::Decoder],
        estimators: Vec::new(),
        samples: vec![s],
        reps: r,
        seed: 1,
        tau: 1.0,
        settings: Default::default(),
    };
    let contexts = spec.contexts();
    let cells: Vec<(usize, &'static dyn Estimator)> = mcgrad::estimators::REGISTRY
        .iter()
        .copied()
        .filter(|e| matches!(e.lowering(), Some(Lowering::ScoreFunction { .. })))
        .filter(|e| e.check(&contexts[0]).is_ok())
        .map(|e| (0, e))
        .collect();
    let problem = &spec.problem;
    let hidden = problem.decoder.as_ref().map_or(0, |d| d.h) as f64;
    let groups = {
        let refs: Vec<(usize, &dyn Estimator)> = cells.iter().map(|&(l, e)| (l, e)).collect();
        mcgrad::gpu::generic::GenericPlan::new(problem, &contexts, &refs, s)
            .expect("a plan")
            .groups
            .iter()
            .filter(|g| g.pair != mcgrad::gpu::generic::PAIR_SECOND)
            .count() as f64
    };
    let draws = u64::from(s) * u64::from(r);
    if let Some(device) = profile(&engine, &format!("vae-decoder S={s}/R={r}"), draws, &|| {
        engine
            .generic_moments(&spec, 0, &contexts, &cells, &|_| {})
            .expect("GPU generic pass");
    }) {
        let peak = std::env::var("MCGRAD_FP32_PEAK")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(6.7e13);
        let flops = draws as f64 * groups * hidden * (problem.l as f64 + 12.0);
        println!(
            "fp32 vae-decoder S={s}/R={r}: {groups} loss evaluations per draw, {:.3e} loss FLOP in {:.3} ms of device time = {:.3e} FLOP/s, {:.2}% of the FP32 peak {peak:.2e}",
            flops,
            device * 1e3,
            flops / device,
            100.0 * flops / device / peak
        );
    }
    group.throughput(Throughput::Elements(draws));
    group.bench_function(
        BenchmarkId::new("vae-decoder", format!("S={s}/R={r}")),
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t0 = Instant::now();
                    let moments = engine
                        .generic_moments(&spec, 0, &contexts, &cells, &|_| {})
                        .expect("GPU generic pass");
                    total += t0.elapsed();
                    std::hint::black_box(moments);
                }
                total
            })
        },
    );
    group.finish();
}

/// The unordered-set estimator's GPU lowering on `indecater-6x10` (L = 6, K = 10, pnorm loss):
/// [`GpuEngine::generic_moments`] with that one cell (joint draws, the sets and members'
/// losses, the members' terms, the host's finishing), in draws (S per repetition) per
/// second, at S = 4 (sets of 4: the quadrature) and S = 10 (every category: IndeCateR's form).
fn unordered_set(c: &mut Criterion) {
    let Some(engine) = engine() else { return };
    let mut group = c.benchmark_group("gpu_unordered_set");
    configure(&mut group);
    let r = if quick() { 16 } else { 4096 };
    let named = mcgrad::problems::by_name("indecater-6x10").expect("a named problem");
    let estimator = mcgrad::estimators::by_id("unordered-set").expect("registered");
    for s in [4u32, 10] {
        let spec = SweepSpec {
            problem: (named.build)(1),
            losses: vec![Loss::Pnorm],
            estimators: vec![estimator],
            samples: vec![s],
            reps: r,
            seed: 1,
            tau: 1.0,
            settings: Default::default(),
        };
        let contexts = spec.contexts();
        let cells = vec![(0, estimator)];
        let draws = u64::from(s) * u64::from(r);
        profile(
            &engine,
            &format!("unordered-set indecater-6x10 S={s}/R={r}"),
            draws,
            &|| {
                engine
                    .generic_moments(&spec, 0, &contexts, &cells, &|_| {})
                    .expect("GPU generic pass");
            },
        );
        group.throughput(Throughput::Elements(draws));
        group.bench_function(
            BenchmarkId::new("indecater-6x10", format!("S={s}/R={r}")),
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t0 = Instant::now();
                        let moments = engine
                            .generic_moments(&spec, 0, &contexts, &cells, &|_| {})
                            .expect("GPU generic pass");
                        total += t0.elapsed();
                        std::hint::black_box(moments);
                    }
                    total
                })
            },
        );
    }
    group.finish();
}

/// The score-function pass at S = 4096 with 128 to 1024 threads per counts workgroup (those
/// the adapter allows): the measurement that chooses the size per adapter
/// (`MCGRAD_COUNTS_WG`).
fn counts_workgroups(c: &mut Criterion) {
    let Some(base) = engine() else { return };
    let limit = base.context().limits.max_compute_invocations_per_workgroup;
    drop(base);
    let mut group = c.benchmark_group("gpu_counts_wg");
    configure(&mut group);
    let (s, r) = if quick() { (64, 512) } else { (4096, 1 << 16) };
    let sizes: &[u32] = if quick() {
        &[128]
    } else {
        &[128, 256, 512, 1024]
    };
    let spec = spec(Family::ScoreFunction, s, r);
    group.throughput(Throughput::Elements(u64::from(s) * u64::from(r)));
    for &wg in sizes.iter().filter(|&&wg| wg <= limit) {
        let Some(engine) = engine() else { return };
        let engine = engine.with_counts_workgroup(wg).expect("a workgroup size");
        group.bench_with_input(
            BenchmarkId::new("score-function", format!("S={s}/R={r}/WG={wg}")),
            &spec,
            |b, spec| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t0 = Instant::now();
                        let point = engine.run_point(spec, 0, &|_| {}).expect("GPU sweep point");
                        total += t0.elapsed();
                        std::hint::black_box(point);
                    }
                    total
                })
            },
        );
    }
    group.finish();
}

/// One engine variant on a list of (family, name, S, R) workloads: each profiled once, then
/// timed under the id `S=../R=../VARIANT` (the groups that choose a setting per adapter).
fn bench_variant(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    engine: &GpuEngine,
    variant: &str,
    workloads: &[(Family, &str, u32, u32)],
) {
    for &(family, name, s, r) in workloads {
        let spec = spec(family, s, r);
        let draws = u64::from(s) * u64::from(r);
        let id = format!("S={s}/R={r}/{variant}");
        profile(engine, &format!("{name} {id}"), draws, &|| {
            engine
                .run_point(&spec, 0, &|_| {})
                .expect("GPU sweep point");
        });
        group.throughput(Throughput::Elements(draws));
        group.bench_with_input(BenchmarkId::new(name, &id), &spec, |b, spec| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t0 = Instant::now();
                    let point = engine.run_point(spec, 0, &|_| {}).expect("GPU sweep point");
                    total += t0.elapsed();
                    std::hint::black_box(point);
                }
                total
            })
        });
    }
}

/// A group that times each engine variant of `variants` (name, engine) on the same
/// workloads (`quick_workloads` under `MCGRAD_BENCH_QUICK`).
fn variant_group(
    c: &mut Criterion,
    name: &str,
    workloads: &[(Family, &str, u32, u32)],
    quick_workloads: &[(Family, &str, u32, u32)],
    variants: Vec<(&str, GpuEngine)>,
) {
    let mut group = c.benchmark_group(name);
    configure(&mut group);
    let workloads = if quick() { quick_workloads } else { workloads };
    for (variant, engine) in &variants {
        bench_variant(&mut group, engine, variant, workloads);
    }
    group.finish();
}

/// The score-function pass at S = 256 and the Gumbel pass at S = 64 with each moments
/// reduction the adapter has: the measurement that chooses it per adapter
/// (`MCGRAD_MOMENTS_REDUCTION`).
fn moments_reductions(c: &mut Criterion) {
    let Some(base) = engine() else { return };
    let ctx = base.context();
    let mut reductions = vec![MomentsReduction::WorkgroupTree];
    reductions.extend(MomentsReduction::subgroup(ctx.features, &ctx.info));
    drop(base);
    let variants = reductions
        .into_iter()
        .filter_map(|reduction| {
            let engine = engine()?.with_moments_reduction(reduction);
            Some((
                reduction.name(),
                engine.expect("a reduction the adapter has"),
            ))
        })
        .collect();
    variant_group(
        c,
        "gpu_moments_reduction",
        &[
            (Family::ScoreFunction, "score-function", 256, 1 << 18),
            (Family::Relaxed, "gumbel", 64, 1 << 16),
        ],
        &[(Family::ScoreFunction, "score-function", 16, 512)],
        variants,
    );
}

/// The score-function pass at S = 4096 and the Gumbel pass at S = 1024 with each form of
/// Philox's multiply the device has: the measurement that chooses it per adapter
/// (`MCGRAD_PHILOX_MULTIPLY`).
fn philox_multiplies(c: &mut Criterion) {
    let Some(base) = engine() else { return };
    let mut forms = vec![PhiloxMultiply::Limbs];
    forms.extend(Some(PhiloxMultiply::Int64).filter(|m| m.available(base.context().features)));
    drop(base);
    let variants = forms
        .into_iter()
        .map(|form| {
            let ctx = GpuContext::new(&GpuPreference::Any)
                .and_then(|ctx| ctx.with_philox_multiply(form))
                .expect("a context with this form");
            (
                form.name(),
                GpuEngine::with_context(ctx).expect("the GPU engine"),
            )
        })
        .collect();
    variant_group(
        c,
        "gpu_philox_multiply",
        &[
            (Family::ScoreFunction, "score-function", 4096, 1 << 16),
            (Family::Relaxed, "gumbel", 1024, 1 << 15),
        ],
        &[(Family::ScoreFunction, "score-function", 64, 512)],
        variants,
    );
}

/// The Gumbel pass at S = 64 and S = 1024 with the relaxed draws kernel's loops to the
/// runtime bounds and to constant ones: the measurement that chooses them per adapter
/// (`MCGRAD_RELAXED_DRAWS`).
fn relaxed_draw_loops(c: &mut Criterion) {
    let variants = [RelaxedDrawLoops::Runtime, RelaxedDrawLoops::Unrolled]
        .into_iter()
        .filter_map(|loops| {
            let engine = engine()?.with_relaxed_draw_loops(loops);
            Some((loops.name(), engine.expect("the relaxed kernels")))
        })
        .collect::<Vec<_>>();
    if variants.is_empty() {
        return;
    }
    variant_group(
        c,
        "gpu_relaxed_draws",
        &[
            (Family::Relaxed, "gumbel", 64, 1 << 16),
            (Family::Relaxed, "gumbel", 1024, 1 << 15),
        ],
        &[(Family::Relaxed, "gumbel", 64, 1024)],
        variants,
    );
}

/// The score-function pass at S = 256 and the Gumbel pass at S = 64 with 2^16 (the default)
/// and 2^18 repetitions per chunk: the measurement that chooses `MCGRAD_GPU_CHUNK_REPS` per
/// adapter.
fn chunk_reps(c: &mut Criterion) {
    let variants = [("65536", 1u32 << 16), ("262144", 1 << 18)]
        .into_iter()
        .filter_map(|(name, reps)| {
            let engine = engine()?;
            let limits = ChunkLimits {
                max_reps: reps,
                ..engine.limits()
            };
            Some((name, engine.with_limits(limits)))
        })
        .collect::<Vec<_>>();
    if variants.is_empty() {
        return;
    }
    variant_group(
        c,
        "gpu_chunk_reps",
        &[
            (Family::ScoreFunction, "score-function", 256, 1 << 18),
            (Family::Relaxed, "gumbel", 64, 1 << 16),
        ],
        &[(Family::ScoreFunction, "score-function", 16, 1024)],
        variants,
    );
}

criterion_group!(
    benches,
    passes,
    generic,
    unordered_set,
    counts_workgroups,
    moments_reductions,
    philox_multiplies,
    relaxed_draw_loops,
    chunk_reps
);
criterion_main!(benches);
