#version 450
// In-place softmax of each row (one workgroup per row): the maximum, then the sum of exp(x - max), then the
// division, every sum in shared memory.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(std430, binding = 0) buffer X { float x[]; };
layout(push_constant) uniform Params { uint n; uint rows; } p;

shared float red[WG];

void main() {
    const uint tid = gl_LocalInvocationID.x;
    const uint row = flat_group();
    if (row >= p.rows) return;  // uniform over the workgroup
    const uint base = row * p.n;
    float m = -3.402823466e38;
    for (uint i = tid; i < p.n; i += WG) m = max(m, x[base + i]);
    red[tid] = m;
    barrier();
    for (uint s = WG / 2u; s > 0u; s >>= 1) {
        if (tid < s) red[tid] = max(red[tid], red[tid + s]);
        barrier();
    }
    m = red[0];
    barrier();
    float sum = 0.0;
    for (uint i = tid; i < p.n; i += WG) {
        const float e = exp(x[base + i] - m);
        x[base + i] = e;
        sum += e;
    }
    red[tid] = sum;
    barrier();
    for (uint s = WG / 2u; s > 0u; s >>= 1) {
        if (tid < s) red[tid] += red[tid + s];
        barrier();
    }
    const float inv = 1.0 / red[0];
    for (uint i = tid; i < p.n; i += WG) x[base + i] *= inv;
}
