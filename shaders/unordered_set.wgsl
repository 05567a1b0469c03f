// The unordered-set estimator's sets and losses (estimators::Conditional::UnorderedSet, Kool
// et al. 2020; src/gpu/unordered_set.rs has the design): for every repetition, variable l and
// category c, the Gumbel key a_lc + G_c with G_c = -ln(-ln u) from uniform l K + c of the
// repetition's auxiliary noise of draw 0 (Philox block [0, rep, AUX << 16 | (lK + c) / 4,
// point], word (lK + c) % 4, as estimators::conditional::uniform), and its rank among the K
// keys of variable l (larger keys first, equal keys by category, as the CPU's stable sort).
// The k = min(S, K) categories of rank below k are the set; each writes itself at its rank
// and, for every set group g (a loss), its centred loss with variable l of draw 0 set to c,
//   E[g, l, rank] = f(z_{0,-l}, c) - m,
// m = the group's constant near E f (the shift of its signal group, see generic_signals.wgsl).
// unordered_set_terms.wgsl reads them. CPU twin: the set (`draw_set`) and losses of
// `UnorderedSet::estimate` (src/estimators/unordered_set.rs), in f64 (the keys here are f32:
// a set differs only where two keys agree to f32 rounding).
//
// One thread per (repetition, variable, category), category fastest: K keys each (K / 4
// Philox blocks), and one loss evaluation per set member and group (the estimator's L k).
// Output: members[(rep * L + l) * k + rank] = c,
//         set_losses[((rep * G + g) * L + l) * k + rank] = E.

@group(0) @binding(0) var<uniform> params: GenericParams;
@group(0) @binding(1) var<storage, read> groups: array<SignalGroup>;
@group(0) @binding(2) var<storage, read> data: array<f32>;
@group(0) @binding(3) var<storage, read> z: array<u32>;
// The signal group (loss and shift) of each set group.
@group(0) @binding(4) var<storage, read> set_groups: array<u32>;
// The logits (L*K), then what unordered_set_terms.wgsl reads.
@group(0) @binding(5) var<storage, read> set_data: array<f32>;
@group(0) @binding(6) var<storage, read_write> members: array<u32>;
@group(0) @binding(7) var<storage, read_write> set_losses: array<f32>;

// The auxiliary noise's Philox stream (keep in sync with philox::STREAM_AUX).
const STREAM_AUX: u32 = 4u;

// Key of category c of variable v in repetition rep (every thread computes every key alike).
fn key_at(words: vec4<u32>, n: u32) -> f32 {
    return set_data[n] + gumbel(words[n % 4u]);
}

fn aux_words(rep: u32, n: u32) -> vec4<u32> {
    return philox4x32_10(philox_counter(0u, rep, STREAM_AUX, n / 4u, params.point), params.key);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let index = flat_index(gid);
    let l = params.l;
    let k = params.k;
    if index >= params.chunk_reps * l * k {
        return;
    }
    let c = index % k;
    let v = (index / k) % l;
    let rep_local = index / (k * l);
    let rep = params.rep_begin + rep_local;
    let first = v * k;
    let own = key_at(aux_words(rep, first + c), first + c);
    var rank = 0u;
    var lane = 0xffffffffu;
    var words = vec4<u32>(0u);
    for (var c2 = 0u; c2 < k; c2++) {
        let n = first + c2;
        if n / 4u != lane {
            lane = n / 4u;
            words = aux_words(rep, n);
        }
        if c2 == c {
            continue;
        }
        let key = key_at(words, n);
        if key > own || (key == own && c2 < c) {
            rank++;
        }
    }
    let size = params.set_size;
    if rank >= size {
        return;
    }
    members[(rep_local * l + v) * size + rank] = c;
    // Draw 0's categories.
    let row = rep_local * params.samples * l;
    for (var g = 0u; g < params.n_sets; g++) {
        let group = groups[set_groups[g]];
        let lv = loss_at(group, row, v, c);
        set_losses[((rep_local * params.n_sets + g) * l + v) * size + rank] = (lv.x - group.shift) - lv.y;
    }
}
