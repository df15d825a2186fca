#version 450
// Row norms, one workgroup per row, float32 sums in shared memory:
//   LAYER_NORM: y = (x - mean) / sqrt(var + eps) * w + b   (w, b optional)
//   RMS_NORM:   y = x / sqrt(mean(x^2) + eps) * w          (w optional)
// Row r starts at off + (r / per) * stride + (r % per) * n, so the heads of q or k inside the rows of a
// [q | k | v] buffer are normed in place (per = heads, stride = the row length); y may be x.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer Wt { float wt[]; };
layout(std430, binding = 2) readonly buffer Bs { float bs[]; };
layout(std430, binding = 3) writeonly buffer Y { float y[]; };

layout(push_constant) uniform Params {
    uint n;
    uint rows;
    float eps;
    uint has_w;
    uint has_b;
    uint per;     // rows per group
    uint stride;  // floats from one group to the next
    uint off;     // the first row's offset
} p;

shared float red[WG];

float workgroup_sum(float v) {
    const uint tid = gl_LocalInvocationID.x;
    red[tid] = v;
    barrier();
    for (uint s = WG / 2u; s > 0u; s >>= 1) {
        if (tid < s) red[tid] += red[tid + s];
        barrier();
    }
    const float total = red[0];
    barrier();  // red is reused by the next sum
    return total;
}

void main() {
    const uint tid = gl_LocalInvocationID.x;
    const uint row = flat_group();
    if (row >= p.rows) return;  // uniform over the workgroup: no barrier is skipped by part of it
    const uint base = p.off + (row / p.per) * p.stride + (row % p.per) * p.n;
#ifdef LAYER_NORM
    float s = 0.0;
    for (uint i = tid; i < p.n; i += WG) s += x[base + i];
    const float mean = workgroup_sum(s) / float(p.n);
    float v = 0.0;
    for (uint i = tid; i < p.n; i += WG) {
        const float d = x[base + i] - mean;
        v += d * d;
    }
    const float inv = 1.0 / sqrt(workgroup_sum(v) / float(p.n) + p.eps);
    for (uint i = tid; i < p.n; i += WG) {
        float o = (x[base + i] - mean) * inv;
        if (p.has_w != 0u) o *= wt[i];
        if (p.has_b != 0u) o += bs[i];
        y[base + i] = o;
    }
#else
    float s = 0.0;
    for (uint i = tid; i < p.n; i += WG) s += x[base + i] * x[base + i];
    const float inv = 1.0 / sqrt(workgroup_sum(s) / float(p.n) + p.eps);
    for (uint i = tid; i < p.n; i += WG) y[base + i] = x[base + i] * inv * (p.has_w != 0u ? wt[i] : 1.0);
#endif
}
