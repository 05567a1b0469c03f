// Whole training steps on the GPU, several per dispatch (and several dispatches, each with its
// own parameters at a dynamic offset, per submission): one workgroup per training run (a
// learning rate of the tuning grid, or the reported run), each looping over the chunk's
// steps. A step: the forward pass a = x W of the minibatch's B rows, each row's S draws (the
// Philox counters of train_categorical.wgsl / train_gumbel.wgsl), the estimator's logit
// gradient g_b, the exact minibatch objective and the moving-average signal (reduced in a
// fixed tree), G = (1/B) X^T g and the optimiser's update of W. W, the optimiser's moments
// and the baseline live in `state` between dispatches; the host uploads the images and labels
// once and each chunk's minibatch order, and reads back W only where it evaluates.
// Keep in sync with src/gpu/train_step.rs (TrainStepParams, the rules, the state layout).
// CPU twin: gpu::train_step::steps_cpu, the same loops in f64.

struct TrainStepParams {
    key: vec2<u32>,
    // Global index of the chunk's first step (the draws' sweep-point counter; Adam's t - 1).
    first_step: u32,
    steps: u32,
    batch: u32,
    samples: u32,
    d: u32,
    k: u32,
    // RULE_*; for RULE_SCORE the signal, baseline and constant below.
    rule: u32,
    signal: u32,
    baseline: u32,
    constant: u32,
    optimizer: u32,
    record: u32,
    // Where the chunk's order starts in `index` (the labels come first).
    order_offset: u32,
    // Floats of one run's state, scratch and output.
    state_stride: u32,
    scratch_stride: u32,
    out_stride: u32,
    inv_tau: f32,
    inv_batch: f32,
    // This dispatch's first step within the submission (where its objectives and draws go),
    // and the steps of the whole submission (where the draws start).
    out_step: u32,
    out_steps: u32,
    // The loss of a row with label c: f(y) = alpha ||y||^2 + beta.y + gamma with
    // beta_j = beta_off, except beta_c = beta_hit.
    alpha: f32,
    beta_off: f32,
    beta_hit: f32,
    gamma: f32,
}

const RULE_SCORE: u32 = 0u;
const RULE_STRAIGHT_THROUGH: u32 = 1u;
const RULE_REINMAX: u32 = 2u;
const RULE_RELAXED_SOFT: u32 = 3u;
const RULE_RELAXED_HARD: u32 = 4u;
const SIGNAL_NONE: u32 = 0u;
const SIGNAL_LOSS: u32 = 1u;
const SIGNAL_MUPROP: u32 = 2u;
const CONSTANT_MEAN_FIELD: u32 = 1u;
const OPT_SGD: u32 = 0u;
const OPT_ADAM: u32 = 1u;
const OPT_RMSPROP: u32 = 2u;
const ADAM_B1: f32 = 0.9;
const ADAM_B2: f32 = 0.999;
const ADAM_EPS: f32 = 1e-8;
const RMSPROP_RHO: f32 = 0.99;
const RMSPROP_EPS: f32 = 1e-8;
const EMA_DECAY: f32 = 0.9;
const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: TrainStepParams;
// The training images, N x D.
@group(0) @binding(1) var<storage, read> images: array<f32>;
// The labels (N), then the chunk's order (steps x B image indices).
@group(0) @binding(2) var<storage, read> index: array<u32>;
// Per run: W (D x K) | Adam's m | v (or RMSprop's v) | lr, baseline sum, baseline weight, 0.
@group(0) @binding(3) var<storage, read_write> state: array<f32>;
// Per run: B rows of 16: the logits, then the row's gradient g_b.
@group(0) @binding(4) var<storage, read_write> scratch: array<f32>;
// Per run: the steps' objectives (f32 bits), then (record != 0) the draws: per step and row
// the 16 class counts, or the S argmax classes of the relaxed draws.
@group(0) @binding(5) var<storage, read_write> out: array<u32>;

var<workgroup> reduce_objective: array<f32, WG>;
var<workgroup> reduce_signal: array<f32, WG>;

fn beta_of(j: u32, label: u32) -> f32 {
    if j == label {
        return params.beta_hit;
    }
    return params.beta_off;
}

// The estimate of one row from its logits (in scratch at `row`), written over them; returns
// (objective, moving-average signal).
fn row_estimate(run: u32, row: u32, b: u32, step: u32, s_in_chunk: u32, label: u32, baseline: f32) -> vec2<f32> {
    let k = params.k;
    let samples = params.samples;
    var a: array<f32, 16>;
    var p: array<f32, 16>;
    var amax = -3.0e38;
    for (var c = 0u; c < k; c++) {
        a[c] = scratch[row + c];
        amax = max(amax, a[c]);
    }
    var total = 0.0;
    for (var c = 0u; c < k; c++) {
        p[c] = exp(a[c] - amax);
        total += p[c];
    }
    // Vertex values f_c, the objective sum_c p_c f_c.
    var f: array<f32, 16>;
    var fbar = 0.0;
    for (var c = 0u; c < k; c++) {
        p[c] = p[c] / total;
        f[c] = params.alpha + beta_of(c, label) + params.gamma;
        fbar += p[c] * f[c];
    }
    var g: array<f32, 16>;
    var signal_out = 0.0;
    let rec = params.out_steps + ((params.out_step + s_in_chunk) * params.batch + b) * select(16u, samples, params.rule >= RULE_RELAXED_SOFT);
    let rec_base = run * params.out_stride + rec;
    if params.rule == RULE_SCORE && params.signal == SIGNAL_NONE {
        // exact: the gradient p_j (f_j - E f), no draws.
        for (var j = 0u; j < k; j++) {
            g[j] = p[j] * (f[j] - fbar);
        }
    } else if params.rule < RULE_RELAXED_SOFT {
        // The S categorical draws, counted per class (as train_categorical.wgsl).
        var cdf: array<f32, 16>;
        var run_total = 0.0;
        var last = 0u;
        for (var c = 0u; c < k; c++) {
            run_total += p[c];
            cdf[c] = run_total;
            if p[c] > 0.0 {
                last = c;
            }
        }
        var n: array<u32, 16>;
        var words: vec4<u32>;
        for (var i = 0u; i < samples; i++) {
            if i % 4u == 0u {
                words = philox4x32_10(philox_counter(i / 4u, b, STREAM_CATEGORICAL, 0u, step), params.key);
            }
            let word = words[i % 4u];
            var cat = last;
            for (var c = 0u; c < last; c++) {
                let edge = cdf[c] * 4294967296.0;
                if edge >= 4294967296.0 || word < u32(ceil(edge)) {
                    cat = c;
                    break;
                }
            }
            n[cat] += 1u;
        }
        if params.record != 0u {
            for (var c = 0u; c < 16u; c++) {
                out[rec_base + c] = n[c];
            }
        }
        let inv_s = 1.0 / f32(samples);
        if params.rule == RULE_SCORE {
            // Signal L_c: f_c, or MuProp's residual f_c - f(p) - (grad_c - grad . p).
            var sig: array<f32, 16>;
            var cst: array<f32, 16>;
            if params.signal == SIGNAL_MUPROP {
                var fp = params.gamma;
                var gp = 0.0;
                var gradf: array<f32, 16>;
                for (var c = 0u; c < k; c++) {
                    gradf[c] = 2.0 * params.alpha * p[c] + beta_of(c, label);
                    fp += (params.alpha * p[c] + beta_of(c, label)) * p[c];
                    gp += gradf[c] * p[c];
                }
                for (var c = 0u; c < k; c++) {
                    sig[c] = f[c] - fp - (gradf[c] - gp);
                    cst[c] = p[c] * (gradf[c] - gp);
                }
            } else {
                for (var c = 0u; c < k; c++) {
                    sig[c] = f[c];
                    cst[c] = 0.0;
                }
            }
            var sum_signal = 0.0;
            for (var c = 0u; c < k; c++) {
                sum_signal += f32(n[c]) * sig[c];
            }
            var bl = 0.0;
            var scale = inv_s;
            if params.baseline == BASELINE_MOVING_AVERAGE {
                bl = baseline;
                signal_out = sum_signal * inv_s;
            } else if params.baseline == BASELINE_LEAVE_ONE_OUT {
                bl = sum_signal * inv_s;
                scale = 1.0 / (f32(samples) - 1.0);
            }
            var wsum = 0.0;
            for (var c = 0u; c < k; c++) {
                g[c] = f32(n[c]) * (sig[c] - bl);
                wsum += g[c];
            }
            let use_c = params.constant == CONSTANT_MEAN_FIELD;
            for (var j = 0u; j < k; j++) {
                g[j] = (g[j] - p[j] * wsum) * scale + select(0.0, cst[j], use_c);
            }
        } else {
            // Hard draw: (1/S) sum_c n_c g(e_c), v = grad f(e_c) = 2 alpha e_c + beta.
            var sigma: array<f32, 16>;
            if params.rule == RULE_REINMAX {
                var smax = -3.0e38;
                for (var c = 0u; c < k; c++) {
                    sigma[c] = a[c] * params.inv_tau;
                    smax = max(smax, sigma[c]);
                }
                var stot = 0.0;
                for (var c = 0u; c < k; c++) {
                    sigma[c] = exp(sigma[c] - smax);
                    stot += sigma[c];
                }
                for (var c = 0u; c < k; c++) {
                    sigma[c] = sigma[c] / stot;
                }
            }
            for (var j = 0u; j < k; j++) {
                g[j] = 0.0;
            }
            for (var c = 0u; c < k; c++) {
                if n[c] == 0u {
                    continue;
                }
                let wgt = f32(n[c]) * inv_s;
                var v: array<f32, 16>;
                var pv = 0.0;
                var sv = 0.0;
                for (var j = 0u; j < k; j++) {
                    v[j] = select(0.0, 2.0 * params.alpha, j == c) + beta_of(j, label);
                    pv += p[j] * v[j];
                    sv += sigma[j] * v[j];
                }
                if params.rule == RULE_STRAIGHT_THROUGH {
                    for (var j = 0u; j < k; j++) {
                        g[j] += wgt * (p[j] * (v[j] - pv));
                    }
                } else {
                    let pi_v = 0.5 * (sv + v[c]);
                    for (var j = 0u; j < k; j++) {
                        let pi1 = 0.5 * (sigma[j] + select(0.0, 1.0, j == c));
                        g[j] += wgt * (2.0 * pi1 * (v[j] - pi_v) - 0.5 * p[j] * (v[j] - pv));
                    }
                }
            }
        }
    } else {
        // Relaxed: per draw (as train_gumbel.wgsl) y = softmax((a + G) / tau), z = argmax,
        // and (1/tau) J(y) v with v = grad f(y) (soft) or grad f(e_z) (straight-through).
        for (var j = 0u; j < k; j++) {
            g[j] = 0.0;
        }
        for (var d = 0u; d < samples; d++) {
            var h: array<f32, 16>;
            var words: vec4<u32>;
            var z = 0u;
            var hmax = -3.0e38;
            for (var c = 0u; c < k; c++) {
                if c % 4u == 0u {
                    words = philox4x32_10(philox_counter(d, b, STREAM_GUMBEL, c / 4u, step), params.key);
                }
                // tau = 1: the race form (see `exponential` in common.wgsl).
                if params.inv_tau == 1.0 {
                    h[c] = exp(a[c] - amax) / exponential(words[c % 4u]);
                } else {
                    h[c] = (a[c] - amax) + gumbel(words[c % 4u]);
                }
                if h[c] > hmax {
                    hmax = h[c];
                    z = c;
                }
            }
            var htot = 0.0;
            for (var c = 0u; c < k; c++) {
                if params.inv_tau != 1.0 {
                    h[c] = exp((h[c] - hmax) * params.inv_tau);
                }
                htot += h[c];
            }
            var v: array<f32, 16>;
            var yv = 0.0;
            for (var c = 0u; c < k; c++) {
                h[c] = h[c] / htot;
                if params.rule == RULE_RELAXED_HARD {
                    v[c] = select(0.0, 2.0 * params.alpha, c == z) + beta_of(c, label);
                } else {
                    v[c] = 2.0 * params.alpha * h[c] + beta_of(c, label);
                }
                yv += h[c] * v[c];
            }
            for (var j = 0u; j < k; j++) {
                g[j] += h[j] * (v[j] - yv) * params.inv_tau;
            }
            if params.record != 0u {
                out[rec_base + d] = z;
            }
        }
        let inv_s = 1.0 / f32(samples);
        for (var j = 0u; j < k; j++) {
            g[j] = g[j] * inv_s;
        }
    }
    for (var j = 0u; j < k; j++) {
        scratch[row + j] = g[j];
    }
    return vec2<f32>(fbar, signal_out);
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let run = wid.x;
    let d = params.d;
    let k = params.k;
    let batch = params.batch;
    let dk = d * k;
    let w0 = run * params.state_stride;
    let m0 = w0 + dk;
    let v0 = m0 + dk;
    let sc = v0 + dk;
    let g0 = run * params.scratch_stride;
    let lr = state[sc];
    for (var s = 0u; s < params.steps; s++) {
        let step = params.first_step + s;
        let order = params.order_offset + s * batch;
        // The forward pass: one (row, class) logit per thread, zero pixels skipped.
        for (var q = lid; q < batch * k; q += WG) {
            let b = q / k;
            let j = q % k;
            let xo = index[order + b] * d;
            var acc = 0.0;
            for (var i = 0u; i < d; i++) {
                let xi = images[xo + i];
                if xi != 0.0 {
                    acc += xi * state[w0 + i * k + j];
                }
            }
            scratch[g0 + b * 16u + j] = acc;
        }
        storageBarrier();
        // Each row's estimate; the baseline is the average before this step.
        var baseline = 0.0;
        if state[sc + 2u] > 0.0 {
            baseline = state[sc + 1u] / state[sc + 2u];
        }
        var objective = 0.0;
        var signal = 0.0;
        for (var b = lid; b < batch; b += WG) {
            let label = index[index[order + b]];
            let r = row_estimate(run, g0 + b * 16u, b, step, s, label, baseline);
            objective += r.x;
            signal += r.y;
        }
        reduce_objective[lid] = objective;
        reduce_signal[lid] = signal;
        workgroupBarrier();
        for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
            if lid < stride {
                reduce_objective[lid] += reduce_objective[lid + stride];
                reduce_signal[lid] += reduce_signal[lid + stride];
            }
            workgroupBarrier();
        }
        if lid == 0u {
            out[run * params.out_stride + params.out_step + s] = bitcast<u32>(reduce_objective[0] * params.inv_batch);
            if params.rule == RULE_SCORE && params.baseline == BASELINE_MOVING_AVERAGE {
                let pushed = reduce_signal[0] * params.inv_batch;
                state[sc + 1u] = EMA_DECAY * state[sc + 1u] + (1.0 - EMA_DECAY) * pushed;
                state[sc + 2u] = EMA_DECAY * state[sc + 2u] + (1.0 - EMA_DECAY);
            }
        }
        storageBarrier();
        // G = (1/B) X^T g, one pixel (row of W) per thread, then the optimiser.
        let t = f32(step + 1u);
        let c1 = 1.0 - pow(ADAM_B1, t);
        let c2 = 1.0 - pow(ADAM_B2, t);
        for (var i = lid; i < d; i += WG) {
            var grad: array<f32, 16>;
            for (var b = 0u; b < batch; b++) {
                let xi = images[index[order + b] * d + i];
                if xi != 0.0 {
                    for (var j = 0u; j < k; j++) {
                        grad[j] += xi * scratch[g0 + b * 16u + j];
                    }
                }
            }
            for (var j = 0u; j < k; j++) {
                let e = i * k + j;
                let gr = grad[j] * params.inv_batch;
                if params.optimizer == OPT_ADAM {
                    let m = ADAM_B1 * state[m0 + e] + (1.0 - ADAM_B1) * gr;
                    let v = ADAM_B2 * state[v0 + e] + (1.0 - ADAM_B2) * gr * gr;
                    state[m0 + e] = m;
                    state[v0 + e] = v;
                    state[w0 + e] -= lr * (m / c1) / (sqrt(v / c2) + ADAM_EPS);
                } else if params.optimizer == OPT_RMSPROP {
                    let v = RMSPROP_RHO * state[v0 + e] + (1.0 - RMSPROP_RHO) * gr * gr;
                    state[v0 + e] = v;
                    state[w0 + e] -= lr * gr / (sqrt(v) + RMSPROP_EPS);
                } else {
                    state[w0 + e] -= lr * gr;
                }
            }
        }
        storageBarrier();
    }
}
