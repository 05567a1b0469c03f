//! `mcgrad reproduce`: every experiment's quick form writes its folder (README, data, every
//! figure in PNG and SVG) and its headline claims hold, each a sign test across 10 seeds at a
//! stated significance (see each experiment's `claims`); results do not depend on the thread
//! count; bad input is one line and exit code 2.
//!
//! The claims are seeded, so each test is deterministic: it never flakes, and it fails only
//! if the code changes what the experiment measures.

use std::path::Path;
use std::process::Command;

use mcgrad::reproduce::{self, Options, EXPERIMENTS};

fn quick(threads: usize) -> Options {
    Options {
        quick: true,
        threads,
    }
}

/// Runs one experiment's quick form into a fresh folder and checks what it wrote.
fn check_experiment(name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(name);
    let e = reproduce::by_name(name).unwrap();
    let written = reproduce::reproduce(&[(e, out.clone())], &quick(0), &|_| {}).unwrap();
    let w = &written[0];
    for f in ["README.md", "data.csv", "data.json"] {
        let len = std::fs::metadata(out.join(f)).unwrap().len();
        assert!(len > 200, "{name}: {f} has {len} bytes");
    }
    let pngs: Vec<_> = w
        .files
        .iter()
        .filter(|f| f.extension().is_some_and(|x| x == "png"))
        .collect();
    assert!(!pngs.is_empty(), "{name}: no figure");
    for png in pngs {
        assert!(
            out.join(png.with_extension("svg")).exists(),
            "{name}: {png:?} has no SVG"
        );
        let bytes = std::fs::read(out.join(png)).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{name}: {png:?} is not a PNG");
    }
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    for section in [
        "## Setting",
        "## What the paper reports",
        "## What mcgrad measured",
        "## Where mcgrad and the paper differ, and why",
        "mcgrad reproduce",
    ] {
        assert!(readme.contains(section), "{name}: README lacks {section}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("data.json")).unwrap()).unwrap();
    assert_eq!(json["experiment"], name);
    assert!(!w.claims.is_empty(), "{name}: no claim is checked");
    for c in &w.claims {
        assert!(
            c.holds,
            "{name}: claim does not hold: {} ({})",
            c.statement, c.evidence
        );
        // A sign test must be significant at the level its requirement states.
        if let (Some(n), Some(k)) = (c.trials, c.required) {
            assert!(
                reproduce::claims::binomial_tail(n, k) <= 0.055,
                "{name}: requiring {k} of {n} is too weak a test"
            );
        }
    }
}

/// At t = 0.45, REBAR's and RELAX's gradient variance along their trajectories is below
/// REINFORCE's in at least 9 of 10 seeds (sign test, p <= 0.011 each).
#[test]
fn rebar_toy_quick() {
    check_experiment("rebar-toy");
}

/// At t = 0.499, RELAX ends closer to the optimum than REINFORCE, and than REBAR, in at least
/// 8 of 10 seeds (sign test, p <= 0.055 each).
#[test]
fn relax_toy_quick() {
    check_experiment("relax-toy");
}

/// For each p0, DisARM ends on the optimum's side in at least 9 of 10 seeds (p <= 0.011), and
/// beats REINFORCE at p0 = 0.499 and 0.501 in at least 8 of 10 (p <= 0.055).
#[test]
fn arm_toy_quick() {
    check_experiment("arm-toy");
}

/// For each p, ReinMax ends below straight-through in at least 9 of 10 seeds (p <= 0.011).
#[test]
fn reinmax_poly_quick() {
    check_experiment("reinmax-poly");
}

/// IndeCateR's variance is below REINFORCE's and RLOO's (exact), its cosine above
/// REINFORCE's (z-test at 0.001), and it beats REINFORCE at equal loss evaluations on the
/// 200-Bernoulli optimisation in at least 9 of 10 seeds (p <= 0.011).
#[test]
fn indecater_synthetic_quick() {
    check_experiment("indecater-synthetic");
}

/// The data are the same on one thread and on two (wall seconds aside).
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let e = reproduce::by_name("rebar-toy").unwrap();
    let strip = |dir: &Path| -> Vec<String> {
        let text = std::fs::read_to_string(dir.join("data.csv")).unwrap();
        let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
        let secs = header.iter().position(|h| *h == "seconds");
        text.lines()
            .map(|line| {
                line.split(',')
                    .enumerate()
                    .filter(|(i, _)| Some(*i) != secs)
                    .map(|(_, f)| f)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect()
    };
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    reproduce::reproduce(&[(e, one.clone())], &quick(1), &|_| {}).unwrap();
    reproduce::reproduce(&[(e, two.clone())], &quick(2), &|_| {}).unwrap();
    assert_eq!(strip(&one), strip(&two));
}

fn mcgrad(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mcgrad"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn list_names_every_experiment() {
    let out = mcgrad(&["reproduce", "--list"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for e in EXPERIMENTS {
        assert!(text.contains(e.name), "--list lacks {}", e.name);
    }
}

#[test]
fn bad_input_is_one_line_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "mine").unwrap();
    let foreign = dir.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    for args in [
        vec!["reproduce", "no-such-experiment"],
        vec![
            "reproduce",
            "rebar-toy",
            "--quick",
            "--out",
            file.to_str().unwrap(),
        ],
        vec![
            "reproduce",
            "rebar-toy",
            "--quick",
            "--out",
            foreign.to_str().unwrap(),
        ],
        vec!["reproduce", "rebar-toy", "--quick", "--threads", "100000"],
    ] {
        let out = mcgrad(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
    }
    // Nothing of the user's was touched.
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");
    assert_eq!(std::fs::read_dir(&foreign).unwrap().count(), 1);
    // Clap's own usage errors exit with 2 as well (no name and no --list or --all).
    assert_eq!(mcgrad(&["reproduce"]).status.code(), Some(2));
}
