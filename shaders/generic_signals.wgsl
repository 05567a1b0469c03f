// The loss of every joint draw and the centred learning signal of every signal group:
// D_i = A_i - m, A_i = f(z_i) or MuProp's residual f(z_i) - f(p) - sum_l G'[l, z_il]
// (G'[l, j] = grad f(p)[l, j] - grad_l f(p) . p_l), m a constant near E A chosen on the host
// so that D keeps its digits in f32. CPU twins: `Objective::at_vertex` (the losses) and
// `Context::muprop_residual`.
// The losses, in f32, are generic_loss.wgsl's `loss_at`.
//
// One thread per (repetition, signal group, draw), draw fastest; the output is
// signals[(rep * G + g) * S + i]. A loss's signal group followed by its residual group
// (PAIR_FIRST, PAIR_SECOND) evaluates the loss once and writes both rows.

@group(0) @binding(0) var<uniform> params: GenericParams;
@group(0) @binding(1) var<storage, read> groups: array<SignalGroup>;
@group(0) @binding(2) var<storage, read> data: array<f32>;
@group(0) @binding(3) var<storage, read> z: array<u32>;
@group(0) @binding(4) var<storage, read_write> signals: array<f32>;

// G'[l, z_l] summed over the variables, G' in two f32 parts (high, then low at L*K further),
// with compensation.
fn residual_linear(at: u32, row: u32) -> f32 {
    let l = params.l;
    let k = params.k;
    var lin = 0.0;
    var lin_comp = 0.0;
    for (var v = 0u; v < l; v++) {
        let j = at + v * k + z[row + v];
        let y = (data[j] + data[j + l * k]) - lin_comp;
        let t = lin + y;
        lin_comp = (t - lin) - y;
        lin = t;
    }
    return lin - lin_comp;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let index = flat_index(gid);
    let s = params.samples;
    let n_groups = params.n_groups;
    if index >= params.chunk_reps * n_groups * s {
        return;
    }
    let i = index % s;
    let g = (index / s) % n_groups;
    let rep_local = index / (s * n_groups);
    let group = groups[g];
    if group.pair == PAIR_SECOND {
        // The previous group's thread wrote this row from the same loss.
        return;
    }
    let row = (rep_local * s + i) * params.l;
    let lv = loss_at(group, row, NO_SWAP, 0u);
    let value = lv.x;
    let comp = lv.y;
    var d = (value - group.shift) - comp;
    if group.residual == 1u {
        d -= residual_linear(group.grad, row);
    }
    signals[index] = d;
    if group.pair == PAIR_FIRST {
        // The next group is MuProp's residual under the same loss: one loss evaluation.
        let next = groups[g + 1u];
        signals[index + s] = ((value - next.shift) - comp) - residual_linear(next.grad, row);
    }
}
