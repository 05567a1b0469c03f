//! mcgrad: a benchmark suite for Monte Carlo gradient estimators of discrete random choices.
//!
//! A softmax layer draws a category `z ~ Cat(softmax(xW))` and pays a loss `f(z)`; backprop
//! cannot pass through the draw, so the gradient of `E[f(z)]` must be estimated. This crate
//! computes every estimator's bias and variance by Monte Carlo, on the CPU or (through
//! `wgpu`) the GPU, beside the exact closed forms.
//!
//! ```
//! use mcgrad::{engine::{CpuEngine, SweepSpec, run_sweep}, estimators, loss::Loss, problem::Problem};
//!
//! let spec = SweepSpec {
//!     problem: Problem::seeded(0, 784, 10),
//!     losses: vec![Loss::Squared],
//!     estimators: vec![estimators::by_id("reinforce").unwrap(), estimators::by_id("muprop").unwrap()],
//!     samples: vec![1, 16],
//!     reps: 1000,
//!     seed: 0,
//!     tau: 1.0,
//!     settings: Default::default(),
//! };
//! let points = run_sweep(&spec, &CpuEngine::new(0).unwrap(), &|_| {}).unwrap();
//! for r in mcgrad::record::records(&spec, &points) {
//!     println!("{} S={}: variance {:.3e} (exact {:.3e})", r.estimator, r.samples, r.total_var_w, r.exact_total_var_w.unwrap());
//! }
//! ```

pub mod backend;
pub mod check;
pub mod draws;
pub mod engine;
pub mod error;
pub mod estimators;
pub mod fastmath;
pub mod faults;
pub mod gpu;
pub mod loss;
pub mod objective;
pub mod optimise;
pub mod oracle;
pub mod outdir;
pub mod philox;
pub mod plot;
pub mod problem;
pub mod problems;
pub mod record;
pub mod reproduce;
pub mod run;
pub mod stats;
pub mod summary;
pub mod train;

pub use error::{Error, Result};
