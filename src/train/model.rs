//! The stochastic layer being trained: `z ~ Cat(softmax(x W))` for a batch of inputs, its
//! exact objective, and the per-input estimator gradients, all on the CPU. The per-input
//! estimate is the estimators' own code through [`crate::estimators::estimate_at`] /
//! [`crate::estimators::estimate_one`], as the sweep engine applies them; the variance probe
//! takes the estimator's own [`Estimator::exact_moments`] where it has them.
//!
//! Shapes: a batch `X` is `B x D` (row-major, f32 pixels), `W` is `D x K` (row-major f64,
//! `w[i * K + j]`, as [`crate::problem::Problem`]), logits `A = X W` are `B x K`.
//! [`forward_batch`] is kept apart so that its GPU twin ([`super::device`]) can replace it:
//! everything after the logits is O(B K) per step, while the forward and the W gradient are
//! O(B D K).
//!
//! Objective of one input with class `c` and target vector `T(c)`:
//! `L(W; x) = E_{z ~ Cat(p)} f(z) = sum_k p_k f_k`, `p = softmax(x W)`, `f_k = f(e_k; T)`;
//! a minibatch averages it. Gradient in W of one input: `x^T g` with `g` the logit gradient
//! (or an estimate of it); a minibatch averages the outer products.

use crate::engine::{path_of, Path};
use crate::estimators::{
    estimate_at, estimate_one, Context, DrawSource, Estimator, Family, RelaxedBatch,
    RelaxedMoments, RELAXED_BATCH,
};
use crate::gpu::train_draws::TrainDrawn;
use crate::loss::Loss;
use crate::problem::softmax;
use crate::stats::Moments;

use super::data::{Dataset, D, K};

/// The target vector `T` of class `class` for `loss`: the one-hot `e_c` for `squared`
/// (`f(e_k) = 2 [k != c]`), the cost vector `1 - e_c` for `linear` (`f(e_k) = [k != c]`).
/// `seed` is refused earlier (its gradient is 0 on every one-hot draw).
pub fn target(loss: Loss, class: u8) -> Vec<f64> {
    let c = usize::from(class);
    match loss {
        Loss::Linear => (0..K).map(|k| f64::from(u8::from(k != c))).collect(),
        _ => (0..K).map(|k| f64::from(u8::from(k == c))).collect(),
    }
}

/// The batched forward pass `A = X W`: `x` is `B x D`, `w` is `D x K`, `logits` is `B x K`.
/// Zero pixels are skipped (most of a digit image is background).
///
/// # Panics
/// If the shapes disagree.
pub fn forward_batch(x: &[f32], w: &[f64], logits: &mut [f64]) {
    assert_eq!(w.len(), D * K, "W must be D x K");
    assert_eq!(
        x.len() / D,
        logits.len() / K,
        "X and the logits must have B rows"
    );
    for (xb, ab) in x.chunks_exact(D).zip(logits.chunks_exact_mut(K)) {
        ab.iter_mut().for_each(|a| *a = 0.0);
        for (&xi, row) in xb.iter().zip(w.chunks_exact(K)) {
            if xi != 0.0 {
                let xi = f64::from(xi);
                for (a, wij) in ab.iter_mut().zip(row) {
                    *a += xi * wij;
                }
            }
        }
    }
}

/// Accumulates `scale x^T g` into the D x K gradient `grad_w` (skipping zero pixels).
pub fn add_outer(x: &[f32], g: &[f64], scale: f64, grad_w: &mut [f64]) {
    for (&xi, row) in x.iter().zip(grad_w.chunks_exact_mut(K)) {
        if xi != 0.0 {
            let s = f64::from(xi) * scale;
            for (r, gj) in row.iter_mut().zip(g) {
                *r += s * gj;
            }
        }
    }
}

/// Copies the images `indices` of `data` into the contiguous batch `x` (`B x D`).
pub fn gather(data: &Dataset, indices: &[u32], x: &mut Vec<f32>) {
    x.clear();
    for &i in indices {
        x.extend_from_slice(data.image(i as usize));
    }
}

/// Where the random numbers of one estimate come from: the Philox key and the counter fields
/// `(repetition, sweep point)` of input `b` at `step` are `(rep_offset + b, step)`.
#[derive(Clone, Copy, Debug)]
pub struct DrawKey {
    /// The Philox key.
    pub key: [u32; 2],
    /// The step (the counter's sweep-point field).
    pub step: u32,
    /// Added to the input's index in the batch (the counter's repetition field).
    pub rep_offset: u32,
}

/// One input's S-draw logit-gradient estimate into `g` (K numbers), with the moving-average
/// `baseline` for the estimators that use one. Returns the input's baseline signal, if any.
/// The estimators' own code, as the sweep engine runs it: input `b`'s draws are those of the
/// engine's repetition `rep_offset + b` at sweep point `step`
/// ([`crate::estimators::estimate_at`]); `exact` reads no draws.
pub fn estimate(
    est: &dyn Estimator,
    ctx: &Context,
    samples: u32,
    baseline: f64,
    key: DrawKey,
    b: u32,
    g: &mut [f64],
) -> Option<f64> {
    let rep = key.rep_offset + b;
    estimate_at(est, ctx, key.key, rep, key.step, samples, baseline, g)
}

/// [`estimate`] from draws made elsewhere (on the GPU, with the same counters): input `b`'s
/// class counts, or its S relaxed draws summed into [`RelaxedMoments`], handed to
/// [`crate::estimators::estimate_one`].
pub fn estimate_from_drawn(
    est: &dyn Estimator,
    ctx: &Context,
    samples: u32,
    baseline: f64,
    drawn: &TrainDrawn,
    b: usize,
    g: &mut [f64],
) -> Option<f64> {
    const W: usize = 16; // the GPU's row width (MAX_K)
    match (path_of(est, ctx), drawn) {
        // `st` and `reinmax` (the hard-draw lowering) read the same category counts.
        (Path::Counts | Path::HardDrawCounts, TrainDrawn::Counts(counts)) => {
            let counts = &counts[b * W..b * W + K];
            let draws = DrawSource::Counts { counts, s: samples };
            estimate_one(est, ctx, draws, baseline, g)
        }
        (Path::RelaxedSums, TrainDrawn::Gumbel { weights, classes }) => {
            let s = samples as usize;
            let mut m = RelaxedMoments::new(K);
            let (mut y, mut z, mut y_z) = (vec![0f32; K * RELAXED_BATCH], Vec::new(), Vec::new());
            for first in (0..s).step_by(RELAXED_BATCH) {
                let n = RELAXED_BATCH.min(s - first);
                z.clear();
                y_z.clear();
                for d in 0..n {
                    let row = &weights[(b * s + first + d) * W..][..W];
                    let zd = classes[b * s + first + d];
                    for c in 0..K {
                        y[c * n + d] = row[c];
                    }
                    z.push(zd);
                    y_z.push(row[zd as usize]);
                }
                m.add_batch(&RelaxedBatch {
                    n,
                    y: &y[..K * n],
                    z: &z,
                    y_z: &y_z,
                });
            }
            estimate_one(est, ctx, DrawSource::RelaxedSums(&m), baseline, g)
        }
        // The training loop asks the GPU for the draws of the estimator's path, and none for
        // `exact` (which reads none): this is `exact`, or a mismatch it cannot make.
        _ => {
            let draws = DrawSource::Counts {
                counts: &[0; K],
                s: samples,
            };
            estimate_one(est, ctx, draws, baseline, g)
        }
    }
}

/// The settings one gradient evaluation needs.
#[derive(Clone, Copy, Debug)]
pub struct GradientSpec {
    /// The loss of a draw.
    pub loss: Loss,
    /// Draws per input, S.
    pub samples: u32,
    /// Gumbel-softmax temperature.
    pub tau: f64,
}

/// What one minibatch gradient produced.
#[derive(Clone, Copy, Debug)]
pub struct BatchGradient {
    /// The exact minibatch objective `(1/B) sum_b sum_k p_bk f_bk` at the current W.
    pub objective: f64,
    /// Mean of the inputs' baseline signals (for the moving average), if the estimator has one.
    pub baseline_signal: Option<f64>,
}

/// The minibatch gradient estimate `grad_w = (1/B) sum_b x_b^T g_hat_b` (overwritten), from
/// the batch `x` (`B x D`), its `labels` and its `logits` (from [`forward_batch`]).
#[allow(clippy::too_many_arguments)]
pub fn batch_gradient(
    est: &dyn Estimator,
    spec: GradientSpec,
    x: &[f32],
    labels: &[u8],
    logits: &[f64],
    baseline: f64,
    key: DrawKey,
    drawn: Option<&TrainDrawn>,
    grad_w: &mut [f64],
) -> BatchGradient {
    grad_w.iter_mut().for_each(|v| *v = 0.0);
    let bsz = labels.len();
    let scale = 1.0 / bsz as f64;
    let (mut objective, mut signal, mut has_signal) = (0.0, 0.0, false);
    let mut g = [0f64; K];
    for (b, (&label, a)) in labels.iter().zip(logits.chunks_exact(K)).enumerate() {
        let ctx = Context::from_logits(a, &target(spec.loss, label), spec.loss, spec.tau);
        objective += ctx.fbar;
        let signal_b = match drawn {
            Some(d) => estimate_from_drawn(est, &ctx, spec.samples, baseline, d, b, &mut g),
            None => estimate(est, &ctx, spec.samples, baseline, key, b as u32, &mut g),
        };
        if let Some(s) = signal_b {
            signal += s;
            has_signal = true;
        }
        add_outer(&x[b * D..(b + 1) * D], &g, scale, grad_w);
    }
    BatchGradient {
        objective: objective * scale,
        baseline_signal: has_signal.then_some(signal * scale),
    }
}

/// Exact expected loss and accuracy of a data set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    /// `(1/N) sum_n sum_k p_nk f_nk`, by enumeration over the K classes.
    pub loss: f64,
    /// Fraction of images whose most probable class is their label.
    pub accuracy: f64,
}

/// The exact expected loss and the accuracy of the most probable class on `data` at `w`.
pub fn evaluate(data: &Dataset, w: &[f64], loss: Loss) -> Evaluation {
    let mut logits = vec![0.0; data.len() * K];
    forward_batch(&data.x, w, &mut logits);
    evaluate_logits(&data.labels, &logits, loss)
}

/// [`evaluate`] from the logits of the data set (`N x K`, from either forward pass).
pub fn evaluate_logits(labels: &[u8], logits: &[f64], loss: Loss) -> Evaluation {
    let (mut total, mut correct) = (0.0, 0usize);
    for (a, &label) in logits.chunks_exact(K).zip(labels) {
        let p = softmax(a);
        let f = loss.quadratic(&target(loss, label)).vertex_values();
        total += p.iter().zip(&f).map(|(p, f)| p * f).sum::<f64>();
        // First maximum, so a tie (W = 0) counts as class 0.
        let best = p
            .iter()
            .enumerate()
            .fold(0, |best, (k, v)| if *v > p[best] { k } else { best });
        correct += usize::from(best == usize::from(label));
    }
    let n = labels.len().max(1) as f64;
    Evaluation {
        loss: total / n,
        accuracy: correct as f64 / n,
    }
}

/// How a gradient variance was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VarianceMethod {
    /// The estimator's own closed form (`exact`, `reinforce`, `rloo`, `muprop`).
    ClosedForm,
    /// Enumeration over the K categories of one draw with the current baseline held fixed
    /// (`reinforce-ema`, `muprop-c`: their S-draw estimate is the mean of S per-draw terms).
    Enumeration,
    /// Sample variance over Monte Carlo repetitions (the relaxed estimators).
    MonteCarlo,
}

impl VarianceMethod {
    /// The name written in results.
    pub fn name(self) -> &'static str {
        match self {
            VarianceMethod::ClosedForm => "closed-form",
            VarianceMethod::Enumeration => "enumeration",
            VarianceMethod::MonteCarlo => "monte-carlo",
        }
    }
}

/// The variance of the minibatch gradient estimate at the current W, and the squared norm of
/// the exact minibatch gradient for scale.
#[derive(Clone, Copy, Debug)]
pub struct GradientVariance {
    /// `V = E ||G_hat - E G_hat||_F^2 = (1/B^2) sum_b ||x_b||^2 sum_j Var(g_hat_bj)` (the
    /// inputs' draws are independent; see docs/estimators.md).
    pub total: f64,
    /// `||G||_F^2` of the exact minibatch gradient `G = (1/B) sum_b x_b^T g_b`.
    pub exact_grad_sq: f64,
    /// How `total` was obtained.
    pub method: VarianceMethod,
}

/// The total W-space variance of `est`'s minibatch estimate on the probe batch `x`/`labels`
/// at the logits `logits`, with the moving-average baseline held at `baseline`.
/// Monte Carlo (relaxed estimators) uses `reps` repetitions with the draws of `key`.
#[allow(clippy::too_many_arguments)]
pub fn gradient_variance(
    est: &dyn Estimator,
    spec: GradientSpec,
    x: &[f32],
    labels: &[u8],
    logits: &[f64],
    baseline: f64,
    key: DrawKey,
    reps: u32,
) -> GradientVariance {
    let bsz = labels.len();
    let mut total = 0.0;
    let mut method = VarianceMethod::ClosedForm;
    let mut exact_grad = vec![0.0; D * K];
    for (b, (&label, a)) in labels.iter().zip(logits.chunks_exact(K)).enumerate() {
        let xb = &x[b * D..(b + 1) * D];
        let x_norm_sq: f64 = xb.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        let ctx = Context::from_logits(a, &target(spec.loss, label), spec.loss, spec.tau);
        add_outer(xb, &ctx.grad, 1.0 / bsz as f64, &mut exact_grad);
        let var_sum: f64 = if let Some(m) = est.exact_moments(&ctx, spec.samples) {
            m.var.iter().sum()
        } else if est.family() == Family::ScoreFunction {
            method = VarianceMethod::Enumeration;
            one_draw_variance(est, &ctx, baseline) / f64::from(spec.samples)
        } else {
            method = VarianceMethod::MonteCarlo;
            let mut coords = [Moments::default(); K];
            let mut g = [0f64; K];
            for r in 0..reps {
                let key = DrawKey {
                    rep_offset: key.rep_offset + r * bsz as u32,
                    ..key
                };
                estimate(est, &ctx, spec.samples, baseline, key, b as u32, &mut g);
                coords.iter_mut().zip(&g).for_each(|(m, v)| m.push(*v));
            }
            coords.iter().map(Moments::variance).sum()
        };
        total += x_norm_sq * var_sum;
    }
    GradientVariance {
        total: total / (bsz * bsz) as f64,
        exact_grad_sq: exact_grad.iter().map(|v| v * v).sum(),
        method,
    }
}

/// `sum_j Var(g_hat_j)` of one draw of a score-function estimator, by enumerating the K
/// categories: `g_hat(e_k)` is the estimate from the counts `e_k` with S = 1.
fn one_draw_variance(est: &dyn Estimator, ctx: &Context, baseline: f64) -> f64 {
    let mut values = [[0f64; K]; K];
    for (cat, v) in values.iter_mut().enumerate() {
        let mut counts = [0u32; K];
        counts[cat] = 1;
        let draws = DrawSource::Counts {
            counts: &counts,
            s: 1,
        };
        estimate_one(est, ctx, draws, baseline, v);
    }
    (0..K)
        .map(|j| {
            let mean: f64 = (0..K).map(|c| ctx.p[c] * values[c][j]).sum();
            (0..K)
                .map(|c| ctx.p[c] * (values[c][j] - mean).powi(2))
                .sum::<f64>()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimators::by_id;

    #[test]
    fn forward_matches_naive_product() {
        let x: Vec<f32> = (0..2 * D).map(|i| ((i * 37) % 11) as f32 / 10.0).collect();
        let w: Vec<f64> = (0..D * K).map(|i| ((i * 13) % 7) as f64 - 3.0).collect();
        let mut a = vec![0.0; 2 * K];
        forward_batch(&x, &w, &mut a);
        for b in 0..2 {
            for j in 0..K {
                let want: f64 = (0..D).map(|i| f64::from(x[b * D + i]) * w[i * K + j]).sum();
                assert!((a[b * K + j] - want).abs() < 1e-9);
            }
        }
    }

    /// The enumeration variance relies on the S-draw estimate of `reinforce-ema` and
    /// `muprop-c` being the mean of per-draw terms; check it on mixed counts.
    #[test]
    fn baseline_estimators_are_means_of_per_draw_terms() {
        let a: Vec<f64> = (0..K).map(|j| (j as f64 * 0.7).sin()).collect();
        let ctx = Context::from_logits(&a, &target(Loss::Squared, 3), Loss::Squared, 1.0);
        let counts = [2u32, 0, 1, 3, 0, 0, 1, 0, 0, 1];
        for id in ["reinforce", "reinforce-ema", "muprop", "muprop-c"] {
            let est = by_id(id).unwrap();
            let mut got = [0.0; K];
            est.estimate_from_counts(&ctx, &counts, 8, 0.4, &mut got);
            let mut want = [0.0; K];
            for (cat, &n) in counts.iter().enumerate() {
                let mut one = [0u32; K];
                one[cat] = 1;
                let mut v = [0.0; K];
                est.estimate_from_counts(&ctx, &one, 1, 0.4, &mut v);
                want.iter_mut()
                    .zip(&v)
                    .for_each(|(w, v)| *w += f64::from(n) * v / 8.0);
            }
            for j in 0..K {
                assert!((got[j] - want[j]).abs() < 1e-12, "{id}");
            }
            // And with no baseline the enumeration equals the closed form where one exists.
            if let Some(m) = est.exact_moments(&ctx, 1) {
                let total: f64 = m.var.iter().sum();
                assert!(
                    (one_draw_variance(est, &ctx, 0.0) - total).abs() < 1e-12,
                    "{id}"
                );
            }
        }
    }
}
