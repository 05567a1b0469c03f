//! `mcgrad train` through the binary: a truncated or corrupted MNIST IDX file under `--mnist`
//! exits with code 2, prints one `error:` line naming the file, and writes no output folder
//! (nor leaves a staging folder behind).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

const D: usize = 784;

fn mcgrad(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mcgrad"))
        .args(args)
        .output()
        .expect("the mcgrad binary runs")
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

/// The four MNIST files in `dir`, the training images given (raw bytes), gzipped or not.
fn write_mnist(dir: &Path, train_images: &[u8], gz: bool) {
    std::fs::create_dir_all(dir).unwrap();
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

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn bad_idx_files_exit_2_with_one_error_line_and_write_nothing() {
    let good = idx_images(20);
    let mut bad_magic = good.clone();
    bad_magic[0] = 0x42;
    let z = gzip(&good);
    let mut corrupted_gz = z.clone();
    let mid = corrupted_gz.len() / 2;
    corrupted_gz[mid] ^= 0xff;
    corrupted_gz[mid + 1] ^= 0x55;
    // (what, training-image file bytes as written, whether the other files are gzipped)
    let cases: [(&str, Vec<u8>, bool); 5] = [
        ("truncated data", good[..good.len() - 7].to_vec(), false),
        ("truncated header", good[..10].to_vec(), false),
        ("bad magic", bad_magic, false),
        ("truncated gzip", gzip(&good[..good.len() / 2]), true),
        ("corrupted gzip", corrupted_gz, true),
    ];
    for (what, bytes, gz) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let mnist = tmp.path().join("mnist");
        write_mnist(&mnist, &idx_images(20), gz);
        let name = if gz {
            "train-images-idx3-ubyte.gz"
        } else {
            "train-images-idx3-ubyte"
        };
        std::fs::write(mnist.join(name), &bytes).unwrap();
        let out_dir = tmp.path().join("out");
        let out = mcgrad(&[
            "train",
            "--mnist",
            mnist.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
            "--backend",
            "cpu",
            "--steps",
            "5",
            "--quiet",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: stderr {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{what}: one error line, got {stderr:?}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{what}: nothing else on stderr: {stderr:?}"
        );
        assert!(
            errors[0].contains("train-images-idx3-ubyte"),
            "{what}: the error names the file: {}",
            errors[0]
        );
        assert!(out.stdout.is_empty(), "{what}: stdout {:?}", out.stdout);
        assert!(!out_dir.exists(), "{what}: no output folder");
        assert_eq!(
            entries(tmp.path()),
            vec!["mnist"],
            "{what}: nothing else written"
        );
        eprintln!("{what}: {}", errors[0]);
    }
}

/// `--train-size 10000000` (32 GB of pixels and logits) used to abort the process (SIGABRT on the
/// failed allocation): it is bad input, one error line naming the limit and the memory.
#[test]
fn an_oversized_train_size_is_bad_input_not_an_abort() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let out = mcgrad(&[
        "train",
        "--train-size",
        "10000000",
        "--out",
        out_dir.to_str().unwrap(),
        "--backend",
        "cpu",
        "--quiet",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr {stderr}");
    assert!(
        stderr.contains("1000000") && stderr.contains("GB"),
        "{stderr}"
    );
    assert!(!out_dir.exists());
}

/// `--backend` is parsed once, by the library's `Backend`, for `mcgrad run` and `mcgrad train`:
/// an unknown name gives the same single `error:` line (listing the known names) and exit
/// code 2 from both, and nothing is written.
#[test]
fn unknown_backend_is_the_same_error_for_run_and_train() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let out = out.to_str().unwrap();
    let runs = [
        mcgrad(&["--backend", "bogus", "--out", out, "--quiet"]),
        mcgrad(&["run", "--backend", "bogus", "--out", out, "--quiet"]),
        mcgrad(&["train", "--backend", "bogus", "--out", out, "--quiet"]),
    ];
    let mut errors = Vec::new();
    for o in &runs {
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(2), "stderr {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
        assert!(o.stdout.is_empty());
        errors.push(stderr);
    }
    assert_eq!(
        errors[0].trim_end(),
        "error: unknown backend `bogus` (known: auto, cpu, gpu)"
    );
    assert!(errors.iter().all(|e| *e == errors[0]), "{errors:?}");
    assert!(!Path::new(out).exists(), "nothing written");
    // The known names are taken by both (cpu: the adapter check is train's own).
    let o = mcgrad(&["train", "--backend", "cpu", "--adapter", "x", "--out", out]);
    assert_eq!(o.status.code(), Some(2));
}
