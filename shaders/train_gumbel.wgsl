// The Gumbel draws of a training step: for every input b and draw s < S, y = softmax((a_b +
// G) / tau) and z = argmax(a_b + G) from the forward pass's f32 logits a_b, written out for
// the host's estimators (S x 16 weights and S classes per input). G_c = -log(-log u) from
// word c % 4 of Philox block (draw s, repetition rep_offset + b, Gumbel stream, lane c / 4,
// sweep point = step), as on the CPU. CPU twin: draws::RelaxedTable::draw.

@group(0) @binding(0) var<uniform> params: TrainDrawParams;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> weights: array<f32>;
@group(0) @binding(3) var<storage, read_write> classes: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = gid.x;
    if b >= params.batch {
        return;
    }
    let k = params.k;
    var amax = -3.0e38;
    for (var c = 0u; c < k; c++) {
        amax = max(amax, logits[b * k + c]);
    }
    for (var s = 0u; s < params.samples; s++) {
        var h: array<f32, 16>;
        var words: vec4<u32>;
        var z = 0u;
        var hmax = -3.0e38;
        for (var c = 0u; c < k; c++) {
            if c % 4u == 0u {
                words = philox4x32_10(
                    philox_counter(s, params.rep_offset + b, STREAM_GUMBEL, c / 4u, params.step),
                    params.key,
                );
            }
            // tau = 1: the race form (see `exponential` in common.wgsl).
            if params.inv_tau == 1.0 {
                h[c] = exp(logits[b * k + c] - amax) / exponential(words[c % 4u]);
            } else {
                h[c] = (logits[b * k + c] - amax) + gumbel(words[c % 4u]);
            }
            if h[c] > hmax {
                hmax = h[c];
                z = c;
            }
        }
        var total = 0.0;
        for (var c = 0u; c < k; c++) {
            if params.inv_tau != 1.0 {
                h[c] = exp((h[c] - hmax) * params.inv_tau);
            }
            total += h[c];
        }
        let row = b * params.samples + s;
        for (var c = 0u; c < MAX_K; c++) {
            var y = 0.0;
            if c < k {
                y = h[c] / total;
            }
            weights[row * MAX_K + c] = y;
        }
        classes[row] = z;
    }
}
