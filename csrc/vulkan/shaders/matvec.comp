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
    uint n_out;      // y's row length
    uint n_rows;     // activation rows
    uint row_bytes;  // bytes of one weight row
    uint out0;       // the first output of this dispatch (large n_out is split over dispatches)
    uint has_bias;
} p;

shared float red[NR * WG];

uint wbyte(uint b) { return (w[b >> 2] >> ((b & 3u) * 8u)) & 0xFFu; }
// A half at an even byte offset (every GGUF block keeps its halves 2-byte aligned).
float whalf(uint b) { return unpackHalf2x16((w[b >> 2] >> ((b & 2u) * 8u)) & 0xFFFFu).x; }
int wint8(uint b) { return int(wbyte(b) ^ 0x80u) - 128; }

#if defined(WTYPE_Q8_0) || defined(WTYPE_Q4_0) || defined(WTYPE_Q4_K) || defined(WTYPE_Q6_K)
#define QUANTIZED 1
// The 32 weights of unit u (32 consecutive values) of the row starting at byte `row`.
void dequant32(uint row, uint u, out float v[32]) {
#if defined(WTYPE_Q8_0)
    // d (half), 32 x int8: x = d * q
    const uint bo = row + u * 34u;
    const float d = whalf(bo);
    for (uint i = 0; i < 32u; i++) v[i] = d * float(wint8(bo + 2u + i));
#elif defined(WTYPE_Q4_0)
    // d (half), 16 bytes: byte j holds value j (low nibble) and j+16 (high): x = d * (q - 8)
    const uint bo = row + u * 18u;
    const float d = whalf(bo);
    for (uint j = 0; j < 16u; j++) {
        const uint q = wbyte(bo + 2u + j);
        v[j] = d * (float(q & 15u) - 8.0);
        v[j + 16u] = d * (float(q >> 4) - 8.0);
    }
#elif defined(WTYPE_Q4_K)
    // 256 values in 144 bytes: d, dmin (halves), 12 bytes of 6-bit scales and mins, 128 bytes of nibbles.
    // Sub-block j (32 values) of a super-block: chunk j/2's 32 bytes, low nibbles for even j, high for odd.
    const uint bo = row + (u >> 3) * 144u, j = u & 7u;
    const float d = whalf(bo), dmin = whalf(bo + 2u);
    const uint s = bo + 4u;
    uint sc, m;
    if (j < 4u) {
        sc = wbyte(s + j) & 63u;
        m = wbyte(s + j + 4u) & 63u;
    } else {
        sc = (wbyte(s + j + 4u) & 15u) | ((wbyte(s + j - 4u) >> 6) << 4);
        m = (wbyte(s + j + 4u) >> 4) | ((wbyte(s + j) >> 6) << 4);
    }
    const float ds = d * float(sc), dm = dmin * float(m);
    const uint qs = bo + 16u + (j >> 1) * 32u, shift = (j & 1u) * 4u;
    for (uint l = 0; l < 32u; l++) v[l] = ds * float((wbyte(qs + l) >> shift) & 15u) - dm;
#elif defined(WTYPE_Q6_K)
    // 256 values in 210 bytes: ql[128] (low 4 bits), qh[64] (high 2 bits), 16 int8 scales, d (half).
    // Half n = j/4 (128 values) uses ql[64n..], qh[32n..], scales[8n..]; quarter q = j%4 within it.
    const uint bo = row + (u >> 3) * 210u, j = u & 7u, n = j >> 2, q = j & 3u;
    const float d = whalf(bo + 208u);
    const uint ql = bo + 64u * n + 32u * (q & 1u), qh = bo + 128u + 32u * n, sc = bo + 192u + 8u * n + 2u * q;
    const uint lshift = (q >> 1) * 4u, hshift = 2u * q;
    for (uint l = 0; l < 32u; l++) {
        const uint val = ((wbyte(ql + l) >> lshift) & 15u) | (((wbyte(qh + l) >> hshift) & 3u) << 4);
        v[l] = d * float(wint8(sc + (l >> 4))) * (float(val) - 32.0);
    }
#endif
}
#endif

void main() {
    const uint tid = gl_LocalInvocationID.x;
    const uint o = p.out0 + gl_WorkGroupID.x;
    const uint r0 = gl_WorkGroupID.y * NR;
    const uint nr = min(uint(NR), p.n_rows - r0);
    float acc[NR];
    for (uint r = 0; r < NR; r++) acc[r] = 0.0;

#ifdef QUANTIZED
    const uint row = o * p.row_bytes;
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
        const float wv = uintBitsToFloat(w[o * p.n_in + i]);
#else
        const float wv = whalf(2u * (o * p.n_in + i));
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
        y[(r0 + tid) * p.n_out + o] = sum;
    }
}
