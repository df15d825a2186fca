#version 450
// The splits of attention.comp's split-over-keys pass, combined: per (row, head), with M the largest of
// the splits' running maxima, o = sum_s exp(m_s - M) acc_s / sum_s exp(m_s - M) sum_s. A split without
// keys has m_s = -FLT_MAX and sum 0, so it weighs nothing. One workgroup per (row, head).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(std430, binding = 0) readonly buffer Part { float part[]; };
layout(std430, binding = 1) writeonly buffer Out { float o[]; };

layout(push_constant) uniform Params {
    uint row0;
    uint rows;
    uint n_head;
    uint head_dim;
    uint n_split;
    uint o_stride;
} p;

void main() {
    const uint g = flat_group();
    if (g >= p.rows * p.n_head) return;
    const uint i = g / p.n_head, h = g % p.n_head, D = p.head_dim, stride = D + 2u;
    const uint base = g * p.n_split * stride;
    float m = -3.402823466e38;
    for (uint s = 0; s < p.n_split; s++) m = max(m, part[base + s * stride + D]);
    float total = 0.0;
    for (uint s = 0; s < p.n_split; s++) total += exp(part[base + s * stride + D] - m) * part[base + s * stride + D + 1u];
    const float inv = 1.0 / total;
    for (uint d = gl_LocalInvocationID.x; d < D; d += WG) {
        float v = 0.0;
        for (uint s = 0; s < p.n_split; s++) v += exp(part[base + s * stride + D] - m) * part[base + s * stride + d];
        o[(p.row0 + i) * p.o_stride + h * D + d] = v * inv;
    }
}
