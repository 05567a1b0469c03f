//! The batched forward pass of the softmax layer on the GPU (`shaders/forward.wgsl`):
//! `logits = X W` for B inputs of D numbers and D x K weights, and the stable softmax of each
//! row. Reusable by training and the forward benchmark: upload once with [`Forward::batch`],
//! then [`ForwardBatch::launch`] as often as wanted and [`ForwardBatch::read`] the results.
//! Training keeps one batch per shape for a whole run: [`ForwardBatch::update`] rewrites
//! `x` and/or `W` in place (`queue.write_buffer`, no new buffers or bind group) and
//! [`ForwardBatch::logits`] runs the pass and reads the logits back in one submission.
//! CPU twin: [`forward_cpu`].

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::context::{GpuContext, READ, READ_WRITE, UNIFORM};
use crate::gpu::params::MAX_K;
use crate::gpu::shaders;

/// The forward kernel's parameters. Keep in sync with `ForwardParams` in shaders/forward.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct ForwardParams {
    /// Rows B.
    pub batch: u32,
    /// Inputs per row D.
    pub d: u32,
    /// Categories K.
    pub k: u32,
    /// Rows per dispatch row (the dispatch's x size).
    pub rows_per_y: u32,
}

/// The CPU twin of the forward kernel: logits `X W` and row softmax (max subtracted), in
/// f64 from f32 inputs. `x` is B x D, `w` is D x K, both row-major.
pub fn forward_cpu(x: &[f32], w: &[f32], d: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let batch = x.len() / d;
    let mut logits = vec![0.0; batch * k];
    let mut probs = vec![0.0; batch * k];
    for b in 0..batch {
        let row = &mut logits[b * k..(b + 1) * k];
        for i in 0..d {
            let xi = f64::from(x[b * d + i]);
            for j in 0..k {
                row[j] += xi * f64::from(w[i * k + j]);
            }
        }
        let p = crate::problem::softmax(row);
        probs[b * k..(b + 1) * k].copy_from_slice(&p);
    }
    (logits, probs)
}

/// The forward kernel.
pub struct Forward {
    layout: wgpu::BindGroupLayout,
    pipeline: wgpu::ComputePipeline,
}

/// One uploaded batch with its output buffers, ready to launch.
pub struct ForwardBatch {
    params: ForwardParams,
    groups: (u32, u32),
    bind_group: wgpu::BindGroup,
    x: wgpu::Buffer,
    w: wgpu::Buffer,
    logits: wgpu::Buffer,
    probs: wgpu::Buffer,
    staging: wgpu::Buffer,
}

impl Forward {
    /// Builds the kernel.
    ///
    /// # Errors
    /// [`Error::Gpu`] if it does not build on this adapter.
    pub fn new(ctx: &GpuContext) -> Result<Self> {
        let layout = ctx.layout(
            "forward",
            &[
                (UNIFORM, std::mem::size_of::<ForwardParams>() as u64),
                (READ, 4),
                (READ, 4),
                (READ_WRITE, 4),
                (READ_WRITE, 4),
            ],
        );
        let pipeline = ctx.compute_pipeline("forward", shaders::FORWARD, &layout)?;
        Ok(Self { layout, pipeline })
    }

    /// Uploads `x` (B x D) and `w` (D x K) and makes the output buffers.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for mismatched shapes or K > 16.
    pub fn batch(
        &self,
        ctx: &GpuContext,
        x: &[f32],
        w: &[f32],
        d: usize,
        k: usize,
    ) -> Result<ForwardBatch> {
        if d == 0
            || k == 0
            || k > MAX_K
            || !x.len().is_multiple_of(d)
            || w.len() != d * k
            || x.is_empty()
        {
            return Err(Error::InvalidArgument(format!(
                "forward pass: x has {} numbers, w {}, D = {d}, K = {k} (need B x D, D x K, K <= {MAX_K})",
                x.len(),
                w.len()
            )));
        }
        use wgpu::util::DeviceExt;
        use wgpu::BufferUsages as U;
        let batch = (x.len() / d) as u32;
        let rows_per_y = batch.min(ctx.limits.max_compute_workgroups_per_dimension);
        let params = ForwardParams {
            batch,
            d: d as u32,
            k: k as u32,
            rows_per_y,
        };
        let init = |label, contents: &[u8], usage| {
            ctx.device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents,
                    usage,
                })
        };
        let params_buf = init("forward params", bytemuck::bytes_of(&params), U::UNIFORM);
        let x_buf = init(
            "forward x",
            bytemuck::cast_slice(x),
            U::STORAGE | U::COPY_DST,
        );
        let w_buf = init(
            "forward w",
            bytemuck::cast_slice(w),
            U::STORAGE | U::COPY_DST,
        );
        let out_bytes = u64::from(batch) * k as u64 * 4;
        let logits = ctx.buffer("forward logits", out_bytes, U::STORAGE | U::COPY_SRC);
        let probs = ctx.buffer("forward probs", out_bytes, U::STORAGE | U::COPY_SRC);
        let staging = ctx.buffer("forward readback", 2 * out_bytes, U::MAP_READ | U::COPY_DST);
        let bind_group = ctx.bind_group(
            "forward",
            &self.layout,
            &[&params_buf, &x_buf, &w_buf, &logits, &probs],
        );
        Ok(ForwardBatch {
            params,
            groups: (rows_per_y, batch.div_ceil(rows_per_y)),
            bind_group,
            x: x_buf,
            w: w_buf,
            logits,
            probs,
            staging,
        })
    }

    /// Records the forward pass of `batch` into `encoder`.
    pub fn encode(&self, encoder: &mut wgpu::CommandEncoder, batch: &ForwardBatch) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("forward"),
            timestamp_writes: None,
        });
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &batch.bind_group, &[]);
        pass.dispatch_workgroups(batch.groups.0, batch.groups.1, 1);
    }
}

impl ForwardBatch {
    /// Runs the forward pass once and waits for it.
    ///
    /// # Errors
    /// [`Error::Gpu`] if the device fails.
    pub fn launch(&self, ctx: &GpuContext, forward: &Forward) -> Result<()> {
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("forward"),
            });
        forward.encode(&mut encoder, self);
        ctx.queue.submit([encoder.finish()]);
        ctx.wait("running the forward pass")
    }

    /// Reads the logits and probabilities (B x K each) of the last launch.
    ///
    /// # Errors
    /// [`Error::Gpu`] if the device fails or the map fails.
    pub fn read(&self, ctx: &GpuContext) -> Result<(Vec<f32>, Vec<f32>)> {
        let n = self.params.batch as usize * self.params.k as usize;
        let bytes = n as u64 * 4;
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("forward readback"),
            });
        encoder.copy_buffer_to_buffer(&self.logits, 0, &self.staging, 0, bytes);
        encoder.copy_buffer_to_buffer(&self.probs, 0, &self.staging, bytes, bytes);
        ctx.queue.submit([encoder.finish()]);
        let mut all: Vec<f32> = ctx.read(&self.staging, 2 * n, "reading the forward pass")?;
        let probs = all.split_off(n);
        Ok((all, probs))
    }

    /// Replaces the contents of `x` (B x D) and/or `w` (D x K) in place, for the next launch:
    /// the buffers, the bind group and the shape stay as they were made.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if a slice's length differs from the batch's shape.
    pub fn update(&self, ctx: &GpuContext, x: Option<&[f32]>, w: Option<&[f32]>) -> Result<()> {
        let (b, d, k) = (
            self.params.batch as usize,
            self.params.d as usize,
            self.params.k as usize,
        );
        for (name, data, want, buf) in [("x", x, b * d, &self.x), ("w", w, d * k, &self.w)] {
            if let Some(data) = data {
                if data.len() != want {
                    return Err(Error::InvalidArgument(format!(
                        "forward pass: new {name} has {} numbers, the batch holds {want}",
                        data.len()
                    )));
                }
                ctx.queue.write_buffer(buf, 0, bytemuck::cast_slice(data));
            }
        }
        Ok(())
    }

    /// Runs the forward pass and reads back its logits (B x K), in one submission: the
    /// training loop's per-step call (after [`ForwardBatch::update`]).
    ///
    /// # Errors
    /// [`Error::Gpu`] if the device fails or the map fails.
    pub fn logits(&self, ctx: &GpuContext, forward: &Forward) -> Result<Vec<f32>> {
        let n = self.params.batch as usize * self.params.k as usize;
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("forward logits"),
            });
        forward.encode(&mut encoder, self);
        encoder.copy_buffer_to_buffer(&self.logits, 0, &self.staging, 0, n as u64 * 4);
        ctx.queue.submit([encoder.finish()]);
        ctx.read(&self.staging, n, "running the forward pass")
    }

    /// Runs the forward pass, then whatever `then` records reading its outputs (the logits
    /// and probability buffers, B x K f32 each), and reads back the logits, in one submission.
    ///
    /// # Errors
    /// [`Error::Gpu`] if the device fails or the map fails.
    pub fn logits_then(
        &self,
        ctx: &GpuContext,
        forward: &Forward,
        then: impl FnOnce(&mut wgpu::CommandEncoder, &wgpu::Buffer, &wgpu::Buffer),
    ) -> Result<Vec<f32>> {
        let n = self.params.batch as usize * self.params.k as usize;
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("forward and draws"),
            });
        forward.encode(&mut encoder, self);
        then(&mut encoder, &self.logits, &self.probs);
        encoder.copy_buffer_to_buffer(&self.logits, 0, &self.staging, 0, n as u64 * 4);
        ctx.queue.submit([encoder.finish()]);
        ctx.read(&self.staging, n, "running the forward pass")
    }

    /// Rows B.
    pub fn rows(&self) -> u32 {
        self.params.batch
    }
}
