//! The GPU engine: the Monte Carlo sweep of [`crate::engine`] on any wgpu adapter, with the
//! same draws as the CPU engine (the same Philox counters and the same integer inverse-CDF
//! thresholds, so the same categories) and moments that agree with the CPU engine's to f32
//! rounding of each estimate.
//!
//! One [`GpuContext`] (instance, adapter, device, queue) is made per engine; pipelines are
//! built once and buffers grow once to the largest chunk, then are reused across the sweep.
//! Per sweep point and family, every chunk of repetitions ([`chunks`]) is one submit: the
//! draws kernel, the moments kernel and a copy of the small per-workgroup partial moments,
//! which the host merges in f64 ([`moments`]). Kernel sources live in `shaders/`, one file
//! per kernel; each launch is a small function in [`score_function`], [`relaxed`] or
//! [`forward`] beside its CPU twin's name.

pub mod chunks;
pub mod context;
pub mod forward;
pub mod moments;
pub mod params;
pub mod philox_kernel;
pub mod relaxed;
pub mod score_function;
pub mod shaders;
pub mod train_draws;

use std::sync::Mutex;
use std::time::Instant;

pub use chunks::{ChunkLimits, ChunkPlan};
pub use context::{adapter_list, AdapterSummary, GpuContext, GpuPreference};
pub use forward::Forward;

use crate::draws::RelaxedTable;
use crate::engine::{path_of, BackendInfo, Cell, Engine, Path, PointMoments, SweepSpec};
use crate::error::{Error, Result};
use crate::estimators::{Context, Family};
use crate::philox::key_of;
use crate::stats::EstimateMoments;
use chunks::{threads_per_rep, REP_ALIGN};
use params::{
    PartialMoments, PointTable, RelaxedCell, ScoreCell, SweepParams, MAX_K, MAX_RELAXED_CELLS,
};
use relaxed::{RelaxedKernels, RELAXED_WG};
use score_function::{ScoreFunctionKernels, COUNTS_WG};

/// The GPU engine.
pub struct GpuEngine {
    ctx: GpuContext,
    score: ScoreFunctionKernels,
    relaxed: RelaxedKernels,
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
        let score = ScoreFunctionKernels::new(&ctx)?;
        let relaxed = RelaxedKernels::new(&ctx)?;
        Ok(Self {
            ctx,
            score,
            relaxed,
            limits: ChunkLimits::default(),
            resources: Mutex::new(None),
        })
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
            COUNTS_WG,
        );
        let t_relaxed = threads_per_rep(u64::from(samples), relaxed::DRAWS_PER_THREAD, RELAXED_WG);
        let binding = l.max_storage_buffer_binding_size.min(l.max_buffer_size);
        let by_sums = binding / (MAX_RELAXED_CELLS as u64 * ROW_BYTES);
        let per_group_partials = (score_cells.max(MAX_RELAXED_CELLS) * (MAX_K + 2) * 20) as u64;
        let by_partials = binding / per_group_partials * u64::from(REP_ALIGN);
        let caps = [
            max_groups * u64::from(COUNTS_WG) / u64::from(t_score),
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
            COUNTS_WG,
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
                self.score
                    .encode_counts(&mut encoder, &res.counts_group, reps, threads);
                let last = ranges.peek().is_none();
                if last {
                    self.score
                        .encode_moments(&mut encoder, &res.score_moments_group, reps);
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
                self.relaxed
                    .encode_draws(&mut encoder, &res.relaxed_draws_group, reps, threads);
                let last = ranges.peek().is_none();
                if last {
                    self.relaxed
                        .encode_moments(&mut encoder, &res.relaxed_moments_group, reps);
                    copy_partials(&mut encoder, res, reps, cells.len());
                }
                self.ctx.queue.submit([encoder.finish()]);
                self.finish_chunk(res, last, reps, cells.len(), "relaxed", grads, moments)?;
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
    fn lowers(&self, path: Path) -> bool {
        matches!(path, Path::Counts | Path::RelaxedSums)
    }

    fn backend_info(&self) -> BackendInfo {
        self.ctx.backend_info()
    }

    fn run_point(
        &self,
        spec: &SweepSpec,
        point: usize,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<PointMoments> {
        let samples = spec.samples[point];
        let k = spec.problem.k;
        if k > MAX_K {
            // No kernel serves this K: every cell runs on the CPU engine.
            return Ok(crate::engine::cpu_point_cells(
                spec,
                point,
                &|_| true,
                progress,
            ));
        }
        let logits = spec.problem.logits();
        let contexts = spec.contexts();
        let estimators = spec.estimators_at(samples);

        // Family cells, loss-major, with their moments: the cells whose estimator lowers to a
        // GPU kernel on this problem. The rest run on the CPU engine's generic path.
        let mut score_cells = Vec::new();
        let mut score_grads = Vec::new();
        let mut score_keys = Vec::new();
        let mut relaxed_cells = Vec::new();
        let mut relaxed_grads = Vec::new();
        let mut relaxed_keys = Vec::new();
        for (li, ctx) in contexts.iter().enumerate() {
            for &e in &estimators {
                match path_of(e, ctx) {
                    Path::Counts => {
                        score_cells.push(params::score_cell(e, ctx, samples)?);
                        score_grads.push(ctx.grad.as_slice());
                        score_keys.push((li, e.id()));
                    }
                    Path::RelaxedSums => {
                        relaxed_cells.push(params::relaxed_cell(e, ctx)?);
                        relaxed_grads.push(ctx.grad.as_slice());
                        relaxed_keys.push((li, e.id()));
                    }
                    Path::Generic(_) | Path::HardDrawCounts => {}
                }
            }
        }
        let fallback = (score_cells.len() + relaxed_cells.len()
            < contexts.len() * estimators.len())
        .then(|| crate::engine::cpu_point_cells(spec, point, &|p| !self.lowers(p), progress));
        let mut score_moments = vec![EstimateMoments::new(k); score_cells.len()];
        let mut relaxed_moments = vec![EstimateMoments::new(k); relaxed_cells.len()];

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

        let mut score_seconds = 0.0;
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
        let mut relaxed_seconds = 0.0;
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
        drop(guard);

        // Cells in the CPU engine's order: losses, then the estimators at this S.
        let mut gpu_cells: Vec<Option<(EstimateMoments, f64)>> = score_moments
            .into_iter()
            .map(|m| Some((m, score_seconds)))
            .chain(
                relaxed_moments
                    .into_iter()
                    .map(|m| Some((m, relaxed_seconds))),
            )
            .collect();
        let keys: Vec<(usize, &str)> = score_keys.into_iter().chain(relaxed_keys).collect();
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
            COUNTS_WG,
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
                .encode_counts(&mut encoder, &res.counts_group, reps, threads);
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
                .encode_draws(&mut encoder, &res.relaxed_draws_group, reps, threads);
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
