#version 450
// y[r][o] = sum_i W[o][i] * x[r][i] (+ bias[o]) for many activation rows (prompt steps, the image path):
// the tiled product. A workgroup computes a tile of BM rows x BN outputs and walks K in chunks of BK = 32
// values (one block of Q8_0/Q4_0, an eighth of a K-quant super-block): it dequantizes the weight chunk once
// into shared memory and loads the activation chunk beside it, so each weight is read once per BM rows
// where matvec.comp reads it once per 8. Each invocation accumulates a TM x TN block of the tile in float32,
// every row's sum in order of K, so a row's result does not depend on the other rows of the product.
// Shared memory and barriers only: nothing depends on the subgroup width. 2 x 8 KiB of shared memory, within
// the 16 KiB every Vulkan device offers. The interface (push constants, bindings) is matvec.comp's.
// Variants (one SPIR-V module each): WTYPE_F32, WTYPE_F16, WTYPE_Q8_0, WTYPE_Q4_0, WTYPE_Q4_K, WTYPE_Q6_K.
#extension GL_GOOGLE_include_directive : require

// Fixed here rather than the host's specialization constant: the tile's arithmetic below assumes 64
// invocations (8 x 8 of them, each with a block of 8 x 8 outputs), and every device runs 128 at least.
#define WG 64u
#define BM 64u  // activation rows of a tile
#define BN 64u  // outputs of a tile
#define BK 32u  // K per step
#define TM 8u   // rows of an invocation's block: rows ty + 8 i
#define TN 8u   // outputs of its block: outputs tx + 8 j
layout(local_size_x = 64, local_size_y = 1, local_size_z = 1) in;

layout(std430, binding = 0) readonly buffer Weights { uint w[]; };
layout(std430, binding = 1) readonly buffer Acts { float x[]; };
layout(std430, binding = 2) readonly buffer Bias { float bias[]; };
layout(std430, binding = 3) writeonly buffer Out { float y[]; };

layout(push_constant) uniform Params {
    uint n_in;       // weights per row (x's row length)
    uint n_out;      // outputs of the whole product (bias entries): the end of this dispatch's outputs
    uint n_rows;     // activation rows
    uint row_bytes;  // bytes of one weight row
    uint out0;       // the first output of this dispatch (large n_out is split over dispatches)
    uint has_bias;
    uint w_row0;     // the output whose weight row is the buffer's first (a tensor split over buffers)
    uint y_stride;   // floats from one row of y to the next
    uint y_col0;     // y's column of output 0 (q, k, v written side by side into one row)
} p;

// The weight chunk as ws[k][n]: invocation t writes column t, so a step's writes are consecutive.
shared float ws[BK * BN];
// The activation chunk as xs[k][m ^ k]: loaded along k (consecutive floats of one row of x per 32
// invocations) and read along m; the xor puts the 32 k of one m in 32 different banks for the loads.
shared float xs[BK * BM];

#include "dequant.glsl"

// The 32 weights k0.. of output o's row (zeros past the row's end: plain types allow any n_in).
void weight_chunk(uint o, uint k0, out float v[32]) {
#ifdef QUANTIZED
    dequant32((o - p.w_row0) * p.row_bytes, k0 / 32u, v);
#else
    const uint base = (o - p.w_row0) * p.n_in;
    for (uint i = 0; i < 32u; i++) {
        const uint k = k0 + i;
#if defined(WTYPE_F32)
        v[i] = k < p.n_in ? uintBitsToFloat(w[base + k]) : 0.0;
#else
        v[i] = k < p.n_in ? whalf(2u * (base + k)) : 0.0;
#endif
    }
#endif
}

void main() {
    const uint t = gl_LocalInvocationID.x;
    const uint tx = t % 8u, ty = t / 8u;
    const uint o0 = p.out0 + gl_WorkGroupID.x * BN;  // the tile's first output
    const uint m0 = gl_WorkGroupID.y * BM;           // its first row
    float acc[TM][TN];
    for (uint i = 0; i < TM; i++)
        for (uint j = 0; j < TN; j++) acc[i][j] = 0.0;

    for (uint k0 = 0; k0 < p.n_in; k0 += BK) {
        // Invocation t dequantizes output o0 + t's 32 weights (zeros for outputs past the end).
        float v[32];
        const uint o = o0 + t;
        if (o < p.n_out) {
            weight_chunk(o, k0, v);
        } else {
            for (uint i = 0; i < 32u; i++) v[i] = 0.0;
        }
        for (uint i = 0; i < BK; i++) ws[i * BN + t] = v[i];
        // The activations: BM x BK floats, 32 invocations along one row's k (zeros past the rows or K).
        for (uint e = t; e < BM * BK; e += WG) {
            const uint m = e / BK, k = e % BK, r = m0 + m, kk = k0 + k;
            xs[k * BM + (m ^ k)] = r < p.n_rows && kk < p.n_in ? x[r * p.n_in + kk] : 0.0;
        }
        barrier();
        for (uint k = 0; k < BK; k++) {
            float a[TM], b[TN];
            for (uint i = 0; i < TM; i++) a[i] = xs[k * BM + ((ty + 8u * i) ^ k)];
            for (uint j = 0; j < TN; j++) b[j] = ws[k * BN + tx + 8u * j];
            for (uint i = 0; i < TM; i++)
                for (uint j = 0; j < TN; j++) acc[i][j] += a[i] * b[j];
        }
        barrier();  // the next step overwrites the chunks
    }

    for (uint i = 0; i < TM; i++) {
        const uint r = m0 + ty + 8u * i;
        if (r >= p.n_rows) continue;
        for (uint j = 0; j < TN; j++) {
            const uint o = o0 + tx + 8u * j;
            if (o >= p.n_out) continue;
            float sum = acc[i][j];
            if (p.has_bias != 0u) sum += bias[o];
            y[r * p.y_stride + p.y_col0 + o] = sum;
        }
    }
}
