//! The CPU-side integration tests, one module per concern, linked into one test program.
//!
//! One program instead of one per file: `cargo test --release` then compiles and links a
//! single binary against the release build of the library (the first command's build), which
//! is most of what the second command of a fresh clone costs. Run one concern with a filter,
//! `cargo test --release --test cpu -- model::`.
//!
//! Kept apart, as their own programs: `tests/check.rs` and `tests/outdir.rs` inject faults
//! through `mcgrad::faults`, which is process-wide and would distort the other modules'
//! estimates or writes running beside them; `tests/gpu.rs`, `tests/gpu_generic.rs` and
//! `tests/train_gpu.rs` need a GPU adapter, run serially on GL, and travel to the device
//! machine as programs of their own (`scripts/build-device-bundle.sh`).

mod check_cli;
mod estimators;
mod exit_codes;
mod field_estimators;
mod model;
mod optimise;
mod problem_files;
mod random;
mod readme_figures;
mod relaxed_estimators;
mod reproduce;
mod run_cli;
mod standard_errors;
mod train;
mod train_cli;
