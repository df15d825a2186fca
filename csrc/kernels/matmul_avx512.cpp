// AVX-512 (F, BW, DQ, VL, VNNI) kernels over the repacked layout of matmul_impl.h. A lane is an
// output row; vpdpbusd accumulates 4 int8 products per row. The arithmetic of every output is
// the one the scalar kernels follow, so results are bit-identical to them.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "cpu.h"
#include "kernels/matmul_impl.h"
#include "quants.h"

namespace tg {
namespace avx512 {

namespace {

inline __m512i bc(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

// int32 -> float for |v| < 2^22 without vcvtdq2ps: v is added to the bits of 1.5 * 2^23 (kMagicBits,
// where the float spacing is 1), then 1.5 * 2^23 is subtracted; both steps are exact, so the result
// equals (float)v. The integer add is folded into the correction term each dot product starts from
// (ActQ8::corr, computed once per activation block), and the float subtract runs on the adder ports
// instead of beside vpdpbusd on its ports, which made the Q4_0 prompt tiles faster.
inline __m512 magic_to_float(__m512i biased) {
    return _mm512_sub_ps(_mm512_castsi512_ps(biased), _mm512_set1_ps(12582912.0f));
}

inline __mmask16 row_mask(const GemmArgs& A, int64_t g) {
    const int64_t rem = A.n_out - g * kGroup;
    return rem >= kGroup ? (__mmask16)0xFFFF : (__mmask16)((1u << rem) - 1);
}

inline void store_out(const GemmArgs& A, int64_t i, int64_t g, __m512 acc) {
    const __mmask16 m = row_mask(A, g);
    if (A.bias) acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(m, A.bias + g * kGroup));
    _mm512_mask_storeu_ps(A.y + i * A.n_out + g * kGroup, m, acc);
}

// ---- float weights: acc[row] = fma(w[row][k], x[k], acc[row]) over k in order -----------------

struct CvtF32 {
    static constexpr size_t elem = 4;
    static __m512 load(const uint8_t* p, int64_t kk) { return _mm512_loadu_ps((const float*)p + kk * kGroup); }
};
struct CvtF16 {
    static constexpr size_t elem = 2;
    static __m512 load(const uint8_t* p, int64_t kk) {
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(p + kk * 32)));
    }
};
struct CvtBF16 {
    static constexpr size_t elem = 2;
    static __m512 load(const uint8_t* p, int64_t kk) {
        __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(p + kk * 32)));
        return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    }
};

// GB groups (wg, wg + gstride, ...) x NT activation rows starting at i0; g = index of the first group.
// gstep: group index distance between the GB groups (1 = adjacent groups).
template <typename C, int GB, int NT>
void float_tile(const GemmArgs& A, const uint8_t* wg, size_t gstride, int64_t g, int64_t i0, int64_t gstep = 1) {
    const int64_t k = A.n_in;
    __m512 acc[GB][NT];
    for (int b = 0; b < GB; b++)
        for (int j = 0; j < NT; j++) acc[b][j] = _mm512_setzero_ps();
    const float* x = A.x + i0 * k;
    for (int64_t kk = 0; kk < k; kk++) {
        __m512 w[GB];
        for (int b = 0; b < GB; b++) w[b] = C::load(wg + b * gstride, kk);
        for (int j = 0; j < NT; j++) {
            const __m512 xb = _mm512_set1_ps(x[j * k + kk]);
            for (int b = 0; b < GB; b++) acc[b][j] = _mm512_fmadd_ps(w[b], xb, acc[b][j]);
        }
    }
    for (int b = 0; b < GB; b++)
        for (int j = 0; j < NT; j++) store_out(A, i0 + j, g + b * gstep, acc[b][j]);
}

template <typename C, int GB>
void float_tiles(const GemmArgs& A, const uint8_t* wg, size_t gstride, int64_t g, int64_t i0, int64_t nt) {
    switch (nt) {
        case 1: float_tile<C, GB, 1>(A, wg, gstride, g, i0); break;
        case 2: float_tile<C, GB, 2>(A, wg, gstride, g, i0); break;
        case 3: float_tile<C, GB, 3>(A, wg, gstride, g, i0); break;
        case 4: float_tile<C, GB, 4>(A, wg, gstride, g, i0); break;
        case 5: float_tile<C, GB, 5>(A, wg, gstride, g, i0); break;
        case 6: float_tile<C, GB, 6>(A, wg, gstride, g, i0); break;
        case 7: float_tile<C, GB, 7>(A, wg, gstride, g, i0); break;
        default: float_tile<C, GB, 8>(A, wg, gstride, g, i0); break;
    }
}

// Decode: 4 groups at once for independent FMA chains, taken from four parts of the thread's range
// (four memory streams per core, as decode_streams in matmul_impl.h does for quantized weights). Prefill: pairs of groups x 8 rows; 16-bit
// weights of the pair are first widened to float32 (exactly) so the conversion is paid once per
// pair instead of once per activation tile.
template <typename C>
void float_gemm(const GemmArgs& A, int64_t g0, int64_t g1) {
    const size_t gbytes = (size_t)A.n_in * kGroup * C::elem;
    if (A.n == 1) {
        const int64_t len = (g1 - g0) / 4;
        for (int64_t g = g0; g < g0 + len; g++)
            float_tile<C, 4, 1>(A, A.w + (g - A.g_base) * gbytes, (size_t)len * gbytes, g, 0, len);
        for (int64_t g = g0 + 4 * len; g < g1; g++) float_tile<C, 1, 1>(A, A.w + (g - A.g_base) * gbytes, gbytes, g, 0);
        return;
    }
    const bool widen = C::elem == 2 && A.n >= 16;
    thread_local std::vector<float> scratch;  // kept across calls: no page faults per matmul
    if (widen && scratch.size() < (size_t)A.n_in * kGroup * 2) scratch.resize((size_t)A.n_in * kGroup * 2);
    const size_t fstride = (size_t)A.n_in * kGroup * 4;
    for (int64_t g = g0; g < g1; g += 2) {
        const int gb = g + 2 <= g1 ? 2 : 1;
        const uint8_t* wg = A.w + (g - A.g_base) * gbytes;
        if (widen) {
            for (int b = 0; b < gb; b++)
                for (int64_t kk = 0; kk < A.n_in; kk++)
                    _mm512_storeu_ps(&scratch[(size_t)b * A.n_in * kGroup + kk * kGroup], C::load(wg + b * gbytes, kk));
        }
        for (int64_t i = 0; i < A.n; i += 8) {
            const int64_t nt = std::min<int64_t>(8, A.n - i);
            if (widen) {
                const uint8_t* sw = (const uint8_t*)scratch.data();
                if (gb == 2) float_tiles<CvtF32, 2>(A, sw, fstride, g, i, nt);
                else float_tiles<CvtF32, 1>(A, sw, fstride, g, i, nt);
            } else {
                if (gb == 2) float_tiles<C, 2>(A, wg, gbytes, g, i, nt);
                else float_tiles<C, 1>(A, wg, gbytes, g, i, nt);
            }
        }
    }
}

// ---- Q8_0 / Q4_0 weights with Q8_0 activations -----------------------------------------------
//
// One routine per type does one block (Q8_0/Q4_0) or super-block (K-quants) of NG row groups (at
// wg[0..NG)) for NT activation rows starting at i0, adding into acc[group][row]: the whole arithmetic
// of each output. The prompt tiles run it with NT rows of one group; the decode kernels (one
// activation row) with NG groups taken from NG separate places of the weight at once (NG independent
// memory streams per core keep more cache-line fetches in flight than one, and their independent
// dot-product chains interleave).

// A block's 32 activation values as the eight 4-byte broadcasts vpdpbusd takes: straight from memory
// (a tile: its rows' broadcasts would not fit in the registers, and vpdpbusd reads them as memory
// operands) or made once and kept in registers (decode: one row meets several groups).
struct ActMem {
    const int8_t* xq;
    __m512i operator[](int s) const { return bc(xq + 4 * s); }
};
struct ActRegs {
    __m512i x[8];
    explicit ActRegs(const int8_t* xq) {
        for (int s = 0; s < 8; s++) x[s] = bc(xq + 4 * s);
    }
    __m512i operator[](int s) const { return x[s]; }
};

// corr + the block's dot product of w with x, in two chains (one chain of eight would wait out the
// latency of each vpdpbusd before the next). Q8_0 weights are stored as q + 128 (unsigned for
// vpdpbusd), Q4_0 nibbles as q + 8: ActQ8::corr subtracts 128 (8) times the activation block's sum
// and adds kMagicBits for magic_to_float.
template <class X>
__attribute__((always_inline)) inline __m512i block_isum(const __m512i (&w)[8], const X& x, __m512i corr) {
    __m512i s0 = corr, s1 = _mm512_setzero_si512();
    s0 = _mm512_dpbusd_epi32(s0, w[0], x[0]);
    s1 = _mm512_dpbusd_epi32(s1, w[1], x[1]);
    s0 = _mm512_dpbusd_epi32(s0, w[2], x[2]);
    s1 = _mm512_dpbusd_epi32(s1, w[3], x[3]);
    s0 = _mm512_dpbusd_epi32(s0, w[4], x[4]);
    s1 = _mm512_dpbusd_epi32(s1, w[5], x[5]);
    s0 = _mm512_dpbusd_epi32(s0, w[6], x[6]);
    s1 = _mm512_dpbusd_epi32(s1, w[7], x[7]);
    return _mm512_add_epi32(s0, s1);
}
// acc + (dw * dx) * float(the block's dot product) (Q8_0)
template <class X>
__attribute__((always_inline)) inline __m512 block_dot(__m512 acc, const __m512i (&w)[8], const X& x, __m512i corr,
                                                       __m512 dw, __m512 dx) {
    return _mm512_fmadd_ps(_mm512_mul_ps(dw, dx), magic_to_float(block_isum(w, x, corr)), acc);
}

// One block of NG groups x NT rows; W::load(wg, b, w) gives a group's 32 values x 16 rows as eight
// vectors (values 4s..4s+3 of each row in w[s]) and returns its 16 scales.
template <class W, int NT, int NG>
__attribute__((always_inline)) inline void q8_block(const ActQ8& a, const uint8_t* const* wg, int64_t b, int64_t i0,
                                                    __m512 (&acc)[NG][NT]) {
    if constexpr (NT == 1) {
        const int64_t ii = i0 * a.nb + b;
        const ActRegs x(a.qs.data() + i0 * a.k + b * QK8_0);
        const __m512i corr = _mm512_set1_epi32(a.corr[ii]);
        const __m512 dx = _mm512_set1_ps(a.d[ii]);
        for (int g = 0; g < NG; g++) {
            __m512i w[8];
            const __m512 dw = W::load(wg[g], b, w);
            acc[g][0] = block_dot(acc[g][0], w, x, corr, dw, dx);
        }
    } else {
        for (int g = 0; g < NG; g++) {
            __m512i w[8];
            const __m512 dw = W::load(wg[g], b, w);
            for (int j = 0; j < NT; j++) {
                const int64_t ii = (i0 + j) * a.nb + b;
                acc[g][j] = block_dot(acc[g][j], w, ActMem{a.qs.data() + (i0 + j) * a.k + b * QK8_0},
                                      _mm512_set1_epi32(a.corr[ii]), dw, _mm512_set1_ps(a.d[ii]));
            }
        }
    }
}

struct Q8_0W {
    __attribute__((always_inline)) static __m512 load(const uint8_t* wg, int64_t b, __m512i (&w)[8]) {
        const uint8_t* blk = wg + pair_quant_off<kPackQ8_0>(b);
        for (int s = 0; s < 8; s++) w[s] = _mm512_loadu_si512(blk + 64 * s);
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(wg + pair_scale_off<kPackQ8_0>(b))));
    }
};
struct Q4_0W {  // low nibbles hold values 0-15, high nibbles 16-31
    __attribute__((always_inline)) static __m512 load(const uint8_t* wg, int64_t b, __m512i (&w)[8]) {
        const __m512i m4 = _mm512_set1_epi8(0x0F);
        const uint8_t* blk = wg + pair_quant_off<kPackQ4_0>(b);
        for (int s = 0; s < 4; s++) {
            const __m512i v = _mm512_loadu_si512(blk + 64 * s);
            w[s] = _mm512_and_si512(v, m4);
            w[s + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
        }
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(wg + pair_scale_off<kPackQ4_0>(b))));
    }
};

struct IQ4_NLW {  // Q4_0's layout; each index looked up as kIQ4NL + 128 (Q8_0's stored values)
    __attribute__((always_inline)) static __m512 load(const uint8_t* wg, int64_t b, __m512i (&w)[8]) {
        const __m512i m4 = _mm512_set1_epi8(0x0F);
        const __m512i lut = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i*)kIQ4NLBiased));
        const uint8_t* blk = wg + pair_quant_off<kPackQ4_0>(b);
        for (int s = 0; s < 4; s++) {
            const __m512i v = _mm512_loadu_si512(blk + 64 * s);
            w[s] = _mm512_shuffle_epi8(lut, _mm512_and_si512(v, m4));
            w[s + 4] = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(v, 4), m4));
        }
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(wg + pair_scale_off<kPackQ4_0>(b))));
    }
};

template <int NT, int NG>
__attribute__((always_inline)) inline void iq4_nl_block(const ActQ8& a, const uint8_t* const* wg, int64_t b, int64_t i0,
                                                        __m512 (&acc)[NG][NT]) {
    q8_block<IQ4_NLW, NT, NG>(a, wg, b, i0, acc);
}

template <int NT, int NG>
__attribute__((always_inline)) inline void q8_0_block(const ActQ8& a, const uint8_t* const* wg, int64_t b, int64_t i0,
                                                      __m512 (&acc)[NG][NT]) {
    q8_block<Q8_0W, NT, NG>(a, wg, b, i0, acc);
}

// One activation scale group c (kActGroupQ4_0 blocks, the last group fewer) of NG groups x NT rows:
// t = fma(dw, float(isum), t) per block, then acc = fma(dx, t, acc). (The group size as a constant, not
// a.gb, which always equals it for Q4_0: the compiler unrolls a loop of constant count, which made
// the ViT products faster.)
template <int NT, int NG>
__attribute__((always_inline)) inline void q4_0_group(const ActQ8& a, const uint8_t* const* wg, int64_t c, int64_t i0,
                                                      __m512 (&acc)[NG][NT]) {
    __m512 t[NG][NT];
    for (int g = 0; g < NG; g++)
        for (int j = 0; j < NT; j++) t[g][j] = _mm512_setzero_ps();
    const int64_t b1 = std::min(a.nb, (c + 1) * kActGroupQ4_0);
    for (int64_t b = c * kActGroupQ4_0; b < b1; b++) {
        if constexpr (NT == 1) {
            const ActRegs x(a.qs.data() + i0 * a.k + b * QK8_0);
            const __m512i corr = _mm512_set1_epi32(a.corr[i0 * a.nb + b]);
            for (int g = 0; g < NG; g++) {
                __m512i w[8];
                const __m512 dw = Q4_0W::load(wg[g], b, w);
                t[g][0] = _mm512_fmadd_ps(dw, magic_to_float(block_isum(w, x, corr)), t[g][0]);
            }
        } else {
            for (int g = 0; g < NG; g++) {
                __m512i w[8];
                const __m512 dw = Q4_0W::load(wg[g], b, w);
                for (int j = 0; j < NT; j++) {
                    const __m512i corr = _mm512_set1_epi32(a.corr[(i0 + j) * a.nb + b]);
                    const ActMem x{a.qs.data() + (i0 + j) * a.k + b * QK8_0};
                    t[g][j] = _mm512_fmadd_ps(dw, magic_to_float(block_isum(w, x, corr)), t[g][j]);
                }
            }
        }
    }
    for (int j = 0; j < NT; j++) {
        const __m512 dx = _mm512_set1_ps(a.d[(i0 + j) * a.ng + c]);
        for (int g = 0; g < NG; g++) acc[g][j] = _mm512_fmadd_ps(dx, t[g][j], acc[g][j]);
    }
}

// Q4_1 / Q5_1 (values with a minimum): per activation scale group c, per block
// t = fma(dw, float(isum), t); t = fma(mw, float(xsum), t); then acc = fma(dx, t, acc). The values are
// stored as they are (offset 0: corr is kMagicBits alone).
struct Q4_1W {  // nibbles as Q4_0W
    static constexpr size_t kBytes = kPackQ4_1;
    __attribute__((always_inline)) static void load(const uint8_t* blk, __m512i (&w)[8]) {
        const __m512i m4 = _mm512_set1_epi8(0x0F);
        for (int s = 0; s < 4; s++) {
            const __m512i v = _mm512_loadu_si512(blk + 64 + 64 * s);
            w[s] = _mm512_and_si512(v, m4);
            w[s + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
        }
    }
};
struct Q5_1W {  // one byte per value
    static constexpr size_t kBytes = kPackQ5_1;
    __attribute__((always_inline)) static void load(const uint8_t* blk, __m512i (&w)[8]) {
        for (int s = 0; s < 8; s++) w[s] = _mm512_loadu_si512(blk + 64 + 64 * s);
    }
};

template <class W, int NT, int NG>
__attribute__((always_inline)) inline void min_group(const ActQ8& a, const uint8_t* const* wg, int64_t c, int64_t i0,
                                                     __m512 (&acc)[NG][NT]) {
    __m512 t[NG][NT];
    for (int g = 0; g < NG; g++)
        for (int j = 0; j < NT; j++) t[g][j] = _mm512_setzero_ps();
    const int64_t b1 = std::min(a.nb, (c + 1) * kActGroupQ4_0);
    for (int64_t b = c * kActGroupQ4_0; b < b1; b++) {
        for (int g = 0; g < NG; g++) {
            const uint8_t* blk = wg[g] + b * W::kBytes;
            __m512i w[8];
            W::load(blk, w);
            const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)blk));
            const __m512 mw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(blk + 32)));
            for (int j = 0; j < NT; j++) {
                const int64_t ii = (i0 + j) * a.nb + b;
                const ActMem x{a.qs.data() + (i0 + j) * a.k + b * QK8_0};
                t[g][j] = _mm512_fmadd_ps(dw, magic_to_float(block_isum(w, x, _mm512_set1_epi32(a.corr[ii]))), t[g][j]);
                t[g][j] = _mm512_fmadd_ps(mw, _mm512_set1_ps((float)a.sum[ii]), t[g][j]);
            }
        }
    }
    for (int j = 0; j < NT; j++) {
        const __m512 dx = _mm512_set1_ps(a.d[(i0 + j) * a.ng + c]);
        for (int g = 0; g < NG; g++) acc[g][j] = _mm512_fmadd_ps(dx, t[g][j], acc[g][j]);
    }
}
template <int NT, int NG>
__attribute__((always_inline)) inline void q4_1_group(const ActQ8& a, const uint8_t* const* wg, int64_t c, int64_t i0,
                                                      __m512 (&acc)[NG][NT]) {
    min_group<Q4_1W, NT, NG>(a, wg, c, i0, acc);
}
template <int NT, int NG>
__attribute__((always_inline)) inline void q5_1_group(const ActQ8& a, const uint8_t* const* wg, int64_t c, int64_t i0,
                                                      __m512 (&acc)[NG][NT]) {
    min_group<Q5_1W, NT, NG>(a, wg, c, i0, acc);
}

// ---- K-quant weights with Q8_K activations ---------------------------------------------------

// Q4_K, and Q5_K (Q5: the 5th bits come from the qh slots after Q4_K's layout, bit 2c of a qh byte for
// the low nibbles of chunk c, bit 2c + 1 for the high ones).
template <int NT, int NG, bool Q5 = false>
__attribute__((always_inline)) inline void q4_K_super(const ActQ8K& a, const uint8_t* const* wg, int64_t b, int64_t i0,
                                                      __m512 (&acc)[NG][NT]) {
    const int64_t nb = a.nb, k = a.k;
    const __m512i m4 = _mm512_set1_epi8(0x0F), one = _mm512_set1_epi8(1);
    const uint8_t* blks[NG];
    for (int g = 0; g < NG; g++) blks[g] = wg[g] + b * (Q5 ? kPackQ5_K : kPackQ4_K);
    const int8_t* xb = a.qs.data() + i0 * k + b * QK_K;
    __m512i isum[NG][NT];
    for (int g = 0; g < NG; g++)
        for (int j = 0; j < NT; j++) isum[g][j] = _mm512_setzero_si512();
    for (int c = 0; c < 4; c++) {
        __m512i ae[NG][NT], ao[NG][NT];
        for (int g = 0; g < NG; g++)
            for (int j = 0; j < NT; j++) ae[g][j] = ao[g][j] = _mm512_setzero_si512();
        for (int s = 0; s < 8; s++)
            for (int g = 0; g < NG; g++) {
                const __m512i v = _mm512_loadu_si512(blks[g] + 320 + 64 * (8 * c + s));
                __m512i lo = _mm512_and_si512(v, m4);
                __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
                if constexpr (Q5) {  // bit b of each byte to bit 4 (16-bit shifts; the masks keep bytes apart)
                    const __m512i h = _mm512_loadu_si512(blks[g] + kPackQ4_K + 64 * s);
                    lo = _mm512_or_si512(lo, _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(h, 2 * c), one), 4));
                    hi = _mm512_or_si512(hi, _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(h, 2 * c + 1), one), 4));
                }
                for (int j = 0; j < NT; j++) {
                    const int8_t* xq = xb + j * k + 64 * c + 4 * s;
                    ae[g][j] = _mm512_dpbusd_epi32(ae[g][j], lo, bc(xq));
                    ao[g][j] = _mm512_dpbusd_epi32(ao[g][j], hi, bc(xq + 32));
                }
            }
        for (int g = 0; g < NG; g++) {
            const uint8_t* blk = blks[g];
            const __m512i sce = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(blk + 64 + 16 * (2 * c))));
            const __m512i sco = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(blk + 64 + 16 * (2 * c + 1))));
            for (int j = 0; j < NT; j++)
                isum[g][j] = _mm512_add_epi32(isum[g][j], _mm512_add_epi32(_mm512_mullo_epi32(ae[g][j], sce),
                                                                           _mm512_mullo_epi32(ao[g][j], sco)));
        }
    }
    for (int g = 0; g < NG; g++) {
        const uint8_t* blk = blks[g];
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)blk));
        const __m512 dm = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(blk + 32)));
        __m512i mp[4];
        for (int p = 0; p < 4; p++)
            mp[p] = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)(blk + 192 + 32 * p)));
        for (int j = 0; j < NT; j++) {
            const int64_t ii = (i0 + j) * nb + b;
            const int32_t* pr = a.pair32.data() + ii * 4;
            __m512i msum = _mm512_setzero_si512();
            for (int p = 0; p < 4; p++) msum = _mm512_dpwssd_epi32(msum, mp[p], _mm512_set1_epi32(pr[p]));
            const __m512 dx = _mm512_set1_ps(a.d[ii]);
            acc[g][j] = _mm512_fmadd_ps(_mm512_mul_ps(dw, dx), _mm512_cvtepi32_ps(isum[g][j]), acc[g][j]);
            acc[g][j] = _mm512_fnmadd_ps(_mm512_mul_ps(dm, dx), _mm512_cvtepi32_ps(msum), acc[g][j]);
        }
    }
}

// Q6_K, and Q3_K (widened into its layout); Q2 (Q2_K): the layout of Q6_K plus the mins (matmul_impl.h).
template <int NT, int NG, bool Q2 = false>
__attribute__((always_inline)) inline void q6_K_super(const ActQ8K& a, const uint8_t* const* wg, int64_t b, int64_t i0,
                                                      __m512 (&acc)[NG][NT]) {
    constexpr size_t stride = Q2 ? kPackQ2_K : kPackQ6_K;
    const int64_t nb = a.nb, k = a.k;
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    __m512i isum[NG][NT];
    for (int g = 0; g < NG; g++)
        for (int j = 0; j < NT; j++) isum[g][j] = _mm512_setzero_si512();
    for (int t = 0; t < 16; t++)
        for (int g = 0; g < NG; g++) {
            const uint8_t* blk = wg[g] + b * stride;
            const uint8_t* qq = blk + 288 + 192 * t;
            const __m512i l0 = _mm512_loadu_si512(qq), l1 = _mm512_loadu_si512(qq + 64);
            const __m512i h = _mm512_loadu_si512(qq + 128);
            const __m512i u0 = _mm512_or_si512(_mm512_and_si512(l0, m4), _mm512_and_si512(_mm512_slli_epi16(h, 4), m30));
            const __m512i u1 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l0, 4), m4),
                                               _mm512_and_si512(_mm512_slli_epi16(h, 2), m30));
            const __m512i u2 = _mm512_or_si512(_mm512_and_si512(l1, m4), _mm512_and_si512(h, m30));
            const __m512i u3 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l1, 4), m4),
                                               _mm512_and_si512(_mm512_srli_epi16(h, 2), m30));
            const __m512i sc = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(blk + 32 + 16 * t)));
            for (int j = 0; j < NT; j++) {
                const int64_t ii = (i0 + j) * nb + b;
                const int8_t* xq = a.qs.data() + (i0 + j) * k + b * QK_K + 16 * t;
                __m512i sm = _mm512_set1_epi32(-32 * a.bsum[ii * 16 + t]);  // values are stored as q + 32
                sm = _mm512_dpbusd_epi32(sm, u0, bc(xq));
                sm = _mm512_dpbusd_epi32(sm, u1, bc(xq + 4));
                sm = _mm512_dpbusd_epi32(sm, u2, bc(xq + 8));
                sm = _mm512_dpbusd_epi32(sm, u3, bc(xq + 12));
                isum[g][j] = _mm512_add_epi32(isum[g][j], _mm512_mullo_epi32(sm, sc));
            }
        }
    for (int g = 0; g < NG; g++) {
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(wg[g] + b * stride)));
        for (int j = 0; j < NT; j++) {
            const __m512 dx = _mm512_set1_ps(a.d[(i0 + j) * nb + b]);
            acc[g][j] = _mm512_fmadd_ps(_mm512_mul_ps(dw, dx), _mm512_cvtepi32_ps(isum[g][j]), acc[g][j]);
        }
        if constexpr (Q2) {
            const uint8_t* mb = wg[g] + b * stride + kPackQ6_K;
            const __m512 dm = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)mb));
            __m512i mp[8];  // (m of sub-block 2p, m of 2p + 1) of each of the 16 rows
            for (int p = 0; p < 8; p++) mp[p] = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)(mb + 32 + 32 * p)));
            for (int j = 0; j < NT; j++) {
                const int64_t ii = (i0 + j) * nb + b;
                const int32_t* bs = a.bsum.data() + ii * 16;
                __m512i msum = _mm512_setzero_si512();
                for (int p = 0; p < 8; p++)
                    msum = _mm512_dpwssd_epi32(msum, mp[p], _mm512_set1_epi32(pack_int16_pair(bs[2 * p], bs[2 * p + 1])));
                const __m512 dx = _mm512_set1_ps(a.d[ii]);
                acc[g][j] = _mm512_fnmadd_ps(_mm512_mul_ps(dm, dx), _mm512_cvtepi32_ps(msum), acc[g][j]);
            }
        }
    }
}

// IQ4_XS: Q4_K's walk over the nibbles, each index looked up (vpshufb) as kIQ4NL + 128, unsigned for
// vpdpbusd; each sub-block's dot starts at -128 times its activation sum, which leaves the exact dot of
// the signed values, then takes its signed scale.
template <int NT, int NG>
__attribute__((always_inline)) inline void iq4_xs_super(const ActQ8K& a, const uint8_t* const* wg, int64_t b, int64_t i0,
                                                        __m512 (&acc)[NG][NT]) {
    const int64_t nb = a.nb, k = a.k;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i lut = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i*)kIQ4NLBiased));
    const uint8_t* blks[NG];
    for (int g = 0; g < NG; g++) blks[g] = wg[g] + b * kPackIQ4_XS;
    const int8_t* xb = a.qs.data() + i0 * k + b * QK_K;
    __m512i isum[NG][NT];
    for (int g = 0; g < NG; g++)
        for (int j = 0; j < NT; j++) isum[g][j] = _mm512_setzero_si512();
    for (int c = 0; c < 4; c++) {
        __m512i ae[NG][NT], ao[NG][NT];
        for (int j = 0; j < NT; j++) {
            const int32_t* bs = a.bsum.data() + ((i0 + j) * nb + b) * 16 + 4 * c;  // sums of 16: sub-blocks 2c, 2c + 1
            const __m512i ce = _mm512_set1_epi32(-128 * (bs[0] + bs[1])), co = _mm512_set1_epi32(-128 * (bs[2] + bs[3]));
            for (int g = 0; g < NG; g++) ae[g][j] = ce, ao[g][j] = co;
        }
        for (int s = 0; s < 8; s++)
            for (int g = 0; g < NG; g++) {
                const __m512i v = _mm512_loadu_si512(blks[g] + 192 + 64 * (8 * c + s));
                const __m512i lo = _mm512_shuffle_epi8(lut, _mm512_and_si512(v, m4));
                const __m512i hi = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(v, 4), m4));
                for (int j = 0; j < NT; j++) {
                    const int8_t* xq = xb + j * k + 64 * c + 4 * s;
                    ae[g][j] = _mm512_dpbusd_epi32(ae[g][j], lo, bc(xq));
                    ao[g][j] = _mm512_dpbusd_epi32(ao[g][j], hi, bc(xq + 32));
                }
            }
        for (int g = 0; g < NG; g++) {
            const uint8_t* blk = blks[g];
            const __m512i sce = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(blk + 32 + 16 * (2 * c))));
            const __m512i sco = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(blk + 32 + 16 * (2 * c + 1))));
            for (int j = 0; j < NT; j++)
                isum[g][j] = _mm512_add_epi32(isum[g][j], _mm512_add_epi32(_mm512_mullo_epi32(ae[g][j], sce),
                                                                           _mm512_mullo_epi32(ao[g][j], sco)));
        }
    }
    for (int g = 0; g < NG; g++) {
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)blks[g]));
        for (int j = 0; j < NT; j++) {
            const __m512 dx = _mm512_set1_ps(a.d[(i0 + j) * nb + b]);
            acc[g][j] = _mm512_fmadd_ps(_mm512_mul_ps(dw, dx), _mm512_cvtepi32_ps(isum[g][j]), acc[g][j]);
        }
    }
}

// ---- prompt tiles (NT activation rows of one group) and decode kernels (NG groups, one row) ----
// (each calls its routine directly: called through a template parameter, GCC compiled a tile to slower code);
// STEPS: the ActQ8/ActQ8K field that counts STEP's units (blocks, scale groups or super-blocks).

// A few activation rows take the prompt tiles over a thread's contiguous range of groups (see
// prefetch_step in matmul_impl.h).

#define TG_TILE_AND_VEC(NAME, ACT, STEP, STEPS)                                                      \
    template <int NT>                                                                                \
    void NAME##_tile(const GemmArgs& A, const uint8_t* wg, int64_t g, int64_t i0) {                  \
        const auto& a = *A.ACT;                                                                      \
        __m512 acc[1][NT];                                                                           \
        for (int j = 0; j < NT; j++) acc[0][j] = _mm512_setzero_ps();                                \
        const int64_t pf_step = prefetch_step(A.prefetch, a.STEPS);                                   \
        for (int64_t b = 0; b < a.STEPS; b++) {                                                      \
            if (pf_step) prefetch_lines(wg + A.prefetch + b * pf_step, pf_step);                     \
            STEP<NT, 1>(a, &wg, b, i0, acc);                                                         \
        }                                                                                            \
        for (int j = 0; j < NT; j++) store_out(A, i0 + j, g, acc[0][j]);                             \
    }                                                                                                \
    template <int NG>                                                                                \
    void NAME##_vec(const GemmArgs& A, const uint8_t* const* wg, const int64_t* g) {                 \
        const auto& a = *A.ACT;                                                                      \
        __m512 acc[NG][1];                                                                           \
        for (int j = 0; j < NG; j++) acc[j][0] = _mm512_setzero_ps();                                \
        for (int64_t b = 0; b < a.STEPS; b++) STEP<1, NG>(a, wg, b, 0, acc);                         \
        for (int j = 0; j < NG; j++) store_out(A, 0, g[j], acc[j][0]);                               \
    }

TG_TILE_AND_VEC(q8_0, a8, q8_0_block, nb)
TG_TILE_AND_VEC(iq4_nl, a8, iq4_nl_block, nb)
TG_TILE_AND_VEC(q4_0, a8, q4_0_group, ng)
TG_TILE_AND_VEC(q4_1, a8, q4_1_group, ng)
TG_TILE_AND_VEC(q5_1, a8, q5_1_group, ng)
TG_TILE_AND_VEC(q4_K, ak, q4_K_super, nb)
template <int NT, int NG>
__attribute__((always_inline)) inline void q5_K_super(const ActQ8K& a, const uint8_t* const* wg, int64_t b, int64_t i0,
                                                      __m512 (&acc)[NG][NT]) {
    q4_K_super<NT, NG, true>(a, wg, b, i0, acc);
}
TG_TILE_AND_VEC(q5_K, ak, q5_K_super, nb)
TG_TILE_AND_VEC(q6_K, ak, q6_K_super, nb)
template <int NT, int NG>
__attribute__((always_inline)) inline void q2_K_super(const ActQ8K& a, const uint8_t* const* wg, int64_t b, int64_t i0,
                                                      __m512 (&acc)[NG][NT]) {
    q6_K_super<NT, NG, true>(a, wg, b, i0, acc);
}
TG_TILE_AND_VEC(q2_K, ak, q2_K_super, nb)
TG_TILE_AND_VEC(iq4_xs, ak, iq4_xs_super, nb)
#undef TG_TILE_AND_VEC

using TileFn = void (*)(const GemmArgs&, const uint8_t*, int64_t, int64_t);

// Row groups outer, activation tiles of up to MaxNT rows inner (the unpacked weights of a block
// are reused across the tile); activations are taken in L2-sized chunks.
template <int MaxNT>
void quant_gemm(const GemmArgs& A, int64_t g0, int64_t g1, size_t gbytes, const TileFn (&tiles)[MaxNT]) {
    const int64_t chunk = act_chunk_rows(A.n, A.n_in, MaxNT);
    for (int64_t c0 = 0; c0 < A.n; c0 += chunk) {
        const int64_t c1 = std::min(A.n, c0 + chunk);
        for (int64_t g = g0; g < g1; g++) {
            const uint8_t* wg = A.w + (g - A.g_base) * gbytes;
            for (int64_t i = c0; i < c1; i += MaxNT) {
                const int64_t nt = std::min<int64_t>(MaxNT, c1 - i);
                tiles[nt - 1](A, wg, g, i);
            }
        }
    }
}

template <int NT> struct IQ4_NLK { static void run(const GemmArgs& A, const uint8_t* w, int64_t g, int64_t i) { iq4_nl_tile<NT>(A, w, g, i); } };
template <int NT> struct Q8_0K { static void run(const GemmArgs& A, const uint8_t* w, int64_t g, int64_t i) { q8_0_tile<NT>(A, w, g, i); } };
template <int NT> struct Q4_0K { static void run(const GemmArgs& A, const uint8_t* w, int64_t g, int64_t i) { q4_0_tile<NT>(A, w, g, i); } };
template <int NT> struct Q4_1K { static void run(const GemmArgs& A, const uint8_t* w, int64_t g, int64_t i) { q4_1_tile<NT>(A, w, g, i); } };
template <int NT> struct Q5_1K { static void run(const GemmArgs& A, const uint8_t* w, int64_t g, int64_t i) { q5_1_tile<NT>(A, w, g, i); } };
template <int NT> struct Q4_KK { static void run(const GemmArgs& A, const uint8_t* w, int64_t g, int64_t i) { q4_K_tile<NT>(A, w, g, i); } };
template <int NT> struct Q5_KK { static void run(const GemmArgs& A, const uint8_t* w, int64_t g, int64_t i) { q5_K_tile<NT>(A, w, g, i); } };
template <int NT> struct IQ4_XSK { static void run(const GemmArgs& A, const uint8_t* w, int64_t g, int64_t i) { iq4_xs_tile<NT>(A, w, g, i); } };
template <int NT> struct Q6_KK { static void run(const GemmArgs& A, const uint8_t* w, int64_t g, int64_t i) { q6_K_tile<NT>(A, w, g, i); } };
template <int NT> struct Q2_KK { static void run(const GemmArgs& A, const uint8_t* w, int64_t g, int64_t i) { q2_K_tile<NT>(A, w, g, i); } };

#if defined(TINYGPTV_AMX)
// ---- AMX tiles: prompt products of Q8_0, Q4_0 and IQ4_NL weights ---------------------------------
//
// One tile product per block: tdpbsud multiplies 16 activation rows' 32 int8 values (A: 16 x 32
// bytes, straight from ActQ8::qs) by one group's 32 values x 16 outputs (B: 8 lines of [16 outputs]
// [4 values], which is both the repacked layout's slots and AMX's operand layout: Q8_0's are loaded as
// they are, 4-bit blocks are unpacked into a scratch line first) into exact int32 sums (C: 16 x 16).
// Each output then takes the float steps of the vpdpbusd tiles, so results are bit-identical to
// theirs. Two sets of tiles (0-2 and 3-5) keep two blocks' products in flight.
constexpr int kAmxRows = 16;

struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

// The tile configuration belongs to the calling thread; released at the end of the scope, a thread
// carries no tile state through context switches.
struct AmxScope {
    AmxScope() {
        TileConfig c;
        for (int s = 0; s < 2; s++) {
            c.rows[3 * s] = kAmxRows;       c.colsb[3 * s] = QK8_0;  // A: rows x 32 int8
            c.rows[3 * s + 1] = QK8_0 / 4;  c.colsb[3 * s + 1] = 64; // B: 8 x [16 outputs][4 values]
            c.rows[3 * s + 2] = kAmxRows;   c.colsb[3 * s + 2] = 64; // C: rows x 16 int32
        }
        _tile_loadconfig(&c);
    }
    ~AmxScope() { _tile_release(); }
    AmxScope(const AmxScope&) = delete;
    AmxScope& operator=(const AmxScope&) = delete;
};

// B operands: a block's 32 values of one group as 8 lines of 64 bytes, and the group's 16 scales.
struct Q8_0Amx {  // the layout's slots as they are
    static const uint8_t* values(const uint8_t* wg, int64_t b, uint8_t*) { return wg + pair_quant_off<kPackQ8_0>(b); }
    static __m512 scales(const uint8_t* wg, int64_t b) {
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(wg + pair_scale_off<kPackQ8_0>(b))));
    }
};
template <class W>  // Q4_0W, IQ4_NLW: unpacked as their vpdpbusd tiles unpack them
struct UnpackedAmx {
    static const uint8_t* values(const uint8_t* wg, int64_t b, uint8_t* line) {
        __m512i w[8];
        W::load(wg, b, w);
        for (int s = 0; s < 8; s++) _mm512_store_si512(line + 64 * s, w[s]);
        return line;
    }
    static __m512 scales(const uint8_t* wg, int64_t b) {
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(wg + pair_scale_off<kPackQ4_0>(b))));
    }
};

// The exact int32 sums of blocks b (into c[0]) and, with TWO, b + 1 (into c[1]) for 16 rows from x.
template <class B, bool TWO>
__attribute__((always_inline)) inline void amx_blocks(const uint8_t* wg, const int8_t* x, int64_t k, int64_t b,
                                                      uint8_t (*line)[512], int32_t (*c)[kAmxRows * 16]) {
    _tile_loadd(0, x + b * QK8_0, k);
    _tile_loadd(1, B::values(wg, b, line[0]), 64);
    _tile_zero(2);
    _tile_dpbsud(2, 0, 1);
    if constexpr (TWO) {
        _tile_loadd(3, x + (b + 1) * QK8_0, k);
        _tile_loadd(4, B::values(wg, b + 1, line[1]), 64);
        _tile_zero(5);
        _tile_dpbsud(5, 3, 4);
    }
    _tile_stored(2, c[0], 64);
    if constexpr (TWO) _tile_stored(5, c[1], 64);
}

// Q8_0 arithmetic (Q8_0, IQ4_NL): acc = fma(dw * dx, float(corr + isum), acc) per block.
template <class B, bool TWO>
__attribute__((always_inline)) inline void amx_q8_blocks(const ActQ8& a, const uint8_t* wg, const int8_t* x, int64_t i0,
                                                         int64_t b, uint8_t (*line)[512], int32_t (*c)[kAmxRows * 16],
                                                         __m512 (&acc)[kAmxRows]) {
    amx_blocks<B, TWO>(wg, x, a.k, b, line, c);
    for (int h = 0; h < 1 + TWO; h++) {
        const __m512 dw = B::scales(wg, b + h);
        const int32_t* corr = a.corr.data() + i0 * a.nb + b + h;
        const float* dx = a.d.data() + i0 * a.nb + b + h;
        for (int j = 0; j < kAmxRows; j++) {
            const __m512i isum = _mm512_add_epi32(_mm512_set1_epi32(corr[j * a.nb]), _mm512_load_si512(c[h] + 16 * j));
            acc[j] = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_set1_ps(dx[j * a.nb])), magic_to_float(isum), acc[j]);
        }
    }
}

template <class B>
void amx_q8_tile(const GemmArgs& A, const uint8_t* wg, int64_t g, int64_t i0) {
    const ActQ8& a = *A.a8;
    alignas(64) uint8_t line[2][512];
    alignas(64) int32_t c[2][kAmxRows * 16];
    __m512 acc[kAmxRows];
    for (int j = 0; j < kAmxRows; j++) acc[j] = _mm512_setzero_ps();
    const int8_t* x = a.qs.data() + i0 * a.k;
    int64_t b = 0;
    for (; b + 2 <= a.nb; b += 2) amx_q8_blocks<B, true>(a, wg, x, i0, b, line, c, acc);
    if (b < a.nb) amx_q8_blocks<B, false>(a, wg, x, i0, b, line, c, acc);
    for (int j = 0; j < kAmxRows; j++) store_out(A, i0 + j, g, acc[j]);
}

// Q4_0 arithmetic: per activation scale group, t = fma(dw, float(corr + isum), t) per block, then
// acc = fma(dx, t, acc) (acc kept in memory: with t, 32 vectors would not fit in the registers).
template <bool TWO>
__attribute__((always_inline)) inline void amx_q4_0_blocks(const ActQ8& a, const uint8_t* wg, const int8_t* x, int64_t i0,
                                                           int64_t b, uint8_t (*line)[512], int32_t (*c)[kAmxRows * 16],
                                                           __m512 (&t)[kAmxRows]) {
    using B = UnpackedAmx<Q4_0W>;
    amx_blocks<B, TWO>(wg, x, a.k, b, line, c);
    for (int h = 0; h < 1 + TWO; h++) {
        const __m512 dw = B::scales(wg, b + h);
        const int32_t* corr = a.corr.data() + i0 * a.nb + b + h;
        for (int j = 0; j < kAmxRows; j++) {
            const __m512i isum = _mm512_add_epi32(_mm512_set1_epi32(corr[j * a.nb]), _mm512_load_si512(c[h] + 16 * j));
            t[j] = _mm512_fmadd_ps(dw, magic_to_float(isum), t[j]);
        }
    }
}

void amx_q4_0_tile(const GemmArgs& A, const uint8_t* wg, int64_t g, int64_t i0) {
    const ActQ8& a = *A.a8;
    alignas(64) uint8_t line[2][512];
    alignas(64) int32_t c[2][kAmxRows * 16];
    alignas(64) float acc[kAmxRows][16] = {};
    const int8_t* x = a.qs.data() + i0 * a.k;
    for (int64_t cg = 0; cg < a.ng; cg++) {
        __m512 t[kAmxRows];
        for (int j = 0; j < kAmxRows; j++) t[j] = _mm512_setzero_ps();
        const int64_t b1 = std::min(a.nb, (cg + 1) * kActGroupQ4_0);
        int64_t b = cg * kActGroupQ4_0;
        for (; b + 2 <= b1; b += 2) amx_q4_0_blocks<true>(a, wg, x, i0, b, line, c, t);
        if (b < b1) amx_q4_0_blocks<false>(a, wg, x, i0, b, line, c, t);
        for (int j = 0; j < kAmxRows; j++)
            _mm512_store_ps(acc[j], _mm512_fmadd_ps(_mm512_set1_ps(a.d[(i0 + j) * a.ng + cg]), t[j], _mm512_load_ps(acc[j])));
    }
    for (int j = 0; j < kAmxRows; j++) store_out(A, i0 + j, g, _mm512_load_ps(acc[j]));
}

// quant_gemm with 16-row AMX tiles; the rows after the last whole tile of a chunk take the vpdpbusd tiles.
template <int MaxNT>
void amx_gemm(const GemmArgs& A, int64_t g0, int64_t g1, size_t gbytes, TileFn amx_tile, const TileFn (&tiles)[MaxNT]) {
    AmxScope scope;
    const int64_t chunk = act_chunk_rows(A.n, A.n_in, kAmxRows);
    for (int64_t c0 = 0; c0 < A.n; c0 += chunk) {
        const int64_t c1 = std::min(A.n, c0 + chunk);
        // Tiles outer: a tile's 16 activation rows stay in L1 while the range's weights (a chunk of
        // about 256 KB, see matmul()) come from L2; the AMX tile loads wait on L2 otherwise.
        const int64_t whole = c0 + (c1 - c0) / kAmxRows * kAmxRows;
        for (int64_t i = c0; i < whole; i += kAmxRows)
            for (int64_t g = g0; g < g1; g++) amx_tile(A, A.w + (g - A.g_base) * gbytes, g, i);
        for (int64_t g = g0; g < g1; g++)
            for (int64_t i = whole; i < c1; i += MaxNT)
                tiles[std::min<int64_t>(MaxNT, c1 - i) - 1](A, A.w + (g - A.g_base) * gbytes, g, i);
    }
}

// AMX for products of at least one whole tile of rows (prompts, the vision tower).
inline bool use_amx(const GemmArgs& A) { return A.n >= kAmxRows && amx_active(); }
#endif  // TINYGPTV_AMX

// ---- activation quantizers (byte-identical to the scalar ones in matmul.cpp) ------------------

inline bool has_nan(__m512 v) { return _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) != 0; }

inline __m512 abs_ps(__m512 v) { return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fffffff))); }

// Lane b of the result combines (op) the 16 lanes of m[kTreeSlot[b]]: a transpose-and-combine tree
// of 15 steps (two shuffles and one op each) instead of 16 horizontal reductions. m is overwritten.
constexpr int kTreeSlot[16] = {0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15};

template <class Op>
inline __m512 combine16(__m512* m, Op op) {
    for (int i = 0; i < 8; i++)
        m[i] = op(_mm512_shuffle_f32x4(m[i], m[i + 8], 0x44), _mm512_shuffle_f32x4(m[i], m[i + 8], 0xEE));
    for (int i = 0; i < 4; i++)
        m[i] = op(_mm512_shuffle_f32x4(m[i], m[i + 4], 0x88), _mm512_shuffle_f32x4(m[i], m[i + 4], 0xDD));
    for (int i = 0; i < 2; i++)
        m[i] = op(_mm512_shuffle_ps(m[i], m[i + 2], 0x44), _mm512_shuffle_ps(m[i], m[i + 2], 0xEE));
    return op(_mm512_shuffle_ps(m[0], m[1], 0x88), _mm512_shuffle_ps(m[0], m[1], 0xDD));
}

// Up to sixteen blocks (nblk, 512 values) at once, as the scalar quantize_act_q8_row: the block maxima and sums
// are gathered into one vector each and the scale divisions run 16 wide (IEEE, so the same values).
// q = trunc(v + copysign(0.49999997, v)) is round-half-away-from-zero for |v| < 2^23 (the sum rounds
// up past the next integer exactly when |v| has a fraction >= 0.5), and |v| <= 127.5 here, so no
// clamp is needed. Returns false, writing nothing, if a value is NaN or a block maximum is not finite
// (those take the scalar path).
inline bool quantize_16_blocks(const float* x, int nblk, int8_t* qs, float* d, int32_t* sum, int gb) {
    __m512 m[16];
    __mmask16 nan = 0;
    for (int b = nblk; b < 16; b++) m[kTreeSlot[b]] = _mm512_setzero_ps();
    for (int b = 0; b < nblk; b++) {
        const __m512 v0 = _mm512_loadu_ps(x + 32 * b), v1 = _mm512_loadu_ps(x + 32 * b + 16);
        nan |= _mm512_cmp_ps_mask(v0, v1, _CMP_UNORD_Q);
        m[kTreeSlot[b]] = _mm512_max_ps(abs_ps(v0), abs_ps(v1));
    }
    __m512 amax = combine16(m, [](__m512 a, __m512 b) { return _mm512_max_ps(a, b); });
    if (gb == 4) {  // the maximum of each 4 blocks (a 128-bit lane) in all four of its lanes
        amax = _mm512_max_ps(amax, _mm512_shuffle_ps(amax, amax, 0xB1));
        amax = _mm512_max_ps(amax, _mm512_shuffle_ps(amax, amax, 0x4E));
    }
    if (nan || _mm512_cmp_ps_mask(amax, _mm512_set1_ps(3.4028235e38f), _CMP_GT_OQ)) return false;
    const __m512 dd = _mm512_div_ps(amax, _mm512_set1_ps(127.f));
    const __mmask16 nz = _mm512_cmp_ps_mask(dd, _mm512_setzero_ps(), _CMP_NEQ_OQ);
    const __m512 id = _mm512_maskz_div_ps(nz, _mm512_set1_ps(1.0f), dd);
    const __m512 dh = _mm512_cvtph_ps(_mm512_cvtps_ph(dd, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __mmask16 keep = (__mmask16)((1u << nblk) - 1);
    if (gb == 4) _mm512_mask_storeu_ps(d, (__mmask16)((1u << ((nblk + 3) / 4)) - 1), _mm512_maskz_compress_ps(0x1111, dh));
    else _mm512_mask_storeu_ps(d, keep, dh);
    // a block whose fp16 scale is 0 gets all-zero values: its multiplier is 0
    alignas(64) float ids[16];
    _mm512_store_ps(ids, _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(dh, _mm512_setzero_ps(), _CMP_NEQ_OQ), id));
    const __m512 half = _mm512_set1_ps(0.49999997f);
    const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
    for (int b = 0; b < nblk; b++) {
        const __m512 vid = _mm512_set1_ps(ids[b]);
        const __m512 v0 = _mm512_mul_ps(_mm512_loadu_ps(x + 32 * b), vid);
        const __m512 v1 = _mm512_mul_ps(_mm512_loadu_ps(x + 32 * b + 16), vid);
        // copysign(half, v): take the sign bit from v, the rest from half
        const __m512 h0 = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(sign, _mm512_castps_si512(v0), _mm512_castps_si512(half), 0xCA));
        const __m512 h1 = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(sign, _mm512_castps_si512(v1), _mm512_castps_si512(half), 0xCA));
        const __m512i q0 = _mm512_cvttps_epi32(_mm512_add_ps(v0, h0));
        const __m512i q1 = _mm512_cvttps_epi32(_mm512_add_ps(v1, h1));
        _mm_storeu_si128((__m128i*)(qs + 32 * b), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i*)(qs + 32 * b + 16), _mm512_cvtepi32_epi8(q1));
        m[kTreeSlot[b]] = _mm512_castsi512_ps(_mm512_add_epi32(q0, q1));
    }
    const __m512 s = combine16(m, [](__m512 a, __m512 b) {
        return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(a), _mm512_castps_si512(b)));
    });
    _mm512_mask_storeu_epi32(sum, keep, _mm512_castps_si512(s));
    return true;
}

}  // namespace

void quantize_act_q8_row(const float* x, int64_t k, int8_t* qs, float* d, int32_t* sum, int gb) {
    if (gb != 1 && gb != 4) return tg::quantize_act_q8_row(x, k, qs, d, sum, gb);
    const int64_t nb = k / QK8_0;
    for (int64_t b = 0; b < nb; b += 16) {  // 16 is a multiple of gb: the chunks hold whole groups
        const int nblk = (int)std::min<int64_t>(16, nb - b);
        if (!quantize_16_blocks(x + b * QK8_0, nblk, qs + b * QK8_0, d + b / gb, sum + b, gb))
            tg::quantize_act_q8_row(x + b * QK8_0, nblk * QK8_0, qs + b * QK8_0, d + b / gb, sum + b, gb);
    }
}

void quantize_act_q8k_row(const float* x, int64_t k, int8_t* qs, float* d, int32_t* bsum, int32_t* pair32) {
    for (int64_t b = 0; b < k / QK_K; b++, x += QK_K, qs += QK_K) {
        __m512 v[16];
        __m512 m = _mm512_setzero_ps();
        bool nan = false;
        for (int j = 0; j < 16; j++) {
            v[j] = _mm512_loadu_ps(x + 16 * j);
            nan |= has_nan(v[j]);
            m = _mm512_max_ps(m, abs_ps(v[j]));
        }
        const float amax = nan ? 0.f : _mm512_reduce_max_ps(m);
        if (nan || amax == 0.f || !(amax <= 3.4028235e38f)) {
            tg::quantize_act_q8k_row(x, QK_K, qs, d + b, bsum + 16 * b, pair32 + 4 * b);
            continue;
        }
        float max = 0.f;
        const __m512 va = _mm512_set1_ps(amax);
        for (int j = 0; j < 16; j++) {
            const __mmask16 hit = _mm512_cmp_ps_mask(abs_ps(v[j]), va, _CMP_EQ_OQ);
            if (hit) {
                max = x[16 * j + __builtin_ctz((unsigned)hit)];
                break;
            }
        }
        const float iscale = -127.f / max;
        const __m512 vs = _mm512_set1_ps(iscale);
        int32_t* bs = bsum + 16 * b;
        for (int j = 0; j < 16; j++) {
            __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(vs, v[j]), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            r = _mm512_min_ps(_mm512_max_ps(r, _mm512_set1_ps(-127.f)), _mm512_set1_ps(127.f));
            const __m512i q = _mm512_cvttps_epi32(r);
            _mm_storeu_si128((__m128i*)(qs + 16 * j), _mm512_cvtepi32_epi8(q));
            bs[j] = _mm512_reduce_add_epi32(q);
        }
        d[b] = 1 / iscale;
        for (int p = 0; p < 4; p++) {
            int lo = bs[4 * p] + bs[4 * p + 1], hi = bs[4 * p + 2] + bs[4 * p + 3];
            pair32[4 * b + p] = (int32_t)((uint32_t)(uint16_t)lo | ((uint32_t)(uint16_t)hi << 16));
        }
    }
}

void gemm_f32(const GemmArgs& A, int64_t g0, int64_t g1) { float_gemm<CvtF32>(A, g0, g1); }
void gemm_f16(const GemmArgs& A, int64_t g0, int64_t g1) { float_gemm<CvtF16>(A, g0, g1); }
void gemm_bf16(const GemmArgs& A, int64_t g0, int64_t g1) { float_gemm<CvtBF16>(A, g0, g1); }

// Activation rows per prompt tile: of 4, 5, 6 and 8, 5 was the fastest in alternated benchmark runs
// (more rows reuse each loaded weight block more, but their accumulators and broadcasts crowd the
// registers).
constexpr int kMaxTileRows = 5;
// The decode steps of 6-8 sequences (Q8_0, Q4_0): one tile of all the rows instead of 5 + the rest, so a
// block is loaded and unpacked once (8 accumulators, 8 unpacked vectors and Q4_0's 8 group sums fit the
// 32 registers); measured 7-13% faster than 5 + 3 on a 10240 x 2560 product of 8 rows.
inline bool few_rows_in_one_tile(const GemmArgs& A) { return A.n >= 6 && A.n <= 8; }
// amx_tile: the type's 16-row AMX tile, or nullptr (no AMX tile for the type, or not built with AMX).
template <template <int> class K, int... N>
void run_table(const GemmArgs& A, int64_t g0, int64_t g1, size_t gbytes, std::integer_sequence<int, N...>,
               TileFn amx_tile = nullptr) {
    static constexpr TileFn t[sizeof...(N)] = {K<N + 1>::run...};
#if defined(TINYGPTV_AMX)
    if (amx_tile && use_amx(A)) return amx_gemm(A, g0, g1, gbytes, amx_tile, t);
#endif
    (void)amx_tile;
    quant_gemm(A, g0, g1, gbytes, t);
}
#if defined(TINYGPTV_AMX)
#define TG_AMX_TILE(fn) &fn
#else
#define TG_AMX_TILE(fn) nullptr
#endif

void gemm_q8_0(const GemmArgs& A, int64_t g0, int64_t g1) {
    if (A.n == 1) return decode_streams<q8_0_vec<kDecodeStreams>, q8_0_vec<1>>(A, g0, g1,
                                                                 packed_group_bytes(GgmlType::Q8_0, A.n_in));
    if (few_rows_in_one_tile(A)) return run_table<Q8_0K>(A, g0, g1, packed_group_bytes(GgmlType::Q8_0, A.n_in), std::make_integer_sequence<int, 8>());
    run_table<Q8_0K>(A, g0, g1, packed_group_bytes(GgmlType::Q8_0, A.n_in), std::make_integer_sequence<int, kMaxTileRows>(),
                     TG_AMX_TILE(amx_q8_tile<Q8_0Amx>));
}
void gemm_iq4_nl(const GemmArgs& A, int64_t g0, int64_t g1) {
    if (A.n == 1) return decode_streams<iq4_nl_vec<kDecodeStreams>, iq4_nl_vec<1>>(A, g0, g1,
                                                                   packed_group_bytes(GgmlType::IQ4_NL, A.n_in));
    run_table<IQ4_NLK>(A, g0, g1, packed_group_bytes(GgmlType::IQ4_NL, A.n_in), std::make_integer_sequence<int, kMaxTileRows>(),
                       TG_AMX_TILE(amx_q8_tile<UnpackedAmx<IQ4_NLW>>));
}
void gemm_q4_0(const GemmArgs& A, int64_t g0, int64_t g1) {
    if (A.n == 1) return decode_streams<q4_0_vec<kDecodeStreams>, q4_0_vec<1>>(A, g0, g1,
                                                                 packed_group_bytes(GgmlType::Q4_0, A.n_in));
    if (few_rows_in_one_tile(A)) return run_table<Q4_0K>(A, g0, g1, packed_group_bytes(GgmlType::Q4_0, A.n_in), std::make_integer_sequence<int, 8>());
    run_table<Q4_0K>(A, g0, g1, packed_group_bytes(GgmlType::Q4_0, A.n_in), std::make_integer_sequence<int, kMaxTileRows>(),
                     TG_AMX_TILE(amx_q4_0_tile));
}
void gemm_q4_1(const GemmArgs& A, int64_t g0, int64_t g1) {
    if (A.n == 1) return decode_streams<q4_1_vec<kDecodeStreams>, q4_1_vec<1>>(A, g0, g1,
                                                                 packed_group_bytes(GgmlType::Q4_1, A.n_in));
    run_table<Q4_1K>(A, g0, g1, packed_group_bytes(GgmlType::Q4_1, A.n_in), std::make_integer_sequence<int, kMaxTileRows>());
}
void gemm_q5_1(const GemmArgs& A, int64_t g0, int64_t g1) {
    if (A.n == 1) return decode_streams<q5_1_vec<kDecodeStreams>, q5_1_vec<1>>(A, g0, g1,
                                                                 packed_group_bytes(GgmlType::Q5_1, A.n_in));
    run_table<Q5_1K>(A, g0, g1, packed_group_bytes(GgmlType::Q5_1, A.n_in), std::make_integer_sequence<int, kMaxTileRows>());
}
void gemm_q4_K(const GemmArgs& A, int64_t g0, int64_t g1) {
    if (A.n == 1) return decode_streams<q4_K_vec<kDecodeStreams>, q4_K_vec<1>>(A, g0, g1,
                                                                 packed_group_bytes(GgmlType::Q4_K, A.n_in));
    run_table<Q4_KK>(A, g0, g1, (A.n_in / QK_K) * kPackQ4_K, std::make_integer_sequence<int, kMaxTileRows>());
}
void gemm_q5_K(const GemmArgs& A, int64_t g0, int64_t g1) {
    if (A.n == 1) return decode_streams<q5_K_vec<kDecodeStreams>, q5_K_vec<1>>(A, g0, g1,
                                                                 packed_group_bytes(GgmlType::Q5_K, A.n_in));
    run_table<Q5_KK>(A, g0, g1, (A.n_in / QK_K) * kPackQ5_K, std::make_integer_sequence<int, kMaxTileRows>());
}
void gemm_q6_K(const GemmArgs& A, int64_t g0, int64_t g1) {
    if (A.n == 1) return decode_streams<q6_K_vec<kDecodeStreams>, q6_K_vec<1>>(A, g0, g1,
                                                                 packed_group_bytes(GgmlType::Q6_K, A.n_in));
    run_table<Q6_KK>(A, g0, g1, (A.n_in / QK_K) * kPackQ6_K, std::make_integer_sequence<int, kMaxTileRows>());
}
void gemm_q2_K(const GemmArgs& A, int64_t g0, int64_t g1) {
    if (A.n == 1) return decode_streams<q2_K_vec<kDecodeStreams>, q2_K_vec<1>>(A, g0, g1,
                                                                 packed_group_bytes(GgmlType::Q2_K, A.n_in));
    run_table<Q2_KK>(A, g0, g1, (A.n_in / QK_K) * kPackQ2_K, std::make_integer_sequence<int, kMaxTileRows>());
}

void gemm_iq4_xs(const GemmArgs& A, int64_t g0, int64_t g1) {
    if (A.n == 1) return decode_streams<iq4_xs_vec<kDecodeStreams>, iq4_xs_vec<1>>(A, g0, g1,
                                                                   packed_group_bytes(GgmlType::IQ4_XS, A.n_in));
    run_table<IQ4_XSK>(A, g0, g1, (A.n_in / QK_K) * kPackIQ4_XS, std::make_integer_sequence<int, kMaxTileRows>());
}

}  // namespace avx512
}  // namespace tg
