// GGML quantization blocks (byte-compatible with GGUF files) and the scalar reference
// quantizers / dequantizers.
//
//   Q8_0  32 values  34 bytes   fp16 d; int8 qs[32]                        x = d*q
//   Q4_0  32 values  18 bytes   fp16 d; u8 qs[16] (j: low nibble, j+16: high)  x = d*(q-8)
//   Q4_1  32 values  20 bytes   fp16 d, m; u8 qs[16] (as Q4_0)              x = d*q + m
//   Q5_0  32 values  22 bytes   fp16 d; u8 qh[4] (bit j: 5th bit of value j); u8 qs[16] (as Q4_0)
//                                                                          x = d*(q-16)
//   Q5_1  32 values  24 bytes   fp16 d, m; u8 qh[4]; u8 qs[16] (as Q5_0)    x = d*q + m
//   Q4_K 256 values 144 bytes   fp16 d, dmin; u8 scales[12] (8 x 6-bit scale, 8 x 6-bit min);
//                               u8 qs[128]                                 x = d*sc*q - dmin*m
//   Q5_K 256 values 176 bytes   fp16 d, dmin; u8 scales[12] (as Q4_K); u8 qh[32] (bit j of byte l:
//                               5th bit of value 32j+l); u8 qs[128] (as Q4_K)   x = d*sc*q - dmin*m
//   Q2_K 256 values  84 bytes   u8 scales[16] (sub-block j of 16: 4-bit scale | 4-bit min << 4);
//                               u8 qs[64] (as Q3_K's qs); fp16 d, dmin     x = d*sc*q - dmin*m
//   Q3_K 256 values 110 bytes   u8 hmask[32] (bit j of byte l: 3rd bit of value 32j + l); u8 qs[64]
//                               (2 low bits; chunk c of 32 bytes: values 128c+32s+l at bits 2s);
//                               u8 scales[12] (16 x 6-bit scale + 32); fp16 d   x = d*(sc-32)*(q-4)
//   Q6_K 256 values 210 bytes   u8 ql[128]; u8 qh[64]; int8 scales[16]; fp16 d   x = d*sc*(q-32)
//   IQ4_NL 32 values 18 bytes   fp16 d; u8 qs[16] (as Q4_0)                 x = d*kIQ4NL[q]
//   IQ4_XS 256 values 136 bytes fp16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128] (sub-block j of 32:
//                               bytes 16j..16j+15, values 32j+l low nibble, 32j+16+l high)
//                               x = d*(ls_j - 32)*kIQ4NL[q], ls_j 6 bits (iq4xs_scale)
//   Q8_K 256 values 292 bytes   f32 d; int8 qs[256]; int16 bsums[16]       (activations only)
//
// Q8_0 and Q4_0 quantize exactly as gguf-py's gguf.quants.quantize (round half away from zero;
// Q4_0 truncates x*id + 8.5 in float32). Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K follow ggml's
// reference quantizers (quantize_row_*_ref, no importance matrix). IQ4_NL and IQ4_XS follow ggml's
// quantize_iq4_nl / quantize_iq4_xs without an importance matrix (what llama.cpp's file quantizer
// runs; its quantize_row_iq4_nl_ref searches fewer scales). All-zero blocks give scale 0.
#pragma once
#include <cstdint>

#include "ggml_type.h"

namespace tg {

constexpr int QK8_0 = 32, QK4_0 = 32, QK_K = 256;

struct BlockQ8_0 {
    uint16_t d;       // fp16 scale
    int8_t qs[QK8_0];
};
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block must be 34 bytes");

struct BlockQ4_0 {
    uint16_t d;            // fp16 scale
    uint8_t qs[QK4_0 / 2]; // byte j: value j (low nibble) and value j+16 (high nibble)
};
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block must be 18 bytes");

struct BlockQ4_1 {
    uint16_t d, m;          // fp16 scale and minimum
    uint8_t qs[QK4_0 / 2];  // as Q4_0
};
static_assert(sizeof(BlockQ4_1) == 20, "Q4_1 block must be 20 bytes");

struct BlockQ5_0 {
    uint16_t d;             // fp16 scale
    uint8_t qh[4];          // little-endian uint32: bit j is the 5th bit of value j
    uint8_t qs[QK4_0 / 2];  // low 4 bits, as Q4_0
};
static_assert(sizeof(BlockQ5_0) == 22, "Q5_0 block must be 22 bytes");

struct BlockQ5_1 {
    uint16_t d, m;          // fp16 scale and minimum
    uint8_t qh[4];          // as Q5_0
    uint8_t qs[QK4_0 / 2];
};
static_assert(sizeof(BlockQ5_1) == 24, "Q5_1 block must be 24 bytes");

// The 32 unsigned values of a Q4_0 / Q4_1 (qh == nullptr) or Q5_0 / Q5_1 block.
inline void q5_unpack(const uint8_t* qs, const uint8_t* qh, uint8_t* u) {
    uint32_t h = 0;
    if (qh) h = (uint32_t)qh[0] | ((uint32_t)qh[1] << 8) | ((uint32_t)qh[2] << 16) | ((uint32_t)qh[3] << 24);
    for (int j = 0; j < 16; j++) {
        u[j] = (uint8_t)((qs[j] & 0xF) | (((h >> j) & 1) << 4));
        u[j + 16] = (uint8_t)((qs[j] >> 4) | (((h >> (j + 16)) & 1) << 4));
    }
}

struct BlockQ4_K {
    uint16_t d, dmin;        // fp16 super-block scales of the sub-block scales and mins
    uint8_t scales[12];      // 8 scales and 8 mins, 6 bits each (see q4k_scale_min)
    uint8_t qs[QK_K / 2];    // chunk c of 32 bytes: values 64c+l (low nibble), 64c+32+l (high)
};
static_assert(sizeof(BlockQ4_K) == 144, "Q4_K block must be 144 bytes");

struct BlockQ5_K {
    uint16_t d, dmin;        // as Q4_K
    uint8_t scales[12];      // as Q4_K
    uint8_t qh[QK_K / 8];    // bit j of byte l: 5th bit of value 32j + l
    uint8_t qs[QK_K / 2];    // low 4 bits, as Q4_K
};
static_assert(sizeof(BlockQ5_K) == 176, "Q5_K block must be 176 bytes");

// All 256 unsigned 5-bit values of a Q5_K block (or 4-bit ones of a Q4_K block's qs, qh == nullptr).
inline void qk_unpack5(const uint8_t* qs, const uint8_t* qh, uint8_t* u) {
    for (int j = 0; j < 8; j++) {
        const uint8_t* q = qs + 32 * (j / 2);
        for (int l = 0; l < 32; l++) {
            uint8_t v = (j & 1) ? (uint8_t)(q[l] >> 4) : (uint8_t)(q[l] & 0xF);
            if (qh) v = (uint8_t)(v | (((qh[l] >> j) & 1) << 4));
            u[32 * j + l] = v;
        }
    }
}

struct BlockQ2_K {
    uint8_t scales[QK_K / 16]; // sub-block j: scale (low 4 bits) and min (high 4 bits)
    uint8_t qs[QK_K / 4];      // 2-bit values, packed as Q3_K's low bits
    uint16_t d, dmin;          // fp16 super-block scales of the sub-block scales and mins
};
static_assert(sizeof(BlockQ2_K) == 84, "Q2_K block must be 84 bytes");

// All 256 unsigned 2-bit values (0..3) of a Q2_K block.
inline void q2k_values(const BlockQ2_K& b, uint8_t* q) {
    for (int e = 0; e < QK_K; e++) q[e] = (uint8_t)((b.qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3);
}

struct BlockQ3_K {
    uint8_t hmask[QK_K / 8]; // bit j of byte l: 3rd bit of value 32j + l (set: q >= 0)
    uint8_t qs[QK_K / 4];    // 2 low bits of values 128c + 32s + l at bits 2s of byte 32c + l
    uint8_t scales[12];      // 16 6-bit scales, stored + 32 (see q3k_scales)
    uint16_t d;              // fp16
};
static_assert(sizeof(BlockQ3_K) == 110, "Q3_K block must be 110 bytes");

// The 16 signed scales (-32..31) of a Q3_K block: low 4 bits in scales[0..7] (j < 8: low nibble of
// byte j, else high nibble of byte j - 8), high 2 bits at bits 2*(j/4) of byte 8 + j%4.
inline void q3k_scales(const uint8_t* s, int8_t* sc) {
    for (int j = 0; j < 16; j++) {
        const int lo = j < 8 ? (s[j] & 0xF) : (s[j - 8] >> 4);
        const int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        sc[j] = (int8_t)((lo | (hi << 4)) - 32);
    }
}

// All 256 signed 3-bit values (-4..3) of a Q3_K block.
inline void q3k_values(const BlockQ3_K& b, int8_t* q) {
    for (int e = 0; e < QK_K; e++) {
        const int low = (b.qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
        const int high = (b.hmask[e % 32] >> (e / 32)) & 1;
        q[e] = (int8_t)(low - (high ? 0 : 4));
    }
}

struct BlockQ6_K {
    uint8_t ql[QK_K / 2];    // low 4 bits
    uint8_t qh[QK_K / 4];    // high 2 bits
    int8_t scales[QK_K / 16];
    uint16_t d;              // fp16
};
static_assert(sizeof(BlockQ6_K) == 210, "Q6_K block must be 210 bytes");

// The 16 values of the non-linear 4-bit types (ggml's kvalues_iq4nl), ascending.
constexpr int8_t kIQ4NL[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

struct BlockIQ4_NL {
    uint16_t d;             // fp16 scale
    uint8_t qs[QK4_0 / 2];  // indices into kIQ4NL, as Q4_0's values
};
static_assert(sizeof(BlockIQ4_NL) == 18, "IQ4_NL block must be 18 bytes");

struct BlockIQ4_XS {
    uint16_t d;              // fp16 super-block scale
    uint16_t scales_h;       // bits 2j, 2j+1: high 2 bits of sub-block j's scale
    uint8_t scales_l[4];     // byte j/2, nibble j%2: low 4 bits of sub-block j's scale
    uint8_t qs[QK_K / 2];    // indices into kIQ4NL; sub-block j: bytes 16j.., as an IQ4_NL block
};
static_assert(sizeof(BlockIQ4_XS) == 136, "IQ4_XS block must be 136 bytes");

// Signed scale (ls - 32, -32..31) of sub-block j (0..7) of an IQ4_XS block.
inline int iq4xs_scale(const BlockIQ4_XS& b, int j) {
    const int lo = (b.scales_l[j / 2] >> (4 * (j % 2))) & 0xF, hi = (b.scales_h >> (2 * j)) & 3;
    return (lo | (hi << 4)) - 32;
}

struct BlockQ8_K {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];  // sum of qs in groups of 16
};
static_assert(sizeof(BlockQ8_K) == 292, "Q8_K block must be 292 bytes");

// Scale and min of sub-block j (0..7) of a Q4_K block.
inline void q4k_scale_min(int j, const uint8_t* s, uint8_t* sc, uint8_t* m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
        *m = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

// All 256 unsigned 6-bit values (q + 32) of a Q6_K block.
inline void q6k_unpack(const BlockQ6_K& b, uint8_t* u) {
    for (int half = 0; half < 2; half++) {
        const uint8_t* ql = b.ql + 64 * half;
        const uint8_t* qh = b.qh + 32 * half;
        uint8_t* o = u + 128 * half;
        for (int l = 0; l < 32; l++) {
            o[l] = (uint8_t)((ql[l] & 0xF) | ((qh[l] & 3) << 4));
            o[l + 32] = (uint8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4));
            o[l + 64] = (uint8_t)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
            o[l + 96] = (uint8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
        }
    }
}

// Types quantize_rows / dequantize_values accept: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
// Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, Q8_K.
bool quant_supported(GgmlType t);

// Quantize n_rows rows of n_per_row floats into GGML layout (n_per_row a multiple of the block).
void quantize_rows(GgmlType t, const float* x, void* y, int64_t n_rows, int64_t n_per_row);

// Dequantize k values (a multiple of the block size) from GGML layout.
void dequantize_values(GgmlType t, const void* x, float* y, int64_t k);

// Activation quantizers shared by every kernel path (so all paths see identical int8 data).
void quantize_row_q8_0(const float* x, BlockQ8_0* y, int64_t k);
void quantize_row_q8_K(const float* x, BlockQ8_K* y, int64_t k);

}  // namespace tg
