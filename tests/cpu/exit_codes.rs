//! Exit codes of failures that are not the user's input: a standard output that cannot be
//! written is a clean error (exit 1, not a panic's 101), a closed pipe ends the output
//! quietly, and a run whose figures come out NaN fails (exit 1) without writing them.

use std::process::{Command, Output, Stdio};

fn mcgrad_to(args: &[&str], stdout: Stdio) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mcgrad"))
        .args(args)
        .stdout(stdout)
        .output()
        .expect("the mcgrad binary runs")
}

/// `mcgrad run > /dev/full` (and `mcgrad info > /dev/full`): exit 1 and one error line.
#[test]
fn a_full_stdout_is_a_failure_not_a_panic() {
    let full = std::path::Path::new("/dev/full");
    if !full.exists() {
        eprintln!("skipped: no /dev/full");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let run = [
        "run",
        "--out",
        out_dir.to_str().unwrap(),
        "--reps",
        "10",
        "--samples",
        "2",
        "--quiet",
    ];
    for args in [&run[..], &["info"][..]] {
        let file = std::fs::OpenOptions::new().write(true).open(full).unwrap();
        let out = mcgrad_to(args, Stdio::from(file));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: cannot write to standard output")
                && stderr.trim_end().lines().count() == 1,
            "{args:?}: {stderr}"
        );
    }
}

/// `mcgrad run | head -0`: the reader is gone; mcgrad ends quietly with exit 0.
#[test]
fn a_closed_pipe_ends_the_table_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mcgrad"))
        .args([
            "run",
            "--out",
            out_dir.to_str().unwrap(),
            "--reps",
            "10",
            "--samples",
            "2",
            "--quiet",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

/// Logits beyond f64 (x and W of 1e200) make NaN figures: the run fails without writing a
/// summary with holes in it. (Exit 2 if the problem is refused up front, 1 if the NaN is
/// caught in the records; never 0.)
#[test]
fn nan_figures_are_never_written() {
    let tmp = tempfile::tempdir().unwrap();
    let problem = tmp.path().join("huge.json");
    std::fs::write(
        &problem,
        r#"{"x": [1e200, 1e200], "w": [[1e200, 0, 1], [0, 1e200, 1]], "t": [0.1, 0.2, 0.3]}"#,
    )
    .unwrap();
    let out_dir = tmp.path().join("out");
    let out = mcgrad_to(
        &[
            "run",
            "--problem",
            problem.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
            "--reps",
            "10",
            "--samples",
            "2",
            "--quiet",
        ],
        Stdio::piped(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(matches!(out.status.code(), Some(1 | 2)), "{stderr}");
    if out.status.code() == Some(1) {
        assert!(stderr.contains("not a finite number"), "{stderr}");
    }
    assert!(!out_dir.exists());
}
