//! GPU engine throughput in draws per second, at the default problem size (D = 784, K = 10)
//! and all three losses: the score-function pass (every score-function estimator) and the
//! Gumbel pass (both relaxed estimators), timed with `iter_custom` around the engine's work
//! only (the engine and its pipelines are built once, outside the timing). Targets on an
//! NVIDIA H100: 2e10 draws/s for the score-function pass, 2e9 for the Gumbel pass. The
//! forward layer's bench is `benches/forward.rs`. The `gpu_generic` group times the generic
//! path (several variables, any loss) on `vae-decoder`.
//!
//! `MCGRAD_BENCH_QUICK=1` shrinks every workload so CI only checks that the bench runs.
//! Without a GPU adapter it prints "skipped: no GPU adapter" and exits successfully.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mcgrad::engine::{Engine, SweepSpec};
use mcgrad::estimators::{Estimator, Family, Lowering};
use mcgrad::gpu::{GpuEngine, GpuPreference};
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
    group.throughput(Throughput::Elements(u64::from(s) * u64::from(r)));
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

criterion_group!(benches, passes, generic);
criterion_main!(benches);
