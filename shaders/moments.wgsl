// Shared by the two moments kernels (score_function_moments.wgsl, relaxed_moments.wgsl):
// the workgroup reduction of one estimate per repetition to per-workgroup partial moments.
// Each workgroup of MOMENTS_WG threads holds MOMENTS_WG consecutive repetitions, one per
// thread; for every cell it writes K + 2 partial moments: the K coordinates of the
// deviation d = g_hat - g from the exact gradient, ||d||^2, and 1 - cos(g_hat, g).
// The host finishes them in f64 (src/gpu/moments.rs). Expects `params: SweepParams` and
// `partials: array<PartialMoments>` (read_write) in the including kernel.

const MOMENTS_WG: u32 = 256u;

var<workgroup> reduce_n: array<f32, MOMENTS_WG>;
var<workgroup> reduce_rest: array<vec4<f32>, MOMENTS_WG>;

// The moments of `x` over the workgroup's threads where `valid`; the result is in thread 0.
fn workgroup_moments(lid: u32, x: f32, valid: bool) -> PartialMoments {
    let own = moments_of(x, valid);
    reduce_n[lid] = own.n;
    reduce_rest[lid] = vec4<f32>(own.mean, own.m2, own.m3, own.m4);
    workgroupBarrier();
    for (var stride = MOMENTS_WG / 2u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            let a = reduce_rest[lid];
            let b = reduce_rest[lid + stride];
            let merged = moments_merge(
                PartialMoments(reduce_n[lid], a.x, a.y, a.z, a.w),
                PartialMoments(reduce_n[lid + stride], b.x, b.y, b.z, b.w),
            );
            reduce_n[lid] = merged.n;
            reduce_rest[lid] = vec4<f32>(merged.mean, merged.m2, merged.m3, merged.m4);
        }
        workgroupBarrier();
    }
    let n = reduce_n[0];
    let r = reduce_rest[0];
    workgroupBarrier();
    return PartialMoments(n, r.x, r.y, r.z, r.w);
}

// Reduces one cell's estimates (deviation `d` from the exact gradient `g`) over the
// workgroup and writes its K + 2 partial moments. `cosine` says whether the cosine is
// defined (the exact gradient is nonzero), as EstimateMoments::push decides.
fn reduce_cell(lid: u32, group: u32, cell: u32, d: array<f32, 16>, g: array<f32, 16>, in_chunk: bool, cosine: bool) {
    let k = params.k;
    let base = (group * params.n_cells + cell) * (k + 2u);
    let scalars = estimate_scalars(d, g, k);
    for (var q = 0u; q < k; q++) {
        let m = workgroup_moments(lid, d[q], in_chunk);
        if lid == 0u {
            partials[base + q] = m;
        }
    }
    let m_sq = workgroup_moments(lid, scalars.sq_error, in_chunk);
    let valid_cos = in_chunk && cosine && scalars.has_direction;
    let m_cos = workgroup_moments(lid, scalars.one_minus_cos, valid_cos);
    if lid == 0u {
        partials[base + k] = m_sq;
        partials[base + k + 1u] = m_cos;
    }
}
