// AArch64 NEON kernels over the repacked layout of matmul_impl.h. A 16-row group is handled as four
// quarters of 4 rows (one 128-bit register: a lane per row); dp4 accumulates 4 int8 products per row
// per lane, as vpdpbusd does on x86: with sdot where the CPU has the dot product (ARMv8.2 +dotprod:
// Apple M1 and later, Graviton 2 and later, Cortex-A55/A76 and later), with widening multiplies and
// pairwise adds elsewhere (ARMv8.0: Cortex-A53/A72, Raspberry Pi 3 and 4). Same arithmetic per output
// as the scalar kernels, so results are bit-identical to them; the activation quantizers give the
// scalar ones' bytes.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <arm_neon.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu.h"
#include "fp16.h"
#include "kernels/matmul_impl.h"
#include "quants.h"

namespace tg {
namespace neon {

namespace {

// The 4 bytes at p in every 32-bit lane (one activation quad against 4 rows).
inline int8x16_t bc(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return vreinterpretq_s8_s32(vdupq_n_s32(v));
}

// acc + each lane's dot product of 4 int8 pairs: sdot where the CPU has it (DOT), else widening
// multiplies and pairwise adds (every product fits int16 and every sum int32: the same integers)
template <bool DOT>
inline int32x4_t dp4(int32x4_t acc, int8x16_t a, int8x16_t b) {
    if constexpr (DOT) {
        return vdotq_s32(acc, a, b);
    } else {
        const int32x4_t lo = vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)));  // bytes 0-7, pairs
        const int32x4_t hi = vpaddlq_s16(vmull_high_s8(a, b));                       // bytes 8-15
        return vaddq_s32(acc, vpaddq_s32(lo, hi));
    }
}

// 4 fp16 values as float (exact)
inline float32x4_t load_ph(const uint8_t* p) {
    uint16_t h[4];
    std::memcpy(h, p, 8);
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h)));
}

// 4 bytes at p widened to int32 lanes
inline int32x4_t load_u8x4(const uint8_t* p) {
    uint8_t b[8] = {0};
    std::memcpy(b, p, 4);
    return vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(vmovl_u8(vld1_u8(b)))));
}
inline int32x4_t load_s8x4(const uint8_t* p) {
    int8_t b[8] = {0};
    std::memcpy(b, p, 4);
    return vmovl_s16(vget_low_s16(vmovl_s8(vld1_s8(b))));
}

// Rows 4q..4q+3 of group g, activation row i: y = acc (+ bias), the rows past n_out dropped.
inline void store_out(const GemmArgs& A, int64_t i, int64_t g, int q, float32x4_t acc) {
    const int64_t r0 = g * kGroup + 4 * q;
    if (r0 + 4 <= A.n_out) {
        if (A.bias) acc = vaddq_f32(acc, vld1q_f32(A.bias + r0));
        vst1q_f32(A.y + i * A.n_out + r0, acc);
    } else if (r0 < A.n_out) {
        float v[4];
        vst1q_f32(v, acc);
        for (int64_t e = 0; e < A.n_out - r0; e++) A.y[i * A.n_out + r0 + e] = A.bias ? v[e] + A.bias[r0 + e] : v[e];
    }
}

// ---- float weights: acc = fma(w[k], x[k], acc) in k order ------------------------------------

struct CvtF32 {
    static constexpr size_t elem = 4;
    static float32x4_t load(const uint8_t* p, int64_t kk, int q) { return vld1q_f32((const float*)p + kk * kGroup + 4 * q); }
};
struct CvtF16 {
    static constexpr size_t elem = 2;
    static float32x4_t load(const uint8_t* p, int64_t kk, int q) { return load_ph(p + kk * 32 + 8 * q); }
};
struct CvtBF16 {
    static constexpr size_t elem = 2;
    static float32x4_t load(const uint8_t* p, int64_t kk, int q) {
        uint16_t h[4];
        std::memcpy(h, p + kk * 32 + 8 * q, 8);
        return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(h), 16));
    }
};

// GB groups (g, g + gstep, ...) x 4 quarters x NT activation rows.
template <typename C, int GB, int NT>
void float_tile(const GemmArgs& A, size_t gbytes, int64_t g, int64_t i0, int64_t gstep) {
    const int64_t k = A.n_in;
    float32x4_t acc[4 * GB][NT];
    for (int b = 0; b < 4 * GB; b++)
        for (int j = 0; j < NT; j++) acc[b][j] = vdupq_n_f32(0.f);
    const uint8_t* wg = A.w + (g - A.g_base) * gbytes;
    const float* x = A.x + i0 * k;
    for (int64_t kk = 0; kk < k; kk++) {
        float32x4_t w[4 * GB];
        for (int b = 0; b < 4 * GB; b++) w[b] = C::load(wg + (b / 4) * gstep * gbytes, kk, b & 3);
        for (int j = 0; j < NT; j++) {
            const float32x4_t xb = vdupq_n_f32(x[j * k + kk]);
            for (int b = 0; b < 4 * GB; b++) acc[b][j] = vfmaq_f32(acc[b][j], w[b], xb);
        }
    }
    for (int b = 0; b < 4 * GB; b++)
        for (int j = 0; j < NT; j++) store_out(A, i0 + j, g + (b / 4) * gstep, b & 3, acc[b][j]);
}

// Prompt tiles of up to 4 activation rows: 4 quarters x 4 rows = 16 accumulators, with 4 weight
// vectors and a broadcast 21 of the 32 vector registers.
template <typename C>
void float_gemm(const GemmArgs& A, int64_t g0, int64_t g1) {
    static const FloatTileFn tiles[4] = {float_tile<C, 1, 1>, float_tile<C, 1, 2>, float_tile<C, 1, 3>,
                                         float_tile<C, 1, 4>};
    float_gemm_groups<4>(A, g0, g1, (size_t)A.n_in * kGroup * C::elem, float_tile<C, 2, 1>, tiles);
}

// ---- Q8_0 / Q4_0 ------------------------------------------------------------------------------
// A block's quants for quarter q, unpacked to eight vectors w[s] of values 4s..4s+3 of 4 rows: Q8_0
// eight 16-byte slots stored q + 128 (xor 0x80 gives the signed value), Q4_0 four slots whose low
// nibbles are values 4s..4s+3 and high nibbles 16 + 4s.. (stored q + 8: the dot starts from -8 times
// the activation block's sum).

inline void q8_0_unpack(const uint8_t* blk, int8x16_t (&w)[8]) {
    const uint8x16_t flip = vdupq_n_u8(0x80);
    for (int s = 0; s < 8; s++) w[s] = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(blk + 64 * s), flip));
}

inline void q4_0_unpack(const uint8_t* blk, int8x16_t (&w)[8]) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    for (int s = 0; s < 4; s++) {
        const uint8x16_t v = vld1q_u8(blk + 64 * s);
        w[s] = vreinterpretq_s8_u8(vandq_u8(v, m4));
        w[s + 4] = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
    }
}

// Q4_0's layout, each index looked up (tbl) as its signed value: Q8_0's arithmetic on kIQ4NL[q]
inline void iq4_nl_unpack(const uint8_t* blk, int8x16_t (&w)[8]) {
    const int8x16_t lut = vld1q_s8(kIQ4NL);
    q4_0_unpack(blk, w);
    for (int s = 0; s < 8; s++) w[s] = vqtbl1q_s8(lut, vreinterpretq_u8_s8(w[s]));
}

// Q8_0's arithmetic over the weights of Q8_0 (values stored as q + 128) or IQ4_NL (Q4_0's layout).
struct Q8_0W {
    static constexpr size_t kQuant = kPackQ8_0;
    static void unpack(const uint8_t* blk, int8x16_t (&w)[8]) { q8_0_unpack(blk, w); }
};
struct IQ4_NLW {
    static constexpr size_t kQuant = kPackQ4_0;
    static void unpack(const uint8_t* blk, int8x16_t (&w)[8]) { iq4_nl_unpack(blk, w); }
};

// start + the 32 products of a block, per row (two chains)
template <bool DOT>
inline int32x4_t dot32(int32x4_t start, const int8x16_t (&w)[8], const int8_t* xq) {
    int32x4_t s0 = start, s1 = vdupq_n_s32(0);
    for (int s = 0; s < 8; s += 2) {
        s0 = dp4<DOT>(s0, w[s], bc(xq + 4 * s));
        s1 = dp4<DOT>(s1, w[s + 1], bc(xq + 4 * s + 4));
    }
    return vaddq_s32(s0, s1);
}

template <class W, bool DOT, int NT>
void q8_tile(const GemmArgs& A, const uint8_t* wg, int64_t g, int64_t i0, int q) {
    const ActQ8& a = *A.a8;
    float32x4_t acc[NT];
    for (int j = 0; j < NT; j++) acc[j] = vdupq_n_f32(0.f);
    for (int64_t b = 0; b < a.nb; b++) {
        int8x16_t w[8];
        W::unpack(wg + pair_quant_off<W::kQuant>(b) + 16 * q, w);
        const float32x4_t dw = load_ph(wg + pair_scale_off<W::kQuant>(b) + 8 * q);
        for (int j = 0; j < NT; j++) {
            const int64_t ii = (i0 + j) * a.nb + b;
            const int32x4_t isum = dot32<DOT>(vdupq_n_s32(0), w, a.qs.data() + (i0 + j) * a.k + b * QK8_0);
            acc[j] = vfmaq_f32(acc[j], vmulq_f32(dw, vdupq_n_f32(a.d[ii])), vcvtq_f32_s32(isum));
        }
    }
    for (int j = 0; j < NT; j++) store_out(A, i0 + j, g, q, acc[j]);
}

template <bool DOT, int NT> void q8_0_tile(const GemmArgs& A, const uint8_t* wg, int64_t g, int64_t i0, int q) { q8_tile<Q8_0W, DOT, NT>(A, wg, g, i0, q); }
template <bool DOT, int NT> void iq4_nl_tile(const GemmArgs& A, const uint8_t* wg, int64_t g, int64_t i0, int q) { q8_tile<IQ4_NLW, DOT, NT>(A, wg, g, i0, q); }

template <bool DOT, int NT>
void q4_0_tile(const GemmArgs& A, const uint8_t* wg, int64_t g, int64_t i0, int q) {
    const ActQ8& a = *A.a8;
    float32x4_t acc[NT];
    for (int j = 0; j < NT; j++) acc[j] = vdupq_n_f32(0.f);
    for (int64_t c = 0; c < a.ng; c++) {
        float32x4_t t[NT];
        for (int j = 0; j < NT; j++) t[j] = vdupq_n_f32(0.f);
        for (int64_t b = c * a.gb; b < std::min(a.nb, (c + 1) * a.gb); b++) {
            int8x16_t w[8];
            q4_0_unpack(wg + pair_quant_off<kPackQ4_0>(b) + 16 * q, w);
            const float32x4_t dw = load_ph(wg + pair_scale_off<kPackQ4_0>(b) + 8 * q);
            for (int j = 0; j < NT; j++) {
                const int64_t ii = (i0 + j) * a.nb + b;
                const int32x4_t isum = dot32<DOT>(vdupq_n_s32(-8 * a.sum[ii]), w, a.qs.data() + (i0 + j) * a.k + b * QK4_0);
                t[j] = vfmaq_f32(t[j], dw, vcvtq_f32_s32(isum));
            }
        }
        for (int j = 0; j < NT; j++) acc[j] = vfmaq_f32(acc[j], vdupq_n_f32(a.d[(i0 + j) * a.ng + c]), t[j]);
    }
    for (int j = 0; j < NT; j++) store_out(A, i0 + j, g, q, acc[j]);
}

// Decode (one activation row) over NG groups taken from NG separate places of the weight, all
// four quarters of each: NG memory streams per core. Per output the arithmetic of the tiles.
template <class W, bool DOT, int NG>
void q8_vec(const GemmArgs& A, const uint8_t* const* wg, const int64_t* g) {
    const ActQ8& a = *A.a8;
    float32x4_t acc[NG][4];
    for (int j = 0; j < NG; j++)
        for (int q = 0; q < 4; q++) acc[j][q] = vdupq_n_f32(0.f);
    for (int64_t b = 0; b < a.nb; b++) {
        const int8_t* xq = a.qs.data() + b * QK8_0;
        const float32x4_t dx = vdupq_n_f32(a.d[b]);
        for (int j = 0; j < NG; j++)
            for (int q = 0; q < 4; q++) {
                int8x16_t w[8];
                W::unpack(wg[j] + pair_quant_off<W::kQuant>(b) + 16 * q, w);
                const float32x4_t dw = load_ph(wg[j] + pair_scale_off<W::kQuant>(b) + 8 * q);
                acc[j][q] = vfmaq_f32(acc[j][q], vmulq_f32(dw, dx), vcvtq_f32_s32(dot32<DOT>(vdupq_n_s32(0), w, xq)));
            }
    }
    for (int j = 0; j < NG; j++)
        for (int q = 0; q < 4; q++) store_out(A, 0, g[j], q, acc[j][q]);
}

template <bool DOT, int NG> void q8_0_vec(const GemmArgs& A, const uint8_t* const* wg, const int64_t* g) { q8_vec<Q8_0W, DOT, NG>(A, wg, g); }
template <bool DOT, int NG> void iq4_nl_vec(const GemmArgs& A, const uint8_t* const* wg, const int64_t* g) { q8_vec<IQ4_NLW, DOT, NG>(A, wg, g); }

template <bool DOT, int NG>
void q4_0_vec(const GemmArgs& A, const uint8_t* const* wg, const int64_t* g) {
    const ActQ8& a = *A.a8;
    float32x4_t acc[NG][4];
    for (int j = 0; j < NG; j++)
        for (int q = 0; q < 4; q++) acc[j][q] = vdupq_n_f32(0.f);
    for (int64_t c = 0; c < a.ng; c++) {
        const float32x4_t dx = vdupq_n_f32(a.d[c]);
        const int64_t b0 = c * a.gb, b1 = std::min(a.nb, (c + 1) * a.gb);
        for (int j = 0; j < NG; j++)  // one scale group of each stream in turn (t: one register)
            for (int q = 0; q < 4; q++) {
                float32x4_t t = vdupq_n_f32(0.f);
                for (int64_t b = b0; b < b1; b++) {
                    int8x16_t w[8];
                    q4_0_unpack(wg[j] + pair_quant_off<kPackQ4_0>(b) + 16 * q, w);
                    const float32x4_t dw = load_ph(wg[j] + pair_scale_off<kPackQ4_0>(b) + 8 * q);
                    const int32x4_t isum = dot32<DOT>(vdupq_n_s32(-8 * a.sum[b]), w, a.qs.data() + b * QK4_0);
                    t = vfmaq_f32(t, dw, vcvtq_f32_s32(isum));
                }
                acc[j][q] = vfmaq_f32(acc[j][q], dx, t);
            }
    }
    for (int j = 0; j < NG; j++)
        for (int q = 0; q < 4; q++) store_out(A, 0, g[j], q, acc[j][q]);
}

// ---- K-quants ----------------------------------------------------------------------------------
// One super-block b of quarter q of a group (wg: the group's data) against NT activation rows from
// i0, acc[j] updated with the arithmetic of matmul_impl.h.

// Q4_K, and Q5_K (Q5: the 5th bits come from the qh slots after Q4_K's layout, bit 2c of a qh byte for
// the low nibbles of chunk c, bit 2c + 1 for the high ones).
template <bool DOT, int NT, bool Q5>
inline void q45_K_super(const ActQ8K& a, const uint8_t* wg, int64_t b, int q, int64_t i0, float32x4_t (&acc)[NT]) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F), one = vdupq_n_u8(1);
    const uint8_t* blk = wg + b * (Q5 ? kPackQ5_K : kPackQ4_K);
    const uint8_t* qs = blk + 320 + 16 * q;
    int32x4_t isum[NT];
    for (int j = 0; j < NT; j++) isum[j] = vdupq_n_s32(0);
    for (int c = 0; c < 4; c++) {
        int32x4_t ae[NT], ao[NT];
        for (int j = 0; j < NT; j++) ae[j] = ao[j] = vdupq_n_s32(0);
        for (int s = 0; s < 8; s++) {
            const uint8x16_t v = vld1q_u8(qs + 64 * (8 * c + s));
            uint8x16_t ulo = vandq_u8(v, m4), uhi = vshrq_n_u8(v, 4);
            if constexpr (Q5) {  // bit b of each byte to bit 4
                const uint8x16_t h = vld1q_u8(blk + kPackQ4_K + 64 * s + 16 * q);
                ulo = vorrq_u8(ulo, vshlq_n_u8(vandq_u8(vshlq_u8(h, vdupq_n_s8((int8_t)(-2 * c))), one), 4));
                uhi = vorrq_u8(uhi, vshlq_n_u8(vandq_u8(vshlq_u8(h, vdupq_n_s8((int8_t)(-2 * c - 1))), one), 4));
            }
            const int8x16_t lo = vreinterpretq_s8_u8(ulo), hi = vreinterpretq_s8_u8(uhi);
            for (int j = 0; j < NT; j++) {
                const int8_t* xq = a.qs.data() + (i0 + j) * a.k + b * QK_K + 64 * c + 4 * s;
                ae[j] = dp4<DOT>(ae[j], lo, bc(xq));
                ao[j] = dp4<DOT>(ao[j], hi, bc(xq + 32));
            }
        }
        const int32x4_t sce = load_u8x4(blk + 64 + 16 * (2 * c) + 4 * q);
        const int32x4_t sco = load_u8x4(blk + 64 + 16 * (2 * c + 1) + 4 * q);
        for (int j = 0; j < NT; j++) isum[j] = vmlaq_s32(vmlaq_s32(isum[j], ae[j], sce), ao[j], sco);
    }
    const float32x4_t dw = load_ph(blk + 8 * q);
    const float32x4_t dm = load_ph(blk + 32 + 8 * q);
    int16x8_t mp[4];  // (m of sub-block 2p, m of 2p + 1) of each of the 4 rows
    for (int p = 0; p < 4; p++) mp[p] = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(blk + 192 + 32 * p + 8 * q)));
    for (int j = 0; j < NT; j++) {
        const int64_t ii = (i0 + j) * a.nb + b;
        const int32_t* pr = a.pair32.data() + ii * 4;  // (sum of sub-block 2p, of 2p + 1) as int16 pairs
        int32x4_t msum = vdupq_n_s32(0);
        for (int p = 0; p < 4; p++) {
            const int16x8_t x2 = vreinterpretq_s16_s32(vdupq_n_s32(pr[p]));
            msum = vaddq_s32(msum, vpaddq_s32(vmull_s16(vget_low_s16(mp[p]), vget_low_s16(x2)),
                                              vmull_high_s16(mp[p], x2)));
        }
        const float32x4_t dx = vdupq_n_f32(a.d[ii]);
        acc[j] = vfmaq_f32(acc[j], vmulq_f32(dw, dx), vcvtq_f32_s32(isum[j]));
        acc[j] = vfmsq_f32(acc[j], vmulq_f32(dm, dx), vcvtq_f32_s32(msum));
    }
}

template <bool DOT, int NT>
inline void q4_K_super(const ActQ8K& a, const uint8_t* wg, int64_t b, int q, int64_t i0, float32x4_t (&acc)[NT]) {
    q45_K_super<DOT, NT, false>(a, wg, b, q, i0, acc);
}
template <bool DOT, int NT>
inline void q5_K_super(const ActQ8K& a, const uint8_t* wg, int64_t b, int q, int64_t i0, float32x4_t (&acc)[NT]) {
    q45_K_super<DOT, NT, true>(a, wg, b, q, i0, acc);
}

// Q6_K, and Q3_K (widened into its layout); Q2 (Q2_K): the layout of Q6_K plus the mins (matmul_impl.h).
template <bool DOT, int NT, bool Q2 = false>
inline void q6_K_super(const ActQ8K& a, const uint8_t* wg, int64_t b, int q, int64_t i0, float32x4_t (&acc)[NT]) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F), m30 = vdupq_n_u8(0x30);
    const uint8_t* blk = wg + b * (Q2 ? kPackQ2_K : kPackQ6_K);
    const uint8_t* qq = blk + 288 + 16 * q;
    int32x4_t isum[NT];
    for (int j = 0; j < NT; j++) isum[j] = vdupq_n_s32(0);
    for (int t = 0; t < 16; t++) {
        const uint8x16_t l0 = vld1q_u8(qq + 192 * t), l1 = vld1q_u8(qq + 192 * t + 64);
        const uint8x16_t hb = vld1q_u8(qq + 192 * t + 128);
        const int8x16_t u0 = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(l0, m4), vandq_u8(vshlq_n_u8(hb, 4), m30)));
        const int8x16_t u1 = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(l0, 4), vandq_u8(vshlq_n_u8(hb, 2), m30)));
        const int8x16_t u2 = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(l1, m4), vandq_u8(hb, m30)));
        const int8x16_t u3 = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(l1, 4), vandq_u8(vshrq_n_u8(hb, 2), m30)));
        const int32x4_t sc = load_s8x4(blk + 32 + 16 * t + 4 * q);
        for (int j = 0; j < NT; j++) {
            const int64_t ii = (i0 + j) * a.nb + b;
            const int8_t* xq = a.qs.data() + (i0 + j) * a.k + b * QK_K + 16 * t;
            int32x4_t s = vdupq_n_s32(-32 * a.bsum[ii * 16 + t]);
            s = dp4<DOT>(s, u0, bc(xq));
            s = dp4<DOT>(s, u1, bc(xq + 4));
            s = dp4<DOT>(s, u2, bc(xq + 8));
            s = dp4<DOT>(s, u3, bc(xq + 12));
            isum[j] = vmlaq_s32(isum[j], s, sc);
        }
    }
    const float32x4_t dw = load_ph(blk + 8 * q);
    for (int j = 0; j < NT; j++) {
        const float32x4_t dx = vdupq_n_f32(a.d[(i0 + j) * a.nb + b]);
        acc[j] = vfmaq_f32(acc[j], vmulq_f32(dw, dx), vcvtq_f32_s32(isum[j]));
    }
    if constexpr (Q2) {
        const uint8_t* mb = blk + kPackQ6_K;
        const float32x4_t dm = load_ph(mb + 8 * q);
        int16x8_t mp[8];  // (m of sub-block 2p, m of 2p + 1) of each of the 4 rows
        for (int p = 0; p < 8; p++) mp[p] = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(mb + 32 + 32 * p + 8 * q)));
        for (int j = 0; j < NT; j++) {
            const int64_t ii = (i0 + j) * a.nb + b;
            const int32_t* bs = a.bsum.data() + ii * 16;
            int32x4_t msum = vdupq_n_s32(0);
            for (int p = 0; p < 8; p++) {
                const int16x8_t x2 = vreinterpretq_s16_s32(vdupq_n_s32(pack_int16_pair(bs[2 * p], bs[2 * p + 1])));
                msum = vaddq_s32(msum, vpaddq_s32(vmull_s16(vget_low_s16(mp[p]), vget_low_s16(x2)),
                                                  vmull_high_s16(mp[p], x2)));
            }
            const float32x4_t dx = vdupq_n_f32(a.d[ii]);
            acc[j] = vfmsq_f32(acc[j], vmulq_f32(dm, dx), vcvtq_f32_s32(msum));
        }
    }
}
template <bool DOT, int NT>
inline void q2_K_super(const ActQ8K& a, const uint8_t* wg, int64_t b, int q, int64_t i0, float32x4_t (&acc)[NT]) {
    q6_K_super<DOT, NT, true>(a, wg, b, q, i0, acc);
}

// IQ4_XS: Q4_K's walk over the nibbles, each index looked up (tbl) as its signed value; sdot (or the
// widening multiplies) takes signed values on both sides, so no offset is needed.
template <bool DOT, int NT>
inline void iq4_xs_super(const ActQ8K& a, const uint8_t* wg, int64_t b, int q, int64_t i0, float32x4_t (&acc)[NT]) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    const int8x16_t lut = vld1q_s8(kIQ4NL);
    const uint8_t* blk = wg + b * kPackIQ4_XS;
    const uint8_t* qs = blk + 192 + 16 * q;
    int32x4_t isum[NT];
    for (int j = 0; j < NT; j++) isum[j] = vdupq_n_s32(0);
    for (int c = 0; c < 4; c++) {
        int32x4_t ae[NT], ao[NT];
        for (int j = 0; j < NT; j++) ae[j] = ao[j] = vdupq_n_s32(0);
        for (int s = 0; s < 8; s++) {
            const uint8x16_t v = vld1q_u8(qs + 64 * (8 * c + s));
            const int8x16_t lo = vqtbl1q_s8(lut, vandq_u8(v, m4)), hi = vqtbl1q_s8(lut, vshrq_n_u8(v, 4));
            for (int j = 0; j < NT; j++) {
                const int8_t* xq = a.qs.data() + (i0 + j) * a.k + b * QK_K + 64 * c + 4 * s;
                ae[j] = dp4<DOT>(ae[j], lo, bc(xq));
                ao[j] = dp4<DOT>(ao[j], hi, bc(xq + 32));
            }
        }
        const int32x4_t sce = load_s8x4(blk + 32 + 16 * (2 * c) + 4 * q);
        const int32x4_t sco = load_s8x4(blk + 32 + 16 * (2 * c + 1) + 4 * q);
        for (int j = 0; j < NT; j++) isum[j] = vmlaq_s32(vmlaq_s32(isum[j], ae[j], sce), ao[j], sco);
    }
    const float32x4_t dw = load_ph(blk + 8 * q);
    for (int j = 0; j < NT; j++) {
        const float32x4_t dx = vdupq_n_f32(a.d[(i0 + j) * a.nb + b]);
        acc[j] = vfmaq_f32(acc[j], vmulq_f32(dw, dx), vcvtq_f32_s32(isum[j]));
    }
}

// The prompt tile (NT activation rows of one group, one quarter q) and the decode kernel (one row,
// NG groups, every quarter) of each K-quant type, made from its super-block routine.
#define TG_TILE_AND_VEC(NAME, SUPER)                                                                 \
    template <bool DOT, int NT>                                                                      \
    void NAME##_tile(const GemmArgs& A, const uint8_t* wg, int64_t g, int64_t i0, int q) {           \
        const ActQ8K& a = *A.ak;                                                                     \
        float32x4_t acc[NT];                                                                         \
        for (int j = 0; j < NT; j++) acc[j] = vdupq_n_f32(0.f);                                      \
        for (int64_t b = 0; b < a.nb; b++) SUPER<DOT, NT>(a, wg, b, q, i0, acc);                     \
        for (int j = 0; j < NT; j++) store_out(A, i0 + j, g, q, acc[j]);                             \
    }                                                                                                \
    template <bool DOT, int NG>                                                                      \
    void NAME##_vec(const GemmArgs& A, const uint8_t* const* wg, const int64_t* g) {                 \
        const ActQ8K& a = *A.ak;                                                                     \
        float32x4_t acc[NG][4][1];                                                                   \
        for (int j = 0; j < NG; j++)                                                                 \
            for (int q = 0; q < 4; q++) acc[j][q][0] = vdupq_n_f32(0.f);                             \
        for (int64_t b = 0; b < a.nb; b++)                                                           \
            for (int j = 0; j < NG; j++)                                                             \
                for (int q = 0; q < 4; q++) SUPER<DOT, 1>(a, wg[j], b, q, 0, acc[j][q]);             \
        for (int j = 0; j < NG; j++)                                                                 \
            for (int q = 0; q < 4; q++) store_out(A, 0, g[j], q, acc[j][q][0]);                      \
    }

TG_TILE_AND_VEC(q4_K, q4_K_super)
TG_TILE_AND_VEC(q5_K, q5_K_super)
TG_TILE_AND_VEC(q6_K, q6_K_super)
TG_TILE_AND_VEC(q2_K, q2_K_super)
TG_TILE_AND_VEC(iq4_xs, iq4_xs_super)
#undef TG_TILE_AND_VEC

// Q4_1 / Q5_1 (values with a minimum), quarter q of a group for NT rows: per activation scale group c,
// per block t = fma(dw, float(isum), t); t = fma(mw, float(xsum), t); then acc = fma(dx, t, acc).
template <bool DOT, bool Q5, int NT>
void min_tile(const GemmArgs& A, const uint8_t* wg, int64_t g, int64_t i0, int q) {
    const ActQ8& a = *A.a8;
    constexpr size_t kB = Q5 ? kPackQ5_1 : kPackQ4_1;
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    float32x4_t acc[NT], t[NT];
    for (int j = 0; j < NT; j++) acc[j] = vdupq_n_f32(0.f);
    for (int64_t c = 0; c < a.ng; c++) {
        for (int j = 0; j < NT; j++) t[j] = vdupq_n_f32(0.f);
        for (int64_t b = c * a.gb; b < std::min(a.nb, (c + 1) * a.gb); b++) {
            const uint8_t* blk = wg + b * kB;
            const float32x4_t dw = load_ph(blk + 8 * q), mw = load_ph(blk + 32 + 8 * q);
            int8x16_t w[8];
            if constexpr (Q5) {
                for (int s = 0; s < 8; s++) w[s] = vreinterpretq_s8_u8(vld1q_u8(blk + 64 + 64 * s + 16 * q));
            } else {
                for (int s = 0; s < 4; s++) {
                    const uint8x16_t v = vld1q_u8(blk + 64 + 64 * s + 16 * q);
                    w[s] = vreinterpretq_s8_u8(vandq_u8(v, m4));
                    w[s + 4] = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
                }
            }
            for (int j = 0; j < NT; j++) {
                const int64_t ii = (i0 + j) * a.nb + b;
                const int8_t* xq = a.qs.data() + (i0 + j) * a.k + b * 32;
                int32x4_t s0 = vdupq_n_s32(0), s1 = vdupq_n_s32(0);
                for (int s = 0; s < 8; s += 2) {
                    s0 = dp4<DOT>(s0, w[s], bc(xq + 4 * s));
                    s1 = dp4<DOT>(s1, w[s + 1], bc(xq + 4 * s + 4));
                }
                t[j] = vfmaq_f32(t[j], dw, vcvtq_f32_s32(vaddq_s32(s0, s1)));
                t[j] = vfmaq_f32(t[j], mw, vdupq_n_f32((float)a.sum[ii]));
            }
        }
        for (int j = 0; j < NT; j++) acc[j] = vfmaq_f32(acc[j], vdupq_n_f32(a.d[(i0 + j) * a.ng + c]), t[j]);
    }
    for (int j = 0; j < NT; j++) store_out(A, i0 + j, g, q, acc[j]);
}
// Decode: the tile of one row, for each quarter of each of the NG groups in turn.
template <bool DOT, bool Q5, int NG>
void min_vec(const GemmArgs& A, const uint8_t* const* wg, const int64_t* g) {
    for (int j = 0; j < NG; j++)
        for (int q = 0; q < 4; q++) min_tile<DOT, Q5, 1>(A, wg[j], g[j], 0, q);
}
template <bool DOT, bool Q5>
void min_gemm(const GemmArgs& A, int64_t g0, int64_t g1) {
    const size_t gbytes = packed_group_bytes(Q5 ? GgmlType::Q5_1 : GgmlType::Q4_1, A.n_in);
    if (A.n == 1) return decode_streams<min_vec<DOT, Q5, kDecodeStreams>, min_vec<DOT, Q5, 1>>(A, g0, g1, gbytes);
    static const PartTileFn t[4] = {min_tile<DOT, Q5, 1>, min_tile<DOT, Q5, 2>, min_tile<DOT, Q5, 3>,
                                    min_tile<DOT, Q5, 4>};
    part_quant_gemm<4>(A, g0, g1, gbytes, t);
}

// 16 int32 values (4 vectors, in order, each in [-128, 127]) -> 16 int8
inline void store_i8x16(int8_t* dst, const int32x4_t (&q)[4]) {
    const int16x8_t lo = vcombine_s16(vmovn_s32(q[0]), vmovn_s32(q[1])), hi = vcombine_s16(vmovn_s32(q[2]), vmovn_s32(q[3]));
    vst1q_s8(dst, vcombine_s8(vmovn_s16(lo), vmovn_s16(hi)));
}

inline bool any_nan(float32x4_t v) { return vmaxvq_u32(vmvnq_u32(vceqq_f32(v, v))) != 0; }

}  // namespace

// ---- activation quantizers (byte-identical to the scalar ones in matmul.cpp) ------------------

void quantize_act_q8_row(const float* x, int64_t k, int8_t* qs, float* d, int32_t* sum, int gb) {
    const int64_t nb = k / QK8_0;
    for (int64_t b0 = 0, c = 0; b0 < nb; b0 += gb, c++) {
        const int64_t b1 = std::min<int64_t>(b0 + gb, nb);
        bool nan = false;
        float32x4_t m = vdupq_n_f32(0.f);
        for (int64_t j = b0 * QK8_0; j < b1 * QK8_0; j += 4) {
            const float32x4_t v = vld1q_f32(x + j);
            nan |= any_nan(v);
            m = vmaxq_f32(m, vabsq_f32(v));
        }
        const float amax = vmaxvq_f32(m);
        if (nan || !(amax <= 3.4028235e38f)) {  // NaN or inf: the scalar path's values
            tg::quantize_act_q8_row(x + b0 * QK8_0, (b1 - b0) * QK8_0, qs + b0 * QK8_0, d + c, sum + b0, gb);
            continue;
        }
        const float dd = amax / 127.f;
        const float id = dd != 0.f ? 1.0f / dd : 0.0f;
        d[c] = fp16_to_fp32(fp32_to_fp16(dd));
        const int32x4_t lo = vdupq_n_s32(-128), hi = vdupq_n_s32(127);
        for (int64_t b = b0; b < b1; b++) {
            if (d[c] == 0.f) {
                std::memset(qs + b * QK8_0, 0, QK8_0);
                sum[b] = 0;
                continue;
            }
            int32x4_t acc = vdupq_n_s32(0);
            for (int h = 0; h < 2; h++) {
                int32x4_t q[4];
                for (int e = 0; e < 4; e++) {  // round half away from zero, as std::round
                    const float32x4_t v = vmulq_f32(vld1q_f32(x + b * QK8_0 + 16 * h + 4 * e), vdupq_n_f32(id));
                    q[e] = vmaxq_s32(vminq_s32(vcvtaq_s32_f32(v), hi), lo);
                    acc = vaddq_s32(acc, q[e]);
                }
                store_i8x16(qs + b * QK8_0 + 16 * h, q);
            }
            sum[b] = vaddvq_s32(acc);
        }
    }
}

void quantize_act_q8k_row(const float* x, int64_t k, int8_t* qs, float* d, int32_t* bsum, int32_t* pair32) {
    for (int64_t b = 0; b < k / QK_K; b++, x += QK_K, qs += QK_K) {
        float32x4_t m = vdupq_n_f32(0.f);
        bool nan = false;
        for (int j = 0; j < QK_K; j += 4) {
            const float32x4_t v = vld1q_f32(x + j);
            nan |= any_nan(v);
            m = vmaxq_f32(m, vabsq_f32(v));
        }
        const float amax = nan ? 0.f : vmaxvq_f32(m);
        if (nan || amax == 0.f || !(amax <= 3.4028235e38f)) {
            tg::quantize_act_q8k_row(x, QK_K, qs, d + b, bsum + 16 * b, pair32 + 4 * b);
            continue;
        }
        float max = 0.f;  // the first value of largest magnitude, as the scalar scan finds it
        for (int j = 0; j < QK_K; j++)
            if (std::fabs(x[j]) == amax) {
                max = x[j];
                break;
            }
        const float iscale = -127.f / max;
        int32_t* bs = bsum + 16 * b;
        const int32x4_t lo = vdupq_n_s32(-127), hi = vdupq_n_s32(127);
        for (int j = 0; j < 16; j++) {  // 16 values per step; round half to even, as nearest_int
            int32x4_t q[4];
            for (int e = 0; e < 4; e++)
                q[e] = vmaxq_s32(vminq_s32(vcvtnq_s32_f32(vmulq_f32(vdupq_n_f32(iscale), vld1q_f32(x + 16 * j + 4 * e))), hi), lo);
            store_i8x16(qs + 16 * j, q);
            bs[j] = vaddvq_s32(vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3])));
        }
        d[b] = 1 / iscale;
        for (int p = 0; p < 4; p++) {
            int lo16 = bs[4 * p] + bs[4 * p + 1], hi16 = bs[4 * p + 2] + bs[4 * p + 3];
            pair32[4 * b + p] = (int32_t)((uint32_t)(uint16_t)lo16 | ((uint32_t)(uint16_t)hi16 << 16));
        }
    }
}

void gemm_f32(const GemmArgs& A, int64_t g0, int64_t g1) { float_gemm<CvtF32>(A, g0, g1); }
void gemm_f16(const GemmArgs& A, int64_t g0, int64_t g1) { float_gemm<CvtF16>(A, g0, g1); }
void gemm_bf16(const GemmArgs& A, int64_t g0, int64_t g1) { float_gemm<CvtBF16>(A, g0, g1); }

// The prompt and decode kernels of a type, with sdot (DOT) or without.
#define TG_GEMM(NAME, GBYTES)                                                                          \
    template <bool DOT>                                                                              \
    void NAME##_gemm(const GemmArgs& A, int64_t g0, int64_t g1) {                                    \
        const size_t gbytes = GBYTES;                                                                \
        if (A.n == 1) return decode_streams<NAME##_vec<DOT, kDecodeStreams>, NAME##_vec<DOT, 1>>(A, g0, g1, gbytes); \
        static const PartTileFn t[4] = {NAME##_tile<DOT, 1>, NAME##_tile<DOT, 2>, NAME##_tile<DOT, 3>,  \
                                        NAME##_tile<DOT, 4>};                                        \
        part_quant_gemm<4>(A, g0, g1, gbytes, t);                                                    \
    }                                                                                                \
    void gemm_##NAME(const GemmArgs& A, int64_t g0, int64_t g1) {                                    \
        if (cpu_has_neon_dot()) NAME##_gemm<true>(A, g0, g1);                                        \
        else NAME##_gemm<false>(A, g0, g1);                                                          \
    }

TG_GEMM(q8_0, packed_group_bytes(GgmlType::Q8_0, A.n_in))
TG_GEMM(q4_0, packed_group_bytes(GgmlType::Q4_0, A.n_in))
TG_GEMM(iq4_nl, packed_group_bytes(GgmlType::IQ4_NL, A.n_in))
TG_GEMM(q4_K, (size_t)(A.n_in / QK_K) * kPackQ4_K)
TG_GEMM(q5_K, (size_t)(A.n_in / QK_K) * kPackQ5_K)
TG_GEMM(q6_K, (size_t)(A.n_in / QK_K) * kPackQ6_K)
TG_GEMM(q2_K, (size_t)(A.n_in / QK_K) * kPackQ2_K)
TG_GEMM(iq4_xs, (size_t)(A.n_in / QK_K) * kPackIQ4_XS)
#undef TG_GEMM

void gemm_q4_1(const GemmArgs& A, int64_t g0, int64_t g1) {
    if (cpu_has_neon_dot()) min_gemm<true, false>(A, g0, g1);
    else min_gemm<false, false>(A, g0, g1);
}
void gemm_q5_1(const GemmArgs& A, int64_t g0, int64_t g1) {
    if (cpu_has_neon_dot()) min_gemm<true, true>(A, g0, g1);
    else min_gemm<false, true>(A, g0, g1);
}

}  // namespace neon
}  // namespace tg
