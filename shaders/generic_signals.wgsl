// The loss of every joint draw and the centred learning signal of every signal group:
// D_i = A_i - m, A_i = f(z_i) or MuProp's residual f(z_i) - f(p) - sum_l G'[l, z_il]
// (G'[l, j] = grad f(p)[l, j] - grad_l f(p) . p_l), m a constant near E A chosen on the host
// so that D keeps its digits in f32. CPU twins: `Objective::at_vertex` (the losses) and
// `Context::muprop_residual`.
//
// The losses, in f32 (src/loss.rs has their definitions):
// - quadratic: sum_l beta[l*K + z_l]; the constant alpha L + gamma is folded into `shift`;
// - pnorm: (1/L) sum_l |z_l - b_l|^p;
// - decoder: sum_h (softplus(h_h) - target_h h_h - s_h), h_h = c_h + sum_l V[h, l*K + z_l],
//   with s_h the term's value at the mean-field point (so the sum is of small numbers) and a
//   compensated (Kahan) sum over h;
// - table: table[z_0 K^(L-1) + ... + z_{L-1}].
//
// One thread per (repetition, signal group, draw), draw fastest; the output is
// signals[(rep * G + g) * S + i].

@group(0) @binding(0) var<uniform> params: GenericParams;
@group(0) @binding(1) var<storage, read> groups: array<SignalGroup>;
@group(0) @binding(2) var<storage, read> data: array<f32>;
@group(0) @binding(3) var<storage, read> z: array<u32>;
@group(0) @binding(4) var<storage, read_write> signals: array<f32>;

// log(1 + x) for x in (0, 1], accurate for small x: log(u) x / (u - 1) with u = 1 + x
// (the rounding of u cancels; Goldberg 1991).
fn log1p_unit(x: f32) -> f32 {
    let u = 1.0 + x;
    if u == 1.0 {
        return x;
    }
    return accurate_log(u) * (x / (u - 1.0));
}

fn softplus(h: f32) -> f32 {
    return max(h, 0.0) + log1p_unit(exp(-abs(h)));
}

fn pnorm_term(d: f32, p: f32) -> f32 {
    if p == 2.0 {
        return d * d;
    }
    if p == 1.0 {
        return abs(d);
    }
    return pow(abs(d), p);
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
    let l = params.l;
    let k = params.k;
    let row = (rep_local * s + i) * l;
    let group = groups[g];
    var d = 0.0;
    switch group.loss {
        case LOSS_QUADRATIC: {
            var acc = 0.0;
            for (var v = 0u; v < l; v++) {
                acc += data[group.data + v * k + z[row + v]];
            }
            d = acc - group.shift;
        }
        case LOSS_PNORM: {
            var acc = 0.0;
            for (var v = 0u; v < l; v++) {
                acc += pnorm_term(f32(z[row + v]) - data[group.data + v], group.exponent);
            }
            d = acc / f32(l) - group.shift;
        }
        case LOSS_DECODER: {
            let n = l * k;
            let hidden = group.hidden;
            let c_at = group.data + hidden * n;
            let target_at = c_at + hidden;
            let shift_at = target_at + hidden;
            var sum = 0.0;
            var comp = 0.0;
            for (var hh = 0u; hh < hidden; hh++) {
                var h = data[c_at + hh];
                let v_row = group.data + hh * n;
                for (var v = 0u; v < l; v++) {
                    h += data[v_row + v * k + z[row + v]];
                }
                let term = (softplus(h) - data[target_at + hh] * h) - data[shift_at + hh];
                let y = term - comp;
                let t = sum + y;
                comp = (t - sum) - y;
                sum = t;
            }
            d = (sum - group.shift) - comp;
        }
        default: {
            var at = 0u;
            for (var v = 0u; v < l; v++) {
                at = at * k + z[row + v];
            }
            d = data[group.data + at] - group.shift;
        }
    }
    if group.residual == 1u {
        var lin = 0.0;
        for (var v = 0u; v < l; v++) {
            lin += data[group.grad + v * k + z[row + v]];
        }
        d -= lin;
    }
    signals[index] = d;
}
