// IndeCateR's conditional losses (estimators::Conditional::EveryCategory): for every
// repetition, conditional group c (a loss), draw i, variable l and category j, the centred
// loss with variable l of draw i set to j,
//   E[i, l, j] = f(z_{i,-l}, j) - m,
// m = the group's constant near E f (the shift of its signal group, see generic_signals.wgsl).
// conditional_sums.wgsl sums them over the draws into F_lj = sum_i E[i, l, j]; the host
// finishes the estimate in f64, g_lj = p_lj (F_lj - sum_c p_lc F_lc) / S, where m cancels
// since sum_c p_lc = 1 (src/gpu/generic.rs). CPU twin: `Indecater::estimate`
// (src/estimators/indecater.rs), which sums p_lj (f(z_{i,-l}, j) - sum_c p_lc f(z_{i,-l}, c))
// draw by draw.
//
// One thread per (repetition, conditional group, draw, variable, category), category fastest:
// one loss evaluation each (S L K per repetition and group, the estimator's cost), and the
// threads of one draw read the same categories. (One thread per sum over the draws would
// loop S H L times for the decoder loss, past the 65535 iterations Mesa's llvmpipe and
// lavapipe allow one loop.)
// Output: losses[((rep * C + c) * S + i) * L*K + l*K + j].

@group(0) @binding(0) var<uniform> params: GenericParams;
@group(0) @binding(1) var<storage, read> groups: array<SignalGroup>;
@group(0) @binding(2) var<storage, read> data: array<f32>;
@group(0) @binding(3) var<storage, read> z: array<u32>;
// The signal group (loss and shift) of each conditional group.
@group(0) @binding(4) var<storage, read> conditional_groups: array<u32>;
@group(0) @binding(5) var<storage, read_write> losses: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let index = flat_index(gid);
    let l = params.l;
    let k = params.k;
    let dim = l * k;
    let s = params.samples;
    let n_conditional = params.n_conditional;
    if index >= params.chunk_reps * n_conditional * s * dim {
        return;
    }
    let lj = index % dim;
    let i = (index / dim) % s;
    let c = (index / (dim * s)) % n_conditional;
    let rep_local = index / (dim * s * n_conditional);
    let group = groups[conditional_groups[c]];
    let lv = loss_at(group, (rep_local * s + i) * l, lj / k, lj % k);
    losses[index] = (lv.x - group.shift) - lv.y;
}
