//! Finishing the kernels' per-workgroup partial moments in f64 on the host (the Chan/Pebay
//! merge of [`crate::stats::Moments`], in workgroup order): the host half of
//! `shaders/moments.wgsl`. The kernels reduce the deviation `d = g_hat - g` from the exact
//! gradient and `1 - cos`, so the host shifts the means back.

use crate::gpu::params::PartialMoments;
use crate::stats::{EstimateMoments, Moments};
use rayon::prelude::*;

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
