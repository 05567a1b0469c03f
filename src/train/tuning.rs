//! Learning-rate tuning: a short run per rate of a grid, in parallel, each scored by the
//! exact loss of the validation set; the best rate then trains the reported run.

use rayon::prelude::*;

use crate::error::Result;
use crate::estimators::Estimator;

use super::config::TrainConfig;
use super::curves::{train_estimator_on, Curve, Record};
use super::data::Dataset;
use super::device::TrainEngine;

/// One tuning run's outcome.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct TuningPoint {
    /// Learning rate.
    pub lr: f64,
    /// Exact validation loss after the tuning run (infinite if it diverged).
    pub validation_loss: f64,
}

/// Tunes `est`'s learning rate over `grid`: a run of `tune_steps` steps per rate (in
/// parallel), scored by the exact loss of `validation`. Returns the best rate (ties go to
/// the smaller rate) and every score. Forward passes on the CPU (see [`tune_lr_on`]).
pub fn tune_lr(
    train: &Dataset,
    validation: &Dataset,
    est: &dyn Estimator,
    cfg: &TrainConfig,
    grid: &[f64],
    tune_steps: u32,
    progress: &(dyn Fn(u64) + Sync),
) -> (f64, Vec<TuningPoint>) {
    tune_lr_on(
        &TrainEngine::Cpu,
        train,
        validation,
        est,
        cfg,
        grid,
        tune_steps,
        progress,
    )
    .expect("the CPU forward pass cannot fail")
}

/// [`tune_lr`] with the forward passes on `engine` (the grid's runs share the device).
///
/// # Errors
/// [`crate::Error::Gpu`] if the GPU fails.
#[allow(clippy::too_many_arguments)]
pub fn tune_lr_on(
    engine: &TrainEngine,
    train: &Dataset,
    validation: &Dataset,
    est: &dyn Estimator,
    cfg: &TrainConfig,
    grid: &[f64],
    tune_steps: u32,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(f64, Vec<TuningPoint>)> {
    let short = TrainConfig {
        steps: tune_steps,
        ..*cfg
    };
    let scores: Vec<TuningPoint> =
        if let Some(spec) = super::resident::plan(engine, train, est, &short, grid.len() as u32) {
            // The whole grid in one session on the GPU, one workgroup per rate.
            super::resident::train_runs(
                engine,
                spec,
                train,
                validation,
                est,
                &short,
                grid,
                Record::FinalLoss,
                progress,
            )?
            .iter()
            .map(|c| score(c.lr, c))
            .collect()
        } else {
            grid.par_iter()
                .map(|&lr| {
                    let c = train_estimator_on(
                        engine,
                        train,
                        validation,
                        est,
                        &short,
                        lr,
                        Record::FinalLoss,
                        progress,
                    )?;
                    Ok(score(lr, &c))
                })
                .collect::<Result<_>>()?
        };
    let best = scores
        .iter()
        .fold(None::<TuningPoint>, |best, s| match best {
            Some(b)
                if b.validation_loss < s.validation_loss
                    || (b.validation_loss == s.validation_loss && b.lr <= s.lr) =>
            {
                Some(b)
            }
            _ => Some(*s),
        })
        .map_or(grid[0], |b| b.lr);
    Ok((best, scores))
}

/// A tuning run's score: its final validation loss, infinite if it diverged.
fn score(lr: f64, c: &Curve) -> TuningPoint {
    let l = c.last().heldout_loss;
    TuningPoint {
        lr,
        validation_loss: if l.is_finite() { l } else { f64::INFINITY },
    }
}
