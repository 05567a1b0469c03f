//! CPU engine throughput, in draws per second, by estimator family and draw count S, at the
//! default problem size (D = 784, K = 10) and all three losses (the single-variable
//! lowerings), of the generic path on `indecater-6x10` in joint draws per second, and a
//! sweep point's fixed cost (`cpu_point_overhead`: 8 repetitions of 16 draws), and the
//! score-function pass's counts of one task (`cpu_counts`).
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

/// The two families of the single-variable lowerings, by bench name.
const FAMILIES: [(Family, &str); 2] = [
    (Family::ScoreFunction, "score-function"),
    (Family::Relaxed, "relaxed"),
];

/// One sweep point of `spec` (one S) as bench `name/S=../R=..`, throughput in its draws.
fn bench_point(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    engine: &CpuEngine,
    name: &str,
    spec: &SweepSpec,
) {
    let (s, r) = (spec.samples[0], spec.reps);
    group.throughput(Throughput::Elements(u64::from(s) * u64::from(r)));
    group.bench_with_input(
        BenchmarkId::new(name, format!("S={s}/R={r}")),
        spec,
        |b, spec| b.iter(|| black_box(run_sweep(spec, engine, &|_| {}).unwrap())),
    );
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
    for (family, name) in FAMILIES {
        for &(s, r) in sizes {
            let r = if family == Family::Relaxed && !quick() {
                r / 8
            } else {
                r
            };
            bench_point(&mut group, &engine, name, &spec(family, s, r));
        }
    }
    group.finish();
}

/// The generic path: `indecater-6x10` (6 variables of 10 categories, pnorm), the
/// score-function family's estimators with a lowering (exact, reinforce, reinforce-ema, rloo,
/// muprop, muprop-c), S = 64; throughput in joint draws (6 categories each).
fn generic(c: &mut Criterion) {
    let engine = CpuEngine::new(0).unwrap();
    let mut group = c.benchmark_group("cpu_generic");
    group.sample_size(10);
    if quick() {
        group
            .warm_up_time(std::time::Duration::from_millis(100))
            .measurement_time(std::time::Duration::from_millis(300));
    }
    let (s, r) = if quick() { (64, 50) } else { (64, 20_000) };
    let mut spec = SweepSpec::family_workload(Family::ScoreFunction, s, r);
    spec.problem = (mcgrad::problems::by_name("indecater-6x10").unwrap().build)(0);
    spec.losses = vec![mcgrad::loss::Loss::Pnorm];
    bench_point(&mut group, &engine, "indecater-6x10/score-function", &spec);
    group.finish();
}

/// A sweep point's fixed cost: the same workloads with R = 8 repetitions of S = 16 draws,
/// where the contexts, tables, warm-ups, buffers and thread hand-offs of a point outweigh its
/// 128 draws (throughput in draws; a point's time is 128 over it). What a training loop or a
/// sweep of many small points pays per point.
fn overhead(c: &mut Criterion) {
    let engine = CpuEngine::new(0).unwrap();
    let mut group = c.benchmark_group("cpu_point_overhead");
    group.sample_size(if quick() { 10 } else { 50 });
    if quick() {
        group
            .warm_up_time(std::time::Duration::from_millis(100))
            .measurement_time(std::time::Duration::from_millis(300));
    }
    for (family, name) in FAMILIES {
        bench_point(&mut group, &engine, name, &spec(family, 16, 8));
    }
    group.finish();
}

/// The score-function pass's counts of one task (64 repetitions of S = 16 draws at the
/// default problem's p, K = 10) in the category-major f64 tile the counts lowering reads:
/// written straight from the threshold tallies (`f64-tile`, the engine's path), and as u32
/// rows then transposed (`u32-rows-transposed`, its path where a cell reads the rows, and
/// the path before); throughput in draws.
fn counts(c: &mut Criterion) {
    use mcgrad::draws::{count_categories_reps, count_categories_reps_f64, CategoricalTable};
    use mcgrad::estimators::transpose_counts_strided;
    let mut group = c.benchmark_group("cpu_counts");
    if quick() {
        group
            .warm_up_time(std::time::Duration::from_millis(100))
            .measurement_time(std::time::Duration::from_millis(300));
    }
    let spec = spec(Family::ScoreFunction, 16, 64);
    let contexts = spec.contexts();
    let k = spec.problem.k;
    let table = CategoricalTable::new(&contexts[0].p[..k]);
    let (s, reps) = (16u32, 64usize);
    let (key, point) = ([1, 2], 0);
    group.throughput(Throughput::Elements(u64::from(s) * reps as u64));
    let mut tile = vec![0f64; reps * k];
    let mut rows = vec![0u32; reps * k];
    let mut first = 0u32;
    group.bench_function(format!("f64-tile/S={s}/R={reps}"), |b| {
        b.iter(|| {
            first = first.wrapping_add(reps as u32);
            count_categories_reps_f64(&table, key, first, point, s, reps, reps, &mut tile);
            black_box(&tile);
        })
    });
    group.bench_function(format!("u32-rows-transposed/S={s}/R={reps}"), |b| {
        b.iter(|| {
            first = first.wrapping_add(reps as u32);
            count_categories_reps(&table, key, first, point, s, &mut rows);
            transpose_counts_strided(&rows, k, reps, &mut tile);
            black_box(&tile);
        })
    });
    group.finish();
}

criterion_group!(benches, families, generic, overhead, counts);
criterion_main!(benches);
