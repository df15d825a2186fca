#version 450
// NeoX ("rotate half") rotary embedding, in place, on the first n_rot dims of every head of every row (the
// rest of each head passes through: Phi-2 rotates 32 of 80). Row r is at position pos[r]; cos and sin come
// from the host's tables ([n_pos][n_rot/2], the very values the CPU path uses) so both paths rotate alike.
// One thread per (row, head, pair).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(std430, binding = 0) buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer Pos { int pos[]; };
layout(std430, binding = 2) readonly buffer Cos { float cos_t[]; };
layout(std430, binding = 3) readonly buffer Sin { float sin_t[]; };

layout(push_constant) uniform Params {
    uint rows;
    uint n_head;
    uint head_dim;
    uint n_rot;
    uint row_stride;  // floats from one row to the next
    uint n_pos;       // rows of the cos/sin tables
} p;

void main() {
    const uint half_rot = p.n_rot / 2u;
    const uint t = flat_group() * WG + gl_LocalInvocationID.x;
    if (t >= p.rows * p.n_head * half_rot) return;
    const uint i = t % half_rot, h = (t / half_rot) % p.n_head, r = t / (half_rot * p.n_head);
    const int ps = pos[r];
    if (ps < 0 || uint(ps) >= p.n_pos) return;  // the host checks positions; never read past the table
    const float c = cos_t[uint(ps) * half_rot + i], s = sin_t[uint(ps) * half_rot + i];
    const uint base = r * p.row_stride + h * p.head_dim;
    const float a = x[base + i], b = x[base + i + half_rot];
    x[base + i] = a * c - b * s;
    x[base + i + half_rot] = b * c + a * s;
}
