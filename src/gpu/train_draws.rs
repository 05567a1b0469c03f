//! The draws of a training step on the GPU (`shaders/train_categorical.wgsl`,
//! `shaders/train_gumbel.wgsl`): per input of the minibatch, straight from the forward pass's
//! output buffers and in the same submission, so a step costs one round trip. What comes back
//! is small (the class counts, or the S relaxed draws, of each input); the estimators read it
//! on the host. CPU twins: [`crate::draws::count_categories`] and
//! [`crate::draws::RelaxedTable::draw`], with the same Philox counters.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::context::{GpuContext, READ, READ_WRITE, UNIFORM};
use crate::gpu::params::MAX_K;
use crate::gpu::shaders;

/// Parameters of the training draws. Keep in sync with `shaders/common.wgsl`
/// (`TrainDrawParams`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct TrainDrawParams {
    /// Philox key.
    pub key: [u32; 2],
    /// The step (the counter's sweep-point field).
    pub step: u32,
    /// Inputs B.
    pub batch: u32,
    /// Draws per input S.
    pub samples: u32,
    /// Categories K.
    pub k: u32,
    /// Added to the input's index (the counter's repetition field).
    pub rep_offset: u32,
    /// `1 / tau`.
    pub inv_tau: f32,
}

/// Which draws a step needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrawKind {
    /// Class counts (score-function estimators).
    Categorical,
    /// Relaxed draws `y`, `z` (Gumbel estimators).
    Gumbel,
}

/// What the draws of a step produced.
#[derive(Clone, Debug, PartialEq)]
pub enum TrainDrawn {
    /// Class counts, B x 16 (the first K of each row are used).
    Counts(Vec<u32>),
    /// Relaxed draws: `weights` B x S x 16 (draw-major per input), `classes` B x S.
    Gumbel {
        /// `y` of every draw.
        weights: Vec<f32>,
        /// `z` of every draw.
        classes: Vec<u32>,
    },
}

/// The two kernels.
pub struct TrainDraws {
    categorical_layout: wgpu::BindGroupLayout,
    categorical: wgpu::ComputePipeline,
    gumbel_layout: wgpu::BindGroupLayout,
    gumbel: wgpu::ComputePipeline,
}

/// The buffers of one minibatch size and draw count.
pub struct TrainDrawBuffers {
    batch: u32,
    samples: u32,
    params: wgpu::Buffer,
    counts: wgpu::Buffer,
    weights: wgpu::Buffer,
    classes: wgpu::Buffer,
    staging: wgpu::Buffer,
}

impl TrainDraws {
    /// Builds both kernels.
    ///
    /// # Errors
    /// [`Error::Gpu`] if a kernel does not build on this adapter.
    pub fn new(ctx: &GpuContext) -> Result<Self> {
        let size = std::mem::size_of::<TrainDrawParams>() as u64;
        let categorical_layout = ctx.layout(
            "train categorical",
            &[(UNIFORM, size), (READ, 4), (READ_WRITE, 4)],
        );
        let categorical = ctx.compute_pipeline(
            "train categorical",
            shaders::TRAIN_CATEGORICAL,
            &categorical_layout,
        )?;
        let gumbel_layout = ctx.layout(
            "train gumbel",
            &[(UNIFORM, size), (READ, 4), (READ_WRITE, 4), (READ_WRITE, 4)],
        );
        let gumbel = ctx.compute_pipeline("train gumbel", shaders::TRAIN_GUMBEL, &gumbel_layout)?;
        Ok(Self {
            categorical_layout,
            categorical,
            gumbel_layout,
            gumbel,
        })
    }

    /// Buffers for `batch` inputs of `samples` draws.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the relaxed draws would not fit one buffer of this
    /// device (B x S x 16 floats).
    pub fn buffers(&self, ctx: &GpuContext, batch: u32, samples: u32) -> Result<TrainDrawBuffers> {
        use wgpu::BufferUsages as U;
        let rows = u64::from(batch) * u64::from(samples);
        let weight_bytes = rows * MAX_K as u64 * 4;
        let limit = ctx
            .limits
            .max_storage_buffer_binding_size
            .min(ctx.limits.max_buffer_size);
        if weight_bytes > limit {
            return Err(Error::InvalidArgument(format!(
                "the GPU draws of a step need {weight_bytes} bytes (B x S x 16 floats), more than this device's {limit}: use a smaller --batch or --samples, or --backend cpu"
            )));
        }
        let count_bytes = u64::from(batch) * MAX_K as u64 * 4;
        let store = U::STORAGE | U::COPY_SRC;
        Ok(TrainDrawBuffers {
            batch,
            samples,
            params: ctx.buffer(
                "train draw params",
                std::mem::size_of::<TrainDrawParams>() as u64,
                U::UNIFORM | U::COPY_DST,
            ),
            counts: ctx.buffer("train counts", count_bytes, store),
            weights: ctx.buffer("train weights", weight_bytes.max(4), store),
            classes: ctx.buffer("train classes", (rows * 4).max(4), store),
            staging: ctx.buffer(
                "train draws readback",
                weight_bytes.max(count_bytes) + rows * 4,
                U::MAP_READ | U::COPY_DST,
            ),
        })
    }
}

impl TrainDrawBuffers {
    /// Records the draws of `kind` from the forward pass's `logits` and `probs` buffers, and
    /// their copy for readback. `params.batch` and `params.samples` must be these buffers'.
    #[allow(clippy::too_many_arguments)]
    pub fn encode(
        &self,
        ctx: &GpuContext,
        kernels: &TrainDraws,
        encoder: &mut wgpu::CommandEncoder,
        kind: DrawKind,
        params: &TrainDrawParams,
        logits: &wgpu::Buffer,
        probs: &wgpu::Buffer,
    ) {
        ctx.queue
            .write_buffer(&self.params, 0, bytemuck::bytes_of(params));
        let groups = self.batch.div_ceil(64);
        let rows = u64::from(self.batch) * u64::from(self.samples);
        let (pipeline, group) = match kind {
            DrawKind::Categorical => (
                &kernels.categorical,
                ctx.bind_group(
                    "train categorical",
                    &kernels.categorical_layout,
                    &[&self.params, probs, &self.counts],
                ),
            ),
            DrawKind::Gumbel => (
                &kernels.gumbel,
                ctx.bind_group(
                    "train gumbel",
                    &kernels.gumbel_layout,
                    &[&self.params, logits, &self.weights, &self.classes],
                ),
            ),
        };
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("train draws"),
                timestamp_writes: None,
            });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &group, &[]);
            pass.dispatch_workgroups(groups, 1, 1);
        }
        match kind {
            DrawKind::Categorical => {
                let bytes = u64::from(self.batch) * MAX_K as u64 * 4;
                encoder.copy_buffer_to_buffer(&self.counts, 0, &self.staging, 0, bytes);
            }
            DrawKind::Gumbel => {
                let bytes = rows * MAX_K as u64 * 4;
                encoder.copy_buffer_to_buffer(&self.weights, 0, &self.staging, 0, bytes);
                encoder.copy_buffer_to_buffer(&self.classes, 0, &self.staging, bytes, rows * 4);
            }
        }
    }

    /// Reads back what [`Self::encode`] recorded (after its submission).
    ///
    /// # Errors
    /// [`Error::Gpu`] if the device fails or the map fails.
    pub fn read(&self, ctx: &GpuContext, kind: DrawKind) -> Result<TrainDrawn> {
        let rows = self.batch as usize * self.samples as usize;
        match kind {
            DrawKind::Categorical => Ok(TrainDrawn::Counts(ctx.read(
                &self.staging,
                self.batch as usize * MAX_K,
                "reading the training draws",
            )?)),
            DrawKind::Gumbel => {
                let words: Vec<u32> = ctx.read(
                    &self.staging,
                    rows * (MAX_K + 1),
                    "reading the training draws",
                )?;
                let (weights, classes) = words.split_at(rows * MAX_K);
                Ok(TrainDrawn::Gumbel {
                    weights: weights.iter().map(|&w| f32::from_bits(w)).collect(),
                    classes: classes.to_vec(),
                })
            }
        }
    }
}
