//! Finishing the kernels' per-workgroup partials in f64 on the host: the host half of
//! `shaders/moments.wgsl`. A partial holds, for each of a cell's K + 2 scalars (the K
//! coordinates of the deviation `d = g_hat - g` from the exact gradient, `||d||^2` and
//! `1 - cos`), a shift `c`, the f32 sum of `x` and the f32 sums of `(x - c)^p`, p = 2..4,
//! over the workgroup's repetitions, then the counts `n` and `n_cos`. Each becomes central moments in f64
//! ([`crate::stats::central`]) and is merged (Pebay) into the cell's moments in workgroup
//! order; the coordinates' means are shifted back by the exact gradient and the cosine's
//! reflected. Cells are merged in parallel, each in a fixed order, so the result does not
//! depend on the thread count.

use rayon::prelude::*;

use crate::stats::{central, EstimateMoments, Moments};

/// Floats of one cell's partial for K coordinates: (K + 2) x [shift, S1..S4], n, n_cos
/// (keep in sync with `partial_stride` in shaders/moments.wgsl).
pub fn partial_stride(k: usize) -> usize {
    5 * (k + 2) + 2
}

/// Scalar q's moments from its shift c, S1 = sum x and S2..S4 = sum (x - c)^p.
fn scalar(partial: &[f32], q: usize, n: f64) -> Moments {
    let at = 5 * q;
    let shift = f64::from(partial[at]);
    let mut sums = [1, 2, 3, 4].map(|p| f64::from(partial[at + p]));
    // sum (x - c) = S1 - n c, exact in f64 (n < 2^24, c an f32).
    sums[0] -= n * shift;
    central(n as u64, shift, sums)
}

/// Merges the partials of `groups` workgroups, each holding `cells.len()` cells of
/// [`partial_stride`]`(K)` floats, into `cells` (f64). `grads[c]` is cell c's exact
/// gradient, added back to the coordinate means.
pub fn merge_partials(
    partials: &[f32],
    groups: usize,
    grads: &[&[f64]],
    cells: &mut [&mut EstimateMoments],
) {
    let n_cells = cells.len();
    cells.par_iter_mut().enumerate().for_each(|(c, cell)| {
        let k = cell.coords.len();
        let stride = partial_stride(k);
        for group in 0..groups {
            let base = (group * n_cells + c) * stride;
            let partial = &partials[base..base + stride];
            let n = f64::from(partial[5 * (k + 2)]);
            let n_cos = f64::from(partial[5 * (k + 2) + 1]);
            if n > 0.0 {
                for (q, &g) in grads[c][..k].iter().enumerate() {
                    let mut m = scalar(partial, q, n);
                    m.mean += g;
                    cell.coords[q].merge(&m);
                }
                cell.sq_error.merge(&scalar(partial, k, n));
            }
            if n_cos > 0.0 {
                let x = scalar(partial, k + 1, n_cos);
                // The kernel summed 1 - cos: the mean reflects, odd central moments change
                // sign.
                cell.cosine.merge(&Moments {
                    mean: 1.0 - x.mean,
                    m3: -x.m3,
                    ..x
                });
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partial of one scalar from values, as the kernel forms it (shift, sum, power sums).
    fn sums_of(xs: &[f64], shift: f64) -> [f32; 5] {
        let mut out = [shift as f32, 0.0, 0.0, 0.0, 0.0];
        for &x in xs {
            let d = x - shift;
            out[1] += x as f32;
            for (p, o) in out.iter_mut().enumerate().skip(2) {
                *o += d.powi(p as i32) as f32;
            }
        }
        out
    }

    #[test]
    fn merging_partials_shifts_means_and_reflects_the_cosine() {
        // One group, one cell, K = 1: coordinate d, squared error, 1 - cos.
        let d = [0.5, -0.25, 1.0];
        let sq = [0.25, 0.0625, 1.0];
        let one_minus_cos = [0.0, 0.5];
        let mut partial = Vec::new();
        partial.extend(sums_of(&d, 0.25));
        partial.extend(sums_of(&sq, 0.5));
        partial.extend(sums_of(&one_minus_cos, 0.25));
        partial.extend([3.0, 2.0]);
        assert_eq!(partial.len(), partial_stride(1));
        let mut cell = EstimateMoments::new(1);
        merge_partials(&partial, 1, &[&[10.0]], &mut [&mut cell]);
        let mut want = EstimateMoments::new(1);
        for x in d {
            want.coords[0].push(10.0 + x);
        }
        for x in sq {
            want.sq_error.push(x);
        }
        for x in one_minus_cos {
            want.cosine.push(1.0 - x);
        }
        let close = |a: &Moments, b: &Moments| {
            assert_eq!(a.n, b.n);
            for (x, y) in [(a.mean, b.mean), (a.m2, b.m2), (a.m3, b.m3), (a.m4, b.m4)] {
                assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{a:?} vs {b:?}");
            }
        };
        close(&cell.coords[0], &want.coords[0]);
        close(&cell.sq_error, &want.sq_error);
        close(&cell.cosine, &want.cosine);
        assert_eq!(cell.cosine.mean, 0.75);
    }
}
