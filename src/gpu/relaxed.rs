//! The relaxed (Gumbel) pass on the GPU: every repetition's sum over its S draws of each
//! relaxed cell's per-draw estimate (`shaders/relaxed_draws.wgsl`; CPU twin
//! [`crate::draws::RelaxedTable::draw`] with each estimator's `add_relaxed_draw`), then their
//! per-workgroup shifted power sums (`shaders/relaxed_moments.wgsl`). Each launch is one small function.

use crate::error::Result;
use crate::gpu::chunks::REPS_PER_GROUP;
use crate::gpu::context::{GpuContext, READ, READ_WRITE, UNIFORM};
use crate::gpu::params::{PointTable, RelaxedCell, SweepParams, MAX_K};
use crate::gpu::shaders::{self, PerK};

/// Threads per relaxed-draws workgroup (keep in sync with `RELAXED_WG`).
pub const RELAXED_WG: u32 = 128;
/// Draws each relaxed thread should get at least.
pub const DRAWS_PER_THREAD: u64 = 32;

/// The two relaxed kernels.
pub struct RelaxedKernels {
    /// Layout of the draws kernel: params, table, cells, sums.
    pub draws_layout: wgpu::BindGroupLayout,
    draws: PerK,
    /// Layout of the moments kernel: params, cells, sums, partials.
    pub moments_layout: wgpu::BindGroupLayout,
    moments: PerK,
}

impl RelaxedKernels {
    /// The two kernels, their pipelines built per K on first use ([`PerK`]); builds the
    /// pipelines for K = 16 to check that the kernels build on this adapter.
    ///
    /// # Errors
    /// [`crate::Error::Gpu`] if a kernel does not build on this adapter.
    pub fn new(ctx: &GpuContext) -> Result<Self> {
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
            &[(UNIFORM, params), (READ, cell), (READ, 64), (READ_WRITE, 4)],
        );
        let kernels = Self {
            draws: PerK::new("relaxed_draws", shaders::RELAXED_DRAWS),
            draws_layout,
            moments: PerK::new("relaxed_moments", shaders::RELAXED_MOMENTS),
            moments_layout,
        };
        kernels.draws.get(ctx, &kernels.draws_layout, MAX_K)?;
        kernels.moments.get(ctx, &kernels.moments_layout, MAX_K)?;
        Ok(kernels)
    }

    /// Records the draws kernel for K = `k` over `reps` repetitions with `threads_per_rep`
    /// threads each.
    ///
    /// # Errors
    /// [`crate::Error::Gpu`] if the kernel does not build for this K.
    #[allow(clippy::too_many_arguments)]
    pub fn encode_draws(
        &self,
        ctx: &GpuContext,
        k: usize,
        encoder: &mut wgpu::CommandEncoder,
        timestamps: Option<wgpu::ComputePassTimestampWrites<'_>>,
        bind_group: &wgpu::BindGroup,
        reps: u32,
        threads_per_rep: u32,
    ) -> Result<()> {
        let pipeline = self.draws.get(ctx, &self.draws_layout, k)?;
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("relaxed draws"),
            timestamp_writes: timestamps,
        });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        let groups = (u64::from(reps) * u64::from(threads_per_rep)).div_ceil(u64::from(RELAXED_WG));
        pass.dispatch_workgroups(groups as u32, 1, 1);
        Ok(())
    }

    /// Records the moments kernel over `reps` repetitions (one workgroup per
    /// [`REPS_PER_GROUP`]).
    ///
    /// # Errors
    /// [`crate::Error::Gpu`] if the kernel does not build for this K.
    pub fn encode_moments(
        &self,
        ctx: &GpuContext,
        k: usize,
        encoder: &mut wgpu::CommandEncoder,
        timestamps: Option<wgpu::ComputePassTimestampWrites<'_>>,
        bind_group: &wgpu::BindGroup,
        reps: u32,
    ) -> Result<()> {
        let pipeline = self.moments.get(ctx, &self.moments_layout, k)?;
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("relaxed moments"),
            timestamp_writes: timestamps,
        });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(reps.div_ceil(REPS_PER_GROUP), 1, 1);
        Ok(())
    }
}
