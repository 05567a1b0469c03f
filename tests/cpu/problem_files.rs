//! Malformed problem files give an error naming the cause, never a panic.

use mcgrad::problem::Problem;
use mcgrad::Error;

fn error_of(text: &str) -> String {
    match Problem::from_json_str(text) {
        Err(e @ Error::InvalidProblem(_)) => e.to_string(),
        Err(other) => panic!("wrong error kind: {other}"),
        Ok(_) => panic!("accepted: {text}"),
    }
}

#[test]
fn malformed_problems_name_their_cause() {
    let cases = [
        ("", "not valid JSON"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (r#"{"w": [[1, 2]], "t": [1, 2]}"#, "`x` is missing"),
        (r#"{"x": [], "w": [], "t": [1, 2]}"#, "`x` is empty"),
        (
            r#"{"x": [1], "w": [[1]], "t": [1]}"#,
            "K must be at least 2",
        ),
        (
            r#"{"x": [1, 2], "w": [[1, 2]], "t": [1, 2]}"#,
            "`w` has 1 rows, expected D = 2",
        ),
        (
            r#"{"x": [1], "w": [[1, 2, 3]], "t": [1, 2]}"#,
            "`w[0]` has 3 numbers, expected L*K = 2",
        ),
        (
            r#"{"x": [1], "w": [[1, "a"]], "t": [1, 2]}"#,
            "`w[0]`[1] is not a finite number",
        ),
        (
            r#"{"x": [NaN], "w": [[1, 2]], "t": [1, 2]}"#,
            "not valid JSON",
        ),
        (
            r#"{"x": [1e999], "w": [[1, 2]], "t": [1, 2]}"#,
            "not valid JSON",
        ),
        (
            r#"{"x": [1], "w": [[1, 2]], "t": [null, 2]}"#,
            "`t`[0] is not a finite number",
        ),
        (
            r#"{"x": 3, "w": [[1, 2]], "t": [1, 2]}"#,
            "`x` is not an array",
        ),
    ];
    for (text, want) in cases {
        let got = error_of(text);
        assert!(got.contains(want), "{text:?}: got {got:?}, want {want:?}");
    }
}

#[test]
fn a_valid_file_loads_and_a_missing_one_is_a_read_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.json");
    std::fs::write(&path, r#"{"x": [1e4], "w": [[1, 2]], "t": [0.5, 0.5]}"#).unwrap();
    let p = Problem::load(&path).unwrap();
    assert!(p.probs().iter().all(|v| v.is_finite()));
    assert!(matches!(
        Problem::load(&dir.path().join("missing.json")),
        Err(Error::Read { .. })
    ));
}

/// A draw's Philox lanes (`L x ceil(K/4)`) live in the counter's 16-bit lane field: a
/// problem that needs more is refused (its draws would read another stream's words), one
/// that fills the field exactly is not.
#[test]
fn problems_past_the_counters_lanes_are_refused() {
    let fits = Problem::free_logits(1 << 16, 4, vec![0.0; 1 << 18]);
    assert!(fits.validate().is_ok());
    let past = Problem::free_logits((1 << 16) + 1, 2, vec![0.0; ((1 << 16) + 1) * 2]);
    let err = past.validate().unwrap_err().to_string();
    assert!(
        err.contains("L x ceil(K/4) = 65537") && err.contains("a draw has 65536"),
        "{err}"
    );
    let wide = Problem::free_logits(2, (1 << 17) + 1, vec![0.0; 2 * ((1 << 17) + 1)]);
    assert!(wide.validate().is_err());
}
