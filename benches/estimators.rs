//! Throughput of the field's estimators (issue 10: `st`, `reinmax`, `gumbel-rao`, `rebar`,
//! `relax`, `arsm`, `disarm`, `unordered-set`, `sum-and-sample`, `indecater`) on the CPU
//! engine, in draws per second (`S * R` joint draws per sweep), beside `reinforce` and `rloo`
//! (the score-function family's fast path) on the same problem: on `indecater-6x10` (pnorm,
//! the generic path) at S = 64, on the seed problem (D = 784, K = 10, squared loss) at S = 64
//! where an estimator applies there (`st` and `reinmax` there run on the counts lowering), and
//! on `reinmax-poly` (128 binary variables), DisARM's own setting (it takes K = 2 only). Each
//! sweep is one estimator, so the time is its own (the shared pass of draws and losses
//! included). The warm-up of `rebar` and `relax` is switched off (`warmup = 0`): their
//! measured repetitions cost the same whatever their tuned parameters, and the warm-up is not
//! part of the measurement (no other estimator reads that setting).
//! `MCGRAD_BENCH_QUICK=1` shrinks every workload so CI only checks that the bench runs.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mcgrad::engine::{run_sweep, CpuEngine, SweepSpec};
use mcgrad::estimators::{self, Settings};
use mcgrad::loss::Loss;
use mcgrad::problems;

fn quick() -> bool {
    std::env::var_os("MCGRAD_BENCH_QUICK").is_some()
}

fn spec(problem: &str, loss: Loss, id: &str, samples: u32, reps: u32) -> SweepSpec {
    let named = problems::by_name(problem).unwrap();
    SweepSpec {
        problem: (named.build)(0),
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

fn field(c: &mut Criterion) {
    let engine = CpuEngine::new(0).unwrap();
    let mut group = c.benchmark_group("field_estimators");
    group.sample_size(10);
    if quick() {
        group
            .warm_up_time(Duration::from_millis(100))
            .measurement_time(Duration::from_millis(300));
    } else {
        group
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4));
    }
    let (s, reps) = if quick() { (8, 4) } else { (64, 256) };
    let workloads: &[(&str, Loss, &[&str])] = &[
        (
            "indecater-6x10",
            Loss::Pnorm,
            &[
                "reinforce",
                "rloo",
                "st",
                "reinmax",
                "gumbel-rao",
                "rebar",
                "relax",
                "arsm",
                "unordered-set",
                "sum-and-sample",
                "indecater",
            ],
        ),
        (
            "seed",
            Loss::Squared,
            &[
                "reinforce",
                "st",
                "reinmax",
                "gumbel-rao",
                "rebar",
                "relax",
                "arsm",
                "unordered-set",
                "sum-and-sample",
                "indecater",
            ],
        ),
        (
            "reinmax-poly",
            Loss::Pnorm,
            &["reinforce", "st", "reinmax", "disarm"],
        ),
    ];
    for &(problem, loss, ids) in workloads {
        for &id in ids {
            let spec = spec(problem, loss, id, s, reps);
            group.throughput(Throughput::Elements(u64::from(s) * u64::from(reps)));
            group.bench_with_input(
                BenchmarkId::new(format!("{problem}/{id}"), format!("S={s}/R={reps}")),
                &spec,
                |b, spec| b.iter(|| black_box(run_sweep(spec, &engine, &|_| {}).unwrap())),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, field);
criterion_main!(benches);
