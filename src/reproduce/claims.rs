//! The qualitative claims a reproduction checks, and the statistics behind them: a sign test
//! across seeds (how many of n seeds show the effect, and the one-sided binomial p-value of
//! seeing at least that many if the effect were a coin flip), or an exact comparison where
//! the oracles give closed forms. The quick forms' tests (`tests/cpu/reproduce.rs`) assert that
//! every claim holds; the READMEs print them with their evidence.

use serde::Serialize;

/// One claim and whether the data bear it out.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Claim {
    /// What is claimed, in words.
    pub statement: String,
    /// The evidence, in words (counts, figures).
    pub evidence: String,
    /// Seeds that show the effect, of `trials` (sign tests only).
    pub successes: Option<u32>,
    /// Seeds tested (sign tests only).
    pub trials: Option<u32>,
    /// Seeds the claim requires (sign tests only).
    pub required: Option<u32>,
    /// One-sided p-value of at least `successes` of `trials` under a fair coin.
    pub p_value: Option<f64>,
    /// Whether it holds.
    pub holds: bool,
}

impl Claim {
    /// A sign test: the claim holds when at least `required` of the `outcomes` are true.
    pub fn sign_test(statement: impl Into<String>, outcomes: &[bool], required: u32) -> Self {
        let n = outcomes.len() as u32;
        let k = outcomes.iter().filter(|&&o| o).count() as u32;
        let p = binomial_tail(n, k);
        Self {
            statement: statement.into(),
            evidence: format!(
                "{k} of {n} seeds (required: {required}); one-sided sign-test p = {}",
                format_p(p)
            ),
            successes: Some(k),
            trials: Some(n),
            required: Some(required),
            p_value: Some(p),
            holds: k >= required,
        }
    }

    /// A comparison of exact figures (closed forms or enumeration: no sampling error).
    pub fn exact(statement: impl Into<String>, evidence: impl Into<String>, holds: bool) -> Self {
        Self {
            statement: statement.into(),
            evidence: evidence.into(),
            successes: None,
            trials: None,
            required: None,
            p_value: None,
            holds,
        }
    }
}

/// `P(X >= k)` for `X ~ Binomial(n, 1/2)`.
pub fn binomial_tail(n: u32, k: u32) -> f64 {
    let mut total = 0.0;
    let mut c = 1.0f64; // C(n, 0)
    for i in 0..=n {
        if i >= k {
            total += c;
        }
        c = c * f64::from(n - i) / f64::from(i + 1);
    }
    total / 2f64.powi(n as i32)
}

/// A p-value for people: three significant digits, or `< 1e-4`.
pub fn format_p(p: f64) -> String {
    if p < 1e-4 {
        "< 1e-4".into()
    } else {
        format!("{p:.3}")
    }
}

/// The mean, minimum and maximum of some values (NaN for none).
pub fn mean_min_max(values: &[f64]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (mean, min, max)
}

/// The sample standard deviation (0 for fewer than two values).
pub fn std_dev(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let (mean, _, _) = mean_min_max(values);
    (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (values.len() - 1) as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_tails_match_hand_counts() {
        // P(X >= 8 | 10) = (45 + 10 + 1) / 1024; P(X >= 9) = 11 / 1024; P(X >= 0) = 1.
        assert!((binomial_tail(10, 8) - 56.0 / 1024.0).abs() < 1e-15);
        assert!((binomial_tail(10, 9) - 11.0 / 1024.0).abs() < 1e-15);
        assert!((binomial_tail(10, 10) - 1.0 / 1024.0).abs() < 1e-15);
        assert_eq!(binomial_tail(10, 0), 1.0);
    }

    #[test]
    fn a_sign_test_holds_only_with_enough_seeds() {
        let mut outcomes = [true; 10];
        outcomes[0] = false;
        outcomes[1] = false;
        assert!(Claim::sign_test("x", &outcomes, 8).holds);
        outcomes[2] = false;
        let c = Claim::sign_test("x", &outcomes, 8);
        assert!(!c.holds);
        assert_eq!(c.successes, Some(7));
    }

    #[test]
    fn spread_statistics() {
        let (m, lo, hi) = mean_min_max(&[1.0, 2.0, 6.0]);
        assert_eq!((m, lo, hi), (3.0, 1.0, 6.0));
        assert!((std_dev(&[1.0, 2.0, 3.0]) - 1.0).abs() < 1e-15);
    }
}
