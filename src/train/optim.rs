//! The optimisers that apply a gradient estimate to W: plain SGD, Adam and RMSprop, shared by
//! the digits classifier and the optimisation of any problem ([`crate::optimise`]).
//!
//! - SGD: `W <- W - lr G_hat`.
//! - Adam (Kingma & Ba 2015): `m <- b1 m + (1 - b1) G_hat`, `v <- b2 v + (1 - b2) G_hat^2`,
//!   `W <- W - lr m_hat / (sqrt(v_hat) + eps)` with the bias corrections
//!   `m_hat = m / (1 - b1^t)`, `v_hat = v / (1 - b2^t)`; `b1 = 0.9`, `b2 = 0.999`,
//!   `eps = 1e-8`.
//! - RMSprop (Tieleman & Hinton 2012, PyTorch's form and defaults): `v <- rho v + (1 - rho)
//!   G_hat^2`, `W <- W - lr G_hat / (sqrt(v) + eps)`; `rho = 0.99`, `eps = 1e-8`, `v` from 0,
//!   no momentum.

/// Which optimiser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Plain stochastic gradient descent (no momentum).
    Sgd,
    /// Adam with the usual constants.
    Adam,
    /// RMSprop with PyTorch's constants.
    RmsProp,
}

impl OptimizerKind {
    /// The name used on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
            OptimizerKind::RmsProp => "rmsprop",
        }
    }

    /// The default learning-rate grid that `--lr-grid` replaces (factors of about 3).
    pub fn default_grid(self) -> Vec<f64> {
        match self {
            OptimizerKind::Sgd => vec![0.03, 0.1, 0.3, 1.0, 3.0, 10.0],
            OptimizerKind::Adam | OptimizerKind::RmsProp => {
                vec![0.0003, 0.001, 0.003, 0.01, 0.03, 0.1]
            }
        }
    }

    /// The learning rate `mcgrad train --problem` uses when `--lr` is not given.
    pub fn default_problem_lr(self) -> f64 {
        match self {
            OptimizerKind::Sgd => 0.1,
            OptimizerKind::Adam | OptimizerKind::RmsProp => 0.01,
        }
    }
}

impl std::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for OptimizerKind {
    type Err = crate::Error;

    /// Parses `sgd`, `adam` or `rmsprop`.
    ///
    /// # Errors
    /// [`crate::Error::Unknown`] listing the known names.
    fn from_str(s: &str) -> crate::Result<Self> {
        [
            OptimizerKind::Sgd,
            OptimizerKind::Adam,
            OptimizerKind::RmsProp,
        ]
        .into_iter()
        .find(|o| o.name() == s)
        .ok_or_else(|| crate::Error::Unknown {
            kind: "optimizer",
            name: s.to_string(),
            known: "sgd, adam, rmsprop".into(),
        })
    }
}

/// Adam's first-moment decay.
pub const BETA1: f64 = 0.9;
/// Adam's second-moment decay.
pub const BETA2: f64 = 0.999;
/// Adam's denominator guard.
pub const EPS: f64 = 1e-8;
/// RMSprop's decay of the squared gradients (PyTorch's `alpha`).
pub const RMSPROP_RHO: f64 = 0.99;
/// RMSprop's denominator guard.
pub const RMSPROP_EPS: f64 = 1e-8;

/// An optimiser's state for one parameter vector.
#[derive(Clone, Debug)]
pub struct Optimizer {
    kind: OptimizerKind,
    lr: f64,
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl Optimizer {
    /// A fresh optimiser for `n` parameters at learning rate `lr`.
    pub fn new(kind: OptimizerKind, lr: f64, n: usize) -> Self {
        let (m, v) = match kind {
            OptimizerKind::Sgd => (0, 0),
            OptimizerKind::Adam => (n, n),
            OptimizerKind::RmsProp => (0, n),
        };
        Self {
            kind,
            lr,
            m: vec![0.0; m],
            v: vec![0.0; v],
            t: 0,
        }
    }

    /// One update of `w` with the gradient (estimate) `g`.
    pub fn step(&mut self, w: &mut [f64], g: &[f64]) {
        match self.kind {
            OptimizerKind::Sgd => w.iter_mut().zip(g).for_each(|(w, g)| *w -= self.lr * g),
            OptimizerKind::Adam => {
                self.t = self.t.saturating_add(1);
                let c1 = 1.0 - BETA1.powi(self.t);
                let c2 = 1.0 - BETA2.powi(self.t);
                for (((w, g), m), v) in w.iter_mut().zip(g).zip(&mut self.m).zip(&mut self.v) {
                    *m = BETA1 * *m + (1.0 - BETA1) * g;
                    *v = BETA2 * *v + (1.0 - BETA2) * g * g;
                    *w -= self.lr * (*m / c1) / ((*v / c2).sqrt() + EPS);
                }
            }
            OptimizerKind::RmsProp => {
                for ((w, g), v) in w.iter_mut().zip(g).zip(&mut self.v) {
                    *v = RMSPROP_RHO * *v + (1.0 - RMSPROP_RHO) * g * g;
                    *w -= self.lr * g / (v.sqrt() + RMSPROP_EPS);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_adam_step_moves_each_coordinate_by_lr() {
        let mut w = vec![1.0, -2.0, 0.5];
        let mut opt = Optimizer::new(OptimizerKind::Adam, 0.01, 3);
        opt.step(&mut w, &[3.0, -0.001, 0.0]);
        assert!((w[0] - 0.99).abs() < 1e-9);
        assert!((w[1] - (-1.99)).abs() < 1e-6);
        assert_eq!(w[2], 0.5);
    }

    #[test]
    fn first_rmsprop_step_moves_each_coordinate_by_lr_over_sqrt_one_minus_rho() {
        let mut w = vec![1.0, -2.0, 0.5];
        let mut opt = Optimizer::new(OptimizerKind::RmsProp, 0.01, 3);
        opt.step(&mut w, &[3.0, -0.5, 0.0]);
        // v = (1 - rho) g^2, so the step is lr sign(g) / sqrt(1 - rho) = 0.1 sign(g), less
        // the relative eps / sqrt(v) (below 1e-6 here).
        assert!((w[0] - 0.9).abs() < 1e-7);
        assert!((w[1] - (-1.9)).abs() < 1e-7);
        assert_eq!(w[2], 0.5);
    }

    #[test]
    fn sgd_step_is_lr_times_gradient() {
        let mut w = vec![1.0, 2.0];
        Optimizer::new(OptimizerKind::Sgd, 0.5, 2).step(&mut w, &[2.0, -2.0]);
        assert_eq!(w, vec![0.0, 3.0]);
    }
}
