//! `mcgrad check` through the binary: bad baselines are bad input (exit 2, one error line),
//! `--update` writes a baseline that a following check passes (exit 0), and `--json` prints
//! a machine-readable report.

use std::process::Command;

fn mcgrad(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mcgrad"))
        .args(args)
        .output()
        .expect("the mcgrad binary runs")
}

/// `mcgrad ARGS` with `MCGRAD_SIMD` set to `tier`.
fn mcgrad_simd(tier: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mcgrad"))
        .args(args)
        .env("MCGRAD_SIMD", tier)
        .output()
        .expect("the mcgrad binary runs")
}

fn error_lines(out: &std::process::Output) -> usize {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("error:"))
        .count()
}

#[test]
fn bad_baselines_are_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "{\"schema\": 3").unwrap();
    let foreign = dir.path().join("foreign.json");
    std::fs::write(&foreign, "{\"x\": [1], \"w\": [[1, 2]], \"t\": [0, 1]}").unwrap();
    for path in [&missing, &garbage, &foreign] {
        let out = mcgrad(&["check", "--baseline", path.to_str().unwrap(), "--no-speed"]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            error_lines(&out),
            1,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn an_updated_baseline_passes_its_check() {
    let dir = tempfile::tempdir().unwrap();
    let baseline = dir.path().join("baseline.json");
    let path = baseline.to_str().unwrap();
    let out = mcgrad(&[
        "check",
        "--update",
        "--baseline",
        path,
        "--no-speed",
        "--seed",
        "5",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = mcgrad(&[
        "check",
        "--baseline",
        path,
        "--no-speed",
        "--seed",
        "6",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let findings = report["findings"].as_array().expect("findings");
    assert!(findings.len() > 100, "{} findings", findings.len());
    assert!(findings.iter().all(|f| f["regressed"] == false));
}

/// A small, valid baseline written through the library (two sweeps, speed figures), as JSON.
fn small_baseline() -> serde_json::Value {
    use mcgrad::check::{default_spec, Baseline, CheckOptions};
    let mut spec = default_spec(3);
    spec.estimators = ["exact", "reinforce", "rloo", "gumbel-softmax"]
        .iter()
        .map(|id| mcgrad::estimators::by_id(id).unwrap())
        .collect();
    spec.samples = vec![1, 4];
    spec.reps = 200;
    let mut tau = spec.clone();
    tau.tau = 0.5;
    let options = CheckOptions {
        seed: 3,
        threads: 0,
        speed_repeats: 1,
        speed: false,
    };
    let baseline =
        Baseline::measure(&[("main".into(), spec), ("tau=0.5".into(), tau)], &options).unwrap();
    let mut json = serde_json::to_value(&baseline).unwrap();
    json["speed"] = serde_json::json!([
        {"path": "cpu/score-function", "tier": "avx2", "draws_per_second": 2.0e8, "ratio": 2.0},
        {"path": "cpu/relaxed", "tier": "avx2", "draws_per_second": 2.0e7, "ratio": 0.2},
        {"path": "cpu/relaxed", "tier": "avx512", "draws_per_second": 4.0e7, "ratio": 0.4}
    ]);
    json
}

fn check_file(path: &std::path::Path) -> std::process::Output {
    mcgrad(&[
        "check",
        "--baseline",
        path.to_str().unwrap(),
        "--no-speed",
        "--seed",
        "4",
    ])
}

#[test]
fn a_baseline_that_does_not_cover_its_configuration_or_has_bad_levels_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = small_baseline();
    let path = dir.path().join("baseline.json");
    std::fs::write(&path, good.to_string()).unwrap();
    let out = check_file(&path);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the valid baseline passes\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let quality = good["quality"].as_array().unwrap().clone();
    let mut cases: Vec<(&str, serde_json::Value, &str)> = Vec::new();
    let mut empty = good.clone();
    empty["quality"] = serde_json::json!([]);
    cases.push(("quality records lost", empty, "no quality record"));
    let mut one_lost = good.clone();
    one_lost["quality"].as_array_mut().unwrap().remove(3);
    cases.push(("one quality record lost", one_lost, "no quality record"));
    let mut duplicate = good.clone();
    duplicate["quality"]
        .as_array_mut()
        .unwrap()
        .push(quality[2].clone());
    cases.push(("a duplicate record", duplicate, "two quality records"));
    let mut stray = good.clone();
    let mut extra = quality[2].clone();
    extra["samples"] = serde_json::json!(64);
    stray["quality"].as_array_mut().unwrap().push(extra);
    cases.push(("a record the sweeps do not run", stray, "do not run"));
    let mut duplicate_speed = good.clone();
    let first_speed = good["speed"][0].clone();
    duplicate_speed["speed"]
        .as_array_mut()
        .unwrap()
        .push(first_speed);
    cases.push((
        "a duplicate speed record",
        duplicate_speed,
        "two speed records",
    ));
    let mut unknown_tier = good.clone();
    unknown_tier["speed"][0]["tier"] = serde_json::json!("sse9");
    cases.push(("an unknown instruction tier", unknown_tier, "tier `sse9`"));
    let mut no_tier = good.clone();
    no_tier["speed"][0].as_object_mut().unwrap().remove("tier");
    cases.push(("a speed record without its tier", no_tier, "tier"));
    let mut old_schema = good.clone();
    old_schema["schema"] = serde_json::json!("mcgrad-baseline/2");
    cases.push(("the format before tiers", old_schema, "mcgrad-baseline/2"));
    for (field, bad) in [
        ("alpha", 0.0),
        ("alpha", -0.001),
        ("slowdown_limit", 0.0),
        ("slowdown_limit", -1.5),
    ] {
        let mut b = good.clone();
        b[field] = serde_json::json!(bad);
        cases.push(("a level of 0 or below", b, field));
    }
    for (field, bad) in [("ratio", 0.0), ("ratio", -2.0), ("draws_per_second", 0.0)] {
        let mut b = good.clone();
        b["speed"][1][field] = serde_json::json!(bad);
        cases.push(("a speed figure of 0 or below", b, field));
    }
    for (what, json, needle) in cases {
        std::fs::write(&path, json.to_string()).unwrap();
        let out = check_file(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert_eq!(error_lines(&out), 1, "{what}: {stderr}");
        assert!(stderr.contains(needle), "{what}: {stderr}");
        assert!(out.stdout.is_empty(), "{what}: nothing checked");
    }
}

#[test]
fn an_instruction_tier_cap_that_names_no_tier_is_bad_input() {
    let out = mcgrad_simd("avx3", &["info"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(error_lines(&out), 1, "{stderr}");
    assert!(stderr.contains("MCGRAD_SIMD=avx3"), "{stderr}");
    assert!(out.stdout.is_empty());
    let out = mcgrad_simd("portable", &["info"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout.contains("portable loops"), "{stdout}");
}

#[test]
fn an_update_writes_its_own_tier_and_keeps_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baseline.json");
    std::fs::write(&path, small_baseline().to_string()).unwrap();
    // Capped to the portable tier, which every CPU runs: the file has only avx2 and avx512.
    let out = mcgrad_simd(
        "portable",
        &[
            "check",
            "--update",
            "--baseline",
            path.to_str().unwrap(),
            "--seed",
            "8",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut records: Vec<(String, String, f64)> = written["speed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["tier"].as_str().unwrap().to_string(),
                f["path"].as_str().unwrap().to_string(),
                f["ratio"].as_f64().unwrap(),
            )
        })
        .collect();
    records.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let kept: Vec<(&str, &str, f64)> = records
        .iter()
        .filter(|r| r.0 != "portable")
        .map(|r| (r.0.as_str(), r.1.as_str(), r.2))
        .collect();
    assert_eq!(
        kept,
        vec![
            ("avx2", "cpu/relaxed", 0.2),
            ("avx2", "cpu/score-function", 2.0),
            ("avx512", "cpu/relaxed", 0.4)
        ]
    );
    let measured: Vec<&str> = records
        .iter()
        .filter(|r| r.0 == "portable")
        .map(|r| r.1.as_str())
        .collect();
    assert_eq!(measured, vec!["cpu/relaxed", "cpu/score-function"]);
}
