#version 450
// y[r][o] = sum_i W[o][i] * x[r][i] (+ bias[o]) for up to NR activation rows per workgroup: decode's
// mat-vec (one row) and the few-rows product, accumulated in float32. W is read straight from the GGUF's
// bytes (rows of blocks, row_bytes apart), through a 32-bit view: no 8- or 16-bit storage is needed, and
// blocks of 18 or 34 bytes need no alignment. One workgroup per output o; each thread takes blocks of 32
// weights in turn and the workgroup sums its partial dot products in shared memory.
// Variants (one SPIR-V module each): WTYPE_F32, WTYPE_F16, WTYPE_Q8_0, WTYPE_Q4_0, WTYPE_Q4_K, WTYPE_Q6_K.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

#define NR 8

layout(std430, binding = 0) readonly buffer Weights { uint w[]; };
layout(std430, binding = 1) readonly buffer Acts { float x[]; };
layout(std430, binding = 2) readonly buffer Bias { float bias[]; };
layout(std430, binding = 3) writeonly buffer Out { float y[]; };

layout(push_constant) uniform Params {
    uint n_in;       // weights per row (x's row length)
    uint n_out;      // outputs of the whole product (bias entries)
    uint n_rows;     // activation rows
    uint row_bytes;  // bytes of one weight row
    uint out0;       // the first output of this dispatch (large n_out is split over dispatches)
    uint has_bias;
    uint w_row0;     // the output whose weight row is the buffer's first (a tensor split over buffers)
    uint y_stride;   // floats from one row of y to the next
    uint y_col0;     // y's column of output 0 (q, k, v written side by side into one row)
} p;

shared float red[NR * WG];

#include "dequant.glsl"

void main() {
    const uint tid = gl_LocalInvocationID.x;
    const uint o = p.out0 + gl_WorkGroupID.x;
    const uint r0 = gl_WorkGroupID.y * NR;
    const uint nr = min(uint(NR), p.n_rows - r0);
    float acc[NR];
    for (uint r = 0; r < NR; r++) acc[r] = 0.0;

#ifdef QUANTIZED
    const uint row = (o - p.w_row0) * p.row_bytes;
    float v[32];
    for (uint u = tid; u < p.n_in / 32u; u += WG) {
        dequant32(row, u, v);
        for (uint r = 0; r < nr; r++) {
            const uint xb = (r0 + r) * p.n_in + u * 32u;
            float s = 0.0;
            for (uint i = 0; i < 32u; i++) s += v[i] * x[xb + i];
            acc[r] += s;
        }
    }
#else
    // Plain weights: consecutive threads read consecutive weights.
    for (uint i = tid; i < p.n_in; i += WG) {
#if defined(WTYPE_F32)
        const float wv = uintBitsToFloat(w[(o - p.w_row0) * p.n_in + i]);
#else
        const float wv = whalf(2u * ((o - p.w_row0) * p.n_in + i));
#endif
        for (uint r = 0; r < nr; r++) acc[r] += wv * x[(r0 + r) * p.n_in + i];
    }
#endif

    for (uint r = 0; r < NR; r++) red[r * WG + tid] = acc[r];
    barrier();
    for (uint s = WG / 2u; s > 0u; s >>= 1) {
        if (tid < s)
            for (uint r = 0; r < NR; r++) red[r * WG + tid] += red[r * WG + tid + s];
        barrier();
    }
    if (tid < nr) {
        float sum = red[tid * WG];
        if (p.has_bias != 0u) sum += bias[o];
        y[(r0 + tid) * p.y_stride + p.y_col0 + o] = sum;
    }
}
