// The unordered-set estimator's per-member terms (estimators::Conditional::UnorderedSet;
// src/gpu/unordered_set.rs has the derivation and the f32 design): for every repetition, set
// group g, variable l and member s of the set S (k = min(S, K) categories, from
// unordered_set.wgsl), with q = 1 - p(S) summed over the other categories, alpha_m = p_m / q,
// f_m(x) = 1 - e^{-alpha_m x} and the trapezoid nodes x_n = e^{n h} of weight h x_n e^{-x_n},
//   g_s = p_s * [sum_n (w_n / f_s(x_n)) sum_{t != s} p_t (E_s - E_t) / f_t(x_n)] / [sum_n w_n],
//   w_n = h x_n e^{-x_n} prod_m f_m(x_n),
// i.e. p_s R(S, s) (f_s - B(S, s)) (the centre m cancels); with k = 1 it is E_s (REINFORCE,
// the host adds m), with k = K IndeCateR's p_s (E_s - sum_c p_c E_c). The host finishes
// g_l = sum_s g_s (e_s - p_l) in f64. CPU twin: `gpu::unordered_set::member_terms`.
//
// Products carry their binary exponent apart (mantissa in [0.5, 1)) and are scaled by the
// largest node's exponent (a first pass), so no set is too improbable for f32; the nodes'
// weights come from the host as mantissa and exponent; both sums over the nodes are
// compensated.
//
// One thread per (repetition, set group, variable, member), member fastest: O(nodes k) each.
// Output: terms[((rep * G + g) * L + l) * k + s].

@group(0) @binding(0) var<uniform> params: GenericParams;
// The logits (L*K), the probabilities (L*K), then per node x_n, the weight's mantissa and its
// exponent (n_nodes each, the first node at y = nodes_first h).
@group(0) @binding(1) var<storage, read> set_data: array<f32>;
@group(0) @binding(2) var<storage, read> members: array<u32>;
@group(0) @binding(3) var<storage, read> set_losses: array<f32>;
@group(0) @binding(4) var<storage, read_write> terms: array<f32>;

// Keep in sync with estimators::QUADRATURE_STEP and gpu::unordered_set::FLOOR (2^-60).
const QUADRATURE_STEP: f32 = 0.2;
const FLOOR: f32 = 8.673617e-19;

struct Split {
    mantissa: f32,
    exponent: i32,
}

// x = mantissa 2^exponent, mantissa in [0.5, 1), by the bits (x positive and normal).
fn split(x: f32) -> Split {
    let bits = bitcast<u32>(x);
    return Split(bitcast<f32>((bits & 0x807fffffu) | (126u << 23u)), i32((bits >> 23u) & 0xffu) - 126);
}

// 1 - e^{-t} for t >= 0 to a few ulp: -expm1(-t), the same bits as the polynomial written
// out for 1 - e^{-t} (negating a rounded difference or product is exact).
fn one_minus_exp_neg(t: f32) -> f32 {
    return -expm1_accurate(-t);
}

struct Kahan {
    sum: f32,
    comp: f32,
}

fn kahan_add(a: Kahan, v: f32) -> Kahan {
    let y = v - a.comp;
    let t = a.sum + y;
    return Kahan(t, (t - a.sum) - y);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let index = flat_index(gid);
    let l = params.l;
    let kk = params.k;
    let size = params.set_size;
    if index >= params.chunk_reps * params.n_sets * l * size {
        return;
    }
    let i = index % size;
    let v = (index / size) % l;
    let g = (index / (size * l)) % params.n_sets;
    let rep_local = index / (size * l * params.n_sets);
    let m_at = (rep_local * l + v) * size;
    let e_at = ((rep_local * params.n_sets + g) * l + v) * size;
    let p_at = l * kk + v * kk;
    let e_i = set_losses[e_at + i];
    let p_i = set_data[p_at + members[m_at + i]];
    if size == 1u {
        terms[index] = e_i;
        return;
    }
    if size >= kk {
        var mean = Kahan(0.0, 0.0);
        for (var j = 0u; j < size; j++) {
            mean = kahan_add(mean, set_data[p_at + members[m_at + j]] * set_losses[e_at + j]);
        }
        terms[index] = p_i * (e_i - (mean.sum - mean.comp));
        return;
    }
    // The rest's mass, summed directly.
    var rest = Kahan(0.0, 0.0);
    for (var c = 0u; c < kk; c++) {
        var member = false;
        for (var j = 0u; j < size; j++) {
            member = member || members[m_at + j] == c;
        }
        if !member {
            rest = kahan_add(rest, set_data[p_at + c]);
        }
    }
    let q = rest.sum - rest.comp;
    var a_max = 0.0;
    for (var j = 0u; j < size; j++) {
        a_max = max(a_max, set_data[p_at + members[m_at + j]] / q);
    }
    // The CPU's range, on the grid y = n h.
    let h = QUADRATURE_STEP;
    let y_lo = min(-log(a_max), 0.0) - 40.0;
    let y_hi = log(60.0 + 2.0 * (f32(size) + 1.0));
    let n_nodes = i32(params.n_nodes);
    let lo = clamp(i32(floor(y_lo / h)) - params.nodes_first, 0, n_nodes);
    let hi = clamp(i32(ceil(y_hi / h)) + 1 - params.nodes_first, 0, n_nodes);
    let x_at = 2u * l * kk;
    let mantissa_at = x_at + params.n_nodes;
    let exponent_at = mantissa_at + params.n_nodes;
    // Pass 1: the largest node's binary exponent (within k + 1 of its true one).
    var top = -2147483647;
    for (var n = lo; n < hi; n++) {
        let x = set_data[x_at + u32(n)];
        var e = i32(set_data[exponent_at + u32(n)]);
        for (var j = 0u; j < size; j++) {
            let alpha = set_data[p_at + members[m_at + j]] / q;
            e += split(max(one_minus_exp_neg(alpha * x), FLOOR)).exponent;
        }
        top = max(top, e);
    }
    // Pass 2: the two sums over the nodes.
    var den = Kahan(0.0, 0.0);
    var num = Kahan(0.0, 0.0);
    for (var n = lo; n < hi; n++) {
        let x = set_data[x_at + u32(n)];
        var mantissa = set_data[mantissa_at + u32(n)];
        var exponent = i32(set_data[exponent_at + u32(n)]);
        var own = 1.0;
        var diff = 0.0;
        for (var j = 0u; j < size; j++) {
            let p_j = set_data[p_at + members[m_at + j]];
            let f = max(one_minus_exp_neg(p_j / q * x), FLOOR);
            if j == i {
                own = f;
                continue;
            }
            let s = split(mantissa * f);
            mantissa = s.mantissa;
            exponent += s.exponent;
            diff += p_j * (e_i - set_losses[e_at + j]) / f;
        }
        // w_n / f_s(x_n), scaled by 2^-top.
        let without = ldexp(mantissa, exponent - top);
        den = kahan_add(den, without * own);
        num = kahan_add(num, without * diff);
    }
    terms[index] = p_i * ((num.sum - num.comp) / (den.sum - den.comp));
}
