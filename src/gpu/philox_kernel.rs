//! The generator the GPU shares with the CPU: how every kernel computes Philox's
//! 32 x 32 -> 64-bit multiply ([`PhiloxMultiply`], chosen per adapter), and a test kernel
//! that returns the Philox4x32-10 words of given counters, computed by
//! `shaders/common.wgsl`'s `philox4x32_10` (`shaders/philox_words.wgsl`). CPU twin:
//! [`crate::philox::philox4x32_10`].

use crate::error::{Error, Result};
use crate::gpu::context::{GpuContext, READ, READ_WRITE};
use crate::gpu::shaders;

/// How the kernels compute the high word of Philox's 32 x 32 -> 64-bit products. Both are
/// exact integer arithmetic, so they give the same bits (tests/gpu.rs compares each with
/// the CPU's Philox); which is faster depends on the adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhiloxMultiply {
    /// Four multiplies of 16-bit limbs (`mulhi` in `shaders/common.wgsl`): any adapter,
    /// since WGSL has no 64-bit integers of its own.
    Limbs,
    /// One 64-bit product (`u64`, `wgpu::Features::SHADER_INT64`), which NVIDIA's compiler
    /// can issue as one wide multiply: only where the device has 64-bit integers.
    Int64,
}

/// `mulhi` of `shaders/common.wgsl` as written there (the [`PhiloxMultiply::Limbs`] form).
const MULHI_LIMBS: &str = "fn mulhi(a_lo: u32, a_hi: u32, b: u32) -> u32 {
    let b_lo = b & 0xffffu;
    let b_hi = b >> 16u;
    let u = a_hi * b_lo + ((a_lo * b_lo) >> 16u);
    let w = a_lo * b_hi + (u & 0xffffu);
    return a_hi * b_hi + (u >> 16u) + (w >> 16u);
}";

/// The same function as one 64-bit product ([`PhiloxMultiply::Int64`]).
const MULHI_INT64: &str = "fn mulhi(a_lo: u32, a_hi: u32, b: u32) -> u32 {
    let a = (u64(a_hi) << 16u) | u64(a_lo);
    return u32((a * u64(b)) >> 32u);
}";

impl PhiloxMultiply {
    /// The name `MCGRAD_PHILOX_MULTIPLY` and the GPU bench use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Limbs => "limbs",
            Self::Int64 => "int64",
        }
    }

    /// Whether a device with these features can run this form.
    pub fn available(self, features: wgpu::Features) -> bool {
        match self {
            Self::Limbs => true,
            Self::Int64 => features.contains(wgpu::Features::SHADER_INT64),
        }
    }

    /// The form a new context uses: `MCGRAD_PHILOX_MULTIPLY=int64` where the device has
    /// 64-bit integers, else the 16-bit limbs, the form the H100 figures were measured with
    /// (the GPU bench's `gpu_philox_multiply` group measures both, to choose per adapter).
    pub fn for_adapter(features: wgpu::Features) -> Self {
        match std::env::var("MCGRAD_PHILOX_MULTIPLY")
            .ok()
            .as_deref()
            .map(str::trim)
        {
            Some("int64") if Self::Int64.available(features) => Self::Int64,
            _ => Self::Limbs,
        }
    }

    /// A kernel's source with this form of `mulhi` (every kernel includes
    /// `shaders/common.wgsl`; the test kernels too).
    pub fn apply(self, source: &str) -> std::borrow::Cow<'_, str> {
        match self {
            Self::Limbs => source.into(),
            Self::Int64 => source.replace(MULHI_LIMBS, MULHI_INT64).into(),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_int64_form_replaces_the_limbs_mulhi_of_every_kernel() {
        for source in [
            shaders::PHILOX_WORDS,
            shaders::SCORE_FUNCTION_COUNTS,
            shaders::RELAXED_DRAWS,
            shaders::JOINT_DRAWS,
            shaders::TRAIN_CATEGORICAL,
        ] {
            assert!(source.contains(MULHI_LIMBS));
            let int64 = PhiloxMultiply::Int64.apply(source);
            assert!(!int64.contains(MULHI_LIMBS) && int64.contains(MULHI_INT64));
            assert_eq!(PhiloxMultiply::Limbs.apply(source), source);
        }
    }

    /// The two forms' arithmetic, in Rust: the limbs' high word equals the 64-bit product's
    /// on Philox's two multipliers and edge and random operands.
    #[test]
    fn the_limbs_high_word_is_the_64_bit_products() {
        fn limbs(a: u32, b: u32) -> u32 {
            let (a_lo, a_hi) = (a & 0xffff, a >> 16);
            let (b_lo, b_hi) = (b & 0xffff, b >> 16);
            let u = a_hi * b_lo + ((a_lo * b_lo) >> 16);
            let w = a_lo * b_hi + (u & 0xffff);
            a_hi * b_hi + (u >> 16) + (w >> 16)
        }
        let mut x = 0x9e37_79b9_u32;
        for a in [0xD251_1F53_u32, 0xCD9E_8D57, u32::MAX, 0, 1] {
            for i in 0..10_000 {
                x = x.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
                let b = match i {
                    0 => 0,
                    1 => u32::MAX,
                    _ => x,
                };
                assert_eq!(limbs(a, b), ((u64::from(a) * u64::from(b)) >> 32) as u32);
            }
        }
    }
}
