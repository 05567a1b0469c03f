//! Results folders (`--out`): a folder that mcgrad did not write is never replaced, a
//! symbolic link is written through, an interrupted run leaves no hidden folder behind (and
//! the next run removes those a killed run left), and a write failure during the run is a
//! failure (exit 1) that names the user's path and leaves `--out` as it was.
//!
//! Every test but the last runs the binary; the last sets a process-wide fault, so this file
//! holds no other test that writes results in-process.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mcgrad::outdir::MARKER;

const SMALL: [&str; 5] = ["--reps", "10", "--samples", "2", "--quiet"];

fn mcgrad(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mcgrad"))
        .args(args)
        .output()
        .expect("the mcgrad binary runs")
}

fn run_into(out: &Path) -> Output {
    let mut args = vec!["run", "--out", out.to_str().unwrap()];
    args.extend(SMALL);
    mcgrad(&args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn hidden(dir: &Path) -> Vec<String> {
    entries(dir)
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect()
}

/// A project folder that happens to hold a `summary.json` (or `curves.json`) is refused, with
/// what is in the way listed, and nothing in it is touched.
#[test]
fn a_folder_mcgrad_did_not_write_is_refused_and_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = tmp.path().join("proj");
    std::fs::create_dir_all(proj.join("src")).unwrap();
    std::fs::write(proj.join("summary.json"), "{}").unwrap();
    std::fs::write(proj.join("curves.json"), "{}").unwrap();
    std::fs::write(proj.join("data.csv"), "1,2\n").unwrap();
    let before = entries(&proj);

    let out = run_into(&proj);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    for name in ["data.csv", "src/", "summary.json"] {
        assert!(
            stderr(&out).contains(name),
            "{name} not listed: {}",
            stderr(&out)
        );
    }
    assert_eq!(entries(&proj), before);

    let out = mcgrad(&[
        "train",
        "--out",
        proj.to_str().unwrap(),
        "--steps",
        "2",
        "--train-size",
        "20",
        "--test-size",
        "10",
        "--estimators",
        "exact",
        "--lr",
        "0.1",
        "--backend",
        "cpu",
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("data.csv"), "{}", stderr(&out));
    assert_eq!(entries(&proj), before);
    assert_eq!(hidden(tmp.path()), Vec::<String>::new());
}

/// An earlier output is replaced whole (files its marker lists included); a file added to it
/// by hand makes it foreign.
#[test]
fn an_earlier_output_is_replaced_and_a_file_added_by_hand_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    assert!(run_into(&out_dir).status.success());
    let marker = std::fs::read_to_string(out_dir.join(MARKER)).unwrap();
    assert!(marker.lines().any(|l| l == "summary.json"), "{marker}");

    std::fs::write(out_dir.join("old.png"), "from an older version").unwrap();
    std::fs::write(out_dir.join(MARKER), marker.clone() + "old.png\n").unwrap();
    let out = run_into(&out_dir);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!out_dir.join("old.png").exists(), "not replaced whole");

    std::fs::write(out_dir.join("notes.txt"), "mine").unwrap();
    let out = run_into(&out_dir);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("notes.txt"), "{}", stderr(&out));
    assert!(out_dir.join("notes.txt").exists());
    assert_eq!(hidden(tmp.path()), Vec::<String>::new());
}

/// `--out LINK` writes into the folder the link points to and keeps the link; a dangling
/// link is refused.
#[cfg(unix)]
#[test]
fn a_symlinked_out_is_written_through() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("target");
    assert!(run_into(&target).status.success());
    let first = std::fs::read_to_string(target.join("summary.json")).unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();

    let mut args = vec!["run", "--out", link.to_str().unwrap(), "--seed", "7"];
    args.extend(SMALL);
    let out = mcgrad(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let second = std::fs::read_to_string(target.join("summary.json")).unwrap();
    assert_ne!(first, second, "the link's target kept the old results");
    assert_eq!(hidden(tmp.path()), Vec::<String>::new());

    let dangling = tmp.path().join("dangling");
    std::os::unix::fs::symlink(tmp.path().join("nowhere"), &dangling).unwrap();
    let out = run_into(&dangling);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!tmp.path().join("nowhere").exists());
}

/// SIGTERM in the middle of a run removes its staging folder; the process still dies of the
/// signal.
#[cfg(unix)]
#[test]
fn sigterm_mid_run_leaves_no_hidden_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mcgrad"))
        .args([
            "run",
            "--out",
            out_dir.to_str().unwrap(),
            "--reps",
            "1000000",
            "--samples",
            "4096",
            "--backend",
            "cpu",
            "--threads",
            "1",
            "--quiet",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let staging = tmp.path().join(format!(".out.partial-{}", child.id()));
    let start = Instant::now();
    while !staging.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no staging folder appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: sends SIGTERM to the child this test spawned.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    assert_eq!(entries(tmp.path()), Vec::<String>::new());
}

/// The hidden folders of a process that is gone (`kill -9`) are removed by the next run on
/// the same `--out`; a moved-aside folder whose destination is missing comes back.
#[test]
fn stale_folders_of_dead_processes_are_removed_by_the_next_run() {
    if !Path::new("/proc/self").exists() {
        eprintln!("skipped: no /proc to tell a dead process");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dead = 999_999;
    assert!(!Path::new(&format!("/proc/{dead}")).exists());
    for kind in ["partial", "tmp"] {
        let stale = tmp.path().join(format!(".out.{kind}-{dead}"));
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("summary.json"), "half written").unwrap();
    }
    // Another --out's folder and a live process's folder are left alone.
    std::fs::create_dir(tmp.path().join(format!(".other.partial-{dead}"))).unwrap();
    let live = tmp
        .path()
        .join(format!(".out.partial-{}", std::process::id()));
    std::fs::create_dir(&live).unwrap();

    assert!(run_into(&tmp.path().join("out")).status.success());
    assert_eq!(
        entries(tmp.path()),
        [
            format!(".other.partial-{dead}"),
            format!(".out.partial-{}", std::process::id()),
            "out".into()
        ]
    );

    // A run killed between its two renames: the earlier results are aside, `out` is missing.
    let aside = tmp.path().join(format!(".back.old-{dead}"));
    std::fs::rename(tmp.path().join("out"), &aside).unwrap();
    let back = tmp.path().join("back");
    assert!(run_into(&back).status.success());
    assert!(!aside.exists());
    assert!(back.join("summary.json").exists());
}

/// `--out` under something that is not a folder is bad input naming the user's path.
#[test]
fn an_unwritable_out_is_bad_input() {
    let out = run_into(Path::new("/dev/full/x"));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("/dev/full/x"), "{}", stderr(&out));
}

/// A results file that cannot be written (a full disk) is a failure while running: exit 1,
/// the message names the file under `--out` (not the hidden staging folder), the earlier
/// results stay, and no hidden folder is left.
#[test]
fn a_full_disk_is_a_failure_that_names_the_users_path() {
    use mcgrad::faults::{self, Faults};
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("results");
    assert!(run_into(&out_dir).status.success());
    let before = std::fs::read(out_dir.join("summary.json")).unwrap();

    let spec = mcgrad::engine::SweepSpec {
        problem: mcgrad::problem::Problem::seeded(0, 6, 3),
        losses: vec![mcgrad::loss::Loss::Squared],
        estimators: vec![mcgrad::estimators::by_id("reinforce").unwrap()],
        samples: vec![2],
        reps: 10,
        seed: 0,
        tau: 1.0,
        settings: Default::default(),
    };
    let config = mcgrad::run::RunConfig {
        out: out_dir.clone(),
        spec,
        backend: mcgrad::backend::Backend::Cpu,
        adapter: None,
        threads: 1,
        quiet: true,
    };
    for file in ["summary.json", "summary.csv", mcgrad::outdir::MARKER] {
        faults::set(Faults {
            write_failure: Some(file.into()),
            ..Faults::default()
        });
        let err = mcgrad::run::execute(&config).unwrap_err();
        faults::clear();
        let message = err.to_string();
        assert_eq!(err.exit_code(), 1, "{file}: {message}");
        assert!(
            message.contains(&out_dir.join(file).display().to_string()),
            "{file}: {message}"
        );
        assert!(!message.contains(".partial"), "{file}: {message}");
        assert_eq!(
            std::fs::read(out_dir.join("summary.json")).unwrap(),
            before,
            "{file}"
        );
        assert_eq!(hidden(tmp.path()), Vec::<String>::new(), "{file}");
    }
}
