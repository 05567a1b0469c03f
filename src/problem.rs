//! The softmax-categorical problem: an input `x` (D), weights `W` (D x K) and a target `T`
//! (K), with the logits `a = xW` and probabilities `p = softmax(a)`. Owns loading, saving,
//! validating and seeding problems, and the numerically stable softmax.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::philox::{PhiloxStream, STREAM_PROBLEM};

/// Default input dimension (an MNIST-sized image).
pub const DEFAULT_D: usize = 784;
/// Default number of categories.
pub const DEFAULT_K: usize = 10;

/// A D x K softmax layer with its input and target. `w` is row-major: `w[i * k + j]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// Input dimension D.
    pub d: usize,
    /// Number of categories K.
    pub k: usize,
    /// Input `x`, D numbers.
    pub x: Vec<f64>,
    /// Weights `W`, D x K row-major.
    pub w: Vec<f64>,
    /// Target `T`, K numbers.
    pub t: Vec<f64>,
}

/// Softmax of `a`, stable for logits of any size: `max(a)` is subtracted first.
pub fn softmax(a: &[f64]) -> Vec<f64> {
    let max = a.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = a.iter().map(|&v| (v - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

impl Problem {
    /// The seed problem of the origin notebook: `x, W, T ~ U[0,1)` drawn from `seed`.
    pub fn seeded(seed: u64, d: usize, k: usize) -> Self {
        let mut rng = PhiloxStream::new(seed, STREAM_PROBLEM, 0);
        let x = (0..d).map(|_| rng.next_f64()).collect();
        let w = (0..d * k).map(|_| rng.next_f64()).collect();
        let t = (0..k).map(|_| rng.next_f64()).collect();
        Self { d, k, x, w, t }
    }

    /// Builds a problem from parts, validating shapes and values.
    ///
    /// # Errors
    /// [`Error::InvalidProblem`] naming the field when a shape disagrees, a number is not
    /// finite, D = 0 or K < 2.
    pub fn new(x: Vec<f64>, w: Vec<f64>, t: Vec<f64>) -> Result<Self> {
        let d = x.len();
        let k = t.len();
        if d == 0 {
            return Err(Error::InvalidProblem("field `x` is empty (D must be at least 1)".into()));
        }
        if k < 2 {
            return Err(Error::InvalidProblem(format!(
                "field `t` has {k} number(s): K must be at least 2"
            )));
        }
        if w.len() != d * k {
            return Err(Error::InvalidProblem(format!(
                "field `w` has {} numbers, expected D x K = {d} x {k}",
                w.len()
            )));
        }
        for (name, v) in [("x", &x), ("w", &w), ("t", &t)] {
            if let Some(i) = v.iter().position(|z| !z.is_finite()) {
                return Err(Error::InvalidProblem(format!("field `{name}`[{i}] is not finite")));
            }
        }
        Ok(Self { d, k, x, w, t })
    }

    /// Parses the JSON form `{"x": [D], "w": [D rows of K], "t": [K]}`.
    ///
    /// # Errors
    /// [`Error::InvalidProblem`] naming the field and what is wrong with it.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::InvalidProblem(format!("not valid JSON ({e})")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| Error::InvalidProblem("expected a JSON object with x, w and t".into()))?;
        let field = |name: &str| {
            obj.get(name)
                .ok_or_else(|| Error::InvalidProblem(format!("field `{name}` is missing")))
        };
        let x = number_array(field("x")?, "x")?;
        let t = number_array(field("t")?, "t")?;
        let rows = field("w")?
            .as_array()
            .ok_or_else(|| Error::InvalidProblem("field `w` is not an array of rows".into()))?;
        if rows.len() != x.len() {
            return Err(Error::InvalidProblem(format!(
                "field `w` has {} rows, expected D = {} (the length of `x`)",
                rows.len(),
                x.len()
            )));
        }
        let mut w = Vec::with_capacity(rows.len() * t.len());
        for (i, row) in rows.iter().enumerate() {
            let row = number_array(row, &format!("w[{i}]"))?;
            if row.len() != t.len() {
                return Err(Error::InvalidProblem(format!(
                    "field `w[{i}]` has {} numbers, expected K = {} (the length of `t`)",
                    row.len(),
                    t.len()
                )));
            }
            w.extend(row);
        }
        Self::new(x, w, t)
    }

    /// Loads a problem file.
    ///
    /// # Errors
    /// [`Error::Read`] if the file cannot be read; [`Error::InvalidProblem`] (with the path)
    /// if it is malformed.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| Error::Read { path: path.to_owned(), source })?;
        Self::from_json_str(&text).map_err(|e| match e {
            Error::InvalidProblem(m) => Error::InvalidProblem(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// The JSON form of the problem; numbers round-trip exactly.
    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self.w.chunks(self.k).map(|r| Value::from(r.to_vec())).collect();
        serde_json::json!({ "x": self.x, "w": rows, "t": self.t })
    }

    /// Logits `a = xW` (K numbers).
    pub fn logits(&self) -> Vec<f64> {
        let mut a = vec![0.0; self.k];
        for (xi, row) in self.x.iter().zip(self.w.chunks(self.k)) {
            for (aj, wij) in a.iter_mut().zip(row) {
                *aj += xi * wij;
            }
        }
        a
    }

    /// Probabilities `p = softmax(xW)`.
    pub fn probs(&self) -> Vec<f64> {
        softmax(&self.logits())
    }

    /// `||x||^2`, the factor that takes logit-space variances to W space.
    pub fn x_norm_sq(&self) -> f64 {
        self.x.iter().map(|v| v * v).sum()
    }
}

fn number_array(v: &Value, name: &str) -> Result<Vec<f64>> {
    let arr = v
        .as_array()
        .ok_or_else(|| Error::InvalidProblem(format!("field `{name}` is not an array of numbers")))?;
    arr.iter()
        .enumerate()
        .map(|(i, e)| {
            e.as_f64().filter(|z| z.is_finite()).ok_or_else(|| {
                Error::InvalidProblem(format!("field `{name}`[{i}] is not a finite number ({e})"))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_stable_for_huge_logits() {
        let p = softmax(&[1e4, 1e4 - 1.0, -1e4]);
        assert!(p.iter().all(|v| v.is_finite()));
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        assert!((p[0] / p[1] - std::f64::consts::E).abs() < 1e-12);
        assert_eq!(p[2], 0.0);
    }

    #[test]
    fn json_round_trip_is_exact() {
        let p = Problem::seeded(7, 5, 3);
        let back = Problem::from_json_str(&p.to_json().to_string()).unwrap();
        assert_eq!(p, back);
    }

    #[test]
    fn seeded_problem_is_pinned() {
        let p = Problem::seeded(0, DEFAULT_D, DEFAULT_K);
        assert!(p.x.iter().chain(&p.w).chain(&p.t).all(|v| (0.0..1.0).contains(v)));
        // Logits of the notebook's problem are about 196 +- 6.
        let a = p.logits();
        assert!(a.iter().all(|v| (150.0..250.0).contains(v)), "{a:?}");
    }
}
