//! Records: what the suite reports for one (loss, estimator, S) — bias, variance, MSE,
//! cosine and signal-to-noise ratio, each with a standard error, beside the exact closed
//! forms. Logit-space moments become W-space figures through `||x||^2` (rank one; see
//! docs/estimators.md).

use serde::{Deserialize, Serialize};

use crate::engine::{Cell, PointMoments, SweepSpec};
use crate::estimators::{Context, Family};
use crate::oracle::ExactKind;

fn one() -> usize {
    1
}

/// The figures of one (loss, estimator, S).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Loss name.
    pub loss: String,
    /// Estimator id.
    pub estimator: String,
    /// `score-function` or `relaxed`.
    pub family: String,
    /// Whether the estimator is unbiased by construction.
    pub unbiased: bool,
    /// Draws per estimate S.
    pub samples: u32,
    /// Repetitions R.
    pub reps: u32,
    /// Number of variables L (1 where the summary predates several variables).
    #[serde(default = "one")]
    pub variables: usize,
    /// The gradient with respect to the logits (L*K, variable-major): exact, or a Monte Carlo
    /// reference where `exact_kind` says so.
    pub exact_grad: Vec<f64>,
    /// `"exact"` (closed form or enumeration) or `"reference"` (a long Monte Carlo run, with
    /// standard errors in `exact_grad_se`; never exact).
    #[serde(default)]
    pub exact_kind: Option<ExactKind>,
    /// Standard errors of a reference `exact_grad`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_grad_se: Option<Vec<f64>>,
    /// Loss evaluations of one S-draw estimate (a gradient of the loss counts as one).
    #[serde(default)]
    pub loss_evaluations: f64,
    /// Loss evaluations per draw, `loss_evaluations / S`.
    #[serde(default)]
    pub loss_evaluations_per_draw: f64,
    /// Work-normalised variance `total_var_w * loss_evaluations`: the variance at equal cost.
    #[serde(default)]
    pub work_var_w: f64,
    /// Monte Carlo mean of one S-draw estimate (K).
    pub mean: Vec<f64>,
    /// Standard error of `mean` (K).
    pub mean_se: Vec<f64>,
    /// Per-coordinate variance of the S-draw estimate across the R repetitions (K).
    pub var: Vec<f64>,
    /// Standard error of `var`, from the sample fourth moment (K).
    pub var_se: Vec<f64>,
    /// Exact per-coordinate variance (K), where a closed form exists.
    pub exact_var: Option<Vec<f64>>,
    /// `mean - exact_grad` (K).
    pub bias: Vec<f64>,
    /// `||bias||` in W space (`||x|| ||bias||`).
    pub bias_norm_w: f64,
    /// Standard error of `bias_norm_w` (its noise floor `||x|| sqrt(sum var / R)` included).
    pub bias_norm_w_se: f64,
    /// Why the standard errors (`mean_se`, `var_se`, and so the bias z and p-value) may be
    /// too small, where they come from the sample alone (no closed-form or reference variance
    /// floors them) and a category is too rare for the run to have seen its share of the
    /// variance (see [`rare_category_warning`]); absent where they are sound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub se_warning: Option<String>,
    /// Largest per-coordinate `|bias_j| / se_j`.
    pub bias_z_max: f64,
    /// Bonferroni p-value of "no bias" from `bias_z_max` (two-sided, K comparisons).
    pub bias_p_value: f64,
    /// Total variance in W space, `||x||^2 sum_j var_j`.
    pub total_var_w: f64,
    /// Standard error of `total_var_w` (conservative: the sum of the coordinates' errors).
    pub total_var_w_se: f64,
    /// Exact total variance in W space, where a closed form exists.
    pub exact_total_var_w: Option<f64>,
    /// Mean squared error in W space, `||x||^2 mean_r ||g_hat_r - g||^2`.
    pub mse_w: f64,
    /// Standard error of `mse_w`.
    pub mse_w_se: f64,
    /// Mean cosine similarity of an estimate to the exact gradient (none if g = 0).
    pub cosine: Option<f64>,
    /// Standard error of `cosine`.
    pub cosine_se: Option<f64>,
    /// Signal-to-noise ratio `||E g_hat|| / sqrt(sum_j Var g_hat_j)` (none if no variance).
    pub snr: Option<f64>,
    /// Standard error of `snr` (delta method).
    pub snr_se: Option<f64>,
    /// Wall seconds: its family's shared pass at this S plus its own reduction.
    pub seconds: f64,
    /// What the estimator's warm-up tuned before the measured repetitions (REBAR, RELAX):
    /// reported, not counted in `loss_evaluations`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_up: Option<String>,
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// The complementary error function (W. J. Cody's rational approximations are overkill
/// here; Numerical Recipes' erfc has relative error below 1.2e-7 everywhere).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// Two-sided normal tail probability `P(|Z| >= z)`.
pub fn normal_two_sided(z: f64) -> f64 {
    erfc(z / std::f64::consts::SQRT_2)
}

/// Expected draws of a category below which a sample variance is not trusted: with fewer, the
/// run sees the category's share of the variance with a relative error above 1/sqrt(25) = 20%,
/// or not at all (a class of `p = 1e-7` in 10^6 draws is never drawn).
pub const MIN_EXPECTED_DRAWS: f64 = 25.0;

/// The warning of a record whose standard errors come from the sample alone: the rarest
/// category (of any variable) whose expected number of draws in the cell, `R S p`, is below
/// [`MIN_EXPECTED_DRAWS`]; `None` if there is none. The score-function family's standard
/// errors are floored by their exact (or reference) variance instead, which sums over every
/// category with its exact probability, seen or not.
pub fn rare_category_warning(p: &[f64], k: usize, samples: u32, reps: u32) -> Option<String> {
    let draws = f64::from(samples) * f64::from(reps);
    let (index, &rarest) = p
        .iter()
        .enumerate()
        .filter(|(_, &q)| q > 0.0)
        .min_by(|a, b| a.1.total_cmp(b.1))?;
    let expected = draws * rarest;
    (expected < MIN_EXPECTED_DRAWS).then(|| {
        format!(
            "standard errors from the sample alone: category {} of variable {} (p = {rarest:.2e}) is expected {expected:.3} times in R x S = {draws} draws, so the sample can miss its share of the variance; mean_se, var_se and the bias p-value may be too small",
            index % k,
            index / k
        )
    })
}

impl Record {
    /// The record of one cell.
    pub fn new(cell: &Cell, ctx: &Context, samples: u32, reps: u32, x_norm_sq: f64) -> Self {
        let m = &cell.moments;
        let k = ctx.dim();
        let n = m.count();
        let mean: Vec<f64> = m.coords.iter().map(|c| c.mean).collect();
        let mean_se: Vec<f64> = m.coords.iter().map(|c| c.mean_se()).collect();
        let var: Vec<f64> = m.coords.iter().map(|c| c.variance()).collect();
        let var_se: Vec<f64> = m.coords.iter().map(|c| c.variance_se()).collect();
        let bias: Vec<f64> = mean.iter().zip(&ctx.grad).map(|(a, b)| a - b).collect();
        let exact = cell.estimator.exact_moments(ctx, samples);
        let evaluations = cell.estimator.loss_evaluations(ctx, samples);

        let x_norm = x_norm_sq.sqrt();
        let bias_sq: f64 = bias.iter().map(|b| b * b).sum();
        let sum_var: f64 = var.iter().sum();
        let bias_norm = bias_sq.sqrt();
        let noise_floor = (sum_var / n).sqrt();
        let delta_se = if bias_norm > 0.0 {
            (bias.iter().zip(&var).map(|(b, v)| b * b * v).sum::<f64>() / n).sqrt() / bias_norm
        } else {
            0.0
        };
        // A coordinate without variance is tested against rounding, at the scale of f.
        let scale: f64 = if ctx.l == 1 {
            ctx.p
                .iter()
                .zip(&ctx.f)
                .map(|(p, f)| p * f.abs())
                .sum::<f64>()
        } else {
            ctx.fbar.abs()
        }
        .max(1e-300);
        // Standard errors no smaller than the estimator's reference variance allows (rare
        // categories: see `Estimator::reference_variance`).
        let reference = cell.estimator.reference_variance(ctx, samples);
        let se_warning = if reference.is_none() {
            rare_category_warning(&ctx.p, ctx.k, samples, reps)
        } else {
            None
        };
        let bias_z_max = (0..k)
            .map(|j| {
                let floor = reference.as_ref().map_or(0.0, |v| (v[j] / n).sqrt());
                let se = mean_se[j].max(floor).max(1e-9 * scale);
                // Against a Monte Carlo reference, its own error adds.
                let se = ctx.grad_se.as_ref().map_or(se, |r| se.hypot(r[j]));
                bias[j].abs() / se
            })
            .fold(0.0, f64::max);
        let bias_p_value = (k as f64 * normal_two_sided(bias_z_max)).min(1.0);

        let signal: f64 = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
        let total_var_se: f64 = var_se.iter().sum();
        let snr = signal / sum_var.sqrt();
        let signal_se = if signal > 0.0 {
            (mean
                .iter()
                .zip(&var)
                .map(|(mu, v)| mu * mu * v)
                .sum::<f64>()
                / n)
                .sqrt()
                / signal
        } else {
            noise_floor
        };
        let snr_se =
            snr * ((signal_se / signal).powi(2) + (total_var_se / (2.0 * sum_var)).powi(2)).sqrt();

        Record {
            loss: ctx.loss.name().to_string(),
            estimator: cell.estimator.id().to_string(),
            family: match cell.estimator.family() {
                Family::ScoreFunction => "score-function".into(),
                Family::Relaxed => "relaxed".into(),
            },
            unbiased: cell.estimator.is_unbiased(),
            samples,
            reps,
            variables: ctx.l,
            exact_grad: ctx.grad.clone(),
            exact_kind: Some(ctx.grad_kind),
            exact_grad_se: ctx.grad_se.clone(),
            loss_evaluations: evaluations,
            loss_evaluations_per_draw: evaluations / f64::from(samples),
            work_var_w: x_norm_sq * sum_var * evaluations,
            exact_total_var_w: exact
                .as_ref()
                .map(|e| x_norm_sq * e.var.iter().sum::<f64>()),
            exact_var: exact.map(|e| e.var),
            mean,
            mean_se,
            var,
            var_se,
            bias,
            bias_norm_w: x_norm * bias_norm,
            bias_norm_w_se: x_norm * (delta_se * delta_se + noise_floor * noise_floor).sqrt(),
            se_warning,
            bias_z_max,
            bias_p_value,
            total_var_w: x_norm_sq * sum_var,
            total_var_w_se: x_norm_sq * total_var_se,
            mse_w: x_norm_sq * m.sq_error.mean,
            mse_w_se: x_norm_sq * m.sq_error.mean_se(),
            cosine: (m.cosine.n > 1.0).then_some(m.cosine.mean),
            cosine_se: (m.cosine.n > 1.0).then(|| m.cosine.mean_se()),
            snr: finite(snr).filter(|_| sum_var > 0.0),
            snr_se: finite(snr_se).filter(|_| sum_var > 0.0),
            seconds: cell.seconds,
            warm_up: cell.warm_up.clone(),
        }
    }
}

/// The records of a sweep, in point order, then loss, then estimator.
pub fn records(spec: &SweepSpec, points: &[PointMoments]) -> Vec<Record> {
    let x_norm_sq = spec.problem.x_norm_sq();
    let contexts = spec.contexts();
    points
        .iter()
        .flat_map(|point| {
            point.cells.iter().map(|cell| {
                let li = spec
                    .losses
                    .iter()
                    .position(|&l| l == cell.loss)
                    .unwrap_or(0);
                Record::new(cell, &contexts[li], point.samples, spec.reps, x_norm_sq)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erfc_matches_known_values() {
        assert!((erfc(0.0) - 1.0).abs() < 1e-7);
        assert!((normal_two_sided(1.959_963_985) - 0.05).abs() < 1e-7);
        assert!((erfc(-1.0) - 1.842_700_792_949_715).abs() < 1e-6);
    }
}
