//! The README's training table is reproducible (issue 12, item 9):
//! - the table in the README is exactly what `examples/training_table.rs` renders from the
//!   committed runs (`results/train/curves.json`, `results/train-seeds/seed-N.json`), so nobody
//!   edits it by hand;
//! - the committed runs are what the committed code gives: one cell (`gumbel-softmax`, seed 1,
//!   the run's own configuration, learning rate tuned as in the run) is rerun through the binary
//!   and every evaluation point must match the committed curve. Training on the CPU is
//!   deterministic (the same for any thread count and estimator list), so the tolerance is
//!   rounding (1e-12 relative); a change to the draws, the estimators or the training shows
//!   here until `scripts/readme-figures.sh` is rerun.

#[path = "../../examples/training_table.rs"]
mod training_table;

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_readme_training_table_is_rendered_from_the_committed_runs() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let block = training_table::block(&readme).expect("the README has the table's markers");
    let rendered = training_table::render(root()).unwrap();
    assert_eq!(
        block, rendered,
        "the README's training table differs from the committed runs: run scripts/readme-figures.sh"
    );
}

fn final_points(entry: &serde_json::Value) -> Vec<(u64, f64, f64)> {
    entry["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["step"].as_u64().unwrap(),
                p["heldout_loss"].as_f64().unwrap(),
                p["heldout_accuracy"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_committed_training_run_is_what_the_code_gives() {
    let (seed, id) = (1u64, "gumbel-softmax");
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(training_table::curves_path(root(), seed)).unwrap(),
    )
    .unwrap();
    let config = &committed["config"];
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let lr_grid: Vec<String> = committed["lr_grid"]
        .as_array()
        .expect("the run records its learning-rate grid")
        .iter()
        .map(|v| v.to_string())
        .collect();
    let lr_grid = lr_grid.join(",");
    let arg = |field: &str| config[field].to_string().trim_matches('"').to_string();
    let status = Command::new(env!("CARGO_BIN_EXE_mcgrad"))
        .args(["train", "--backend", "cpu", "--quiet", "--estimators", id])
        .args(["--seed", &seed.to_string()])
        .args(["--steps", &arg("steps"), "--batch", &arg("batch")])
        .args([
            "--samples",
            &arg("samples"),
            "--optimizer",
            &arg("optimizer"),
        ])
        .args(["--loss", &arg("loss"), "--tau", &arg("tau")])
        .args(["--eval-every", &arg("eval_every")])
        .args(["--variance-reps", &arg("variance_reps")])
        .args(["--lr-grid", &lr_grid])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("the mcgrad binary runs");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let fresh: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("curves.json")).unwrap()).unwrap();
    let find = |run: &serde_json::Value| {
        run["estimators"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .cloned()
            .unwrap()
    };
    let (old, new) = (find(&committed), find(&fresh));
    assert_eq!(old["lr"], new["lr"], "the tuned learning rate");
    let (old, new) = (final_points(&old), final_points(&new));
    assert_eq!(old.len(), new.len());
    for (a, b) in old.iter().zip(&new) {
        assert_eq!(a.0, b.0);
        assert!(
            (a.1 - b.1).abs() <= 1e-12 * a.1.abs() && a.2 == b.2,
            "step {}: committed loss {} accuracy {}, now {} {}: run scripts/readme-figures.sh",
            a.0,
            a.1,
            a.2,
            b.1,
            b.2
        );
    }
}
