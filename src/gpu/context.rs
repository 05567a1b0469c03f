//! The GPU context: choosing an adapter (by preference, by name, or as wgpu's own
//! `WGPU_BACKEND` / `WGPU_ADAPTER_NAME` say), making the one device and queue of a run, and
//! turning wgpu's asynchronous failures (a lost device, a validation error, a failed map)
//! into [`Error::Gpu`] naming what was being done, never a hang or a panic.

use std::sync::{Arc, Mutex};

use crate::engine::BackendInfo;
use crate::error::{Error, Result};
use crate::gpu::philox_kernel::PhiloxMultiply;

/// Which adapter a GPU engine may use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum GpuPreference {
    /// Any adapter, software ones (Mesa's lavapipe, llvmpipe) included: `--backend gpu`.
    #[default]
    Any,
    /// A hardware GPU only: `--backend auto` (the caller falls back to the CPU engine on
    /// [`Error::GpuUnavailable`], since a software GPU is slower than the CPU engine).
    HardwareOnly,
    /// The first adapter whose name contains this (case-insensitive): `--adapter NAME`.
    Named(String),
}

/// One adapter as `mcgrad info` lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AdapterSummary {
    /// The adapter's name.
    pub name: String,
    /// The graphics backend (`Vulkan`, `Gl`, ...).
    pub backend: String,
    /// `DiscreteGpu`, `IntegratedGpu`, `VirtualGpu`, `Cpu` or `Other`.
    pub device_type: String,
    /// The driver and its version.
    pub driver: String,
    /// Whether it is a hardware GPU (not a software rasteriser).
    pub hardware: bool,
}

impl AdapterSummary {
    fn of(info: &wgpu::AdapterInfo) -> Self {
        Self {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: driver_string(info),
            hardware: is_hardware(info),
        }
    }
}

fn driver_string(info: &wgpu::AdapterInfo) -> String {
    match (info.driver.is_empty(), info.driver_info.is_empty()) {
        (false, false) => format!("{} {}", info.driver, info.driver_info),
        (false, true) => info.driver.clone(),
        _ => info.driver_info.clone(),
    }
}

/// Whether an adapter is a hardware GPU. Mesa's software rasterisers report `Cpu` on
/// Vulkan but `Other` on GL, so the name is checked too.
fn is_hardware(info: &wgpu::AdapterInfo) -> bool {
    let name = info.name.to_lowercase();
    let software = [
        "llvmpipe",
        "lavapipe",
        "softpipe",
        "swiftshader",
        "software",
    ]
    .iter()
    .any(|s| name.contains(s));
    !software
        && matches!(
            info.device_type,
            wgpu::DeviceType::DiscreteGpu
                | wgpu::DeviceType::IntegratedGpu
                | wgpu::DeviceType::VirtualGpu
        )
}

fn instance() -> wgpu::Instance {
    super::quiet_mesa();
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

fn adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
}

/// Every adapter wgpu finds (on the backends `WGPU_BACKEND` allows), best first.
pub fn adapter_list() -> Vec<AdapterSummary> {
    let mut list: Vec<AdapterSummary> = adapters(&instance())
        .iter()
        .map(|a| AdapterSummary::of(&a.get_info()))
        .collect();
    list.sort_by_key(|a| std::cmp::Reverse(rank_of(a)));
    list
}

fn rank_of(a: &AdapterSummary) -> u8 {
    let kind = match a.device_type.as_str() {
        "DiscreteGpu" => 4,
        "IntegratedGpu" => 3,
        "VirtualGpu" => 2,
        "Other" => 1,
        _ => 0,
    };
    // Prefer Vulkan to GL among equals: wgpu's GL compute path is the narrower one.
    kind * 2 + u8::from(a.backend == "Vulkan") + if a.hardware { 16 } else { 0 }
}

fn choose_adapter(instance: &wgpu::Instance, preference: &GpuPreference) -> Result<wgpu::Adapter> {
    let all = adapters(instance);
    let names = || {
        let list: Vec<String> = all
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?})", i.name, i.backend)
            })
            .collect();
        if list.is_empty() {
            "none".to_string()
        } else {
            list.join(", ")
        }
    };
    let wanted_name = match preference {
        GpuPreference::Named(name) => Some(name.to_lowercase()),
        _ => std::env::var("WGPU_ADAPTER_NAME")
            .ok()
            .map(|n| n.to_lowercase()),
    };
    let mut candidates: Vec<&wgpu::Adapter> = all
        .iter()
        .filter(|a| {
            wanted_name
                .as_ref()
                .is_none_or(|n| a.get_info().name.to_lowercase().contains(n))
        })
        .filter(|a| *preference != GpuPreference::HardwareOnly || is_hardware(&a.get_info()))
        .collect();
    candidates.sort_by_key(|a| std::cmp::Reverse(rank_of(&AdapterSummary::of(&a.get_info()))));
    match candidates.first() {
        Some(a) => Ok((*a).clone()),
        None => Err(Error::GpuUnavailable(match (preference, wanted_name) {
            (GpuPreference::HardwareOnly, _) => {
                format!("no hardware GPU adapter (found: {})", names())
            }
            (_, Some(n)) => format!("no adapter named like `{n}` (found: {})", names()),
            _ => {
                "no GPU adapter (is a Vulkan or GL driver installed? `mcgrad info` lists adapters)"
                    .into()
            }
        })),
    }
}

/// A failure wgpu reported asynchronously (device lost, uncaptured validation error).
type FailureSlot = Arc<Mutex<Option<String>>>;

/// The one instance, adapter, device and queue of a run.
pub struct GpuContext {
    /// The device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// The adapter's description.
    pub info: wgpu::AdapterInfo,
    /// The device's limits (the adapter's own).
    pub limits: wgpu::Limits,
    /// The optional features enabled on the device (timestamp queries, subgroups, 64-bit
    /// integers).
    pub features: wgpu::Features,
    /// How every kernel built on this context computes Philox's multiply.
    philox: PhiloxMultiply,
    failure: FailureSlot,
    /// Timestamp queries, where the adapter has them ([`super::profile`]).
    pub(crate) profiler: Option<super::profile::Profiler>,
}

impl GpuContext {
    /// Chooses an adapter and makes the device.
    ///
    /// # Errors
    /// [`Error::GpuUnavailable`] when no adapter fits the preference or no device can be made
    /// on it.
    pub fn new(preference: &GpuPreference) -> Result<Self> {
        let instance = instance();
        let adapter = choose_adapter(&instance, preference)?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        // Timestamp queries where the adapter has them (kernel profiling, off by default), and
        // subgroup operations (the moments kernels' subgroup reduction, gpu::moments).
        // and 64-bit integers (Philox's multiply, gpu::philox_kernel::PhiloxMultiply).
        let features = adapter.features()
            & (wgpu::Features::TIMESTAMP_QUERY
                | wgpu::Features::SUBGROUP
                | wgpu::Features::SHADER_INT64);
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("mcgrad"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| {
            Error::GpuUnavailable(format!("cannot open a device on {}: {e}", info.name))
        })?;
        let failure: FailureSlot = Arc::default();
        let lost = failure.clone();
        device.set_device_lost_callback(move |reason, message| {
            let mut slot = lost.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert_with(|| format!("device lost ({reason:?}): {message}"));
        });
        let uncaptured = failure.clone();
        device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
            let mut slot = uncaptured.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert_with(|| format!("{error}"));
        }));
        let profiler = features
            .contains(wgpu::Features::TIMESTAMP_QUERY)
            .then(|| super::profile::Profiler::new(&device, &queue));
        Ok(Self {
            device,
            queue,
            info,
            limits,
            features,
            philox: PhiloxMultiply::for_adapter(features),
            failure,
            profiler,
        })
    }

    /// The same context building its kernels with `philox`'s multiply (the GPU bench and the
    /// tests run both forms where the device has 64-bit integers). Kernels built before keep
    /// theirs: call this before building an engine on the context.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] where the device cannot run that form.
    pub fn with_philox_multiply(mut self, philox: PhiloxMultiply) -> Result<Self> {
        if !philox.available(self.features) {
            return Err(Error::InvalidArgument(format!(
                "Philox multiply `{}`: {} has no 64-bit integers in shaders",
                philox.name(),
                self.info.name
            )));
        }
        self.philox = philox;
        Ok(self)
    }

    /// How the kernels built on this context compute Philox's multiply.
    pub fn philox_multiply(&self) -> PhiloxMultiply {
        self.philox
    }

    /// Where this context runs, as `summary.json` records it.
    pub fn backend_info(&self) -> BackendInfo {
        BackendInfo {
            engine: "gpu".into(),
            adapter: self.info.name.clone(),
            graphics_backend: Some(format!("{:?}", self.info.backend)),
            driver: Some(driver_string(&self.info)),
            threads: 1,
        }
    }

    /// The adapter as `mcgrad info` lists it.
    pub fn adapter(&self) -> AdapterSummary {
        AdapterSummary::of(&self.info)
    }

    /// An error if wgpu reported a failure since the context was made.
    ///
    /// # Errors
    /// [`Error::Gpu`] naming `what` was being done and wgpu's message.
    pub fn check(&self, what: &str) -> Result<()> {
        let slot = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            Some(message) => Err(Error::Gpu(format!("{what}: {message}"))),
            None => Ok(()),
        }
    }

    /// Waits until the queue is idle.
    ///
    /// # Errors
    /// [`Error::Gpu`] if the wait fails or wgpu reported a failure.
    pub fn wait(&self, what: &str) -> Result<()> {
        self.check(what)?;
        let polled = self.device.poll(wgpu::PollType::wait_indefinitely());
        self.check(what)?;
        polled
            .map(|_| ())
            .map_err(|e| Error::Gpu(format!("{what}: waiting for the GPU failed: {e}")))
    }

    /// Reads the first `len` elements of a `MAP_READ` buffer (after the work that fills it
    /// was submitted).
    ///
    /// # Errors
    /// [`Error::Gpu`] if mapping fails, the device is lost, or wgpu reported a failure.
    pub fn read<T: bytemuck::Pod>(
        &self,
        staging: &wgpu::Buffer,
        len: usize,
        what: &str,
    ) -> Result<Vec<T>> {
        let bytes = (len * std::mem::size_of::<T>()) as u64;
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let slice = staging.slice(..bytes);
        let mapped: Arc<Mutex<Option<std::result::Result<(), wgpu::BufferAsyncError>>>> =
            Arc::default();
        let done = mapped.clone();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            *done.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        });
        self.wait(what)?;
        let outcome = mapped.lock().unwrap_or_else(|e| e.into_inner()).take();
        match outcome {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                return Err(Error::Gpu(format!(
                    "{what}: mapping the results failed: {e}"
                )))
            }
            None => return Err(Error::Gpu(format!("{what}: the results were never mapped"))),
        }
        let out = {
            let view = slice.get_mapped_range().map_err(|e| {
                Error::Gpu(format!("{what}: reading the mapped results failed: {e}"))
            })?;
            bytemuck::cast_slice::<u8, T>(&view).to_vec()
        };
        staging.unmap();
        Ok(out)
    }

    /// A shader module from WGSL source, its compilation errors turned into [`Error::Gpu`].
    ///
    /// # Errors
    /// [`Error::Gpu`] if the shader does not compile (a bug, or a driver limitation).
    pub fn compute_pipeline(
        &self,
        label: &str,
        source: &str,
        layout: &wgpu::BindGroupLayout,
    ) -> Result<wgpu::ComputePipeline> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(self.philox.apply(source)),
            });
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(label),
                bind_group_layouts: &[Some(layout)],
                immediate_size: 0,
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
        if let Some(error) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("building kernel {label}: {error}")));
        }
        Ok(pipeline)
    }

    /// A bind group layout of compute-stage buffers: `(binding kind, minimum size)`.
    pub fn layout(
        &self,
        label: &str,
        entries: &[(wgpu::BufferBindingType, u64)],
    ) -> wgpu::BindGroupLayout {
        let entries: Vec<wgpu::BindGroupLayoutEntry> = entries
            .iter()
            .enumerate()
            .map(|(i, &(ty, min))| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty,
                    has_dynamic_offset: false,
                    min_binding_size: wgpu::BufferSize::new(min),
                },
                count: None,
            })
            .collect();
        self.device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(label),
                entries: &entries,
            })
    }

    /// A bind group binding whole buffers in order.
    pub fn bind_group(
        &self,
        label: &str,
        layout: &wgpu::BindGroupLayout,
        buffers: &[&wgpu::Buffer],
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout,
            entries: &entries,
        })
    }

    /// A buffer of `size` bytes (at least 16) with `usage`.
    pub fn buffer(&self, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(16).next_multiple_of(4),
            usage,
            mapped_at_creation: false,
        })
    }
}

/// Storage, read-only.
pub const READ: wgpu::BufferBindingType = wgpu::BufferBindingType::Storage { read_only: true };
/// Storage, read-write.
pub const READ_WRITE: wgpu::BufferBindingType =
    wgpu::BufferBindingType::Storage { read_only: false };
/// Uniform.
pub const UNIFORM: wgpu::BufferBindingType = wgpu::BufferBindingType::Uniform;
