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

/// How the draws kernel's loops over categories and cells are bounded. Both compute the same
/// arithmetic in the same order; which is faster depends on the adapter's compiler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelaxedDrawLoops {
    /// To the runtime K and cell count (`shaders/relaxed_draws.wgsl` as written).
    Runtime,
    /// To the constants MAX_K and MAX_RELAXED_CELLS, each with a uniform `break` at the
    /// runtime bound ([`RelaxedDrawLoops::source`]): loops a compiler can unroll, keeping the
    /// per-thread arrays in registers.
    Unrolled,
}

/// The loop headers of `shaders/relaxed_draws.wgsl` that the unrolled variant rewrites, and
/// how many times each stands there.
const RUNTIME_LOOPS: [(&str, &str, usize); 3] = [
    (
        "for (var c = 0u; c < k; c++) {",
        "for (var c = 0u; c < MAX_K; c++) { if c >= k { break; }",
        4,
    ),
    (
        "for (var j = 0u; j < k; j++) {",
        "for (var j = 0u; j < MAX_K; j++) { if j >= k { break; }",
        5,
    ),
    (
        "for (var cell = 0u; cell < params.n_cells; cell++) {",
        "for (var cell = 0u; cell < MAX_RELAXED_CELLS; cell++) { if cell >= params.n_cells { break; }",
        2,
    ),
];

impl RelaxedDrawLoops {
    /// The name `MCGRAD_RELAXED_DRAWS` and the GPU bench use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Runtime => "runtime",
            Self::Unrolled => "unrolled",
        }
    }

    /// The variant a new engine uses: `MCGRAD_RELAXED_DRAWS=unrolled`, else the runtime
    /// loops, with which the H100 figures were measured (the GPU bench's
    /// `gpu_relaxed_draws` group measures both, to choose per adapter).
    pub fn from_env() -> Self {
        match std::env::var("MCGRAD_RELAXED_DRAWS")
            .ok()
            .as_deref()
            .map(str::trim)
        {
            Some("unrolled") => Self::Unrolled,
            _ => Self::Runtime,
        }
    }

    /// The draws kernel's source with this variant's loops.
    pub fn source(self) -> String {
        let mut source = shaders::RELAXED_DRAWS.to_owned();
        if self == Self::Unrolled {
            for (runtime, unrolled, _) in RUNTIME_LOOPS {
                source = source.replace(runtime, unrolled);
            }
        }
        source
    }
}

/// The two relaxed kernels.
pub struct RelaxedKernels {
    /// Layout of the draws kernel: params, table, cells, sums.
    pub draws_layout: wgpu::BindGroupLayout,
    draws: wgpu::ComputePipeline,
    /// How the draws kernel's loops are bounded.
    pub loops: RelaxedDrawLoops,
    /// Layout of the moments kernel: params, cells, sums, partials.
    pub moments_layout: wgpu::BindGroupLayout,
    moments: wgpu::ComputePipeline,
}

impl RelaxedKernels {
    /// Builds both pipelines, the draws kernel with `loops` and the moments kernel reduced by
    /// `reduction`.
    ///
    /// # Errors
    /// [`crate::Error::Gpu`] if a kernel does not build on this adapter.
    pub fn new(
        ctx: &GpuContext,
        loops: RelaxedDrawLoops,
        reduction: MomentsReduction,
    ) -> Result<Self> {
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
            draws: ctx.compute_pipeline("relaxed_draws", &loops.source(), &draws_layout)?,
            loops,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unrolled_variant_rewrites_every_runtime_loop_of_the_draws_kernel() {
        for (runtime, unrolled, count) in RUNTIME_LOOPS {
            assert_eq!(
                shaders::RELAXED_DRAWS.matches(runtime).count(),
                count,
                "{runtime}"
            );
            let source = RelaxedDrawLoops::Unrolled.source();
            assert_eq!(source.matches(runtime).count(), 0);
            assert_eq!(source.matches(unrolled).count(), count);
        }
        assert_eq!(RelaxedDrawLoops::Runtime.source(), shaders::RELAXED_DRAWS);
        // No other loop of the kernel over K or the cells is left with a runtime bound.
        let source = RelaxedDrawLoops::Unrolled.source();
        let kernel = &source[source.find("fn main(").unwrap()..];
        assert!(!kernel.contains("< k;") && !kernel.contains("< params.n_cells;"));
    }
}
