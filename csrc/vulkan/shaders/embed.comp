#version 450
// The embedding gather: x[r] = row tok[r] of the token embedding, dequantized from its GGUF blocks as the
// mat-vec reads them. The embedding may be split by rows over several buffers (a tensor larger than the
// device's storage-buffer range): this dispatch holds rows [row0, row0 + n_rows) and skips the rows of x
// whose token is elsewhere, as it skips rows that are embeddings (tok < 0), which the host wrote.
// One workgroup per row of x. Variants: WTYPE_F32, WTYPE_F16, WTYPE_Q8_0, WTYPE_Q4_0, WTYPE_Q4_K, WTYPE_Q6_K.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(std430, binding = 0) readonly buffer Weights { uint w[]; };
layout(std430, binding = 1) readonly buffer Tok { int tok[]; };
layout(std430, binding = 2) buffer X { float x[]; };

layout(push_constant) uniform Params {
    uint n_embd;
    uint rows;       // rows of x
    uint row_bytes;  // bytes of one embedding row
    uint row0;       // the first embedding row this buffer holds
    uint n_held;     // how many it holds
} p;

#include "dequant.glsl"

void main() {
    const uint r = flat_group();
    if (r >= p.rows) return;
    const int t = tok[r];
    if (t < 0 || uint(t) < p.row0 || uint(t) >= p.row0 + p.n_held) return;
    const uint er = uint(t) - p.row0, xb = r * p.n_embd;
#ifdef QUANTIZED
    float v[32];
    for (uint u = gl_LocalInvocationID.x; u < p.n_embd / 32u; u += WG) {
        dequant32(er * p.row_bytes, u, v);
        for (uint i = 0; i < 32u; i++) x[xb + u * 32u + i] = v[i];
    }
#else
    for (uint i = gl_LocalInvocationID.x; i < p.n_embd; i += WG) {
#if defined(WTYPE_F32)
        x[xb + i] = uintBitsToFloat(w[er * p.n_embd + i]);
#else
        x[xb + i] = whalf(2u * (er * p.n_embd + i));
#endif
    }
#endif
}
