//! The exact oracles: the true gradient of `E f(z)` and the exact moments of the estimators'
//! S-draw averages, for any number of variables L, in order of preference:
//! 1. one variable: closed forms over the K categories;
//! 2. a loss that is a sum of per-variable terms (`squared`, `linear`, `seed`, `pnorm`):
//!    closed forms for any L, from the cumulants of the other variables' terms (they add);
//! 3. otherwise, while `K^L <= `[`MAX_ENUMERATION`]: enumeration of the joint configurations,
//!    multi-threaded, in a fixed order (results do not depend on the thread count);
//! 4. otherwise a *reference* gradient from a long Monte Carlo run of RLOO, with its standard
//!    error, marked [`ExactKind::Reference`] and never presented as exact; no exact moments.
//!
//! Every per-draw estimator of the score-function family has the linear form
//! `g_hat_lj(z) = A(z) (1[z_l = j] - p_lj) + c_lj` for a scalar signal `A` (the loss, or
//! MuProp's residual, possibly centred). Given `z_l = k`, the estimate is
//! `alpha_k + beta_k A~` with `A~` the signal's deviation from its conditional mean, so its
//! central moments need only the conditional mean and central moments 2 to 4 of `A` given
//! `z_l = k` ([`Conditionals`]); both the closed forms and the enumeration produce those.
//! `docs/estimators.md` has the derivations.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use rayon::prelude::*;

use crate::draws::{draw_joint_categories, CategoricalTable};
use crate::estimators::{linear_form_moments as one_variable_moments, Constant, Context};
use crate::estimators::{ExactMoments, LinearForm, Signal};
use crate::philox::key_of;

/// Largest joint space `K^L` the oracles enumerate.
pub const MAX_ENUMERATION: u64 = 10_000_000;
/// Draws of the Monte Carlo reference: batches of RLOO estimates.
pub const REFERENCE_BATCHES: u32 = 64;
/// Draws per batch of the Monte Carlo reference.
pub const REFERENCE_BATCH_DRAWS: u32 = 4096;
/// Sweep-point word of the reference's Philox counters (no sweep reaches it).
const REFERENCE_POINT: u32 = u32::MAX;
/// Configurations per enumeration chunk (a fixed partition: thread-count independent sums).
const ENUMERATION_CHUNK: u64 = 1 << 14;

/// How a record's reference gradient was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExactKind {
    /// Exact: a closed form or enumeration.
    Exact,
    /// A Monte Carlo reference with a standard error: not exact.
    Reference,
}

/// The true gradient (or its reference) of one context.
#[derive(Clone, Debug, PartialEq)]
pub struct Truth {
    /// `E f(z)`.
    pub objective: f64,
    /// The gradient, L*K numbers.
    pub grad: Vec<f64>,
    /// Exact or reference.
    pub kind: ExactKind,
    /// Standard errors of a reference (L*K numbers).
    pub se: Option<Vec<f64>>,
}

/// How the oracles treat a context: which of the four ways applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// One variable.
    OneVariable,
    /// Separable loss, closed forms.
    Separable,
    /// Enumeration of `K^L` configurations.
    Enumeration,
    /// Monte Carlo reference only.
    Reference,
}

/// The oracle method for `ctx`.
pub fn method(ctx: &Context) -> Method {
    let joint = (ctx.k as u64).checked_pow(ctx.l.try_into().unwrap_or(u32::MAX));
    if ctx.l == 1 {
        Method::OneVariable
    } else if ctx.loss.is_separable() {
        Method::Separable
    } else if joint.is_some_and(|n| n <= MAX_ENUMERATION) {
        Method::Enumeration
    } else {
        Method::Reference
    }
}

/// Conditional moments of a signal `A` given `z_l = k`, for every (l, k) (L*K numbers each).
#[derive(Clone, Debug, PartialEq)]
pub struct Conditionals {
    /// `E[A | z_l = k]`.
    pub mean: Vec<f64>,
    /// `E[(A - E[A | z_l = k])^n | z_l = k]` for n = 2, 3, 4.
    pub central: [Vec<f64>; 3],
    /// `E A`.
    pub overall_mean: f64,
}

/// The true gradient of a multi-variable context (one variable is handled by `Context`).
pub fn gradient(ctx: &Context) -> Truth {
    match method(ctx) {
        Method::OneVariable | Method::Separable | Method::Enumeration => {
            let cond =
                conditionals(ctx, Signal::Loss, false).expect("closed forms or enumeration apply");
            let f = cond.overall_mean;
            let grad = cond
                .mean
                .iter()
                .zip(&ctx.p)
                .map(|(m, p)| p * (m - f))
                .collect();
            Truth {
                objective: f,
                grad,
                kind: ExactKind::Exact,
                se: None,
            }
        }
        Method::Reference => cached_reference(ctx),
    }
}

/// The conditional moments of signal `signal` (centred by its exact mean if `centred`), or
/// `None` where neither closed forms nor enumeration apply (or MuProp's residual is asked for
/// a loss with no extension).
pub fn conditionals(ctx: &Context, signal: Signal, centred: bool) -> Option<Conditionals> {
    conditionals_by(ctx, method(ctx), signal, centred)
}

/// [`conditionals`] by a chosen method (tests cross-check the closed forms against
/// enumeration this way). Enumeration needs `K^L <= `[`MAX_ENUMERATION`], the closed forms a
/// separable loss.
///
/// # Panics
/// For a method that does not apply to `ctx`.
pub fn conditionals_by(
    ctx: &Context,
    method: Method,
    signal: Signal,
    centred: bool,
) -> Option<Conditionals> {
    if signal == Signal::MupropResidual && ctx.mean_field.is_none() {
        return None;
    }
    let mut cond = match method {
        Method::OneVariable | Method::Separable => {
            assert!(
                ctx.loss.is_separable(),
                "closed forms need a separable loss"
            );
            separable_conditionals(ctx, signal)
        }
        Method::Enumeration => {
            let joint = (ctx.k as u64).checked_pow(ctx.l as u32);
            assert!(
                joint.is_some_and(|n| n <= MAX_ENUMERATION),
                "too many configurations"
            );
            enumerated_conditionals(ctx, signal)
        }
        Method::Reference => return None,
    };
    if centred {
        let shift = cond.overall_mean;
        cond.mean.iter_mut().for_each(|m| *m -= shift);
        cond.overall_mean = 0.0;
    }
    Some(cond)
}

/// Per-variable terms of the signal: `A(z) = constant + sum_l terms[l*K + z_l]`.
fn separable_signal(ctx: &Context, signal: Signal) -> (Vec<f64>, f64) {
    let (l, k) = (ctx.l, ctx.k);
    match signal {
        Signal::Loss => ctx
            .objective
            .separable_terms()
            .expect("a separable loss has per-variable terms"),
        Signal::MupropResidual => {
            // rho_m(j) = f(p with block m set to e_j) - f(p) - grad_m f(p) . (e_j - p_m): for a
            // separable f, the residual is the sum of these.
            let m = ctx.mean_field.as_ref().expect("checked by the caller");
            let mut terms = vec![0.0; l * k];
            let mut y = ctx.p.clone();
            for var in 0..l {
                let block = var * k..(var + 1) * k;
                for j in 0..k {
                    y[block.clone()].iter_mut().for_each(|v| *v = 0.0);
                    y[var * k + j] = 1.0;
                    let f = ctx.objective.value(&y).expect("the loss extends");
                    terms[var * k + j] = f - m.value - (m.grad[var * k + j] - m.grad_dot_p[var]);
                }
                y[block.clone()].copy_from_slice(&ctx.p[block]);
            }
            (terms, 0.0)
        }
    }
}

fn separable_conditionals(ctx: &Context, signal: Signal) -> Conditionals {
    let (l, k) = (ctx.l, ctx.k);
    let (terms, constant) = separable_signal(ctx, signal);
    // Mean and cumulants 2..4 of each variable's term.
    let mut means = vec![0.0; l];
    let mut kappa = vec![[0.0; 3]; l];
    for var in 0..l {
        let (t, p) = (
            &terms[var * k..(var + 1) * k],
            &ctx.p[var * k..(var + 1) * k],
        );
        let mu: f64 = t.iter().zip(p).map(|(a, b)| a * b).sum();
        let (mut m2, mut m3, mut m4) = (0.0, 0.0, 0.0);
        for (ti, pi) in t.iter().zip(p) {
            let d = ti - mu;
            m2 += pi * d * d;
            m3 += pi * d * d * d;
            m4 += pi * d * d * d * d;
        }
        means[var] = mu;
        kappa[var] = [m2, m3, m4 - 3.0 * m2 * m2];
    }
    let overall_mean = constant + means.iter().sum::<f64>();
    let mut mean = vec![0.0; l * k];
    let mut central = [vec![0.0; l * k], vec![0.0; l * k], vec![0.0; l * k]];
    for var in 0..l {
        // The other variables' sum R: its mean and cumulants add.
        let (mut mu_r, mut k2, mut k3, mut k4) = (0.0, 0.0, 0.0, 0.0);
        for other in (0..l).filter(|&o| o != var) {
            mu_r += means[other];
            k2 += kappa[other][0];
            k3 += kappa[other][1];
            k4 += kappa[other][2];
        }
        for j in 0..k {
            let i = var * k + j;
            mean[i] = constant + terms[i] + mu_r;
            central[0][i] = k2;
            central[1][i] = k3;
            central[2][i] = k4 + 3.0 * k2 * k2;
        }
    }
    Conditionals {
        mean,
        central,
        overall_mean,
    }
}

/// Walks every joint configuration in fixed chunks, calling `visit(z, P(z))`; the chunks'
/// accumulators `T` are summed in chunk order.
fn enumerate<T: Send>(
    ctx: &Context,
    init: impl Fn() -> T + Sync,
    visit: impl Fn(&mut T, &[u32], f64) + Sync,
    merge: impl Fn(&mut T, T),
) -> T {
    let (l, k) = (ctx.l, ctx.k as u64);
    let total = k.pow(l as u32);
    let chunks = total.div_ceil(ENUMERATION_CHUNK);
    let parts: Vec<T> = (0..chunks)
        .into_par_iter()
        .map(|c| {
            let mut acc = init();
            let first = c * ENUMERATION_CHUNK;
            let last = (first + ENUMERATION_CHUNK).min(total);
            // Decode the first index, z_0 most significant.
            let mut z = vec![0u32; l];
            let mut rest = first;
            for var in (0..l).rev() {
                z[var] = (rest % k) as u32;
                rest /= k;
            }
            for _ in first..last {
                let prob: f64 = z
                    .iter()
                    .enumerate()
                    .map(|(var, &c)| ctx.p[var * ctx.k + c as usize])
                    .product();
                visit(&mut acc, &z, prob);
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
    let mut out = init();
    for part in parts {
        merge(&mut out, part);
    }
    out
}

fn enumerated_conditionals(ctx: &Context, signal: Signal) -> Conditionals {
    let n = ctx.dim();
    let k = ctx.k;
    let value = |z: &[u32]| {
        let f = ctx.objective.at_vertex(z);
        match signal {
            Signal::Loss => f,
            Signal::MupropResidual => ctx.muprop_residual(z, f),
        }
    };
    let add = |a: &mut Vec<f64>, b: Vec<f64>| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
    // Pass 1: sum of P(z) and P(z) A(z) per (l, z_l), and E A.
    let first = enumerate(
        ctx,
        || vec![0.0; 2 * n + 1],
        |acc, z, prob| {
            let a = value(z);
            for (var, &c) in z.iter().enumerate() {
                acc[var * k + c as usize] += prob;
                acc[n + var * k + c as usize] += prob * a;
            }
            acc[2 * n] += prob * a;
        },
        add,
    );
    let mean: Vec<f64> = (0..n)
        .map(|i| {
            if first[i] > 0.0 {
                first[n + i] / first[i]
            } else {
                0.0
            }
        })
        .collect();
    // Pass 2: central moments about the conditional means.
    let second = enumerate(
        ctx,
        || vec![0.0; 3 * n],
        |acc, z, prob| {
            let a = value(z);
            for (var, &c) in z.iter().enumerate() {
                let i = var * k + c as usize;
                let d = a - mean[i];
                acc[i] += prob * d * d;
                acc[n + i] += prob * d * d * d;
                acc[2 * n + i] += prob * d * d * d * d;
            }
        },
        add,
    );
    let cond = |offset: usize| -> Vec<f64> {
        (0..n)
            .map(|i| {
                if first[i] > 0.0 {
                    second[offset + i] / first[i]
                } else {
                    0.0
                }
            })
            .collect()
    };
    Conditionals {
        central: [cond(0), cond(n), cond(2 * n)],
        mean,
        overall_mean: first[2 * n],
    }
}

/// Per-coordinate mean, variance and fourth central moment of one draw's
/// `A (1[z_l = j] - p_lj) + c_lj`.
pub fn single_draw_moments(ctx: &Context, cond: &Conditionals, c: &[f64]) -> [Vec<f64>; 3] {
    let (l, k) = (ctx.l, ctx.k);
    let n = l * k;
    let (mut mean, mut var, mut m4) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    for var_index in 0..l {
        let p = &ctx.p[var_index * k..(var_index + 1) * k];
        for j in 0..k {
            let i = var_index * k + j;
            let score = |cat: usize| f64::from(u8::from(cat == j)) - p[j];
            let alpha = |cat: usize| cond.mean[var_index * k + cat] * score(cat) + c[i];
            let mu: f64 = (0..k).map(|cat| p[cat] * alpha(cat)).sum();
            let (mut q2, mut q4) = (0.0, 0.0);
            for (cat, pc) in p.iter().enumerate() {
                let ci = var_index * k + cat;
                let (d, b) = (alpha(cat) - mu, score(cat));
                let (c2, c3, c4) = (
                    cond.central[0][ci],
                    cond.central[1][ci],
                    cond.central[2][ci],
                );
                q2 += pc * (d * d + b * b * c2);
                q4 += pc
                    * (d * d * d * d
                        + 6.0 * d * d * b * b * c2
                        + 4.0 * d * b * b * b * c3
                        + b * b * b * b * c4);
            }
            mean[i] = mu;
            var[i] = q2;
            m4[i] = q4;
        }
    }
    [mean, var, m4]
}

/// The moments of the mean of S iid draws of a per-draw estimate with the given single-draw
/// moments: `Var / S` and `(mu4 + 3 (S - 1) sigma^4) / S^3`.
pub fn average_of(single: [Vec<f64>; 3], s: u32) -> ExactMoments {
    let s = f64::from(s);
    let [mean, var, m4] = single;
    let m4 = m4
        .iter()
        .zip(&var)
        .map(|(q4, m2)| (q4 + 3.0 * (s - 1.0) * m2 * m2) / (s * s * s))
        .collect();
    ExactMoments {
        mean,
        var: var.iter().map(|v| v / s).collect(),
        m4: Some(m4),
    }
}

/// The constant term `c` of a linear form (L*K numbers).
pub fn constant_of(ctx: &Context, constant: Constant) -> Vec<f64> {
    match constant {
        Constant::None => vec![0.0; ctx.dim()],
        Constant::MeanField => ctx.muprop_mean_field.clone(),
        Constant::ExactGradient => ctx.grad.clone(),
    }
}

/// Exact moments of the S-draw average of iid draws of `form`, where the problem allows.
pub fn linear_form_moments(ctx: &Context, form: LinearForm, s: u32) -> Option<ExactMoments> {
    let c = constant_of(ctx, form.constant);
    if ctx.l == 1 {
        let signal = match form.signal {
            Signal::Loss => ctx.f.clone(),
            Signal::MupropResidual if ctx.mean_field.is_some() => ctx.muprop_signal.clone(),
            Signal::MupropResidual => return None,
        };
        let signal = if form.centred {
            let mean: f64 = ctx.p.iter().zip(&signal).map(|(p, v)| p * v).sum();
            signal.iter().map(|v| v - mean).collect()
        } else {
            signal
        };
        return Some(one_variable_moments(&ctx.p, &signal, &c, s));
    }
    let cond = conditionals(ctx, form.signal, form.centred)?;
    Some(average_of(single_draw_moments(ctx, &cond, &c), s))
}

/// `Var f(z)` over the joint draw, where the oracles apply.
pub fn loss_variance(ctx: &Context) -> Option<f64> {
    let cond = conditionals(ctx, Signal::Loss, false)?;
    // Total variance through variable 0: E Var(f | z_0) + Var E(f | z_0).
    Some(
        (0..ctx.k)
            .map(|j| ctx.p[j] * (cond.central[0][j] + (cond.mean[j] - cond.overall_mean).powi(2)))
            .sum(),
    )
}

fn fingerprint(ctx: &Context) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (ctx.l, ctx.k, ctx.loss).hash(&mut h);
    ctx.logits.iter().for_each(|v| v.to_bits().hash(&mut h));
    format!("{:?}", ctx.objective).hash(&mut h);
    h.finish()
}

static REFERENCES: Mutex<Option<HashMap<u64, Truth>>> = Mutex::new(None);

fn cached_reference(ctx: &Context) -> Truth {
    let key = fingerprint(ctx);
    if let Some(t) = REFERENCES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .get(&key)
    {
        return t.clone();
    }
    let truth = reference(ctx);
    REFERENCES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(key, truth.clone());
    truth
}

/// The Monte Carlo reference: the mean of [`REFERENCE_BATCHES`] RLOO estimates of
/// [`REFERENCE_BATCH_DRAWS`] draws each (RLOO: the lowest-variance unbiased estimator that
/// needs no extension), its standard error from their spread. Fixed key and counters, so a
/// problem has one reference whatever the run's seed.
pub fn reference(ctx: &Context) -> Truth {
    let (l, k, n) = (ctx.l, ctx.k, ctx.dim());
    let s = REFERENCE_BATCH_DRAWS as usize;
    let tables: Vec<CategoricalTable> = ctx.p.chunks(k).map(CategoricalTable::new).collect();
    let key = key_of(0x7265_6665_7265_6e63);
    let batches: Vec<(Vec<f64>, f64)> = (0..REFERENCE_BATCHES)
        .into_par_iter()
        .map(|b| {
            let mut z = vec![0u32; s * l];
            draw_joint_categories(&tables, key, b, REFERENCE_POINT, s as u32, &mut z);
            let f: Vec<f64> = z
                .chunks_exact(l)
                .map(|zi| ctx.objective.at_vertex(zi))
                .collect();
            let mean_f = f.iter().sum::<f64>() / s as f64;
            let mut g = vec![0.0; n];
            for (zi, fi) in z.chunks_exact(l).zip(&f) {
                for (var, &c) in zi.iter().enumerate() {
                    g[var * k + c as usize] += fi - mean_f;
                }
            }
            // sum_i (f_i - mean) p = 0: the score's -p term vanishes for RLOO.
            g.iter_mut().for_each(|v| *v /= (s - 1) as f64);
            (g, mean_f)
        })
        .collect();
    let nb = f64::from(REFERENCE_BATCHES);
    let mut grad = vec![0.0; n];
    let mut objective = 0.0;
    for (g, f) in &batches {
        grad.iter_mut().zip(g).for_each(|(a, b)| *a += b / nb);
        objective += f / nb;
    }
    let se = (0..n)
        .map(|i| {
            let ss: f64 = batches.iter().map(|(g, _)| (g[i] - grad[i]).powi(2)).sum();
            (ss / (nb - 1.0) / nb).sqrt()
        })
        .collect();
    Truth {
        objective,
        grad,
        kind: ExactKind::Reference,
        se: Some(se),
    }
}
