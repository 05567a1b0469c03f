//! A test kernel for the generator the GPU shares with the CPU: the Philox4x32-10 words of
//! given counters, computed by `shaders/common.wgsl`'s `philox4x32_10`
//! (`shaders/philox_words.wgsl`). CPU twin: [`crate::philox::philox4x32_10`].

use crate::error::{Error, Result};
use crate::gpu::context::{GpuContext, READ, READ_WRITE};
use crate::gpu::shaders;

/// The Philox words of each counter under `key`, computed on the GPU.
///
/// # Errors
/// [`Error::Gpu`] if the kernel does not build or the device fails;
/// [`Error::InvalidArgument`] for an empty list.
pub fn philox_words(
    ctx: &GpuContext,
    counters: &[[u32; 4]],
    key: [u32; 2],
) -> Result<Vec<[u32; 4]>> {
    if counters.is_empty() {
        return Err(Error::InvalidArgument("no counters".into()));
    }
    use wgpu::util::DeviceExt;
    use wgpu::BufferUsages as U;
    let layout = ctx.layout("philox words", &[(READ, 16), (READ, 8), (READ_WRITE, 16)]);
    let pipeline = ctx.compute_pipeline("philox_words", shaders::PHILOX_WORDS, &layout)?;
    let init = |label, contents: &[u8], usage| {
        ctx.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage,
            })
    };
    let counters_buf = init("counters", bytemuck::cast_slice(counters), U::STORAGE);
    let key_buf = init("key", bytemuck::cast_slice(&key), U::STORAGE);
    let bytes = (counters.len() * 16) as u64;
    let words = ctx.buffer("words", bytes, U::STORAGE | U::COPY_SRC);
    let staging = ctx.buffer("words readback", bytes, U::MAP_READ | U::COPY_DST);
    let group = ctx.bind_group("philox words", &layout, &[&counters_buf, &key_buf, &words]);
    let mut encoder = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("philox words"),
        });
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("philox words"),
            timestamp_writes: None,
        });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &group, &[]);
        pass.dispatch_workgroups((counters.len() as u32).div_ceil(64), 1, 1);
    }
    encoder.copy_buffer_to_buffer(&words, 0, &staging, 0, bytes);
    ctx.queue.submit([encoder.finish()]);
    let flat: Vec<u32> = ctx.read(&staging, counters.len() * 4, "reading Philox words")?;
    Ok(flat
        .chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect())
}
