//! The main job end to end: `mcgrad run` with its defaults (the seed problem, every estimator
//! and loss, S = 1 .. 4096, R = 1000) on the CPU engine, results files and plots included,
//! in sweep draws per second. `MCGRAD_BENCH_QUICK=1` shrinks it (S = 1 .. 16, R = 50) so CI
//! only checks that the bench runs.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mcgrad::backend::Backend;
use mcgrad::engine::SweepSpec;
use mcgrad::estimators;
use mcgrad::loss::Loss;
use mcgrad::problem::Problem;
use mcgrad::run::{execute, RunConfig};

fn quick() -> bool {
    std::env::var_os("MCGRAD_BENCH_QUICK").is_some()
}

fn default_run(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let (samples, reps): (Vec<u32>, u32) = if quick() {
        (vec![1, 2, 4, 8, 16], 50)
    } else {
        ((0..=12).map(|e| 1u32 << e).collect(), 1000)
    };
    let problem = Problem::seeded(0, 784, 10);
    let spec = SweepSpec {
        estimators: estimators::defined_on(&problem, &Loss::QUADRATIC, 1.0),
        problem,
        losses: Loss::QUADRATIC.to_vec(),
        samples,
        reps,
        seed: 0,
        tau: 1.0,
        settings: Default::default(),
    };
    let config = RunConfig {
        out: dir.path().join("run"),
        spec: spec.clone(),
        backend: Backend::Cpu,
        adapter: None,
        threads: 0,
        quiet: true,
    };
    let mut group = c.benchmark_group("run");
    group.sample_size(10);
    if quick() {
        group.warm_up_time(Duration::from_millis(100));
        group.measurement_time(Duration::from_millis(500));
    } else {
        group.measurement_time(Duration::from_secs(20));
    }
    group.throughput(Throughput::Elements(spec.total_draws()));
    group.bench_function("default", |b| b.iter(|| execute(&config).expect("run")));
    group.finish();
}

criterion_group!(benches, default_run);
criterion_main!(benches);
