//! CPU engine throughput, in draws per second, by estimator family and draw count S, at the
//! default problem size (D = 784, K = 10) and all three losses.
//! `MCGRAD_BENCH_QUICK=1` shrinks every workload so CI only checks that the bench runs.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mcgrad::engine::{run_sweep, CpuEngine, SweepSpec};
use mcgrad::estimators::Family;

fn quick() -> bool {
    std::env::var_os("MCGRAD_BENCH_QUICK").is_some()
}

fn spec(family: Family, samples: u32, reps: u32) -> SweepSpec {
    SweepSpec::family_workload(family, samples, reps)
}

fn families(c: &mut Criterion) {
    let engine = CpuEngine::new(0).unwrap();
    let mut group = c.benchmark_group("cpu_sweep");
    if quick() {
        group
            .sample_size(10)
            .warm_up_time(std::time::Duration::from_millis(100));
        group.measurement_time(std::time::Duration::from_millis(300));
    } else {
        group.sample_size(10);
    }
    let sizes: &[(u32, u32)] = if quick() {
        &[(64, 50)]
    } else {
        &[(16, 20_000), (256, 4000), (4096, 1000)]
    };
    for (family, name) in [
        (Family::ScoreFunction, "score-function"),
        (Family::Relaxed, "relaxed"),
    ] {
        for &(s, r) in sizes {
            let r = if family == Family::Relaxed && !quick() {
                r / 8
            } else {
                r
            };
            let spec = spec(family, s, r);
            group.throughput(Throughput::Elements(u64::from(s) * u64::from(r)));
            group.bench_with_input(
                BenchmarkId::new(name, format!("S={s}/R={r}")),
                &spec,
                |b, spec| b.iter(|| black_box(run_sweep(spec, &engine, &|_| {}).unwrap())),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, families);
criterion_main!(benches);
