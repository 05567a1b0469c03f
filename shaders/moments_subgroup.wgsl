// The subgroup variant of moments.wgsl, for adapters with subgroup operations of one fixed
// size (src/gpu/moments.rs `MomentsReduction`): the same interface (`MOMENTS_WG`,
// `reduce_cell`) and the same partial moments per workgroup, cell and scalar, reduced with
// two workgroup barriers per cell instead of a barrier tree per scalar.
//
// Each subgroup merges its lanes' moments of every scalar in registers, by a butterfly of
// `subgroupShuffleXor` (lane i and lane i ^ m both merge (lower lane, higher lane), so the
// two get the same bits); its first lane writes the subgroup's K + 2 moments to workgroup
// memory; after one barrier, thread q < K + 2 merges scalar q's subgroups in order and
// writes it. Merges are Chan's f32 ones as in moments.wgsl, in another order, so the
// partials agree with the tree's to f32 rounding. The CPU twin is the same as moments.wgsl's:
// the host finishes the partials in f64 (src/gpu/moments.rs).
//
// SUBGROUP_SIZE is replaced by the adapter's subgroup size (8 to 128, dividing MOMENTS_WG);
// lane = lid % SUBGROUP_SIZE assumes subgroups of consecutive local invocation indices, as
// every Vulkan driver lays out a one-dimensional workgroup of full subgroups (the tests
// compare this variant with the CPU on every adapter that has it).

const MOMENTS_WG: u32 = 256u;
const SUBGROUP_SIZE: u32 = 32u;
const SUBGROUPS: u32 = MOMENTS_WG / SUBGROUP_SIZE;

// Subgroup s's moments of scalar q at [q * SUBGROUPS + s] (MAX_K + 2 scalars).
var<workgroup> subgroup_n: array<f32, (MAX_K + 2u) * SUBGROUPS>;
var<workgroup> subgroup_rest: array<vec4<f32>, (MAX_K + 2u) * SUBGROUPS>;

// The moments of `x` over the subgroup's lanes where `valid`, in every lane.
fn subgroup_moments(lane: u32, x: f32, valid: bool) -> PartialMoments {
    var m = moments_of(x, valid);
    for (var mask = 1u; mask < SUBGROUP_SIZE; mask <<= 1u) {
        let other = PartialMoments(
            subgroupShuffleXor(m.n, mask),
            subgroupShuffleXor(m.mean, mask),
            subgroupShuffleXor(m.m2, mask),
            subgroupShuffleXor(m.m3, mask),
            subgroupShuffleXor(m.m4, mask),
        );
        if (lane & mask) == 0u {
            m = moments_merge(m, other);
        } else {
            m = moments_merge(other, m);
        }
    }
    return m;
}

fn keep_subgroup_moments(lane: u32, subgroup: u32, q: u32, m: PartialMoments) {
    if lane == 0u {
        subgroup_n[q * SUBGROUPS + subgroup] = m.n;
        subgroup_rest[q * SUBGROUPS + subgroup] = vec4<f32>(m.mean, m.m2, m.m3, m.m4);
    }
}

// Reduces one cell's estimates (deviation `d` from the exact gradient `g`) over the
// workgroup and writes its K + 2 partial moments, as moments.wgsl's `reduce_cell`.
fn reduce_cell(lid: u32, group: u32, cell: u32, d: array<f32, 16>, g: array<f32, 16>, in_chunk: bool, cosine: bool) {
    let k = params.k;
    let lane = lid % SUBGROUP_SIZE;
    let subgroup = lid / SUBGROUP_SIZE;
    let base = (group * params.n_cells + cell) * (k + 2u);
    let scalars = estimate_scalars(d, g, k);
    for (var q = 0u; q < k; q++) {
        keep_subgroup_moments(lane, subgroup, q, subgroup_moments(lane, d[q], in_chunk));
    }
    keep_subgroup_moments(lane, subgroup, k, subgroup_moments(lane, scalars.sq_error, in_chunk));
    let valid_cos = in_chunk && cosine && scalars.has_direction;
    let cos_moments = subgroup_moments(lane, scalars.one_minus_cos, valid_cos);
    keep_subgroup_moments(lane, subgroup, k + 1u, cos_moments);
    workgroupBarrier();
    if lid < k + 2u {
        var m = PartialMoments(0.0, 0.0, 0.0, 0.0, 0.0);
        for (var s = 0u; s < SUBGROUPS; s++) {
            let r = subgroup_rest[lid * SUBGROUPS + s];
            m = moments_merge(m, PartialMoments(subgroup_n[lid * SUBGROUPS + s], r.x, r.y, r.z, r.w));
        }
        partials[base + lid] = m;
    }
    workgroupBarrier();
}
