//! The crate's one error type. Every variant says what the user should check; the binary
//! prints it on one line and exits with code 2 (bad input) or 1 (a failure while running).

use std::path::PathBuf;

/// Everything that can go wrong in mcgrad, as the user should read it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A problem (x, W, T) is malformed: check the named field of the problem file.
    #[error("invalid problem: {0}")]
    InvalidProblem(String),

    /// A file could not be read: check the path and its permissions.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A file or folder could not be written: check that the folder exists and is writable.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },

    /// Writing the results failed after the run had started (a full disk, a folder removed
    /// under the run): check free space and the folder. `--out` was left as it was.
    #[error("cannot write {path}: {source} (--out was left as it was)")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },

    /// The results table could not be written to standard output: check that it is open and
    /// that the disk behind it is not full.
    #[error("cannot write to standard output: {0}")]
    Stdout(std::io::Error),

    /// A result is NaN or infinite, so it would mislead: the message names the figure and
    /// where it came from; check `--tau` and the scale of the problem.
    #[error("a result is not a finite number: {0}")]
    NonFinite(String),

    /// A fault in mcgrad itself (for instance a value that cannot be serialised): a bug, to
    /// report with the command that caused it.
    #[error("internal error (a bug in mcgrad): {0}")]
    Internal(String),

    /// A file is not valid JSON: check its syntax.
    #[error("{path} is not valid JSON: {message}")]
    Json { path: PathBuf, message: String },

    /// An option has a value the suite cannot use: check the option named in the message.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// An estimator, loss or backend name is not known: the message lists the known names.
    #[error("unknown {kind} `{name}` (known: {known})")]
    Unknown {
        kind: &'static str,
        name: String,
        known: String,
    },

    /// A data file (MNIST IDX) is malformed: check that it is a complete, uncorrupted file.
    #[error("invalid data file {path}: {message}")]
    InvalidData { path: PathBuf, message: String },

    /// No GPU adapter could be used: run `mcgrad info` to list adapters, or use `--backend cpu`.
    #[error("GPU unavailable: {0}")]
    GpuUnavailable(String),

    /// The GPU failed while running (device lost, buffer map failed, validation error).
    #[error("GPU failure: {0}")]
    Gpu(String),

    /// Drawing a plot failed: check the output folder and free disk space.
    #[error("plot {name}: {message}")]
    Plot { name: String, message: String },

    /// The regression check found a regression: the report above names each one.
    #[error("regression: {0}")]
    Regression(String),

    /// A regression check found a baseline file it cannot compare against.
    #[error("baseline {path}: {message}")]
    Baseline { path: PathBuf, message: String },
}

impl Error {
    /// The process exit code for this error: 2 for bad input, 1 for a failure while running.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Gpu(_)
            | Error::Plot { .. }
            | Error::Regression(_)
            | Error::Output { .. }
            | Error::Stdout(_)
            | Error::NonFinite(_)
            | Error::Internal(_) => 1,
            _ => 2,
        }
    }
}

/// Writes `text` to standard output and flushes it. A closed pipe (`mcgrad run | head -0`)
/// ends the output quietly, as it would end a Unix filter; any other failure is an error.
///
/// # Errors
/// [`Error::Stdout`] if standard output cannot be written (a full disk: `> /dev/full`).
pub fn print_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written.map_err(Error::Stdout),
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
