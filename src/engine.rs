//! The Monte Carlo engine: for every draw count S of a sweep, R independent repetitions of
//! every selected estimator's S-draw estimate, reduced to per-coordinate moments.
//!
//! All estimators share one pass over the draws per family: the score-function family reads
//! only each repetition's category counts, the relaxed family each draw's Gumbel sample. The
//! pass is parallel over repetitions; the moments are then accumulated per (loss, estimator)
//! in repetition order, so a seed gives bit-identical results on any number of threads.
//! The [`Engine`] trait is what the CPU and GPU engines share.

use std::time::Instant;

use rayon::prelude::*;

use crate::draws::{count_categories, CategoricalTable, RelaxedTable};
use crate::error::{Error, Result};
use crate::estimators::{
    Context, Estimator, Family, MovingAverage, RelaxedBatch, RelaxedMoments, RELAXED_BATCH,
};
use crate::faults;
use crate::loss::Loss;
use crate::philox::key_of;
use crate::problem::Problem;
use crate::stats::EstimateMoments;

/// The smallest Gumbel-softmax temperature: the Gumbel kernels scale `(h - max h)` by
/// `1 / tau` in f32, and the relaxed estimates by `1 / tau` again, whose squares the moment
/// kernels sum in f32; with `tau >= 1e-3` both stay far inside f32's range (3.4e38), and
/// below it the f32 softmax is a hard argmax anyway (`exp(-gap / tau)` underflows f32 for
/// any gap over 0.11).
pub const MIN_TAU: f64 = 1e-3;

/// Repetitions per block: bounds the memory of a pass whatever R is.
pub const REP_BLOCK: u32 = 1 << 14;

/// What to sweep: the problem, losses, estimators, draw counts and repetitions.
#[derive(Clone, Debug)]
pub struct SweepSpec {
    /// The softmax-categorical problem.
    pub problem: Problem,
    /// Losses, each swept separately.
    pub losses: Vec<Loss>,
    /// Estimators.
    pub estimators: Vec<&'static dyn Estimator>,
    /// Draw counts S (one sweep point each, in this order).
    pub samples: Vec<u32>,
    /// Repetitions R per sweep point.
    pub reps: u32,
    /// Seed of every random number.
    pub seed: u64,
    /// Gumbel-softmax temperature.
    pub tau: f64,
}

impl SweepSpec {
    /// Checks the spec.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for R < 2, S = 0, tau below [`MIN_TAU`], or nothing to do.
    pub fn validate(&self) -> Result<()> {
        if self.reps < 2 {
            return Err(Error::InvalidArgument(format!(
                "--reps must be at least 2 to estimate a variance (got {})",
                self.reps
            )));
        }
        if self.samples.is_empty() || self.samples.contains(&0) {
            return Err(Error::InvalidArgument(
                "--samples must be positive draw counts".into(),
            ));
        }
        if !(self.tau.is_finite() && self.tau >= MIN_TAU) {
            return Err(Error::InvalidArgument(format!(
                "--tau must be at least {MIN_TAU} (got {})",
                self.tau
            )));
        }
        if self.losses.is_empty() || self.estimators.is_empty() {
            return Err(Error::InvalidArgument(
                "nothing to sweep: no loss or no estimator".into(),
            ));
        }
        Ok(())
    }

    /// The estimator context of every loss, in sweep order.
    pub fn contexts(&self) -> Vec<Context> {
        let logits = self.problem.logits();
        self.losses
            .iter()
            .map(|&l| Context::from_logits(&logits, &self.problem.t, l, self.tau))
            .collect()
    }

    /// The workload the benches and the speed check time: the seed problem (D = 784,
    /// K = 10), every loss, every estimator of one family, one draw count.
    pub fn family_workload(family: Family, samples: u32, reps: u32) -> Self {
        Self {
            problem: Problem::seeded(0, 784, 10),
            losses: Loss::ALL.to_vec(),
            estimators: crate::estimators::REGISTRY
                .iter()
                .copied()
                .filter(|e| e.family() == family)
                .collect(),
            samples: vec![samples],
            reps,
            seed: 1,
            tau: 1.0,
        }
    }

    /// The estimators that run at draw count `s` (those whose minimum S it meets).
    pub fn estimators_at(&self, s: u32) -> Vec<&'static dyn Estimator> {
        self.estimators
            .iter()
            .copied()
            .filter(|e| s >= e.min_samples())
            .collect()
    }

    /// Total number of draws of the sweep (both families), for progress reporting.
    pub fn total_draws(&self) -> u64 {
        self.samples
            .iter()
            .map(|&s| {
                let fams = families(&self.estimators_at(s));
                u64::from(s) * u64::from(self.reps) * (u64::from(fams.0) + u64::from(fams.1))
            })
            .sum()
    }
}

/// Whether a list of estimators has (score-function, relaxed) members.
pub fn families(estimators: &[&dyn Estimator]) -> (bool, bool) {
    (
        estimators
            .iter()
            .any(|e| e.family() == Family::ScoreFunction),
        estimators.iter().any(|e| e.family() == Family::Relaxed),
    )
}

/// The moments of one (loss, estimator) at one draw count.
#[derive(Clone, Debug)]
pub struct Cell {
    /// The loss.
    pub loss: Loss,
    /// The estimator.
    pub estimator: &'static dyn Estimator,
    /// Moments of its R estimates.
    pub moments: EstimateMoments,
    /// Wall seconds of its family's shared pass at this S plus its own reduction.
    pub seconds: f64,
}

/// The cells of one sweep point.
#[derive(Clone, Debug)]
pub struct PointMoments {
    /// Draw count S.
    pub samples: u32,
    /// One cell per (loss, estimator), losses outermost, in spec order.
    pub cells: Vec<Cell>,
}

/// Where a sweep ran.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BackendInfo {
    /// `cpu` or `gpu`.
    pub engine: String,
    /// The adapter's name (GPU) or the CPU's description.
    pub adapter: String,
    /// The graphics backend (Vulkan, Gl, ...) for the GPU engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graphics_backend: Option<String>,
    /// The driver and its version, for the GPU engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Worker threads of the CPU engine.
    pub threads: usize,
}

/// An engine that runs the sweep points.
pub trait Engine {
    /// Where it runs.
    fn backend_info(&self) -> BackendInfo;

    /// Runs sweep point `point` (the index into `spec.samples`); calls `progress` with the
    /// number of draws done as it goes.
    ///
    /// # Errors
    /// Engine failures (for the GPU: a lost device, a failed map).
    fn run_point(
        &self,
        spec: &SweepSpec,
        point: usize,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<PointMoments>;
}

/// The most worker threads a CPU engine takes.
pub const MAX_THREADS: usize = 1024;

/// The CPU engine: rayon over repetitions on a pool of its own.
pub struct CpuEngine {
    pool: rayon::ThreadPool,
}

impl CpuEngine {
    /// A CPU engine with `threads` workers (0: one per core).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for more than [`MAX_THREADS`] threads or if the pool cannot be
    /// built.
    pub fn new(threads: usize) -> Result<Self> {
        if threads > MAX_THREADS {
            return Err(Error::InvalidArgument(format!(
                "--threads {threads}: at most {MAX_THREADS} worker threads (0: one per core)"
            )));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| Error::InvalidArgument(format!("--threads: {e}")))?;
        Ok(Self { pool })
    }

    /// Runs `f` on this engine's thread pool.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    /// Worker threads.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }
}

impl Engine for CpuEngine {
    fn backend_info(&self) -> BackendInfo {
        BackendInfo {
            engine: "cpu".into(),
            adapter: format!("{} CPU", std::env::consts::ARCH),
            graphics_backend: None,
            driver: None,
            threads: self.threads(),
        }
    }

    fn run_point(
        &self,
        spec: &SweepSpec,
        point: usize,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<PointMoments> {
        Ok(self.pool.install(|| cpu_point(spec, point, progress)))
    }
}

struct CellState {
    loss_index: usize,
    /// Index among the score-function or among the relaxed estimators.
    family_index: usize,
    estimator: &'static dyn Estimator,
    moments: EstimateMoments,
    baseline: MovingAverage,
    seconds: f64,
}

fn cpu_point(spec: &SweepSpec, point: usize, progress: &(dyn Fn(u64) + Sync)) -> PointMoments {
    let s = spec.samples[point];
    let k = spec.problem.k;
    let key = key_of(spec.seed);
    let point_id = point as u32;
    let logits = spec.problem.logits();
    let contexts = spec.contexts();
    let estimators = spec.estimators_at(s);
    let sf: Vec<_> = estimators
        .iter()
        .copied()
        .filter(|e| e.family() == Family::ScoreFunction)
        .collect();
    let rel: Vec<_> = estimators
        .iter()
        .copied()
        .filter(|e| e.family() == Family::Relaxed)
        .collect();
    let table = CategoricalTable::new(&contexts[0].p);
    let relaxed_table = RelaxedTable::new(&logits, spec.tau);

    let mut cells: Vec<CellState> = Vec::new();
    for loss_index in 0..spec.losses.len() {
        for &estimator in &estimators {
            let family = if estimator.family() == Family::ScoreFunction {
                &sf
            } else {
                &rel
            };
            let family_index = family
                .iter()
                .position(|e| e.id() == estimator.id())
                .unwrap_or(0);
            cells.push(CellState {
                loss_index,
                family_index,
                estimator,
                moments: EstimateMoments::new(k),
                baseline: MovingAverage::default(),
                seconds: 0.0,
            });
        }
    }

    let (mut sf_seconds, mut rel_seconds) = (0.0, 0.0);
    let rel_width = spec.losses.len() * rel.len() * k;
    let mut block_start = 0u32;
    while block_start < spec.reps {
        let nb = REP_BLOCK.min(spec.reps - block_start);
        let mut counts = vec![0u32; if sf.is_empty() { 0 } else { nb as usize * k }];
        if !sf.is_empty() {
            let t0 = Instant::now();
            for _ in 0..faults::repeat_pass("score-function") {
                counts.par_chunks_mut(k).enumerate().for_each(|(i, c)| {
                    count_categories(&table, key, block_start + i as u32, point_id, s, c);
                });
            }
            sf_seconds += t0.elapsed().as_secs_f64();
            progress(u64::from(nb) * u64::from(s));
        }
        let mut relaxed = vec![
            0f64;
            if rel.is_empty() {
                0
            } else {
                nb as usize * rel_width
            }
        ];
        if !rel.is_empty() {
            let t0 = Instant::now();
            for _ in 0..faults::repeat_pass("relaxed") {
                relaxed
                    .par_chunks_mut(rel_width)
                    .enumerate()
                    .for_each(|(i, acc)| {
                        relaxed_repetition(
                            &relaxed_table,
                            &contexts,
                            &rel,
                            key,
                            block_start + i as u32,
                            point_id,
                            s,
                            acc,
                        );
                    });
            }
            rel_seconds += t0.elapsed().as_secs_f64();
            progress(u64::from(nb) * u64::from(s));
        }
        cells.par_iter_mut().for_each(|cell| {
            let t0 = Instant::now();
            let ctx = &contexts[cell.loss_index];
            let mut estimate = vec![0.0; k];
            let faulty = faults::any();
            for r in 0..nb as usize {
                match cell.estimator.family() {
                    Family::ScoreFunction => {
                        let c = &counts[r * k..(r + 1) * k];
                        let b = cell.baseline.value();
                        cell.estimator
                            .estimate_from_counts(ctx, c, s, b, &mut estimate);
                        if let Some(signal) = cell.estimator.baseline_signal(ctx, c, s) {
                            cell.baseline.push(signal);
                        }
                    }
                    Family::Relaxed => {
                        let off =
                            r * rel_width + (cell.loss_index * rel.len() + cell.family_index) * k;
                        estimate.copy_from_slice(&relaxed[off..off + k]);
                    }
                }
                if faulty {
                    faults::distort(cell.estimator.id(), &ctx.grad, &mut estimate);
                }
                cell.moments.push(&estimate, &ctx.grad);
            }
            cell.seconds += t0.elapsed().as_secs_f64();
        });
        block_start += nb;
    }

    let cells = cells
        .into_iter()
        .map(|c| {
            let pass = if c.estimator.family() == Family::ScoreFunction {
                sf_seconds
            } else {
                rel_seconds
            };
            Cell {
                loss: spec.losses[c.loss_index],
                estimator: c.estimator,
                moments: c.moments,
                seconds: pass + c.seconds,
            }
        })
        .collect();
    PointMoments { samples: s, cells }
}

/// One repetition of the relaxed family: averages every (loss, relaxed estimator)'s per-draw
/// estimate over the S draws into `acc` (laid out loss-major, then estimator, then K).
#[allow(clippy::too_many_arguments)]
fn relaxed_repetition(
    table: &RelaxedTable,
    contexts: &[Context],
    rel: &[&'static dyn Estimator],
    key: [u32; 2],
    rep: u32,
    point: u32,
    s: u32,
    acc: &mut [f64],
) {
    let k = table.shifted_logits().len();
    let mut y = vec![0f32; k * RELAXED_BATCH];
    let mut z = [0u32; RELAXED_BATCH];
    let mut y_z = [0f32; RELAXED_BATCH];
    let mut moments = RelaxedMoments::new(k);
    let mut first = 0u32;
    while first < s {
        let n = (s - first).min(RELAXED_BATCH as u32) as usize;
        table.draw_batch(
            key,
            rep,
            point,
            first,
            n,
            &mut y[..k * n],
            &mut z[..n],
            &mut y_z[..n],
        );
        moments.add_batch(&RelaxedBatch {
            n,
            y: &y[..k * n],
            z: &z[..n],
            y_z: &y_z[..n],
        });
        first += n as u32;
    }
    acc.iter_mut().for_each(|a| *a = 0.0);
    for (li, ctx) in contexts.iter().enumerate() {
        for (ei, est) in rel.iter().enumerate() {
            let off = (li * rel.len() + ei) * k;
            est.add_relaxed_sum(ctx, &moments, &mut acc[off..off + k]);
        }
    }
    let inv = 1.0 / f64::from(s);
    acc.iter_mut().for_each(|a| *a *= inv);
}

/// Runs every point of a sweep on `engine`.
///
/// # Errors
/// The spec's validation errors and the engine's failures.
pub fn run_sweep(
    spec: &SweepSpec,
    engine: &dyn Engine,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<PointMoments>> {
    spec.validate()?;
    (0..spec.samples.len())
        .map(|i| engine.run_point(spec, i, progress))
        .collect()
}
