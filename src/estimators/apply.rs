//! One S-draw estimate from one repetition's draws, whatever form the draws take: the one
//! place where an estimator is applied, shared by the sweep engine ([`crate::engine`]) and
//! training ([`crate::train`]).
//!
//! The draws come in the form of the estimator's path ([`crate::engine::path_of`]): category
//! counts for the counts lowering, [`RelaxedMoments`] for the relaxed-sums lowering, the joint
//! draws themselves for the generic path ([`DrawSource`]). [`estimate_one`] calls the
//! estimator's own method on them. [`estimate_at`] first makes the draws of one repetition as
//! the CPU engine makes them (the same Philox counters, the same arithmetic), so an estimate
//! at counters `(rep, point)` is bit for bit the engine's estimate of repetition `rep` at
//! sweep point `point`.

use crate::draws::{
    count_categories, count_categories_reps, draw_joint_categories, CategoricalTable,
    JointRelaxedTable, RelaxedTable,
};
use crate::engine::{path_of, Path};

use super::{
    estimate_from_joint_counts, fill_joint_counts, Context, Estimator, Family, JointCounts,
    JointDraws, Lowering, MovingAverage, Noise, RelaxedBatch, RelaxedMoments, RELAXED_BATCH,
};

/// One repetition's draws, in the form an estimator's path reads.
#[derive(Clone, Copy, Debug)]
pub enum DrawSource<'a> {
    /// The counts lowering (one variable): the category counts of the S draws.
    Counts {
        /// K counts summing to `s`.
        counts: &'a [u32],
        /// The number of draws S.
        s: u32,
    },
    /// The relaxed-sums lowering (one variable, quadratic loss): the sums of the S draws.
    RelaxedSums(&'a RelaxedMoments),
    /// The joint-counts lowering (several variables, score-function form): the
    /// per-(variable, category) sums of the S joint draws.
    JointCounts(&'a JointCounts<'a>),
    /// The generic path: the joint draws.
    Joint(&'a JointDraws<'a>),
}

/// `est`'s S-draw estimate from `draws` into `out` (L*K numbers), with the moving-average
/// `baseline` (0 where it has none), through the estimator's own method for the form of the
/// draws: [`Estimator::estimate_from_counts`] (and [`Estimator::baseline_signal`]),
/// [`Estimator::add_relaxed_sum`] averaged over the draws, or [`Estimator::estimate`].
/// Returns the value this estimate contributes to the moving average, if it keeps one.
///
/// # Panics
/// If `est` has no method for this form of draws (the caller chose a form its path does not
/// read; see [`crate::engine::path_of`]).
pub fn estimate_one(
    est: &dyn Estimator,
    ctx: &Context,
    draws: DrawSource<'_>,
    baseline: f64,
    out: &mut [f64],
) -> Option<f64> {
    match draws {
        DrawSource::Counts { counts, s } => {
            est.estimate_from_counts(ctx, counts, s, baseline, out);
            est.baseline_signal(ctx, counts, s)
        }
        DrawSource::JointCounts(sums) => estimate_from_joint_counts(est, ctx, sums, baseline, out),
        DrawSource::RelaxedSums(m) => {
            out.iter_mut().for_each(|o| *o = 0.0);
            est.add_relaxed_sum(ctx, m, out);
            let inv = 1.0 / m.draws as f64;
            out.iter_mut().for_each(|o| *o *= inv);
            None
        }
        DrawSource::Joint(d) => est.estimate(ctx, d, baseline, out),
    }
}

/// Whether `est` reads any draw (`exact`, a score-function lowering with no signal, does not).
pub fn reads_draws(est: &dyn Estimator) -> bool {
    !matches!(
        est.lowering(),
        Some(Lowering::ScoreFunction { signal: None, .. })
    )
}

/// Adds the S relaxed draws of repetition `rep` at point `point` to `m` (cleared first), in
/// batches of [`RELAXED_BATCH`], as the CPU engine's relaxed-sums pass draws them.
pub fn relaxed_moments(
    table: &RelaxedTable,
    key: [u32; 2],
    rep: u32,
    point: u32,
    s: u32,
    m: &mut RelaxedMoments,
) {
    let k = table.shifted_logits().len();
    // The batch buffers live in `m` (no allocation per repetition); taken out while `m` adds.
    let mut y = std::mem::take(&mut m.draw_y);
    let mut z = std::mem::take(&mut m.draw_z);
    let mut y_z = std::mem::take(&mut m.draw_y_z);
    y.resize(k * RELAXED_BATCH, 0.0);
    z.resize(RELAXED_BATCH, 0);
    y_z.resize(RELAXED_BATCH, 0.0);
    m.clear();
    let mut first = 0u32;
    while first < s {
        let n = (s - first).min(RELAXED_BATCH as u32) as usize;
        table.draw_batch(
            key,
            rep,
            point,
            first,
            n,
            &mut y[..k * n],
            &mut z[..n],
            &mut y_z[..n],
        );
        m.add_batch(&RelaxedBatch {
            n,
            y: &y[..k * n],
            z: &z[..n],
            y_z: &y_z[..n],
        });
        first += n as u32;
    }
    (m.draw_y, m.draw_z, m.draw_y_z) = (y, z, y_z);
}

/// The buffers [`estimate_at_with`] draws into, kept between calls (an optimisation loop
/// makes one estimate per step with the same shapes): after the first call, an estimate
/// allocates only the per-variable draw tables and whatever the estimator's own method does.
#[derive(Debug, Default)]
pub struct DrawBuffers {
    counts: Vec<u32>,
    moments: Option<RelaxedMoments>,
    z: Vec<u32>,
    f: Vec<f64>,
    y: Vec<f64>,
    perturbed: Vec<f64>,
    h: Vec<f32>,
    sums: Vec<f64>,
}

/// Resizes `v` to `n` elements (reusing its memory); the caller overwrites them.
fn sized<T: Clone + Default>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    v.resize(n, T::default());
    v
}

/// [`estimate_at`] drawing into `buffers`: the same draws and the same arithmetic (a test in
/// `tests/cpu/optimise.rs` compares the two for every estimator on every path).
#[allow(clippy::too_many_arguments)]
pub fn estimate_at_with(
    buffers: &mut DrawBuffers,
    est: &dyn Estimator,
    ctx: &Context,
    key: [u32; 2],
    rep: u32,
    point: u32,
    s: u32,
    baseline: f64,
    out: &mut [f64],
) -> Option<f64> {
    let (l, k) = (ctx.l, ctx.k);
    let b = buffers;
    match path_of(est, ctx) {
        Path::Counts | Path::HardDrawCounts => {
            let counts = sized(&mut b.counts, k);
            counts.iter_mut().for_each(|c| *c = 0);
            if reads_draws(est) {
                let table = CategoricalTable::new(&ctx.p[..k]);
                count_categories(&table, key, rep, point, s, counts);
            }
            estimate_one(est, ctx, DrawSource::Counts { counts, s }, baseline, out)
        }
        Path::RelaxedSums => {
            let m = b.moments.get_or_insert_with(|| RelaxedMoments::new(k));
            if m.k != k {
                *m = RelaxedMoments::new(k);
            }
            relaxed_moments(
                &RelaxedTable::new(&ctx.logits, ctx.tau),
                key,
                rep,
                point,
                s,
                m,
            );
            estimate_one(est, ctx, DrawSource::RelaxedSums(m), baseline, out)
        }
        Path::JointCounts => {
            let tables: Vec<CategoricalTable> =
                ctx.p.chunks(k).map(CategoricalTable::new).collect();
            let z = sized(&mut b.z, s as usize * l);
            draw_joint_categories(&tables, key, rep, point, s, z);
            let f = sized(&mut b.f, s as usize);
            for (fi, zi) in f.iter_mut().zip(z.chunks_exact(l)) {
                *fi = ctx.objective.at_vertex(zi);
            }
            let buffer = sized(&mut b.sums, JointCounts::buffer_len(ctx));
            fill_joint_counts(ctx, z, f, buffer);
            let sums = JointCounts::view(ctx, s as usize, buffer);
            estimate_one(est, ctx, DrawSource::JointCounts(&sums), baseline, out)
        }
        Path::Generic(family) => {
            let su = s as usize;
            let noise = Noise { key, rep, point };
            let z = sized(&mut b.z, su * l);
            let (mut f, mut y, mut perturbed): (&[f64], &[f64], &[f64]) = (&[], &[], &[]);
            match family {
                Family::ScoreFunction => {
                    let tables: Vec<CategoricalTable> =
                        ctx.p.chunks(k).map(CategoricalTable::new).collect();
                    draw_joint_categories(&tables, key, rep, point, s, z);
                    let fs = sized(&mut b.f, su);
                    for (fi, zi) in fs.iter_mut().zip(z.chunks_exact(l)) {
                        *fi = ctx.objective.at_vertex(zi);
                    }
                    f = fs;
                }
                Family::Relaxed => {
                    let dim = ctx.dim();
                    let table = JointRelaxedTable::new(&ctx.logits, k, ctx.tau);
                    let h = sized(&mut b.h, k);
                    let ys = sized(&mut b.y, su * dim);
                    let ps = sized(&mut b.perturbed, su * dim);
                    for d in 0..su {
                        table.draw(
                            key,
                            rep,
                            point,
                            d as u32,
                            h,
                            &mut ys[d * dim..(d + 1) * dim],
                            &mut ps[d * dim..(d + 1) * dim],
                            &mut z[d * l..(d + 1) * l],
                        );
                    }
                    (y, perturbed) = (ys, ps);
                }
            }
            let draws = JointDraws {
                s: su,
                z,
                f,
                y,
                perturbed,
                noise,
            };
            estimate_one(est, ctx, DrawSource::Joint(&draws), baseline, out)
        }
    }
}

/// `est`'s S-draw estimate at the Philox key `key` and counters `(rep, point)`: the draws of
/// its path made as the CPU engine makes those of repetition `rep` at sweep point `point`
/// (none for an estimator that [`reads_draws`] not), then [`estimate_one`].
#[allow(clippy::too_many_arguments)]
pub fn estimate_at(
    est: &dyn Estimator,
    ctx: &Context,
    key: [u32; 2],
    rep: u32,
    point: u32,
    s: u32,
    baseline: f64,
    out: &mut [f64],
) -> Option<f64> {
    estimate_at_with(
        &mut DrawBuffers::default(),
        est,
        ctx,
        key,
        rep,
        point,
        s,
        baseline,
        out,
    )
}

/// The moving-average baseline that `est` enters the measured repetitions with: 0 for an
/// estimator without one, and otherwise the average after `ctx.settings.baseline_warmup`
/// warm-up repetitions, as a practitioner runs a few steps before trusting the baseline.
///
/// Warm-up repetition `r` is the estimate at repetition number `first_rep + r` (the engine
/// passes the number of measured repetitions, so the warm-up draws are past the measured
/// ones, as REBAR's and RELAX's warm-ups are), applied as every repetition is, with the
/// baseline of the repetitions before it; its draws are not measured. Without the warm-up
/// the first repetition's baseline is 0: for `reinforce-ema` on the `seed` loss, that one
/// plain-REINFORCE estimate dominated the reported variance (about its variance over R).
pub fn warmed_baseline(
    est: &dyn Estimator,
    ctx: &Context,
    key: [u32; 2],
    point: u32,
    s: u32,
    first_rep: u32,
) -> MovingAverage {
    let mut baseline = MovingAverage::default();
    if !est.keeps_moving_average() {
        return baseline;
    }
    let mut out = vec![0.0; ctx.dim()];
    for r in 0..ctx.settings.baseline_warmup {
        let rep = first_rep.wrapping_add(r);
        match estimate_at(est, ctx, key, rep, point, s, baseline.value(), &mut out) {
            Some(signal) => baseline.push(signal),
            // The estimator keeps no moving average: nothing to warm up.
            None => break,
        }
    }
    baseline
}

/// [`warmed_baseline`] of several one-variable counts-path cells at once (the GPU engine's
/// score-function cells, one per (loss, estimator)), each equal to its own
/// [`warmed_baseline`] bit for bit: the warm-up repetitions' category counts are drawn once,
/// in parallel, and shared by every cell (they depend only on `p`, which the losses share).
pub fn warmed_counts_baselines(
    cells: &[(&dyn Estimator, &Context)],
    key: [u32; 2],
    point: u32,
    s: u32,
    first_rep: u32,
) -> Vec<MovingAverage> {
    use rayon::prelude::*;
    let mut baselines = vec![MovingAverage::default(); cells.len()];
    let warm: Vec<usize> = (0..cells.len())
        .filter(|&c| cells[c].0.keeps_moving_average())
        .collect();
    let Some(&first) = warm.first() else {
        return baselines;
    };
    let ctx0 = cells[first].1;
    let k = ctx0.k;
    let reps = ctx0.settings.baseline_warmup;
    let table = CategoricalTable::new(&ctx0.p[..k]);
    // The warm-up in chunks of at most WARM_NUMBERS counts (at least one repetition), so that
    // a long warm-up of many categories holds one chunk at a time, not reps x K numbers (8 GB
    // at the largest --baseline-warmup and K = 20000); each chunk in tasks of WARM_TASK
    // repetitions, each one call of the batched counts (the per-repetition counts of
    // `count_categories`, tested; one call per repetition spent more on the calls' scratch
    // than on the draws at small S).
    const WARM_NUMBERS: usize = 1 << 20;
    const WARM_TASK: usize = 16;
    let chunk_reps = (WARM_NUMBERS / k.max(1)).clamp(1, reps.max(1) as usize);
    let mut counts = vec![0u32; chunk_reps * k];
    let mut outs: Vec<Vec<f64>> = warm.iter().map(|&c| vec![0.0; cells[c].1.dim()]).collect();
    // The cells still warming up (an estimator that keeps no moving average stops at once).
    let mut active: Vec<usize> = (0..warm.len()).collect();
    let mut done = 0usize;
    while done < reps as usize && !active.is_empty() {
        let n = chunk_reps.min(reps as usize - done);
        let chunk_first = first_rep.wrapping_add(done as u32);
        counts[..n * k]
            .par_chunks_mut(k.max(1) * WARM_TASK)
            .enumerate()
            .for_each(|(t, rows)| {
                let rep = chunk_first.wrapping_add((t * WARM_TASK) as u32);
                count_categories_reps(&table, key, rep, point, s, rows);
            });
        active.retain(|&w| {
            let (est, ctx) = cells[warm[w]];
            debug_assert!(ctx.l == 1 && ctx.p == ctx0.p && ctx.settings.baseline_warmup == reps);
            let baseline = &mut baselines[warm[w]];
            for row in counts[..n * k].chunks_exact(k) {
                let draws = DrawSource::Counts { counts: row, s };
                match estimate_one(est, ctx, draws, baseline.value(), &mut outs[w]) {
                    Some(signal) => baseline.push(signal),
                    None => return false,
                }
            }
            true
        });
        done += n;
    }
    baselines
}
