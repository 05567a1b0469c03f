//! The moments kernels' workgroup reduction, chosen per adapter ([`MomentsReduction`]), and
//! finishing their per-workgroup partial moments in f64 on the host (the Chan/Pebay merge of
//! [`crate::stats::Moments`], in workgroup order): the host half of `shaders/moments.wgsl`
//! and `shaders/moments_subgroup.wgsl`. The kernels reduce the deviation `d = g_hat - g`
//! from the exact gradient and `1 - cos`, so the host shifts the means back.

use crate::gpu::params::PartialMoments;
use crate::stats::{EstimateMoments, Moments};
use rayon::prelude::*;

/// How the two moments kernels reduce a workgroup's estimates to partial moments. Both give
/// the same partials up to f32 rounding (the order of the merges differs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MomentsReduction {
    /// A barrier tree per scalar in workgroup memory (`shaders/moments.wgsl`): every adapter.
    WorkgroupTree,
    /// Subgroup shuffles, then one merge per scalar across subgroups
    /// (`shaders/moments_subgroup.wgsl`): two barriers per cell instead of a tree per scalar.
    /// Only on adapters with subgroup operations of one fixed size (the value).
    Subgroup(u32),
}

impl MomentsReduction {
    /// The name `MCGRAD_MOMENTS_REDUCTION` and the GPU bench use.
    pub fn name(self) -> &'static str {
        match self {
            Self::WorkgroupTree => "tree",
            Self::Subgroup(_) => "subgroup",
        }
    }

    /// The subgroup variant where the adapter allows it: subgroup operations enabled on the
    /// device, one subgroup size (`min == max`) from 8 to 128 (so at most 32 subgroups of a
    /// 256-thread workgroup, whose moments fit the 16 KiB of workgroup memory every adapter
    /// has).
    pub fn subgroup(features: wgpu::Features, info: &wgpu::AdapterInfo) -> Option<Self> {
        let size = info.subgroup_min_size;
        (features.contains(wgpu::Features::SUBGROUP)
            && size == info.subgroup_max_size
            && size.is_power_of_two()
            && (8..=128).contains(&size))
        .then_some(Self::Subgroup(size))
    }

    /// The reduction a new engine uses: `MCGRAD_MOMENTS_REDUCTION=subgroup` where the adapter
    /// allows it ([`Self::subgroup`]), else the workgroup tree, the one the H100 figures were
    /// measured with (the GPU bench's `gpu_moments_reduction` group measures both, to choose
    /// per adapter).
    pub fn for_adapter(features: wgpu::Features, info: &wgpu::AdapterInfo) -> Self {
        let wanted = std::env::var("MCGRAD_MOMENTS_REDUCTION").ok();
        match wanted.as_deref().map(str::trim) {
            Some("subgroup") => Self::subgroup(features, info).unwrap_or(Self::WorkgroupTree),
            _ => Self::WorkgroupTree,
        }
    }

    /// The kernel source with this reduction: `tree` and `subgroup` are the two variants of
    /// one kernel (`shaders::SCORE_FUNCTION_MOMENTS` and `..._SUBGROUP`, or the relaxed ones).
    pub fn source(self, tree: &str, subgroup: &str) -> String {
        match self {
            Self::WorkgroupTree => tree.to_owned(),
            Self::Subgroup(size) => {
                debug_assert!(subgroup.contains(SUBGROUP_SIZE_LINE));
                subgroup.replace(
                    SUBGROUP_SIZE_LINE,
                    &format!("const SUBGROUP_SIZE: u32 = {size}u;"),
                )
            }
        }
    }
}

/// The line of `shaders/moments_subgroup.wgsl` that sets the subgroup size.
const SUBGROUP_SIZE_LINE: &str = "const SUBGROUP_SIZE: u32 = 32u;";

fn widen(m: &PartialMoments) -> Moments {
    Moments {
        n: f64::from(m.n),
        mean: f64::from(m.mean),
        m2: f64::from(m.m2),
        m3: f64::from(m.m3),
        m4: f64::from(m.m4),
    }
}

/// Merges the partials of `groups` workgroups, each holding `cells.len()` cells of K + 2
/// scalars (K coordinates of `d`, `||d||^2`, `1 - cos`), into `cells` (f64). `grads[c]` is
/// cell c's exact gradient, added back to the coordinate means.
pub fn merge_partials(
    partials: &[PartialMoments],
    groups: usize,
    grads: &[&[f64]],
    cells: &mut [&mut EstimateMoments],
) {
    let n_cells = cells.len();
    // Cells are independent: merge them on rayon's threads, each in workgroup order (so the
    // same bits as one thread).
    cells.par_iter_mut().enumerate().for_each(|(c, cell)| {
        let k = cell.coords.len();
        for group in 0..groups {
            let base = (group * n_cells + c) * (k + 2);
            for q in 0..k {
                let mut m = widen(&partials[base + q]);
                m.mean += grads[c][q];
                cell.coords[q].merge(&m);
            }
            cell.sq_error.merge(&widen(&partials[base + k]));
            let x = widen(&partials[base + k + 1]);
            // The kernel reduced 1 - cos: the mean reflects, odd central moments change sign.
            cell.cosine.merge(&Moments {
                mean: 1.0 - x.mean,
                m3: -x.m3,
                ..x
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_partials_shifts_means_and_reflects_the_cosine() {
        let p = |n: f32, mean: f32, m3: f32| PartialMoments {
            n,
            mean,
            m2: 1.0,
            m3,
            m4: 2.0,
        };
        // One group, one cell, K = 1: coordinate, squared error, 1 - cos.
        let partials = [p(2.0, 0.5, 0.0), p(2.0, 3.0, 0.0), p(2.0, 0.25, 0.125)];
        let mut cell = EstimateMoments::new(1);
        merge_partials(&partials, 1, &[&[10.0]], &mut [&mut cell]);
        assert_eq!(cell.coords[0].mean, 10.5);
        assert_eq!(cell.sq_error.mean, 3.0);
        assert_eq!(cell.cosine.mean, 0.75);
        assert_eq!(cell.cosine.m3, -0.125);
        assert_eq!(cell.cosine.m2, 1.0);
    }
}
