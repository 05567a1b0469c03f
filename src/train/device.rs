//! Where the forward passes of training run: the CPU ([`model::forward_batch`], f64
//! sums of f32 pixels times f64 weights) or the GPU (`shaders/forward.wgsl` through
//! [`crate::gpu::forward`], f32 throughout; the logits come back as f32 and are widened).
//!
//! On the GPU the training steps of every estimator with a whole-step rule run entirely there
//! ([`super::resident`], `shaders/train_step.wgsl`, whose pipeline [`GpuForward`] holds). For
//! the others (the round-trip path) a step runs the forward pass `A = X W` and the S draws of
//! every input (`shaders/train_categorical.wgsl` from the probabilities,
//! `shaders/train_gumbel.wgsl` from the logits) in one submission, and reads back the logits
//! and the draws (class counts, or the relaxed draws); the estimators' logit gradients, the W
//! gradient, the optimiser and the moving-average baselines then run on the CPU in f64. Both
//! paths evaluate the same way: the exact held-out loss on the CPU from the GPU's logits. The
//! GPU buffers and the pipelines are made once per training run and reused at every step:
//! the minibatch pass rewrites its `x` and `W` buffers in place, the probe and held-out passes
//! upload their images once and rewrite only `W`.

use crate::backend::{select, Backend, Device};
use crate::engine::BackendInfo;
use crate::error::{Error, Result};
use crate::gpu::forward::{Forward, ForwardBatch};
use crate::gpu::train_draws::{
    DrawKind, TrainDrawBuffers, TrainDrawParams, TrainDrawn, TrainDraws,
};
use crate::gpu::train_step::TrainStep;
use crate::gpu::{GpuContext, GpuPreference};

use super::data::{D, K};
use super::model;

/// The GPU side of a [`TrainEngine`]: one device and the forward kernel.
///
/// The learning-rate tuning runs share it from several threads. [`GpuContext::read`] waits
/// for the queue and then expects its own map callback to have run, which another thread's
/// concurrent poll may still be delivering; so each pass's write-run-read round trip holds
/// `turn`, and only the CPU work of the runs (draws, estimators, optimiser) overlaps.
pub struct GpuForward {
    ctx: GpuContext,
    kernel: Forward,
    draws: TrainDraws,
    steps: TrainStep,
    turn: std::sync::Mutex<()>,
}

impl GpuForward {
    /// The kernel on a context.
    ///
    /// # Errors
    /// [`Error::Gpu`] if the kernel does not build on this adapter.
    pub fn new(ctx: GpuContext) -> Result<Self> {
        let kernel = Forward::new(&ctx)?;
        let draws = TrainDraws::new(&ctx)?;
        let steps = TrainStep::new(&ctx)?;
        Ok(Self {
            ctx,
            kernel,
            draws,
            steps,
            turn: std::sync::Mutex::new(()),
        })
    }

    /// The context.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Most rows one buffer of images may hold on this device.
    fn max_rows(&self) -> usize {
        let bytes = self
            .ctx
            .limits
            .max_storage_buffer_binding_size
            .min(self.ctx.limits.max_buffer_size);
        ((bytes / (D as u64 * 4)) as usize).max(1)
    }

    /// The whole-step kernel ([`super::resident`]).
    pub fn step_kernel(&self) -> &TrainStep {
        &self.steps
    }

    /// The GPU to oneself for one round trip (a poisoned lock is harmless: it guards no data).
    pub(super) fn turn(&self) -> std::sync::MutexGuard<'_, ()> {
        self.turn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn upload(&self, x: &[f32]) -> Result<ForwardBatch> {
        let _turn = self.turn();
        self.kernel.batch(&self.ctx, x, &vec![0.0; D * K], D, K)
    }
}

/// Where the forward passes of training run.
pub enum TrainEngine {
    /// The CPU ([`model::forward_batch`]).
    Cpu,
    /// The GPU.
    Gpu(Box<GpuForward>),
}

impl std::fmt::Debug for TrainEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrainEngine::Cpu => f.write_str("TrainEngine::Cpu"),
            TrainEngine::Gpu(g) => write!(f, "TrainEngine::Gpu({})", g.ctx.info.name),
        }
    }
}

impl TrainEngine {
    /// The engine for a backend choice, by the rule `mcgrad run` follows too
    /// ([`crate::backend::select`]): `cpu` the CPU; `gpu` any adapter (software ones too) or
    /// the one `adapter` names; `auto` a hardware GPU (or the named adapter) if there is one,
    /// else the CPU, since a software GPU is slower than the CPU here.
    ///
    /// # Errors
    /// [`Error::GpuUnavailable`] for `gpu` when no adapter fits; [`Error::Gpu`] if the
    /// forward kernel does not build.
    pub fn new(backend: Backend, adapter: Option<&str>) -> Result<Self> {
        let open = |pref: &GpuPreference| GpuForward::new(GpuContext::new(pref)?);
        Ok(match select(backend, adapter, None, open)? {
            Device::Cpu => TrainEngine::Cpu,
            Device::Gpu(gpu) => TrainEngine::Gpu(Box::new(gpu)),
        })
    }

    /// Whether the forward passes run on a GPU.
    pub fn is_gpu(&self) -> bool {
        matches!(self, TrainEngine::Gpu(_))
    }

    /// Where the forward passes run, as `curves.json` records it (`threads`: the reported
    /// runs' one CPU thread for the draws and estimators).
    pub fn backend_info(&self) -> BackendInfo {
        match self {
            TrainEngine::Cpu => BackendInfo {
                engine: "cpu".into(),
                adapter: format!("{} CPU", std::env::consts::ARCH),
                graphics_backend: None,
                driver: None,
                threads: 1,
            },
            TrainEngine::Gpu(g) => g.ctx.backend_info(),
        }
    }

    /// The minibatch pass of a run: `rows` inputs of `samples` draws, new images and W at
    /// every call.
    ///
    /// # Errors
    /// [`Error::Gpu`] / [`Error::InvalidArgument`] if the GPU buffers cannot be made.
    pub fn step_pass(&self, rows: usize, samples: u32) -> Result<StepPass<'_>> {
        Ok(match self {
            TrainEngine::Cpu => StepPass::Cpu,
            TrainEngine::Gpu(g) => StepPass::Gpu {
                gpu: g,
                batch: Box::new(g.upload(&vec![0.0; rows * D])?),
                draws: Box::new(g.draws.buffers(&g.ctx, rows as u32, samples)?),
                w32: vec![0.0; D * K],
            },
        })
    }

    /// A pass over fixed images `x` (the probe batch, a held-out set): uploaded once (in
    /// pieces where the device's buffers are smaller), only W changes between calls.
    ///
    /// # Errors
    /// [`Error::Gpu`] / [`Error::InvalidArgument`] if the GPU buffers cannot be made.
    pub fn fixed_pass<'a>(&'a self, x: &'a [f32]) -> Result<FixedPass<'a>> {
        Ok(match self {
            TrainEngine::Cpu => FixedPass::Cpu { x },
            TrainEngine::Gpu(g) => {
                let rows = g.max_rows();
                let pieces = x
                    .chunks(rows * D)
                    .map(|c| g.upload(c))
                    .collect::<Result<Vec<_>>>()?;
                FixedPass::Gpu {
                    gpu: g,
                    pieces,
                    w32: vec![0.0; D * K],
                }
            }
        })
    }
}

fn narrow(w: &[f64], w32: &mut [f32]) {
    w32.iter_mut().zip(w).for_each(|(a, b)| *a = *b as f32);
}

fn widen(from: &[f32], to: &mut [f64]) -> Result<()> {
    if from.len() != to.len() {
        return Err(Error::Gpu(format!(
            "the forward pass returned {} logits, expected {}",
            from.len(),
            to.len()
        )));
    }
    to.iter_mut()
        .zip(from)
        .for_each(|(a, b)| *a = f64::from(*b));
    Ok(())
}

/// The minibatch forward pass of one training run (see [`TrainEngine::step_pass`]).
pub enum StepPass<'a> {
    /// On the CPU.
    Cpu,
    /// On the GPU: the batch's buffers, rewritten at every call.
    Gpu {
        /// The device and kernel.
        gpu: &'a GpuForward,
        /// The buffers.
        batch: Box<ForwardBatch>,
        /// The draws' buffers.
        draws: Box<TrainDrawBuffers>,
        /// W narrowed to f32.
        w32: Vec<f32>,
    },
}

impl StepPass<'_> {
    /// `logits = x W`, and on the GPU the step's draws too (`draws`: which, with their
    /// counters and temperature), in one round trip. Returns the draws the GPU made; on the
    /// CPU, or with no draws asked for, `None` (the host then draws itself).
    ///
    /// # Errors
    /// [`Error::Gpu`] if the device fails.
    pub fn run_drawn(
        &mut self,
        x: &[f32],
        w: &[f64],
        logits: &mut [f64],
        draws: Option<(DrawKind, TrainDrawParams)>,
    ) -> Result<Option<TrainDrawn>> {
        let (
            StepPass::Gpu {
                gpu,
                batch,
                draws: buffers,
                w32,
            },
            Some((kind, params)),
        ) = (&mut *self, draws)
        else {
            self.run(x, w, logits)?;
            return Ok(None);
        };
        narrow(w, w32);
        let _turn = gpu.turn();
        batch.update(&gpu.ctx, Some(x), Some(w32))?;
        let out = batch.logits_then(&gpu.ctx, &gpu.kernel, |encoder, logit_buf, prob_buf| {
            buffers.encode(
                &gpu.ctx, &gpu.draws, encoder, kind, &params, logit_buf, prob_buf,
            );
        })?;
        widen(&out, logits)?;
        buffers.read(&gpu.ctx, kind).map(Some)
    }

    /// `logits = x W` (`x` is `B x D` with the B this pass was made for).
    ///
    /// # Errors
    /// [`Error::Gpu`] if the device fails.
    pub fn run(&mut self, x: &[f32], w: &[f64], logits: &mut [f64]) -> Result<()> {
        match self {
            StepPass::Cpu => {
                model::forward_batch(x, w, logits);
                Ok(())
            }
            StepPass::Gpu {
                gpu, batch, w32, ..
            } => {
                narrow(w, w32);
                let _turn = gpu.turn();
                batch.update(&gpu.ctx, Some(x), Some(w32))?;
                widen(&batch.logits(&gpu.ctx, &gpu.kernel)?, logits)
            }
        }
    }
}

/// A forward pass over fixed images (see [`TrainEngine::fixed_pass`]).
pub enum FixedPass<'a> {
    /// On the CPU.
    Cpu {
        /// The images, `N x D`.
        x: &'a [f32],
    },
    /// On the GPU: the images uploaded once, in pieces of at most the device's buffer size.
    Gpu {
        /// The device and kernel.
        gpu: &'a GpuForward,
        /// The uploaded pieces, in order.
        pieces: Vec<ForwardBatch>,
        /// W narrowed to f32.
        w32: Vec<f32>,
    },
}

impl FixedPass<'_> {
    /// `logits = x W` for the fixed images (`logits` is `N x K`).
    ///
    /// # Errors
    /// [`Error::Gpu`] if the device fails.
    pub fn run(&mut self, w: &[f64], logits: &mut [f64]) -> Result<()> {
        match self {
            FixedPass::Cpu { x } => {
                model::forward_batch(x, w, logits);
                Ok(())
            }
            FixedPass::Gpu { gpu, pieces, w32 } => {
                narrow(w, w32);
                let _turn = gpu.turn();
                let mut at = 0;
                for piece in pieces.iter() {
                    piece.update(&gpu.ctx, None, Some(w32))?;
                    let n = piece.rows() as usize * K;
                    let out = logits.get_mut(at..at + n).ok_or_else(|| {
                        Error::Gpu("the held-out logits are shorter than the images".into())
                    })?;
                    widen(&piece.logits(&gpu.ctx, &gpu.kernel)?, out)?;
                    at += n;
                }
                Ok(())
            }
        }
    }
}
