//! One trajectory of an optimisation run as a [`StepTask`] of the shared training loop: a
//! step moves the estimator context to the current logits (no oracle unless the estimator
//! reads the exact gradient), warms the estimator up where due, and applies the estimator's
//! own code at the step's counters; an evaluation runs the oracle (or the reference) and the
//! variance probes.
//!
//! Counters (Philox keys from the spec's seed): step `t` reads `(repetition 0, point t)` of
//! the key of `seed`; the variance probes read repetitions `0..R` at point `t` of a salted key;
//! the warm-ups and the reference objective each their own salted key. No two of these ever
//! read the same numbers.

use std::sync::Arc;
use std::time::Instant;

use crate::draws::{draw_joint_categories, CategoricalTable};
use crate::error::Result;
use crate::estimators::{
    estimate_at_with, Constant, Context, DrawBuffers, Estimator, Lowering, Noise, WarmUp,
};
use crate::oracle::{self, ExactKind, Method};
use crate::philox::key_of;
use crate::stats::Moments;
use crate::train::stepper::{run_steps, Clock, Record, Schedule, StepOutcome, StepTask};
use crate::train::Optimizer;

use super::variance::{ideal_baseline, probe};
use super::{
    Direction, EvalPoint, OptimiseSpec, Trajectory, WarmUpReport, REFERENCE_OBJECTIVE_DRAWS,
};

/// Key salt of the variance probes.
const VARIANCE_SALT: u64 = 0x7661_7269_616e_6365;
/// Key salt of the warm-ups.
const WARM_UP_SALT: u64 = 0x7761_726d_2d75_7021;
/// Key salt of the reference objective.
const REFERENCE_SALT: u64 = 0x7265_6665_7265_6e63;

/// The context of `spec`'s problem at its starting `W`, with the spec's estimator settings,
/// without running the oracle.
pub fn fresh_context(spec: &OptimiseSpec) -> Context {
    let mut ctx = Context::without_oracle(&spec.problem, spec.loss, spec.tau);
    ctx.settings = spec.settings.clone();
    ctx
}

/// Whether `est` reads the exact gradient at every step (`exact`).
fn reads_exact_gradient(est: &dyn Estimator) -> bool {
    matches!(
        est.lowering(),
        Some(Lowering::ScoreFunction {
            constant: Constant::ExactGradient,
            ..
        })
    )
}

/// An estimator whose variance a trajectory measures, with its own warm-up state.
struct Probe {
    est: &'static dyn Estimator,
    warm: Option<Arc<WarmUp>>,
    warmed_at: Option<u32>,
}

/// One trajectory in progress.
struct ProblemTask<'a> {
    spec: &'a OptimiseSpec,
    est: &'static dyn Estimator,
    /// Whether this is the shared trajectory (probes every estimator, ideal baselines).
    shared: bool,
    key: [u32; 2],
    var_key: [u32; 2],
    warm_key: [u32; 2],
    ref_key: [u32; 2],
    /// Whether an exact oracle applies (else the objective is a reference).
    exact_oracle: bool,
    needs_truth: bool,
    x_norm_sq: f64,
    sign: f64,
    ctx: Context,
    logits: Vec<f64>,
    g: Vec<f64>,
    buffers: DrawBuffers,
    evaluations_per_step: f64,
    warm: Option<Arc<WarmUp>>,
    warmed_at: Option<u32>,
    warm_report: Option<WarmUpReport>,
    probes: Vec<Probe>,
    points: Vec<EvalPoint>,
}

impl ProblemTask<'_> {
    /// `logits = x W` for the current `W`.
    fn forward(&mut self, w: &[f64]) {
        let n = self.logits.len();
        self.logits.iter_mut().for_each(|a| *a = 0.0);
        for (&xi, row) in self.spec.problem.x.iter().zip(w.chunks_exact(n)) {
            for (a, wij) in self.logits.iter_mut().zip(row) {
                *a += xi * wij;
            }
        }
    }

    /// Whether a warm-up is due at `step` for a state last warmed at `last`.
    fn warm_up_due(&self, step: u32, last: Option<u32>) -> bool {
        match last {
            None => true,
            Some(l) => self.spec.rewarm_every > 0 && step >= l + self.spec.rewarm_every,
        }
    }

    /// The reference objective and its standard error: the mean of `f` over
    /// [`REFERENCE_OBJECTIVE_DRAWS`] joint draws at point `step` of the reference key.
    fn reference_objective(&self, step: u32) -> (f64, f64) {
        let (l, k) = (self.ctx.l, self.ctx.k);
        let tables: Vec<CategoricalTable> =
            self.ctx.p.chunks(k).map(CategoricalTable::new).collect();
        let n = REFERENCE_OBJECTIVE_DRAWS;
        let mut z = vec![0u32; n as usize * l];
        draw_joint_categories(&tables, self.ref_key, 0, step, n, &mut z);
        let mut m = Moments::default();
        for zi in z.chunks_exact(l) {
            m.push(self.ctx.objective.at_vertex(zi));
        }
        (m.mean, m.mean_se())
    }
}

impl StepTask for ProblemTask<'_> {
    fn step(
        &mut self,
        step: u32,
        w: &[f64],
        baseline: f64,
        grad: &mut [f64],
    ) -> Result<StepOutcome> {
        let spec = self.spec;
        self.forward(w);
        self.ctx.set_logits(&self.logits, self.needs_truth);
        if step.is_multiple_of(spec.eval_every) {
            // Refreshed once per evaluation period: only ARSM's count depends on the
            // parameters (a Monte Carlo expectation of its distinct swaps over 2048 draws,
            // too costly to recompute at every step).
            self.evaluations_per_step = self.est.loss_evaluations(&self.ctx, spec.samples);
        }
        let mut evaluations = self.evaluations_per_step;
        if self.warm_up_due(step, self.warmed_at) {
            self.warmed_at = Some(step);
            let t0 = Instant::now();
            let key = self.warm_key;
            let warm = self.est.warm_up(&self.ctx, spec.samples, &|r| Noise {
                key,
                rep: r,
                point: step,
            });
            if let Some(warm) = warm {
                let seconds = t0.elapsed().as_secs_f64();
                evaluations += warm.evaluations;
                let report = self.warm_report.get_or_insert(WarmUpReport {
                    count: 0,
                    seconds: 0.0,
                    loss_evaluations: 0.0,
                    last: String::new(),
                });
                report.count += 1;
                report.seconds += seconds;
                report.loss_evaluations += warm.evaluations;
                report.last = warm.report.clone();
                self.warm = Some(Arc::new(warm));
            }
        }
        self.ctx.warm = self.warm.clone();
        let signal = estimate_at_with(
            &mut self.buffers,
            self.est,
            &self.ctx,
            self.key,
            0,
            step,
            spec.samples,
            baseline,
            &mut self.g,
        );
        let n = self.g.len();
        for (&xi, row) in spec.problem.x.iter().zip(grad.chunks_exact_mut(n)) {
            let s = self.sign * xi;
            for (o, gj) in row.iter_mut().zip(&self.g) {
                *o = s * gj;
            }
        }
        Ok(StepOutcome {
            objective: self.ctx.fbar,
            baseline_signal: signal,
            loss_evaluations: evaluations,
        })
    }

    fn evaluate(&mut self, step: u32, w: &[f64], baseline: f64, clock: &Clock) -> Result<()> {
        let spec = self.spec;
        self.forward(w);
        self.ctx.set_logits(&self.logits, self.exact_oracle);
        let (objective, objective_kind, objective_se, exact_grad_sq) = if self.exact_oracle {
            let g2: f64 = self.ctx.grad.iter().map(|g| g * g).sum();
            (
                self.ctx.fbar,
                ExactKind::Exact,
                None,
                Some(self.x_norm_sq * g2),
            )
        } else {
            let (mean, se) = self.reference_objective(step);
            (mean, ExactKind::Reference, Some(se), None)
        };
        let k = self.ctx.k;
        let probabilities = spec
            .track
            .iter()
            .map(|&(var, cat)| self.ctx.p[var * k + cat])
            .collect();
        let mut variances = Vec::with_capacity(self.probes.len());
        for i in 0..self.probes.len() {
            let est = self.probes[i].est;
            let b = if self.shared {
                ideal_baseline(est, &self.ctx, objective)
            } else {
                baseline
            };
            if self.shared {
                // The probed estimator's own warm-up, at the shared parameters.
                if self.warm_up_due(step, self.probes[i].warmed_at) {
                    let key = self.warm_key;
                    let warm = est.warm_up(&self.ctx, spec.samples, &|r| Noise {
                        key,
                        rep: r,
                        point: step,
                    });
                    self.probes[i].warm = warm.map(Arc::new);
                    self.probes[i].warmed_at = Some(step);
                }
                self.ctx.warm = self.probes[i].warm.clone();
            } else {
                self.ctx.warm = self.warm.clone();
            }
            variances.push(probe(
                est,
                &self.ctx,
                spec,
                b,
                self.var_key,
                step,
                self.x_norm_sq,
            ));
        }
        self.points.push(EvalPoint {
            step,
            objective,
            objective_kind,
            objective_se,
            exact_grad_sq,
            probabilities,
            variances,
            seconds: clock.seconds,
            loss_evaluations: clock.loss_evaluations,
        });
        Ok(())
    }
}

/// Runs one trajectory of `spec`: estimator `index`'s own, or (`None`) the shared one.
///
/// # Errors
/// None in practice (the CPU loop cannot fail); the type is the loop's.
///
/// # Panics
/// For `None` without a shared trajectory in the spec.
pub fn run(
    spec: &OptimiseSpec,
    index: Option<usize>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Trajectory> {
    let shared = index.is_none();
    let est = match index {
        Some(i) => spec.estimators[i],
        None => spec
            .shared
            .driver()
            .expect("a shared trajectory has a driver"),
    };
    let probes: Vec<Probe> = match index {
        Some(_) if spec.own_variance => vec![est],
        Some(_) => Vec::new(),
        None => spec.estimators.clone(),
    }
    .into_iter()
    .map(|est| Probe {
        est,
        warm: None,
        warmed_at: None,
    })
    .collect();
    let ctx = fresh_context(spec);
    let exact_oracle = oracle::method(&ctx) != Method::Reference;
    let n = spec.problem.dim();
    let loss_evaluations_per_step = est.loss_evaluations(&ctx, spec.samples);
    let mut task = ProblemTask {
        spec,
        est,
        shared,
        key: key_of(spec.seed),
        var_key: key_of(spec.seed ^ VARIANCE_SALT),
        warm_key: key_of(spec.seed ^ WARM_UP_SALT),
        ref_key: key_of(spec.seed ^ REFERENCE_SALT),
        exact_oracle,
        needs_truth: reads_exact_gradient(est),
        x_norm_sq: spec.problem.x_norm_sq(),
        sign: match spec.direction {
            Direction::Minimise => 1.0,
            Direction::Maximise => -1.0,
        },
        ctx,
        logits: vec![0.0; n],
        g: vec![0.0; n],
        buffers: DrawBuffers::default(),
        evaluations_per_step: loss_evaluations_per_step,
        warm: None,
        warmed_at: None,
        warm_report: None,
        probes,
        points: Vec::new(),
    };
    let mut w = spec.problem.w.clone();
    let mut opt = Optimizer::new(spec.optimiser, spec.learning_rate, w.len());
    let schedule = Schedule {
        steps: spec.steps,
        eval_every: spec.eval_every,
        record: Record::Full,
    };
    run_steps(&mut task, &mut w, &mut opt, schedule, progress)?;
    Ok(Trajectory {
        estimator: est.id(),
        seed: spec.seed,
        loss_evaluations_per_step,
        points: task.points,
        warm_up: task.warm_report,
        w,
    })
}
