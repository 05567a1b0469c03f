//! Test-only fault injection, so that the regression check's tests can prove it catches what
//! it claims: an estimator made noisier or biased, a hot path made slower. Compiled only with
//! the `fault-injection` feature (which `cargo test` turns on through a dev-dependency);
//! otherwise every hook is a constant the optimiser removes.

/// The faults to inject.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Multiply this estimator's variance by a factor (its deviations from the exact gradient
    /// are scaled by the square root; the mean is unchanged).
    pub variance_factor: Option<(String, f64)>,
    /// Add `shift * ||g||` to coordinate 0 of this estimator's estimates (a bias).
    pub bias: Option<(String, f64)>,
    /// Do this pass's draw work this many times (`score-function` or `relaxed`).
    pub slowdown: Option<(String, u32)>,
}

#[cfg(feature = "fault-injection")]
mod active {
    use super::Faults;
    use std::sync::RwLock;

    static FAULTS: RwLock<Option<Faults>> = RwLock::new(None);

    /// Injects `faults` until [`clear`].
    pub fn set(faults: Faults) {
        *FAULTS.write().unwrap_or_else(|e| e.into_inner()) = Some(faults);
    }

    /// Removes every fault.
    pub fn clear() {
        *FAULTS.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub(crate) fn current() -> Option<Faults> {
        FAULTS.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(feature = "fault-injection")]
pub use active::{clear, set};

#[cfg(feature = "fault-injection")]
fn current() -> Option<Faults> {
    active::current()
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
fn current() -> Option<Faults> {
    None
}

/// How many times to do pass `pass`'s draw work (1 without faults).
#[inline]
pub(crate) fn repeat_pass(pass: &str) -> u32 {
    current()
        .and_then(|f| f.slowdown)
        .filter(|(p, _)| p == pass)
        .map_or(1, |(_, n)| n.max(1))
}

/// Applies the estimate faults for `estimator` to one estimate, in place.
#[inline]
pub(crate) fn distort(estimator: &str, exact: &[f64], estimate: &mut [f64]) {
    let Some(faults) = current() else { return };
    if let Some((id, factor)) = &faults.variance_factor {
        if id == estimator {
            let scale = factor.sqrt();
            for (e, g) in estimate.iter_mut().zip(exact) {
                *e = g + scale * (*e - g);
            }
        }
    }
    if let Some((id, shift)) = &faults.bias {
        if id == estimator {
            let norm = exact.iter().map(|g| g * g).sum::<f64>().sqrt();
            estimate[0] += shift * norm;
        }
    }
}

/// Whether any fault is set (so hot loops can skip the per-estimate hook).
#[inline]
pub(crate) fn any() -> bool {
    current().is_some()
}
