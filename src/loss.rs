//! The losses `f(z)` paid after the draw. All three are quadratic forms
//! `f(y) = alpha ||y||^2 + beta . y + gamma` of the one-hot (or relaxed) `y`, so one GPU code
//! path serves them all: the params buffer carries `alpha`, `beta` and `gamma`.
//!
//! Off the vertices (MuProp's mean-field point `p`, Gumbel-softmax's relaxed `y`) each loss is
//! extended by its own formula, as stated on each variant.

use crate::error::{Error, Result};

/// A loss of the one-hot draw, with its extension to the simplex.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    /// `f(y) = sum(T - y)`, the origin notebook's loss, extended by the same formula. On any
    /// one-hot `z` it is the constant `sum(T) - 1`, so the true gradient is exactly 0.
    Seed,
    /// `f(y) = ||T - y||^2`, extended by the same formula; `grad f = 2 (y - T)`.
    Squared,
    /// `f(y) = T . y` (a per-class cost), extended linearly; `grad f = T`.
    Linear,
}

/// The coefficients of `f(y) = alpha ||y||^2 + beta . y + gamma`.
#[derive(Clone, Debug, PartialEq)]
pub struct Quadratic {
    /// Coefficient of `||y||^2`.
    pub alpha: f64,
    /// Linear coefficients, K numbers.
    pub beta: Vec<f64>,
    /// Constant term.
    pub gamma: f64,
}

impl Quadratic {
    /// `f(y)`.
    pub fn value(&self, y: &[f64]) -> f64 {
        let sq: f64 = y.iter().map(|v| v * v).sum();
        let lin: f64 = y.iter().zip(&self.beta).map(|(a, b)| a * b).sum();
        self.alpha * sq + lin + self.gamma
    }

    /// `grad f(y) = 2 alpha y + beta`.
    pub fn grad(&self, y: &[f64]) -> Vec<f64> {
        y.iter().zip(&self.beta).map(|(v, b)| 2.0 * self.alpha * v + b).collect()
    }

    /// `f(e_k)` for every k: `alpha + beta_k + gamma`.
    pub fn vertex_values(&self) -> Vec<f64> {
        self.beta.iter().map(|b| self.alpha + b + self.gamma).collect()
    }
}

impl Loss {
    /// Every loss, in the default order of a sweep.
    pub const ALL: [Loss; 3] = [Loss::Squared, Loss::Seed, Loss::Linear];

    /// The name used on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Loss::Seed => "seed",
            Loss::Squared => "squared",
            Loss::Linear => "linear",
        }
    }

    /// Parses a name.
    ///
    /// # Errors
    /// [`Error::Unknown`] listing the known losses.
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|l| l.name() == name).ok_or_else(|| Error::Unknown {
            kind: "loss",
            name: name.to_string(),
            known: Self::ALL.map(Loss::name).join(", "),
        })
    }

    /// The quadratic form of this loss for target `t`.
    pub fn quadratic(self, t: &[f64]) -> Quadratic {
        match self {
            Loss::Seed => Quadratic { alpha: 0.0, beta: vec![-1.0; t.len()], gamma: t.iter().sum() },
            Loss::Squared => Quadratic {
                alpha: 1.0,
                beta: t.iter().map(|v| -2.0 * v).collect(),
                gamma: t.iter().map(|v| v * v).sum(),
            },
            Loss::Linear => Quadratic { alpha: 0.0, beta: t.to_vec(), gamma: 0.0 },
        }
    }
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(loss: Loss, t: &[f64], y: &[f64]) -> f64 {
        match loss {
            Loss::Seed => t.iter().zip(y).map(|(a, b)| a - b).sum(),
            Loss::Squared => t.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum(),
            Loss::Linear => t.iter().zip(y).map(|(a, b)| a * b).sum(),
        }
    }

    #[test]
    fn quadratic_forms_match_their_formulas() {
        let t = [0.3, 0.9, 0.1, 0.5];
        let y = [0.1, 0.2, 0.3, 0.4];
        for loss in Loss::ALL {
            let q = loss.quadratic(&t);
            assert!((q.value(&y) - direct(loss, &t, &y)).abs() < 1e-14, "{loss}");
            for k in 0..4 {
                let mut e = [0.0; 4];
                e[k] = 1.0;
                assert!((q.vertex_values()[k] - direct(loss, &t, &e)).abs() < 1e-14);
            }
            // grad by central differences
            let g = q.grad(&y);
            for j in 0..4 {
                let (mut a, mut b) = (y, y);
                a[j] += 1e-6;
                b[j] -= 1e-6;
                let fd = (direct(loss, &t, &a) - direct(loss, &t, &b)) / 2e-6;
                assert!((fd - g[j]).abs() < 1e-8, "{loss} {j}");
            }
        }
    }

    #[test]
    fn seed_loss_is_constant_on_vertices() {
        let t = [0.3, 0.9, 0.1];
        let f = Loss::Seed.quadratic(&t).vertex_values();
        assert!(f.iter().all(|v| (v - (1.3 - 1.0)).abs() < 1e-15));
    }
}
