//! Kernel timings from timestamp queries (`wgpu::Features::TIMESTAMP_QUERY`), where the
//! adapter has them: with profiling on ([`GpuContext::set_profiling`]), every compute pass
//! the engine records writes a timestamp at its beginning and end, each submit resolves them,
//! and the engine's next readback adds each kernel's time to a per-kernel total
//! ([`GpuContext::kernel_times`]). Off by default, and then free: no pass writes timestamps
//! and nothing is resolved or read. The GPU bench reports these totals beside criterion's
//! wall-clock figures, so the device's own time per kernel is known (and how much of a
//! pass's wall clock is host work and transfers).

use std::sync::Mutex;

use crate::error::Result;
use crate::gpu::context::GpuContext;

/// Most passes timed per submit (two timestamps each).
pub const MAX_TIMED_PASSES: u32 = 32;

/// One kernel's total device time over the passes timed since the last
/// [`GpuContext::kernel_times`].
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// The pass's label (the kernel).
    pub kernel: &'static str,
    /// Device seconds, summed over its passes.
    pub seconds: f64,
    /// Passes timed.
    pub passes: u64,
}

/// The query set and its buffers (made only where the adapter has timestamp queries).
pub struct Profiler {
    query_set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    staging: wgpu::Buffer,
    period_ns: f64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    enabled: bool,
    /// Labels of the passes recorded since the last collection, in query order.
    pending: Vec<&'static str>,
    /// Whether the pending queries were resolved into the staging buffer.
    resolved: bool,
    totals: Vec<KernelTime>,
}

impl Profiler {
    /// The profiler of a device made with [`wgpu::Features::TIMESTAMP_QUERY`].
    pub fn new(device: &wgpu::Device, queue: &wgpu::Queue) -> Self {
        let count = 2 * MAX_TIMED_PASSES;
        let bytes = u64::from(count) * 8;
        Self {
            query_set: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("kernel timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count,
            }),
            resolve: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamp resolve"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            staging: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamp readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            period_ns: f64::from(queue.get_timestamp_period()),
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl GpuContext {
    /// Turns kernel profiling on or off; returns whether it is on (false where the adapter
    /// has no timestamp queries).
    pub fn set_profiling(&self, on: bool) -> bool {
        match &self.profiler {
            Some(p) => {
                let mut state = p.state();
                state.enabled = on;
                state.pending.clear();
                state.resolved = false;
                on
            }
            None => false,
        }
    }

    /// Whether the adapter has timestamp queries (so profiling can be turned on).
    pub fn has_timestamps(&self) -> bool {
        self.profiler.is_some()
    }

    /// The timestamp writes of the next compute pass, labelled `kernel`: `None` with
    /// profiling off or the submit's query set full.
    pub fn timestamps(&self, kernel: &'static str) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        let p = self.profiler.as_ref()?;
        let mut state = p.state();
        let n = state.pending.len() as u32;
        if !state.enabled || state.resolved || n >= MAX_TIMED_PASSES {
            return None;
        }
        state.pending.push(kernel);
        Some(wgpu::ComputePassTimestampWrites {
            query_set: &p.query_set,
            beginning_of_pass_write_index: Some(2 * n),
            end_of_pass_write_index: Some(2 * n + 1),
        })
    }

    /// Records the resolution of this submit's timestamps (call before `encoder.finish()`);
    /// nothing where none were written.
    pub fn resolve_timestamps(&self, encoder: &mut wgpu::CommandEncoder) {
        let Some(p) = &self.profiler else { return };
        let mut state = p.state();
        let n = 2 * state.pending.len() as u32;
        if n == 0 || state.resolved {
            return;
        }
        encoder.resolve_query_set(&p.query_set, 0..n, &p.resolve, 0);
        encoder.copy_buffer_to_buffer(&p.resolve, 0, &p.staging, 0, u64::from(n) * 8);
        state.resolved = true;
    }

    /// After a submit that [`GpuContext::resolve_timestamps`] closed: reads its timestamps
    /// and adds each pass's time to its kernel's total. Nothing where none were resolved.
    ///
    /// # Errors
    /// [`crate::Error::Gpu`] if the readback fails.
    pub fn collect_timestamps(&self) -> Result<()> {
        let Some(p) = &self.profiler else {
            return Ok(());
        };
        let labels = {
            let mut state = p.state();
            if !state.resolved {
                return Ok(());
            }
            state.resolved = false;
            std::mem::take(&mut state.pending)
        };
        let ticks: Vec<u64> = self.read(&p.staging, 2 * labels.len(), "reading timestamps")?;
        let mut state = p.state();
        for (kernel, pair) in labels.into_iter().zip(ticks.chunks_exact(2)) {
            let seconds = pair[1].saturating_sub(pair[0]) as f64 * p.period_ns * 1e-9;
            match state.totals.iter_mut().find(|t| t.kernel == kernel) {
                Some(t) => {
                    t.seconds += seconds;
                    t.passes += 1;
                }
                None => state.totals.push(KernelTime {
                    kernel,
                    seconds,
                    passes: 1,
                }),
            }
        }
        Ok(())
    }

    /// The kernels' device times since the last call (and resets them); empty without
    /// profiling.
    pub fn kernel_times(&self) -> Vec<KernelTime> {
        self.profiler
            .as_ref()
            .map(|p| std::mem::take(&mut p.state().totals))
            .unwrap_or_default()
    }
}
