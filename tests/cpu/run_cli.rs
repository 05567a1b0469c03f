//! `mcgrad run` through the binary: its figures against the core's exact moments, exact
//! reproduction from a results folder's `problem.json`, bad input (exit code 2, nothing
//! written) and the plots. Small problems and few repetitions keep it fast in debug builds.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mcgrad::estimators::{self, Context};
use mcgrad::loss::Loss;
use mcgrad::problem::Problem;
use mcgrad::summary::Summary;

fn mcgrad(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mcgrad"))
        .args(args)
        .output()
        .expect("the mcgrad binary runs")
}

fn path_arg(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "mcgrad failed ({:?}):\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write_problem(dir: &Path, problem: &Problem) -> PathBuf {
    let path = dir.join("small.json");
    std::fs::write(&path, problem.to_json().to_string()).unwrap();
    path
}

/// Entries of `dir` (to check that a failed run left nothing behind, staging folders included).
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn figures_agree_with_the_exact_moments() {
    let tmp = tempfile::tempdir().unwrap();
    let problem = Problem::seeded(11, 6, 4);
    let problem_path = write_problem(tmp.path(), &problem);
    let out_dir = tmp.path().join("out");
    let out = mcgrad(&[
        "run",
        "--problem",
        path_arg(&problem_path),
        "--out",
        path_arg(&out_dir),
        "--loss",
        "squared,linear",
        "--estimators",
        "exact,reinforce,rloo,muprop,gumbel-softmax",
        "--samples",
        "1,2,8",
        "--reps",
        "4000",
        "--seed",
        "5",
    ]);
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rloo needs S >= 2; skipped at S = 1"),
        "no RLOO note in: {stderr}"
    );

    let summary = Summary::load(&out_dir.join("summary.json")).unwrap();
    // 2 losses x (5 estimators at S = 2, 8, and 4 at S = 1, without rloo).
    assert_eq!(summary.records.len(), 2 * (5 + 5 + 4));
    assert!(!summary
        .records
        .iter()
        .any(|r| r.estimator == "rloo" && r.samples == 1));

    let x_norm_sq = problem.x_norm_sq();
    let mut checked = 0;
    for r in &summary.records {
        let ctx = Context::new(&problem, Loss::parse(&r.loss).unwrap(), 1.0);
        for (a, b) in r.exact_grad.iter().zip(&ctx.grad) {
            assert!(
                (a - b).abs() <= 1e-14 * b.abs().max(1e-3),
                "{} {}: exact gradient",
                r.loss,
                r.estimator
            );
        }
        let Some(exact) = estimators::by_id(&r.estimator)
            .unwrap()
            .exact_moments(&ctx, r.samples)
        else {
            assert!(
                r.exact_var.is_none() && r.exact_total_var_w.is_none(),
                "{}: no closed form",
                r.estimator
            );
            continue;
        };
        let what = format!("{} {} S={}", r.loss, r.estimator, r.samples);
        let reported = r
            .exact_var
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: exact_var missing"));
        for (a, b) in reported.iter().zip(&exact.var) {
            assert!(
                (a - b).abs() <= 1e-12 * b.abs().max(1e-300),
                "{what}: exact_var {a} vs {b}"
            );
        }
        let total: f64 = x_norm_sq * exact.var.iter().sum::<f64>();
        assert!(
            (r.exact_total_var_w.unwrap() - total).abs() <= 1e-12 * total.max(1e-300),
            "{what}"
        );
        // Monte Carlo against the closed forms, within 5 standard errors (plus rounding).
        for j in 0..r.var.len() {
            let tol_var = 5.0 * r.var_se[j] + 1e-12 * exact.var[j].abs() + 1e-15;
            assert!(
                (r.var[j] - exact.var[j]).abs() <= tol_var,
                "{what}: var[{j}] {} vs exact {}",
                r.var[j],
                exact.var[j]
            );
            let tol_mean = 5.0 * r.mean_se[j] + 1e-12;
            assert!(
                (r.mean[j] - exact.mean[j]).abs() <= tol_mean,
                "{what}: mean[{j}] {} vs exact {}",
                r.mean[j],
                exact.mean[j]
            );
        }
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} records had closed forms");

    // The CSV carries the same records.
    let csv = std::fs::read_to_string(out_dir.join("summary.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + summary.records.len());
}

fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.len() > 10_000,
        "{} is only {} bytes",
        path.display(),
        bytes.len()
    );
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
}

fn svg_text(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        text.contains("<svg") && text.trim_end().ends_with("</svg>"),
        "{} is not an SVG",
        path.display()
    );
    assert!(text.contains("<text"), "{} has no text", path.display());
    text
}

#[test]
fn problem_file_reproduces_the_summary_and_plots_are_written() {
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("first");
    let args = ["--samples", "1,4", "--reps", "40", "--seed", "3", "--quiet"];
    let out = mcgrad(&[&["run", "--out", path_arg(&first)][..], &args[..]].concat());
    assert_success(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reinforce"),
        "no table on stdout"
    );

    // Plots: four sweep figures and, for D = 784, one map figure per loss; PNG and SVG each.
    for stem in [
        "variance",
        "mse",
        "bias",
        "snr",
        "maps-squared",
        "maps-seed",
        "maps-linear",
    ] {
        assert_png(&first.join(format!("{stem}.png")));
        let svg = svg_text(&first.join(format!("{stem}.svg")));
        if stem.starts_with("maps") {
            assert!(
                svg.contains("data:image/png;base64,"),
                "{stem}.svg has no embedded maps"
            );
        }
    }

    // A second run from the first one's problem file, into a folder that holds an earlier
    // result (which it must replace whole): a copy of the first, with one more file its
    // marker lists.
    let second = tmp.path().join("second");
    std::fs::create_dir(&second).unwrap();
    for name in entries(&first) {
        std::fs::copy(first.join(&name), second.join(&name)).unwrap();
    }
    std::fs::write(second.join("stale.txt"), "from an earlier run").unwrap();
    let marker = second.join(mcgrad::outdir::MARKER);
    let listed = std::fs::read_to_string(&marker).unwrap();
    std::fs::write(&marker, listed + "stale.txt\n").unwrap();
    let problem = first.join("problem.json");
    let out = mcgrad(
        &[
            &["--problem", path_arg(&problem), "--out", path_arg(&second)][..],
            &args[..],
        ]
        .concat(),
    );
    assert_success(&out);
    assert!(
        !second.join("stale.txt").exists(),
        "the earlier result was not replaced whole"
    );
    assert_eq!(
        entries(tmp.path()),
        ["first", "second"],
        "staging folders left behind"
    );

    let a = Summary::load(&first.join("summary.json")).unwrap();
    let b = Summary::load(&second.join("summary.json")).unwrap();
    assert_eq!(a.without_timings(), b.without_timings());
    assert_eq!(
        std::fs::read(&problem).unwrap(),
        std::fs::read(second.join("problem.json")).unwrap()
    );
    // And as text: every line but the timings is identical.
    let strip = |text: String| -> String {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut v = v;
        v.as_object_mut().unwrap().remove("timing");
        for r in v["records"].as_array_mut().unwrap() {
            r.as_object_mut().unwrap().remove("seconds");
        }
        v.to_string()
    };
    assert_eq!(
        strip(std::fs::read_to_string(first.join("summary.json")).unwrap()),
        strip(std::fs::read_to_string(second.join("summary.json")).unwrap())
    );
}

#[test]
fn bad_input_exits_with_2_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let malformed = tmp.path().join("malformed.json");
    std::fs::write(
        &malformed,
        "{\"x\": [1, 2], \"w\": [[1, 2]], \"t\": [0.5, 0.5]",
    )
    .unwrap();
    let wrong_shape = tmp.path().join("wrong-shape.json");
    std::fs::write(
        &wrong_shape,
        "{\"x\": [1, 2], \"w\": [[1, 2], [3]], \"t\": [0.5, 0.5]}",
    )
    .unwrap();
    let a_file = tmp.path().join("a-file");
    std::fs::write(&a_file, "not a folder").unwrap();
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("precious.txt"), "keep me").unwrap();
    let missing = tmp.path().join("missing.json");
    let before = entries(tmp.path());

    let out_dir = tmp.path().join("out");
    let under_file = a_file.join("out");
    let small = ["--samples", "2", "--reps", "5"];
    let cases: Vec<(&str, Vec<&str>, &Path)> = vec![
        (
            "unknown estimator",
            vec!["--estimators", "reinforce,nope"],
            &out_dir,
        ),
        ("unknown loss", vec!["--loss", "squared,cubic"], &out_dir),
        ("S = 0", vec!["--samples", "4,0"], &out_dir),
        ("R < 2", vec!["--reps", "1"], &out_dir),
        ("tau = 0", vec!["--tau", "0"], &out_dir),
        (
            "baseline warm-up past its bound",
            vec!["--baseline-warmup", "100001"],
            &out_dir,
        ),
        ("tau below its bound", vec!["--tau", "1e-300"], &out_dir),
        (
            "rloo with S < 2 only",
            vec!["--estimators", "rloo", "--samples", "1"],
            &out_dir,
        ),
        (
            "unreadable problem",
            vec!["--problem", path_arg(&missing)],
            &out_dir,
        ),
        (
            "malformed problem",
            vec!["--problem", path_arg(&malformed)],
            &out_dir,
        ),
        (
            "wrong-shape problem",
            vec!["--problem", path_arg(&wrong_shape)],
            &out_dir,
        ),
        ("unwritable DIR", vec![], &under_file),
        ("foreign DIR", vec![], &foreign),
        (
            "unknown adapter",
            vec!["--backend", "gpu", "--adapter", "no-such-adapter-xyz"],
            &out_dir,
        ),
    ];
    for (what, extra, dir) in cases {
        // Small defaults for the options the case does not set.
        let defaults = small
            .chunks(2)
            .filter(|pair| !extra.contains(&pair[0]))
            .flatten()
            .copied();
        let args: Vec<&str> = ["run", "--out", path_arg(dir)]
            .into_iter()
            .chain(defaults)
            .chain(extra.iter().copied())
            .collect();
        let out = mcgrad(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{what}: exit code; stderr: {stderr}"
        );
        assert!(
            stderr.starts_with("error: ") && stderr.trim_end().lines().count() == 1,
            "{what}: {stderr:?}"
        );
        assert!(
            !out_dir.exists() && !under_file.exists(),
            "{what}: wrote a results folder"
        );
        assert_eq!(entries(tmp.path()), before, "{what}: left files behind");
        assert_eq!(
            entries(&foreign),
            ["precious.txt"],
            "{what}: touched a foreign folder"
        );
    }
}

/// `mcgrad run --help` lists every estimator and loss id, from the registry (so one added
/// later shows up without editing the help).
#[test]
fn run_help_lists_every_estimator_and_loss() {
    let out = mcgrad(&["run", "--help"]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    let listed = |line_start: &str| -> Vec<String> {
        let i = text.find(line_start).expect("option in the help");
        // clap puts the help beside the option or, when it is long, on the next line.
        let mut lines = text[i..].lines();
        let first = lines.next().unwrap_or_default();
        let line = if first.contains(": ") {
            first
        } else {
            lines.next().unwrap_or_default()
        };
        let list = line.split_once(": ").map_or("", |(_, l)| l);
        list.split(" (")
            .next()
            .unwrap_or_default()
            .split(", ")
            .map(|s| s.trim().to_string())
            .collect()
    };
    let ids: Vec<String> = estimators::REGISTRY
        .iter()
        .map(|e| e.id().to_string())
        .collect();
    assert_eq!(listed("--estimators <LIST>"), ids, "{text}");
    let losses: Vec<String> = Loss::ALL.iter().map(|l| l.name().to_string()).collect();
    assert_eq!(listed("--loss <LIST>"), losses, "{text}");
}
