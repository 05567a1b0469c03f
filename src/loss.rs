//! The losses `f(z_0, ..., z_{L-1})` paid after the draws, by name. `y_l` is variable `l`'s
//! one-hot (or relaxed) vector and `y` their concatenation in `R^{L*K}`.
//!
//! `seed`, `squared` and `linear` are quadratic forms `f(y) = alpha ||y||^2 + beta . y + gamma`
//! ([`Quadratic`]), so one fast path serves them all (the GPU's params buffer carries `alpha`,
//! `beta` and `gamma`); `pnorm`, `decoder` and `table` read other fields of the problem. Off the
//! vertices (MuProp's mean-field point `p`, Gumbel-softmax's relaxed `y`) each loss is extended
//! as stated on its variant; [`crate::objective::Objective`] binds a loss to a problem's data
//! and evaluates it.

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
    /// `f = (1/L) sum_l |c_l - b_l|^p` with `c_l = sum_k k y_l[k]` (the category index at a
    /// vertex), `b` of length L and `p >= 1` (`--p`). Extended by the same formula in `c_l`
    /// (for `p = 1`, `grad` uses the subgradient `sign(c_l - b_l)`). REBAR's toy is
    /// `L = 1, K = 2, b = [0.45], p = 2`.
    Pnorm,
    /// A fixed one-layer sigmoid decoder scored by binary cross-entropy, a discrete VAE's
    /// reconstruction term: `h = V y + c`, `f = sum_h softplus(h_h) - target_h h_h`, extended by
    /// the same formula (`grad f = V^T (sigmoid(h) - target)`). It couples the variables.
    Decoder,
    /// `f` given at every joint vertex (`K^L` numbers, row-major, `z_0` most significant). It
    /// has no extension off the vertices: estimators that need one are refused for it.
    Table,
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
        y.iter()
            .zip(&self.beta)
            .map(|(v, b)| 2.0 * self.alpha * v + b)
            .collect()
    }

    /// `f(e_k)` for every k: `alpha + beta_k + gamma`.
    pub fn vertex_values(&self) -> Vec<f64> {
        self.beta
            .iter()
            .map(|b| self.alpha + b + self.gamma)
            .collect()
    }
}

impl Loss {
    /// The three quadratic losses, in the default order of a sweep.
    pub const QUADRATIC: [Loss; 3] = [Loss::Squared, Loss::Seed, Loss::Linear];

    /// Every loss.
    pub const ALL: [Loss; 6] = [
        Loss::Squared,
        Loss::Seed,
        Loss::Linear,
        Loss::Pnorm,
        Loss::Decoder,
        Loss::Table,
    ];

    /// The name used on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Loss::Seed => "seed",
            Loss::Squared => "squared",
            Loss::Linear => "linear",
            Loss::Pnorm => "pnorm",
            Loss::Decoder => "decoder",
            Loss::Table => "table",
        }
    }

    /// One line on what the loss is, for `--help`.
    pub fn summary(self) -> &'static str {
        match self {
            Loss::Seed => "sum(t - y): the notebook's loss, constant on one-hot draws",
            Loss::Squared => "||t - y||^2",
            Loss::Linear => "t . y, a per-class cost",
            Loss::Pnorm => "(1/L) sum_l |z_l - b_l|^p (--p), REBAR's toy at L = 1",
            Loss::Decoder => "binary cross-entropy of a sigmoid decoder V y + c",
            Loss::Table => "f given at every joint configuration",
        }
    }

    /// Whether the loss is one of the quadratic forms.
    pub fn is_quadratic(self) -> bool {
        matches!(self, Loss::Seed | Loss::Squared | Loss::Linear)
    }

    /// Whether the loss is defined off the vertices (MuProp and the relaxed family need it).
    pub fn has_extension(self) -> bool {
        self != Loss::Table
    }

    /// Whether `f` is a sum of per-variable terms (closed-form moments for any L).
    pub fn is_separable(self) -> bool {
        !matches!(self, Loss::Decoder | Loss::Table)
    }

    /// Parses a name.
    ///
    /// # Errors
    /// [`Error::Unknown`] listing the known losses.
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|l| l.name() == name)
            .ok_or_else(|| Error::Unknown {
                kind: "loss",
                name: name.to_string(),
                known: Self::ALL.map(Loss::name).join(", "),
            })
    }

    /// The quadratic form of this loss for target `t`.
    ///
    /// # Panics
    /// For a loss that is not quadratic (see [`Loss::is_quadratic`]).
    pub fn quadratic(self, t: &[f64]) -> Quadratic {
        match self {
            Loss::Seed => Quadratic {
                alpha: 0.0,
                beta: vec![-1.0; t.len()],
                gamma: t.iter().sum(),
            },
            Loss::Squared => Quadratic {
                alpha: 1.0,
                beta: t.iter().map(|v| -2.0 * v).collect(),
                gamma: t.iter().map(|v| v * v).sum(),
            },
            Loss::Linear => Quadratic {
                alpha: 0.0,
                beta: t.to_vec(),
                gamma: 0.0,
            },
            other => panic!("the {other} loss is not a quadratic form"),
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
            _ => unreachable!(),
        }
    }

    #[test]
    fn quadratic_forms_match_their_formulas() {
        let t = [0.3, 0.9, 0.1, 0.5];
        let y = [0.1, 0.2, 0.3, 0.4];
        for loss in Loss::QUADRATIC {
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
