// A test kernel: the four Philox4x32-10 words of each given counter under the given key.
// CPU twin: `philox::philox4x32_10` (tests/gpu.rs checks the known-answer vectors).

@group(0) @binding(0) var<storage, read> counters: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> key: vec2<u32>;
@group(0) @binding(2) var<storage, read_write> words: array<vec4<u32>>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if gid.x < arrayLength(&counters) {
        words[gid.x] = philox4x32_10(counters[gid.x], key);
    }
}
