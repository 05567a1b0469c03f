//! The gradient-variance probes of an optimisation run: the total W-space variance
//! `||x||^2 sum_j Var(g_hat_j)` of one estimator's S-draw estimate at the current parameters.
//!
//! - **Exact** where the estimator's moments have a closed form or an enumeration on the
//!   problem ([`Estimator::exact_moments`]), and for the score-function estimators with a
//!   moving-average baseline `b` held fixed (`reinforce-ema`, `muprop-c`): their S-draw
//!   estimate is then the mean of S iid draws of the linear form
//!   `(A(z) - b)(e_{z_l} - p_l) + c`, whose moments the oracle gives from the conditional
//!   moments of the signal `A` ([`oracle::single_draw_moments`], [`oracle::average_of`]).
//! - **Monte Carlo** otherwise (or everywhere with [`VarianceMode::MonteCarlo`]): the sample
//!   variance of `R` estimates at repetitions `0..R` of the probe key.

use crate::estimators::{
    estimate_at_with, Baseline, Context, DrawBuffers, Estimator, ExactMoments, Lowering, Signal,
};
use crate::oracle::{self, Conditionals, ExactKind, Method};
use crate::stats::Moments;

use super::{EstimatorVariance, OptimiseSpec, VarianceMethod, VarianceMode};

/// The baseline a moving average converges to at fixed parameters: the mean of its signal
/// (`E f`, or MuProp's `E[f(z) - f(p) - grad f(p) . (y_z - p)] = E f - f(p)`); 0 for an
/// estimator without a moving average. `objective` is `E f` (exact or reference).
pub fn ideal_baseline(est: &dyn Estimator, ctx: &Context, objective: f64) -> f64 {
    match est.lowering() {
        Some(Lowering::ScoreFunction {
            signal: Some(signal),
            baseline: Baseline::MovingAverage,
            ..
        }) => match (signal, &ctx.mean_field) {
            (Signal::MupropResidual, Some(m)) => objective - m.value,
            _ => objective,
        },
        _ => 0.0,
    }
}

/// The conditional moments of a signal with one variable: deterministic given `z`.
fn one_variable_conditionals(ctx: &Context, signal: Signal) -> Option<Conditionals> {
    let values = match signal {
        Signal::Loss => ctx.f.clone(),
        Signal::MupropResidual if ctx.mean_field.is_some() => ctx.muprop_signal.clone(),
        Signal::MupropResidual => return None,
    };
    let overall_mean = ctx.p.iter().zip(&values).map(|(p, v)| p * v).sum();
    let zeros = vec![0.0; ctx.k];
    Some(Conditionals {
        mean: values,
        central: [zeros.clone(), zeros.clone(), zeros],
        overall_mean,
    })
}

/// The exact moments of `est`'s S-draw estimate at `ctx` (which must hold the oracle's
/// truth), with a moving-average baseline held at `baseline`, where they are known.
pub fn exact_moments_at(
    est: &dyn Estimator,
    ctx: &Context,
    s: u32,
    baseline: f64,
) -> Option<ExactMoments> {
    if ctx.grad_kind == ExactKind::Reference {
        return None;
    }
    match est.lowering() {
        Some(Lowering::ScoreFunction {
            signal: Some(signal),
            baseline: Baseline::MovingAverage,
            constant,
        }) => {
            let mut cond = if ctx.l == 1 {
                one_variable_conditionals(ctx, signal)?
            } else {
                oracle::conditionals(ctx, signal, false)?
            };
            cond.mean.iter_mut().for_each(|m| *m -= baseline);
            cond.overall_mean -= baseline;
            let c = oracle::constant_of(ctx, constant);
            Some(oracle::average_of(
                oracle::single_draw_moments(ctx, &cond, &c),
                s,
            ))
        }
        _ => est.exact_moments(ctx, s),
    }
}

/// `sum_j Var(g_hat_j)` of [`exact_moments_at`], where known.
pub fn exact_variance(est: &dyn Estimator, ctx: &Context, s: u32, baseline: f64) -> Option<f64> {
    exact_moments_at(est, ctx, s, baseline).map(|m| m.var.iter().sum())
}

/// The label of an exact variance on `ctx`.
fn exact_method(ctx: &Context) -> VarianceMethod {
    match oracle::method(ctx) {
        Method::OneVariable | Method::Separable => VarianceMethod::ClosedForm,
        _ => VarianceMethod::Enumeration,
    }
}

/// `sum_j Var(g_hat_j)` by Monte Carlo: the sample variance of `reps` estimates at
/// repetitions `0..reps` of `key` at point `step`.
#[allow(clippy::too_many_arguments)]
pub fn monte_carlo_variance(
    est: &dyn Estimator,
    ctx: &Context,
    s: u32,
    baseline: f64,
    key: [u32; 2],
    step: u32,
    reps: u32,
) -> f64 {
    let mut coords = vec![Moments::default(); ctx.dim()];
    let mut g = vec![0.0; ctx.dim()];
    let mut buffers = DrawBuffers::default();
    for r in 0..reps {
        estimate_at_with(&mut buffers, est, ctx, key, r, step, s, baseline, &mut g);
        coords.iter_mut().zip(&g).for_each(|(m, v)| m.push(*v));
    }
    coords.iter().map(Moments::variance).sum()
}

/// The W-space variance of `est` at `ctx` (with the oracle's truth where it applies), with
/// a moving-average baseline held at `baseline`; exact where known unless the spec asks for
/// Monte Carlo.
pub fn probe(
    est: &dyn Estimator,
    ctx: &Context,
    spec: &OptimiseSpec,
    baseline: f64,
    key: [u32; 2],
    step: u32,
    x_norm_sq: f64,
) -> EstimatorVariance {
    let exact = match spec.variance_mode {
        VarianceMode::ExactWhereAvailable => exact_variance(est, ctx, spec.samples, baseline),
        VarianceMode::MonteCarlo => None,
    };
    match exact {
        Some(v) => EstimatorVariance {
            estimator: est.id(),
            variance: x_norm_sq * v,
            method: exact_method(ctx),
            reps: None,
        },
        None => EstimatorVariance {
            estimator: est.id(),
            variance: x_norm_sq
                * monte_carlo_variance(
                    est,
                    ctx,
                    spec.samples,
                    baseline,
                    key,
                    step,
                    spec.variance_reps,
                ),
            method: VarianceMethod::MonteCarlo,
            reps: Some(spec.variance_reps),
        },
    }
}
