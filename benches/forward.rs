//! The forward layer `softmax(X W)` for a batch of B inputs (B = 1 .. 4096) of the default
//! size (D = 784, K = 10), in rows per second: the CPU twin (`gpu::forward::forward_cpu`, the
//! logits and probabilities in f64) and the GPU kernel (`shaders/forward.wgsl`, timed with
//! `iter_custom` around launch-and-wait only; the upload is made once, outside the timing).
//!
//! `MCGRAD_BENCH_QUICK=1` shrinks every workload so CI only checks that the bench runs.
//! Without a GPU adapter the GPU group prints "skipped: no GPU adapter".

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mcgrad::engine::Engine;
use mcgrad::gpu::forward::forward_cpu;
use mcgrad::gpu::{Forward, GpuEngine, GpuPreference};
use mcgrad::philox::{PhiloxStream, STREAM_TRAIN};

const D: usize = 784;
const K: usize = 10;

fn quick() -> bool {
    std::env::var_os("MCGRAD_BENCH_QUICK").is_some()
}

fn batches() -> &'static [usize] {
    if quick() {
        &[1, 64]
    } else {
        &[1, 64, 512, 4096]
    }
}

fn configure(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group.sample_size(10);
    if quick() {
        group
            .warm_up_time(Duration::from_millis(100))
            .measurement_time(Duration::from_millis(300));
    }
}

fn inputs(batch: usize) -> (Vec<f32>, Vec<f32>) {
    let mut rng = PhiloxStream::new(2, STREAM_TRAIN, 0);
    let w = (0..D * K).map(|_| rng.next_f64() as f32).collect();
    let x = (0..batch * D).map(|_| rng.next_f64() as f32).collect();
    (x, w)
}

fn cpu(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward_cpu");
    configure(&mut group);
    for &batch in batches() {
        let (x, w) = inputs(batch);
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(
            BenchmarkId::new("forward", format!("B={batch}/D={D}/K={K}")),
            &(x, w),
            |b, (x, w)| b.iter(|| black_box(forward_cpu(x, w, D, K))),
        );
    }
    group.finish();
}

fn gpu(c: &mut Criterion) {
    let engine = match GpuEngine::new(&GpuPreference::Any) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("skipped: no GPU adapter ({e})");
            return;
        }
    };
    eprintln!("GPU adapter: {}", engine.backend_info().adapter);
    let ctx = engine.context();
    let kernel = Forward::new(ctx).expect("forward kernel");
    let mut group = c.benchmark_group("forward_gpu");
    configure(&mut group);
    for &batch in batches() {
        let (x, w) = inputs(batch);
        let uploaded = kernel.batch(ctx, &x, &w, D, K).expect("forward upload");
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(
            BenchmarkId::new("forward", format!("B={batch}/D={D}/K={K}")),
            &uploaded,
            |b, up| {
                b.iter_custom(|iters| {
                    let t0 = Instant::now();
                    for _ in 0..iters {
                        up.launch(ctx, &kernel).expect("forward launch");
                    }
                    t0.elapsed()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, cpu, gpu);
criterion_main!(benches);
