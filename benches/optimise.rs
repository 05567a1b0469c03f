//! Optimisation runs (`mcgrad::optimise`, `mcgrad train --problem`) in optimiser steps per
//! second, one trajectory at a time on one thread, evaluations only at the start and the end:
//! IndeCateR's 200-Bernoulli problem (maximise the mean of `(z_l - 0.499)^2`, RMSprop, S = 10)
//! and REBAR's toy (S = 1), for a few estimators of each kind. `MCGRAD_BENCH_QUICK=1` shrinks
//! the runs so that CI only checks that the bench runs.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mcgrad::estimators;
use mcgrad::loss::Loss;
use mcgrad::optimise::{optimise, Direction, OptimiseSpec};
use mcgrad::problem::Problem;
use mcgrad::problems;
use mcgrad::train::OptimizerKind;

fn quick() -> bool {
    std::env::var_os("MCGRAD_BENCH_QUICK").is_some()
}

/// 200 Bernoulli variables at logits 0, `f = (1/200) sum_l (z_l - 0.499)^2`.
fn bernoulli_200() -> Problem {
    let mut p = Problem::free_logits(200, 2, vec![0.0; 400]);
    p.b = vec![0.499; 200];
    p
}

fn bench_problem(c: &mut Criterion, name: &str, problem: Problem, samples: u32, ids: &[&str]) {
    let steps = if quick() { 20 } else { 500 };
    let mut group = c.benchmark_group(format!("optimise/{name}"));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(if quick() { 1 } else { 5 }));
    group.throughput(Throughput::Elements(u64::from(steps)));
    for id in ids {
        let mut spec = OptimiseSpec::new(
            problem.clone(),
            Loss::Pnorm,
            vec![estimators::by_id(id).unwrap()],
        );
        spec.steps = steps;
        spec.eval_every = steps;
        spec.samples = samples;
        spec.own_variance = false;
        spec.optimiser = OptimizerKind::RmsProp;
        spec.direction = Direction::Maximise;
        spec.settings.warmup = 50;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        group.bench_function(format!("{id}/S={samples}"), |b| {
            b.iter(|| pool.install(|| optimise(&spec, &|_| {}).unwrap()))
        });
    }
    group.finish();
}

fn optimisation(c: &mut Criterion) {
    bench_problem(
        c,
        "bernoulli-200",
        bernoulli_200(),
        10,
        &[
            "reinforce",
            "rloo",
            "indecater",
            "arsm",
            "gumbel-softmax",
            "rebar",
            "relax",
        ],
    );
    let toy = (problems::by_name("rebar-toy").unwrap().build)(0);
    bench_problem(c, "rebar-toy", toy, 1, &["reinforce", "rebar", "relax"]);
}

criterion_group!(benches, optimisation);
criterion_main!(benches);
