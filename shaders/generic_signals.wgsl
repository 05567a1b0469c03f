// The loss of every joint draw and the centred learning signal of every signal group:
// D_i = A_i - m, A_i = f(z_i) or MuProp's residual f(z_i) - f(p) - sum_l G'[l, z_il]
// (G'[l, j] = grad f(p)[l, j] - grad_l f(p) . p_l), m a constant near E A chosen on the host
// so that D keeps its digits in f32. CPU twins: `Objective::at_vertex` (the losses) and
// `Context::muprop_residual`.
//
// The losses, in f32 (src/loss.rs has their definitions):
// - quadratic: sum_l beta[l*K + z_l]; the constant alpha L + gamma is folded into `shift`;
// - pnorm: (1/L) sum_l |z_l - b_l|^p;
// - decoder: sum_h softplus(h_h) - target_h h_h, h_h = c_h + sum_l V[h, l*K + z_l], as the
//   sum of each term's step from its value at the mean-field point h_p (the host adds those
//   values back in f64), in compensated (Kahan) sums;
// - table: table[z_0 K^(L-1) + ... + z_{L-1}].
//
// One thread per (repetition, signal group, draw), draw fastest; the output is
// signals[(rep * G + g) * S + i]. A loss's signal group followed by its residual group
// (PAIR_FIRST, PAIR_SECOND) evaluates the loss once and writes both rows.

@group(0) @binding(0) var<uniform> params: GenericParams;
@group(0) @binding(1) var<storage, read> groups: array<SignalGroup>;
@group(0) @binding(2) var<storage, read> data: array<f32>;
@group(0) @binding(3) var<storage, read> z: array<u32>;
@group(0) @binding(4) var<storage, read_write> signals: array<f32>;

// log(1 + x) for x > -1/2, accurate for small x: log(u) x / (u - 1) with u = 1 + x (the
// rounding of u cancels; Goldberg 1991).
fn log1p_accurate(x: f32) -> f32 {
    let u = 1.0 + x;
    if u == 1.0 {
        return x;
    }
    return accurate_log(u) * (x / (u - 1.0));
}

// e^x - 1 with a relative error of a few ulp: a Taylor polynomial for |x| < 1/2 (the first
// omitted term is below 2^-30 of the value), exp(x) - 1 beyond.
fn expm1_accurate(x: f32) -> f32 {
    if abs(x) >= 0.5 {
        return exp(x) - 1.0;
    }
    var poly = 1.0 + x / 10.0;
    poly = 1.0 + x / 9.0 * poly;
    poly = 1.0 + x / 8.0 * poly;
    poly = 1.0 + x / 7.0 * poly;
    poly = 1.0 + x / 6.0 * poly;
    poly = 1.0 + x / 5.0 * poly;
    poly = 1.0 + x / 4.0 * poly;
    poly = 1.0 + x / 3.0 * poly;
    poly = 1.0 + x / 2.0 * poly;
    return x * poly;
}

// softplus(h_p + delta) - softplus(h_p) from delta and sigma = sigmoid(-|h_p|) <= 1/2:
// log1p(sigma expm1(delta)) for h_p < 0, and delta + log1p(sigma expm1(-delta)) for
// h_p >= 0 (softplus(h) = h + softplus(-h)), so the argument of log1p stays above -1/2 and the
// difference keeps its relative accuracy however small it is.
fn softplus_step(delta: f32, sigma: f32, upper: bool) -> f32 {
    if upper {
        return delta + log1p_accurate(sigma * expm1_accurate(-delta));
    }
    return log1p_accurate(sigma * expm1_accurate(delta));
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
    let l = params.l;
    let k = params.k;
    let row = (rep_local * s + i) * l;
    // The loss as value - comp (comp: a compensated sum's correction).
    var value = 0.0;
    var comp = 0.0;
    switch group.loss {
        case LOSS_QUADRATIC: {
            for (var v = 0u; v < l; v++) {
                value += data[group.data + v * k + z[row + v]];
            }
        }
        case LOSS_PNORM: {
            for (var v = 0u; v < l; v++) {
                value += pnorm_term(f32(z[row + v]) - data[group.data + v], group.exponent);
            }
            value /= f32(l);
        }
        case LOSS_DECODER: {
            // Each term as its step from the mean-field point h_p (the host subtracts the sum
            // of the terms at h_p, exactly): softplus(h) - softplus(h_p) - target (h - h_p),
            // with h - h_p = (c - h_p) + sum_l V[h, l*K + z_l] summed with compensation.
            let n = l * k;
            let hidden = group.hidden;
            let base_at = group.data + hidden * n;
            let sigma_at = base_at + hidden;
            let upper_at = sigma_at + hidden;
            let target_at = upper_at + hidden;
            for (var hh = 0u; hh < hidden; hh++) {
                var delta = data[base_at + hh];
                var delta_comp = 0.0;
                let v_row = group.data + hh * n;
                for (var v = 0u; v < l; v++) {
                    let y = data[v_row + v * k + z[row + v]] - delta_comp;
                    let t = delta + y;
                    delta_comp = (t - delta) - y;
                    delta = t;
                }
                delta -= delta_comp;
                let step = softplus_step(delta, data[sigma_at + hh], data[upper_at + hh] > 0.0);
                let term = step - data[target_at + hh] * delta;
                let y = term - comp;
                let t = value + y;
                comp = (t - value) - y;
                value = t;
            }
        }
        default: {
            var at = 0u;
            for (var v = 0u; v < l; v++) {
                at = at * k + z[row + v];
            }
            value = data[group.data + at];
        }
    }
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
