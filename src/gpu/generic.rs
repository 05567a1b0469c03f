//! The generic score-function path on the GPU: joint draws of L variables, the loss of every
//! draw under every generic loss, and every score-function cell's per-repetition estimate,
//! planned from the estimators' [`Lowering`] data (never from ids).
//!
//! Three kernels per chunk of repetitions, one WGSL file each, and two more where a cell has
//! a [`Conditional`] form:
//! - `shaders/joint_draws.wgsl`: the categories of every draw and variable; CPU twin
//!   [`crate::draws::draw_joint_categories`] (bit-identical categories);
//! - `shaders/generic_signals.wgsl`: per (loss, learning signal) *signal group*, the centred
//!   signal `D_i = A_i - m` of every draw (`A_i = f(z_i)` or MuProp's residual); CPU twins
//!   [`crate::objective::Objective::at_vertex`] and [`Context::muprop_residual`];
//! - `shaders/generic_scores.wgsl`: per repetition, group and variable, the sums of `D` by
//!   category, their total, and the category counts; CPU twin
//!   [`crate::estimators::weighted_scores`];
//! - `shaders/indecater.wgsl` and `shaders/conditional_sums.wgsl`: per repetition,
//!   conditional group (a loss), draw i, variable l and category j the centred loss
//!   `f(z_{i,-l}, j) - m`, then its sum over the draws `F_lj`, which IndeCateR's estimate
//!   `p_lj (F_lj - sum_c p_lc F_lc) / S` reads; CPU twin [`crate::estimators::Indecater`]'s
//!   `estimate`. The losses of the loss kernels are `shaders/generic_loss.wgsl`'s.
//! - `shaders/unordered_set.wgsl` and `shaders/unordered_set_terms.wgsl`: per repetition and
//!   variable, `unordered-set`'s Gumbel-top-k set and its members' centred losses, then per
//!   set group (a loss) each member's term, which the host finishes in f64; design, f32
//!   accuracy and CPU twin in [`super::unordered_set`].
//!
//! Every score-function lowering is `scale sum_i (A_i - b_i) (e_{z_il} - p_l) + c`. Writing
//! `A_i = D_i + m`, `W(D)_lj = sum_{i: z_il = j} D_i - p_lj sum_i D_i` and
//! `dev_lj = n_lj - S p_lj`, the estimate is `scale (W(D) + k_b dev) + c` with
//! `k_b = m` (no baseline), `m - b` (moving average `b`) or `-mean D` (leave-one-out: then
//! `b_i` is the mean signal and `scale = 1/(S-1)`, as the CPU's RLOO). The kernels do the
//! O(S L) work per repetition; the host finishes these O(L K) numbers in f64 in repetition
//! order, which is also where the moving averages of `reinforce-ema` and `muprop-c` advance:
//! so every score-function estimator with a lowering runs here, moving averages included.
//! `m` is chosen near `E A`, so `D` is small and f32 keeps its digits: the estimates agree
//! with the CPU's f64 to about 1e-6 of their scale.
//!
//! Memory is bounded: a chunk of repetitions holds at most [`MAX_BUFFER_BYTES`] in any one
//! buffer (and the readback of a chunk as much), whatever S, L and R are.

use bytemuck::{Pod, Zeroable};

use crate::draws::CategoricalTable;
use crate::error::{Error, Result};
use crate::estimators::{
    Baseline, Conditional, Constant, Context, Estimator, Lowering, MovingAverage, Signal,
};
use crate::gpu::context::{GpuContext, READ, READ_WRITE, UNIFORM};
use crate::gpu::shaders;
use crate::gpu::unordered_set;
use crate::loss::Loss;
use crate::problem::Problem;

/// Quadratic losses (keep in sync with `LOSS_QUADRATIC` in shaders/generic_common.wgsl).
pub const LOSS_QUADRATIC: u32 = 0;
/// The `pnorm` loss.
pub const LOSS_PNORM: u32 = 1;
/// The `decoder` loss.
pub const LOSS_DECODER: u32 = 2;
/// The `table` loss.
pub const LOSS_TABLE: u32 = 3;

/// Threads per workgroup of the three generic kernels.
pub const GENERIC_WG: u32 = 64;
/// Most bytes of any one buffer of a chunk (and of a chunk's readback): 64 MiB.
pub const MAX_BUFFER_BYTES: u64 = 64 << 20;
/// Most signal groups a pass can hold: every loss with both signals.
pub const MAX_GROUPS: usize = 2 * Loss::ALL.len();

/// The parameters of one chunk. Keep in sync with `GenericParams` in
/// shaders/generic_common.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct GenericParams {
    /// The Philox key.
    pub key: [u32; 2],
    /// Sweep point index.
    pub point: u32,
    /// Draws per repetition S.
    pub samples: u32,
    /// Index within the point of the chunk's first repetition.
    pub rep_begin: u32,
    /// Repetitions in the chunk.
    pub chunk_reps: u32,
    /// Variables L.
    pub l: u32,
    /// Categories K.
    pub k: u32,
    /// Signal groups G.
    pub n_groups: u32,
    /// `ceil(S / 4)`.
    pub blocks: u32,
    /// Threads per row of the two-dimensional dispatch.
    pub row: u32,
    /// Conditional groups C (`shaders/indecater.wgsl`).
    pub n_conditional: u32,
    /// Set groups (`shaders/unordered_set.wgsl`).
    pub n_sets: u32,
    /// The set size `min(S, K)`.
    pub set_size: u32,
    /// The index of the first quadrature node on the grid `y = n h`.
    pub nodes_first: i32,
    /// Quadrature nodes.
    pub n_nodes: u32,
}

/// One (loss, learning signal). Keep in sync with `SignalGroup` in
/// shaders/generic_common.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct SignalGroup {
    /// `LOSS_*`.
    pub loss: u32,
    /// 1 for MuProp's residual.
    pub residual: u32,
    /// Offset of the loss's numbers in the data buffer.
    pub data: u32,
    /// Offset of `G'[l, j] = grad f(p)[l, j] - grad_l f(p) . p_l` (residual only; L*K high
    /// f32 parts, then L*K low parts).
    pub grad: u32,
    /// Subtracted from the loss's sum on the GPU.
    pub shift: f32,
    /// The pnorm exponent.
    pub exponent: f32,
    /// The decoder's output units H.
    pub hidden: u32,
    /// `PAIR_*`.
    pub pair: u32,
}

/// A signal group alone (keep in sync with `PAIR_*` in shaders/generic_common.wgsl).
pub const PAIR_NONE: u32 = 0;
/// The loss signal of a loss whose residual group follows: its thread writes both rows.
pub const PAIR_FIRST: u32 = 1;
/// The residual group after its loss's [`PAIR_FIRST`] group.
pub const PAIR_SECOND: u32 = 2;

/// The generic kernels.
pub struct GenericKernels {
    unordered_set_layout: wgpu::BindGroupLayout,
    unordered_set: wgpu::ComputePipeline,
    unordered_set_terms_layout: wgpu::BindGroupLayout,
    unordered_set_terms: wgpu::ComputePipeline,
    indecater_layout: wgpu::BindGroupLayout,
    indecater: wgpu::ComputePipeline,
    conditional_sums_layout: wgpu::BindGroupLayout,
    conditional_sums: wgpu::ComputePipeline,
    draws_layout: wgpu::BindGroupLayout,
    draws: wgpu::ComputePipeline,
    signals_layout: wgpu::BindGroupLayout,
    signals: wgpu::ComputePipeline,
    scores_layout: wgpu::BindGroupLayout,
    scores: wgpu::ComputePipeline,
}

impl GenericKernels {
    /// Builds the pipelines.
    ///
    /// # Errors
    /// [`Error::Gpu`] if a kernel does not build on this adapter.
    pub fn new(ctx: &GpuContext) -> Result<Self> {
        let params = std::mem::size_of::<GenericParams>() as u64;
        let group = std::mem::size_of::<SignalGroup>() as u64;
        let draws_layout = ctx.layout(
            "joint draws",
            &[(UNIFORM, params), (READ, 4), (READ_WRITE, 4)],
        );
        let signals_layout = ctx.layout(
            "generic signals",
            &[
                (UNIFORM, params),
                (READ, group),
                (READ, 4),
                (READ, 4),
                (READ_WRITE, 4),
            ],
        );
        let scores_layout = ctx.layout(
            "generic scores",
            &[
                (UNIFORM, params),
                (READ, 4),
                (READ, 4),
                (READ_WRITE, 4),
                (READ_WRITE, 4),
            ],
        );
        let indecater_layout = ctx.layout(
            "indecater",
            &[
                (UNIFORM, params),
                (READ, group),
                (READ, 4),
                (READ, 4),
                (READ, 4),
                (READ_WRITE, 4),
            ],
        );
        let conditional_sums_layout = ctx.layout(
            "conditional sums",
            &[(UNIFORM, params), (READ, 4), (READ_WRITE, 4)],
        );
        let unordered_set_layout = ctx.layout(
            "unordered set",
            &[
                (UNIFORM, params),
                (READ, group),
                (READ, 4),
                (READ, 4),
                (READ, 4),
                (READ, 4),
                (READ_WRITE, 4),
                (READ_WRITE, 4),
            ],
        );
        let unordered_set_terms_layout = ctx.layout(
            "unordered set terms",
            &[
                (UNIFORM, params),
                (READ, 4),
                (READ, 4),
                (READ, 4),
                (READ_WRITE, 4),
            ],
        );
        Ok(Self {
            unordered_set: ctx.compute_pipeline(
                "unordered_set",
                shaders::UNORDERED_SET,
                &unordered_set_layout,
            )?,
            unordered_set_layout,
            unordered_set_terms: ctx.compute_pipeline(
                "unordered_set_terms",
                shaders::UNORDERED_SET_TERMS,
                &unordered_set_terms_layout,
            )?,
            unordered_set_terms_layout,
            indecater: ctx.compute_pipeline("indecater", shaders::INDECATER, &indecater_layout)?,
            indecater_layout,
            conditional_sums: ctx.compute_pipeline(
                "conditional_sums",
                shaders::CONDITIONAL_SUMS,
                &conditional_sums_layout,
            )?,
            conditional_sums_layout,
            draws: ctx.compute_pipeline("joint_draws", shaders::JOINT_DRAWS, &draws_layout)?,
            draws_layout,
            signals: ctx.compute_pipeline(
                "generic_signals",
                shaders::GENERIC_SIGNALS,
                &signals_layout,
            )?,
            signals_layout,
            scores: ctx.compute_pipeline(
                "generic_scores",
                shaders::GENERIC_SCORES,
                &scores_layout,
            )?,
            scores_layout,
        })
    }
}

/// The byte budget of one buffer on this device.
fn buffer_budget(limits: &wgpu::Limits) -> u64 {
    MAX_BUFFER_BYTES
        .min(limits.max_storage_buffer_binding_size)
        .min(limits.max_buffer_size)
}

/// Why a score-function cell on the generic path cannot run on the GPU, or `None` if it
/// can: an estimator with neither a score-function lowering nor a [`Conditional`] form, or
/// a repetition (S draws of L variables) or a table too large for one buffer.
pub fn unsupported(
    estimator: &dyn Estimator,
    ctx: &Context,
    samples: u32,
    limits: &wgpu::Limits,
) -> Option<String> {
    match estimator.lowering() {
        Some(Lowering::ScoreFunction { .. }) => {}
        _ if estimator.conditional().is_some() => {}
        Some(Lowering::Relaxed { .. }) => {
            return Some("no GPU kernel for the relaxed family on the generic path".into())
        }
        Some(Lowering::HardDraw) => return Some("the hard-draw lowering has no GPU kernel".into()),
        None => return Some("no GPU lowering".into()),
    }
    if let Some(why) = estimator
        .conditional()
        .and_then(|c| unordered_set::unsupported(c, &ctx.p, ctx.k, samples))
    {
        return Some(why);
    }
    let budget = buffer_budget(limits);
    // The largest buffer of one repetition, with every group a sweep can hold.
    let dim = ctx.dim() as u64;
    let per_rep = (u64::from(samples) * ctx.l.max(MAX_GROUPS) as u64)
        .max(MAX_GROUPS as u64 * (dim + 1) + dim)
        .max(Loss::ALL.len() as u64 * u64::from(samples) * dim)
        * 4;
    if per_rep > budget {
        return Some(format!(
            "S = {samples} draws of {} variables do not fit one GPU buffer",
            ctx.l
        ));
    }
    if ctx.loss == Loss::Table
        && (ctx.k as u64)
            .checked_pow(ctx.l as u32)
            .is_none_or(|n| n * 4 > budget)
    {
        return Some("the table does not fit one GPU buffer".into());
    }
    None
}

/// How the host finishes one cell's estimate from its group's sums.
#[derive(Clone, Debug)]
pub struct CellPlan {
    /// The loss's index in the spec.
    pub loss_index: usize,
    /// Its signal group (`None`: no draws read, the estimate is the constant).
    pub group: Option<usize>,
    /// Its conditional group ([`Conditional::EveryCategory`], whose sums it reads instead).
    pub conditional: Option<usize>,
    /// Its set group ([`Conditional::UnorderedSet`], whose members' terms it reads instead).
    pub set: Option<usize>,
    /// `1/S`, or `1/(S-1)` for leave-one-out.
    pub scale: f64,
    /// The baseline.
    pub baseline: Baseline,
    /// The constant `c` (L*K numbers).
    pub constant: Vec<f64>,
}

/// Everything one sweep point's generic pass uploads, and how the host finishes it.
#[derive(Clone, Debug)]
pub struct GenericPlan {
    /// Variables L.
    pub l: usize,
    /// Categories K.
    pub k: usize,
    /// Probabilities `p` (L*K numbers, f64).
    pub p: Vec<f64>,
    /// Per variable: the K - 1 inverse-CDF thresholds, then the first and the last nonzero
    /// category.
    pub thresholds: Vec<u32>,
    /// The signal groups.
    pub groups: Vec<SignalGroup>,
    /// The conditional groups: each one's signal group (its loss and shift).
    pub conditional: Vec<u32>,
    /// The set groups (`unordered-set`): each one's signal group.
    pub sets: Vec<u32>,
    /// The set size `min(S, K)`.
    pub set_size: usize,
    /// What the set kernels read besides the losses: the logits, the probabilities (f32),
    /// then the quadrature nodes ([`unordered_set::Nodes`]: x, mantissas, exponents).
    pub set_data: Vec<f32>,
    /// The first node's index on the grid and the number of nodes.
    pub nodes: (i32, u32),
    /// `m` of every group: `A_i = D_i + m` (f64, exactly what the GPU's f32 constants sum to).
    pub m: Vec<f64>,
    /// The losses' and residuals' numbers.
    pub data: Vec<f32>,
    /// The cells, in the order given.
    pub cells: Vec<CellPlan>,
}

/// Per variable: the K - 1 inverse-CDF thresholds of [`CategoricalTable`], then its first
/// and its last nonzero category (the clamps), as `shaders/joint_draws.wgsl` reads them.
pub fn joint_thresholds(p: &[f64], k: usize) -> Vec<u32> {
    let mut thresholds = Vec::with_capacity(p.len() + p.len() / k);
    for pl in p.chunks(k) {
        let table = CategoricalTable::new(pl);
        thresholds.extend_from_slice(table.thresholds());
        thresholds.push(table.first_nonzero());
        thresholds.push(table.last_nonzero());
    }
    thresholds
}

fn f32s(v: &[f64]) -> impl Iterator<Item = f32> + '_ {
    v.iter().map(|&x| x as f32)
}

fn softplus(h: f64) -> f64 {
    h.max(0.0) + (-h.abs()).exp().ln_1p()
}

impl GenericPlan {
    /// The plan of `cells` (loss index, estimator: each with a score-function lowering or a
    /// [`Conditional`] form) on `problem` under `contexts` (one per loss of the spec) at
    /// S = `samples`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an estimator with neither, a
    /// MuProp residual under a loss with no extension, or more than [`MAX_GROUPS`] groups.
    pub fn new(
        problem: &Problem,
        contexts: &[Context],
        cells: &[(usize, &dyn Estimator)],
        samples: u32,
    ) -> Result<Self> {
        let (l, k) = (problem.l, problem.k);
        let p = contexts[0].p.clone();
        let thresholds = joint_thresholds(&p, k);
        let mut keys: Vec<(usize, Signal)> = Vec::new();
        // The conditional groups, as indices into `keys`.
        let mut conditional_keys: Vec<usize> = Vec::new();
        // The set groups, likewise.
        let mut set_keys: Vec<usize> = Vec::new();
        let mut plans = Vec::new();
        let s = f64::from(samples);
        for &(loss_index, estimator) in cells {
            let (signal, baseline, constant, form) =
                match (estimator.lowering(), estimator.conditional()) {
                    (
                        Some(Lowering::ScoreFunction {
                            signal,
                            baseline,
                            constant,
                        }),
                        _,
                    ) => (signal, baseline, constant, None),
                    (_, Some(form)) => (
                        Some(Signal::Loss),
                        Baseline::None,
                        Constant::None,
                        Some(form),
                    ),
                    _ => {
                        return Err(Error::InvalidArgument(format!(
                            "estimator `{}` has no GPU form on the generic path",
                            estimator.id()
                        )))
                    }
                };
            let ctx = &contexts[loss_index];
            let group = signal.map(|sig| {
                keys.iter()
                    .position(|&key| key == (loss_index, sig))
                    .unwrap_or_else(|| {
                        keys.push((loss_index, sig));
                        keys.len() - 1
                    })
            });
            let constant = match constant {
                Constant::None => vec![0.0; ctx.dim()],
                Constant::MeanField => ctx.muprop_mean_field.clone(),
                Constant::ExactGradient => ctx.grad.clone(),
            };
            let index_in = |keys: &mut Vec<usize>, g: usize| {
                keys.iter().position(|&key| key == g).unwrap_or_else(|| {
                    keys.push(g);
                    keys.len() - 1
                })
            };
            let conditional = group
                .filter(|_| form == Some(Conditional::EveryCategory))
                .map(|g| index_in(&mut conditional_keys, g));
            let set = group
                .filter(|_| form == Some(Conditional::UnorderedSet))
                .map(|g| index_in(&mut set_keys, g));
            plans.push(CellPlan {
                loss_index,
                group,
                conditional,
                set,
                scale: if baseline == Baseline::LeaveOneOut {
                    1.0 / (s - 1.0)
                } else {
                    1.0 / s
                },
                baseline,
                constant,
            });
        }
        // Groups in (loss, signal) order, so a loss's two signals are neighbours and share
        // one loss evaluation per draw.
        let mut sorted = keys.clone();
        sorted.sort_by_key(|&(li, sig)| (li, sig == Signal::MupropResidual));
        for plan in &mut plans {
            if let Some(g) = plan.group {
                plan.group = sorted.iter().position(|&key| key == keys[g]);
            }
        }
        let sorted_index = |keys_of: &[usize]| -> Vec<u32> {
            keys_of
                .iter()
                .map(|&g| {
                    sorted
                        .iter()
                        .position(|&key| key == keys[g])
                        .expect("every key is sorted") as u32
                })
                .collect()
        };
        let conditional = sorted_index(&conditional_keys);
        let sets = sorted_index(&set_keys);
        let set_size = (samples as usize).min(k);
        let (set_data, nodes) = if sets.is_empty() {
            (Vec::new(), (0, 0))
        } else {
            let p_min = p.iter().copied().fold(1.0, f64::min);
            let nodes = unordered_set::nodes(p_min.max(unordered_set::MIN_PROBABILITY), set_size);
            let mut data: Vec<f32> = f32s(&contexts[0].logits).collect();
            data.extend(f32s(&p));
            data.extend_from_slice(&nodes.x);
            data.extend_from_slice(&nodes.mantissa);
            data.extend(nodes.exponent.iter().map(|&e| e as f32));
            (data, (nodes.first, nodes.x.len() as u32))
        };
        let keys = sorted;
        if keys.len() > MAX_GROUPS {
            return Err(Error::InvalidArgument(format!(
                "{} signal groups: the GPU's generic path holds at most {MAX_GROUPS}",
                keys.len()
            )));
        }
        let mut data: Vec<f32> = Vec::new();
        let mut groups = Vec::new();
        let mut m = Vec::new();
        for &(loss_index, signal) in &keys {
            let ctx = &contexts[loss_index];
            let at = data.len() as u32;
            // `omitted`: what the GPU leaves out of f (its own constants, exactly in f64).
            let (loss, omitted, hidden) = match ctx.loss {
                Loss::Seed | Loss::Squared | Loss::Linear => {
                    let q = ctx.quad.as_ref().expect("a quadratic loss has its form");
                    data.extend(f32s(&q.beta));
                    (LOSS_QUADRATIC, q.alpha * l as f64 + q.gamma, 0)
                }
                Loss::Pnorm => {
                    data.extend(f32s(&problem.b));
                    (LOSS_PNORM, 0.0, 0)
                }
                Loss::Decoder => {
                    let dec = problem
                        .decoder
                        .as_ref()
                        .expect("the decoder loss has its decoder");
                    // Per output unit, at the mean-field point h_p = c + V p: c - h_p,
                    // sigmoid(-|h_p|), whether h_p >= 0, and the target; the terms' values at
                    // h_p are what the GPU leaves out (see generic_signals.wgsl).
                    data.extend(f32s(&dec.v));
                    let mut base = Vec::with_capacity(dec.h);
                    let mut sigma = Vec::with_capacity(dec.h);
                    let mut upper = Vec::with_capacity(dec.h);
                    let mut omitted = 0.0;
                    for (row, (&c, &t)) in
                        dec.v.chunks_exact(l * k).zip(dec.c.iter().zip(&dec.target))
                    {
                        let h = c + row.iter().zip(&p).map(|(v, pj)| v * pj).sum::<f64>();
                        omitted += softplus(h) - t * h;
                        base.push((c - h) as f32);
                        sigma.push((1.0 / (1.0 + h.abs().exp())) as f32);
                        upper.push(if h >= 0.0 { 1.0f32 } else { 0.0 });
                    }
                    data.extend(base);
                    data.extend(sigma);
                    data.extend(upper);
                    data.extend(f32s(&dec.target));
                    (LOSS_DECODER, omitted, dec.h as u32)
                }
                Loss::Table => {
                    data.extend(f32s(&problem.table));
                    (LOSS_TABLE, 0.0, 0)
                }
            };
            let (residual, grad_at, f_p) = match signal {
                Signal::Loss => (0, 0, 0.0),
                Signal::MupropResidual => {
                    let mf = ctx.mean_field.as_ref().ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "MuProp's residual needs the {} loss off the vertices",
                            ctx.loss
                        ))
                    })?;
                    // G' in two f32 parts: high, then the low parts L*K further.
                    let grad_at = data.len() as u32;
                    let exact: Vec<f64> = mf
                        .grad
                        .chunks(k)
                        .zip(&mf.grad_dot_p)
                        .flat_map(|(gl, gp)| gl.iter().map(move |g| g - gp))
                        .collect();
                    data.extend(f32s(&exact));
                    data.extend(exact.iter().map(|&g| (g - f64::from(g as f32)) as f32));
                    (1, grad_at, mf.value)
                }
            };
            // D = A + [residual] f(p) - omitted - shift, and A + [residual] f(p) has mean
            // about fbar: so shift = fbar - omitted leaves D near 0.
            let shift = (ctx.fbar - omitted) as f32;
            m.push(omitted + f64::from(shift) - f_p);
            groups.push(SignalGroup {
                loss,
                residual,
                data: at,
                grad: grad_at,
                shift,
                exponent: problem.exponent as f32,
                hidden,
                pair: PAIR_NONE,
            });
        }
        for g in 1..groups.len() {
            if keys[g - 1].0 == keys[g].0 && groups[g - 1].residual == 0 && groups[g].residual == 1
            {
                groups[g - 1].pair = PAIR_FIRST;
                groups[g].pair = PAIR_SECOND;
            }
        }
        Ok(Self {
            l,
            k,
            p,
            thresholds,
            groups,
            conditional,
            sets,
            set_size,
            set_data,
            nodes,
            m,
            data,
            cells: plans,
        })
    }

    /// A plan with no cells, for the draws alone (`p`: L*K probabilities).
    pub fn draws_only(p: &[f64], k: usize) -> Self {
        Self {
            l: p.len() / k,
            k,
            p: p.to_vec(),
            thresholds: joint_thresholds(p, k),
            groups: Vec::new(),
            conditional: Vec::new(),
            sets: Vec::new(),
            set_size: 0,
            set_data: Vec::new(),
            nodes: (0, 0),
            m: Vec::new(),
            data: Vec::new(),
            cells: Vec::new(),
        }
    }

    /// L*K.
    pub fn dim(&self) -> usize {
        self.l * self.k
    }

    /// Cell `cell`'s estimate of repetition `r` of `chunk` into `out` (L*K numbers), with
    /// the moving average `baseline` (used, then advanced, for a moving-average baseline).
    pub fn finish(
        &self,
        cell: usize,
        chunk: &GenericChunk,
        r: usize,
        samples: u32,
        baseline: &mut MovingAverage,
        out: &mut [f64],
    ) {
        let plan = &self.cells[cell];
        let dim = self.dim();
        if let Some(set) = plan.set {
            // unordered-set: sum_s g_s (e_s - p_l) per variable, in f64.
            let (k, size) = (self.k, self.set_size);
            let m = self.m[self.sets[set] as usize];
            for (v, o) in out.chunks_exact_mut(k).enumerate() {
                let members = &chunk.members[(r * self.l + v) * size..][..size];
                let at = ((r * self.sets.len() + set) * self.l + v) * size;
                let terms = &chunk.set_terms[at..at + size];
                unordered_set::finish_variable(&self.p[v * k..(v + 1) * k], members, terms, m, o);
            }
            return;
        }
        if let Some(c) = plan.conditional {
            // IndeCateR: p_lj (F_lj - sum_c p_lc F_lc) / S per variable.
            let at = (r * self.conditional.len() + c) * dim;
            let sums = &chunk.conditional[at..at + dim];
            let inv = 1.0 / f64::from(samples);
            for ((o, pl), fl) in out
                .chunks_exact_mut(self.k)
                .zip(self.p.chunks_exact(self.k))
                .zip(sums.chunks_exact(self.k))
            {
                let mean: f64 = pl.iter().zip(fl).map(|(p, f)| p * f64::from(*f)).sum();
                for ((o, p), f) in o.iter_mut().zip(pl).zip(fl) {
                    *o = p * (f64::from(*f) - mean) * inv;
                }
            }
            return;
        }
        let Some(g) = plan.group else {
            out.copy_from_slice(&plan.constant);
            return;
        };
        let width = dim + 1;
        let at = (r * self.groups.len() + g) * width;
        let sums = &chunk.sums[at..at + width];
        let counts = &chunk.counts[r * dim..(r + 1) * dim];
        let s = f64::from(samples);
        let total = f64::from(sums[dim]);
        let m = self.m[g];
        let coef = match plan.baseline {
            Baseline::None => m,
            Baseline::MovingAverage => m - baseline.value(),
            Baseline::LeaveOneOut => -total / s,
        };
        for (j, o) in out.iter_mut().enumerate() {
            let pj = self.p[j];
            let w = f64::from(sums[j]) - pj * total;
            let dev = f64::from(counts[j]) - s * pj;
            *o = plan.scale * (w + coef * dev) + plan.constant[j];
        }
        if plan.baseline == Baseline::MovingAverage {
            baseline.push(m + total / s);
        }
    }
}

/// What one chunk of the generic pass reads back.
#[derive(Clone, Debug, Default)]
pub struct GenericChunk {
    /// Index of the chunk's first repetition.
    pub rep_begin: u32,
    /// Repetitions in the chunk.
    pub reps: u32,
    /// Per repetition and group: `L*K` sums of `D` by category, then the total.
    pub sums: Vec<f32>,
    /// Per repetition: the `L*K` category counts.
    pub counts: Vec<u32>,
    /// Per repetition and conditional group: the `L*K` conditional sums `F_lj`.
    pub conditional: Vec<f32>,
    /// Per repetition and variable: the set's `min(S, K)` members, in rank order.
    pub members: Vec<u32>,
    /// Per repetition, set group and variable: the members' terms.
    pub set_terms: Vec<f32>,
    /// Per repetition, set group and variable: the members' centred losses, where asked for.
    pub set_losses: Vec<f32>,
    /// The categories (`reps * S * L`, draw-major), where asked for.
    pub z: Vec<u32>,
    /// The centred signals (`reps * G * S`), where asked for.
    pub signals: Vec<f32>,
}

/// What the host wants back besides the sums.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readback {
    /// The categories.
    pub z: bool,
    /// The centred signals.
    pub signals: bool,
    /// The unordered-set members' centred losses.
    pub set_losses: bool,
}

/// Repetitions per chunk at S draws: every buffer within its budget.
pub fn chunk_reps(plan: &GenericPlan, samples: u32, limits: &wgpu::Limits) -> u32 {
    let budget = buffer_budget(limits);
    let s = u64::from(samples);
    let g = plan.groups.len().max(1) as u64;
    let dim = plan.dim() as u64;
    let c = plan.conditional.len() as u64;
    let sets = plan.sets.len() as u64 * (plan.l * plan.set_size) as u64;
    let per_rep = [
        s * plan.l as u64,
        s * g,
        g * (dim + 1) + dim,
        c * s * dim,
        sets,
    ]
    .into_iter()
    .max()
    .unwrap_or(1)
        * 4;
    (budget / per_rep.max(1)).clamp(1, u64::from(u32::MAX)) as u32
}

struct Buffers {
    params: wgpu::Buffer,
    z: wgpu::Buffer,
    signals: wgpu::Buffer,
    sums: wgpu::Buffer,
    counts: wgpu::Buffer,
    sums_staging: wgpu::Buffer,
    counts_staging: wgpu::Buffer,
    conditional: wgpu::Buffer,
    conditional_staging: wgpu::Buffer,
    conditional_sums_group: wgpu::BindGroup,
    z_staging: Option<wgpu::Buffer>,
    signals_staging: Option<wgpu::Buffer>,
    draws_group: wgpu::BindGroup,
    signals_group: wgpu::BindGroup,
    scores_group: wgpu::BindGroup,
    indecater_group: wgpu::BindGroup,
    members: wgpu::Buffer,
    members_staging: wgpu::Buffer,
    set_losses: wgpu::Buffer,
    set_losses_staging: Option<wgpu::Buffer>,
    set_terms: wgpu::Buffer,
    set_terms_staging: wgpu::Buffer,
    unordered_set_group: wgpu::BindGroup,
    unordered_set_terms_group: wgpu::BindGroup,
}

fn dispatch(pass: &mut wgpu::ComputePass<'_>, threads: u64, max_x: u32) {
    let groups = threads.div_ceil(u64::from(GENERIC_WG)).max(1);
    let x = groups.min(u64::from(max_x)) as u32;
    let y = groups.div_ceil(u64::from(x)) as u32;
    pass.dispatch_workgroups(x, y, 1);
}

/// Runs the generic pass of `plan` over repetitions `rep_begin..rep_begin + reps` at sweep
/// point `point` with S = `samples` draws, in chunks of at most `max_reps` repetitions (and
/// of the buffer budget), calling `on_chunk` with each chunk's readback in repetition order. With no signal group (only constant cells) nothing runs on the GPU and
/// the chunks are empty.
///
/// # Errors
/// [`Error::Gpu`] if the device fails; `on_chunk`'s errors.
#[allow(clippy::too_many_arguments)]
pub fn run(
    ctx: &GpuContext,
    kernels: &GenericKernels,
    plan: &GenericPlan,
    key: [u32; 2],
    point: u32,
    samples: u32,
    rep_begin: u32,
    reps: u32,
    max_reps: u32,
    readback: Readback,
    on_chunk: &mut dyn FnMut(&GenericChunk) -> Result<()>,
) -> Result<()> {
    let n_groups = plan.groups.len();
    // The signals and their sums serve the score-function cells (and a signals readback):
    // a pass of only conditional and set cells skips them.
    let sums = readback.signals
        || plan
            .cells
            .iter()
            .any(|c| c.group.is_some() && c.conditional.is_none() && c.set.is_none());
    let chunk = chunk_reps(plan, samples, &ctx.limits)
        .min(max_reps.max(1))
        .min(reps.max(1));
    if n_groups == 0 && !readback.z {
        let mut done = 0;
        while done < reps {
            let n = chunk.min(reps - done);
            on_chunk(&GenericChunk {
                rep_begin: rep_begin + done,
                reps: n,
                ..Default::default()
            })?;
            done += n;
        }
        return Ok(());
    }
    let b = buffers(ctx, kernels, plan, samples, chunk, readback);
    let max_x = ctx.limits.max_compute_workgroups_per_dimension.min(65_535);
    let (l, dim) = (plan.l as u64, plan.dim() as u64);
    let s = u64::from(samples);
    let g = n_groups as u64;
    let n_conditional = plan.conditional.len() as u64;
    let mut done = 0u32;
    while done < reps {
        let n = chunk.min(reps - done);
        let params = GenericParams {
            key,
            point,
            samples,
            rep_begin: rep_begin + done,
            chunk_reps: n,
            l: plan.l as u32,
            k: plan.k as u32,
            n_groups: n_groups as u32,
            blocks: samples.div_ceil(4),
            row: max_x * GENERIC_WG,
            n_conditional: plan.conditional.len() as u32,
            n_sets: plan.sets.len() as u32,
            set_size: plan.set_size as u32,
            nodes_first: plan.nodes.0,
            n_nodes: plan.nodes.1,
        };
        ctx.queue
            .write_buffer(&b.params, 0, bytemuck::bytes_of(&params));
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("generic chunk"),
            });
        let nu = u64::from(n);
        // One pass per kernel, so that each can be timed (`GpuContext::timestamps`).
        let mut kernel = |label: &'static str,
                          pipeline: &wgpu::ComputePipeline,
                          group: &wgpu::BindGroup,
                          threads: u64| {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(label),
                timestamp_writes: ctx.timestamps(label),
            });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, group, &[]);
            dispatch(&mut pass, threads, max_x);
        };
        let blocks = u64::from(params.blocks);
        kernel(
            "joint draws",
            &kernels.draws,
            &b.draws_group,
            nu * blocks * l,
        );
        if sums && n_groups > 0 {
            kernel(
                "generic signals",
                &kernels.signals,
                &b.signals_group,
                nu * g * s,
            );
            kernel(
                "generic scores",
                &kernels.scores,
                &b.scores_group,
                nu * g * l,
            );
        }
        if n_conditional > 0 {
            kernel(
                "indecater",
                &kernels.indecater,
                &b.indecater_group,
                nu * n_conditional * s * dim,
            );
            kernel(
                "conditional sums",
                &kernels.conditional_sums,
                &b.conditional_sums_group,
                nu * n_conditional * dim,
            );
        }
        let n_sets = plan.sets.len() as u64;
        let set_size = plan.set_size as u64;
        if n_sets > 0 {
            kernel(
                "unordered set",
                &kernels.unordered_set,
                &b.unordered_set_group,
                nu * dim,
            );
            kernel(
                "unordered set terms",
                &kernels.unordered_set_terms,
                &b.unordered_set_terms_group,
                nu * n_sets * l * set_size,
            );
        }
        let members_len = nu * l * set_size;
        let set_terms_len = nu * n_sets * l * set_size;
        if n_sets > 0 {
            encoder.copy_buffer_to_buffer(&b.members, 0, &b.members_staging, 0, members_len * 4);
            encoder.copy_buffer_to_buffer(
                &b.set_terms,
                0,
                &b.set_terms_staging,
                0,
                set_terms_len * 4,
            );
            if let Some(st) = &b.set_losses_staging {
                encoder.copy_buffer_to_buffer(&b.set_losses, 0, st, 0, set_terms_len * 4);
            }
        }
        let sums_len = nu * g * (dim + 1);
        let counts_len = nu * dim;
        let conditional_len = nu * n_conditional * dim;
        if sums && n_groups > 0 {
            encoder.copy_buffer_to_buffer(&b.sums, 0, &b.sums_staging, 0, sums_len * 4);
            encoder.copy_buffer_to_buffer(&b.counts, 0, &b.counts_staging, 0, counts_len * 4);
        }
        if n_conditional > 0 {
            encoder.copy_buffer_to_buffer(
                &b.conditional,
                0,
                &b.conditional_staging,
                0,
                conditional_len * 4,
            );
        }
        if let Some(st) = &b.z_staging {
            encoder.copy_buffer_to_buffer(&b.z, 0, st, 0, nu * s * l * 4);
        }
        if let Some(st) = &b.signals_staging {
            encoder.copy_buffer_to_buffer(&b.signals, 0, st, 0, nu * g * s * 4);
        }
        ctx.resolve_timestamps(&mut encoder);
        ctx.queue.submit([encoder.finish()]);
        let mut out = GenericChunk {
            rep_begin: rep_begin + done,
            reps: n,
            ..Default::default()
        };
        if sums && n_groups > 0 {
            out.sums = ctx.read(&b.sums_staging, sums_len as usize, "reading generic sums")?;
            out.counts = ctx.read(
                &b.counts_staging,
                counts_len as usize,
                "reading generic counts",
            )?;
        }
        if n_conditional > 0 {
            out.conditional = ctx.read(
                &b.conditional_staging,
                conditional_len as usize,
                "reading conditional sums",
            )?;
        }
        if n_sets > 0 {
            out.members = ctx.read(
                &b.members_staging,
                members_len as usize,
                "reading unordered-set members",
            )?;
            out.set_terms = ctx.read(
                &b.set_terms_staging,
                set_terms_len as usize,
                "reading unordered-set terms",
            )?;
            if let Some(st) = &b.set_losses_staging {
                out.set_losses =
                    ctx.read(st, set_terms_len as usize, "reading unordered-set losses")?;
            }
        }
        if let Some(st) = &b.z_staging {
            out.z = ctx.read(st, (nu * s * l) as usize, "reading joint draws")?;
        }
        if let Some(st) = &b.signals_staging {
            out.signals = ctx.read(st, (nu * g * s) as usize, "reading generic signals")?;
        }
        ctx.check("running the generic pass")?;
        ctx.collect_timestamps()?;
        on_chunk(&out)?;
        done += n;
    }
    Ok(())
}

fn buffers(
    ctx: &GpuContext,
    kernels: &GenericKernels,
    plan: &GenericPlan,
    samples: u32,
    chunk: u32,
    readback: Readback,
) -> Buffers {
    use wgpu::util::DeviceExt;
    use wgpu::BufferUsages as U;
    let init = |label, contents: &[u8]| {
        // Storage bindings may not be empty.
        let padded;
        let contents = if contents.len() < 16 {
            padded = [contents, &[0u8; 16][contents.len()..]].concat();
            &padded[..]
        } else {
            contents
        };
        ctx.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: U::STORAGE,
            })
    };
    let (c, s, l) = (u64::from(chunk), u64::from(samples), plan.l as u64);
    let g = plan.groups.len().max(1) as u64;
    let dim = plan.dim() as u64;
    let params = ctx.buffer(
        "generic params",
        std::mem::size_of::<GenericParams>() as u64,
        U::UNIFORM | U::COPY_DST,
    );
    let thresholds = init("joint thresholds", bytemuck::cast_slice(&plan.thresholds));
    let no_group = [SignalGroup::default()];
    let groups_buf = init(
        "signal groups",
        bytemuck::cast_slice(if plan.groups.is_empty() {
            &no_group[..]
        } else {
            &plan.groups
        }),
    );
    let data = init("generic loss data", bytemuck::cast_slice(&plan.data));
    let z = ctx.buffer("joint draws", c * s * l * 4, U::STORAGE | U::COPY_SRC);
    let signals = ctx.buffer("generic signals", c * g * s * 4, U::STORAGE | U::COPY_SRC);
    let sums = ctx.buffer(
        "generic sums",
        c * g * (dim + 1) * 4,
        U::STORAGE | U::COPY_SRC,
    );
    let counts = ctx.buffer("generic counts", c * dim * 4, U::STORAGE | U::COPY_SRC);
    // The buffers of kernels the plan does not run keep their binding's 16 bytes: sized per
    // repetition they would exceed the budget that `chunk_reps` keeps (it counts only the
    // kernels that run).
    let bytes = |len: u64| (len * 4).max(16);
    let n_conditional = plan.conditional.len() as u64;
    let conditional = ctx.buffer(
        "conditional sums",
        bytes(c * n_conditional * dim),
        U::STORAGE | U::COPY_SRC,
    );
    let conditional_losses = ctx.buffer(
        "conditional losses",
        bytes(c * n_conditional * s * dim),
        U::STORAGE,
    );
    let conditional_groups = init(
        "conditional groups",
        bytemuck::cast_slice(&plan.conditional),
    );
    let staging =
        |label, like: &wgpu::Buffer| ctx.buffer(label, like.size(), U::MAP_READ | U::COPY_DST);
    let sums_staging = staging("generic sums readback", &sums);
    let counts_staging = staging("generic counts readback", &counts);
    let conditional_staging = staging("conditional sums readback", &conditional);
    let z_staging = readback.z.then(|| staging("joint draws readback", &z));
    let signals_staging = readback
        .signals
        .then(|| staging("generic signals readback", &signals));
    let draws_group = ctx.bind_group(
        "joint draws",
        &kernels.draws_layout,
        &[&params, &thresholds, &z],
    );
    let signals_group = ctx.bind_group(
        "generic signals",
        &kernels.signals_layout,
        &[&params, &groups_buf, &data, &z, &signals],
    );
    let scores_group = ctx.bind_group(
        "generic scores",
        &kernels.scores_layout,
        &[&params, &signals, &z, &sums, &counts],
    );
    let indecater_group = ctx.bind_group(
        "indecater",
        &kernels.indecater_layout,
        &[
            &params,
            &groups_buf,
            &data,
            &z,
            &conditional_groups,
            &conditional_losses,
        ],
    );
    let n_sets = plan.sets.len() as u64;
    let set_size = if n_sets > 0 { plan.set_size as u64 } else { 0 };
    let set_groups = init("set groups", bytemuck::cast_slice(&plan.sets));
    let set_data = init("unordered-set data", bytemuck::cast_slice(&plan.set_data));
    let members = ctx.buffer(
        "unordered-set members",
        bytes(c * l * set_size),
        U::STORAGE | U::COPY_SRC,
    );
    let set_losses = ctx.buffer(
        "unordered-set losses",
        bytes(c * n_sets * l * set_size),
        U::STORAGE | U::COPY_SRC,
    );
    let set_losses_staging = readback
        .set_losses
        .then(|| staging("unordered-set losses readback", &set_losses));
    let set_terms = ctx.buffer(
        "unordered-set terms",
        bytes(c * n_sets * l * set_size),
        U::STORAGE | U::COPY_SRC,
    );
    let members_staging = staging("unordered-set members readback", &members);
    let set_terms_staging = staging("unordered-set terms readback", &set_terms);
    let unordered_set_group = ctx.bind_group(
        "unordered set",
        &kernels.unordered_set_layout,
        &[
            &params,
            &groups_buf,
            &data,
            &z,
            &set_groups,
            &set_data,
            &members,
            &set_losses,
        ],
    );
    let unordered_set_terms_group = ctx.bind_group(
        "unordered set terms",
        &kernels.unordered_set_terms_layout,
        &[&params, &set_data, &members, &set_losses, &set_terms],
    );
    let conditional_sums_group = ctx.bind_group(
        "conditional sums",
        &kernels.conditional_sums_layout,
        &[&params, &conditional_losses, &conditional],
    );
    Buffers {
        params,
        z,
        signals,
        sums,
        counts,
        sums_staging,
        counts_staging,
        conditional,
        conditional_staging,
        conditional_sums_group,
        indecater_group,
        members,
        members_staging,
        set_losses,
        set_losses_staging,
        set_terms,
        set_terms_staging,
        unordered_set_group,
        unordered_set_terms_group,
        z_staging,
        signals_staging,
        draws_group,
        signals_group,
        scores_group,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::draws::draw_joint_categories;
    use crate::estimators::{JointDraws, Noise, REGISTRY};
    use crate::problem::Decoder;

    fn problem() -> Problem {
        let (l, k) = (3, 4);
        let mut p =
            Problem::free_logits(l, k, (0..l * k).map(|i| (i as f64 * 0.37).sin()).collect());
        p.t = (0..l * k).map(|i| (i as f64 * 0.71).cos()).collect();
        p.b = vec![0.4, 2.5, 1.0];
        p.exponent = 1.5;
        p.decoder = Some(Decoder {
            h: 5,
            v: (0..5 * l * k).map(|i| (i as f64 * 0.13).sin()).collect(),
            c: vec![0.1, -0.2, 0.3, 0.0, 0.5],
            target: vec![1.0, 0.0, 1.0, 1.0, 0.0],
        });
        p.table = (0..64).map(|i| (f64::from(i) * 0.3).cos() + 3.0).collect();
        p
    }

    /// The host's finishing arithmetic, fed the kernels' sums computed here in f64 from the
    /// CPU's draws, gives every score-function estimator's generic estimate (moving averages
    /// included): the algebra of the module doc, checked without a GPU.
    #[test]
    fn finishing_the_sums_gives_the_generic_estimates() {
        let problem = problem();
        let (l, k, s) = (problem.l, problem.k, 7u32);
        let contexts: Vec<Context> = Loss::ALL
            .iter()
            .map(|&loss| Context::new(&problem, loss, 1.0))
            .collect();
        let mut cells: Vec<(usize, &dyn Estimator)> = Vec::new();
        for (li, ctx) in contexts.iter().enumerate() {
            for &e in REGISTRY {
                if matches!(e.lowering(), Some(Lowering::ScoreFunction { .. }))
                    && e.check(ctx).is_ok()
                {
                    cells.push((li, e));
                }
            }
        }
        let plan = GenericPlan::new(&problem, &contexts, &cells, s).unwrap();
        assert!(plan.groups.len() > 6, "both signals under several losses");
        assert!(plan.groups.iter().any(|g| g.pair == PAIR_FIRST));
        let tables: Vec<CategoricalTable> = plan.p.chunks(k).map(CategoricalTable::new).collect();
        let key = [3, 4];
        let (dim, su) = (l * k, s as usize);
        let mut gpu_baselines = vec![MovingAverage::default(); cells.len()];
        let mut cpu_baselines = vec![MovingAverage::default(); cells.len()];
        for rep in 0..5 {
            let mut z = vec![0u32; su * l];
            draw_joint_categories(&tables, key, rep, 0, s, &mut z);
            // The kernels' output, in f64 then f32 as read back.
            let mut chunk = GenericChunk {
                reps: 1,
                counts: vec![0; dim],
                sums: vec![0.0; plan.groups.len() * (dim + 1)],
                ..Default::default()
            };
            for zi in z.chunks(l) {
                for (v, &c) in zi.iter().enumerate() {
                    chunk.counts[v * k + c as usize] += 1;
                }
            }
            let mut f_of = vec![vec![0.0; su]; contexts.len()];
            for (g, group) in plan.groups.iter().enumerate() {
                let li = cells
                    .iter()
                    .zip(&plan.cells)
                    .find(|(_, c)| c.group == Some(g))
                    .map(|(&(li, _), _)| li)
                    .unwrap();
                let ctx = &contexts[li];
                let mut bins = vec![0.0f64; dim + 1];
                for (i, zi) in z.chunks(l).enumerate() {
                    let f = ctx.objective.at_vertex(zi);
                    f_of[li][i] = f;
                    let a = if group.residual == 1 {
                        ctx.muprop_residual(zi, f)
                    } else {
                        f
                    };
                    let d = a - plan.m[g];
                    for (v, &c) in zi.iter().enumerate() {
                        bins[v * k + c as usize] += d;
                    }
                    bins[dim] += d;
                }
                let at = g * (dim + 1);
                for (o, b) in chunk.sums[at..at + dim + 1].iter_mut().zip(&bins) {
                    *o = *b as f32;
                }
            }
            for (c, &(li, e)) in cells.iter().enumerate() {
                let ctx = &contexts[li];
                let mut got = vec![0.0; dim];
                plan.finish(c, &chunk, 0, s, &mut gpu_baselines[c], &mut got);
                let draws = JointDraws {
                    s: su,
                    z: &z,
                    f: &f_of[li],
                    y: &[],
                    perturbed: &[],
                    noise: Noise { key, rep, point: 0 },
                };
                let mut want = vec![0.0; dim];
                if let Some(signal) = e.estimate(ctx, &draws, cpu_baselines[c].value(), &mut want) {
                    cpu_baselines[c].push(signal);
                }
                let scale = want.iter().fold(1e-3, |m: f64, v| m.max(v.abs()));
                for (g, w) in got.iter().zip(&want) {
                    // The f32 sums of small centred signals: a few 1e-7 of the scale.
                    assert!(
                        (g - w).abs() <= 1e-5 * scale,
                        "{} {} rep {rep}: {got:?} vs {want:?}",
                        ctx.loss,
                        e.id()
                    );
                }
            }
        }
    }

    #[test]
    fn struct_sizes_match_the_wgsl_layouts() {
        assert_eq!(std::mem::size_of::<GenericParams>(), 64);
        assert_eq!(std::mem::size_of::<SignalGroup>(), 32);
    }
}
