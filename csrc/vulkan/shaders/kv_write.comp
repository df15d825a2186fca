#version 450
// Keys and values of a run of rows of one sequence into its cache slot, converted to F16: row i of the run
// (row row0 + i of the [q | k | v] buffer) goes to position p0 + i, p0 read from the step's positions (pos,
// int32 per row), so a recorded step replays at any position. The slot's buffer holds one layer:
// keys [n_ctx][kv_dim] then values [n_ctx][kv_dim], two halves per 32-bit word (kv_dim is even, so a
// position never shares a word with another and each thread writes whole words of its own).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(std430, binding = 0) readonly buffer Qkv { float qkv[]; };
layout(std430, binding = 1) writeonly buffer Kv { uint kv[]; };
layout(std430, binding = 2) readonly buffer Pos { int pos[]; };

layout(push_constant) uniform Params {
    uint row0;
    uint rows;
    uint qkv_stride;  // floats per row of the [q | k | v] buffer
    uint k_col;       // the column of k in a row (v follows at k_col + kv_dim)
    uint kv_dim;
    uint n_ctx;
} p;

void main() {
    const uint half_dim = p.kv_dim / 2u;
    const uint t = flat_group() * WG + gl_LocalInvocationID.x;
    if (t >= 2u * p.rows * half_dim) return;
    const uint j = t % half_dim, i = (t / half_dim) % p.rows, which = t / (half_dim * p.rows);  // 0: k, 1: v
    const uint p0 = uint(pos[p.row0]);
    if (p0 + i >= p.n_ctx) return;  // the host checks positions; never write past the slot
    const uint src = (p.row0 + i) * p.qkv_stride + p.k_col + which * p.kv_dim + 2u * j;
    kv[which * p.n_ctx * half_dim + (p0 + i) * half_dim + j] = packHalf2x16(vec2(qkv[src], qkv[src + 1u]));
}
