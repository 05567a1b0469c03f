//! `mcgrad train`: learn the stochastic layer `z ~ Cat(softmax(x W))` with each estimator in
//! turn, on a classification-as-choice task, and record learning curves.
//!
//! Each input `x` (a 28 x 28 image) has a class `c`; the layer draws a class `z` and pays
//! `f(z)`, by default `squared` against the one-hot class (`f(e_k) = 2 [k != c]`), so the
//! objective `E f(z) = 2 (1 - p_c)` averaged over a minibatch is what W learns to lower.
//! Every step: gather the minibatch, the batched forward pass (on the CPU,
//! [`model::forward_batch`], or on the GPU, [`device`]), S draws per input, the estimator's
//! logit gradient per input, `G_hat = (1/B) sum_b x_b^T g_hat_b`, one optimiser step. On the
//! CPU all of it runs there; on the GPU the whole step runs there for every estimator with a
//! whole-step rule ([`resident`]: all that the default run trains), and otherwise the forward
//! pass and the draws do, the rest on the CPU. Every `eval_every` steps (and at the first and last): the exact expected loss of
//! the held-out test set by enumeration over the K classes, the accuracy of the most probable
//! class, and the variance of the gradient estimate at the current W (see
//! [`model::gradient_variance`]: the total W-space variance of the minibatch estimate on a
//! fixed probe batch, the first B training images, exact where a closed form exists).
//!
//! Fair comparison:
//! - every estimator sees the same minibatches in the same order ([`BatchStream`]) and the
//!   same Philox draws (common random numbers: input b of step t reads counter `(b, t)`);
//! - the budget is S draws per input per step, each costing one loss evaluation, for every
//!   estimator, with these exceptions stated in the results: `exact` evaluates all K losses
//!   and draws nothing; `muprop`/`muprop-c` add one mean-field evaluation of `f(p)` and
//!   `grad f(p)` per input; the Gumbel estimators evaluate `grad f` at each draw as well;
//! - each estimator gets its own learning rate, the best of a small grid by the exact
//!   validation loss after a short run (`--tune-steps`); the validation images are neither
//!   trained on nor reported;
//! - wall-clock time counts only the training steps (not evaluation or variance probes),
//!   and estimators run one after the other on one thread, so their times are comparable.
//!
//! The per-input estimate is the estimators' own code: [`model`] calls
//! [`crate::estimators::estimate_at`] (or, on draws made on the GPU,
//! [`crate::estimators::estimate_one`]), the function the sweep engine applies estimators
//! with, at the counters `(repetition, point) = (b, t)`; the backend is chosen by
//! [`crate::backend::select`], as for `mcgrad run`.
//!
//! With `--problem`, `mcgrad train` optimises a problem of the model instead (see
//! [`crate::optimise`]); both go through the same loop ([`stepper`]), optimisers ([`optim`])
//! and estimator application.
//!
//! The modules, in the order a run goes through them: [`config`] (options to a validated
//! [`Plan`], the data), [`batches`] (the minibatch order), [`model`] (the layer, its exact
//! objective, the per-input estimates, the gradient variance), [`device`] (the forward pass on
//! the CPU or the GPU), [`resident`] (whole steps on the GPU), [`optim`], [`stepper`] (the
//! loop every training run shares on the CPU and the round-trip path),
//! [`curves`] (one run and its learning curve), [`tuning`]
//! (the learning-rate grid), [`job`] (the whole command), [`output`] and [`plot`] (what it
//! writes), [`data`] (the images).

pub mod batches;
pub mod config;
pub mod curves;
pub mod data;
pub mod device;
pub mod job;
pub mod model;
pub mod optim;
pub mod output;
pub mod plot;
pub mod resident;
pub mod stepper;
pub mod tuning;

pub use batches::BatchStream;
pub use config::{
    load_data, plan, Plan, TrainConfig, TrainOptions, DEFAULT_TEST_SIZE, DEFAULT_TRAIN_SIZE,
};
pub use curves::{
    speedups_vs_reinforce, train_estimator, train_estimator_on, Curve, CurvePoint, Record, StepsOn,
};
pub use device::TrainEngine;
pub use job::{run_plan, run_plan_on, run_train, TrainReport};
pub use optim::{Optimizer, OptimizerKind};
pub use output::{curves_csv, curves_json, loss_evaluations, summary, write_outputs};
pub use stepper::{run_steps, Clock, Schedule, StepOutcome, StepTask};
pub use tuning::{tune_lr, tune_lr_on, TuningPoint};
