// The generic losses, shared by the kernels that evaluate them (generic_signals.wgsl,
// indecater.wgsl, unordered_set.wgsl); src/gpu/shaders.rs prepends it after
// generic_common.wgsl. Each such kernel binds `params`, `data` (the losses' numbers) and `z`
// (the joint draws). CPU twin: `Objective::at_vertex` (src/loss.rs has the definitions), in f32:
// - quadratic: sum_l beta[l*K + z_l]; the constant alpha L + gamma is folded into `shift`;
// - pnorm: (1/L) sum_l |z_l - b_l|^p;
// - decoder: sum_h softplus(h_h) - target_h h_h, h_h = c_h + sum_l V[h, l*K + z_l], as the
//   sum of each term's step from its value at the mean-field point h_p (the host adds those
//   values back in f64), in compensated (Kahan) sums;
// - table: table[z_0 K^(L-1) + ... + z_{L-1}].

// No variable swapped (loss_at's `swap_var` for the draw itself).
const NO_SWAP: u32 = 0xffffffffu;

// Category of variable v of the draw at z[row], with variable swap_var read as swap_cat
// (IndeCateR's f(z_{-l}, c)).
fn category_of(row: u32, v: u32, swap_var: u32, swap_cat: u32) -> u32 {
    if v == swap_var {
        return swap_cat;
    }
    return z[row + v];
}

// log(1 + x) for x > -1/2, accurate for small x: log(u) x / (u - 1) with u = 1 + x (the
// rounding of u cancels; Goldberg 1991).
fn log1p_accurate(x: f32) -> f32 {
    let u = 1.0 + x;
    if u == 1.0 {
        return x;
    }
    return accurate_log(u) * (x / (u - 1.0));
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

// The loss of `group` at the joint draw whose categories start at z[row], with variable
// `swap_var` read as `swap_cat` (NO_SWAP: none), as (value, comp): the loss less the
// host's omitted constants is value - comp (comp: a compensated sum's correction).
fn loss_at(group: SignalGroup, row: u32, swap_var: u32, swap_cat: u32) -> vec2<f32> {
    let l = params.l;
    let k = params.k;
    var value = 0.0;
    var comp = 0.0;
    switch group.loss {
        case LOSS_QUADRATIC: {
            for (var v = 0u; v < l; v++) {
                value += data[group.data + v * k + category_of(row, v, swap_var, swap_cat)];
            }
        }
        case LOSS_PNORM: {
            for (var v = 0u; v < l; v++) {
                value += pnorm_term(f32(category_of(row, v, swap_var, swap_cat)) - data[group.data + v], group.exponent);
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
                    let y = data[v_row + v * k + category_of(row, v, swap_var, swap_cat)] - delta_comp;
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
                at = at * k + category_of(row, v, swap_var, swap_cat);
            }
            value = data[group.data + at];
        }
    }
    return vec2<f32>(value, comp);
}
