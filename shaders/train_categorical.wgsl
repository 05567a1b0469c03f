// The categorical draws of a training step: for every input b of the minibatch, its S draws
// z ~ Cat(p_b), p_b the forward pass's f32 probabilities (forward.wgsl), counted per class.
// Draw i of input b uses word i % 4 of Philox block (i / 4, repetition rep_offset + b,
// categorical stream, sweep point = step), as on the CPU. CPU twin: draws::count_categories
// with draws::CategoricalTable, whose thresholds come from f64 probabilities: the classes
// agree except where a uniform falls between the f32 and the f64 cumulative sums.

@group(0) @binding(0) var<uniform> params: TrainDrawParams;
@group(0) @binding(1) var<storage, read> probs: array<f32>;
@group(0) @binding(2) var<storage, read_write> counts: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = gid.x;
    if b >= params.batch {
        return;
    }
    let k = params.k;
    var cdf: array<f32, 16>;
    var total = 0.0;
    var last = 0u;
    for (var c = 0u; c < k; c++) {
        let p = probs[b * k + c];
        total += p;
        cdf[c] = total;
        if p > 0.0 {
            last = c;
        }
    }
    var n: array<u32, 16>;
    var words: vec4<u32>;
    for (var i = 0u; i < params.samples; i++) {
        if i % 4u == 0u {
            words = philox4x32_10(
                philox_counter(i / 4u, params.rep_offset + b, STREAM_CATEGORICAL, 0u, params.step),
                params.key,
            );
        }
        // The uniform w 2^-32 is below C_c when w < ceil(C_c 2^32) (exact in f32), and always
        // when C_c 2^32 reaches 2^32; past the f32 total, the last class with mass.
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
    for (var c = 0u; c < MAX_K; c++) {
        counts[b * MAX_K + c] = n[c];
    }
}
