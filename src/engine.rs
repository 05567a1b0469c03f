//! The Monte Carlo engine: for every draw count S of a sweep, R independent repetitions of
//! every selected estimator's S-draw estimate, reduced to per-coordinate moments.
//!
//! Each (loss, estimator) cell runs on one [`Path`]: a lowering the estimator declares (one
//! variable: the category counts of a repetition; a quadratic loss: the relaxed sums) or the
//! generic path, which hands the estimator the joint draws themselves. Cells on one path share
//! its pass over the draws (common random numbers: every estimator of a family sees the same
//! draws). A pass is parallel over repetitions; the moments are then accumulated per cell in
//! repetition order, so a seed gives bit-identical results on any number of threads.
//! The [`Engine`] trait is what the CPU and GPU engines share.

use std::time::Instant;

use rayon::prelude::*;

use crate::draws::{
    count_categories, draw_joint_categories, CategoricalTable, JointRelaxedTable, RelaxedTable,
};
use crate::error::{Error, Result};
use crate::estimators::{
    uses_counts, uses_hard_draw_counts, uses_relaxed_sums, Context, Estimator, Family, JointDraws,
    Lowering, MovingAverage, Noise, RelaxedBatch, RelaxedMoments, Settings, RELAXED_BATCH,
};
use crate::faults;
use crate::loss::Loss;
use crate::philox::key_of;
use crate::problem::Problem;
use crate::stats::EstimateMoments;

/// Repetitions per block: bounds the memory of a pass whatever R is.
pub const REP_BLOCK: u32 = 1 << 14;
/// Most numbers the generic path keeps per block of repetitions (draws and losses): 2^23,
/// 64 MiB at most, whatever S, L and K are.
pub const GENERIC_BLOCK_NUMBERS: u64 = 1 << 23;

/// How one (loss, estimator) cell is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Path {
    /// The counts lowering (one variable, score-function form).
    Counts,
    /// The hard-draw counts lowering (one variable, `st` and `reinmax`): the same category
    /// counts, read on the CPU only.
    HardDrawCounts,
    /// The relaxed-sums lowering (one variable, quadratic loss, relaxed form).
    RelaxedSums,
    /// The generic path over joint draws of the estimator's family.
    Generic(Family),
}

/// The path of `estimator` under `ctx`.
pub fn path_of(estimator: &dyn Estimator, ctx: &Context) -> Path {
    if uses_counts(estimator, ctx) {
        Path::Counts
    } else if uses_hard_draw_counts(estimator, ctx) {
        Path::HardDrawCounts
    } else if uses_relaxed_sums(estimator, ctx) {
        Path::RelaxedSums
    } else {
        Path::Generic(estimator.family())
    }
}

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
    /// The estimators' own settings.
    pub settings: Settings,
}

impl SweepSpec {
    /// Checks the spec.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for R < 2, S = 0, a non-positive tau, or nothing to do.
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
        if !(self.tau.is_finite() && self.tau > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "--tau must be positive (got {})",
                self.tau
            )));
        }
        if self.losses.is_empty() || self.estimators.is_empty() {
            return Err(Error::InvalidArgument(
                "nothing to sweep: no loss or no estimator".into(),
            ));
        }
        self.problem.validate()?;
        for &loss in &self.losses {
            self.problem.check_loss(loss)?;
        }
        for ctx in self.contexts() {
            for e in &self.estimators {
                e.check(&ctx)?;
            }
        }
        Ok(())
    }

    /// The estimator context of every loss, in sweep order.
    pub fn contexts(&self) -> Vec<Context> {
        self.losses
            .iter()
            .map(|&l| {
                let mut ctx = Context::new(&self.problem, l, self.tau);
                ctx.settings = self.settings.clone();
                ctx
            })
            .collect()
    }

    /// The workload the benches and the speed check time: the seed problem (D = 784,
    /// K = 10), the three quadratic losses, every estimator whose lowering is of one family's
    /// fast path (counts or relaxed sums), one draw count.
    pub fn family_workload(family: Family, samples: u32, reps: u32) -> Self {
        Self {
            problem: Problem::seeded(0, 784, 10),
            losses: Loss::QUADRATIC.to_vec(),
            estimators: crate::estimators::REGISTRY
                .iter()
                .copied()
                .filter(|e| {
                    matches!(
                        (family, e.lowering()),
                        (Family::ScoreFunction, Some(Lowering::ScoreFunction { .. }))
                            | (Family::Relaxed, Some(Lowering::Relaxed { .. }))
                    )
                })
                .collect(),
            samples: vec![samples],
            reps,
            seed: 1,
            tau: 1.0,
            settings: Settings::default(),
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

    /// Total number of draws of the sweep (one per pass, repetition and draw), for progress
    /// reporting.
    pub fn total_draws(&self) -> u64 {
        let contexts = self.contexts();
        self.samples
            .iter()
            .map(|&s| {
                let mut paths: Vec<Path> = Vec::new();
                for ctx in &contexts {
                    for e in self.estimators_at(s) {
                        let path = match path_of(e, ctx) {
                            Path::HardDrawCounts => Path::Counts,
                            path => path,
                        };
                        if !paths.contains(&path) {
                            paths.push(path);
                        }
                    }
                }
                u64::from(s) * u64::from(self.reps) * paths.len() as u64
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
    /// The report of its warm-up ([`Estimator::warm_up`]), if it had one.
    pub warm_up: Option<String>,
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

    /// Whether it runs cells of `path` itself; the others run on the CPU engine's generic
    /// path (with a note).
    fn lowers(&self, _path: Path) -> bool {
        true
    }

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
    /// Index among the cells of its path (the relaxed-sums layout).
    path_index: usize,
    path: Path,
    estimator: &'static dyn Estimator,
    moments: EstimateMoments,
    baseline: MovingAverage,
    seconds: f64,
    /// The cell's own context, where a warm-up tuned the estimator.
    warm_ctx: Option<Context>,
}

/// Runs the cells of `spec` at point `point` whose index `select` keeps (all of them on the
/// CPU engine; the GPU engine hands over the cells it cannot lower).
pub(crate) fn cpu_point_cells(
    spec: &SweepSpec,
    point: usize,
    select: &dyn Fn(Path) -> bool,
    progress: &(dyn Fn(u64) + Sync),
) -> PointMoments {
    let s = spec.samples[point];
    let k = spec.problem.k;
    let dim = spec.problem.dim();
    let key = key_of(spec.seed);
    let point_id = point as u32;
    let logits = spec.problem.logits();
    let contexts = spec.contexts();
    let estimators = spec.estimators_at(s);

    let mut cells: Vec<CellState> = Vec::new();
    let mut relaxed_sums = 0;
    for (loss_index, ctx) in contexts.iter().enumerate() {
        for &estimator in &estimators {
            let path = path_of(estimator, ctx);
            if !select(path) {
                continue;
            }
            let path_index = if path == Path::RelaxedSums {
                relaxed_sums += 1;
                relaxed_sums - 1
            } else {
                0
            };
            cells.push(CellState {
                loss_index,
                path_index,
                path,
                estimator,
                moments: EstimateMoments::new(dim),
                baseline: MovingAverage::default(),
                seconds: 0.0,
                warm_ctx: None,
            });
        }
    }
    // Warm-ups (REBAR's and RELAX's tuning), before the measured repetitions and on
    // repetitions past them: reported, not measured.
    let reps = spec.reps;
    cells.par_iter_mut().for_each(|cell| {
        let ctx = &contexts[cell.loss_index];
        let noise_for_rep = |r: u32| Noise {
            key,
            rep: reps.wrapping_add(r),
            point: point_id,
        };
        if let Some(warm) = cell.estimator.warm_up(ctx, s, &noise_for_rep) {
            let mut local = ctx.clone();
            local.warm = Some(std::sync::Arc::new(warm));
            cell.warm_ctx = Some(local);
        }
    });
    let has = |p: Path| cells.iter().any(|c| c.path == p);
    let counts_on = has(Path::Counts) || has(Path::HardDrawCounts);
    let sums_on = has(Path::RelaxedSums);
    let generic_sf = has(Path::Generic(Family::ScoreFunction));
    let generic_rel = has(Path::Generic(Family::Relaxed));
    let table = CategoricalTable::new(&contexts[0].p[..k]);
    let relaxed_table = RelaxedTable::new(&logits[..k], spec.tau);
    let tables: Vec<CategoricalTable> =
        contexts[0].p.chunks(k).map(CategoricalTable::new).collect();
    let joint_relaxed = JointRelaxedTable::new(&logits, k, spec.tau);
    // Losses whose f the generic score-function pass evaluates per draw.
    let generic_losses: Vec<usize> = (0..contexts.len())
        .filter(|&li| {
            cells
                .iter()
                .any(|c| c.loss_index == li && c.path == Path::Generic(Family::ScoreFunction))
        })
        .collect();

    let mut pass_seconds = [0.0f64; 4];
    let l = spec.problem.l;
    let per_rep = u64::from(s) * (l as u64 + 2 * generic_losses.len() as u64)
        + if generic_rel {
            u64::from(s) * (dim as u64 * 3 + l as u64)
        } else {
            0
        };
    let block = if generic_sf || generic_rel {
        (GENERIC_BLOCK_NUMBERS / per_rep.max(1)).clamp(1, u64::from(REP_BLOCK)) as u32
    } else {
        REP_BLOCK
    };
    let sums_width = relaxed_sums * k;
    let mut block_start = 0u32;
    while block_start < spec.reps {
        let nb = block.min(spec.reps - block_start);
        let nbu = nb as usize;
        let mut counts = vec![0u32; if counts_on { nbu * k } else { 0 }];
        if counts_on {
            let t0 = Instant::now();
            for _ in 0..faults::repeat_pass("score-function") {
                counts.par_chunks_mut(k).enumerate().for_each(|(i, c)| {
                    count_categories(&table, key, block_start + i as u32, point_id, s, c);
                });
            }
            pass_seconds[0] += t0.elapsed().as_secs_f64();
            progress(u64::from(nb) * u64::from(s));
        }
        let mut sums = vec![0f64; if sums_on { nbu * sums_width } else { 0 }];
        if sums_on {
            let t0 = Instant::now();
            let sum_cells: Vec<(usize, &'static dyn Estimator)> = cells
                .iter()
                .filter(|c| c.path == Path::RelaxedSums)
                .map(|c| (c.loss_index, c.estimator))
                .collect();
            for _ in 0..faults::repeat_pass("relaxed") {
                sums.par_chunks_mut(sums_width)
                    .enumerate()
                    .for_each(|(i, acc)| {
                        relaxed_repetition(
                            &relaxed_table,
                            &contexts,
                            &sum_cells,
                            key,
                            block_start + i as u32,
                            point_id,
                            s,
                            acc,
                        );
                    });
            }
            pass_seconds[1] += t0.elapsed().as_secs_f64();
            progress(u64::from(nb) * u64::from(s));
        }
        // Generic score-function pass: the joint categories and every generic loss's f.
        let su = s as usize;
        let nl = generic_losses.len();
        let mut joint_z = vec![0u32; if generic_sf { nbu * su * l } else { 0 }];
        let mut joint_f = vec![0f64; if generic_sf { nbu * su * nl } else { 0 }];
        if generic_sf {
            let t0 = Instant::now();
            for _ in 0..faults::repeat_pass("score-function") {
                joint_z
                    .par_chunks_mut(su * l)
                    .zip(joint_f.par_chunks_mut(su * nl))
                    .enumerate()
                    .for_each(|(i, (z, f))| {
                        draw_joint_categories(&tables, key, block_start + i as u32, point_id, s, z);
                        for (gi, &li) in generic_losses.iter().enumerate() {
                            let obj = &contexts[li].objective;
                            for (d, zi) in z.chunks_exact(l).enumerate() {
                                f[gi * su + d] = obj.at_vertex(zi);
                            }
                        }
                    });
            }
            pass_seconds[2] += t0.elapsed().as_secs_f64();
            progress(u64::from(nb) * u64::from(s));
        }
        // Generic relaxed pass: every draw's relaxed sample and hard categories.
        let mut rel_y = vec![0f64; if generic_rel { nbu * su * dim } else { 0 }];
        let mut rel_z = vec![0u32; if generic_rel { nbu * su * l } else { 0 }];
        let mut rel_g = vec![0f64; if generic_rel { nbu * su * dim } else { 0 }];
        if generic_rel {
            let t0 = Instant::now();
            for _ in 0..faults::repeat_pass("relaxed") {
                rel_y
                    .par_chunks_mut(su * dim)
                    .zip(rel_g.par_chunks_mut(su * dim))
                    .zip(rel_z.par_chunks_mut(su * l))
                    .enumerate()
                    .for_each(|(i, ((y, g), z))| {
                        let mut h = vec![0f32; k];
                        for d in 0..su {
                            joint_relaxed.draw(
                                key,
                                block_start + i as u32,
                                point_id,
                                d as u32,
                                &mut h,
                                &mut y[d * dim..(d + 1) * dim],
                                &mut g[d * dim..(d + 1) * dim],
                                &mut z[d * l..(d + 1) * l],
                            );
                        }
                    });
            }
            pass_seconds[3] += t0.elapsed().as_secs_f64();
            progress(u64::from(nb) * u64::from(s));
        }
        cells.par_iter_mut().for_each(|cell| {
            let t0 = Instant::now();
            let ctx = cell.warm_ctx.as_ref().unwrap_or(&contexts[cell.loss_index]);
            let mut estimate = vec![0.0; dim];
            let faulty = faults::any();
            let f_offset = generic_losses
                .iter()
                .position(|&li| li == cell.loss_index)
                .unwrap_or(0);
            for r in 0..nbu {
                match cell.path {
                    Path::Counts | Path::HardDrawCounts => {
                        let c = &counts[r * k..(r + 1) * k];
                        let b = cell.baseline.value();
                        cell.estimator
                            .estimate_from_counts(ctx, c, s, b, &mut estimate);
                        if let Some(signal) = cell.estimator.baseline_signal(ctx, c, s) {
                            cell.baseline.push(signal);
                        }
                    }
                    Path::RelaxedSums => {
                        let off = r * sums_width + cell.path_index * k;
                        estimate.copy_from_slice(&sums[off..off + k]);
                    }
                    Path::Generic(family) => {
                        let noise = Noise {
                            key,
                            rep: block_start + r as u32,
                            point: point_id,
                        };
                        let draws = match family {
                            Family::ScoreFunction => JointDraws {
                                s: su,
                                z: &joint_z[r * su * l..(r + 1) * su * l],
                                f: &joint_f[(r * nl + f_offset) * su..(r * nl + f_offset + 1) * su],
                                y: &[],
                                perturbed: &[],
                                noise,
                            },
                            Family::Relaxed => JointDraws {
                                s: su,
                                z: &rel_z[r * su * l..(r + 1) * su * l],
                                f: &[],
                                y: &rel_y[r * su * dim..(r + 1) * su * dim],
                                perturbed: &rel_g[r * su * dim..(r + 1) * su * dim],
                                noise,
                            },
                        };
                        let b = cell.baseline.value();
                        if let Some(signal) = cell.estimator.estimate(ctx, &draws, b, &mut estimate)
                        {
                            cell.baseline.push(signal);
                        }
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
            let pass = match c.path {
                Path::Counts | Path::HardDrawCounts => pass_seconds[0],
                Path::RelaxedSums => pass_seconds[1],
                Path::Generic(Family::ScoreFunction) => pass_seconds[2],
                Path::Generic(Family::Relaxed) => pass_seconds[3],
            };
            Cell {
                loss: spec.losses[c.loss_index],
                estimator: c.estimator,
                moments: c.moments,
                seconds: pass + c.seconds,
                warm_up: c
                    .warm_ctx
                    .and_then(|ctx| ctx.warm.map(|w| w.report.clone())),
            }
        })
        .collect();
    PointMoments { samples: s, cells }
}

fn cpu_point(spec: &SweepSpec, point: usize, progress: &(dyn Fn(u64) + Sync)) -> PointMoments {
    cpu_point_cells(spec, point, &|_| true, progress)
}

/// One repetition of the relaxed-sums lowering: averages every listed (loss, relaxed
/// estimator)'s per-draw estimate over the S draws into `acc` (K numbers per cell, in order).
#[allow(clippy::too_many_arguments)]
fn relaxed_repetition(
    table: &RelaxedTable,
    contexts: &[Context],
    cells: &[(usize, &'static dyn Estimator)],
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
    for (i, &(li, est)) in cells.iter().enumerate() {
        est.add_relaxed_sum(&contexts[li], &moments, &mut acc[i * k..(i + 1) * k]);
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
