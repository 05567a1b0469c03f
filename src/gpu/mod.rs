//! The GPU engine: the Monte Carlo sweep of [`crate::engine`] on any wgpu adapter, with the
//! same draws as the CPU engine (the same Philox counters and the same integer inverse-CDF
//! thresholds, so the same categories) and moments that agree with the CPU engine's to f32
//! rounding of each estimate.
//!
//! One [`GpuContext`] (instance, adapter, device, queue) is made per engine; pipelines are
//! built once and buffers grow once to the largest chunk, then are reused across the sweep.
//! Per sweep point and family, every chunk of repetitions ([`chunks`]) is one submit: the
//! draws kernel, the moments kernel and a copy of the small per-workgroup partial moments,
//! which the host merges in f64 ([`moments`]). Several variables and the other losses run
//! on the generic path ([`generic`]): joint draws, per-draw signals and per-repetition sums
//! on the GPU, each cell's estimate finished on the host in repetition order. Kernel sources
//! live in `shaders/`, one file per kernel; each launch is a small function in
//! [`score_function`], [`relaxed`], [`generic`] or [`forward`] beside its CPU twin's name.
//!
//! The engine plans per cell from the estimator's [`crate::estimators::Lowering`] and the
//! context ([`Engine::fallback_reason`]): a cell with no GPU form (the relaxed family on the
//! generic path, an estimator with no lowering, the relaxed or hard-draw lowering past the
//! one-variable kernels' K, a repetition too large for one buffer, an `unordered-set` cell
//! past [`unordered_set`]'s range) runs on the CPU engine in
//! the same sweep, and [`fallback_notes`] says so. A score-function cell with one variable
//! and K past those kernels runs on the generic kernels, which serve any K; a hard-draw cell
//! (`st`, `reinmax`) with one variable reads the score-function pass's category counts.

pub mod chunks;
pub mod context;
pub mod forward;
pub mod generic;
mod mesa;
pub mod moments;
pub mod params;
pub mod philox_kernel;
pub mod profile;
pub mod relaxed;
pub mod score_function;
pub mod shaders;
pub mod train_draws;
pub mod train_step;
pub mod unordered_set;

use std::sync::Mutex;
use std::time::Instant;

pub use chunks::{ChunkLimits, ChunkPlan};
pub use context::{adapter_list, AdapterSummary, GpuContext, GpuPreference};
pub use forward::Forward;
pub use mesa::quiet_mesa;
pub use moments::MomentsReduction;
pub use philox_kernel::PhiloxMultiply;
pub use profile::KernelTime;
pub use relaxed::RelaxedDrawLoops;

use crate::draws::RelaxedTable;
use crate::engine::{path_of, BackendInfo, Cell, Engine, Path, PointMoments, SweepSpec};
use crate::error::{Error, Result};
use crate::estimators::{
    warmed_counts_baselines, Baseline, Context, Estimator, Family, MovingAverage,
};
use crate::philox::key_of;
use crate::stats::EstimateMoments;
use chunks::{threads_per_rep, REP_ALIGN};
use params::{
    PartialMoments, PointTable, RelaxedCell, ScoreCell, SweepParams, MAX_K, MAX_RELAXED_CELLS,
};
use relaxed::{RelaxedKernels, RELAXED_WG};
use score_function::ScoreFunctionKernels;

/// The GPU engine.
pub struct GpuEngine {
    ctx: GpuContext,
    score: ScoreFunctionKernels,
    relaxed: RelaxedKernels,
    generic: generic::GenericKernels,
    reduction: MomentsReduction,
    limits: ChunkLimits,
    resources: Mutex<Option<Resources>>,
}

/// The buffers of the sweep, sized for the largest chunk seen so far.
struct Resources {
    chunk_reps: u32,
    score_cells: usize,
    partial_len: usize,
    params: wgpu::Buffer,
    table: wgpu::Buffer,
    score_cells_buf: wgpu::Buffer,
    relaxed_cells_buf: wgpu::Buffer,
    counts: wgpu::Buffer,
    counts_history: wgpu::Buffer,
    sums: wgpu::Buffer,
    partials: wgpu::Buffer,
    staging: wgpu::Buffer,
    counts_group: wgpu::BindGroup,
    score_moments_group: wgpu::BindGroup,
    relaxed_draws_group: wgpu::BindGroup,
    relaxed_moments_group: wgpu::BindGroup,
}

/// Bytes of one repetition's counts or one relaxed cell's sums (16 numbers).
const ROW_BYTES: u64 = 4 * MAX_K as u64;

impl Resources {
    fn new(engine: &GpuEngine, chunk_reps: u32, score_cells: usize) -> Self {
        let ctx = &engine.ctx;
        use wgpu::BufferUsages as U;
        let groups = chunk_reps.div_ceil(REP_ALIGN) as usize;
        let partial_len = groups * score_cells.max(MAX_RELAXED_CELLS) * (MAX_K + 2);
        let partial_bytes = (partial_len * std::mem::size_of::<PartialMoments>()) as u64;
        let params = ctx.buffer(
            "params",
            std::mem::size_of::<SweepParams>() as u64,
            U::UNIFORM | U::COPY_DST,
        );
        let table = ctx.buffer(
            "point table",
            std::mem::size_of::<PointTable>() as u64,
            U::STORAGE | U::COPY_DST,
        );
        let score_cells_buf = ctx.buffer(
            "score cells",
            (score_cells.max(1) * std::mem::size_of::<ScoreCell>()) as u64,
            U::STORAGE | U::COPY_DST,
        );
        let relaxed_cells_buf = ctx.buffer(
            "relaxed cells",
            (MAX_RELAXED_CELLS * std::mem::size_of::<RelaxedCell>()) as u64,
            U::STORAGE | U::COPY_DST,
        );
        let counts = ctx.buffer(
            "counts",
            u64::from(chunk_reps) * ROW_BYTES,
            U::STORAGE | U::COPY_SRC | U::COPY_DST,
        );
        let counts_history = ctx.buffer(
            "counts history",
            u64::from(REP_ALIGN) * ROW_BYTES,
            U::STORAGE | U::COPY_DST,
        );
        let sums = ctx.buffer(
            "relaxed sums",
            u64::from(chunk_reps) * MAX_RELAXED_CELLS as u64 * ROW_BYTES,
            U::STORAGE | U::COPY_SRC | U::COPY_DST,
        );
        let partials = ctx.buffer("partial moments", partial_bytes, U::STORAGE | U::COPY_SRC);
        let staging = ctx.buffer(
            "partial moments readback",
            partial_bytes,
            U::MAP_READ | U::COPY_DST,
        );
        let counts_group = ctx.bind_group(
            "score-function counts",
            &engine.score.counts_layout,
            &[&params, &table, &counts],
        );
        let score_moments_group = ctx.bind_group(
            "score-function moments",
            &engine.score.moments_layout,
            &[
                &params,
                &table,
                &score_cells_buf,
                &counts,
                &counts_history,
                &partials,
            ],
        );
        let relaxed_draws_group = ctx.bind_group(
            "relaxed draws",
            &engine.relaxed.draws_layout,
            &[&params, &table, &relaxed_cells_buf, &sums],
        );
        let relaxed_moments_group = ctx.bind_group(
            "relaxed moments",
            &engine.relaxed.moments_layout,
            &[&params, &relaxed_cells_buf, &sums, &partials],
        );
        Self {
            chunk_reps,
            score_cells,
            partial_len,
            params,
            table,
            score_cells_buf,
            relaxed_cells_buf,
            counts,
            counts_history,
            sums,
            partials,
            staging,
            counts_group,
            score_moments_group,
            relaxed_draws_group,
            relaxed_moments_group,
        }
    }
}

/// What every chunk of one sweep point shares.
struct PointJob {
    params: SweepParams,
    reps: u32,
}

impl GpuEngine {
    /// An engine on the adapter `preference` picks, with the default chunking.
    ///
    /// # Errors
    /// [`Error::GpuUnavailable`] when no adapter fits; [`Error::Gpu`] if a kernel does not
    /// build on it.
    pub fn new(preference: &GpuPreference) -> Result<Self> {
        Self::with_context(GpuContext::new(preference)?)
    }

    /// An engine on an existing context.
    ///
    /// # Errors
    /// [`Error::Gpu`] if a kernel does not build on the context's adapter.
    pub fn with_context(ctx: GpuContext) -> Result<Self> {
        let reduction = MomentsReduction::for_adapter(ctx.features, &ctx.info);
        let score = ScoreFunctionKernels::new(&ctx, reduction)?;
        let relaxed = RelaxedKernels::new(&ctx, RelaxedDrawLoops::from_env(), reduction)?;
        let generic = generic::GenericKernels::new(&ctx)?;
        Ok(Self {
            ctx,
            score,
            relaxed,
            generic,
            reduction,
            limits: ChunkLimits::from_env(),
            resources: Mutex::new(None),
        })
    }

    /// The same engine with `threads` threads per counts workgroup (the GPU bench sweeps it
    /// to choose the size per adapter).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a size that is not a power of two within the adapter's
    /// limit; [`Error::Gpu`] if the kernel does not build.
    pub fn with_counts_workgroup(mut self, threads: u32) -> Result<Self> {
        self.score = ScoreFunctionKernels::with_workgroup(&self.ctx, threads, self.reduction)?;
        self.resources = Mutex::new(None);
        Ok(self)
    }

    /// The same engine with the moments kernels reduced by `reduction` (the GPU bench and
    /// the tests run both on adapters that have subgroups).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a subgroup reduction this adapter cannot run
    /// ([`MomentsReduction::subgroup`] says which it can); [`Error::Gpu`] if a kernel does
    /// not build.
    pub fn with_moments_reduction(mut self, reduction: MomentsReduction) -> Result<Self> {
        if let MomentsReduction::Subgroup(_) = reduction {
            if MomentsReduction::subgroup(self.ctx.features, &self.ctx.info) != Some(reduction) {
                return Err(Error::InvalidArgument(format!(
                    "{reduction:?} moments reduction: {} has no subgroup operations of that one size",
                    self.ctx.info.name
                )));
            }
        }
        self.score =
            ScoreFunctionKernels::with_workgroup(&self.ctx, self.score.counts_wg, reduction)?;
        self.relaxed = RelaxedKernels::new(&self.ctx, self.relaxed.loops, reduction)?;
        self.reduction = reduction;
        self.resources = Mutex::new(None);
        Ok(self)
    }

    /// The same engine with the relaxed draws kernel's loops bounded as `loops` says (the GPU
    /// bench and the tests run both).
    ///
    /// # Errors
    /// [`Error::Gpu`] if a kernel does not build.
    pub fn with_relaxed_draw_loops(mut self, loops: RelaxedDrawLoops) -> Result<Self> {
        self.relaxed = RelaxedKernels::new(&self.ctx, loops, self.reduction)?;
        self.resources = Mutex::new(None);
        Ok(self)
    }

    /// How the relaxed draws kernel's loops are bounded.
    pub fn relaxed_draw_loops(&self) -> RelaxedDrawLoops {
        self.relaxed.loops
    }

    /// How the moments kernels reduce a workgroup.
    pub fn moments_reduction(&self) -> MomentsReduction {
        self.reduction
    }

    /// Threads per counts workgroup.
    pub fn counts_workgroup(&self) -> u32 {
        self.score.counts_wg
    }

    /// The same engine with other chunk limits (tests use small ones to force chunking).
    pub fn with_limits(mut self, limits: ChunkLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The chunk limits.
    pub fn limits(&self) -> ChunkLimits {
        self.limits
    }

    /// The context (device, queue, adapter).
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Most repetitions per chunk that the dispatch and binding limits allow at S draws.
    fn cap_reps(&self, samples: u32, score_cells: usize) -> u32 {
        let l = &self.ctx.limits;
        let max_groups = u64::from(l.max_compute_workgroups_per_dimension);
        let t_score = threads_per_rep(
            u64::from(samples).div_ceil(4),
            score_function::DRAWS_PER_THREAD / 4,
            self.score.counts_wg,
        );
        let t_relaxed = threads_per_rep(u64::from(samples), relaxed::DRAWS_PER_THREAD, RELAXED_WG);
        let binding = l.max_storage_buffer_binding_size.min(l.max_buffer_size);
        let by_sums = binding / (MAX_RELAXED_CELLS as u64 * ROW_BYTES);
        let per_group_partials = (score_cells.max(MAX_RELAXED_CELLS) * (MAX_K + 2) * 20) as u64;
        let by_partials = binding / per_group_partials * u64::from(REP_ALIGN);
        let caps = [
            max_groups * u64::from(self.score.counts_wg) / u64::from(t_score),
            max_groups * u64::from(RELAXED_WG) / u64::from(t_relaxed),
            max_groups * u64::from(REP_ALIGN),
            by_sums,
            by_partials,
        ];
        caps.into_iter().min().unwrap_or(0).min(u64::from(u32::MAX)) as u32
    }

    /// Runs the score-function pass of one point: all `cells` (loss-major) over every chunk.
    #[allow(clippy::too_many_arguments)]
    fn score_function_pass(
        &self,
        res: &Resources,
        job: &PointJob,
        plan: ChunkPlan,
        cells: &[ScoreCell],
        grads: &[&[f64]],
        moments: &mut [&mut EstimateMoments],
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<()> {
        let samples = job.params.samples;
        let threads = threads_per_rep(
            u64::from(samples).div_ceil(4),
            score_function::DRAWS_PER_THREAD / 4,
            self.score.counts_wg,
        );
        self.ctx
            .queue
            .write_buffer(&res.score_cells_buf, 0, bytemuck::cast_slice(cells));
        for (rep_begin, reps) in plan.rep_chunks(job.reps) {
            let mut ranges = plan.draw_ranges(samples).peekable();
            let mut first = true;
            while let Some((draw_begin, draw_end)) = ranges.next() {
                let params = SweepParams {
                    rep_begin,
                    chunk_reps: reps,
                    draw_begin,
                    draw_end,
                    threads_per_rep: threads,
                    n_cells: cells.len() as u32,
                    ..job.params
                };
                self.ctx
                    .queue
                    .write_buffer(&res.params, 0, bytemuck::bytes_of(&params));
                let mut encoder =
                    self.ctx
                        .device
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                            label: Some("score-function chunk"),
                        });
                if first {
                    encoder.clear_buffer(&res.counts, 0, Some(u64::from(reps) * ROW_BYTES));
                    first = false;
                }
                self.score.encode_counts(
                    &mut encoder,
                    self.ctx.timestamps("score-function counts"),
                    &res.counts_group,
                    reps,
                    threads,
                );
                let last = ranges.peek().is_none();
                if last {
                    self.score.encode_moments(
                        &mut encoder,
                        self.ctx.timestamps("score-function moments"),
                        &res.score_moments_group,
                        reps,
                    );
                    if reps >= REP_ALIGN {
                        let offset = u64::from(reps - REP_ALIGN) * ROW_BYTES;
                        encoder.copy_buffer_to_buffer(
                            &res.counts,
                            offset,
                            &res.counts_history,
                            0,
                            u64::from(REP_ALIGN) * ROW_BYTES,
                        );
                    }
                    copy_partials(&mut encoder, res, reps, cells.len());
                }
                self.ctx.resolve_timestamps(&mut encoder);
                self.ctx.queue.submit([encoder.finish()]);
                self.finish_chunk(
                    res,
                    last,
                    reps,
                    cells.len(),
                    "score-function",
                    grads,
                    moments,
                )?;
                self.ctx.collect_timestamps()?;
                progress(u64::from(reps) * u64::from(draw_end - draw_begin));
            }
        }
        Ok(())
    }

    /// Runs the relaxed pass of one point for up to [`MAX_RELAXED_CELLS`] cells.
    #[allow(clippy::too_many_arguments)]
    fn relaxed_pass(
        &self,
        res: &Resources,
        job: &PointJob,
        plan: ChunkPlan,
        cells: &[RelaxedCell],
        grads: &[&[f64]],
        moments: &mut [&mut EstimateMoments],
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<()> {
        let samples = job.params.samples;
        let threads = threads_per_rep(u64::from(samples), relaxed::DRAWS_PER_THREAD, RELAXED_WG);
        self.ctx
            .queue
            .write_buffer(&res.relaxed_cells_buf, 0, bytemuck::cast_slice(cells));
        for (rep_begin, reps) in plan.rep_chunks(job.reps) {
            let mut ranges = plan.draw_ranges(samples).peekable();
            let mut first = true;
            while let Some((draw_begin, draw_end)) = ranges.next() {
                let params = SweepParams {
                    rep_begin,
                    chunk_reps: reps,
                    draw_begin,
                    draw_end,
                    threads_per_rep: threads,
                    n_cells: cells.len() as u32,
                    ..job.params
                };
                self.ctx
                    .queue
                    .write_buffer(&res.params, 0, bytemuck::bytes_of(&params));
                let mut encoder =
                    self.ctx
                        .device
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                            label: Some("relaxed chunk"),
                        });
                if first {
                    encoder.clear_buffer(
                        &res.sums,
                        0,
                        Some(u64::from(reps) * cells.len() as u64 * ROW_BYTES),
                    );
                    first = false;
                }
                self.relaxed.encode_draws(
                    &mut encoder,
                    self.ctx.timestamps("relaxed draws"),
                    &res.relaxed_draws_group,
                    reps,
                    threads,
                );
                let last = ranges.peek().is_none();
                if last {
                    self.relaxed.encode_moments(
                        &mut encoder,
                        self.ctx.timestamps("relaxed moments"),
                        &res.relaxed_moments_group,
                        reps,
                    );
                    copy_partials(&mut encoder, res, reps, cells.len());
                }
                self.ctx.resolve_timestamps(&mut encoder);
                self.ctx.queue.submit([encoder.finish()]);
                self.finish_chunk(res, last, reps, cells.len(), "relaxed", grads, moments)?;
                self.ctx.collect_timestamps()?;
                progress(u64::from(reps) * u64::from(draw_end - draw_begin));
            }
        }
        Ok(())
    }
}

/// Records the copy of a chunk's partial moments (`cells` cells of `reps` repetitions) into
/// the staging buffer.
fn copy_partials(encoder: &mut wgpu::CommandEncoder, res: &Resources, reps: u32, cells: usize) {
    let bytes = (partial_len(reps, cells) * std::mem::size_of::<PartialMoments>()) as u64;
    encoder.copy_buffer_to_buffer(&res.partials, 0, &res.staging, 0, bytes);
}

impl GpuEngine {
    /// After a submitted draw range of a chunk: on the chunk's last range, reads its partial
    /// moments back and merges them in f64 into `moments`; otherwise checks the device.
    #[allow(clippy::too_many_arguments)]
    fn finish_chunk(
        &self,
        res: &Resources,
        last: bool,
        reps: u32,
        cells: usize,
        pass: &str,
        grads: &[&[f64]],
        moments: &mut [&mut EstimateMoments],
    ) -> Result<()> {
        if !last {
            return self.ctx.check(&format!("running {pass} draws"));
        }
        let len = partial_len(reps, cells);
        let partials: Vec<PartialMoments> =
            self.ctx
                .read(&res.staging, len, &format!("reading {pass} moments"))?;
        moments::merge_partials(&partials, reps.div_ceil(REP_ALIGN) as usize, grads, moments);
        Ok(())
    }
}

fn partial_len(reps: u32, cells: usize) -> usize {
    reps.div_ceil(REP_ALIGN) as usize * cells * (MAX_K + 2)
}

impl Engine for GpuEngine {
    fn fallback_reason(
        &self,
        estimator: &dyn Estimator,
        ctx: &Context,
        samples: u32,
    ) -> Option<String> {
        match path_of(estimator, ctx) {
            // Past the one-variable kernels' K, the generic kernels (any K) take the cell.
            Path::Counts if ctx.k > MAX_K => {
                generic::unsupported(estimator, ctx, samples, &self.ctx.limits)
            }
            Path::RelaxedSums | Path::HardDrawCounts if ctx.k > MAX_K => Some(format!(
                "the one-variable kernels serve K <= {MAX_K}, this problem has K = {}",
                ctx.k
            )),
            Path::Counts | Path::RelaxedSums | Path::HardDrawCounts => None,
            Path::JointCounts | Path::Generic(Family::ScoreFunction) => {
                generic::unsupported(estimator, ctx, samples, &self.ctx.limits)
            }
            Path::Generic(Family::Relaxed) => {
                Some("no GPU kernel for the relaxed family on the generic path".into())
            }
        }
    }

    /// The adapter, and as `threads` those of the CPU engine that runs the cells with no GPU
    /// form (rayon's global pool, as [`crate::engine::cpu_point_cells`] uses).
    fn backend_info(&self) -> BackendInfo {
        BackendInfo {
            threads: rayon::current_num_threads(),
            ..self.ctx.backend_info()
        }
    }

    fn run_point(
        &self,
        spec: &SweepSpec,
        point: usize,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<PointMoments> {
        let samples = spec.samples[point];
        let k = spec.problem.k;
        let logits = spec.problem.logits();
        let contexts = spec.contexts();
        let estimators = spec.estimators_at(samples);

        // The cells that run on a GPU kernel, per path, loss-major, with their moments; the
        // rest run on the CPU engine (`fallback_reason` says why).
        let mut score_cells = Vec::new();
        let mut score_grads = Vec::new();
        let mut score_keys = Vec::new();
        let mut relaxed_cells = Vec::new();
        let mut relaxed_grads = Vec::new();
        let mut relaxed_keys = Vec::new();
        let mut generic_cells: Vec<(usize, &'static dyn Estimator)> = Vec::new();
        let mut generic_keys = Vec::new();
        let mut counts_cells = Vec::new();
        for (li, ctx) in contexts.iter().enumerate() {
            for &e in &estimators {
                if !self.lowers(e, ctx, samples) {
                    continue;
                }
                match path_of(e, ctx) {
                    Path::Counts if ctx.k <= MAX_K => {
                        // Its warmed-up baseline comes below, with the other cells'.
                        counts_cells.push((score_cells.len(), e, ctx));
                        let cold = MovingAverage::default();
                        score_cells.push(params::score_cell(e, ctx, samples, &cold)?);
                        score_grads.push(ctx.grad.as_slice());
                        score_keys.push((li, e.id()));
                    }
                    Path::HardDrawCounts => {
                        score_cells.push(params::hard_draw_cell(e, ctx, samples)?);
                        score_grads.push(ctx.grad.as_slice());
                        score_keys.push((li, e.id()));
                    }
                    Path::RelaxedSums => {
                        relaxed_cells.push(params::relaxed_cell(e, ctx)?);
                        relaxed_grads.push(ctx.grad.as_slice());
                        relaxed_keys.push((li, e.id()));
                    }
                    Path::Counts | Path::JointCounts | Path::Generic(_) => {
                        generic_cells.push((li, e));
                        generic_keys.push((li, e.id()));
                    }
                }
            }
        }
        // Moving-average baselines enter the measurement warmed up, as on the CPU engine; the
        // warm-up's draws are made once for all cells.
        let warm_cells: Vec<(&dyn Estimator, &Context)> = counts_cells
            .iter()
            .map(|&(_, e, ctx)| (e as &dyn Estimator, ctx))
            .collect();
        let warm = warmed_counts_baselines(
            &warm_cells,
            key_of(spec.seed),
            point as u32,
            samples,
            spec.reps,
        );
        for (&(index, e, ctx), warm) in counts_cells.iter().zip(&warm) {
            score_cells[index] = params::score_cell(e, ctx, samples, warm)?;
        }
        let on_gpu = score_cells.len() + relaxed_cells.len() + generic_cells.len();
        let fallback = (on_gpu < contexts.len() * estimators.len()).then(|| {
            crate::engine::cpu_point_cells(
                spec,
                point,
                &|ctx, e| !self.lowers(e, ctx, samples),
                progress,
            )
        });
        let mut score_moments = vec![EstimateMoments::new(k); score_cells.len()];
        let mut relaxed_moments = vec![EstimateMoments::new(k); relaxed_cells.len()];

        let mut score_seconds = 0.0;
        let mut relaxed_seconds = 0.0;
        if !score_cells.is_empty() || !relaxed_cells.is_empty() {
            let plan = ChunkPlan::new(
                samples,
                self.limits,
                self.cap_reps(samples, score_cells.len()),
            );
            let guard = self.resources_for(plan.chunk_reps, score_cells.len());
            let res = guard.as_ref().expect("resources were just made");
            debug_assert!(
                res.partial_len
                    >= partial_len(plan.chunk_reps, score_cells.len().max(MAX_RELAXED_CELLS))
            );

            let table = PointTable::new(
                &contexts[0].p,
                &RelaxedTable::new(&logits, spec.tau),
                samples,
            );
            self.ctx
                .queue
                .write_buffer(&res.table, 0, bytemuck::bytes_of(&table));
            let job = PointJob {
                params: SweepParams {
                    key: key_of(spec.seed),
                    point: point as u32,
                    samples,
                    k: k as u32,
                    inv_tau: (1.0 / spec.tau) as f32,
                    samples_f: samples as f32,
                    ..Default::default()
                },
                reps: spec.reps,
            };

            if !score_cells.is_empty() {
                let t0 = Instant::now();
                let mut refs: Vec<&mut EstimateMoments> = score_moments.iter_mut().collect();
                self.score_function_pass(
                    res,
                    &job,
                    plan,
                    &score_cells,
                    &score_grads,
                    &mut refs,
                    progress,
                )?;
                score_seconds = t0.elapsed().as_secs_f64();
            }
            if !relaxed_cells.is_empty() {
                let t0 = Instant::now();
                let mut refs: Vec<&mut EstimateMoments> = relaxed_moments.iter_mut().collect();
                for ((cells, grads), moments) in relaxed_cells
                    .chunks(MAX_RELAXED_CELLS)
                    .zip(relaxed_grads.chunks(MAX_RELAXED_CELLS))
                    .zip(refs.chunks_mut(MAX_RELAXED_CELLS))
                {
                    self.relaxed_pass(res, &job, plan, cells, grads, moments, progress)?;
                }
                relaxed_seconds = t0.elapsed().as_secs_f64();
            }
        }
        let mut generic_seconds = 0.0;
        let mut generic_moments = Vec::new();
        if !generic_cells.is_empty() {
            let t0 = Instant::now();
            generic_moments =
                self.generic_moments(spec, point, &contexts, &generic_cells, progress)?;
            generic_seconds = t0.elapsed().as_secs_f64();
        }

        // Cells in the CPU engine's order: losses, then the estimators at this S.
        let mut gpu_cells: Vec<Option<(EstimateMoments, f64)>> = score_moments
            .into_iter()
            .map(|m| Some((m, score_seconds)))
            .chain(
                relaxed_moments
                    .into_iter()
                    .map(|m| Some((m, relaxed_seconds))),
            )
            .chain(
                generic_moments
                    .into_iter()
                    .map(|m| Some((m, generic_seconds))),
            )
            .collect();
        let keys: Vec<(usize, &str)> = score_keys
            .into_iter()
            .chain(relaxed_keys)
            .chain(generic_keys)
            .collect();
        let mut cpu_cells = fallback.map(|p| p.cells.into_iter()).into_iter().flatten();
        let mut cells = Vec::new();
        for (li, &loss) in spec.losses.iter().enumerate() {
            for &estimator in &estimators {
                match keys.iter().position(|&key| key == (li, estimator.id())) {
                    Some(i) => {
                        let (moments, seconds) = gpu_cells[i].take().ok_or_else(|| {
                            Error::Gpu(format!("no moments for {}", estimator.id()))
                        })?;
                        cells.push(Cell {
                            loss,
                            estimator,
                            moments,
                            seconds,
                            warm_up: None,
                        });
                    }
                    None => cells.push(cpu_cells.next().ok_or_else(|| {
                        Error::Gpu(format!("no CPU moments for {}", estimator.id()))
                    })?),
                }
            }
        }
        Ok(PointMoments { samples, cells })
    }
}

impl GpuEngine {
    fn resources_for(
        &self,
        chunk_reps: u32,
        score_cells: usize,
    ) -> std::sync::MutexGuard<'_, Option<Resources>> {
        let mut guard = self.resources.lock().unwrap_or_else(|e| e.into_inner());
        let fits = guard
            .as_ref()
            .is_some_and(|r| r.chunk_reps >= chunk_reps && r.score_cells >= score_cells);
        if !fits {
            let (reps, cells) = guard
                .as_ref()
                .map_or((0, 0), |r| (r.chunk_reps, r.score_cells));
            *guard = Some(Resources::new(
                self,
                reps.max(chunk_reps),
                cells.max(score_cells),
            ));
        }
        guard
    }

    /// The category counts (K per repetition) of repetitions `rep_begin..rep_begin + reps`
    /// at sweep point `point`, S = `samples`, by the counts kernel alone, split into draw
    /// ranges as the engine's limits say. The GPU twin of [`crate::draws::count_categories`],
    /// for tests.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for K > 16 or more repetitions than one chunk holds;
    /// [`Error::Gpu`] if the device fails.
    pub fn category_counts(
        &self,
        p: &[f64],
        key: [u32; 2],
        point: u32,
        samples: u32,
        rep_begin: u32,
        reps: u32,
    ) -> Result<Vec<u32>> {
        let k = p.len();
        let plan = ChunkPlan::new(samples, self.limits, self.cap_reps(samples, 1));
        if k > MAX_K || reps > plan.chunk_reps || reps == 0 {
            return Err(Error::InvalidArgument(format!(
                "category_counts: K = {k}, {reps} repetitions"
            )));
        }
        let guard = self.resources_for(plan.chunk_reps, 1);
        let res = guard.as_ref().expect("resources were just made");
        let table = PointTable::new(p, &RelaxedTable::new(&vec![0.0; k], 1.0), samples);
        self.ctx
            .queue
            .write_buffer(&res.table, 0, bytemuck::bytes_of(&table));
        let threads = threads_per_rep(
            u64::from(samples).div_ceil(4),
            score_function::DRAWS_PER_THREAD / 4,
            self.score.counts_wg,
        );
        let bytes = u64::from(reps) * ROW_BYTES;
        let staging = self.ctx.buffer(
            "counts readback",
            bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
        let mut ranges = plan.draw_ranges(samples).peekable();
        let mut first = true;
        while let Some((draw_begin, draw_end)) = ranges.next() {
            let params = SweepParams {
                key,
                point,
                samples,
                rep_begin,
                chunk_reps: reps,
                draw_begin,
                draw_end,
                k: k as u32,
                threads_per_rep: threads,
                samples_f: samples as f32,
                ..Default::default()
            };
            self.ctx
                .queue
                .write_buffer(&res.params, 0, bytemuck::bytes_of(&params));
            let mut encoder =
                self.ctx
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("counts"),
                    });
            if first {
                encoder.clear_buffer(&res.counts, 0, Some(bytes));
                first = false;
            }
            self.score
                .encode_counts(&mut encoder, None, &res.counts_group, reps, threads);
            if ranges.peek().is_none() {
                encoder.copy_buffer_to_buffer(&res.counts, 0, &staging, 0, bytes);
            }
            self.ctx.queue.submit([encoder.finish()]);
        }
        let rows: Vec<u32> =
            self.ctx
                .read(&staging, reps as usize * MAX_K, "reading category counts")?;
        Ok(rows
            .chunks_exact(MAX_K)
            .flat_map(|r| r[..k].to_vec())
            .collect())
    }

    /// Every relaxed cell's S-draw estimate (sum over the draws / S, K numbers, cells
    /// loss-major as in the sweep) for repetitions `rep_begin..rep_begin + reps` of sweep
    /// point `point` of `spec`, by the relaxed draws kernel alone. The GPU twin of the CPU
    /// engine's per-repetition relaxed estimates, for tests.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for K > 16, more than 6 relaxed cells, or more repetitions
    /// than one chunk holds; [`Error::Gpu`] if the device fails.
    pub fn relaxed_estimates(
        &self,
        spec: &SweepSpec,
        point: usize,
        rep_begin: u32,
        reps: u32,
    ) -> Result<Vec<f64>> {
        let samples = spec.samples[point];
        let k = spec.problem.k;
        let logits = spec.problem.logits();
        let mut cells = Vec::new();
        for &loss in &spec.losses {
            let ctx = Context::new(&spec.problem, loss, spec.tau);
            for e in spec
                .estimators
                .iter()
                .filter(|e| e.family() == Family::Relaxed)
            {
                cells.push(params::relaxed_cell(*e, &ctx)?);
            }
        }
        let plan = ChunkPlan::new(samples, self.limits, self.cap_reps(samples, 1));
        if k > MAX_K
            || cells.is_empty()
            || cells.len() > MAX_RELAXED_CELLS
            || reps > plan.chunk_reps
            || reps == 0
        {
            return Err(Error::InvalidArgument(format!(
                "relaxed_estimates: K = {k}, {} cells, {reps} repetitions",
                cells.len()
            )));
        }
        let guard = self.resources_for(plan.chunk_reps, 1);
        let res = guard.as_ref().expect("resources were just made");
        let p = crate::problem::softmax(&logits);
        let table = PointTable::new(&p, &RelaxedTable::new(&logits, spec.tau), samples);
        self.ctx
            .queue
            .write_buffer(&res.table, 0, bytemuck::bytes_of(&table));
        self.ctx
            .queue
            .write_buffer(&res.relaxed_cells_buf, 0, bytemuck::cast_slice(&cells));
        let threads = threads_per_rep(u64::from(samples), relaxed::DRAWS_PER_THREAD, RELAXED_WG);
        let bytes = u64::from(reps) * cells.len() as u64 * ROW_BYTES;
        let staging = self.ctx.buffer(
            "sums readback",
            bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
        let mut ranges = plan.draw_ranges(samples).peekable();
        let mut first = true;
        while let Some((draw_begin, draw_end)) = ranges.next() {
            let params = SweepParams {
                key: key_of(spec.seed),
                point: point as u32,
                samples,
                rep_begin,
                chunk_reps: reps,
                draw_begin,
                draw_end,
                k: k as u32,
                threads_per_rep: threads,
                n_cells: cells.len() as u32,
                inv_tau: (1.0 / spec.tau) as f32,
                samples_f: samples as f32,
                ..Default::default()
            };
            self.ctx
                .queue
                .write_buffer(&res.params, 0, bytemuck::bytes_of(&params));
            let mut encoder =
                self.ctx
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("relaxed sums"),
                    });
            if first {
                encoder.clear_buffer(&res.sums, 0, Some(bytes));
                first = false;
            }
            self.relaxed
                .encode_draws(&mut encoder, None, &res.relaxed_draws_group, reps, threads);
            if ranges.peek().is_none() {
                encoder.copy_buffer_to_buffer(&res.sums, 0, &staging, 0, bytes);
            }
            self.ctx.queue.submit([encoder.finish()]);
        }
        let rows: Vec<f32> =
            self.ctx
                .read(&staging, (bytes / 4) as usize, "reading relaxed sums")?;
        let inv = 1.0 / f64::from(samples);
        Ok(rows
            .chunks_exact(MAX_K)
            .flat_map(|r| r[..k].iter().map(move |v| f64::from(*v) * inv))
            .collect())
    }
}

impl GpuEngine {
    /// The generic score-function pass of one point: the moments of every cell of `cells`
    /// (loss index into `contexts`, the contexts of `spec`'s losses; estimator with a
    /// score-function lowering) over all repetitions, each estimate finished on the host in
    /// repetition order (see [`generic`]). `run_point` runs it for the cells it lowers; the
    /// benches time it alone (the contexts, with their exact or reference gradients, made
    /// once outside).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a cell without a score-function lowering;
    /// [`Error::Gpu`] if the device fails.
    pub fn generic_moments(
        &self,
        spec: &SweepSpec,
        point: usize,
        contexts: &[Context],
        cells: &[(usize, &'static dyn Estimator)],
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<EstimateMoments>> {
        use rayon::prelude::*;
        let mut moments = vec![EstimateMoments::new(spec.problem.dim()); cells.len()];
        let samples = spec.samples[point];
        let refs: Vec<(usize, &dyn Estimator)> = cells
            .iter()
            .map(|&(li, e)| (li, e as &dyn Estimator))
            .collect();
        let plan = generic::GenericPlan::new(&spec.problem, contexts, &refs, samples)?;
        let dim = plan.dim();
        // Moving-average baselines enter the measurement warmed up, as on the CPU engine
        // (`warmed_baseline`): the repetitions after the measured ones, in order, run here as
        // a short generic pass of those cells alone, whose estimates advance the baselines
        // and are dropped.
        let mut baselines = vec![MovingAverage::default(); cells.len()];
        let warm: Vec<(usize, u32)> = plan
            .cells
            .iter()
            .enumerate()
            .filter(|(_, c)| c.baseline == Baseline::MovingAverage)
            .map(|(i, c)| (i, contexts[c.loss_index].settings.baseline_warmup))
            .filter(|&(_, reps)| reps > 0)
            .collect();
        if let Some(warmup) = warm.iter().map(|&(_, reps)| reps).max() {
            let Some(first) = spec.reps.checked_add(warmup).map(|_| spec.reps) else {
                return Err(Error::InvalidArgument(format!(
                    "{} repetitions and a baseline warm-up of {warmup} pass 2^32",
                    spec.reps
                )));
            };
            let warm_refs: Vec<(usize, &dyn Estimator)> =
                warm.iter().map(|&(i, _)| refs[i]).collect();
            let warm_plan =
                generic::GenericPlan::new(&spec.problem, contexts, &warm_refs, samples)?;
            let mut scratch = vec![0.0; dim];
            generic::run(
                &self.ctx,
                &self.generic,
                &warm_plan,
                key_of(spec.seed),
                point as u32,
                samples,
                first,
                warmup,
                self.limits.max_reps,
                generic::Readback::default(),
                &mut |chunk| {
                    let done = chunk.rep_begin - first;
                    for (w, &(c, reps)) in warm.iter().enumerate() {
                        for r in 0..reps.saturating_sub(done).min(chunk.reps) as usize {
                            warm_plan.finish(w, chunk, r, samples, &mut baselines[c], &mut scratch);
                        }
                    }
                    Ok(())
                },
            )?;
        }
        generic::run(
            &self.ctx,
            &self.generic,
            &plan,
            key_of(spec.seed),
            point as u32,
            samples,
            0,
            spec.reps,
            self.limits.max_reps,
            generic::Readback::default(),
            &mut |chunk| {
                moments
                    .par_iter_mut()
                    .zip(baselines.par_iter_mut())
                    .enumerate()
                    .for_each(|(c, (m, baseline))| {
                        let grad = &contexts[plan.cells[c].loss_index].grad;
                        let mut estimate = vec![0.0; dim];
                        for r in 0..chunk.reps as usize {
                            plan.finish(c, chunk, r, samples, baseline, &mut estimate);
                            m.push(&estimate, grad);
                        }
                    });
                progress(u64::from(chunk.reps) * u64::from(samples));
                Ok(())
            },
        )?;
        Ok(moments)
    }

    /// The categories of the joint draws (`reps * S * L`, draw-major) of repetitions
    /// `rep_begin..rep_begin + reps` at sweep point `point`, for L variables of K categories
    /// with probabilities `p` (L*K numbers), by the joint draws kernel alone. The GPU twin of
    /// [`crate::draws::draw_joint_categories`], for tests.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `p` is not L*K numbers; [`Error::Gpu`] if the device
    /// fails.
    #[allow(clippy::too_many_arguments)]
    pub fn joint_categories(
        &self,
        p: &[f64],
        k: usize,
        key: [u32; 2],
        point: u32,
        samples: u32,
        rep_begin: u32,
        reps: u32,
    ) -> Result<Vec<u32>> {
        if k < 2 || p.is_empty() || !p.len().is_multiple_of(k) {
            return Err(Error::InvalidArgument(format!(
                "joint_categories: {} probabilities of K = {k}",
                p.len()
            )));
        }
        let plan = generic::GenericPlan::draws_only(p, k);
        let mut z = Vec::new();
        generic::run(
            &self.ctx,
            &self.generic,
            &plan,
            key,
            point,
            samples,
            rep_begin,
            reps,
            self.limits.max_reps,
            generic::Readback {
                z: true,
                ..Default::default()
            },
            &mut |chunk| {
                z.extend_from_slice(&chunk.z);
                Ok(())
            },
        )?;
        Ok(z)
    }

    /// The loss of every joint draw under every loss of `spec` (`[loss][repetition][draw]`)
    /// for repetitions `rep_begin..rep_begin + reps` of sweep point `point`, by the joint
    /// draws and signals kernels (f32, centred on the host's `E f`, returned in f64). The GPU
    /// twin of [`crate::objective::Objective::at_vertex`] over the CPU's joint draws, for
    /// tests.
    ///
    /// # Errors
    /// [`Error::Gpu`] if the device fails.
    pub fn generic_losses(
        &self,
        spec: &SweepSpec,
        point: usize,
        rep_begin: u32,
        reps: u32,
    ) -> Result<Vec<f64>> {
        let samples = spec.samples[point];
        let contexts = spec.contexts();
        let cells: Vec<(usize, &dyn Estimator)> = (0..contexts.len())
            .map(|li| (li, &crate::estimators::Reinforce as &dyn Estimator))
            .collect();
        let plan = generic::GenericPlan::new(&spec.problem, &contexts, &cells, samples)?;
        let (s, g) = (samples as usize, plan.groups.len());
        let mut f = vec![0.0; g * reps as usize * s];
        generic::run(
            &self.ctx,
            &self.generic,
            &plan,
            key_of(spec.seed),
            point as u32,
            samples,
            rep_begin,
            reps,
            self.limits.max_reps,
            generic::Readback {
                signals: true,
                ..Default::default()
            },
            &mut |chunk| {
                let first = (chunk.rep_begin - rep_begin) as usize;
                for r in 0..chunk.reps as usize {
                    for (gi, m) in plan.m.iter().enumerate() {
                        let from = (r * g + gi) * s;
                        let to = (gi * reps as usize + first + r) * s;
                        for (o, d) in f[to..to + s].iter_mut().zip(&chunk.signals[from..from + s]) {
                            *o = f64::from(*d) + m;
                        }
                    }
                }
                Ok(())
            },
        )?;
        Ok(f)
    }

    /// Every score-function cell of `spec` at sweep point `point` that runs on the GPU's
    /// generic path (loss-major, in estimator order), and their estimates for repetitions
    /// `rep_begin..rep_begin + reps` (`[repetition][cell][L*K]`), moving averages starting
    /// empty at `rep_begin`. The GPU twin of the CPU engine's generic path
    /// ([`Estimator::estimate`] on [`crate::estimators::JointDraws`]), for tests.
    ///
    /// # Errors
    /// [`Error::Gpu`] if the device fails.
    #[allow(clippy::type_complexity)]
    pub fn generic_estimates(
        &self,
        spec: &SweepSpec,
        point: usize,
        rep_begin: u32,
        reps: u32,
    ) -> Result<(Vec<(usize, &'static dyn Estimator)>, Vec<f64>)> {
        let samples = spec.samples[point];
        let contexts = spec.contexts();
        let mut cells: Vec<(usize, &'static dyn Estimator)> = Vec::new();
        for (li, ctx) in contexts.iter().enumerate() {
            for &e in &spec.estimators_at(samples) {
                let generic = match path_of(e, ctx) {
                    Path::JointCounts | Path::Generic(Family::ScoreFunction) => true,
                    Path::Counts => ctx.k > MAX_K,
                    _ => false,
                };
                if generic && self.lowers(e, ctx, samples) {
                    cells.push((li, e));
                }
            }
        }
        let refs: Vec<(usize, &dyn Estimator)> = cells
            .iter()
            .map(|&(li, e)| (li, e as &dyn Estimator))
            .collect();
        let plan = generic::GenericPlan::new(&spec.problem, &contexts, &refs, samples)?;
        let dim = plan.dim();
        let mut baselines = vec![MovingAverage::default(); cells.len()];
        let mut out = Vec::with_capacity(reps as usize * cells.len() * dim);
        generic::run(
            &self.ctx,
            &self.generic,
            &plan,
            key_of(spec.seed),
            point as u32,
            samples,
            rep_begin,
            reps,
            self.limits.max_reps,
            generic::Readback::default(),
            &mut |chunk| {
                let mut estimate = vec![0.0; dim];
                for r in 0..chunk.reps as usize {
                    for (c, baseline) in baselines.iter_mut().enumerate() {
                        plan.finish(c, chunk, r, samples, baseline, &mut estimate);
                        out.extend_from_slice(&estimate);
                    }
                }
                Ok(())
            },
        )?;
        Ok((cells, out))
    }
}

/// The notes `mcgrad run` prints for the cells of `spec` that `engine` hands to the CPU
/// engine, one per (estimator, path, reason), with the draw counts where it happens if not
/// all of them: `note: muprop-c on the generic path runs on the CPU (no GPU lowering)`. Empty
/// for the CPU engine.
pub fn fallback_notes(spec: &SweepSpec, engine: &dyn Engine) -> Vec<String> {
    let contexts = spec.contexts();
    // (estimator, path, reason) and the draw counts where it falls back.
    type Key<'a> = (&'a str, String, String);
    let mut found: Vec<(Key<'_>, Vec<u32>)> = Vec::new();
    for &s in &spec.samples {
        for ctx in &contexts {
            for e in spec.estimators_at(s) {
                let Some(reason) = engine.fallback_reason(e, ctx, s) else {
                    continue;
                };
                let path = match path_of(e, ctx) {
                    Path::Counts => "counts".to_string(),
                    Path::RelaxedSums => "relaxed-sums".to_string(),
                    Path::JointCounts => "joint-counts".to_string(),
                    Path::HardDrawCounts => "hard-draw-counts".to_string(),
                    Path::Generic(_) => "generic".to_string(),
                };
                let key = (e.id(), path, reason);
                match found.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, at)) => {
                        if !at.contains(&s) {
                            at.push(s);
                        }
                    }
                    None => found.push((key, vec![s])),
                }
            }
        }
    }
    found
        .into_iter()
        .map(|((id, path, reason), at)| {
            let runs_at = spec
                .samples
                .iter()
                .filter(|&&s| spec.estimators_at(s).iter().any(|e| e.id() == id))
                .count();
            let where_ = if at.len() < runs_at {
                let list: Vec<String> = at.iter().map(u32::to_string).collect();
                format!(" at S = {}", list.join(", "))
            } else {
                String::new()
            };
            format!("note: {id} on the {path} path runs on the CPU{where_} ({reason})")
        })
        .collect()
}
