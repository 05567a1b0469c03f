// The relaxed estimates' moments: each thread reads REPS_PER_THREAD consecutive
// repetitions' sums over the S draws of every relaxed cell (relaxed_draws.wgsl), divides by
// S, and the workgroup reduces the deviations from the exact gradient to one partial of
// shifted power sums per cell (moments.wgsl). CPU twin: the `Family::Relaxed` arm of
// `cpu_point` in src/engine.rs.

@group(0) @binding(0) var<uniform> params: SweepParams;
@group(0) @binding(1) var<storage, read> cells: array<RelaxedCell>;
@group(0) @binding(2) var<storage, read> sums: array<f32>;
@group(0) @binding(3) var<storage, read_write> partials: array<f32>;


@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let k = kdim();
    let first_rep = wid.x * REPS_PER_GROUP + lid * REPS_PER_THREAD;
    for (var cell = 0u; cell < params.n_cells; cell++) {
        let base = (wid.x * params.n_cells + cell) * partial_stride();
        let cosine = cells[cell].cosine != 0u;
        var g: array<f32, 16>;
        for (var j = 0u; j < k; j++) {
            g[j] = cells[cell].grad[j];
        }
        var acc: PowerSums;
        var shift: array<f32, 18>;
        for (var i = 0u; i < REPS_PER_THREAD; i++) {
            let rep_local = first_rep + i;
            let valid = rep_local < params.chunk_reps;
            var d: array<f32, 16>;
            if valid {
                for (var j = 0u; j < k; j++) {
                    d[j] = sums[(rep_local * params.n_cells + cell) * MAX_K + j] / params.samples_f - g[j];
                }
            }
            let vals = estimate_values(d, g, cosine);
            if i == 0u {
                shift = share_shifts(lid, base, vals, valid);
            }
            accumulate(&acc, vals, shift, valid);
        }
        reduce_sums(lid, base, acc);
    }
}
