// The relaxed estimates' moments: one thread per repetition reads every relaxed cell's sum
// over the S draws (relaxed_draws.wgsl), divides by S and the workgroup reduces the
// deviations from the exact gradient (moments.wgsl). CPU twin: the `Family::Relaxed` arm of
// `cpu_point` in src/engine.rs.

@group(0) @binding(0) var<uniform> params: SweepParams;
@group(0) @binding(1) var<storage, read> cells: array<RelaxedCell>;
@group(0) @binding(2) var<storage, read> sums: array<f32>;
@group(0) @binding(3) var<storage, read_write> partials: array<PartialMoments>;


@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let k = params.k;
    let rep_local = wid.x * MOMENTS_WG + lid;
    let in_chunk = rep_local < params.chunk_reps;
    for (var cell = 0u; cell < params.n_cells; cell++) {
        var d: array<f32, 16>;
        var g: array<f32, 16>;
        for (var j = 0u; j < k; j++) {
            g[j] = cells[cell].grad[j];
            if in_chunk {
                d[j] = sums[(rep_local * params.n_cells + cell) * MAX_K + j] / params.samples_f - g[j];
            }
        }
        reduce_cell(lid, wid.x, cell, d, g, in_chunk, cells[cell].cosine != 0u);
    }
}
