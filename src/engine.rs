//! The Monte Carlo engine: for every draw count S of a sweep, R independent repetitions of
//! every selected estimator's S-draw estimate, reduced to per-coordinate moments.
//!
//! Each (loss, estimator) cell runs on one [`Path`]: a lowering the estimator declares (one
//! variable: the category counts of a repetition; a quadratic loss: the relaxed sums) or the
//! generic path, which hands the estimator the joint draws themselves. Cells on one path share
//! its pass over the draws (common random numbers: every estimator of a family sees the same
//! draws). A pass is parallel over repetitions; the moments are then accumulated per cell in
//! repetition order, as power sums per block of repetitions ([`MomentSums`]) merged in block
//! order, so a seed gives bit-identical results on any number of threads.
//! The [`Engine`] trait is what the CPU and GPU engines share.

use std::time::Instant;

use rayon::prelude::*;

use crate::draws::{
    count_categories_reps, count_categories_reps_f64, draw_joint_categories,
    draw_joint_categories_by_variable, CategoricalTable, JointRelaxedTable, RelaxedTable,
};
use crate::error::{Error, Result};
use crate::estimators::{
    average_with_table_batch, estimate_counts_batch, estimate_one, fill_joint_counts,
    fill_joint_counts_by_variable, relaxed_moments, relaxed_sums_reps, transpose_counts_strided,
    uses_counts, uses_hard_draw_counts, uses_joint_counts, uses_relaxed_sums, with_scratch,
    Constant, Context, DrawSource, Estimator, Family, JointCounts, JointDraws, JointScratch,
    Lowering, MovingAverage, Noise, RelaxedMoments, RelaxedReps, Settings, RELAXED_REPS,
};
use crate::estimators::{reads_draws, warmed_baseline, warmed_counts_baselines};
use crate::faults;
use crate::loss::Loss;
use crate::philox::key_of;
use crate::problem::Problem;
use crate::stats::{EstimateMoments, MomentSums, PUSH_BATCH};

/// The smallest Gumbel-softmax temperature: the Gumbel kernels scale `(h - max h)` by
/// `1 / tau` in f32, and the relaxed estimates by `1 / tau` again, whose squares the moment
/// kernels sum in f32; with `tau >= 1e-3` both stay far inside f32's range (3.4e38), and
/// below it the f32 softmax is a hard argmax anyway (`exp(-gap / tau)` underflows f32 for
/// any gap over 0.11).
pub const MIN_TAU: f64 = 1e-3;

/// Repetitions per block: bounds the memory of a pass whatever R is.
pub const REP_BLOCK: u32 = 1 << 14;
/// Repetitions per draw block of the lowered paths (a power of two dividing [`REP_BLOCK`]):
/// 2048 repetitions' counts in f64 are 160 KiB at K = 10, so every cell of a pass reads them
/// from the core's cache.
pub const COUNTS_BLOCK: u32 = 1 << 11;
/// Repetitions per task of the counts pass, and per tile of the counts in f64 (a batch of
/// the counts lowering: a block's batches read one tile each).
const COUNT_TASK: usize = PUSH_BATCH;
/// Most numbers the generic path keeps per block of repetitions (draws and losses): 2^23,
/// 64 MiB at most, whatever S, L and K are.
pub const GENERIC_BLOCK_NUMBERS: u64 = 1 << 23;

/// Most relaxed sums kept per block of repetitions when no generic cell sets the block:
/// 2^15, 256 KiB, so that they stay in a core's cache.
pub const RELAXED_BLOCK_NUMBERS: u64 = 1 << 15;
/// Numbers the generic and joint-counts passes aim to keep per block of repetitions: 2^17,
/// 1 MiB, so that the cells read a block's draws and sums from the cache that the pass wrote
/// them to, not from memory (they are read once per cell). A block still holds at least
/// [`GENERIC_MIN_BLOCK`] repetitions where [`GENERIC_BLOCK_NUMBERS`] allows, so that the
/// pass stays parallel whatever S is.
pub const GENERIC_CACHE_NUMBERS: u64 = 1 << 17;
/// The fewest repetitions a block of the generic pass aims for (see
/// [`GENERIC_CACHE_NUMBERS`]).
pub const GENERIC_MIN_BLOCK: u64 = 64;

/// Most numbers the generic path may keep for one repetition's S draws: 2^26, 512 MiB.
pub const MAX_REPETITION_NUMBERS: u64 = 1 << 26;

/// How one (loss, estimator) cell is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Path {
    /// The counts lowering (one variable, score-function form).
    Counts,
    /// The joint-counts lowering (several variables, score-function form).
    JointCounts,
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
    } else if uses_joint_counts(estimator, ctx) {
        Path::JointCounts
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
        self.problem.validate()?;
        for &loss in &self.losses {
            self.problem.check_loss(loss)?;
        }
        let contexts = self.contexts();
        for ctx in &contexts {
            for e in &self.estimators {
                e.check(ctx)?;
            }
        }
        // The generic and joint-counts paths keep one repetition's draws whole: bound what
        // that takes.
        let dim = self.problem.dim() as u64;
        let per_draw = self.problem.l as u64 + 2 + 3 * dim;
        for &s in &self.samples {
            let estimators = self.estimators_at(s);
            for ctx in &contexts {
                for e in &estimators {
                    e.check_samples(ctx, s)?;
                }
            }
            let generic = contexts.iter().any(|ctx| {
                estimators
                    .iter()
                    .any(|e| matches!(path_of(*e, ctx), Path::Generic(_) | Path::JointCounts))
            });
            if generic && u64::from(s) * per_draw > MAX_REPETITION_NUMBERS {
                return Err(Error::InvalidArgument(format!(
                    "--samples {s}: on this problem's generic path one repetition keeps {per_draw} numbers per draw; at most {MAX_REPETITION_NUMBERS} numbers ({} MiB) per repetition, so S <= {}",
                    (MAX_REPETITION_NUMBERS * 8) >> 20,
                    MAX_REPETITION_NUMBERS / per_draw
                )));
            }
        }
        Ok(())
    }

    /// The estimator context of every loss, in sweep order.
    pub fn contexts(&self) -> Vec<Context> {
        let logits = self.problem.logits();
        self.losses
            .iter()
            .map(|&l| {
                let mut ctx = Context::at_logits(&self.problem, &logits, l, self.tau);
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
                        let path = path_of(e, ctx);
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
    /// Worker threads of the CPU engine; for the GPU engine, those of its CPU fallback (the
    /// cells with no GPU form).
    pub threads: usize,
}

/// An engine that runs the sweep points.
pub trait Engine {
    /// Where it runs.
    fn backend_info(&self) -> BackendInfo;

    /// Why it cannot run `estimator`'s cell under `ctx` at S = `samples` itself (such a cell
    /// runs on the CPU engine, with a note), or `None` if it can.
    fn fallback_reason(
        &self,
        _estimator: &dyn Estimator,
        _ctx: &Context,
        _samples: u32,
    ) -> Option<String> {
        None
    }

    /// Whether it runs `estimator`'s cell under `ctx` at S = `samples` itself.
    fn lowers(&self, estimator: &dyn Estimator, ctx: &Context, samples: u32) -> bool {
        self.fallback_reason(estimator, ctx, samples).is_none()
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
    /// The power sums of the current moment block ([`REP_BLOCK`] repetitions from a
    /// multiple of it), kept across draw blocks.
    sums: Option<MomentSums>,
    /// Estimates waiting to be pushed, coordinate-major (`dim x PUSH_BATCH`), and how many:
    /// the batches start at multiples of PUSH_BATCH repetitions whatever the draw block.
    batch: Vec<f64>,
    in_batch: usize,
    /// A block's estimates, repetition-major, where they are computed in parallel (a
    /// generic cell that keeps no moving average); kept across blocks.
    estimates: Vec<f64>,
    /// Whether this block's `estimates` were computed together with the other losses' cells
    /// of its estimator ([`Estimator::shares_work_across_losses`]).
    shared: bool,
}

/// Runs the cells of `spec` at point `point` that `select(context, estimator)` keeps (all of
/// them on the CPU engine; the GPU engine hands over the cells it cannot lower).
pub(crate) fn cpu_point_cells(
    spec: &SweepSpec,
    point: usize,
    select: &dyn Fn(&Context, &dyn Estimator) -> bool,
    progress: &(dyn Fn(u64) + Sync),
) -> PointMoments {
    let s = spec.samples[point];
    let k = spec.problem.k;
    let dim = spec.problem.dim();
    let key = key_of(spec.seed);
    let point_id = point as u32;
    let contexts = spec.contexts();
    let logits = &contexts[0].logits;
    let estimators = spec.estimators_at(s);

    let mut cells: Vec<CellState> = Vec::new();
    let mut relaxed_sums = 0;
    for (loss_index, ctx) in contexts.iter().enumerate() {
        for &estimator in &estimators {
            let path = path_of(estimator, ctx);
            if !select(ctx, estimator) {
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
                sums: None,
                batch: vec![0.0; dim * PUSH_BATCH],
                in_batch: 0,
                estimates: Vec::new(),
                shared: false,
            });
        }
    }
    // Warm-ups (REBAR's and RELAX's tuning), before the measured repetitions and on
    // repetitions past them: reported, not measured.
    let reps = spec.reps;
    // The counts path's moving averages warm up on repetitions whose category counts depend
    // on p alone: drawn once for all of them (`warmed_counts_baselines`, each baseline the
    // bits of its own `warmed_baseline`), not once per cell and repetition.
    let counts_warm: Vec<usize> = (0..cells.len())
        .filter(|&i| {
            let c = &cells[i];
            c.path == Path::Counts
                && contexts[c.loss_index].l == 1
                && c.estimator.keeps_moving_average()
                && reads_draws(c.estimator)
        })
        .collect();
    let counts_warmed = {
        let warm_cells: Vec<(&dyn Estimator, &Context)> = counts_warm
            .iter()
            .map(|&i| (cells[i].estimator, &contexts[cells[i].loss_index]))
            .collect();
        warmed_counts_baselines(&warm_cells, key, point_id, s, reps)
    };
    cells.par_iter_mut().enumerate().for_each(|(i, cell)| {
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
        // Moving-average baselines enter the measurement warmed up, not at 0.
        cell.baseline = match counts_warm.binary_search(&i) {
            Ok(at) => counts_warmed[at],
            Err(_) => warmed_baseline(cell.estimator, ctx, key, point_id, s, reps),
        };
    });
    let has = |p: Path| cells.iter().any(|c| c.path == p);
    let counts_paths = u64::from(has(Path::Counts)) + u64::from(has(Path::HardDrawCounts));
    // The counts pass: its tiles of f64 counts are what the batched lowerings read
    // (score-function cells, and hard-draw cells through their tables of per-category
    // estimates).
    let counts_on = counts_paths > 0;
    // The counts in u32, one repetition's row after another, are read only by the cells that
    // take one repetition at a time: a hard-draw cell without a table of per-category
    // estimates, and every cell under injected faults. Without them the counts pass writes
    // the f64 tiles alone.
    let u32_counts_on = counts_on && (has(Path::HardDrawCounts) || faults::any());
    let sums_on = has(Path::RelaxedSums);
    let generic_sf = has(Path::Generic(Family::ScoreFunction));
    let generic_rel = has(Path::Generic(Family::Relaxed));
    let table = CategoricalTable::new(&contexts[0].p[..k]);
    let relaxed_table = RelaxedTable::new(&logits[..k], spec.tau);
    let tables: Vec<CategoricalTable> =
        contexts[0].p.chunks(k).map(CategoricalTable::new).collect();
    let joint_relaxed = JointRelaxedTable::new(logits, k, spec.tau);
    // Losses whose f the generic score-function pass keeps per draw, and those whose joint
    // counts it keeps per repetition.
    let losses_on = |path: Path| -> Vec<usize> {
        (0..contexts.len())
            .filter(|&li| cells.iter().any(|c| c.loss_index == li && c.path == path))
            .collect()
    };
    // Only the losses that a generic cell reads per draw (`st` and `reinmax` read the hard
    // draws alone).
    let generic_losses: Vec<usize> = losses_on(Path::Generic(Family::ScoreFunction))
        .into_iter()
        .filter(|&li| {
            cells.iter().any(|c| {
                c.loss_index == li
                    && c.path == Path::Generic(Family::ScoreFunction)
                    && c.estimator.reads_draw_losses()
            })
        })
        .collect();
    let joint_losses = losses_on(Path::JointCounts);
    let joint_on = !joint_losses.is_empty();
    let joint_len = JointCounts::buffer_len(&contexts[0]);

    let mut pass_seconds = [0.0f64; 4];
    let l = spec.problem.l;
    // The joint categories are kept per draw only for generic cells (the joint-counts pass
    // keeps each repetition's sums alone).
    let per_rep = if generic_sf {
        u64::from(s) * (l as u64 + 2 * generic_losses.len() as u64)
    } else {
        0
    } + (joint_losses.len() * joint_len) as u64
        + if generic_rel {
            u64::from(s) * (dim as u64 * 3 + l as u64)
        } else {
            0
        };
    // A power of two: the draw blocks then tile the moment blocks (REP_BLOCK repetitions,
    // flushed into the moments at multiples of REP_BLOCK), and the batches of PUSH_BATCH
    // estimates (kept across draw blocks) start at multiples of PUSH_BATCH; so the power
    // sums, and the figures to the last bit, do not depend on which other cells (and so
    // which draw block) a pass has.
    let sums_width = relaxed_sums * k;
    let block = if generic_sf || generic_rel || joint_on {
        let most = (GENERIC_BLOCK_NUMBERS / per_rep.max(1)).clamp(1, u64::from(REP_BLOCK));
        let fit = (GENERIC_CACHE_NUMBERS / per_rep.max(1))
            .max(GENERIC_MIN_BLOCK)
            .min(most);
        1u32 << fit.ilog2()
    } else if sums_on {
        // The relaxed sums of a block stay in the cache between the relaxed pass that
        // writes them and the cells that read them (at S = 16 a block of REP_BLOCK
        // repetitions' sums, 7.5 MiB, made that copy a fifth of the time).
        let fit = (RELAXED_BLOCK_NUMBERS / sums_width.max(1) as u64)
            .clamp(PUSH_BATCH as u64, u64::from(REP_BLOCK));
        1u32 << fit.ilog2()
    } else {
        // The counts of a block stay in the core's cache while every cell reads them.
        COUNTS_BLOCK
    };
    // The counts in f64 for the batched counts lowering, tile by tile of COUNT_TASK
    // repetitions (`counts_t[(t * K + j) * COUNT_TASK + i]` is the count of category j of
    // repetition `t * COUNT_TASK + i` of the block), written by the counts pass's own tasks;
    // kept across blocks (only the block's repetitions are read).
    let mut counts_t: Vec<f64> = Vec::new();
    // The generic and joint-counts passes' output, allocated once for the largest block and
    // written whole for each block's repetitions (a fresh zeroed block was a serial memset
    // between the parallel passes, 6% of the joint-counts pass's time).
    let su = s as usize;
    let nl = generic_losses.len();
    let nj = joint_losses.len();
    let f_stride = (su * nl).max(1);
    let bu = block.min(spec.reps) as usize;
    let mut joint_z_all = vec![0u32; if generic_sf { bu * su * l } else { 0 }];
    let mut joint_f_all = vec![0f64; if generic_sf { bu * f_stride } else { 0 }];
    let mut joint_sums_all = vec![0f64; bu * (nj * joint_len).max(1)];
    let mut relaxed_sums_buffer: Vec<f64> = Vec::new();
    let mut block_start = 0u32;
    while block_start < spec.reps {
        let nb = block.min(spec.reps - block_start);
        let nbu = nb as usize;
        let mut counts = vec![0u32; if u32_counts_on { nbu * k } else { 0 }];
        if counts_on {
            counts_t.resize(nbu.div_ceil(COUNT_TASK) * COUNT_TASK * k, 0.0);
        }
        if counts_on {
            let t0 = Instant::now();
            for _ in 0..faults::repeat_pass("score-function") {
                // Tasks of COUNT_TASK repetitions (the tallies run several at once), each
                // writing its tile of f64 counts.
                let tiles = counts_t.par_chunks_mut(k * COUNT_TASK);
                if u32_counts_on {
                    // The u32 rows too, and the tile as their transpose.
                    counts
                        .par_chunks_mut(k * COUNT_TASK)
                        .zip(tiles)
                        .enumerate()
                        .for_each(|(i, (c, tile))| {
                            let rep = block_start + (i * COUNT_TASK) as u32;
                            count_categories_reps(&table, key, rep, point_id, s, c);
                            transpose_counts_strided(c, k, COUNT_TASK, tile);
                        });
                } else {
                    // Straight into the tiles (the same counts).
                    tiles.enumerate().for_each(|(i, tile)| {
                        let first = i * COUNT_TASK;
                        count_categories_reps_f64(
                            &table,
                            key,
                            block_start + first as u32,
                            point_id,
                            s,
                            COUNT_TASK.min(nbu - first),
                            COUNT_TASK,
                            tile,
                        );
                    });
                }
            }
            pass_seconds[0] += t0.elapsed().as_secs_f64();
            // One report per path the pass serves (counts and hard-draw counts share it here,
            // but on the GPU engine the second runs apart), so that the total is
            // [`SweepSpec::total_draws`] whichever engine runs the point.
            progress(counts_paths * u64::from(nb) * u64::from(s));
        }
        // Every number of a block's sums is written by its repetition's cells (kept across
        // blocks: a fresh, zeroed buffer per block was about 5% of the S = 16 bench).
        relaxed_sums_buffer.resize(if sums_on { nbu * sums_width } else { 0 }, 0.0);
        let sums = &mut relaxed_sums_buffer[..];
        if sums_on {
            let t0 = Instant::now();
            let sum_cells: Vec<(usize, &'static dyn Estimator)> = cells
                .iter()
                .filter(|c| c.path == Path::RelaxedSums)
                .map(|c| (c.loss_index, c.estimator))
                .collect();
            for _ in 0..faults::repeat_pass("relaxed") {
                if RelaxedReps::serves(s) {
                    // Eight repetitions at once (the same bits per repetition), in each
                    // worker's own scratch; a block's last few one at a time.
                    sums.par_chunks_mut(RELAXED_REPS * sums_width)
                        .enumerate()
                        .for_each(|(i, acc)| {
                            let rep0 = block_start + (i * RELAXED_REPS) as u32;
                            if acc.len() == RELAXED_REPS * sums_width {
                                with_scratch(k, |reps| {
                                    relaxed_sums_reps(
                                        &relaxed_table,
                                        &contexts,
                                        &sum_cells,
                                        key,
                                        rep0,
                                        point_id,
                                        s,
                                        reps,
                                        acc,
                                    )
                                });
                                return;
                            }
                            let mut moments = RelaxedMoments::new(k);
                            for (j, acc) in acc.chunks_mut(sums_width).enumerate() {
                                relaxed_repetition(
                                    &relaxed_table,
                                    &contexts,
                                    &sum_cells,
                                    key,
                                    rep0 + j as u32,
                                    point_id,
                                    s,
                                    &mut moments,
                                    acc,
                                );
                            }
                        });
                    continue;
                }
                sums.par_chunks_mut(sums_width).enumerate().for_each_init(
                    || RelaxedMoments::new(k),
                    |moments, (i, acc)| {
                        relaxed_repetition(
                            &relaxed_table,
                            &contexts,
                            &sum_cells,
                            key,
                            block_start + i as u32,
                            point_id,
                            s,
                            moments,
                            acc,
                        );
                    },
                );
            }
            pass_seconds[1] += t0.elapsed().as_secs_f64();
            progress(u64::from(nb) * u64::from(s));
        }
        // Generic score-function pass: the joint categories and every generic loss's f.
        let joint_z = &mut joint_z_all[..if generic_sf { nbu * su * l } else { 0 }];
        // At least one number per repetition (as `joint_sums` below), so that zipping the
        // per-repetition chunks never stops early when no cell reads the losses.
        let joint_f = &mut joint_f_all[..if generic_sf { nbu * f_stride } else { 0 }];
        // At least one number per repetition, so that zipping the per-repetition chunks never
        // stops early when no joint-counts cell needs them.
        let joint_sums = &mut joint_sums_all[..nbu * (nj * joint_len).max(1)];
        if generic_sf || joint_on {
            let t0 = Instant::now();
            let (zw, fw, jw) = (
                if generic_sf { su * l } else { 0 },
                if generic_sf { f_stride } else { 0 },
                (nj * joint_len).max(1),
            );
            for _ in 0..faults::repeat_pass("score-function") {
                // Scratch per worker (not per repetition): the categories where the pass does
                // not keep them, and the losses of a joint-counts-only loss.
                let scratch = || {
                    (
                        Vec::<u32>::new(),
                        Vec::<f64>::new(),
                        JointScratch::default(),
                    )
                };
                let work =
                    |(z_local, f_local, joint_local): &mut (Vec<u32>, Vec<f64>, JointScratch),
                     i: usize,
                     z: &mut [u32],
                     f: &mut [f64],
                     sums: &mut [f64]| {
                        if !generic_sf {
                            // Joint counts alone: the draws variable-major, which the loss and
                            // the sums read one variable at a time (the same bits).
                            z_local.resize(su * l, 0);
                            let rep = block_start + i as u32;
                            draw_joint_categories_by_variable(
                                &tables, key, rep, point_id, s, z_local,
                            );
                            for (ji, &li) in joint_losses.iter().enumerate() {
                                fill_joint_counts_by_variable(
                                    &contexts[li],
                                    z_local,
                                    su,
                                    joint_local,
                                    &mut sums[ji * joint_len..(ji + 1) * joint_len],
                                );
                            }
                            return;
                        }
                        let z: &mut [u32] = if generic_sf {
                            z
                        } else {
                            z_local.resize(su * l, 0);
                            z_local
                        };
                        draw_joint_categories(&tables, key, block_start + i as u32, point_id, s, z);
                        for (gi, &li) in generic_losses.iter().enumerate() {
                            let obj = &contexts[li].objective;
                            obj.at_vertices(z, &mut f[gi * su..(gi + 1) * su]);
                        }
                        for (ji, &li) in joint_losses.iter().enumerate() {
                            let ctx = &contexts[li];
                            let fl: &[f64] = match generic_losses.iter().position(|&g| g == li) {
                                Some(gi) => &f[gi * su..(gi + 1) * su],
                                None => {
                                    f_local.resize(su, 0.0);
                                    ctx.objective.at_vertices(z, f_local);
                                    f_local
                                }
                            };
                            fill_joint_counts(
                                ctx,
                                z,
                                fl,
                                &mut sums[ji * joint_len..(ji + 1) * joint_len],
                            );
                        }
                    };
                if generic_sf {
                    joint_z
                        .par_chunks_mut(zw)
                        .zip(joint_f.par_chunks_mut(fw.max(1)))
                        .zip(joint_sums.par_chunks_mut(jw))
                        .enumerate()
                        .for_each_init(scratch, |local, (i, ((z, f), sums))| {
                            work(local, i, z, f, sums)
                        });
                } else {
                    joint_sums
                        .par_chunks_mut(jw)
                        .enumerate()
                        .for_each_init(scratch, |local, (i, sums)| {
                            work(local, i, &mut [], &mut [], sums)
                        });
                }
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
        // An estimator that does a draw's work once for every loss (Gumbel-Rao's conditional
        // draws): the block's estimates of its generic cells of every loss at once, in
        // parallel over repetitions as below, each cell's bit for bit its own; the time is
        // shared equally among those cells.
        // Repetition r's relaxed joint draws of this block, as the generic path reads them.
        let relaxed_draws = |r: usize| JointDraws {
            s: su,
            z: &rel_z[r * su * l..(r + 1) * su * l],
            f: &[],
            y: &rel_y[r * su * dim..(r + 1) * su * dim],
            perturbed: &rel_g[r * su * dim..(r + 1) * su * dim],
            noise: Noise {
                key,
                rep: block_start + r as u32,
                point: point_id,
            },
        };
        for group in shared_loss_groups(&cells, faults::any()) {
            let t0 = Instant::now();
            let estimator = cells[group[0]].estimator;
            let ctxs: Vec<&Context> = group
                .iter()
                .map(|&ci| &contexts[cells[ci].loss_index])
                .collect();
            let width = group.len() * dim;
            let task = PARALLEL_REPS_TASK;
            let mut joint = vec![0.0; nbu * width];
            joint
                .par_chunks_mut(width * task)
                .enumerate()
                .for_each(|(t, chunk)| {
                    for (j, estimates) in chunk.chunks_exact_mut(width).enumerate() {
                        let draws = relaxed_draws(t * task + j);
                        estimator.estimate_losses(&ctxs, &draws, estimates);
                    }
                });
            let share = t0.elapsed().as_secs_f64() / group.len() as f64;
            for (gi, &ci) in group.iter().enumerate() {
                let cell = &mut cells[ci];
                cell.estimates.resize(nbu * dim, 0.0);
                for (to, from) in cell
                    .estimates
                    .chunks_exact_mut(dim)
                    .zip(joint.chunks_exact(width))
                {
                    to.copy_from_slice(&from[gi * dim..(gi + 1) * dim]);
                }
                cell.shared = true;
                cell.seconds += share;
            }
        }
        cells.par_iter_mut().for_each(|cell| {
            let t0 = Instant::now();
            if cell.sums.is_none() {
                cell.sums = Some(MomentSums::new(&cell.moments));
            }
            let block_sums = cell.sums.as_mut().expect("just set");
            let batch = &mut cell.batch;
            let mut in_batch = cell.in_batch;
            let ctx = cell.warm_ctx.as_ref().unwrap_or(&contexts[cell.loss_index]);
            // The estimates of up to STAGE repetitions, repetition-major, before they go to
            // the batch's columns: one cache line per coordinate and STAGE repetitions, where
            // one repetition at a time wrote one number to each of `dim` lines.
            let mut stage = vec![0.0; dim * STAGE];
            let mut staged = 0;
            let faulty = faults::any();
            let f_offset = generic_losses
                .iter()
                .position(|&li| li == cell.loss_index)
                .unwrap_or(0);
            let ji = joint_losses
                .iter()
                .position(|&li| li == cell.loss_index)
                .unwrap_or(0);
            // An estimator that ignores its draws (`exact`) gives the same estimate every
            // repetition: its batches are pushed as repeats of it, with the same results.
            let constant = !faulty
                && match cell.path {
                    Path::Counts => ignores_counts(cell.estimator),
                    Path::JointCounts => joint_counts_constant(cell.estimator),
                    _ => false,
                };
            // A hard-draw cell's per-category estimates, built once for the block (the same
            // bits as its `estimate_from_counts`, which would rebuild them every repetition);
            // none for one that feeds a moving average (the batch feeds none).
            let hard_table = match cell.path {
                Path::HardDrawCounts if !faulty && !cell.estimator.keeps_moving_average() => {
                    cell.estimator.counts_table(ctx)
                }
                _ => None,
            };
            // The counts lowering, and a hard-draw cell's table, run a batch of repetitions at
            // a time (the same estimates).
            let batched =
                (cell.path == Path::Counts && !faulty) || constant || hard_table.is_some();
            // The joint draws of repetition `r` of the block, as the generic path reads them.
            let joint_draws = |family: Family, r: usize| match family {
                Family::ScoreFunction => JointDraws {
                    s: su,
                    z: &joint_z[r * su * l..(r + 1) * su * l],
                    f: if cell.estimator.reads_draw_losses() {
                        &joint_f[r * f_stride + f_offset * su..][..su]
                    } else {
                        &[]
                    },
                    y: &[],
                    perturbed: &[],
                    noise: Noise {
                        key,
                        rep: block_start + r as u32,
                        point: point_id,
                    },
                },
                Family::Relaxed => relaxed_draws(r),
            };
            // A generic cell without a moving average (no state from one repetition to the
            // next): the block's estimates in parallel, in tasks of a fixed number of
            // repetitions, each estimate from its own repetition alone (so the same bits on
            // any number of threads), then pushed below in repetition order.
            let parallel = match cell.path {
                Path::Generic(family) if !faulty && !cell.estimator.keeps_moving_average() => {
                    Some(family)
                }
                _ => None,
            };
            if let Some(family) = parallel.filter(|_| !cell.shared) {
                let b = cell.baseline.value();
                let estimator = cell.estimator;
                let task = PARALLEL_REPS_TASK;
                cell.estimates.resize(nbu * dim, 0.0);
                cell.estimates[..nbu * dim]
                    .par_chunks_mut(dim * task)
                    .enumerate()
                    .for_each(|(t, chunk)| {
                        for (j, estimate) in chunk.chunks_exact_mut(dim).enumerate() {
                            let r = t * task + j;
                            let draws = joint_draws(family, r);
                            let draws = DrawSource::Joint(&draws);
                            let signal = estimate_one(estimator, ctx, draws, b, estimate);
                            assert!(
                                signal.is_none(),
                                "{} fed a moving average it says it does not keep",
                                estimator.id()
                            );
                        }
                    });
            }
            let push = |sums: &mut MomentSums, batch: &[f64], n: usize| {
                if constant {
                    sums.push_repeated(&ctx.grad[..dim], n, &ctx.grad);
                } else {
                    sums.push_batch(batch, n, &ctx.grad);
                }
            };
            if batched {
                let mut r0 = 0;
                while r0 < nbu {
                    // Up to the end of the batch and of the counts' tile.
                    let n = (nbu - r0)
                        .min(PUSH_BATCH - in_batch)
                        .min(COUNT_TASK - r0 % COUNT_TASK);
                    let tile = r0 / COUNT_TASK * COUNT_TASK * k + r0 % COUNT_TASK;
                    // Straight into the batch's columns in_batch..in_batch + n.
                    if let Some(table) = hard_table.as_deref() {
                        average_with_table_batch(
                            table,
                            k,
                            &counts_t[tile..],
                            COUNT_TASK,
                            n,
                            s,
                            &mut batch[in_batch..],
                        );
                    } else if !constant {
                        estimate_counts_batch(
                            cell.estimator,
                            ctx,
                            &counts_t[tile..],
                            COUNT_TASK,
                            n,
                            s,
                            &mut cell.baseline,
                            &mut batch[in_batch..],
                        );
                    }
                    in_batch += n;
                    if in_batch == PUSH_BATCH {
                        push(block_sums, batch, in_batch);
                        in_batch = 0;
                    }
                    r0 += n;
                }
            }
            for r in 0..if batched { 0 } else { nbu } {
                let estimate = &mut stage[staged * dim..(staged + 1) * dim];
                match cell.path {
                    // Computed above, in parallel: unstaged from there.
                    Path::Generic(_) if parallel.is_some() => {}
                    Path::Counts | Path::HardDrawCounts => {
                        let c = &counts[r * k..(r + 1) * k];
                        let b = cell.baseline.value();
                        let draws = DrawSource::Counts { counts: c, s };
                        if let Some(signal) = estimate_one(cell.estimator, ctx, draws, b, estimate)
                        {
                            cell.baseline.push(signal);
                        }
                    }
                    // Unstaged straight from the relaxed pass's sums (below).
                    Path::RelaxedSums if !faulty => {}
                    Path::RelaxedSums => {
                        // Element by element: K numbers, where a `memcpy` call costs more.
                        let off = r * sums_width + cell.path_index * k;
                        for (e, &v) in estimate.iter_mut().zip(&sums[off..off + k]) {
                            *e = v;
                        }
                    }
                    Path::JointCounts => {
                        let off = (r * nj + ji) * joint_len;
                        let view = JointCounts::view(ctx, su, &joint_sums[off..off + joint_len]);
                        let b = cell.baseline.value();
                        if let Some(signal) = estimate_one(
                            cell.estimator,
                            ctx,
                            DrawSource::JointCounts(&view),
                            b,
                            estimate,
                        ) {
                            cell.baseline.push(signal);
                        }
                    }
                    Path::Generic(family) => {
                        let draws = joint_draws(family, r);
                        let b = cell.baseline.value();
                        let draws = DrawSource::Joint(&draws);
                        if let Some(signal) = estimate_one(cell.estimator, ctx, draws, b, estimate)
                        {
                            cell.baseline.push(signal);
                        }
                    }
                }
                if faulty {
                    faults::distort(cell.estimator.id(), ctx.tau, &ctx.grad, estimate);
                }
                staged += 1;
                in_batch += 1;
                if staged == STAGE || in_batch == PUSH_BATCH || r + 1 == nbu {
                    // The staged repetitions r + 1 - staged ..= r, repetition-major either way.
                    let first = r + 1 - staged;
                    let (staged_estimates, stride) = if parallel.is_some() {
                        (&cell.estimates[first * dim..(r + 1) * dim], dim)
                    } else if cell.path == Path::RelaxedSums && !faulty {
                        // The relaxed pass's sums: repetition-major, `sums_width` apart.
                        (
                            &sums[first * sums_width + cell.path_index * k..],
                            sums_width,
                        )
                    } else {
                        (&stage[..], dim)
                    };
                    unstage(
                        staged_estimates,
                        stride,
                        staged,
                        dim,
                        &mut batch[in_batch - staged..],
                    );
                    staged = 0;
                }
                if in_batch == PUSH_BATCH {
                    block_sums.push_batch(batch, in_batch, &ctx.grad);
                    in_batch = 0;
                }
            }
            // The moment block ends at a multiple of REP_BLOCK repetitions or at the last.
            let done = block_start + nb;
            if done.is_multiple_of(REP_BLOCK) || done == spec.reps {
                if in_batch > 0 {
                    push(block_sums, batch, in_batch);
                    in_batch = 0;
                }
                if let Some(mut sums) = cell.sums.take() {
                    sums.flush_into(&mut cell.moments);
                }
            }
            cell.in_batch = in_batch;
            cell.shared = false;
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
                Path::Generic(Family::ScoreFunction) | Path::JointCounts => pass_seconds[2],
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

/// Whether `estimator`'s counts lowering gives the same estimate, the exact gradient, whatever
/// the counts (as [`estimate_counts_batch`] does for it).
fn ignores_counts(estimator: &dyn Estimator) -> bool {
    matches!(
        estimator.lowering(),
        Some(Lowering::ScoreFunction { signal: None, .. })
            | Some(Lowering::ScoreFunction {
                constant: Constant::ExactGradient,
                ..
            })
    )
}

/// Whether `estimator`'s joint-counts lowering gives the exact gradient whatever the sums (as
/// [`crate::estimators::estimate_from_joint_counts`] does for a constant `ExactGradient`).
fn joint_counts_constant(estimator: &dyn Estimator) -> bool {
    matches!(
        estimator.lowering(),
        Some(Lowering::ScoreFunction {
            constant: Constant::ExactGradient,
            ..
        })
    )
}

/// Repetitions whose estimates a cell stages before it writes them to its batch's columns.
const STAGE: usize = 8;

/// Repetitions per parallel task where a generic cell computes a block's estimates in
/// parallel (fixed, so that the tasks do not depend on the thread count).
const PARALLEL_REPS_TASK: usize = 4;

/// The cells (indices into `cells`) whose estimates a block computes together, one group per
/// estimator that shares its per-draw work across losses
/// ([`Estimator::shares_work_across_losses`]): its generic relaxed cells of two or more
/// losses, without a moving average or a warm-up of their own; none under fault injection.
fn shared_loss_groups(cells: &[CellState], faulty: bool) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    if faulty {
        return groups;
    }
    for (ci, cell) in cells.iter().enumerate() {
        let e = cell.estimator;
        if cell.path != Path::Generic(Family::Relaxed)
            || !e.shares_work_across_losses()
            || e.keeps_moving_average()
            || cell.warm_ctx.is_some()
        {
            continue;
        }
        match groups
            .iter_mut()
            .find(|g| cells[g[0]].estimator.id() == e.id())
        {
            Some(group) => group.push(ci),
            None => groups.push(vec![ci]),
        }
    }
    groups.retain(|g| g.len() > 1);
    groups
}

/// Writes the `staged` estimates of `stage` (repetition-major, `dim` each, repetition r's at
/// `r * stride`) to the first `staged` columns of `batch` (coordinate-major, rows of
/// [`PUSH_BATCH`]): a full stage through 4x4 transposes in AVX2 registers where the CPU has
/// them (the same numbers moved).
fn unstage(stage: &[f64], stride: usize, staged: usize, dim: usize, batch: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if staged == STAGE && crate::fastmath::has_avx2() {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { unstage_avx2(stage, stride, dim, batch) };
    }
    unstage_scalar(stage, stride, staged, dim, batch);
}

fn unstage_scalar(stage: &[f64], stride: usize, staged: usize, dim: usize, batch: &mut [f64]) {
    for j in 0..dim {
        let row = &mut batch[j * PUSH_BATCH..j * PUSH_BATCH + staged];
        for (r, v) in row.iter_mut().enumerate() {
            *v = stage[r * stride + j];
        }
    }
}

/// [`unstage`] of a full stage ([`STAGE`] = 8 repetitions), four coordinates at a time.
///
/// # Safety
/// AVX2 only.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn unstage_avx2(stage: &[f64], stride: usize, dim: usize, batch: &mut [f64]) {
    use std::arch::x86_64::*;
    const _: () = assert!(STAGE == 8);
    assert!(stride >= dim);
    let stage = &stage[..(STAGE - 1) * stride + dim];
    // Every row written below is `batch[j * PUSH_BATCH .. j * PUSH_BATCH + 8]`, j < dim.
    assert!(dim == 0 || batch.len() >= (dim - 1) * PUSH_BATCH + STAGE);
    let mut j = 0;
    while j + 4 <= dim {
        for half in 0..2 {
            // SAFETY: rows `4 half .. 4 half + 4` of the stage, coordinates `j .. j + 4`
            // (in bounds: `j + 4 <= dim`), and the batch rows checked above.
            unsafe {
                let row = |r: usize| stage.as_ptr().add((4 * half + r) * stride + j);
                let (a0, a1, a2, a3) = (
                    _mm256_loadu_pd(row(0)),
                    _mm256_loadu_pd(row(1)),
                    _mm256_loadu_pd(row(2)),
                    _mm256_loadu_pd(row(3)),
                );
                let (t0, t1) = (_mm256_unpacklo_pd(a0, a1), _mm256_unpackhi_pd(a0, a1));
                let (t2, t3) = (_mm256_unpacklo_pd(a2, a3), _mm256_unpackhi_pd(a2, a3));
                let cols = [
                    _mm256_permute2f128_pd::<0x20>(t0, t2),
                    _mm256_permute2f128_pd::<0x20>(t1, t3),
                    _mm256_permute2f128_pd::<0x31>(t0, t2),
                    _mm256_permute2f128_pd::<0x31>(t1, t3),
                ];
                let out = batch.as_mut_ptr().add(4 * half);
                for (c, v) in cols.into_iter().enumerate() {
                    _mm256_storeu_pd(out.add((j + c) * PUSH_BATCH), v);
                }
            }
        }
        j += 4;
    }
    for j in j..dim {
        let row = &mut batch[j * PUSH_BATCH..j * PUSH_BATCH + STAGE];
        for (r, v) in row.iter_mut().enumerate() {
            *v = stage[r * stride + j];
        }
    }
}

fn cpu_point(spec: &SweepSpec, point: usize, progress: &(dyn Fn(u64) + Sync)) -> PointMoments {
    cpu_point_cells(spec, point, &|_, _| true, progress)
}

/// One repetition of the relaxed-sums lowering: averages every listed (loss, relaxed
/// estimator)'s per-draw estimate over the S draws into `acc` (K numbers per cell, in order).
/// `moments` is the thread's scratch (cleared here), reused across repetitions.
#[allow(clippy::too_many_arguments)]
fn relaxed_repetition(
    table: &RelaxedTable,
    contexts: &[Context],
    cells: &[(usize, &'static dyn Estimator)],
    key: [u32; 2],
    rep: u32,
    point: u32,
    s: u32,
    moments: &mut RelaxedMoments,
    acc: &mut [f64],
) {
    let k = table.shifted_logits().len();
    relaxed_moments(table, key, rep, point, s, moments);
    for (i, &(li, est)) in cells.iter().enumerate() {
        let draws = DrawSource::RelaxedSums(moments);
        estimate_one(est, &contexts[li], draws, 0.0, &mut acc[i * k..(i + 1) * k]);
    }
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

#[cfg(test)]
mod stage_tests {
    use super::*;

    #[test]
    fn unstaged_estimates_land_in_their_batch_columns() {
        // Rows `dim` apart (a stage), and wider apart with `dim` of them read (the relaxed
        // pass's sums, one cell's K numbers of each repetition's row).
        for (dim, stride) in [1usize, 3, 4, 7, 60, 61]
            .into_iter()
            .flat_map(|d| [(d, d), (d, d + 5)])
        {
            for staged in 1..=STAGE {
                let stage: Vec<f64> = (0..STAGE * stride).map(|i| i as f64 + 0.5).collect();
                let mut got = vec![f64::NAN; dim * PUSH_BATCH];
                let mut scalar = got.clone();
                // At an odd column, as after a block that ended mid-stage.
                unstage(&stage, stride, staged, dim, &mut got[3..]);
                unstage_scalar(&stage, stride, staged, dim, &mut scalar[3..]);
                for j in 0..dim {
                    for c in 0..PUSH_BATCH {
                        let want = if (3..3 + staged).contains(&c) {
                            stage[(c - 3) * stride + j]
                        } else {
                            f64::NAN
                        };
                        let at = j * PUSH_BATCH + c;
                        assert_eq!(
                            got[at].to_bits(),
                            want.to_bits(),
                            "dim {dim} coord {j} col {c}"
                        );
                        assert_eq!(scalar[at].to_bits(), want.to_bits(), "scalar {dim} {j} {c}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod constant_tests {
    use super::*;

    /// `exact` on the joint-counts path is pushed as repeats of its one estimate: its moments
    /// must be, bit for bit, those of R copies of the exact gradient pushed a batch of
    /// [`PUSH_BATCH`] at a time (batches from multiples of it, moment blocks flushed at
    /// multiples of [`REP_BLOCK`] and at the end), as the per-repetition path pushes them;
    /// R past one moment block and not a multiple of a batch.
    #[test]
    fn joint_counts_exact_cells_are_pushed_as_repeats_bit_for_bit() {
        let mut spec = SweepSpec::family_workload(Family::ScoreFunction, 4, REP_BLOCK + 777);
        spec.problem = (crate::problems::by_name("indecater-6x10").unwrap().build)(0);
        spec.losses = vec![Loss::Pnorm];
        spec.estimators = vec![crate::estimators::by_id("exact").unwrap()];
        let ctx = &spec.contexts()[0];
        assert_eq!(path_of(spec.estimators[0], ctx), Path::JointCounts);
        let point = cpu_point(&spec, 0, &|_| {});
        let dim = spec.problem.dim();
        let mut want = EstimateMoments::new(dim);
        let mut batch = vec![0.0; dim * PUSH_BATCH];
        for (j, &g) in ctx.grad.iter().enumerate() {
            batch[j * PUSH_BATCH..(j + 1) * PUSH_BATCH].fill(g);
        }
        let reps = spec.reps as usize;
        for block in (0..reps).step_by(REP_BLOCK as usize) {
            let mut sums = MomentSums::new(&want);
            let end = reps.min(block + REP_BLOCK as usize);
            for first in (block..end).step_by(PUSH_BATCH) {
                sums.push_batch(&batch, (end - first).min(PUSH_BATCH), &ctx.grad);
            }
            sums.flush_into(&mut want);
        }
        let got = &point.cells[0].moments;
        assert_eq!(format!("{got:?}"), format!("{want:?}"));
    }
}

#[cfg(test)]
mod parallel_tests {
    use super::*;
    use crate::error::Result;
    use crate::estimators::ExactMoments;

    /// An estimator as another, except that it says it may keep a moving average: the
    /// generic path then runs its repetitions one after another (the reference).
    struct OneAfterAnother(&'static dyn Estimator);

    impl Estimator for OneAfterAnother {
        fn id(&self) -> &'static str {
            self.0.id()
        }
        fn family(&self) -> Family {
            self.0.family()
        }
        fn is_unbiased(&self) -> bool {
            self.0.is_unbiased()
        }
        fn min_samples(&self) -> u32 {
            self.0.min_samples()
        }
        fn reads_draw_losses(&self) -> bool {
            self.0.reads_draw_losses()
        }
        fn needs_extension(&self) -> bool {
            self.0.needs_extension()
        }
        fn check(&self, ctx: &Context) -> Result<()> {
            self.0.check(ctx)
        }
        fn loss_evaluations(&self, ctx: &Context, s: u32) -> f64 {
            self.0.loss_evaluations(ctx, s)
        }
        fn estimate(
            &self,
            ctx: &Context,
            draws: &JointDraws<'_>,
            baseline: f64,
            out: &mut [f64],
        ) -> Option<f64> {
            self.0.estimate(ctx, draws, baseline, out)
        }
        fn lowering(&self) -> Option<Lowering> {
            self.0.lowering()
        }
        fn keeps_moving_average(&self) -> bool {
            true
        }
        fn exact_moments(&self, ctx: &Context, s: u32) -> Option<ExactMoments> {
            self.0.exact_moments(ctx, s)
        }
    }

    /// The generic cells without a moving average (`st`, `reinmax`, `indecater` on
    /// `indecater-6x10`, `disarm` on `reinmax-poly`) compute a block's repetitions in
    /// parallel: their moments must be, bit for bit, those of the repetitions one after
    /// another, on one thread and on three; R spans two draw blocks and ends mid-task.
    #[test]
    fn parallel_repetitions_give_the_bits_of_one_after_another() {
        for (problem, ids) in [
            ("indecater-6x10", &["st", "reinmax", "indecater"][..]),
            ("reinmax-poly", &["disarm"][..]),
        ] {
            let mut spec = SweepSpec::family_workload(Family::ScoreFunction, 4, 4096 + 1003);
            spec.problem = (crate::problems::by_name(problem).unwrap().build)(0);
            spec.losses = vec![Loss::Pnorm];
            let fast: Vec<&'static dyn Estimator> = ids
                .iter()
                .map(|id| crate::estimators::by_id(id).unwrap())
                .collect();
            let ctx = &spec.contexts()[0];
            for &e in &fast {
                assert!(!e.keeps_moving_average(), "{}", e.id());
                assert!(matches!(path_of(e, ctx), Path::Generic(_)), "{}", e.id());
            }
            spec.estimators = fast
                .iter()
                .map(|&e| &*Box::leak(Box::new(OneAfterAnother(e))) as &'static dyn Estimator)
                .collect();
            let want = CpuEngine::new(2)
                .unwrap()
                .install(|| cpu_point(&spec, 0, &|_| {}));
            spec.estimators = fast;
            for threads in [1, 3] {
                let got = CpuEngine::new(threads)
                    .unwrap()
                    .install(|| cpu_point(&spec, 0, &|_| {}));
                for (g, w) in got.cells.iter().zip(&want.cells) {
                    assert_eq!(g.estimator.id(), w.estimator.id());
                    assert_eq!(
                        format!("{:?}", g.moments),
                        format!("{:?}", w.moments),
                        "{} on {threads} threads",
                        g.estimator.id()
                    );
                }
            }
        }
    }
}
