//! Fault injection for the tests, so that they can prove what the suite claims: that the
//! regression check catches an estimator made noisier, biased, scaled by 1% or stripped of
//! its `1/tau`, and a hot path made slower, and that a results file that cannot be written (a
//! full disk) fails cleanly.
//!
//! Faults are a runtime switch that every build carries (so `cargo test --release` reuses the
//! release build of the library instead of compiling a second, feature-flagged one), but
//! they are reachable only through this library API, [`set`]: neither the command line nor
//! the environment can turn them on. With no fault set, each hook costs one relaxed atomic
//! load of a flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

/// The faults to inject.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Multiply this estimator's variance by a factor (its deviations from the exact gradient
    /// are scaled by the square root; the mean is unchanged).
    pub variance_factor: Option<(String, f64)>,
    /// Add `shift * ||g||` to coordinate 0 of this estimator's estimates (a bias).
    pub bias: Option<(String, f64)>,
    /// Multiply these estimators' estimates by a factor (a scale error: `1.01` is 1% too
    /// large, in mean and in standard deviation alike).
    pub scale: Vec<(String, f64)>,
    /// This estimator forgets its `1/tau`: its estimates are multiplied by the temperature
    /// (Gumbel-softmax's `(1/tau) J(y) grad f(y)` without the `1/tau`; invisible at tau = 1).
    pub drop_inverse_tau: Option<String>,
    /// Do this pass's draw work this many times (`score-function` or `relaxed`).
    pub slowdown: Option<(String, u32)>,
    /// Writing the results file of this name (`summary.json`, `curves.csv`, ...) fails as on
    /// a full disk.
    pub write_failure: Option<String>,
}

/// Whether a fault is set: the hooks' fast path reads only this.
static ACTIVE: AtomicBool = AtomicBool::new(false);
static FAULTS: RwLock<Option<Faults>> = RwLock::new(None);

/// Injects `faults` (process-wide) until [`clear`].
pub fn set(faults: Faults) {
    *FAULTS.write().unwrap_or_else(|e| e.into_inner()) = Some(faults);
    ACTIVE.store(true, Ordering::SeqCst);
}

/// Removes every fault.
pub fn clear() {
    ACTIVE.store(false, Ordering::SeqCst);
    *FAULTS.write().unwrap_or_else(|e| e.into_inner()) = None;
}

#[inline]
fn current() -> Option<Faults> {
    if !ACTIVE.load(Ordering::Relaxed) {
        return None;
    }
    FAULTS.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// How many times to do pass `pass`'s draw work (1 without faults).
#[inline]
pub(crate) fn repeat_pass(pass: &str) -> u32 {
    current()
        .and_then(|f| f.slowdown)
        .filter(|(p, _)| p == pass)
        .map_or(1, |(_, n)| n.max(1))
}

/// Applies the estimate faults for `estimator` (run at temperature `tau`, against the exact
/// gradient `exact`) to one estimate, in place.
#[inline]
pub(crate) fn distort(estimator: &str, tau: f64, exact: &[f64], estimate: &mut [f64]) {
    let Some(faults) = current() else { return };
    for (id, factor) in &faults.scale {
        if id == estimator {
            estimate.iter_mut().for_each(|e| *e *= factor);
        }
    }
    if faults.drop_inverse_tau.as_deref() == Some(estimator) {
        estimate.iter_mut().for_each(|e| *e *= tau);
    }
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
    ACTIVE.load(Ordering::Relaxed)
}

/// The error to report instead of writing the results file `name`, if a fault asks for one.
pub(crate) fn write_failure(name: &str) -> Option<std::io::Error> {
    current()
        .and_then(|f| f.write_failure)
        .filter(|n| n == name)
        .map(|_| {
            std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "no space left on device (injected fault)",
            )
        })
}
