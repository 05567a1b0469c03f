//! The problem: `L >= 1` independent categorical variables with `K >= 2` categories each, fed
//! by one softmax layer, and the data its losses read. Variable `l` has logits
//! `a_l = x W[:, l*K .. (l+1)*K]` (`W` is `D x (L*K)`) and draws `z_l ~ Cat(softmax(a_l))`.
//! Free logits are `D = 1, x = [1]`. Owns loading, saving, validating and seeding problems,
//! and the numerically stable softmax; the named problems are in [`crate::problems`].

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::loss::Loss;
use crate::philox::{PhiloxStream, STREAM_PROBLEM};

/// Default input dimension (an MNIST-sized image).
pub const DEFAULT_D: usize = 784;
/// Default number of categories.
pub const DEFAULT_K: usize = 10;
/// Default exponent of the `pnorm` loss.
pub const DEFAULT_EXPONENT: f64 = 2.0;
/// Most numbers a problem may hold in all (`W`, the decoder and the table together): 2^28,
/// 2 GiB of f64, so that a problem file cannot ask for unbounded memory.
pub const MAX_PROBLEM_NUMBERS: usize = 1 << 28;

/// The Philox lanes one draw may read, `L x ceil(K/4)` at most: the 16-bit lane field of
/// the counter (`[block, repetition, stream << 16 | lane, sweep point]`).
pub const MAX_DRAW_LANES: u64 = 1 << 16;

/// The `decoder` loss's data: `h = V y + c`, scored against `target` by binary cross-entropy.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoder {
    /// Output units H.
    pub h: usize,
    /// `V`, H x (L*K) row-major.
    pub v: Vec<f64>,
    /// Bias `c`, H numbers.
    pub c: Vec<f64>,
    /// Binary target, H numbers in [0, 1].
    pub target: Vec<f64>,
}

/// A softmax layer of L categorical variables with its input and the losses' data.
/// `w` is row-major: `w[i * (L*K) + l*K + j]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// Input dimension D.
    pub d: usize,
    /// Categories per variable K.
    pub k: usize,
    /// Number of variables L.
    pub l: usize,
    /// Input `x`, D numbers.
    pub x: Vec<f64>,
    /// Weights `W`, D x (L*K) row-major.
    pub w: Vec<f64>,
    /// Target `t` of the quadratic losses, L*K numbers (empty where the problem has none).
    pub t: Vec<f64>,
    /// Offsets `b` of the `pnorm` loss, L numbers (empty where the problem has none).
    pub b: Vec<f64>,
    /// The `decoder` loss's data.
    pub decoder: Option<Decoder>,
    /// The `table` loss's values at the K^L joint vertices (empty where the problem has none).
    pub table: Vec<f64>,
    /// Exponent `p >= 1` of the `pnorm` loss (`--p`; not part of the file).
    pub exponent: f64,
}

/// Softmax of `a`, stable for logits of any size: `max(a)` is subtracted first.
pub fn softmax(a: &[f64]) -> Vec<f64> {
    let max = a.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = a.iter().map(|&v| (v - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidProblem(msg.into())
}

impl Problem {
    /// The seed problem of the origin notebook: `x, W, T ~ U[0,1)` drawn from `seed`.
    pub fn seeded(seed: u64, d: usize, k: usize) -> Self {
        let mut rng = PhiloxStream::new(seed, STREAM_PROBLEM, 0);
        let x = (0..d).map(|_| rng.next_f64()).collect();
        let w = (0..d * k).map(|_| rng.next_f64()).collect();
        let t = (0..k).map(|_| rng.next_f64()).collect();
        Self {
            d,
            k,
            l: 1,
            x,
            w,
            t,
            b: Vec::new(),
            decoder: None,
            table: Vec::new(),
            exponent: DEFAULT_EXPONENT,
        }
    }

    /// A single-variable problem from parts, validating shapes and values (K is `t`'s length).
    ///
    /// # Errors
    /// [`Error::InvalidProblem`] naming the field when a shape disagrees, a number is not
    /// finite, D = 0 or K < 2.
    pub fn new(x: Vec<f64>, w: Vec<f64>, t: Vec<f64>) -> Result<Self> {
        let k = t.len();
        let problem = Self {
            d: x.len(),
            k,
            l: 1,
            x,
            w,
            t,
            b: Vec::new(),
            decoder: None,
            table: Vec::new(),
            exponent: DEFAULT_EXPONENT,
        };
        problem.validate()?;
        Ok(problem)
    }

    /// Free logits: `D = 1, x = [1]`, `W` the `L*K` logits (variable-major).
    pub fn free_logits(l: usize, k: usize, logits: Vec<f64>) -> Self {
        assert_eq!(logits.len(), l * k, "free logits must be L*K numbers");
        Self {
            d: 1,
            k,
            l,
            x: vec![1.0],
            w: logits,
            t: Vec::new(),
            b: Vec::new(),
            decoder: None,
            table: Vec::new(),
            exponent: DEFAULT_EXPONENT,
        }
    }

    /// `L * K`, the number of logits (and of gradient coordinates).
    pub fn dim(&self) -> usize {
        self.l * self.k
    }

    /// Number of joint configurations `K^L`, or `None` past `u64`.
    pub fn joint_size(&self) -> Option<u64> {
        (self.k as u64).checked_pow(u32::try_from(self.l).ok()?)
    }

    /// Checks shapes and values.
    ///
    /// # Errors
    /// [`Error::InvalidProblem`] naming the field and what is wrong with it: a shape that
    /// disagrees, a number that is not finite, D = 0, L = 0, K < 2, a `pnorm` exponent below 1,
    /// or logits `x W` that overflow f64.
    pub fn validate(&self) -> Result<()> {
        let (d, k, l) = (self.d, self.k, self.l);
        if d == 0 || self.x.len() != d {
            return Err(invalid("field `x` is empty (D must be at least 1)"));
        }
        if l == 0 {
            return Err(invalid("field `variables` must be at least 1"));
        }
        if k < 2 {
            return Err(invalid(format!(
                "K = {k} categories per variable: K must be at least 2 (rows of `w` hold L*K numbers)"
            )));
        }
        // A draw's Philox lanes: one per variable (categorical draws) and one per four
        // categories of every variable (Gumbel draws, each estimator's own noise), in the
        // counter's 16-bit lane field (`philox::counter`); past it they would read another
        // stream's words.
        let lanes = l as u64 * k.div_ceil(4) as u64;
        if lanes > MAX_DRAW_LANES {
            return Err(invalid(format!(
                "L = {l} variables of K = {k} categories need L x ceil(K/4) = {lanes} random-number lanes per draw; a draw has {MAX_DRAW_LANES} (L*K up to {} at K a multiple of 4)",
                4 * MAX_DRAW_LANES
            )));
        }
        if self.w.len() != d * l * k {
            return Err(invalid(format!(
                "field `w` has {} numbers, expected D x (L*K) = {d} x ({l}*{k})",
                self.w.len()
            )));
        }
        for (name, v, want) in [
            ("t", &self.t, l * k),
            ("b", &self.b, l),
            (
                "table",
                &self.table,
                self.joint_size().unwrap_or(u64::MAX) as usize,
            ),
        ] {
            if !v.is_empty() && v.len() != want {
                return Err(invalid(format!(
                    "field `{name}` has {} numbers, expected {want}",
                    v.len()
                )));
            }
        }
        let mut fields: Vec<(&str, &[f64])> = vec![
            ("x", &self.x),
            ("w", &self.w),
            ("t", &self.t),
            ("b", &self.b),
            ("table", &self.table),
        ];
        if let Some(dec) = &self.decoder {
            if dec.h == 0 || dec.v.len() != dec.h * l * k {
                return Err(invalid(format!(
                    "field `decoder.v` has {} numbers, expected H rows of L*K = {}",
                    dec.v.len(),
                    l * k
                )));
            }
            for (name, v) in [("decoder.c", &dec.c), ("decoder.target", &dec.target)] {
                if v.len() != dec.h {
                    return Err(invalid(format!(
                        "field `{name}` has {} numbers, expected H = {} (the rows of `decoder.v`)",
                        v.len(),
                        dec.h
                    )));
                }
            }
            fields.extend([
                ("decoder.v", dec.v.as_slice()),
                ("decoder.c", dec.c.as_slice()),
                ("decoder.target", dec.target.as_slice()),
            ]);
        }
        for (name, v) in fields {
            if let Some(i) = v.iter().position(|z| !z.is_finite()) {
                return Err(invalid(format!("field `{name}`[{i}] is not finite")));
            }
        }
        if !(self.exponent.is_finite() && self.exponent >= 1.0) {
            return Err(Error::InvalidArgument(format!(
                "--p must be a finite exponent of at least 1 (got {})",
                self.exponent
            )));
        }
        if let Some(i) = self.logits().iter().position(|a| !a.is_finite()) {
            return Err(invalid(format!(
                "field `w`: logit {i} of x W overflows f64 (check the sizes of `x` and `w`)"
            )));
        }
        Ok(())
    }

    /// Checks that the problem holds the fields `loss` reads, and that the loss's values are
    /// finite on it.
    ///
    /// # Errors
    /// [`Error::InvalidProblem`] naming the missing field.
    pub fn check_loss(&self, loss: Loss) -> Result<()> {
        let missing = |field: &str, what: &str| {
            invalid(format!(
                "the {loss} loss needs field `{field}` ({what}), which this problem lacks"
            ))
        };
        match loss {
            Loss::Seed | Loss::Squared | Loss::Linear if self.t.is_empty() => {
                Err(missing("t", "L*K target numbers"))
            }
            Loss::Pnorm if self.b.is_empty() => Err(missing("b", "L offsets")),
            Loss::Decoder if self.decoder.is_none() => {
                Err(missing("decoder", "{\"v\", \"c\", \"target\"}"))
            }
            Loss::Table if self.table.is_empty() => Err(missing("table", "K^L values")),
            _ => {
                let overflow = match loss {
                    Loss::Squared => self
                        .t
                        .iter()
                        .any(|t| !(t * t * self.dim() as f64).is_finite()),
                    Loss::Seed | Loss::Linear => {
                        !self.t.iter().sum::<f64>().is_finite()
                            || self.t.iter().map(|t| t.abs()).sum::<f64>().is_infinite()
                    }
                    Loss::Pnorm => self
                        .b
                        .iter()
                        .any(|b| !((b.abs() + self.k as f64).powf(self.exponent)).is_finite()),
                    _ => false,
                };
                if overflow {
                    return Err(invalid(format!(
                        "the {loss} loss overflows f64 on this problem (check the sizes of `{}`)",
                        if loss == Loss::Pnorm { "b" } else { "t" }
                    )));
                }
                Ok(())
            }
        }
    }

    /// Parses the JSON form `{"x": [D], "w": [D rows of L*K], "variables": L, "t": [L*K],
    /// "b": [L], "decoder": {"v": [H rows of L*K], "c": [H], "target": [H]}, "table": [K^L]}`;
    /// `variables` defaults to 1 and every loss field is optional.
    ///
    /// # Errors
    /// [`Error::InvalidProblem`] naming the field and what is wrong with it.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| invalid(format!("not valid JSON ({e})")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| invalid("expected a JSON object with x and w"))?;
        let field = |name: &str| {
            obj.get(name)
                .ok_or_else(|| invalid(format!("field `{name}` is missing")))
        };
        let x = number_array(field("x")?, "x")?;
        if x.is_empty() {
            return Err(invalid("field `x` is empty (D must be at least 1)"));
        }
        let l = match obj.get("variables") {
            None => 1,
            Some(v) => v
                .as_u64()
                .filter(|n| (1..=1 << 20).contains(n))
                .ok_or_else(|| {
                    invalid(format!(
                        "field `variables` must be a whole number from 1 to 2^20 (got {v})"
                    ))
                })? as usize,
        };
        let optional = |name: &str| -> Result<Vec<f64>> {
            obj.get(name)
                .map_or(Ok(Vec::new()), |v| number_array(v, name))
        };
        let t = optional("t")?;
        let rows = matrix(field("w")?, "w", Some(x.len()))?;
        let row_len = rows.first().map_or(0, Vec::len);
        if row_len % l != 0 {
            return Err(invalid(format!(
                "field `w` rows have {row_len} numbers, not a multiple of L = {l} (`variables`)"
            )));
        }
        if !t.is_empty() && t.len() != row_len {
            return Err(invalid(format!(
                "field `w[0]` has {row_len} numbers, expected L*K = {} (the length of `t`)",
                t.len()
            )));
        }
        let k = row_len / l;
        let w: Vec<f64> = rows.into_iter().flatten().collect();
        let b = optional("b")?;
        let table = optional("table")?;
        let decoder = match obj.get("decoder") {
            None => None,
            Some(dec) => {
                let dobj = dec.as_object().ok_or_else(|| {
                    invalid("field `decoder` must be an object with v, c and target")
                })?;
                let dfield = |name: &str| {
                    dobj.get(name)
                        .ok_or_else(|| invalid(format!("field `decoder.{name}` is missing")))
                };
                let v_rows = matrix(dfield("v")?, "decoder.v", None)?;
                if let Some((i, r)) = v_rows.iter().enumerate().find(|(_, r)| r.len() != l * k) {
                    return Err(invalid(format!(
                        "field `decoder.v[{i}]` has {} numbers, expected L*K = {}",
                        r.len(),
                        l * k
                    )));
                }
                let c = number_array(dfield("c")?, "decoder.c")?;
                let target = number_array(dfield("target")?, "decoder.target")?;
                if let Some(i) = target.iter().position(|t| !(0.0..=1.0).contains(t)) {
                    return Err(invalid(format!(
                        "field `decoder.target`[{i}] must lie in [0, 1] (a binary image)"
                    )));
                }
                Some(Decoder {
                    h: v_rows.len(),
                    v: v_rows.into_iter().flatten().collect(),
                    c,
                    target,
                })
            }
        };
        let problem = Self {
            d: x.len(),
            k,
            l,
            x,
            w,
            t,
            b,
            decoder,
            table,
            exponent: DEFAULT_EXPONENT,
        };
        problem.validate()?;
        Ok(problem)
    }

    /// Loads a problem file.
    ///
    /// # Errors
    /// [`Error::Read`] if the file cannot be read; [`Error::InvalidProblem`] (with the path)
    /// if it is malformed or larger than [`MAX_PROBLEM_NUMBERS`] allows.
    pub fn load(path: &Path) -> Result<Self> {
        let read_err = |source| Error::Read {
            path: path.to_owned(),
            source,
        };
        // A number takes at least 2 bytes in JSON ("0,"): refuse files that could not fit.
        let len = std::fs::metadata(path).map_err(read_err)?.len();
        if len > 32 * MAX_PROBLEM_NUMBERS as u64 {
            return Err(invalid(format!(
                "{}: {len} bytes is more than a problem may hold ({} numbers)",
                path.display(),
                MAX_PROBLEM_NUMBERS
            )));
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        Self::from_json_str(&text).map_err(|e| match e {
            Error::InvalidProblem(m) => Error::InvalidProblem(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// The JSON form of the problem; numbers round-trip exactly. Fields the problem lacks are
    /// left out, and `variables` too where it is 1, so single-variable files read as before.
    pub fn to_json(&self) -> Value {
        let rows = |v: &[f64], width: usize| -> Vec<Value> {
            v.chunks(width).map(|r| Value::from(r.to_vec())).collect()
        };
        let mut obj = serde_json::Map::new();
        obj.insert("x".into(), Value::from(self.x.clone()));
        obj.insert("w".into(), Value::from(rows(&self.w, self.dim())));
        if self.l != 1 {
            obj.insert("variables".into(), Value::from(self.l));
        }
        for (name, v) in [("t", &self.t), ("b", &self.b), ("table", &self.table)] {
            if !v.is_empty() {
                obj.insert(name.into(), Value::from(v.clone()));
            }
        }
        if let Some(dec) = &self.decoder {
            obj.insert(
                "decoder".into(),
                serde_json::json!({ "v": rows(&dec.v, self.dim()), "c": dec.c, "target": dec.target }),
            );
        }
        Value::Object(obj)
    }

    /// Logits `a = xW` (L*K numbers, variable-major): `a_j = ((0 + x_0 w_0j) + x_1 w_1j) +
    /// ...`, rows in order. Eight logits at a time stay in registers across the D rows (one
    /// logit at a time through memory made a sweep point's few calls a fifth of a small
    /// sweep's time); the same operations in the same order, so the same bits.
    pub fn logits(&self) -> Vec<f64> {
        /// Logits `j0 .. j0 + W` over every row.
        #[inline(always)]
        fn columns<const W: usize>(x: &[f64], w: &[f64], n: usize, j0: usize) -> [f64; W] {
            let mut acc = [0.0f64; W];
            for (xi, row) in x.iter().zip(w.chunks_exact(n)) {
                let row: &[f64; W] = row[j0..j0 + W].try_into().expect("W columns");
                for (a, wij) in acc.iter_mut().zip(row) {
                    *a += xi * wij;
                }
            }
            acc
        }
        let n = self.dim();
        let mut a = vec![0.0; n];
        let full = n / 8 * 8;
        for j0 in (0..full).step_by(8) {
            a[j0..j0 + 8].copy_from_slice(&columns::<8>(&self.x, &self.w, n, j0));
        }
        for (j, aj) in a.iter_mut().enumerate().skip(full) {
            *aj = columns::<1>(&self.x, &self.w, n, j)[0];
        }
        a
    }

    /// Probabilities `p_l = softmax(a_l)` of every variable (L*K numbers).
    pub fn probs(&self) -> Vec<f64> {
        self.logits().chunks(self.k).flat_map(softmax).collect()
    }

    /// `||x||^2`, the factor that takes logit-space variances to W space.
    pub fn x_norm_sq(&self) -> f64 {
        self.x.iter().map(|v| v * v).sum()
    }
}

fn matrix(v: &Value, name: &str, rows_expected: Option<usize>) -> Result<Vec<Vec<f64>>> {
    let rows = v
        .as_array()
        .ok_or_else(|| invalid(format!("field `{name}` is not an array of rows")))?;
    if let Some(n) = rows_expected {
        if rows.len() != n {
            return Err(invalid(format!(
                "field `{name}` has {} rows, expected D = {n} (the length of `x`)",
                rows.len()
            )));
        }
    }
    if rows.is_empty() {
        return Err(invalid(format!("field `{name}` has no rows")));
    }
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let row = number_array(row, &format!("{name}[{i}]"))?;
        if let Some(first) = out.first().map(Vec::len) {
            if row.len() != first {
                return Err(invalid(format!(
                    "field `{name}[{i}]` has {} numbers, but row 0 has {first}",
                    row.len()
                )));
            }
        }
        out.push(row);
    }
    Ok(out)
}

fn number_array(v: &Value, name: &str) -> Result<Vec<f64>> {
    let arr = v
        .as_array()
        .ok_or_else(|| invalid(format!("field `{name}` is not an array of numbers")))?;
    arr.iter()
        .enumerate()
        .map(|(i, e)| {
            e.as_f64()
                .filter(|z| z.is_finite())
                .ok_or_else(|| invalid(format!("field `{name}`[{i}] is not a finite number ({e})")))
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
        let mut multi = Problem::free_logits(3, 2, vec![0.1, -0.2, 0.3, 0.0, 1.5, -1.0]);
        multi.b = vec![0.5, 0.2, 0.9];
        multi.table = (0..8).map(f64::from).collect();
        multi.decoder = Some(Decoder {
            h: 2,
            v: (0..12).map(|i| f64::from(i) * 0.1).collect(),
            c: vec![0.0, 1.0],
            target: vec![1.0, 0.0],
        });
        let back = Problem::from_json_str(&multi.to_json().to_string()).unwrap();
        assert_eq!(multi, back);
    }

    #[test]
    fn logits_are_the_row_by_row_sums_bit_for_bit() {
        // Widths with and without a remainder past the blocks of eight, signs and sizes mixed.
        for (d, l, k) in [(784, 1, 10), (5, 3, 7), (3, 1, 8), (1, 1, 2), (17, 2, 13)] {
            let mut p = Problem::seeded(7, d, k);
            let n = l * k;
            p.l = l;
            p.w = (0..d * n)
                .map(|i| ((i * 7919) % 1013) as f64 / 97.0 - 5.0 + 1e-9 * i as f64)
                .collect();
            p.x = (0..d).map(|i| (i as f64 - 2.5) * 0.37).collect();
            let mut want = vec![0.0; n];
            for (xi, row) in p.x.iter().zip(p.w.chunks(n)) {
                for (aj, wij) in want.iter_mut().zip(row) {
                    *aj += xi * wij;
                }
            }
            let got = p.logits();
            assert_eq!(got.len(), n);
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.to_bits(), w.to_bits(), "D {d} L {l} K {k}");
            }
        }
    }

    #[test]
    fn seeded_problem_is_pinned() {
        let p = Problem::seeded(0, DEFAULT_D, DEFAULT_K);
        assert!(p
            .x
            .iter()
            .chain(&p.w)
            .chain(&p.t)
            .all(|v| (0.0..1.0).contains(v)));
        // Logits of the notebook's problem are about 196 +- 6.
        let a = p.logits();
        assert!(a.iter().all(|v| (150.0..250.0).contains(v)), "{a:?}");
    }

    #[test]
    fn overflowing_logits_are_refused() {
        let err = Problem::new(vec![1e200], vec![1e200, 0.0], vec![0.0, 1.0]).unwrap_err();
        assert!(err.to_string().contains("overflows"), "{err}");
    }
}
