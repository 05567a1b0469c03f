//! The score-function pass on the GPU: category counts of every repetition's S draws
//! (`shaders/score_function_counts.wgsl`, CPU twin [`crate::draws::count_categories`]) and
//! every score-function cell's estimate and partial moments
//! (`shaders/score_function_moments.wgsl`, CPU twin: the score-function arm of the CPU
//! engine with each estimator's `estimate_from_counts`). Each launch is one small function.

use crate::error::Result;
use crate::gpu::chunks::REP_ALIGN;
use crate::gpu::context::{GpuContext, READ, READ_WRITE, UNIFORM};
use crate::gpu::params::{PartialMoments, PointTable, ScoreCell, SweepParams};
use crate::gpu::shaders;

/// Threads per counts workgroup (keep in sync with `COUNTS_WG`).
pub const COUNTS_WG: u32 = 256;
/// Draws each counts thread should get at least (amortises the lane reduction).
pub const DRAWS_PER_THREAD: u64 = 64;

/// The two score-function kernels.
pub struct ScoreFunctionKernels {
    /// Layout of the counts kernel: params, table, counts.
    pub counts_layout: wgpu::BindGroupLayout,
    counts: wgpu::ComputePipeline,
    /// Layout of the moments kernel: params, table, cells, counts, history, partials.
    pub moments_layout: wgpu::BindGroupLayout,
    moments: wgpu::ComputePipeline,
}

impl ScoreFunctionKernels {
    /// Builds both pipelines.
    ///
    /// # Errors
    /// [`crate::Error::Gpu`] if a kernel does not build on this adapter.
    pub fn new(ctx: &GpuContext) -> Result<Self> {
        let params = std::mem::size_of::<SweepParams>() as u64;
        let table = std::mem::size_of::<PointTable>() as u64;
        let counts_layout = ctx.layout(
            "score-function counts",
            &[(UNIFORM, params), (READ, table), (READ_WRITE, 64)],
        );
        let moments_layout = ctx.layout(
            "score-function moments",
            &[
                (UNIFORM, params),
                (READ, table),
                (READ, std::mem::size_of::<ScoreCell>() as u64),
                (READ, 64),
                (READ, 64 * u64::from(REP_ALIGN)),
                (READ_WRITE, std::mem::size_of::<PartialMoments>() as u64),
            ],
        );
        Ok(Self {
            counts: ctx.compute_pipeline(
                "score_function_counts",
                shaders::SCORE_FUNCTION_COUNTS,
                &counts_layout,
            )?,
            counts_layout,
            moments: ctx.compute_pipeline(
                "score_function_moments",
                shaders::SCORE_FUNCTION_MOMENTS,
                &moments_layout,
            )?,
            moments_layout,
        })
    }

    /// Records the counts kernel over `reps` repetitions with `threads_per_rep` threads each.
    pub fn encode_counts(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        timestamps: Option<wgpu::ComputePassTimestampWrites<'_>>,
        bind_group: &wgpu::BindGroup,
        reps: u32,
        threads_per_rep: u32,
    ) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("score-function counts"),
            timestamp_writes: timestamps,
        });
        pass.set_pipeline(&self.counts);
        pass.set_bind_group(0, bind_group, &[]);
        let groups = (u64::from(reps) * u64::from(threads_per_rep)).div_ceil(u64::from(COUNTS_WG));
        pass.dispatch_workgroups(groups as u32, 1, 1);
    }

    /// Records the moments kernel over `reps` repetitions (one workgroup per 256).
    pub fn encode_moments(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        timestamps: Option<wgpu::ComputePassTimestampWrites<'_>>,
        bind_group: &wgpu::BindGroup,
        reps: u32,
    ) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("score-function moments"),
            timestamp_writes: timestamps,
        });
        pass.set_pipeline(&self.moments);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(reps.div_ceil(REP_ALIGN), 1, 1);
    }
}
