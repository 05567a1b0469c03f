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
            Error::Gpu(_) | Error::Plot { .. } | Error::Regression(_) => 1,
            _ => 2,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
