//! The gradient estimators, one module each with its formula in the doc comment, and the
//! registry that names them. Adding an estimator is adding one file here plus one line in
//! [`REGISTRY`].
//!
//! Every estimate is of the gradient with respect to the logits `a = xW` (a K-vector `g`);
//! the gradient with respect to W is the outer product `x^T g` (see ESTIMATORS.md).
//!
//! Two families share the engine's passes over the draws:
//! - [`Family::ScoreFunction`]: an S-draw estimate depends only on how many of the S draws
//!   fell in each category (`counts`), so the engine never materialises per-draw gradients;
//! - [`Family::Relaxed`]: the Gumbel estimators, which need the K Gumbel variables of each
//!   draw and produce a K-vector per draw.

mod exact;
mod gumbel_softmax;
mod muprop;
mod muprop_c;
mod reinforce;
mod reinforce_ema;
mod rloo;
mod st_gumbel;

pub use exact::Exact;
pub use gumbel_softmax::GumbelSoftmax;
pub use muprop::Muprop;
pub use muprop_c::MupropC;
pub use reinforce::Reinforce;
pub use reinforce_ema::ReinforceEma;
pub use rloo::Rloo;
pub use st_gumbel::StGumbel;

use crate::error::{Error, Result};
use crate::loss::{Loss, Quadratic};
use crate::problem::{softmax, Problem};

/// Every estimator, in the order sweeps and plots show them.
pub static REGISTRY: &[&dyn Estimator] = &[
    &Exact,
    &Reinforce,
    &ReinforceEma,
    &Rloo,
    &Muprop,
    &MupropC,
    &GumbelSoftmax,
    &StGumbel,
];

/// Decay of the exponential moving averages used as baselines (`reinforce-ema`, `muprop-c`).
pub const EMA_DECAY: f64 = 0.9;

/// Looks an estimator up by id.
///
/// # Errors
/// [`Error::Unknown`] listing the known ids.
pub fn by_id(id: &str) -> Result<&'static dyn Estimator> {
    REGISTRY
        .iter()
        .copied()
        .find(|e| e.id() == id)
        .ok_or_else(|| Error::Unknown {
            kind: "estimator",
            name: id.to_string(),
            known: REGISTRY
                .iter()
                .map(|e| e.id())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Which pass over the draws an estimator reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// Reads each draw's category only (one uniform per draw).
    ScoreFunction,
    /// Reads each draw's K Gumbel variables (K uniforms per draw).
    Relaxed,
}

/// Everything an estimator needs to know about one (problem, loss, temperature).
#[derive(Clone, Debug)]
pub struct Context {
    /// Number of categories.
    pub k: usize,
    /// Logits `a = xW`.
    pub logits: Vec<f64>,
    /// Probabilities `p = softmax(a)`.
    pub p: Vec<f64>,
    /// The loss.
    pub loss: Loss,
    /// The loss as a quadratic form.
    pub quad: Quadratic,
    /// `f_k = f(e_k)`.
    pub f: Vec<f64>,
    /// `fbar = p . f`, the objective.
    pub fbar: f64,
    /// The exact logit gradient `g_j = p_j (f_j - fbar)`.
    pub grad: Vec<f64>,
    /// Gumbel-softmax temperature.
    pub tau: f64,
    /// MuProp's learning signal per category, `f_k - f(p) - grad f(p) . (e_k - p)`.
    pub muprop_signal: Vec<f64>,
    /// MuProp's deterministic term `J grad f(p)`, `J = diag(p) - p p^T`.
    pub muprop_mean_field: Vec<f64>,
}

impl Context {
    /// The context of `problem` under `loss` at temperature `tau`.
    pub fn new(problem: &Problem, loss: Loss, tau: f64) -> Self {
        Self::from_logits(&problem.logits(), &problem.t, loss, tau)
    }

    /// The context of logits `a` and target `t` under `loss` at temperature `tau`.
    pub fn from_logits(a: &[f64], t: &[f64], loss: Loss, tau: f64) -> Self {
        let p = softmax(a);
        let quad = loss.quadratic(t);
        let f = quad.vertex_values();
        let fbar: f64 = p.iter().zip(&f).map(|(a, b)| a * b).sum();
        let grad: Vec<f64> = p.iter().zip(&f).map(|(pj, fj)| pj * (fj - fbar)).collect();
        let f_p = quad.value(&p);
        let grad_f_p = quad.grad(&p);
        let gp_dot_p: f64 = grad_f_p.iter().zip(&p).map(|(a, b)| a * b).sum();
        let muprop_signal = f
            .iter()
            .zip(&grad_f_p)
            .map(|(fk, gk)| fk - f_p - (gk - gp_dot_p))
            .collect();
        let muprop_mean_field = jacobian_product(&p, &grad_f_p);
        Self {
            k: p.len(),
            logits: a.to_vec(),
            p,
            loss,
            quad,
            f,
            fbar,
            grad,
            tau,
            muprop_signal,
            muprop_mean_field,
        }
    }
}

/// `(diag(y) - y y^T) v`, the softmax Jacobian times `v`, in O(K).
pub fn jacobian_product(y: &[f64], v: &[f64]) -> Vec<f64> {
    let yv: f64 = y.iter().zip(v).map(|(a, b)| a * b).sum();
    y.iter().zip(v).map(|(yj, vj)| yj * (vj - yv)).collect()
}

/// Moments of an estimator's S-draw average, exact (by enumeration over the K categories).
#[derive(Clone, Debug, PartialEq)]
pub struct ExactMoments {
    /// Expected estimate, K numbers.
    pub mean: Vec<f64>,
    /// Per-coordinate variance of the S-draw average.
    pub var: Vec<f64>,
    /// Per-coordinate fourth central moment of the S-draw average, where known.
    pub m4: Option<Vec<f64>>,
}

/// The exact moments of the S-draw average of a single-draw estimate of the form
/// `g(e_k) = L_k (e_k - p) + c`:
/// `E g_j = sum_k p_k g_j(e_k)`, `Var_j = sum_k p_k (g_j(e_k) - E g_j)^2 / S`, and the fourth
/// central moment of a mean of S iid terms, `(mu4 + 3 (S - 1) sigma^4) / S^3`.
pub fn linear_form_moments(p: &[f64], signal: &[f64], c: &[f64], s: u32) -> ExactMoments {
    let k = p.len();
    let s = f64::from(s);
    let value = |cat: usize, j: usize| signal[cat] * (f64::from(u8::from(cat == j)) - p[j]) + c[j];
    let mut mean = vec![0.0; k];
    let mut var = vec![0.0; k];
    let mut m4 = vec![0.0; k];
    for j in 0..k {
        let mu: f64 = (0..k).map(|cat| p[cat] * value(cat, j)).sum();
        let (mut m2, mut q4) = (0.0, 0.0);
        for (cat, pc) in p.iter().enumerate() {
            let d = value(cat, j) - mu;
            m2 += pc * d * d;
            q4 += pc * d * d * d * d;
        }
        mean[j] = mu;
        var[j] = m2 / s;
        m4[j] = (q4 + 3.0 * (s - 1.0) * m2 * m2) / (s * s * s);
    }
    ExactMoments {
        mean,
        var,
        m4: Some(m4),
    }
}

/// `sum_k counts_k signal_k (e_k - p)_j` for every j, in O(K):
/// `counts_j signal_j - p_j sum_k counts_k signal_k`.
pub fn score_sum(counts: &[u32], signal: impl Fn(usize) -> f64, p: &[f64], out: &mut [f64]) {
    let mut total = 0.0;
    for (j, (&n, o)) in counts.iter().zip(out.iter_mut()).enumerate() {
        let w = f64::from(n) * signal(j);
        *o = w;
        total += w;
    }
    for (o, pj) in out.iter_mut().zip(p) {
        *o -= pj * total;
    }
}

/// One relaxed draw, as the Gumbel estimators see it.
#[derive(Clone, Copy, Debug)]
pub struct RelaxedDraw<'a> {
    /// `y = softmax((a + G) / tau)`.
    pub y: &'a [f64],
    /// `argmax(a + G)`: the category the Gumbel-max trick draws.
    pub z: usize,
}

/// Most draws in one [`RelaxedBatch`].
pub const RELAXED_BATCH: usize = 64;

/// Up to [`RELAXED_BATCH`] relaxed draws in structure-of-arrays form (`y` in f32, as drawn on
/// the GPU).
#[derive(Clone, Copy, Debug)]
pub struct RelaxedBatch<'a> {
    /// Number of draws n.
    pub n: usize,
    /// `y` of every draw, category-major: `y[c * n + d]` is `y_c` of draw d.
    pub y: &'a [f32],
    /// `z = argmax(a + G)` of every draw.
    pub z: &'a [u32],
    /// `y_z`, the relaxed weight of the drawn category, of every draw.
    pub y_z: &'a [f32],
}

/// What the relaxed estimators read of a set of draws. The losses are quadratic forms
/// (`grad f(y) = 2 alpha y + beta`), so a sum over draws of `y_c (v_c - y . v)` needs only
/// these sums (in f64), whatever the loss: the relaxed family's counterpart of the
/// score-function family's category counts, shared by every loss and relaxed estimator.
#[derive(Clone, Debug)]
pub struct RelaxedMoments {
    /// Number of categories K.
    pub k: usize,
    /// Number of draws.
    pub draws: u64,
    /// `sum_d y_c`.
    pub sum_y: Vec<f64>,
    /// `sum_d y_c y_c'`, K x K row-major.
    pub sum_yy: Vec<f64>,
    /// `sum_d y_c ||y||^2`.
    pub sum_y_norm_sq: Vec<f64>,
    /// `sum_d y_c y_z`.
    pub sum_y_yz: Vec<f64>,
    /// `sum_{d : z_d = c} y_c` (the relaxed weight where the hard draw landed).
    pub sum_hit: Vec<f64>,
    /// Scratch: a batch's `y` in f64, category-major, [`RELAXED_BATCH`] per category.
    scratch: Vec<f64>,
}

impl RelaxedMoments {
    /// Empty sums for K categories.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            draws: 0,
            sum_y: vec![0.0; k],
            sum_yy: vec![0.0; k * k],
            sum_y_norm_sq: vec![0.0; k],
            sum_y_yz: vec![0.0; k],
            sum_hit: vec![0.0; k],
            scratch: vec![0.0; k * RELAXED_BATCH],
        }
    }

    /// Back to empty.
    pub fn clear(&mut self) {
        self.draws = 0;
        for v in [
            &mut self.sum_y,
            &mut self.sum_yy,
            &mut self.sum_y_norm_sq,
            &mut self.sum_y_yz,
            &mut self.sum_hit,
        ] {
            v.iter_mut().for_each(|x| *x = 0.0);
        }
    }

    /// Adds one draw (`y` and its argmax `z`).
    pub fn add_draw(&mut self, y: &[f64], z: usize) {
        let y32: Vec<f32> = y.iter().map(|&v| v as f32).collect();
        let batch = RelaxedBatch {
            n: 1,
            y: &y32,
            z: &[z as u32],
            y_z: &[y32[z]],
        };
        self.add_batch(&batch);
    }

    /// Adds a batch of draws; the loops run over draws and vectorise (AVX2 where present;
    /// the same results either way, see [`crate::fastmath::with_avx2`]).
    pub fn add_batch(&mut self, batch: &RelaxedBatch<'_>) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            #[target_feature(enable = "avx2")]
            fn avx2(m: &mut RelaxedMoments, batch: &RelaxedBatch<'_>) {
                m.add_batch_lanes(batch)
            }
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { avx2(self, batch) };
        }
        self.add_batch_lanes(batch)
    }

    #[inline(always)]
    fn add_batch_lanes(&mut self, batch: &RelaxedBatch<'_>) {
        let (n, k) = (batch.n, self.k);
        assert!(n <= RELAXED_BATCH);
        let mut norm_sq = [0f64; RELAXED_BATCH];
        let mut yz = [0f64; RELAXED_BATCH];
        let y = &mut self.scratch;
        for c in 0..k {
            let yc = &mut y[c * RELAXED_BATCH..c * RELAXED_BATCH + n];
            for ((v, &w), q) in yc
                .iter_mut()
                .zip(&batch.y[c * n..(c + 1) * n])
                .zip(&mut norm_sq)
            {
                *v = f64::from(w);
                *q += *v * *v;
            }
        }
        for (v, &w) in yz.iter_mut().zip(batch.y_z) {
            *v = f64::from(w);
        }
        let row = |c: usize| &y[c * RELAXED_BATCH..c * RELAXED_BATCH + n];
        for c in 0..k {
            let yc = row(c);
            self.sum_y[c] += lane_sum(yc);
            self.sum_y_norm_sq[c] += dot(yc, &norm_sq[..n]);
            self.sum_y_yz[c] += dot(yc, &yz[..n]);
            for c2 in c..k {
                let v = dot(yc, row(c2));
                self.sum_yy[c * k + c2] += v;
                if c2 != c {
                    self.sum_yy[c2 * k + c] += v;
                }
            }
        }
        for (&z, &v) in batch.z.iter().zip(&yz[..n]) {
            self.sum_hit[z as usize] += v;
        }
        self.draws += n as u64;
    }
}

/// A sum in eight partial sums (so the loop vectorises, in a fixed order).
#[inline(always)]
pub fn lane_sum(terms: &[f64]) -> f64 {
    let mut lanes = [0f64; 8];
    let chunks = terms.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, t) in lanes.iter_mut().zip(chunk) {
            *lane += t;
        }
    }
    lanes.iter().chain(rest).sum()
}

/// A dot product in eight partial sums (as [`lane_sum`]).
#[inline(always)]
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut lanes = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f64>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f64>()
}

/// A gradient estimator of `d E[f(z)] / d a`.
pub trait Estimator: Send + Sync {
    /// The id used on the command line and in results (`reinforce-ema`).
    fn id(&self) -> &'static str;

    /// Which pass over the draws it reads.
    fn family(&self) -> Family;

    /// Whether its expectation is the exact gradient.
    fn is_unbiased(&self) -> bool;

    /// The least number of draws S an estimate needs.
    fn min_samples(&self) -> u32 {
        1
    }

    /// Exact moments of the S-draw average, where a closed form exists.
    fn exact_moments(&self, _ctx: &Context, _s: u32) -> Option<ExactMoments> {
        None
    }

    /// Per-coordinate variance of the S-draw average that standard errors should not go
    /// below: the exact variance where a closed form exists; for a moving-average baseline,
    /// that of the fixed baseline the average converges to. With rare categories a sample
    /// variance misses the draws that never happened; this floor keeps tests honest.
    fn reference_variance(&self, ctx: &Context, s: u32) -> Option<Vec<f64>> {
        self.exact_moments(ctx, s).map(|m| m.var)
    }

    /// For estimators with a moving-average baseline: the value this repetition contributes
    /// to the average that later repetitions use (the average is never used by the
    /// repetition that produced it, so the estimator stays unbiased).
    fn baseline_signal(&self, _ctx: &Context, _counts: &[u32], _s: u32) -> Option<f64> {
        None
    }

    /// Score-function family: the S-draw estimate from the category counts (which sum to S)
    /// and the current moving-average baseline (0 where the estimator has none).
    fn estimate_from_counts(
        &self,
        _ctx: &Context,
        _counts: &[u32],
        _s: u32,
        _baseline: f64,
        _out: &mut [f64],
    ) {
        unreachable!("{} is not a score-function estimator", self.id())
    }

    /// Relaxed family: the sum of the per-draw estimates of the draws whose sums `m` holds,
    /// added to `acc`.
    fn add_relaxed_sum(&self, _ctx: &Context, _m: &RelaxedMoments, _acc: &mut [f64]) {
        unreachable!("{} is not a relaxed estimator", self.id())
    }

    /// Relaxed family: adds one draw's estimate to `acc`.
    fn add_relaxed_draw(&self, ctx: &Context, draw: RelaxedDraw<'_>, acc: &mut [f64]) {
        let mut m = RelaxedMoments::new(ctx.k);
        m.add_draw(draw.y, draw.z);
        self.add_relaxed_sum(ctx, &m, acc);
    }
}

impl std::fmt::Debug for dyn Estimator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.id())
    }
}

/// A bias-corrected exponential moving average (decay [`EMA_DECAY`]), 0 before any value.
#[derive(Clone, Copy, Debug, Default)]
pub struct MovingAverage {
    sum: f64,
    weight: f64,
}

impl MovingAverage {
    /// The current average of the values pushed so far (0 if none).
    pub fn value(&self) -> f64 {
        if self.weight > 0.0 {
            self.sum / self.weight
        } else {
            0.0
        }
    }

    /// Pushes a value.
    pub fn push(&mut self, v: f64) {
        self.sum = EMA_DECAY * self.sum + (1.0 - EMA_DECAY) * v;
        self.weight = EMA_DECAY * self.weight + (1.0 - EMA_DECAY);
    }
}
