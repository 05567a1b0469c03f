//! Library-level tests of `mcgrad train`: the optimiser step lowers the exact objective, the
//! estimators' ranking under equal budgets, the IDX validation, the gradient-variance probe
//! against Monte Carlo, reproducibility, and the files a run writes. All seeded, fast in debug.

use std::io::Write;
use std::path::Path;

use mcgrad::backend::Backend;
use mcgrad::estimators::by_id;
use mcgrad::loss::Loss;
use mcgrad::train::data::{self, Dataset, D, K};
use mcgrad::train::model::{self, DrawKey, GradientSpec};
use mcgrad::train::{self, Optimizer, OptimizerKind, Record, TrainConfig, TrainOptions};
use mcgrad::Error;

const SPEC: GradientSpec = GradientSpec {
    loss: Loss::Squared,
    samples: 2,
    tau: 1.0,
};

fn small_batch(n: usize) -> Dataset {
    data::synthetic(11, 0, n)
}

fn objective(x: &[f32], labels: &[u8], w: &[f64]) -> f64 {
    let mut logits = vec![0.0; labels.len() * K];
    model::forward_batch(x, w, &mut logits);
    let key = DrawKey {
        key: [0, 0],
        step: 0,
        rep_offset: 0,
    };
    let mut g = vec![0.0; D * K];
    model::batch_gradient(
        by_id("exact").unwrap(),
        SPEC,
        x,
        labels,
        &logits,
        0.0,
        key,
        None,
        &mut g,
    )
    .objective
}

/// A W that is not 0, so that the objective's gradient has every sign.
fn some_w() -> Vec<f64> {
    (0..D * K)
        .map(|i| 0.02 * (((i * 7919) % 201) as f64 - 100.0) / 100.0)
        .collect()
}

#[test]
fn one_sgd_step_with_exact_lowers_the_exact_objective() {
    let batch = small_batch(8);
    let (x, labels) = (&batch.x, &batch.labels);
    let mut w = some_w();
    let mut logits = vec![0.0; labels.len() * K];
    model::forward_batch(x, &w, &mut logits);
    let mut g = vec![0.0; D * K];
    let key = DrawKey {
        key: [0, 0],
        step: 0,
        rep_offset: 0,
    };
    let before = model::batch_gradient(
        by_id("exact").unwrap(),
        SPEC,
        x,
        labels,
        &logits,
        0.0,
        key,
        None,
        &mut g,
    )
    .objective;
    assert!((before - objective(x, labels, &w)).abs() < 1e-12);

    // The W gradient is the gradient of the objective: central differences on a few entries.
    for idx in [
        14 * 28 * K + 3,
        13 * 28 * K + 14 * K,
        15 * 28 * K + 16 * K + 7,
    ] {
        let (mut up, mut down) = (w.clone(), w.clone());
        up[idx] += 1e-5;
        down[idx] -= 1e-5;
        let fd = (objective(x, labels, &up) - objective(x, labels, &down)) / 2e-5;
        assert!(
            (fd - g[idx]).abs() < 1e-7 * (1.0 + fd.abs()),
            "entry {idx}: fd {fd} vs {}",
            g[idx]
        );
    }

    // One SGD step lowers it, by about lr ||G||^2 (first order) for a small step.
    let lr = 0.05;
    let g_sq: f64 = g.iter().map(|v| v * v).sum();
    Optimizer::new(OptimizerKind::Sgd, lr, D * K).step(&mut w, &g);
    let after = objective(x, labels, &w);
    assert!(after < before, "objective rose: {before} -> {after}");
    let predicted = lr * g_sq;
    assert!(
        ((before - after) - predicted).abs() < 0.1 * predicted,
        "decrease {} vs first-order {predicted}",
        before - after
    );
}

fn small_config(steps: u32) -> TrainConfig {
    TrainConfig {
        loss: Loss::Squared,
        samples: 2,
        batch: 16,
        steps,
        eval_every: 50,
        optimizer: OptimizerKind::Adam,
        tau: 1.0,
        seed: 5,
        variance_reps: 8,
    }
}

/// Equal budgets: the same data order, steps (500), B (16), S (2), optimiser (Adam) and draws.
/// `exact` and `muprop-c` train at 0.01, the rate the default grid picks for most
/// estimators; `reinforce` gets the better of 0.01 and 0.003 (its own pick in the reference
/// runs), so the comparison favours it. Observed at this seed: reinforce ends at 1.15 (its
/// best rate), exact at 0.48, muprop-c at 0.58 (gaps 0.68 and 0.57); the test asks for 0.3.
#[test]
fn exact_and_muprop_c_beat_reinforce_with_equal_budgets() {
    let splits = data::builtin(5, 2000, 500);
    let cfg = small_config(500);
    let final_loss = |id: &str, lr: f64| {
        let est = by_id(id).unwrap();
        let c = train::train_estimator(
            &splits.train,
            &splits.test,
            est,
            &cfg,
            lr,
            Record::FinalLoss,
            &|_| {},
        );
        c.last().heldout_loss
    };
    let reinforce = final_loss("reinforce", 0.01).min(final_loss("reinforce", 0.003));
    let exact = final_loss("exact", 0.01);
    let muprop_c = final_loss("muprop-c", 0.01);
    eprintln!("held-out loss after 500 steps: reinforce {reinforce:.4}, exact {exact:.4}, muprop-c {muprop_c:.4}");
    assert!(
        exact < reinforce - 0.3,
        "exact {exact} vs reinforce {reinforce}"
    );
    assert!(
        muprop_c < reinforce - 0.3,
        "muprop-c {muprop_c} vs reinforce {reinforce}"
    );
}

/// The variance probe's closed forms (reinforce, rloo, muprop) and its enumeration with the
/// baseline held fixed (muprop-c) agree with the sample variance of the minibatch estimate
/// over 1500 independent repetitions (tolerance 12%: the relative standard error of a
/// sample variance over 1500 heavy-tailed repetitions summed over 7840 coordinates is a few
/// percent).
#[test]
fn variance_probe_matches_monte_carlo() {
    let batch = small_batch(4);
    let w = some_w();
    let mut logits = vec![0.0; 4 * K];
    model::forward_batch(&batch.x, &w, &mut logits);
    let reps = 1500u32;
    for (id, baseline) in [
        ("reinforce", 0.0),
        ("rloo", 0.0),
        ("muprop", 0.0),
        ("muprop-c", 0.3),
    ] {
        let est = by_id(id).unwrap();
        let key = DrawKey {
            key: [9, 9],
            step: 3,
            rep_offset: 0,
        };
        let probe = model::gradient_variance(
            est,
            SPEC,
            &batch.x,
            &batch.labels,
            &logits,
            baseline,
            key,
            2,
        );
        let (mut mean, mut m2) = (vec![0.0; D * K], vec![0.0; D * K]);
        let mut g = vec![0.0; D * K];
        for r in 0..reps {
            let key = DrawKey {
                key: [1, 2],
                step: 0,
                rep_offset: r * 4,
            };
            model::batch_gradient(
                est,
                SPEC,
                &batch.x,
                &batch.labels,
                &logits,
                baseline,
                key,
                None,
                &mut g,
            );
            let n = f64::from(r + 1);
            for ((m, s), v) in mean.iter_mut().zip(&mut m2).zip(&g) {
                let d = v - *m;
                *m += d / n;
                *s += d * (v - *m);
            }
        }
        let sample: f64 = m2.iter().sum::<f64>() / f64::from(reps - 1);
        let rel = (sample - probe.total).abs() / probe.total;
        assert!(
            rel < 0.12,
            "{id}: probe {} vs Monte Carlo {sample} ({:?})",
            probe.total,
            probe.method
        );
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn idx_images(n: u32) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for v in [n, 28, 28] {
        b.extend(v.to_be_bytes());
    }
    b.extend((0..n as usize * D).map(|i| (i % 251) as u8));
    b
}

fn idx_labels(n: u32) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 1];
    b.extend(n.to_be_bytes());
    b.extend((0..n).map(|i| (i % 10) as u8));
    b
}

fn write_mnist(dir: &Path, train_images: &[u8], gz: bool) {
    let files = [
        ("train-images-idx3-ubyte", train_images.to_vec()),
        ("train-labels-idx1-ubyte", idx_labels(20)),
        ("t10k-images-idx3-ubyte", idx_images(5)),
        ("t10k-labels-idx1-ubyte", idx_labels(5)),
    ];
    for (name, bytes) in files {
        if gz {
            std::fs::write(dir.join(format!("{name}.gz")), gzip(&bytes)).unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

fn assert_invalid_data(r: mcgrad::Result<impl std::fmt::Debug>, what: &str) {
    match r {
        Err(e @ Error::InvalidData { .. }) => {
            assert_eq!(e.exit_code(), 2);
            eprintln!("{what}: {e}");
        }
        other => panic!("{what}: expected InvalidData, got {other:?}"),
    }
}

#[test]
fn valid_mnist_files_load_gzip_or_not() {
    for gz in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        write_mnist(dir.path(), &idx_images(20), gz);
        let s = data::load_mnist(dir.path()).unwrap();
        // 20 training images: 2 (a tenth) become the validation split.
        assert_eq!(
            (s.train.len(), s.validation.len(), s.test.len()),
            (18, 2, 5)
        );
        assert_eq!(s.train.x[1], 1.0 / 255.0);
        assert_eq!(s.validation.labels, vec![8, 9]);
    }
}

#[test]
fn truncated_or_corrupted_idx_files_are_invalid_data() {
    let p = Path::new("f");
    let good = idx_images(3);
    assert!(data::parse_idx(p, &good).is_ok());
    assert_invalid_data(
        data::parse_idx(p, &good[..good.len() - 1]),
        "truncated data",
    );
    assert_invalid_data(data::parse_idx(p, &good[..10]), "truncated header");
    assert_invalid_data(
        data::parse_idx(p, &[&good[..], &[0]].concat()),
        "trailing byte",
    );
    let mut bad_magic = good.clone();
    bad_magic[0] = 0x42;
    assert_invalid_data(data::parse_idx(p, &bad_magic), "bad magic");
    let mut bad_type = good.clone();
    bad_type[2] = 0x0d;
    assert_invalid_data(data::parse_idx(p, &bad_type), "float elements");
    let z = gzip(&good);
    assert!(data::parse_idx(p, &z).is_ok());
    assert_invalid_data(data::parse_idx(p, &z[..z.len() / 2]), "truncated gzip");
    let mut flipped = z.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    flipped[mid + 1] ^= 0x55;
    assert_invalid_data(data::parse_idx(p, &flipped), "corrupted gzip");

    // Through a folder, as `--mnist DIR` reads it; and the labels must match the images.
    for (what, images) in [
        ("truncated file", good[..good.len() - 7].to_vec()),
        ("3 images, 20 labels", good),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_mnist(dir.path(), &images, false);
        assert_invalid_data(data::load_mnist(dir.path()), what);
    }
}

#[test]
fn run_train_rejects_bad_data_and_options_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let mnist = dir.path().join("mnist");
    std::fs::create_dir(&mnist).unwrap();
    let img = idx_images(20);
    write_mnist(&mnist, &img[..img.len() / 2], true);
    let out = dir.path().join("out");
    let args = TrainOptions {
        mnist: Some(mnist),
        out: out.clone(),
        quiet: true,
        ..TrainOptions::default()
    };
    assert_invalid_data(
        train::run_train(&args),
        "run_train on a truncated gzip file",
    );
    assert!(!out.exists(), "nothing may be written");

    // A GPU adapter that does not exist (GpuUnavailable, found before the data is read),
    // and --adapter without a GPU backend.
    let gpu = TrainOptions {
        backend: Backend::Gpu,
        adapter: Some("no-such-adapter-anywhere".into()),
        out: out.clone(),
        ..TrainOptions::default()
    };
    assert!(matches!(
        train::run_train(&gpu),
        Err(Error::GpuUnavailable(_))
    ));
    let adapter_on_cpu = TrainOptions {
        backend: Backend::Cpu,
        adapter: Some("lavapipe".into()),
        out: out.clone(),
        ..TrainOptions::default()
    };
    assert!(matches!(
        train::run_train(&adapter_on_cpu),
        Err(Error::InvalidArgument(_))
    ));
    let rloo_s1 = TrainOptions {
        estimators: vec!["rloo".into()],
        samples: 1,
        out: out.clone(),
        ..TrainOptions::default()
    };
    assert!(matches!(
        train::run_train(&rloo_s1),
        Err(Error::InvalidArgument(_))
    ));
    let seed_loss = TrainOptions {
        loss: "seed".into(),
        out: out.clone(),
        ..TrainOptions::default()
    };
    assert!(matches!(
        train::run_train(&seed_loss),
        Err(Error::InvalidArgument(_))
    ));
    assert!(!out.exists());
    // `all` with S = 1 leaves rloo out rather than failing.
    let plan = train::plan(&TrainOptions {
        samples: 1,
        ..TrainOptions::default()
    })
    .unwrap();
    // 7 with a score-function or relaxed lowering, and `st` and `reinmax` (hard-draw counts).
    assert!(plan.estimators.iter().all(|e| e.id() != "rloo") && plan.estimators.len() == 9);
}

fn tiny_args(out: &Path, seed: u64) -> TrainOptions {
    TrainOptions {
        estimators: vec![
            "exact".into(),
            "reinforce".into(),
            "muprop-c".into(),
            "gumbel-softmax".into(),
        ],
        steps: 60,
        batch: 8,
        lr_grid: Some(vec![0.003, 0.03]),
        tune_steps: Some(20),
        seed,
        out: out.to_owned(),
        train_size: Some(300),
        test_size: Some(100),
        eval_every: 20,
        variance_reps: 4,
        quiet: true,
        ..TrainOptions::default()
    }
}

fn curves_without_times(
    args: &TrainOptions,
) -> Vec<(String, f64, Vec<train::CurvePoint>, Vec<f64>)> {
    let plan = train::plan(args).unwrap();
    let splits = train::load_data(args).unwrap();
    let report = train::run_plan(&plan, &splits, &|_| {});
    report
        .curves
        .into_iter()
        .map(|c| {
            let pts = c
                .points
                .iter()
                .map(|p| train::CurvePoint {
                    train_seconds: 0.0,
                    ..*p
                })
                .collect();
            (c.estimator.to_string(), c.lr, pts, c.w)
        })
        .collect()
}

#[test]
fn same_seed_gives_identical_curves() {
    let dir = tempfile::tempdir().unwrap();
    let a = curves_without_times(&tiny_args(dir.path(), 3));
    let b = curves_without_times(&tiny_args(dir.path(), 3));
    assert_eq!(a, b);
    assert_eq!(a[0].2.len(), 4, "points at steps 0, 20, 40, 60");
    let c = curves_without_times(&tiny_args(dir.path(), 4));
    assert_ne!(a[1].2, c[1].2, "another seed must give other curves");
}

#[test]
fn run_train_writes_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nested").join("run");
    train::run_train(&tiny_args(&out, 1)).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut want = vec![
        mcgrad::outdir::MARKER.to_string(),
        "curves.csv".to_string(),
        "curves.json".into(),
        "weights.png".into(),
    ];
    for fig in [
        "accuracy_vs_steps",
        "grad_variance",
        "loss_vs_seconds",
        "loss_vs_steps",
    ] {
        want.push(format!("{fig}.png"));
        want.push(format!("{fig}.svg"));
    }
    want.sort();
    assert_eq!(names, want);
    let csv = std::fs::read_to_string(out.join("curves.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 4 * 4);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("curves.json")).unwrap()).unwrap();
    assert_eq!(json["estimators"].as_array().unwrap().len(), 4);
    assert_eq!(json["estimators"][3]["variance_method"], "monte-carlo");
    assert_eq!(json["estimators"][2]["variance_method"], "enumeration");
    // A second run replaces the earlier output; a foreign folder is refused.
    train::run_train(&tiny_args(&out, 2)).unwrap();
    assert!(!dir
        .path()
        .join("nested")
        .read_dir()
        .unwrap()
        .any(|e| { e.unwrap().file_name().to_string_lossy().starts_with('.') }));
    std::fs::write(out.join("notes.txt"), "not mcgrad's").unwrap();
    assert!(matches!(
        train::run_train(&tiny_args(&out, 2)),
        Err(Error::InvalidArgument(_))
    ));
    assert!(out.join("notes.txt").exists());
}

/// An IDX header is read and checked first: one that claims millions of images is refused
/// (naming the limit) before anything is allocated, and a gzip stream that inflates to more
/// than its header declares (a "bomb") is refused after one byte too many.
#[test]
fn idx_headers_bound_what_is_read() {
    let p = Path::new("f");
    // Claims 10 million 28 x 28 images (7.8 GB) but holds 3.
    let mut huge = idx_images(3);
    huge[4..8].copy_from_slice(&10_000_000u32.to_be_bytes());
    for bytes in [huge.clone(), gzip(&huge)] {
        match data::parse_idx(p, &bytes) {
            Err(e @ Error::InvalidData { .. }) => {
                let m = e.to_string();
                assert!(m.contains(&data::MAX_IDX_ITEMS.to_string()), "{m}");
                assert_eq!(e.exit_code(), 2);
            }
            other => panic!("expected InvalidData, got {other:?}"),
        }
    }
    // Labels: 10 million is over the item limit even though it is only 10 MB.
    let mut labels = vec![0, 0, 8, 1];
    labels.extend(10_000_000u32.to_be_bytes());
    assert_invalid_data(data::parse_idx(p, &labels), "10 million labels");
    // A bomb: the header declares 3 images, the stream inflates to 3 images and 2 MB more.
    let mut bomb = idx_images(3);
    bomb.extend(std::iter::repeat_n(0u8, 2 << 20));
    let z = gzip(&bomb);
    assert!(z.len() < 16 << 10, "{} bytes", z.len());
    match data::parse_idx(p, &z) {
        Err(e @ Error::InvalidData { .. }) => assert!(e.to_string().contains("trailing"), "{e}"),
        other => panic!("expected InvalidData, got {other:?}"),
    }
    // The read stops soon after one byte past what the header declares: count what the
    // reader pulls out of the decoder (it then sees the inflated, raw IDX stream).
    struct Counting<R>(R, std::rc::Rc<std::cell::Cell<usize>>);
    impl<R: std::io::Read> std::io::Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1.set(self.1.get() + n);
            Ok(n)
        }
    }
    let inflated = std::rc::Rc::new(std::cell::Cell::new(0));
    let reader = Counting(
        flate2::read::GzDecoder::new(&z[..]),
        std::rc::Rc::clone(&inflated),
    );
    let _ = data::read_idx_from(p, reader);
    assert!(
        inflated.get() < (1 << 20),
        "inflated {} bytes of a 2 MB bomb",
        inflated.get()
    );
}

/// MNIST files named with a dot (`train-images.idx3-ubyte`, as some mirrors spell them) are
/// found, gzip or not; a missing file's error lists each name it tried once.
#[test]
fn mnist_files_with_dotted_names_are_found() {
    for gz in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        write_mnist(dir.path(), &idx_images(20), gz);
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let dotted = name.replacen("-idx", ".idx", 1);
            std::fs::rename(&path, dir.path().join(dotted)).unwrap();
        }
        let s = data::load_mnist(dir.path()).unwrap();
        assert_eq!((s.train.len(), s.test.len()), (18, 5));
    }
    let empty = tempfile::tempdir().unwrap();
    let err = data::load_mnist(empty.path()).unwrap_err().to_string();
    let tried = [
        "train-images-idx3-ubyte",
        "train-images-idx3-ubyte.gz",
        "train-images.idx3-ubyte",
        "train-images.idx3-ubyte.gz",
    ];
    for name in tried {
        assert_eq!(
            err.matches(&format!("{name},")).count() + err.matches(&format!("{name})")).count(),
            1,
            "{name} in {err}"
        );
    }
}

/// Every size option that drives memory is checked against a limit before anything is
/// allocated; the message names the limit and, for the image counts, the memory.
#[test]
fn oversized_train_options_are_refused_naming_the_limit() {
    let base = TrainOptions {
        quiet: true,
        ..TrainOptions::default()
    };
    let cases: Vec<(&str, TrainOptions, &str)> = vec![
        (
            "--train-size",
            TrainOptions {
                train_size: Some(10_000_000),
                ..base.clone()
            },
            "32.2 GB",
        ),
        (
            "--test-size",
            TrainOptions {
                test_size: Some(2_000_000),
                ..base.clone()
            },
            "1000000",
        ),
        (
            "--samples",
            TrainOptions {
                samples: u32::MAX,
                ..base.clone()
            },
            "65536",
        ),
        (
            "--batch x --samples",
            TrainOptions {
                batch: 65_536,
                samples: 65_536,
                ..base.clone()
            },
            "16777216",
        ),
        (
            "--eval-every",
            TrainOptions {
                steps: u32::MAX,
                eval_every: 1,
                ..base.clone()
            },
            "100000",
        ),
        (
            "--variance-reps",
            TrainOptions {
                variance_reps: 0,
                ..base.clone()
            },
            "--variance-reps",
        ),
        (
            "--tau",
            TrainOptions {
                tau: 1e-300,
                ..base.clone()
            },
            "0.001",
        ),
    ];
    for (what, args, names) in cases {
        match train::plan(&args) {
            Err(e @ Error::InvalidArgument(_)) => {
                let m = e.to_string();
                assert!(m.contains(names), "{what}: {m}");
                assert_eq!(e.exit_code(), 2);
            }
            other => panic!("{what}: expected InvalidArgument, got {other:?}"),
        }
    }
}

/// Training's per-input estimate is the sweep engine's, bit for bit: for every estimator,
/// both training losses and two temperatures, input `b` at step `t` reads the draws of the
/// engine's repetition `b` at sweep point `t`, and the R estimates (with the moving-average
/// baselines carried from repetition to repetition, as both do) reduce to identical moments.
/// S = 70 crosses a batch of the relaxed sums (64 draws); S = 3 leaves a partial Philox block.
#[test]
fn per_input_estimate_is_the_sweep_engines() {
    use mcgrad::engine::{run_sweep, CpuEngine, SweepSpec};
    use mcgrad::estimators::{warmed_baseline, Context, MovingAverage, REGISTRY};
    use mcgrad::problem::Problem;
    use mcgrad::stats::{EstimateMoments, MomentSums, PUSH_BATCH};

    let a: Vec<f64> = (0..K).map(|j| 1.3 * (j as f64 * 0.9).sin()).collect();
    let (seed, reps) = (17, 40);
    let engine = CpuEngine::new(2).unwrap();
    let mut compared = Vec::new();
    for (loss, class, tau) in [(Loss::Squared, 3u8, 1.0), (Loss::Linear, 7, 0.5)] {
        let ctx = Context::from_logits(&a, &model::target(loss, class), loss, tau);
        let mut problem = Problem::free_logits(1, K, a.clone());
        problem.t = model::target(loss, class);
        let spec = SweepSpec {
            problem,
            losses: vec![loss],
            // The estimators training takes: those with a one-variable lowering.
            estimators: REGISTRY
                .iter()
                .copied()
                .filter(|e| e.lowering().is_some())
                .collect(),
            samples: vec![3, 70],
            reps,
            seed,
            tau,
            settings: Default::default(),
        };
        let points = run_sweep(&spec, &engine, &|_| {}).unwrap();
        for (step, point) in points.iter().enumerate() {
            for cell in &point.cells {
                let est = cell.estimator;
                let key = DrawKey {
                    key: mcgrad::philox::key_of(seed),
                    step: step as u32,
                    rep_offset: 0,
                };
                // The engine enters the measurement with a warmed-up moving average, and
                // accumulates its moments as power sums of batches of PUSH_BATCH estimates
                // (coordinate-major), merged per block: the same here, so equal estimates
                // give equal moments to the last bit.
                let mut baseline: MovingAverage =
                    warmed_baseline(est, &ctx, key.key, step as u32, point.samples, reps);
                let mut moments = EstimateMoments::new(K);
                let mut g = [0.0; K];
                let mut batch = vec![0.0; K * PUSH_BATCH];
                assert!(reps as usize <= PUSH_BATCH);
                for b in 0..reps {
                    let signal =
                        model::estimate(est, &ctx, point.samples, baseline.value(), key, b, &mut g);
                    if let Some(s) = signal {
                        baseline.push(s);
                    }
                    for (j, &v) in g.iter().enumerate() {
                        batch[j * PUSH_BATCH + b as usize] = v;
                    }
                }
                let mut sums = MomentSums::new(&moments);
                sums.push_batch(&batch, reps as usize, &ctx.grad);
                sums.flush_into(&mut moments);
                assert_eq!(
                    moments,
                    cell.moments,
                    "{} under {loss} at S = {}: training's estimates are not the engine's",
                    est.id(),
                    point.samples
                );
                compared.push(est.id());
            }
        }
    }
    // Every estimator training takes was compared (under both losses, at both S).
    for e in REGISTRY.iter().filter(|e| e.lowering().is_some()) {
        assert_eq!(
            compared.iter().filter(|id| **id == e.id()).count(),
            4,
            "{}",
            e.id()
        );
    }
}
