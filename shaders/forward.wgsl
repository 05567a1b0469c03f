// The batched forward pass of the softmax layer: logits = X W (B x D times D x K) and
// probabilities = softmax(logits) per row, max subtracted first. CPU twin:
// `gpu::forward::forward_cpu`. One workgroup per row: FORWARD_WG threads split the D inputs,
// each keeps K private partial sums, then the partials are added in shared memory.

struct ForwardParams {
    batch: u32,
    d: u32,
    k: u32,
    // Rows per dispatch row (the x dimension of the dispatch).
    rows_per_y: u32,
}

@group(0) @binding(0) var<uniform> forward: ForwardParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> logits: array<f32>;
@group(0) @binding(4) var<storage, read_write> probs: array<f32>;

const FORWARD_WG: u32 = 64u;

var<workgroup> partial: array<f32, 1024>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let row = wid.y * forward.rows_per_y + wid.x;
    let d = forward.d;
    let k = forward.k;
    var acc: array<f32, 16>;
    if row < forward.batch {
        for (var i = lid; i < d; i += FORWARD_WG) {
            let xi = x[row * d + i];
            for (var j = 0u; j < k; j++) {
                acc[j] += xi * w[i * k + j];
            }
        }
    }
    for (var j = 0u; j < k; j++) {
        partial[lid * MAX_K + j] = acc[j];
    }
    workgroupBarrier();
    for (var stride = FORWARD_WG / 2u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            for (var j = 0u; j < k; j++) {
                partial[lid * MAX_K + j] += partial[(lid + stride) * MAX_K + j];
            }
        }
        workgroupBarrier();
    }
    if lid == 0u && row < forward.batch {
        var max_logit = partial[0];
        for (var j = 1u; j < k; j++) {
            max_logit = max(max_logit, partial[j]);
        }
        var total = 0.0;
        for (var j = 0u; j < k; j++) {
            total += exp(partial[j] - max_logit);
        }
        for (var j = 0u; j < k; j++) {
            logits[row * k + j] = partial[j];
            probs[row * k + j] = exp(partial[j] - max_logit) / total;
        }
    }
}
