//! Whole training steps on the GPU (`shaders/train_step.wgsl`): the training set, W, the
//! optimiser's moments and the moving-average baseline stay in GPU buffers, and one dispatch
//! runs a chunk of steps of several training runs at once (one workgroup per run: the rates of
//! a tuning grid, or the one reported run). A step is the minibatch's forward pass, each
//! input's S draws (the Philox counters of the per-step draw kernels,
//! [`super::train_draws`]), the estimator's logit gradient by its [`StepRule`], the exact
//! minibatch objective, `G = (1/B) X^T g` and the optimiser's update. The host uploads the
//! images and labels once per session and each chunk's minibatch order; a chunk's one
//! submission reads back the steps' objectives and the baselines, and W only where asked
//! (at evaluation points).
//!
//! CPU twin: [`steps_cpu`], the same loops in f64 with the CPU training's own forward pass,
//! W gradient and optimiser ([`crate::train::model`], [`crate::train::optim`]); its per-input
//! estimate [`row_estimate_cpu`] is the kernel's formula for each rule, which
//! `src/train/resident.rs` checks against the estimators' own code before choosing a rule.

use bytemuck::{Pod, Zeroable};

use crate::draws::{count_categories, CategoricalTable, RelaxedTable};
use crate::error::{Error, Result};
use crate::estimators::{Baseline, Constant, MovingAverage, Signal};
use crate::gpu::context::{GpuContext, READ, READ_WRITE, UNIFORM};
use crate::gpu::params::MAX_K;
use crate::train::optim::{Optimizer, OptimizerKind};

/// The kernel's source: `shaders/common.wgsl` (Philox, the Gumbel noise, the baseline kinds)
/// and `shaders/train_step.wgsl`.
pub const TRAIN_STEP: &str = concat!(
    include_str!("../../shaders/common.wgsl"),
    include_str!("../../shaders/train_step.wgsl")
);

/// Threads of a run's workgroup. Keep in sync with `WG` in shaders/train_step.wgsl.
pub const WORKGROUP: u32 = 256;

/// How a row's logit gradient is computed: the estimator's lowering, as the kernel runs it.
/// Keep in sync with the `RULE_*` constants of shaders/train_step.wgsl.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepRule {
    /// The score-function lowering `scale sum_i (L(z_i) - b) (e_{z_i} - p) + c` from the
    /// category counts (`signal: None`: the exact gradient `p_j (f_j - E f)`, no draws).
    Score {
        /// The signal `L`.
        signal: Option<Signal>,
        /// The baseline `b`.
        baseline: Baseline,
        /// The constant `c` ([`Constant::MeanField`] or none).
        constant: Constant,
    },
    /// Straight-through: `(1/S) sum_c n_c J(p) grad f(e_c)`.
    StraightThrough,
    /// ReinMax: `(1/S) sum_c n_c [2 J(pi_c) v_c - J(p) v_c / 2]`, `v_c = grad f(e_c)`,
    /// `pi_c = (softmax(a / tau) + e_c) / 2`.
    ReinMax,
    /// The Gumbel family: `(1/S) sum_d (1/tau) J(y_d) v_d`, `v_d = grad f(y_d)` or, straight
    /// through, `grad f(e_{z_d})`.
    Relaxed {
        /// Whether the loss's gradient is taken at the hard draw.
        straight_through: bool,
    },
}

impl StepRule {
    /// Whether the rule reads Gumbel draws (else category counts, or none).
    pub fn relaxed(self) -> bool {
        matches!(self, StepRule::Relaxed { .. })
    }

    /// Whether the rule keeps a moving-average baseline.
    pub fn moving_average(self) -> bool {
        matches!(
            self,
            StepRule::Score {
                baseline: Baseline::MovingAverage,
                ..
            }
        )
    }

    /// Whether the rule reads any draw (`exact` does not).
    pub fn reads_draws(self) -> bool {
        !matches!(self, StepRule::Score { signal: None, .. })
    }

    /// `(rule, signal, baseline, constant)` as the kernel reads them.
    fn codes(self) -> [u32; 4] {
        match self {
            StepRule::Score {
                signal,
                baseline,
                constant,
            } => [
                0,
                match signal {
                    None => 0,
                    Some(Signal::Loss) => 1,
                    Some(Signal::MupropResidual) => 2,
                },
                match baseline {
                    Baseline::None => 0,
                    Baseline::MovingAverage => 1,
                    Baseline::LeaveOneOut => 2,
                },
                u32::from(constant == Constant::MeanField),
            ],
            StepRule::StraightThrough => [1, 0, 0, 0],
            StepRule::ReinMax => [2, 0, 0, 0],
            StepRule::Relaxed { straight_through } => [3 + u32::from(straight_through), 0, 0, 0],
        }
    }
}

/// The loss of an input with label `c` as a quadratic form
/// `f(y) = alpha ||y||^2 + beta . y + gamma`, `beta_j = beta_off` except `beta_c = beta_hit`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossForm {
    /// `alpha`.
    pub alpha: f64,
    /// `beta_j` for `j != c`.
    pub beta_off: f64,
    /// `beta_c`.
    pub beta_hit: f64,
    /// `gamma`.
    pub gamma: f64,
}

impl LossForm {
    fn beta(&self, j: usize, label: usize) -> f64 {
        if j == label {
            self.beta_hit
        } else {
            self.beta_off
        }
    }
}

/// The kernel's parameters. Keep in sync with `TrainStepParams` in shaders/train_step.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct TrainStepParams {
    key: [u32; 2],
    first_step: u32,
    steps: u32,
    batch: u32,
    samples: u32,
    d: u32,
    k: u32,
    rule: u32,
    signal: u32,
    baseline: u32,
    constant: u32,
    optimizer: u32,
    record: u32,
    order_offset: u32,
    state_stride: u32,
    scratch_stride: u32,
    out_stride: u32,
    inv_tau: f32,
    inv_batch: f32,
    out_step: u32,
    out_steps: u32,
    alpha: f32,
    beta_off: f32,
    beta_hit: f32,
    gamma: f32,
}

/// Loop iterations one invocation may run on Mesa's llvmpipe and lavapipe, less a margin:
/// gallivm counts the iterations of all the loops of an invocation against one limit
/// (`LP_MAX_TGSI_LOOP_ITERATIONS`, 65535) and quietly leaves the loops past it, so on a
/// software adapter a dispatch runs only as many steps as fit (measured: a 50-step dispatch at
/// B = 32 stopped after about 22 steps).
pub const SOFTWARE_LOOP_BUDGET: u64 = 60_000;

/// An upper bound on the loop iterations of one step in one invocation of the kernel: the
/// forward pass's (row, class) pairs times D, the per-input estimates, the reduction and the
/// W gradient's pixels times B (K + 1).
pub fn loop_iterations_per_step(batch: u32, samples: u32, d: usize, k: usize) -> u64 {
    let (b, s, d, k) = (u64::from(batch), u64::from(samples), d as u64, k as u64);
    let wg = u64::from(WORKGROUP);
    let forward = (b * k).div_ceil(wg) * (d + 1);
    let rows = b.div_ceil(wg) * (20 * k + k * k + s * (4 * k + 4) + 40);
    let gradient = d.div_ceil(wg) * (b * (k + 1) + k + 1);
    forward + rows + gradient + 16
}

/// Most steps of one dispatch on `ctx` for B = `batch`, S = `samples`: `limit` on a hardware
/// GPU; on a software one as many as fit [`SOFTWARE_LOOP_BUDGET`] (0 when not even one does).
pub fn steps_per_dispatch(
    ctx: &GpuContext,
    batch: u32,
    samples: u32,
    d: usize,
    k: usize,
    limit: u32,
) -> u32 {
    if ctx.adapter().hardware {
        return limit;
    }
    let per_step = loop_iterations_per_step(batch, samples, d, k);
    (SOFTWARE_LOOP_BUDGET / per_step).min(u64::from(limit)) as u32
}

/// What every chunk of a session shares: the estimator's rule, the loss, the optimiser.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepSpec {
    /// The Philox key of the draws.
    pub key: [u32; 2],
    /// The per-input rule.
    pub rule: StepRule,
    /// The loss.
    pub loss: LossForm,
    /// The optimiser.
    pub optimizer: OptimizerKind,
    /// Gumbel-softmax (and ReinMax) temperature.
    pub tau: f64,
    /// Draws per input S.
    pub samples: u32,
    /// Inputs per step B.
    pub batch: u32,
}

/// The pipeline.
pub struct TrainStep {
    layout: wgpu::BindGroupLayout,
    pipeline: wgpu::ComputePipeline,
}

/// One session's buffers: the training set, the runs' state, the chunk's order and outputs.
pub struct StepSession {
    spec: StepSpec,
    runs: u32,
    d: u32,
    k: u32,
    n_images: u32,
    max_steps: u32,
    per_dispatch: u32,
    slot: u64,
    record: bool,
    out_stride: u32,
    state_stride: u32,
    params: wgpu::Buffer,
    index: wgpu::Buffer,
    state: wgpu::Buffer,
    staging: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
    // Kept alive with the bind group.
    _images: wgpu::Buffer,
    _scratch: wgpu::Buffer,
    out: wgpu::Buffer,
}

/// What a chunk read back, per run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChunkResult {
    /// W (D x K, f32) of each run, where asked.
    pub w: Vec<Vec<f32>>,
    /// The moving average's weighted sum and weight of each run, after the chunk.
    pub baseline: Vec<(f32, f32)>,
    /// The exact minibatch objective of every step of the chunk, per run.
    pub objectives: Vec<Vec<f32>>,
    /// With recording: per run, per step and input, the 16 class counts (or the S argmax
    /// classes of the relaxed draws).
    pub record: Vec<Vec<u32>>,
}

impl TrainStep {
    /// Builds the kernel.
    ///
    /// # Errors
    /// [`Error::Gpu`] if it does not build on this adapter.
    pub fn new(ctx: &GpuContext) -> Result<Self> {
        // As GpuContext::layout, with the parameters at a dynamic offset (one slot per
        // dispatch of a submission).
        let entries: Vec<wgpu::BindGroupLayoutEntry> = [
            (UNIFORM, std::mem::size_of::<TrainStepParams>() as u64),
            (READ, 4),
            (READ, 4),
            (READ_WRITE, 4),
            (READ_WRITE, 4),
            (READ_WRITE, 4),
        ]
        .iter()
        .enumerate()
        .map(|(i, &(ty, min))| wgpu::BindGroupLayoutEntry {
            binding: i as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: i == 0,
                min_binding_size: wgpu::BufferSize::new(min),
            },
            count: None,
        })
        .collect();
        let layout = ctx
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("train step"),
                entries: &entries,
            });
        let pipeline = ctx.compute_pipeline("train step", TRAIN_STEP, &layout)?;
        Ok(Self { layout, pipeline })
    }

    /// Whether a session over `n_images` images of `d` pixels, `runs` runs of `batch` inputs
    /// and chunks of at most `max_steps` steps fits this device's buffers.
    pub fn fits(
        ctx: &GpuContext,
        n_images: usize,
        d: usize,
        runs: u32,
        batch: u32,
        max_steps: u32,
    ) -> bool {
        let limit = ctx
            .limits
            .max_storage_buffer_binding_size
            .min(ctx.limits.max_buffer_size);
        let images = n_images as u64 * d as u64 * 4;
        let scratch = u64::from(runs) * u64::from(batch) * MAX_K as u64 * 4;
        let index = (n_images as u64 + u64::from(max_steps) * u64::from(batch)) * 4;
        images <= limit && scratch <= limit && index <= limit && n_images < u32::MAX as usize / d
    }

    /// A session: uploads the images (`n x d`) and labels, and starts every run at W = 0 with
    /// fresh optimiser moments and baseline, run `r` at learning rate `lrs[r]`. Chunks hold at
    /// most `max_steps` steps, in dispatches of at most `per_dispatch` steps (see
    /// [`steps_per_dispatch`]); `record` keeps every step's draws for [`ChunkResult::record`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for mismatched shapes or K > 16.
    #[allow(clippy::too_many_arguments)]
    pub fn session(
        &self,
        ctx: &GpuContext,
        images: &[f32],
        labels: &[u8],
        d: usize,
        k: usize,
        spec: StepSpec,
        lrs: &[f64],
        max_steps: u32,
        per_dispatch: u32,
        record: bool,
    ) -> Result<StepSession> {
        let n = labels.len();
        if per_dispatch == 0
            || d == 0
            || k == 0
            || k > MAX_K
            || images.len() != n * d
            || n == 0
            || lrs.is_empty()
            || max_steps == 0
            || spec.batch == 0
            || spec.samples == 0
        {
            return Err(Error::InvalidArgument(format!(
                "training steps on the GPU: {} pixels for {n} labels, D = {d}, K = {k}, {} runs, B = {}, S = {} (need n x D pixels, K <= {MAX_K}, at least one run, input and draw)",
                images.len(),
                lrs.len(),
                spec.batch,
                spec.samples
            )));
        }
        use wgpu::util::DeviceExt;
        use wgpu::BufferUsages as U;
        let runs = lrs.len() as u32;
        let dk = (d * k) as u32;
        let state_stride = 3 * dk + 4;
        let rec_row = if spec.rule.relaxed() {
            spec.samples
        } else {
            MAX_K as u32
        };
        let out_stride = max_steps
            + if record {
                max_steps * spec.batch * rec_row
            } else {
                0
            };
        let init = |label, contents: &[u8], usage| {
            ctx.device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents,
                    usage,
                })
        };
        let images_buf = init(
            "train step images",
            bytemuck::cast_slice(images),
            U::STORAGE,
        );
        let mut index: Vec<u32> = labels.iter().map(|&l| u32::from(l)).collect();
        index.resize(n + (max_steps * spec.batch) as usize, 0);
        let index_buf = init(
            "train step labels and order",
            bytemuck::cast_slice(&index),
            U::STORAGE | U::COPY_DST,
        );
        let mut state = vec![0f32; (runs * state_stride) as usize];
        for (r, &lr) in lrs.iter().enumerate() {
            state[r * state_stride as usize + 3 * dk as usize] = lr as f32;
        }
        let state_buf = init(
            "train step state",
            bytemuck::cast_slice(&state),
            U::STORAGE | U::COPY_SRC,
        );
        let scratch = ctx.buffer(
            "train step scratch",
            u64::from(runs) * u64::from(spec.batch) * MAX_K as u64 * 4,
            U::STORAGE,
        );
        let out = ctx.buffer(
            "train step out",
            u64::from(runs) * u64::from(out_stride) * 4,
            U::STORAGE | U::COPY_SRC,
        );
        let slot = std::mem::size_of::<TrainStepParams>()
            .next_multiple_of(ctx.limits.min_uniform_buffer_offset_alignment as usize)
            as u64;
        let params = ctx.buffer(
            "train step params",
            slot * u64::from(max_steps.div_ceil(per_dispatch)),
            U::UNIFORM | U::COPY_DST,
        );
        let staging = ctx.buffer(
            "train step readback",
            u64::from(runs) * (4 + u64::from(out_stride) + u64::from(dk)) * 4,
            U::MAP_READ | U::COPY_DST,
        );
        let param_size = wgpu::BufferSize::new(std::mem::size_of::<TrainStepParams>() as u64);
        let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("train step"),
            layout: &self.layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &params,
                        offset: 0,
                        size: param_size,
                    }),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: images_buf.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: index_buf.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: state_buf.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 4,
                    resource: scratch.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 5,
                    resource: out.as_entire_binding(),
                },
            ],
        });
        Ok(StepSession {
            spec,
            runs,
            d: d as u32,
            k: k as u32,
            n_images: n as u32,
            max_steps,
            per_dispatch,
            slot,
            record,
            out_stride,
            state_stride,
            params,
            index: index_buf,
            state: state_buf,
            staging,
            bind_group,
            _images: images_buf,
            _scratch: scratch,
            out,
        })
    }
}

impl StepSession {
    /// Runs steps `first_step ..` of every run, one per `batch` indices of `order` (at most
    /// the session's `max_steps` steps), in one submission, and reads back the objectives, the
    /// baselines and (`read_w`) W.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an order that is not whole steps within the session's
    /// limit or names an image past the training set; [`Error::Gpu`] if the device fails.
    pub fn run(
        &self,
        ctx: &GpuContext,
        kernel: &TrainStep,
        first_step: u32,
        order: &[u32],
        read_w: bool,
    ) -> Result<ChunkResult> {
        let batch = self.spec.batch as usize;
        let steps = order.len() / batch;
        if !order.len().is_multiple_of(batch) || steps == 0 || steps > self.max_steps as usize {
            return Err(Error::InvalidArgument(format!(
                "training steps on the GPU: an order of {} indices is not 1 to {} steps of {batch}",
                order.len(),
                self.max_steps
            )));
        }
        if let Some(bad) = order.iter().find(|&&i| i >= self.n_images) {
            return Err(Error::InvalidArgument(format!(
                "training steps on the GPU: image {bad} of the order is past the {} images",
                self.n_images
            )));
        }
        let s = &self.spec;
        let [rule, signal, baseline, constant] = s.rule.codes();
        let base = TrainStepParams {
            key: s.key,
            first_step,
            steps: steps as u32,
            batch: s.batch,
            samples: s.samples,
            d: self.d,
            k: self.k,
            rule,
            signal,
            baseline,
            constant,
            optimizer: match s.optimizer {
                OptimizerKind::Sgd => 0,
                OptimizerKind::Adam => 1,
                OptimizerKind::RmsProp => 2,
            },
            record: u32::from(self.record),
            order_offset: self.n_images,
            state_stride: self.state_stride,
            scratch_stride: s.batch * MAX_K as u32,
            out_stride: self.out_stride,
            inv_tau: (1.0 / s.tau) as f32,
            inv_batch: (1.0 / f64::from(s.batch)) as f32,
            out_step: 0,
            out_steps: self.max_steps,
            alpha: s.loss.alpha as f32,
            beta_off: s.loss.beta_off as f32,
            beta_hit: s.loss.beta_hit as f32,
            gamma: s.loss.gamma as f32,
        };
        // One parameter slot per dispatch of at most `per_dispatch` steps.
        let steps = steps as u32;
        let dispatches = steps.div_ceil(self.per_dispatch);
        let mut slots = vec![0u8; (self.slot * u64::from(dispatches)) as usize];
        for i in 0..dispatches {
            let first = i * self.per_dispatch;
            let p = TrainStepParams {
                first_step: first_step + first,
                steps: self.per_dispatch.min(steps - first),
                order_offset: self.n_images + first * s.batch,
                out_step: first,
                ..base
            };
            let at = (self.slot * u64::from(i)) as usize;
            slots[at..at + std::mem::size_of::<TrainStepParams>()]
                .copy_from_slice(bytemuck::bytes_of(&p));
        }
        ctx.queue.write_buffer(&self.params, 0, &slots);
        ctx.queue.write_buffer(
            &self.index,
            u64::from(self.n_images) * 4,
            bytemuck::cast_slice(order),
        );
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("train steps"),
            });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("train steps"),
                timestamp_writes: None,
            });
            pass.set_pipeline(&kernel.pipeline);
            for i in 0..dispatches {
                pass.set_bind_group(0, &self.bind_group, &[(self.slot * u64::from(i)) as u32]);
                pass.dispatch_workgroups(self.runs, 1, 1);
            }
        }
        let steps = steps as usize;
        // The staging layout: per run the baseline's 4 floats, then per run its output, then
        // (read_w) per run W.
        let runs = self.runs as u64;
        let dk = u64::from(self.d * self.k);
        let stride = u64::from(self.state_stride);
        let out_words = runs * u64::from(self.out_stride);
        for r in 0..runs {
            encoder.copy_buffer_to_buffer(
                &self.state,
                (r * stride + 3 * dk) * 4,
                &self.staging,
                r * 16,
                16,
            );
        }
        encoder.copy_buffer_to_buffer(&self.out, 0, &self.staging, runs * 16, out_words * 4);
        if read_w {
            for r in 0..runs {
                encoder.copy_buffer_to_buffer(
                    &self.state,
                    r * stride * 4,
                    &self.staging,
                    (runs * 4 + out_words + r * dk) * 4,
                    dk * 4,
                );
            }
        }
        ctx.queue.submit([encoder.finish()]);
        let len = runs * 4 + out_words + if read_w { runs * dk } else { 0 };
        let words: Vec<u32> =
            ctx.read(&self.staging, len as usize, "running the training steps")?;
        let f = |w: &u32| f32::from_bits(*w);
        let mut result = ChunkResult::default();
        let out_at = (runs * 4) as usize;
        for r in 0..runs as usize {
            result
                .baseline
                .push((f(&words[r * 4 + 1]), f(&words[r * 4 + 2])));
            let o = &words[out_at + r * self.out_stride as usize..][..self.out_stride as usize];
            result.objectives.push(o[..steps].iter().map(f).collect());
            if self.record {
                let rec_row = if s.rule.relaxed() {
                    s.samples
                } else {
                    MAX_K as u32
                } as usize;
                let start = self.max_steps as usize;
                result
                    .record
                    .push(o[start..start + steps * batch * rec_row].to_vec());
            }
            if read_w {
                let at = out_at + out_words as usize + r * dk as usize;
                result
                    .w
                    .push(words[at..at + dk as usize].iter().map(f).collect());
            }
        }
        Ok(result)
    }

    /// Training runs of this session.
    pub fn runs(&self) -> u32 {
        self.runs
    }
}

/// One input's draws as the CPU twin reads them.
#[derive(Clone, Copy, Debug)]
pub enum RowDraws<'a> {
    /// None (`exact`).
    None,
    /// The category counts of the S draws.
    Counts(&'a [u32]),
    /// The S relaxed draws: `y` (S x K, draw-major) and their argmax classes `z`.
    Relaxed {
        /// `y = softmax((a + G) / tau)` of every draw.
        y: &'a [f64],
        /// `z = argmax(a + G)` of every draw.
        z: &'a [u32],
    },
}

/// The CPU twin of the kernel's per-input estimate (`row_estimate` in
/// shaders/train_step.wgsl), in f64: the logit gradient of an input with logits `a` and label
/// `label` from its draws into `g` (K numbers), with the moving-average `baseline`. Returns
/// the exact objective `sum_c p_c f_c` and the input's moving-average signal (0 where the
/// rule keeps none).
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
pub fn row_estimate_cpu(
    rule: StepRule,
    loss: LossForm,
    a: &[f64],
    label: usize,
    draws: RowDraws<'_>,
    baseline: f64,
    tau: f64,
    samples: u32,
    g: &mut [f64],
) -> (f64, f64) {
    let k = a.len();
    let p = crate::problem::softmax(a);
    let f: Vec<f64> = (0..k)
        .map(|c| loss.alpha + loss.beta(c, label) + loss.gamma)
        .collect();
    let fbar: f64 = (0..k).map(|c| p[c] * f[c]).sum();
    let inv_s = 1.0 / f64::from(samples);
    let mut signal_out = 0.0;
    g.iter_mut().for_each(|v| *v = 0.0);
    match (rule, draws) {
        (StepRule::Score { signal: None, .. }, _) => {
            for j in 0..k {
                g[j] = p[j] * (f[j] - fbar);
            }
        }
        (
            StepRule::Score {
                signal: Some(signal),
                baseline: kind,
                constant,
            },
            RowDraws::Counts(n),
        ) => {
            let (mut sig, mut cst) = (f.clone(), vec![0.0; k]);
            if signal == Signal::MupropResidual {
                let gradf: Vec<f64> = (0..k)
                    .map(|c| 2.0 * loss.alpha * p[c] + loss.beta(c, label))
                    .collect();
                let fp = loss.gamma
                    + (0..k)
                        .map(|c| (loss.alpha * p[c] + loss.beta(c, label)) * p[c])
                        .sum::<f64>();
                let gp: f64 = (0..k).map(|c| gradf[c] * p[c]).sum();
                for c in 0..k {
                    sig[c] = f[c] - fp - (gradf[c] - gp);
                    cst[c] = p[c] * (gradf[c] - gp);
                }
            }
            let sum_signal: f64 = (0..k).map(|c| f64::from(n[c]) * sig[c]).sum();
            let (mut bl, mut scale) = (0.0, inv_s);
            match kind {
                Baseline::MovingAverage => {
                    bl = baseline;
                    signal_out = sum_signal * inv_s;
                }
                Baseline::LeaveOneOut => {
                    bl = sum_signal * inv_s;
                    scale = 1.0 / (f64::from(samples) - 1.0);
                }
                Baseline::None => {}
            }
            let mut wsum = 0.0;
            for c in 0..k {
                g[c] = f64::from(n[c]) * (sig[c] - bl);
                wsum += g[c];
            }
            let use_c = constant == Constant::MeanField;
            for j in 0..k {
                g[j] = (g[j] - p[j] * wsum) * scale + if use_c { cst[j] } else { 0.0 };
            }
        }
        (StepRule::StraightThrough | StepRule::ReinMax, RowDraws::Counts(n)) => {
            let sigma = if rule == StepRule::ReinMax {
                crate::problem::softmax(&a.iter().map(|v| v / tau).collect::<Vec<_>>())
            } else {
                vec![0.0; k]
            };
            for c in 0..k {
                if n[c] == 0 {
                    continue;
                }
                let wgt = f64::from(n[c]) * inv_s;
                let v: Vec<f64> = (0..k)
                    .map(|j| (if j == c { 2.0 * loss.alpha } else { 0.0 }) + loss.beta(j, label))
                    .collect();
                let pv: f64 = (0..k).map(|j| p[j] * v[j]).sum();
                let sv: f64 = (0..k).map(|j| sigma[j] * v[j]).sum();
                for j in 0..k {
                    g[j] += wgt
                        * if rule == StepRule::StraightThrough {
                            p[j] * (v[j] - pv)
                        } else {
                            let pi_v = 0.5 * (sv + v[c]);
                            let pi1 = 0.5 * (sigma[j] + if j == c { 1.0 } else { 0.0 });
                            2.0 * pi1 * (v[j] - pi_v) - 0.5 * p[j] * (v[j] - pv)
                        };
                }
            }
        }
        (StepRule::Relaxed { straight_through }, RowDraws::Relaxed { y, z }) => {
            for (yd, &zd) in y.chunks_exact(k).zip(z) {
                let v: Vec<f64> = (0..k)
                    .map(|c| {
                        if straight_through {
                            (if c == zd as usize {
                                2.0 * loss.alpha
                            } else {
                                0.0
                            }) + loss.beta(c, label)
                        } else {
                            2.0 * loss.alpha * yd[c] + loss.beta(c, label)
                        }
                    })
                    .collect();
                let yv: f64 = (0..k).map(|c| yd[c] * v[c]).sum();
                for j in 0..k {
                    g[j] += yd[j] * (v[j] - yv) / tau;
                }
            }
            g.iter_mut().for_each(|v| *v *= inv_s);
        }
        (rule, _) => panic!("row_estimate_cpu: {rule:?} needs its own form of draws"),
    }
    (fbar, signal_out)
}

/// One run of the CPU twin: W, the optimiser and the moving average, in f64.
#[derive(Clone, Debug)]
pub struct TwinRun {
    /// W, D x K.
    pub w: Vec<f64>,
    /// The optimiser (the CPU training's own).
    pub optimizer: Optimizer,
    /// The moving-average baseline.
    pub baseline: MovingAverage,
}

impl TwinRun {
    /// A run from W = 0 at learning rate `lr`.
    pub fn new(kind: OptimizerKind, lr: f64, d: usize, k: usize) -> Self {
        Self {
            w: vec![0.0; d * k],
            optimizer: Optimizer::new(kind, lr, d * k),
            baseline: MovingAverage::default(),
        }
    }
}

/// What the twin's chunk saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TwinChunk {
    /// The exact minibatch objective of every step.
    pub objectives: Vec<f64>,
    /// Hard draws where the recorded (GPU) draws differed from the twin's own and were used
    /// instead: categorical draws moved, or relaxed argmax classes.
    pub replaced_draws: u64,
}

/// The CPU twin of a chunk of the kernel for one run: steps `first_step ..` on the minibatches
/// of `order` (B indices per step) from `images` (N x D) and `labels`, in f64. The draws are
/// the CPU training's own (the same Philox counters: [`count_categories`] from f64
/// probabilities, [`RelaxedTable`] from f64 logits); where `recorded` holds the kernel's
/// ([`ChunkResult::record`]) the twin takes the kernel's hard draws (category counts, argmax
/// classes) instead, so that a category that flipped at an f32 boundary does not send the two
/// on different paths, and counts them. `on_gradient` sees every step's W gradient `G` and
/// the scale of its rounding errors, `(1/B) sum_b |x_b|^T (|g_b| + c_b)` with `c_b` the
/// largest quantity input b's estimate combines (`max |f|`, the baseline, `2 |alpha|`,
/// `max |beta|`: a cancellation inside `g_b` leaves an error of that size), before the
/// optimiser applies it.
///
/// # Panics
/// If the shapes disagree.
#[allow(clippy::too_many_arguments)]
pub fn steps_cpu(
    spec: &StepSpec,
    images: &[f32],
    labels: &[u8],
    d: usize,
    k: usize,
    first_step: u32,
    order: &[u32],
    run: &mut TwinRun,
    recorded: Option<&[u32]>,
    on_gradient: &mut dyn FnMut(&[f64], &[f64]),
) -> TwinChunk {
    let batch = spec.batch as usize;
    let s = spec.samples as usize;
    let mut chunk = TwinChunk::default();
    let (mut x, mut logits, mut grad) = (
        vec![0f32; batch * d],
        vec![0f64; batch * k],
        vec![0f64; d * k],
    );
    let (mut abs_grad, mut abs_x, mut abs_g) = (vec![0f64; d * k], vec![0f32; d], vec![0f64; k]);
    let mut g = vec![0f64; k];
    let mut counts = vec![0u32; k];
    let (mut y, mut z, mut h, mut y1) = (
        vec![0f64; s * k],
        vec![0u32; s],
        vec![0f32; k],
        vec![0f64; k],
    );
    let rec_row = if spec.rule.relaxed() { s } else { MAX_K };
    for (t, rows) in order.chunks_exact(batch).enumerate() {
        let step = first_step + t as u32;
        for (b, &i) in rows.iter().enumerate() {
            x[b * d..(b + 1) * d].copy_from_slice(&images[i as usize * d..(i as usize + 1) * d]);
        }
        crate::train::model::forward_batch(&x, &run.w, &mut logits);
        grad.iter_mut().for_each(|v| *v = 0.0);
        abs_grad.iter_mut().for_each(|v| *v = 0.0);
        let (mut objective, mut signal) = (0.0, 0.0);
        let value = run.baseline.value();
        for (b, &i) in rows.iter().enumerate() {
            let a = &logits[b * k..(b + 1) * k];
            let label = usize::from(labels[i as usize]);
            let rec = recorded.map(|r| &r[(t * batch + b) * rec_row..][..rec_row]);
            let draws = if !spec.rule.reads_draws() {
                RowDraws::None
            } else if spec.rule.relaxed() {
                let table = RelaxedTable::new(a, spec.tau);
                for dd in 0..s {
                    z[dd] = table.draw(spec.key, b as u32, step, dd as u32, &mut h, &mut y1) as u32;
                    y[dd * k..(dd + 1) * k].copy_from_slice(&y1);
                }
                if let Some(r) = rec {
                    for (zd, &rz) in z.iter_mut().zip(r) {
                        if *zd != rz {
                            chunk.replaced_draws += 1;
                            *zd = rz;
                        }
                    }
                }
                RowDraws::Relaxed { y: &y, z: &z }
            } else {
                let p = crate::problem::softmax(a);
                count_categories(
                    &CategoricalTable::new(&p),
                    spec.key,
                    b as u32,
                    step,
                    spec.samples,
                    &mut counts,
                );
                if let Some(r) = rec {
                    let moved: u32 = counts.iter().zip(r).map(|(c, r)| c.abs_diff(*r)).sum();
                    chunk.replaced_draws += u64::from(moved / 2);
                    counts.copy_from_slice(&r[..k]);
                }
                RowDraws::Counts(&counts)
            };
            let (fbar, sig) = row_estimate_cpu(
                spec.rule,
                spec.loss,
                a,
                label,
                draws,
                value,
                spec.tau,
                spec.samples,
                &mut g,
            );
            objective += fbar;
            signal += sig;
            let xb = &x[b * d..(b + 1) * d];
            crate::train::model::add_outer(xb, &g, 1.0 / batch as f64, &mut grad);
            abs_x.iter_mut().zip(xb).for_each(|(a, v)| *a = v.abs());
            let c_b = spec.loss.alpha.abs()
                + spec.loss.beta_off.abs().max(spec.loss.beta_hit.abs())
                + spec.loss.gamma.abs()
                + value.abs()
                + 2.0 * spec.loss.alpha.abs()
                + spec.loss.beta_off.abs().max(spec.loss.beta_hit.abs());
            abs_g
                .iter_mut()
                .zip(&g)
                .for_each(|(a, v)| *a = v.abs() + c_b);
            crate::train::model::add_outer(&abs_x, &abs_g, 1.0 / batch as f64, &mut abs_grad);
        }
        on_gradient(&grad, &abs_grad);
        chunk.objectives.push(objective / batch as f64);
        if spec.rule.moving_average() {
            run.baseline.push(signal / batch as f64);
        }
        run.optimizer.step(&mut run.w, &grad);
    }
    chunk
}
