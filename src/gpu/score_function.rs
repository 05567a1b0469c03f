//! The score-function pass on the GPU: category counts of every repetition's S draws
//! (`shaders/score_function_counts.wgsl`, CPU twin [`crate::draws::count_categories`]) and
//! every score-function cell's estimate and partial moments
//! (`shaders/score_function_moments.wgsl`, CPU twin: the score-function arm of the CPU
//! engine with each estimator's `estimate_from_counts`). Each launch is one small function.

use crate::error::Result;
use crate::gpu::chunks::REP_ALIGN;
use crate::gpu::context::{GpuContext, READ, READ_WRITE, UNIFORM};
use crate::gpu::moments::MomentsReduction;
use crate::gpu::params::{PartialMoments, PointTable, ScoreCell, SweepParams};
use crate::gpu::shaders;

/// Threads per counts workgroup by default (`COUNTS_WG` in the kernel's source, which
/// [`counts_workgroup`] may replace per adapter).
pub const COUNTS_WG: u32 = 256;
/// The line of `shaders/score_function_counts.wgsl` that sets its workgroup size.
const COUNTS_WG_LINE: &str = "const COUNTS_WG: u32 = 256u;";

/// The counts kernel's workgroup size on this adapter: `MCGRAD_COUNTS_WG` where set (a power
/// of two from 32 to the adapter's limit; the GPU bench sweeps it), else [`COUNTS_WG`] within
/// the adapter's limit. (256 is the size the H100 figures were measured at; the bench's sweep
/// is there to choose per adapter from measurements.)
pub fn counts_workgroup(limits: &wgpu::Limits) -> u32 {
    let max = limits
        .max_compute_invocations_per_workgroup
        .min(limits.max_compute_workgroup_size_x);
    let wanted = std::env::var("MCGRAD_COUNTS_WG")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|&n| n.is_power_of_two() && (32..=max).contains(&n))
        .unwrap_or(COUNTS_WG);
    let mut size = wanted.min(max.max(1));
    while !size.is_power_of_two() {
        size &= size - 1;
    }
    size
}
/// Draws each counts thread should get at least (amortises the lane reduction).
pub const DRAWS_PER_THREAD: u64 = 64;

/// The two score-function kernels.
pub struct ScoreFunctionKernels {
    /// Threads per counts workgroup ([`counts_workgroup`]).
    pub counts_wg: u32,
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
    pub fn new(ctx: &GpuContext, reduction: MomentsReduction) -> Result<Self> {
        Self::with_workgroup(ctx, counts_workgroup(&ctx.limits), reduction)
    }

    /// Builds both pipelines with `counts_wg` threads per counts workgroup (a power of two
    /// within the adapter's limit) and the moments kernel reduced by `reduction`.
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] for another size; [`crate::Error::Gpu`] if a kernel
    /// does not build on this adapter.
    pub fn with_workgroup(
        ctx: &GpuContext,
        counts_wg: u32,
        reduction: MomentsReduction,
    ) -> Result<Self> {
        let max = ctx
            .limits
            .max_compute_invocations_per_workgroup
            .min(ctx.limits.max_compute_workgroup_size_x);
        if !counts_wg.is_power_of_two() || counts_wg > max {
            return Err(crate::Error::InvalidArgument(format!(
                "counts workgroup of {counts_wg} threads (a power of two up to {max})"
            )));
        }
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
        let source = shaders::SCORE_FUNCTION_COUNTS.replace(
            COUNTS_WG_LINE,
            &format!("const COUNTS_WG: u32 = {counts_wg}u;"),
        );
        debug_assert!(shaders::SCORE_FUNCTION_COUNTS.contains(COUNTS_WG_LINE));
        Ok(Self {
            counts_wg,
            counts: ctx.compute_pipeline("score_function_counts", &source, &counts_layout)?,
            counts_layout,
            moments: ctx.compute_pipeline(
                "score_function_moments",
                &reduction.source(
                    shaders::SCORE_FUNCTION_MOMENTS,
                    shaders::SCORE_FUNCTION_MOMENTS_SUBGROUP,
                ),
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
        let groups =
            (u64::from(reps) * u64::from(threads_per_rep)).div_ceil(u64::from(self.counts_wg));
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
