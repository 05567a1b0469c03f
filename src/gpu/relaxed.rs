//! The relaxed (Gumbel) pass on the GPU: every repetition's sum over its S draws of each
//! relaxed cell's per-draw estimate (`shaders/relaxed_draws.wgsl`; CPU twin
//! [`crate::draws::RelaxedTable::draw`] with each estimator's `add_relaxed_draw`), then their
//! partial moments (`shaders/relaxed_moments.wgsl`). Each launch is one small function.

use crate::error::Result;
use crate::gpu::chunks::REP_ALIGN;
use crate::gpu::context::{GpuContext, READ, READ_WRITE, UNIFORM};
use crate::gpu::moments::MomentsReduction;
use crate::gpu::params::{PartialMoments, PointTable, RelaxedCell, SweepParams};
use crate::gpu::shaders;

/// Threads per relaxed-draws workgroup (keep in sync with `RELAXED_WG`).
pub const RELAXED_WG: u32 = 128;
/// Draws each relaxed thread should get at least.
pub const DRAWS_PER_THREAD: u64 = 8;

/// The two relaxed kernels.
pub struct RelaxedKernels {
    /// Layout of the draws kernel: params, table, cells, sums.
    pub draws_layout: wgpu::BindGroupLayout,
    draws: wgpu::ComputePipeline,
    /// Layout of the moments kernel: params, cells, sums, partials.
    pub moments_layout: wgpu::BindGroupLayout,
    moments: wgpu::ComputePipeline,
}

impl RelaxedKernels {
    /// Builds both pipelines, the moments kernel reduced by `reduction`.
    ///
    /// # Errors
    /// [`crate::Error::Gpu`] if a kernel does not build on this adapter.
    pub fn new(ctx: &GpuContext, reduction: MomentsReduction) -> Result<Self> {
        let params = std::mem::size_of::<SweepParams>() as u64;
        let cell = std::mem::size_of::<RelaxedCell>() as u64;
        let draws_layout = ctx.layout(
            "relaxed draws",
            &[
                (UNIFORM, params),
                (READ, std::mem::size_of::<PointTable>() as u64),
                (READ, cell),
                (READ_WRITE, 64),
            ],
        );
        let moments_layout = ctx.layout(
            "relaxed moments",
            &[
                (UNIFORM, params),
                (READ, cell),
                (READ, 64),
                (READ_WRITE, std::mem::size_of::<PartialMoments>() as u64),
            ],
        );
        Ok(Self {
            draws: ctx.compute_pipeline("relaxed_draws", shaders::RELAXED_DRAWS, &draws_layout)?,
            draws_layout,
            moments: ctx.compute_pipeline(
                "relaxed_moments",
                &reduction.source(shaders::RELAXED_MOMENTS, shaders::RELAXED_MOMENTS_SUBGROUP),
                &moments_layout,
            )?,
            moments_layout,
        })
    }

    /// Records the draws kernel over `reps` repetitions with `threads_per_rep` threads each.
    pub fn encode_draws(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        timestamps: Option<wgpu::ComputePassTimestampWrites<'_>>,
        bind_group: &wgpu::BindGroup,
        reps: u32,
        threads_per_rep: u32,
    ) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("relaxed draws"),
            timestamp_writes: timestamps,
        });
        pass.set_pipeline(&self.draws);
        pass.set_bind_group(0, bind_group, &[]);
        let groups = (u64::from(reps) * u64::from(threads_per_rep)).div_ceil(u64::from(RELAXED_WG));
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
            label: Some("relaxed moments"),
            timestamp_writes: timestamps,
        });
        pass.set_pipeline(&self.moments);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(reps.div_ceil(REP_ALIGN), 1, 1);
    }
}
