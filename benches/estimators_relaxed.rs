//! CPU throughput, in draws per second, of the straight-through and relaxation-based
//! estimators (`st`, `gumbel-rao`, `reinmax`, `rebar`, `relax`), each alone, beside
//! `reinforce` (the score-function family's generic path) and `st-gumbel` for scale:
//! on `indecater-6x10` (L = 6, K = 10, pnorm loss, generic path) at S = 64, and on the seed
//! problem (D = 784, K = 10, squared loss; `st` and `reinmax` on the counts lowering) at
//! S = 64. The warm-up of `rebar` and `relax` is switched off (`--warmup 0`): their measured
//! repetitions cost the same whatever their tuned parameters, and the warm-up is not part of
//! the measurement. `MCGRAD_BENCH_QUICK=1` shrinks every workload so CI only checks that the
//! bench runs.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mcgrad::engine::{run_sweep, CpuEngine, SweepSpec};
use mcgrad::estimators::{self, Settings};
use mcgrad::loss::Loss;
use mcgrad::problem::Problem;
use mcgrad::problems;

fn quick() -> bool {
    std::env::var_os("MCGRAD_BENCH_QUICK").is_some()
}

const IDS: [&str; 7] = [
    "reinforce",
    "st-gumbel",
    "st",
    "reinmax",
    "gumbel-rao",
    "rebar",
    "relax",
];

fn spec(problem: &Problem, loss: Loss, id: &str, samples: u32, reps: u32) -> SweepSpec {
    SweepSpec {
        problem: problem.clone(),
        losses: vec![loss],
        estimators: vec![estimators::by_id(id).unwrap()],
        samples: vec![samples],
        reps,
        seed: 1,
        tau: 1.0,
        settings: Settings {
            warmup: 0,
            ..Settings::default()
        },
    }
}

fn relaxed_estimators(c: &mut Criterion) {
    let engine = CpuEngine::new(0).unwrap();
    let mut group = c.benchmark_group("estimators_relaxed");
    group.sample_size(10);
    if quick() {
        group
            .warm_up_time(std::time::Duration::from_millis(100))
            .measurement_time(std::time::Duration::from_millis(300));
    }
    let s = 64;
    let workloads = [
        (
            "indecater-6x10",
            (problems::by_name("indecater-6x10").unwrap().build)(0),
            Loss::Pnorm,
        ),
        ("seed", Problem::seeded(0, 784, 10), Loss::Squared),
    ];
    for (name, problem, loss) in &workloads {
        for id in IDS {
            // Fewer repetitions for the estimators that do more per draw.
            let reps = match (quick(), id) {
                (true, _) => 20,
                (false, "gumbel-rao" | "rebar" | "relax") => 200,
                (false, _) => 2000,
            };
            let spec = spec(problem, *loss, id, s, reps);
            group.throughput(Throughput::Elements(u64::from(s) * u64::from(reps)));
            group.bench_with_input(
                BenchmarkId::new(*name, format!("{id}/S={s}/R={reps}")),
                &spec,
                |b, spec| b.iter(|| black_box(run_sweep(spec, &engine, &|_| {}).unwrap())),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, relaxed_estimators);
criterion_main!(benches);
