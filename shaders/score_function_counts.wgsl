// The score-function draws: for every repetition of a chunk, the category counts of its
// draws [draw_begin, draw_end), added to `counts` (16 per repetition). CPU twin:
// `draws::count_categories`. Draw i of a repetition uses word i % 4 of Philox block i / 4
// on the categorical stream; its category is #{j : u > S_j}, at least the first class with
// nonzero probability (src/draws.rs).
//
// Layout: threads_per_rep (T, a power of two) threads share one repetition, each taking
// blocks lane, lane + T, ... with private cumulative counts ge_j = #{draws : u > S_j} in
// four vec4 registers (no per-draw memory traffic and no atomics); the T lanes are then
// summed in workgroup memory (log2 T barriers per vec4), and lane 0 turns cumulative counts
// into counts with one plain store per category (a repetition has one lane 0).

@group(0) @binding(0) var<uniform> params: SweepParams;
@group(0) @binding(1) var<storage, read> table: PointTable;
@group(0) @binding(2) var<storage, read_write> counts: array<u32>;

// The workgroup size: src/gpu/score_function.rs replaces this line per adapter.
const COUNTS_WG: u32 = 256u;

var<workgroup> lane_counts: array<vec4<u32>, COUNTS_WG>;

fn count_word(word: u32, t0: vec4<u32>, t1: vec4<u32>, t2: vec4<u32>, t3: vec4<u32>, ge: ptr<function, array<vec4<u32>, 4>>) {
    let u = vec4<u32>(word);
    (*ge)[0] += select(vec4<u32>(0u), vec4<u32>(1u), u > t0);
    (*ge)[1] += select(vec4<u32>(0u), vec4<u32>(1u), u > t1);
    (*ge)[2] += select(vec4<u32>(0u), vec4<u32>(1u), u > t2);
    (*ge)[3] += select(vec4<u32>(0u), vec4<u32>(1u), u > t3);
}

@compute @workgroup_size(COUNTS_WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let lanes = params.threads_per_rep;
    let lane = lid % lanes;
    let rep_local = wid.x * (COUNTS_WG / lanes) + lid / lanes;
    let in_chunk = rep_local < params.chunk_reps;
    let t0 = vec4<u32>(table.thresholds[0], table.thresholds[1], table.thresholds[2], table.thresholds[3]);
    let t1 = vec4<u32>(table.thresholds[4], table.thresholds[5], table.thresholds[6], table.thresholds[7]);
    let t2 = vec4<u32>(table.thresholds[8], table.thresholds[9], table.thresholds[10], table.thresholds[11]);
    let t3 = vec4<u32>(table.thresholds[12], table.thresholds[13], table.thresholds[14], table.thresholds[15]);
    var ge: array<vec4<u32>, 4>;
    if in_chunk {
        let rep = params.rep_begin + rep_local;
        let first_block = params.draw_begin / 4u;
        let n_draws = params.draw_end - params.draw_begin;
        let n_blocks = (n_draws + 3u) / 4u;
        let full_blocks = n_draws / 4u;
        // Full blocks, strided over the lanes (b + lanes never passes 2^32: n_blocks < 2^30).
        for (var b = lane; b < full_blocks; b += lanes) {
            let w = philox4x32_10(philox_counter(first_block + b, rep, STREAM_CATEGORICAL, 0u, params.point), params.key);
            count_word(w.x, t0, t1, t2, t3, &ge);
            count_word(w.y, t0, t1, t2, t3, &ge);
            count_word(w.z, t0, t1, t2, t3, &ge);
            count_word(w.w, t0, t1, t2, t3, &ge);
        }
        // The last, partial block (only when draw_end is not a multiple of 4).
        if full_blocks < n_blocks && lane == full_blocks % lanes {
            let w = philox4x32_10(philox_counter(first_block + full_blocks, rep, STREAM_CATEGORICAL, 0u, params.point), params.key);
            let rest = n_draws % 4u;
            count_word(w.x, t0, t1, t2, t3, &ge);
            if rest > 1u {
                count_word(w.y, t0, t1, t2, t3, &ge);
            }
            if rest > 2u {
                count_word(w.z, t0, t1, t2, t3, &ge);
            }
        }
    }
    // Sum the lanes of each repetition, one vec4 of cumulative counts at a time. (The
    // number of draws needs no sum: every repetition of the dispatch has
    // draw_end - draw_begin.)
    var total: array<vec4<u32>, 4>;
    for (var q = 0u; q < 4u; q++) {
        lane_counts[lid] = ge[q];
        workgroupBarrier();
        for (var stride = lanes / 2u; stride > 0u; stride >>= 1u) {
            if lane < stride {
                lane_counts[lid] += lane_counts[lid + stride];
            }
            workgroupBarrier();
        }
        total[q] = lane_counts[lid];
        workgroupBarrier();
    }
    let drawn_total = params.draw_end - params.draw_begin;
    if in_chunk && lane == 0u {
        // count_c = ge_{c-1} - ge_c with ge_{-1} = all draws and ge_{K-1} = 0; every draw
        // passes the thresholds before the first nonzero class (C_j = 0).
        let k = params.k;
        var above = drawn_total;
        for (var c = 0u; c < k; c++) {
            var ge_c = 0u;
            if c < table.first_nonzero {
                ge_c = drawn_total;
            } else if c + 1u < k {
                ge_c = total[c / 4u][c % 4u];
            }
            counts[rep_local * MAX_K + c] += above - ge_c;
            above = ge_c;
        }
    }
}
