//! `st`: plain straight-through (Bengio, Léonard and Courville 2013, "Estimating or
//! propagating gradients through stochastic neurons"). The forward pass uses the hard draw
//! `z ~ Cat(p)`; the backward pass treats `d e_z / d a` as `d p / d a`, so per draw and
//! variable `l`: `g_hat_l = J(p_l) grad_l f(e_z)`, `J(p) = diag(p) - p p^T`. Biased (its mean
//! is `E[J(p) grad f(e_z)]`, not `J(p) grad_p E f`). One gradient of the loss per draw (one
//! loss evaluation); needs the loss defined off the vertices.
//!
//! Its estimate depends only on the hard draw, so its exact mean (and bias) and variance come
//! by enumeration ([`hard_draw_moments`]): over the K categories with one variable; per
//! variable for a separable loss (whose gradient's block `l` at a vertex reads only `z_l`);
//! over the `K^L` joint draws where the oracles enumerate. With one variable the S-draw
//! average reads only the category counts ([`Lowering::HardDraw`], on the CPU and the GPU).

use rayon::prelude::*;

use super::{Context, Estimator, ExactMoments, Family, JointDraws, Lowering, COUNTS_BATCH};
use crate::oracle::{self, Method, MAX_ENUMERATION};

/// Plain straight-through.
pub struct StraightThrough;

/// The per-draw estimate of a hard-draw estimator at the joint draw `z` into `out` (L*K
/// numbers), given what its `prepare` computed once per context (`pre`); `scratch` holds
/// 2 L*K numbers.
pub(super) type PerDraw = fn(&Context, &[f64], &[u32], &mut [f64], &mut [f64]);

/// `grad f(e_z)` into `v` (L*K numbers), through the one-hot point in `hard` (L*K numbers).
pub(super) fn grad_at_vertex(ctx: &Context, z: &[u32], hard: &mut [f64], v: &mut [f64]) {
    hard.iter_mut().for_each(|h| *h = 0.0);
    for (l, &c) in z.iter().enumerate() {
        hard[l * ctx.k + c as usize] = 1.0;
    }
    ctx.objective.grad(hard, v);
}

fn per_draw(ctx: &Context, _: &[f64], z: &[u32], scratch: &mut [f64], out: &mut [f64]) {
    let (hard, v) = scratch.split_at_mut(ctx.dim());
    grad_at_vertex(ctx, z, hard, v);
    jacobian(ctx, v, out);
}

/// `sum += grad f(e_z)` for every draw, one gradient of the loss per draw (any loss).
fn gradient_sum_per_draw(ctx: &Context, d: &JointDraws<'_>, sum: &mut [f64]) {
    let n = ctx.dim();
    let (mut hard, mut v) = (vec![0.0; n], vec![0.0; n]);
    for z in d.z.chunks_exact(ctx.l) {
        grad_at_vertex(ctx, z, &mut hard, &mut v);
        sum.iter_mut().zip(&v).for_each(|(a, b)| *a += b);
    }
}

/// `acc[l*K + j] += table[(l*K + z_il)*K + j]` for every draw `i` (draw-major categories `z`,
/// L per draw, L = `acc.len() / K`) and variable `l`, draw after draw: the sum over draws of
/// a per-draw vector whose block `l` depends on `z_il` alone, read from a table of its L*K
/// blocks (K numbers each). No allocation; the blocks vectorise (AVX2 where present, with the
/// same results: each coordinate adds the same numbers in the same order).
pub(super) fn add_vertex_blocks(k: usize, table: &[f64], z: &[u32], acc: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn avx2(k: usize, table: &[f64], z: &[u32], acc: &mut [f64]) {
        add_vertex_blocks_lanes(k, table, z, acc);
    }
    #[cfg(target_arch = "x86_64")]
    if crate::fastmath::has_avx2() {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx2(k, table, z, acc) };
    }
    add_vertex_blocks_lanes(k, table, z, acc);
}

#[inline(always)]
fn add_vertex_blocks_lanes(k: usize, table: &[f64], z: &[u32], acc: &mut [f64]) {
    match k {
        2 => add_vertex_blocks_fixed::<2>(table, z, acc),
        3 => add_vertex_blocks_fixed::<3>(table, z, acc),
        4 => add_vertex_blocks_fixed::<4>(table, z, acc),
        5 => add_vertex_blocks_fixed::<5>(table, z, acc),
        8 => add_vertex_blocks_fixed::<8>(table, z, acc),
        10 => add_vertex_blocks_fixed::<10>(table, z, acc),
        16 => add_vertex_blocks_fixed::<16>(table, z, acc),
        _ => add_vertex_blocks_by_draw(k, table, z, acc),
    }
}

/// Variables handled together by [`add_vertex_blocks_fixed`].
const VARIABLE_GROUP: usize = 4;

/// [`add_vertex_blocks`] for K known at compile time: the sums of up to four variables at a
/// time stay in registers (independent chains of additions) over all the draws, instead of
/// going through memory after every draw. Each coordinate still adds its numbers in draw
/// order, from the value it starts at.
#[inline(always)]
fn add_vertex_blocks_fixed<const K: usize>(table: &[f64], z: &[u32], acc: &mut [f64]) {
    let l = acc.len() / K;
    let mut first = 0;
    while first < l {
        // The group size is a constant, so that the sums are registers and the loops unroll.
        first += match l - first {
            1 => add_variable_group::<K, 1>(table, z, l, first, acc),
            2 => add_variable_group::<K, 2>(table, z, l, first, acc),
            3 => add_variable_group::<K, 3>(table, z, l, first, acc),
            _ => add_variable_group::<K, VARIABLE_GROUP>(table, z, l, first, acc),
        };
    }
}

/// [`add_vertex_blocks_fixed`] for the G variables `first .. first + G` (of L per draw);
/// returns G. A category is below K (the draws' range); one past it reads category K - 1.
#[inline(always)]
fn add_variable_group<const K: usize, const G: usize>(
    table: &[f64],
    z: &[u32],
    l: usize,
    first: usize,
    acc: &mut [f64],
) -> usize {
    let mut sums = [[0.0f64; K]; G];
    for (u, s) in sums.iter_mut().enumerate() {
        s.copy_from_slice(&acc[(first + u) * K..(first + u + 1) * K]);
    }
    // The group's blocks alone: every index below is in range by construction (no checks in
    // the loop).
    let blocks = &table[first * K * K..(first + G) * K * K];
    for zi in z.chunks_exact(l) {
        let group: &[u32; G] = zi[first..first + G].try_into().expect("G categories");
        for (u, (s, &c)) in sums.iter_mut().zip(group).enumerate() {
            debug_assert!((c as usize) < K, "category {c} of {K}");
            let start = (u * K + (c as usize).min(K - 1)) * K;
            let block: &[f64; K] = blocks[start..start + K].try_into().expect("K numbers");
            for (x, &y) in s.iter_mut().zip(block) {
                *x += y;
            }
        }
    }
    for (u, s) in sums.iter().enumerate() {
        acc[(first + u) * K..(first + u + 1) * K].copy_from_slice(s);
    }
    G
}

/// [`add_vertex_blocks`] draw after draw, for any K.
#[inline(always)]
fn add_vertex_blocks_by_draw(k: usize, table: &[f64], z: &[u32], acc: &mut [f64]) {
    let l = acc.len() / k;
    for zi in z.chunks_exact(l) {
        for (var, (&c, a)) in zi.iter().zip(acc.chunks_exact_mut(k)).enumerate() {
            let start = (var * k + c as usize) * k;
            let block = &table[start..start + k];
            for (x, &y) in a.iter_mut().zip(block) {
                *x += y;
            }
        }
    }
}

/// A context's cache of tables that depend only on the context, one per owner (ReinMax's
/// per-(variable, category) blocks, built from `p`, the logits, `tau` and the loss's gradient
/// blocks; DisARM's partner thresholds, from `p`): built by the first estimate and reused by
/// the next ones while those inputs are the same (checked on every use: the numbers of the
/// key bit for bit, and a shared allocation, never changed once built and kept alive by the
/// cache, by address; so a context moved to new logits, given a new loss, or whose fields
/// were set by hand, never reads a stale table). A clone starts empty.
#[derive(Default)]
pub struct TableCache(std::sync::Mutex<Vec<CachedTable>>);

struct CachedTable {
    owner: &'static str,
    key: Vec<u64>,
    shared: Option<std::sync::Arc<[f64]>>,
    table: std::sync::Arc<Vec<f64>>,
}

impl Clone for TableCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for TableCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TableCache")
    }
}

impl TableCache {
    /// The table of `owner` for the inputs `key` (their bits are compared) and `shared`, if
    /// any (an allocation never changed once built, told by its address: the cache keeps a
    /// clone, so no other allocation can take that address while the cache holds it), built
    /// by `build` where the cache holds another table for `owner`.
    pub(super) fn get_or_build(
        &self,
        owner: &'static str,
        key: &[&[f64]],
        shared: Option<&std::sync::Arc<[f64]>>,
        build: impl FnOnce() -> Vec<f64>,
    ) -> std::sync::Arc<Vec<f64>> {
        let mut tables = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let index = match tables.iter().position(|c| c.owner == owner) {
            Some(i) => i,
            None => {
                tables.push(CachedTable {
                    owner,
                    key: Vec::new(),
                    shared: None,
                    table: std::sync::Arc::new(Vec::new()),
                });
                tables.len() - 1
            }
        };
        let slot = &mut tables[index];
        let same_shared = match (&slot.shared, shared) {
            (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        let hit = !slot.key.is_empty()
            && same_shared
            && slot.key.len() == key.iter().map(|k| k.len()).sum::<usize>()
            && same_bits(&slot.key, key);
        if !hit {
            *slot = CachedTable {
                owner,
                key: key
                    .iter()
                    .flat_map(|k| k.iter().map(|v| v.to_bits()))
                    .collect(),
                shared: shared.cloned(),
                table: std::sync::Arc::new(build()),
            };
        }
        slot.table.clone()
    }
}

/// Whether `bits` holds the bits of the parts of `key` one after another (`bits` as long as
/// they are together): part by part, without an early exit, so that the comparisons
/// vectorise (the key of ReinMax's table is `2 L K + 1` numbers, compared on every estimate).
fn same_bits(bits: &[u64], key: &[&[f64]]) -> bool {
    let mut offset = 0;
    let mut same = true;
    for part in key {
        let stored = &bits[offset..offset + part.len()];
        same &= stored
            .iter()
            .zip(part.iter())
            .fold(true, |all, (a, b)| all & (*a == b.to_bits()));
        offset += part.len();
    }
    same
}

/// `out = J(p_l) v_l` per variable.
fn jacobian(ctx: &Context, v: &[f64], out: &mut [f64]) {
    for ((pl, vl), ol) in ctx
        .p
        .chunks_exact(ctx.k)
        .zip(v.chunks_exact(ctx.k))
        .zip(out.chunks_exact_mut(ctx.k))
    {
        let pv: f64 = pl.iter().zip(vl).map(|(a, b)| a * b).sum();
        for ((o, pj), vj) in ol.iter_mut().zip(pl).zip(vl) {
            *o = pj * (vj - pv);
        }
    }
}

/// [`jacobian`] with `v` read from `out` and overwritten: the same numbers (each coordinate
/// of a block is read before it is written, after the block's `p_l . v_l`).
fn jacobian_in_place(ctx: &Context, out: &mut [f64]) {
    for (pl, ol) in ctx.p.chunks_exact(ctx.k).zip(out.chunks_exact_mut(ctx.k)) {
        let pv: f64 = pl.iter().zip(ol.iter()).map(|(a, b)| a * b).sum();
        for (o, pj) in ol.iter_mut().zip(pl) {
            *o = pj * (*o - pv);
        }
    }
}

/// The S-draw average of a hard-draw estimator over the joint draws `d`.
pub(super) fn average_over_draws(
    ctx: &Context,
    pre: &[f64],
    d: &JointDraws<'_>,
    f: PerDraw,
    out: &mut [f64],
) {
    let n = ctx.dim();
    let mut scratch = vec![0.0; 2 * n];
    let mut one = vec![0.0; n];
    out.iter_mut().for_each(|o| *o = 0.0);
    for z in d.z.chunks_exact(ctx.l) {
        f(ctx, pre, z, &mut scratch, &mut one);
        out.iter_mut().zip(&one).for_each(|(o, g)| *o += g);
    }
    let inv = 1.0 / d.s as f64;
    out.iter_mut().for_each(|o| *o *= inv);
}

/// The per-category estimates `g(e_c)` of a hard-draw estimator with one variable, row c
/// (K numbers) for every category c, computed as [`average_over_counts`] computes them.
pub(super) fn category_table(ctx: &Context, pre: &[f64], f: PerDraw) -> Vec<f64> {
    let k = ctx.k;
    let mut scratch = vec![0.0; 2 * k];
    let mut table = vec![0.0; k * k];
    for (c, row) in table.chunks_exact_mut(k).enumerate() {
        f(ctx, pre, &[c as u32], &mut scratch, row);
    }
    table
}

/// [`average_over_counts`] from the rows of [`category_table`]: the same operations in the
/// same order, so the same bits (tested), without recomputing `g(e_c)` or allocating. One
/// repetition at a time: the tests' reference for [`average_with_table_batch`], which the
/// engine runs.
#[cfg(test)]
pub(super) fn average_with_table(table: &[f64], counts: &[u32], s: u32, out: &mut [f64]) {
    let k = out.len();
    out.iter_mut().for_each(|o| *o = 0.0);
    for (c, &n) in counts.iter().enumerate().filter(|(_, &n)| n > 0) {
        let w = f64::from(n) / f64::from(s);
        let row = &table[c * k..(c + 1) * k];
        out.iter_mut().zip(row).for_each(|(o, g)| *o += w * g);
    }
}

/// The S-draw average `sum_c (n_c / S) g(e_c)` of a hard-draw estimator from the rows of
/// `category_table`, for a batch of `n <= COUNTS_BATCH` repetitions at once, vectorised
/// across repetitions (AVX-512 or AVX2 where present), with the layouts of
/// [`super::estimate_counts_batch`]: `counts` holds their category counts in f64,
/// category-major (`counts[c * stride + r]`), and `out` receives their estimates
/// coordinate-major (`out[j * COUNTS_BATCH + r]`). Each repetition's estimate has the bits of
/// `average_over_counts` on its counts (tested against the tests' one-repetition
/// `average_with_table`): the same products `(n_c / S) g_j(e_c)`, added in the same order of
/// categories, a category with no draw leaving the sum as it is.
///
/// # Panics
/// If `n` is out of range or a slice is too short for `k` categories.
pub fn average_with_table_batch(
    table: &[f64],
    k: usize,
    counts: &[f64],
    stride: usize,
    n: usize,
    s: u32,
    out: &mut [f64],
) {
    const B: usize = COUNTS_BATCH;
    assert!((1..=B).contains(&n) && n <= stride && k > 0);
    assert!(table.len() >= k * k && counts.len() >= (k - 1) * stride + n);
    assert!(out.len() >= (k - 1) * B + n);
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn avx512(t: &[f64], k: usize, c: (&[f64], usize, usize), s: u32, out: &mut [f64]) {
            table_batch_lanes(t, k, c, s, out);
        }
        #[target_feature(enable = "avx2")]
        fn avx2(t: &[f64], k: usize, c: (&[f64], usize, usize), s: u32, out: &mut [f64]) {
            table_batch_lanes(t, k, c, s, out);
        }
        if crate::fastmath::has_avx512() {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { avx512(table, k, (counts, stride, n), s, out) };
        }
        if crate::fastmath::has_avx2() {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { avx2(table, k, (counts, stride, n), s, out) };
        }
    }
    table_batch_lanes(table, k, (counts, stride, n), s, out);
}

/// The body of [`average_with_table_batch`], one lane per repetition; a full batch takes the
/// constant length, so that every loop is whole vectors.
#[inline(always)]
fn table_batch_lanes(
    table: &[f64],
    k: usize,
    (counts, stride, n): (&[f64], usize, usize),
    s: u32,
    out: &mut [f64],
) {
    if n == COUNTS_BATCH {
        table_batch_rows::<true>(table, k, (counts, stride, n), s, out);
    } else {
        table_batch_rows::<false>(table, k, (counts, stride, n), s, out);
    }
}

/// Eight repetitions at a time, each coordinate's sum over the categories kept in one
/// register (a sum stored and reloaded for every category, through masked stores, was most
/// of the time), from the batch's weights `n_c / S` computed once, a row of 64 at a time.
#[inline(always)]
fn table_batch_rows<const FULL: bool>(
    table: &[f64],
    k: usize,
    (counts, stride, n): (&[f64], usize, usize),
    s: u32,
    out: &mut [f64],
) {
    const B: usize = COUNTS_BATCH;
    const L: usize = 8;
    const STACK_K: usize = 16;
    let n = if FULL { B } else { n };
    let s = f64::from(s);
    let mut stack = [0.0f64; STACK_K * B];
    let mut heap = Vec::new();
    let w: &mut [f64] = if k <= STACK_K {
        &mut stack[..k * B]
    } else {
        heap.resize(k * B, 0.0);
        &mut heap
    };
    // `w > 0` exactly where `n_c > 0` (S >= 1); lanes past the batch weigh 0.
    for (c, wc) in w.chunks_exact_mut(B).enumerate() {
        let wc: &mut [f64; B] = wc.try_into().expect("B weights");
        if FULL {
            let nc: &[f64; B] = counts[c * stride..c * stride + B]
                .try_into()
                .expect("B counts");
            for (wi, &ni) in wc.iter_mut().zip(nc) {
                *wi = ni / s;
            }
        } else {
            for (wi, &ni) in wc.iter_mut().zip(&counts[c * stride..c * stride + n]) {
                *wi = ni / s;
            }
            wc[n..].fill(0.0);
        }
    }
    for r0 in (0..n).step_by(L) {
        let m = if FULL { L } else { L.min(n - r0) };
        // J coordinates at once: J independent chains of additions (each coordinate's
        // categories still in order), where one chain waited on each addition.
        let mut j0 = 0;
        while j0 + J <= k {
            let acc = table_chains::<J>(table, k, w, r0, j0);
            for (jj, a) in acc.iter().enumerate() {
                let j = j0 + jj;
                out[j * B + r0..j * B + r0 + m].copy_from_slice(&a[..m]);
            }
            j0 += J;
        }
        for j in j0..k {
            let [a] = table_chains::<1>(table, k, w, r0, j);
            out[j * B + r0..j * B + r0 + m].copy_from_slice(&a[..m]);
        }
    }
}

/// Coordinates per block of [`table_chains`].
const J: usize = 4;

/// The sums over the categories of coordinates `j0..j0 + N` for the eight repetitions from
/// `r0` with weights `w` (`w[c * COUNTS_BATCH + r]`; a category with weight 0 is skipped).
#[inline(always)]
fn table_chains<const N: usize>(
    table: &[f64],
    k: usize,
    w: &[f64],
    r0: usize,
    j0: usize,
) -> [[f64; 8]; N] {
    let mut acc = [[0.0f64; 8]; N];
    for c in 0..k {
        let at = c * COUNTS_BATCH + r0;
        let wc: &[f64; 8] = w[at..at + 8].try_into().expect("8 weights");
        let g: &[f64; N] = table[c * k + j0..c * k + j0 + N].try_into().expect("N");
        for (a, &g) in acc.iter_mut().zip(g) {
            for (a, &wi) in a.iter_mut().zip(wc) {
                let sum = *a + wi * g;
                *a = if wi > 0.0 { sum } else { *a };
            }
        }
    }
    acc
}

/// The S-draw average of a hard-draw estimator from one variable's category counts:
/// `sum_k (n_k / S) g(e_k)`.
pub(super) fn average_over_counts(
    ctx: &Context,
    pre: &[f64],
    counts: &[u32],
    s: u32,
    f: PerDraw,
    out: &mut [f64],
) {
    let k = ctx.k;
    let mut scratch = vec![0.0; 2 * k];
    let mut one = vec![0.0; k];
    out.iter_mut().for_each(|o| *o = 0.0);
    for (c, &n) in counts.iter().enumerate().filter(|(_, &n)| n > 0) {
        f(ctx, pre, &[c as u32], &mut scratch, &mut one);
        let w = f64::from(n) / f64::from(s);
        out.iter_mut().zip(&one).for_each(|(o, g)| *o += w * g);
    }
}

/// Weighted per-draw values `(P(z), g(z))` folded into single-draw moments.
struct Single {
    mean: Vec<f64>,
    m2: Vec<f64>,
    m4: Vec<f64>,
}

/// Configurations per enumeration chunk (a fixed partition: thread-count independent sums).
const CHUNK: u64 = 1 << 12;

/// Enumerates the K^L joint draws in fixed chunks: `sum_z P(z) h(g(z))` for the coordinate
/// map `h` (applied to every coordinate), summed in chunk order.
fn enumerate_sum(
    ctx: &Context,
    pre: &[f64],
    f: PerDraw,
    h: &(dyn Fn(usize, f64) -> f64 + Sync),
) -> Vec<f64> {
    let (l, k, n) = (ctx.l, ctx.k as u64, ctx.dim());
    let total = k.pow(l as u32);
    let parts: Vec<Vec<f64>> = (0..total.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let mut acc = vec![0.0; n];
            let (mut scratch, mut g) = (vec![0.0; 2 * n], vec![0.0; n]);
            let first = c * CHUNK;
            let mut z = vec![0u32; l];
            let mut rest = first;
            for var in (0..l).rev() {
                z[var] = (rest % k) as u32;
                rest /= k;
            }
            for _ in first..(first + CHUNK).min(total) {
                let prob: f64 = z
                    .iter()
                    .enumerate()
                    .map(|(var, &c)| ctx.p[var * ctx.k + c as usize])
                    .product();
                if prob > 0.0 {
                    f(ctx, pre, &z, &mut scratch, &mut g);
                    for (j, (a, gj)) in acc.iter_mut().zip(&g).enumerate() {
                        *a += prob * h(j, *gj);
                    }
                }
                for var in (0..l).rev() {
                    z[var] += 1;
                    if u64::from(z[var]) < k {
                        break;
                    }
                    z[var] = 0;
                }
            }
            acc
        })
        .collect();
    let mut out = vec![0.0; n];
    for part in parts {
        out.iter_mut().zip(part).for_each(|(o, v)| *o += v);
    }
    out
}

fn single_draw_moments(ctx: &Context, pre: &[f64], f: PerDraw) -> Option<Single> {
    let (l, k, n) = (ctx.l, ctx.k, ctx.dim());
    match oracle::method(ctx) {
        Method::Reference => None,
        Method::Separable => {
            // Block l of g reads only z_l: K values per coordinate, the others at category 0.
            let (mut mean, mut m2, mut m4) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            let (mut scratch, mut g) = (vec![0.0; 2 * n], vec![0.0; n]);
            let mut z = vec![0u32; l];
            for var in 0..l {
                let block = var * k..(var + 1) * k;
                let values: Vec<Vec<f64>> = (0..k)
                    .map(|c| {
                        z[var] = c as u32;
                        f(ctx, pre, &z, &mut scratch, &mut g);
                        g[block.clone()].to_vec()
                    })
                    .collect();
                z[var] = 0;
                let p = &ctx.p[block];
                for j in 0..k {
                    let mu: f64 = (0..k).map(|c| p[c] * values[c][j]).sum();
                    let (mut q2, mut q4) = (0.0, 0.0);
                    for c in 0..k {
                        let d = values[c][j] - mu;
                        q2 += p[c] * d * d;
                        q4 += p[c] * d * d * d * d;
                    }
                    mean[var * k + j] = mu;
                    m2[var * k + j] = q2;
                    m4[var * k + j] = q4;
                }
            }
            Some(Single { mean, m2, m4 })
        }
        Method::OneVariable | Method::Enumeration => {
            if (k as u64).checked_pow(l as u32)? > MAX_ENUMERATION {
                return None;
            }
            let mean = enumerate_sum(ctx, pre, f, &|_, g| g);
            let m2 = enumerate_sum(ctx, pre, f, &|j, g| (g - mean[j]).powi(2));
            let m4 = enumerate_sum(ctx, pre, f, &|j, g| (g - mean[j]).powi(4));
            Some(Single { mean, m2, m4 })
        }
    }
}

/// Exact moments of the S-draw average of a per-draw estimate that depends only on the hard
/// draw: its single-draw mean, variance and fourth central moment by enumeration (see the
/// module doc), then those of a mean of S iid draws. `None` where the oracles only have a
/// Monte Carlo reference.
pub(super) fn hard_draw_moments(
    ctx: &Context,
    pre: &[f64],
    s: u32,
    f: PerDraw,
) -> Option<ExactMoments> {
    let single = single_draw_moments(ctx, pre, f)?;
    Some(oracle::average_of([single.mean, single.m2, single.m4], s))
}

impl Estimator for StraightThrough {
    fn id(&self) -> &'static str {
        "st"
    }
    fn family(&self) -> Family {
        Family::ScoreFunction
    }
    fn is_unbiased(&self) -> bool {
        false
    }
    fn needs_extension(&self) -> bool {
        true
    }
    fn lowering(&self) -> Option<Lowering> {
        Some(Lowering::HardDraw)
    }
    /// The hard draws alone: their losses are never read.
    fn reads_draw_losses(&self) -> bool {
        false
    }
    fn exact_moments(&self, ctx: &Context, s: u32) -> Option<ExactMoments> {
        hard_draw_moments(ctx, &[], s, per_draw)
    }
    fn estimate(&self, ctx: &Context, d: &JointDraws<'_>, _: f64, out: &mut [f64]) -> Option<f64> {
        // Linear in grad f(e_z): average the gradients, then one Jacobian product.
        let inv = 1.0 / d.s as f64;
        if let Some(blocks) = ctx.objective.vertex_gradient_blocks() {
            // A separable loss: block l of grad f(e_z) is the table's block (l, z_l), so each
            // coordinate adds the same numbers in the same (draw) order as
            // `gradient_sum_per_draw`; the sum and its Jacobian product in `out` (no
            // allocation).
            out.iter_mut().for_each(|o| *o = 0.0);
            add_vertex_blocks(ctx.k, blocks, d.z, out);
            out.iter_mut().for_each(|a| *a *= inv);
            jacobian_in_place(ctx, out);
        } else {
            let mut sum = vec![0.0; ctx.dim()];
            gradient_sum_per_draw(ctx, d, &mut sum);
            sum.iter_mut().for_each(|a| *a *= inv);
            jacobian(ctx, &sum, out);
        }
        None
    }
    fn estimate_from_counts(&self, ctx: &Context, counts: &[u32], s: u32, _: f64, out: &mut [f64]) {
        average_over_counts(ctx, &[], counts, s, per_draw, out);
    }
    fn counts_table(&self, ctx: &Context) -> Option<Vec<f64>> {
        Some(category_table(ctx, &[], per_draw))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::draws::{draw_joint_categories, CategoricalTable};
    use crate::estimators::{Noise, ReinMax};
    use crate::loss::Loss;
    use crate::problem::Problem;

    /// The engine's counts path for `st` and `reinmax` (one variable): the table of
    /// per-category estimates built once, then averaged per repetition, gives the bits of
    /// `estimate_from_counts` for any counts, on every quadratic loss and two temperatures.
    #[test]
    fn counts_tables_give_the_bits_of_estimate_from_counts() {
        let problem = Problem::seeded(3, 8, 7);
        let k = problem.k;
        let mut x = 0x2545_f491_u32;
        for loss in Loss::QUADRATIC {
            for tau in [0.5, 2.0] {
                let ctx = Context::new(&problem, loss, tau);
                for est in [&StraightThrough as &dyn Estimator, &ReinMax] {
                    let table = est.counts_table(&ctx).expect("a counts table");
                    for s in [1u32, 5, 64, 1000] {
                        for _ in 0..50 {
                            // Random counts summing to s (some categories left at zero).
                            let mut counts = vec![0u32; k];
                            for _ in 0..s {
                                x ^= x << 13;
                                x ^= x >> 17;
                                x ^= x << 5;
                                counts[(x % 3 + x % k as u32 / 2) as usize % k] += 1;
                            }
                            let (mut want, mut got) = (vec![0.0; k], vec![1.0; k]);
                            est.estimate_from_counts(&ctx, &counts, s, 0.0, &mut want);
                            average_with_table(&table, &counts, s, &mut got);
                            let bits =
                                |v: &[f64]| v.iter().map(|g| g.to_bits()).collect::<Vec<_>>();
                            assert_eq!(bits(&got), bits(&want), "{} {loss:?} {counts:?}", est.id());
                        }
                    }
                }
            }
        }
    }

    /// The batched table average (the engine's path for `st` and `reinmax` with one variable)
    /// gives each repetition the bits of [`average_with_table`], on the dispatched (AVX-512
    /// here) and the portable path, for full batches and a batch's tail. The table's rows of
    /// categories that some repetitions never draw hold infinities and NaNs, which a product
    /// with a zero weight would carry into the sum: their repetitions must skip them.
    #[test]
    fn batched_table_averages_are_each_repetitions_bits() {
        let stride = COUNTS_BATCH + 3;
        let mut x = 0x9e37_79b9_u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        // K = 40 past the weights' stack buffer (16 categories).
        for (k, s) in [7usize, 40]
            .into_iter()
            .flat_map(|k| [1u32, 3, 64, 1000].map(|s| (k, s)))
        {
            let mut table: Vec<f64> = (0..k * k)
                .map(|_| (f64::from(next()) / 1e9 - 2.1) * 1e-3)
                .collect();
            table[(k - 2) * k + 2] = f64::INFINITY;
            table[(k - 1) * k] = f64::NAN;
            for n in [COUNTS_BATCH, 1, 13] {
                // Counts summing to s; the last two categories drawn by odd repetitions only.
                let mut counts_t = vec![-1.0; k * stride];
                let mut per_rep = vec![vec![0u32; k]; n];
                for (r, c) in per_rep.iter_mut().enumerate() {
                    for _ in 0..s {
                        let cat = next() as usize % if r % 2 == 1 { k } else { k - 2 };
                        c[cat] += 1;
                    }
                    for (j, &nj) in c.iter().enumerate() {
                        counts_t[j * stride + r] = f64::from(nj);
                    }
                }
                let bits = |v: &[f64]| v.iter().map(|g| g.to_bits()).collect::<Vec<_>>();
                let mut want = vec![0.0; k];
                for portable in [false, true] {
                    let mut out = vec![7.0; k * COUNTS_BATCH];
                    if portable {
                        table_batch_lanes(&table, k, (&counts_t, stride, n), s, &mut out);
                    } else {
                        average_with_table_batch(&table, k, &counts_t, stride, n, s, &mut out);
                    }
                    for (r, c) in per_rep.iter().enumerate() {
                        average_with_table(&table, c, s, &mut want);
                        let got: Vec<f64> = (0..k).map(|j| out[j * COUNTS_BATCH + r]).collect();
                        assert_eq!(
                            bits(&got),
                            bits(&want),
                            "k {k} s {s} n {n} r {r} {portable}"
                        );
                    }
                }
            }
        }
    }

    /// Contexts with several variables under separable losses (the tables' case):
    /// `indecater-6x10` (pnorm, p = 1), and 4 variables of 5 categories under squared and
    /// pnorm (p = 1.5) losses.
    pub(in crate::estimators) fn separable_contexts() -> Vec<Context> {
        let named = (crate::problems::by_name("indecater-6x10").unwrap().build)(0);
        let (l, k) = (4, 5);
        let mut p =
            Problem::free_logits(l, k, (0..l * k).map(|i| (i as f64 * 0.61).sin()).collect());
        p.t = (0..l * k).map(|i| (i as f64 * 0.29).cos()).collect();
        p.b = vec![0.5, 3.2, 1.0, 2.5];
        p.exponent = 1.5;
        vec![
            Context::new(&named, Loss::Pnorm, 1.0),
            Context::new(&p, Loss::Squared, 1.3),
            Context::new(&p, Loss::Pnorm, 1.3),
        ]
    }

    /// S joint draws of `ctx` at repetition `rep`, as the engine makes them, and their losses.
    pub(in crate::estimators) fn draws_of(ctx: &Context, s: u32, rep: u32) -> (Vec<u32>, Vec<f64>) {
        let tables: Vec<_> = ctx.p.chunks(ctx.k).map(CategoricalTable::new).collect();
        let mut z = vec![0u32; s as usize * ctx.l];
        draw_joint_categories(&tables, [7, 9], rep, 2, s, &mut z);
        let mut f = vec![0.0; s as usize];
        ctx.objective.at_vertices(&z, &mut f);
        (z, f)
    }

    pub(in crate::estimators) fn joint<'a>(z: &'a [u32], f: &'a [f64], rep: u32) -> JointDraws<'a> {
        JointDraws {
            s: f.len(),
            z,
            f,
            y: &[],
            perturbed: &[],
            noise: Noise {
                key: [7, 9],
                rep,
                point: 2,
            },
        }
    }

    #[test]
    fn hard_draw_tables_give_the_per_draw_estimates_bit_for_bit() {
        // `st` and `reinmax` through their per-(variable, category) tables against the
        // per-draw gradient of the loss, on draws of uneven count.
        for ctx in separable_contexts() {
            assert!(ctx.objective.vertex_gradient_blocks().is_some());
            let n = ctx.dim();
            for (s, rep) in [(1u32, 0u32), (13, 1), (64, 2)] {
                let (z, f) = draws_of(&ctx, s, rep);
                let d = joint(&z, &f, rep);
                let mut out = vec![0.0; n];
                StraightThrough.estimate(&ctx, &d, 0.0, &mut out);
                let mut sum = vec![0.0; n];
                gradient_sum_per_draw(&ctx, &d, &mut sum);
                sum.iter_mut().for_each(|a| *a *= 1.0 / s as f64);
                let mut want = vec![0.0; n];
                jacobian(&ctx, &sum, &mut want);
                assert_eq!(out, want, "st {} S={s}", ctx.loss);
                // ReinMax twice: the second estimate reads the cached table.
                for _ in 0..2 {
                    ReinMax.estimate(&ctx, &d, 0.0, &mut out);
                    let mut want = vec![0.0; n];
                    crate::estimators::reinmax::per_draw_average(&ctx, &d, &mut want);
                    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&out), bits(&want), "reinmax {} S={s}", ctx.loss);
                }
            }
        }
    }

    #[test]
    fn a_context_moved_to_new_logits_never_reads_a_stale_table() {
        let mut ctx = separable_contexts().remove(2);
        let (z, f) = draws_of(&ctx, 16, 3);
        let d = joint(&z, &f, 3);
        let mut first = vec![0.0; ctx.dim()];
        ReinMax.estimate(&ctx, &d, 0.0, &mut first);
        let moved: Vec<f64> = ctx.logits.iter().map(|a| 0.5 * a + 0.1).collect();
        ctx.set_logits(&moved, false);
        let mut after = vec![0.0; ctx.dim()];
        ReinMax.estimate(&ctx, &d, 0.0, &mut after);
        let mut want = vec![0.0; ctx.dim()];
        crate::estimators::reinmax::per_draw_average(&ctx, &d, &mut want);
        assert_eq!(after, want);
        assert_ne!(after, first);
        // A new temperature too.
        ctx.tau = 2.5;
        ReinMax.estimate(&ctx, &d, 0.0, &mut after);
        crate::estimators::reinmax::per_draw_average(&ctx, &d, &mut want);
        assert_eq!(after, want);
    }

    #[test]
    fn a_context_with_a_new_loss_or_new_probabilities_never_reads_a_stale_table() {
        // The gradient blocks are told by their address: a context whose objective is
        // replaced by one of the same shape (other targets `b`) builds a new table, and so
        // does one whose `p` is set by hand.
        let mut ctx = separable_contexts().remove(2);
        let (z, f) = draws_of(&ctx, 24, 5);
        let d = joint(&z, &f, 5);
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let mut first = vec![0.0; ctx.dim()];
        ReinMax.estimate(&ctx, &d, 0.0, &mut first);
        let (l, k) = (ctx.l, ctx.k);
        let mut other =
            Problem::free_logits(l, k, (0..l * k).map(|i| (i as f64 * 0.61).sin()).collect());
        other.t = (0..l * k).map(|i| (i as f64 * 0.29).cos()).collect();
        other.b = vec![4.0, 0.25, 2.0, 1.5];
        other.exponent = 1.5;
        // Several times: a freed allocation may come back at the same address.
        for round in 0..4 {
            ctx.objective = crate::objective::Objective::new(&other, Loss::Pnorm);
            let mut after = vec![0.0; ctx.dim()];
            ReinMax.estimate(&ctx, &d, 0.0, &mut after);
            let mut want = vec![0.0; ctx.dim()];
            crate::estimators::reinmax::per_draw_average(&ctx, &d, &mut want);
            assert_eq!(bits(&after), bits(&want), "round {round}");
            assert_ne!(bits(&after), bits(&first));
        }
        ctx.p
            .iter_mut()
            .for_each(|v| *v = (*v + 0.2) / (1.0 + 0.2 * k as f64));
        let mut after = vec![0.0; ctx.dim()];
        ReinMax.estimate(&ctx, &d, 0.0, &mut after);
        let mut want = vec![0.0; ctx.dim()];
        crate::estimators::reinmax::per_draw_average(&ctx, &d, &mut want);
        assert_eq!(bits(&after), bits(&want));
    }

    #[test]
    fn a_table_is_reused_for_the_same_inputs_and_rebuilt_for_other_blocks() {
        let cache = TableCache::default();
        let key = [1.5, -2.0];
        let blocks: std::sync::Arc<[f64]> = vec![0.5; 8].into();
        let built = std::sync::atomic::AtomicUsize::new(0);
        let build = || {
            built.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            vec![3.0; 4]
        };
        let a = cache.get_or_build("t", &[&key], Some(&blocks), build);
        let b = cache.get_or_build("t", &[&key], Some(&blocks), build);
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        assert_eq!(built.load(std::sync::atomic::Ordering::Relaxed), 1);
        // The same numbers in another allocation: rebuilt (they are told by address alone).
        let copy: std::sync::Arc<[f64]> = blocks.to_vec().into();
        let c = cache.get_or_build("t", &[&key], Some(&copy), build);
        assert!(!std::sync::Arc::ptr_eq(&a, &c));
        assert_eq!(built.load(std::sync::atomic::Ordering::Relaxed), 2);
        // Another owner, or another key: rebuilt.
        cache.get_or_build("u", &[&key], Some(&copy), build);
        cache.get_or_build("u", &[&key[..1]], Some(&copy), build);
        assert_eq!(built.load(std::sync::atomic::Ordering::Relaxed), 4);
        // Each owner keeps its own table: "t"'s is still there, and one without a shared
        // allocation is told by its key alone.
        let d = cache.get_or_build("t", &[&key], Some(&copy), build);
        assert!(std::sync::Arc::ptr_eq(&c, &d));
        cache.get_or_build("v", &[&key], None, build);
        cache.get_or_build("v", &[&key], None, build);
        assert_eq!(built.load(std::sync::atomic::Ordering::Relaxed), 5);
        cache.get_or_build("v", &[&key], Some(&copy), build);
        assert_eq!(built.load(std::sync::atomic::Ordering::Relaxed), 6);
    }

    #[test]
    fn table_keys_match_only_on_every_bit_of_every_part() {
        let parts: [Vec<f64>; 3] = [
            vec![1.5],
            vec![0.0, -2.0, 3.25],
            (0..9).map(f64::from).collect(),
        ];
        let key: Vec<&[f64]> = parts.iter().map(|p| p.as_slice()).collect();
        let bits: Vec<u64> = parts.iter().flatten().map(|v| v.to_bits()).collect();
        assert!(same_bits(&bits, &key));
        for at in 0..bits.len() {
            let mut other = bits.clone();
            other[at] ^= 1;
            assert!(!same_bits(&other, &key), "bit 0 of number {at}");
        }
        // Signed zeros differ in their bits.
        let mut negative = bits.clone();
        negative[1] = (-0.0f64).to_bits();
        assert!(!same_bits(&negative, &key));
    }

    #[test]
    fn vertex_blocks_of_fixed_k_add_in_draw_order_bit_for_bit() {
        // Every specialised K and one without, L below, at and past a group of four.
        for k in [2usize, 3, 4, 5, 7, 8, 10, 16] {
            for l in [1usize, 3, 4, 6, 9] {
                let table: Vec<f64> = (0..l * k * k)
                    .map(|i| (i as f64 * 0.37).sin() * 10f64.powi((i % 7) as i32 - 3))
                    .collect();
                let z: Vec<u32> = (0..45 * l).map(|i| ((i * 7 + i / 3) % k) as u32).collect();
                let start: Vec<f64> = (0..l * k).map(|i| (i as f64 * 0.11).cos()).collect();
                let (mut fast, mut plain, mut want) = (start.clone(), start.clone(), start);
                add_vertex_blocks(k, &table, &z, &mut fast);
                add_vertex_blocks_lanes(k, &table, &z, &mut plain);
                add_vertex_blocks_by_draw(k, &table, &z, &mut want);
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&fast), bits(&want), "K = {k}, L = {l}");
                assert_eq!(bits(&plain), bits(&want), "K = {k}, L = {l}");
            }
        }
    }

    #[test]
    fn vertex_blocks_add_the_same_with_and_without_avx2() {
        let ctx = &separable_contexts()[0];
        let (z, _) = draws_of(ctx, 45, 4);
        let table = ctx.objective.vertex_gradient_blocks().unwrap();
        let mut fast = vec![0.0; ctx.dim()];
        add_vertex_blocks(ctx.k, table, &z, &mut fast);
        let mut plain = vec![0.0; ctx.dim()];
        add_vertex_blocks_lanes(ctx.k, table, &z, &mut plain);
        assert_eq!(fast, plain);
        assert!(fast.iter().any(|&v| v != 0.0));
    }
}
