// The sums over the draws of IndeCateR's conditional losses (indecater.wgsl):
// F[rep, c, l*K + j] = sum_i E[rep, c, i, l*K + j], in a compensated (Kahan) sum in draw
// order. CPU twin: the sum over the draws in `Indecater::estimate`.
//
// One thread per (repetition, conditional group, variable and category), category fastest.
// Output: conditional[(rep * C + c) * L*K + l*K + j].

@group(0) @binding(0) var<uniform> params: GenericParams;
@group(0) @binding(1) var<storage, read> losses: array<f32>;
@group(0) @binding(2) var<storage, read_write> conditional: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let index = flat_index(gid);
    let dim = params.l * params.k;
    let s = params.samples;
    if index >= params.chunk_reps * params.n_conditional * dim {
        return;
    }
    let lj = index % dim;
    let row = index / dim;
    var sum = 0.0;
    var sum_comp = 0.0;
    for (var i = 0u; i < s; i++) {
        let y = losses[(row * s + i) * dim + lj] - sum_comp;
        let t = sum + y;
        sum_comp = (t - sum) - y;
        sum = t;
    }
    conditional[index] = sum - sum_comp;
}
