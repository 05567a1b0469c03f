//! The structs the host shares with the kernels: `#[repr(C)]`, `bytemuck::Pod`, each kept in
//! sync with its twin in `shaders/common.wgsl` (or the kernel named on it), and the host-side
//! arithmetic that fills them from a sweep point (estimator descriptors, expected counts).

use bytemuck::{Pod, Zeroable};

use crate::draws::{CategoricalTable, RelaxedTable};
use crate::error::{Error, Result};
use crate::estimators::{Baseline, Constant, Context, Estimator, Lowering, MovingAverage, Signal};

/// Largest K the kernels serve (keep in sync with `MAX_K` in shaders/common.wgsl).
pub const MAX_K: usize = 16;
/// Largest number of relaxed cells per point (keep in sync with `MAX_RELAXED_CELLS`).
pub const MAX_RELAXED_CELLS: usize = 6;
/// A threshold no word passes, `word > NEVER` being false (keep in sync with `NEVER`).
pub const NEVER: u32 = u32::MAX;

/// Score-function cell baselines (keep in sync with `BASELINE_*` in shaders/common.wgsl).
pub const BASELINE_NONE: u32 = 0;
/// A bias-corrected moving average of earlier repetitions' mean loss signal.
pub const BASELINE_MOVING_AVERAGE: u32 = 1;
/// The mean loss signal of the repetition's own S draws (RLOO).
pub const BASELINE_LEAVE_ONE_OUT: u32 = 2;
/// Not a baseline but a cell kind: a hard-draw estimator (`st`, `reinmax`), whose estimate
/// `(1/S) sum_c n_c g(e_c)` reads [`ScoreCell::per_category`].
pub const CELL_HARD_DRAW: u32 = 3;
/// Relaxed cell kinds (keep in sync with `RELAXED_*`): Gumbel-softmax.
pub const RELAXED_SOFT: u32 = 0;
/// Straight-through Gumbel-softmax.
pub const RELAXED_STRAIGHT_THROUGH: u32 = 1;

/// The parameters of one dispatch. Keep in sync with `SweepParams` in shaders/common.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct SweepParams {
    /// The Philox key (the seed's halves).
    pub key: [u32; 2],
    /// Sweep point index (the counter's last word).
    pub point: u32,
    /// Draws per repetition S.
    pub samples: u32,
    /// Index within the point of the chunk's first repetition.
    pub rep_begin: u32,
    /// Repetitions in the chunk.
    pub chunk_reps: u32,
    /// First draw of this dispatch (a multiple of 4).
    pub draw_begin: u32,
    /// One past the last draw of this dispatch.
    pub draw_end: u32,
    /// Number of categories K.
    pub k: u32,
    /// Threads sharing one repetition (a power of two).
    pub threads_per_rep: u32,
    /// Cells (loss x estimator) of the family.
    pub n_cells: u32,
    /// `1 / tau` for the Gumbel softmax.
    pub inv_tau: f32,
    /// S as f32.
    pub samples_f: f32,
    /// Padding to 16 bytes.
    pub _pad: [u32; 3],
}

/// Per sweep point, shared by every cell. Keep in sync with `PointTable` in
/// shaders/common.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct PointTable {
    /// Inverse-CDF thresholds `S_j = ceil(C_j 2^32) - 1` of [`CategoricalTable`] (a draw's
    /// category is `#{j : word > S_j}`), [`NEVER`] from the last nonzero class on.
    pub thresholds: [u32; MAX_K],
    /// Probabilities `p`.
    pub p: [f32; MAX_K],
    /// `S p_j` rounded to f32.
    pub expected_hi: [f32; MAX_K],
    /// `S p_j - expected_hi_j` rounded to f32.
    pub expected_lo: [f32; MAX_K],
    /// `a - max(a)` for the Gumbel draws.
    pub shifted_logits: [f32; MAX_K],
    /// The first class with nonzero probability: the classes before it are never drawn
    /// (their thresholds, `C_j = 0`, would need `S_j = -1`).
    pub first_nonzero: u32,
    /// Padding to 16 bytes.
    pub _pad: [u32; 3],
}

impl PointTable {
    /// The table of probabilities `p` (f64, from the host's problem) at S draws.
    ///
    /// The categories drawn on the GPU compare the same 32-bit word with the same integer
    /// thresholds, and apply the same clamps, as [`CategoricalTable`], so they are the CPU's,
    /// bit for bit.
    pub fn new(p: &[f64], relaxed: &RelaxedTable, samples: u32) -> Self {
        let table = CategoricalTable::new(p);
        let mut thresholds = [NEVER; MAX_K];
        for (j, &t) in table.thresholds().iter().enumerate() {
            // Clamping to the last nonzero class is the same as never passing its threshold.
            thresholds[j] = if (j as u32) < table.last_nonzero() {
                t
            } else {
                NEVER
            };
        }
        let mut out = Self {
            thresholds,
            p: [0.0; MAX_K],
            expected_hi: [0.0; MAX_K],
            expected_lo: [0.0; MAX_K],
            shifted_logits: [0.0; MAX_K],
            first_nonzero: table.first_nonzero(),
            _pad: [0; 3],
        };
        for (j, &pj) in p.iter().enumerate() {
            let expected = f64::from(samples) * pj;
            out.p[j] = pj as f32;
            out.expected_hi[j] = expected as f32;
            out.expected_lo[j] = (expected - f64::from(out.expected_hi[j])) as f32;
        }
        out.shifted_logits[..p.len()].copy_from_slice(relaxed.shifted_logits());
        out
    }
}

/// One (loss, score-function estimator). Keep in sync with `ScoreCell` in
/// shaders/common.wgsl; shaders/score_function_moments.wgsl says what the fields mean.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct ScoreCell {
    /// The learning signal minus its mean under p: `Lt = L - p.L`.
    pub centred_signal: [f32; MAX_K],
    /// The deterministic part of the deviation: `scale S p_j Lt_j + c_j - g_j`.
    pub kappa: [f32; MAX_K],
    /// The exact gradient g.
    pub grad: [f32; MAX_K],
    /// `1/S`, or `1/(S-1)` for RLOO.
    pub scale: f32,
    /// `p.L`.
    pub mean_signal: f32,
    /// `BASELINE_*`, or [`CELL_HARD_DRAW`].
    pub baseline: u32,
    /// 1 where the cosine to g is defined (g != 0).
    pub cosine: u32,
    /// The warmed-up moving average before repetition 0 ([`crate::estimators::warmed_baseline`]),
    /// as its weighted sum of `b - p.L` and its weight (0 and 0: no warm-up).
    pub warm_sum: f32,
    /// The weight of [`Self::warm_sum`].
    pub warm_weight: f32,
    /// Padding to 16 bytes.
    pub _pad: [u32; 2],
    /// Hard-draw cells only: the per-draw estimate `g(e_c)_j` at `[c * MAX_K + j]`.
    pub per_category: [f32; MAX_K * MAX_K],
}

/// One (loss, relaxed estimator). Keep in sync with `RelaxedCell` in shaders/common.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct RelaxedCell {
    /// The loss's linear coefficients.
    pub beta: [f32; MAX_K],
    /// The exact gradient g.
    pub grad: [f32; MAX_K],
    /// The loss's coefficient of `||y||^2`.
    pub alpha: f32,
    /// `1 / tau` of the estimate's Jacobian.
    pub inv_tau: f32,
    /// `RELAXED_*`.
    pub kind: u32,
    /// 1 where the cosine to g is defined (g != 0).
    pub cosine: u32,
}

/// Partial moments of one scalar over a workgroup. Keep in sync with `PartialMoments` in
/// shaders/common.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct PartialMoments {
    /// Count.
    pub n: f32,
    /// Mean.
    pub mean: f32,
    /// Sum of squared deviations.
    pub m2: f32,
    /// Sum of cubed deviations.
    pub m3: f32,
    /// Sum of fourth-power deviations.
    pub m4: f32,
}

fn padded(v: &[f64]) -> [f32; MAX_K] {
    let mut out = [0.0; MAX_K];
    for (o, x) in out.iter_mut().zip(v) {
        *o = *x as f32;
    }
    out
}

fn cosine_defined(grad: &[f64]) -> u32 {
    u32::from(grad.iter().map(|g| g * g).sum::<f64>() > 0.0)
}

fn no_kernel(estimator: &dyn Estimator) -> Error {
    Error::InvalidArgument(format!(
        "estimator `{}` has no GPU lowering for this problem: use --backend cpu",
        estimator.id()
    ))
}

/// The GPU descriptor of a score-function estimator under one loss at S draws.
///
/// Every score-function lowering is `scale sum_k n_k (L_k - b) (e_k - p) + c` for a signal L,
/// a baseline b and a constant c; the estimator's [`Lowering`] says which.
///
/// # Errors
/// [`Error::InvalidArgument`] for an estimator without a score-function lowering, or a
/// problem with several variables.
pub fn score_cell(
    estimator: &dyn Estimator,
    ctx: &Context,
    samples: u32,
    warm: &MovingAverage,
) -> Result<ScoreCell> {
    let Some(Lowering::ScoreFunction {
        signal,
        baseline,
        constant,
    }) = estimator.lowering().filter(|_| ctx.l == 1)
    else {
        return Err(no_kernel(estimator));
    };
    let k = ctx.k;
    let zeros = vec![0.0; k];
    let s = f64::from(samples);
    // No signal (the exact gradient): the draws are read by nothing, the scale is 0.
    let (signal, scale, baseline): (&[f64], f64, u32) = match (signal, baseline) {
        (None, _) => (&zeros, 0.0, BASELINE_NONE),
        (Some(sig), b) => (
            match sig {
                Signal::Loss => &ctx.f,
                Signal::MupropResidual => &ctx.muprop_signal,
            },
            if b == Baseline::LeaveOneOut {
                1.0 / (s - 1.0)
            } else {
                1.0 / s
            },
            match b {
                Baseline::None => BASELINE_NONE,
                Baseline::MovingAverage => BASELINE_MOVING_AVERAGE,
                Baseline::LeaveOneOut => BASELINE_LEAVE_ONE_OUT,
            },
        ),
    };
    let constant: &[f64] = match constant {
        Constant::None => &zeros,
        Constant::MeanField => &ctx.muprop_mean_field,
        Constant::ExactGradient => &ctx.grad,
    };
    let mean_signal: f64 = ctx.p.iter().zip(signal).map(|(p, l)| p * l).sum();
    let centred: Vec<f64> = signal.iter().map(|l| l - mean_signal).collect();
    let kappa: Vec<f64> = (0..k)
        .map(|j| scale * s * ctx.p[j] * centred[j] + constant[j] - ctx.grad[j])
        .collect();
    Ok(ScoreCell {
        centred_signal: padded(&centred),
        kappa: padded(&kappa),
        grad: padded(&ctx.grad),
        scale: scale as f32,
        mean_signal: mean_signal as f32,
        baseline,
        cosine: cosine_defined(&ctx.grad),
        warm_sum: (warm.state().0 - mean_signal * warm.state().1) as f32,
        warm_weight: warm.state().1 as f32,
        _pad: [0; 2],
        per_category: [0.0; MAX_K * MAX_K],
    })
}

/// The GPU descriptor of a hard-draw estimator ([`Lowering::HardDraw`]: `st`, `reinmax`)
/// under one loss at S draws, with one variable.
///
/// Its S-draw estimate is `(1/S) sum_c n_c G_c` with `G_c = g(e_c)` the per-draw estimate at
/// category c, which the estimator's own counts lowering gives
/// ([`Estimator::estimate_from_counts`] of one draw of c: the CPU twin). With
/// `delta_c = n_c - S p_c` its deviation from the exact gradient is
/// `kappa + (1/S) sum_c delta_c G_c` with `kappa = sum_c p_c G_c - g` (the bias, in f64 here),
/// which keeps f32's digits however small the deviation.
///
/// # Errors
/// [`Error::InvalidArgument`] for an estimator without the hard-draw lowering, a problem
/// with several variables or K past [`MAX_K`].
pub fn hard_draw_cell(estimator: &dyn Estimator, ctx: &Context, samples: u32) -> Result<ScoreCell> {
    if estimator.lowering() != Some(Lowering::HardDraw) || ctx.l != 1 || ctx.k > MAX_K {
        return Err(no_kernel(estimator));
    }
    let k = ctx.k;
    let mut per_category = [0.0f32; MAX_K * MAX_K];
    let mut mean = vec![0.0f64; k];
    let mut one_draw = vec![0u32; k];
    let mut g = vec![0.0f64; k];
    for c in 0..k {
        one_draw.iter_mut().for_each(|n| *n = 0);
        one_draw[c] = 1;
        estimator.estimate_from_counts(ctx, &one_draw, 1, 0.0, &mut g);
        for j in 0..k {
            per_category[c * MAX_K + j] = g[j] as f32;
            mean[j] += ctx.p[c] * g[j];
        }
    }
    let kappa: Vec<f64> = mean.iter().zip(&ctx.grad).map(|(m, g)| m - g).collect();
    Ok(ScoreCell {
        centred_signal: [0.0; MAX_K],
        kappa: padded(&kappa),
        grad: padded(&ctx.grad),
        scale: (1.0 / f64::from(samples)) as f32,
        mean_signal: 0.0,
        baseline: CELL_HARD_DRAW,
        cosine: cosine_defined(&ctx.grad),
        warm_sum: 0.0,
        warm_weight: 0.0,
        _pad: [0; 2],
        per_category,
    })
}

/// The GPU descriptor of a relaxed estimator under one loss.
///
/// # Errors
/// [`Error::InvalidArgument`] for an estimator without a relaxed lowering, or a problem that
/// is not one variable under a quadratic loss.
pub fn relaxed_cell(estimator: &dyn Estimator, ctx: &Context) -> Result<RelaxedCell> {
    let (Some(Lowering::Relaxed { straight_through }), Some(quad), 1) =
        (estimator.lowering(), ctx.quad.as_ref(), ctx.l)
    else {
        return Err(no_kernel(estimator));
    };
    Ok(RelaxedCell {
        beta: padded(&quad.beta),
        grad: padded(&ctx.grad),
        alpha: quad.alpha as f32,
        inv_tau: (1.0 / ctx.tau) as f32,
        kind: if straight_through {
            RELAXED_STRAIGHT_THROUGH
        } else {
            RELAXED_SOFT
        },
        cosine: cosine_defined(&ctx.grad),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_wgsl_layouts() {
        // WGSL sizes: 16 scalars; 5 arrays of 16; 3 arrays of 16 + 4 + one of 256; 2 arrays + 4;
        // 5.
        assert_eq!(std::mem::size_of::<SweepParams>(), 64);
        assert_eq!(std::mem::size_of::<PointTable>(), 5 * 64 + 16);
        assert_eq!(std::mem::size_of::<ScoreCell>(), 3 * 64 + 32 + 16 * 64);
        assert_eq!(std::mem::size_of::<RelaxedCell>(), 2 * 64 + 16);
        assert_eq!(std::mem::size_of::<PartialMoments>(), 20);
    }

    #[test]
    fn clamped_classes_never_pass_their_threshold() {
        let p = [0.5, 0.5, 0.0, 0.0];
        let table = PointTable::new(&p, &RelaxedTable::new(&[0.0, 0.0, -1e9, -1e9], 1.0), 4);
        assert_eq!(
            &table.thresholds[..4],
            &[(1 << 31) - 1, NEVER, NEVER, NEVER]
        );
        assert_eq!(table.expected_hi[0], 2.0);
    }
}
