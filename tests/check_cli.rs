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
