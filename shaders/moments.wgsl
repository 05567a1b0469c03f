// Shared by the two moments kernels (score_function_moments.wgsl, relaxed_moments.wgsl):
// the workgroup reduction of one estimate per repetition to per-workgroup partial moments.
// Each workgroup of MOMENTS_WG threads holds MOMENTS_WG consecutive repetitions, one per
// thread; for every cell it writes K + 2 partial moments: the K coordinates of the
// deviation d = g_hat - g from the exact gradient, ||d||^2, and 1 - cos(g_hat, g).
// The host finishes them in f64 (src/gpu/moments.rs). Expects `params: SweepParams` and
// `partials: array<PartialMoments>` (read_write) in the including kernel.

const MOMENTS_WG: u32 = 256u;
// Relative size below which an estimate counts as zero for its cosine (keep in sync with
// `stats::ZERO_ESTIMATE`).
const ZERO_ESTIMATE: f32 = 1e-5;

// The reduction runs in rounds of RED_GROUPS groups of four scalars (vec4 lanes): every thread
// stores its values, RED_SEGS threads per group sum interleaved segments of them, then the same
// threads take the workgroup mean and sum the centred powers of their segments (the two-pass
// algorithm: no f32 merge formulas, and three barriers per round instead of a barrier tree
// per scalar). 8 KB of values keep every kernel that includes this file under WebGPU's
// default 16 KB of workgroup memory.
const RED_GROUPS: u32 = 2u;
const RED_SEGS: u32 = 16u;
const RED_SEG_LEN: u32 = MOMENTS_WG / RED_SEGS;
var<workgroup> red_values: array<vec4<f32>, 512>; // [group][thread], RED_GROUPS * MOMENTS_WG
var<workgroup> red_cosine_valid: array<u32, MOMENTS_WG>;
var<workgroup> red_sums: array<vec4<f32>, 32>; // [group][segment], RED_GROUPS * RED_SEGS
var<workgroup> red_cosine_counts: array<u32, RED_SEGS>;
var<workgroup> red_m2: array<vec4<f32>, 32>;
var<workgroup> red_m3: array<vec4<f32>, 32>;
var<workgroup> red_m4: array<vec4<f32>, 32>;

// Scalar q of a thread's cell: the K coordinates of d, ||d||^2, 1 - cos; 0 past K + 2.
fn reduced_scalar(q: u32, d: array<f32, 16>, sq_error: f32, one_minus_cos: f32) -> f32 {
    let k = params.k;
    if q < k {
        return d[q];
    }
    if q == k {
        return sq_error;
    }
    if q == k + 1u {
        return one_minus_cos;
    }
    return 0.0;
}

// Which of the four scalars from q0 on a value of thread (entry) i counts: the repetitions
// of the chunk (the first n_main threads), and for 1 - cos only those with a cosine.
fn lanes_valid(q0: u32, i: u32, n_main: u32) -> vec4<bool> {
    let cos_q = params.k + 1u;
    let in_chunk = i < n_main;
    let cos_ok = red_cosine_valid[i] != 0u;
    var v: vec4<bool>;
    for (var l = 0u; l < 4u; l++) {
        v[l] = select(in_chunk, cos_ok, q0 + l == cos_q);
    }
    return v;
}

// Reduces one cell's estimates (deviation `d` from the exact gradient `g`) over the
// workgroup and writes its K + 2 partial moments. `cosine` says whether the cosine is
// defined (the exact gradient is nonzero), as EstimateMoments::push decides.
fn reduce_cell(lid: u32, group: u32, cell: u32, d: array<f32, 16>, g: array<f32, 16>, in_chunk: bool, cosine: bool) {
    let k = params.k;
    let base = (group * params.n_cells + cell) * (k + 2u);
    var sq_error = 0.0;
    var dot = 0.0;
    var nn = 0.0;
    var ee = 0.0;
    var cross = 0.0;
    for (var i = 0u; i < k; i++) {
        let est = d[i] + g[i];
        sq_error += d[i] * d[i];
        dot += est * g[i];
        nn += est * est;
        ee += g[i] * g[i];
        // Lagrange: |e|^2 |g|^2 - (e.g)^2 = sum_{i<j} (e_i g_j - e_j g_i)^2, and with
        // e = g + d each term is (d_i g_j - d_j g_i)^2: no cancellation near cos = 1.
        for (var j = i + 1u; j < k; j++) {
            let t = d[i] * g[j] - d[j] * g[i];
            cross += t * t;
        }
    }
    let norm = sqrt(nn) * sqrt(ee);
    var one_minus_cos = 1.0 - dot / norm;
    if dot > 0.0 {
        one_minus_cos = cross / (norm * (norm + dot));
    }
    let has_direction = nn > ZERO_ESTIMATE * ZERO_ESTIMATE * (sq_error + ee);
    red_cosine_valid[lid] = u32(in_chunk && cosine && has_direction);
    // The chunk's repetitions are the workgroup's first n_main threads.
    let n_main = min(MOMENTS_WG, max(params.chunk_reps, group * MOMENTS_WG) - group * MOMENTS_WG);
    let n_groups = (k + 5u) / 4u;
    for (var first = 0u; first < n_groups; first += RED_GROUPS) {
        // 1. Every thread stores its values (0 where they do not count).
        for (var gi = 0u; gi < RED_GROUPS; gi++) {
            let q0 = 4u * (first + gi);
            var v = vec4<f32>(0.0);
            for (var l = 0u; l < 4u; l++) {
                v[l] = reduced_scalar(q0 + l, d, sq_error, one_minus_cos);
            }
            red_values[gi * MOMENTS_WG + lid] = select(vec4<f32>(0.0), v, lanes_valid(q0, lid, n_main));
        }
        workgroupBarrier();
        // 2. Segment sums; segment s holds entries s, s + RED_SEGS, ... (no bank conflicts).
        let grp = lid / RED_SEGS;
        let seg = lid % RED_SEGS;
        let worker = grp < RED_GROUPS;
        if worker {
            var sum = vec4<f32>(0.0);
            var cos_count = 0u;
            for (var m = 0u; m < RED_SEG_LEN; m++) {
                let i = seg + m * RED_SEGS;
                sum += red_values[grp * MOMENTS_WG + i];
                cos_count += red_cosine_valid[i];
            }
            red_sums[lid] = sum;
            if grp == 0u {
                red_cosine_counts[seg] = cos_count;
            }
        }
        workgroupBarrier();
        // 3. The workgroup's means, then the centred power sums of each segment.
        var n = vec4<f32>(0.0);
        var mean = vec4<f32>(0.0);
        let q0 = 4u * (first + grp);
        if worker {
            var total = vec4<f32>(0.0);
            var cos_n = 0u;
            for (var s = 0u; s < RED_SEGS; s++) {
                total += red_sums[grp * RED_SEGS + s];
                cos_n += red_cosine_counts[s];
            }
            for (var l = 0u; l < 4u; l++) {
                n[l] = f32(select(n_main, cos_n, q0 + l == k + 1u));
            }
            mean = select(vec4<f32>(0.0), total / max(n, vec4<f32>(1.0)), n > vec4<f32>(0.0));
            var c2 = vec4<f32>(0.0);
            var c3 = vec4<f32>(0.0);
            var c4 = vec4<f32>(0.0);
            for (var m = 0u; m < RED_SEG_LEN; m++) {
                let i = seg + m * RED_SEGS;
                let c = select(vec4<f32>(0.0), red_values[grp * MOMENTS_WG + i] - mean, lanes_valid(q0, i, n_main));
                let cc = c * c;
                c2 += cc;
                c3 += cc * c;
                c4 += cc * cc;
            }
            red_m2[lid] = c2;
            red_m3[lid] = c3;
            red_m4[lid] = c4;
        }
        workgroupBarrier();
        // 4. One thread per group writes its four scalars' partial moments.
        if worker && seg == 0u {
            var m2 = vec4<f32>(0.0);
            var m3 = vec4<f32>(0.0);
            var m4 = vec4<f32>(0.0);
            for (var s = 0u; s < RED_SEGS; s++) {
                m2 += red_m2[grp * RED_SEGS + s];
                m3 += red_m3[grp * RED_SEGS + s];
                m4 += red_m4[grp * RED_SEGS + s];
            }
            for (var l = 0u; l < 4u; l++) {
                if q0 + l < k + 2u {
                    partials[base + q0 + l] = PartialMoments(n[l], mean[l], m2[l], m3[l], m4[l]);
                }
            }
        }
    }
}
