// AVX2 (+FMA, F16C) kernels over the repacked layout of matmul_impl.h. A 16-row group is handled
// as two halves of 8 rows (one ymm lane per row); pmaddubsw + pmaddwd accumulate 4 int8 products
// per row. Same arithmetic per output as the scalar kernels, so results are bit-identical.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/matmul_impl.h"
#include "quants.h"

// matmul_avxvnni.cpp builds this file again with TG_AVX2_VNNI defined: the same kernels, the int8
// products through AVX-VNNI's vpdpbusd, in namespace avxvnni.
#if defined(TG_AVX2_VNNI)
#define TG_AVX2_NAMESPACE avxvnni
#else
#define TG_AVX2_NAMESPACE avx2
#endif

namespace tg {
namespace TG_AVX2_NAMESPACE {

namespace {

inline __m256i bc(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

// acc + sum of 4 products (u8 x s8) per 32-bit lane; callers keep |u * s * 2| < 32768, so pmaddubsw's
// int16 pair sums never saturate and vpdpbusd (exact int32 sums) gives the same result.
inline __m256i dp4(__m256i acc, __m256i u, __m256i s) {
#if defined(TG_AVX2_VNNI)
    return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

inline __m256i half_mask(const GemmArgs& A, int64_t g, int h) {
    const int64_t rem = A.n_out - g * kGroup - 8 * h;
    alignas(32) int32_t m[8];
    for (int i = 0; i < 8; i++) m[i] = i < rem ? -1 : 0;
    return _mm256_load_si256((const __m256i*)m);
}

inline void store_out(const GemmArgs& A, int64_t i, int64_t g, int h, __m256 acc) {
    const int64_t r0 = g * kGroup + 8 * h;
    if (r0 + 8 <= A.n_out) {
        if (A.bias) acc = _mm256_add_ps(acc, _mm256_loadu_ps(A.bias + r0));
        _mm256_storeu_ps(A.y + i * A.n_out + r0, acc);
    } else if (r0 < A.n_out) {
        const __m256i m = half_mask(A, g, h);
        if (A.bias) acc = _mm256_add_ps(acc, _mm256_maskload_ps(A.bias + r0, m));
        _mm256_maskstore_ps(A.y + i * A.n_out + r0, m, acc);
    }
}

inline __m256 load_ph(const uint8_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }

// ---- float weights ---------------------------------------------------------------------------

struct CvtF32 {
    static constexpr size_t elem = 4;
    static __m256 load(const uint8_t* p, int64_t kk, int h) { return _mm256_loadu_ps((const float*)p + kk * kGroup + 8 * h); }
};
struct CvtF16 {
    static constexpr size_t elem = 2;
    static __m256 load(const uint8_t* p, int64_t kk, int h) { return load_ph(p + kk * 32 + 16 * h); }
};
struct CvtBF16 {
    static constexpr size_t elem = 2;
    static __m256 load(const uint8_t* p, int64_t kk, int h) {
        __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(p + kk * 32 + 16 * h)));
        return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    }
};

// The GB groups are g, g + gstep, g + 2 gstep, ... (gstep 1: adjacent groups).
template <typename C, int GB, int NT>
void float_tile(const GemmArgs& A, size_t gbytes, int64_t g, int64_t i0, int64_t gstep) {
    const int64_t k = A.n_in;
    __m256 acc[2 * GB][NT];
    for (int b = 0; b < 2 * GB; b++)
        for (int j = 0; j < NT; j++) acc[b][j] = _mm256_setzero_ps();
    const uint8_t* wg = A.w + (g - A.g_base) * gbytes;
    const float* x = A.x + i0 * k;
    for (int64_t kk = 0; kk < k; kk++) {
        __m256 w[2 * GB];
        for (int b = 0; b < 2 * GB; b++) w[b] = C::load(wg + (b / 2) * gstep * gbytes, kk, b & 1);
        for (int j = 0; j < NT; j++) {
            const __m256 xb = _mm256_set1_ps(x[j * k + kk]);
            for (int b = 0; b < 2 * GB; b++) acc[b][j] = _mm256_fmadd_ps(w[b], xb, acc[b][j]);
        }
    }
    for (int b = 0; b < 2 * GB; b++)
        for (int j = 0; j < NT; j++) store_out(A, i0 + j, g + (b / 2) * gstep, b & 1, acc[b][j]);
}

// Prompt tiles of up to 6 activation rows: 2 halves x 6 rows = 12 accumulators, 2 weight vectors
// and a broadcast fill 15 of the 16 ymm registers.
template <typename C>
void float_gemm(const GemmArgs& A, int64_t g0, int64_t g1) {
    static const FloatTileFn tiles[6] = {float_tile<C, 1, 1>, float_tile<C, 1, 2>, float_tile<C, 1, 3>,
                                         float_tile<C, 1, 4>, float_tile<C, 1, 5>, float_tile<C, 1, 6>};
    float_gemm_groups<6>(A, g0, g1, (size_t)A.n_in * kGroup * C::elem, float_tile<C, 2, 1>, tiles);
}

// ---- Q8_0 / Q4_0 ----------------------------------------------------------------------------

// The signed weights of Q8_0's arithmetic, half h of block b: slot s holds values 4s..4s+3 of each row.
struct Q8_0W {  // stored as q + 128
    __attribute__((always_inline)) static __m256i slot(const uint8_t* wg, int64_t b, int h, int s) {
        const __m256i v = _mm256_loadu_si256((const __m256i*)(wg + pair_quant_off<kPackQ8_0>(b) + 64 * s + 32 * h));
        return _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80));
    }
    __attribute__((always_inline)) static __m256 scale(const uint8_t* wg, int64_t b, int h) {
        return load_ph(wg + pair_scale_off<kPackQ8_0>(b) + 16 * h);
    }
};
struct IQ4_NLW {  // Q4_0's layout (values 0-15 in low nibbles, 16-31 in high), indices looked up in kIQ4NL
    __attribute__((always_inline)) static __m256i slot(const uint8_t* wg, int64_t b, int h, int s) {
        const __m256i v = _mm256_loadu_si256((const __m256i*)(wg + pair_quant_off<kPackQ4_0>(b) + 64 * (s & 3) + 32 * h));
        const __m256i idx = _mm256_and_si256(s < 4 ? v : _mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0F));
        return _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)kIQ4NL)), idx);
    }
    __attribute__((always_inline)) static __m256 scale(const uint8_t* wg, int64_t b, int h) {
        return load_ph(wg + pair_scale_off<kPackQ4_0>(b) + 16 * h);
    }
};

template <class W, int NT>
void q8_tile(const GemmArgs& A, const uint8_t* wg, int64_t g, int64_t i0, int h) {
    const ActQ8& a = *A.a8;
    const int64_t nb = a.nb, k = a.k;
    __m256 acc[NT];
    for (int j = 0; j < NT; j++) acc[j] = _mm256_setzero_ps();
    // A few rows (GemmArgs::prefetch): the group's first pass, its first half and first tile, brings in
    // the next group.
    const int64_t pf = h == 0 && i0 == 0 ? prefetch_step(A.prefetch, nb) : 0;
    for (int64_t b = 0; b < nb; b++) {
        if (pf) prefetch_lines(wg + A.prefetch + b * pf, pf);
        const __m256 dw = W::scale(wg, b, h);
        __m256i wabs[8], wsgn[8];
        for (int s = 0; s < 8; s++) {
            wsgn[s] = W::slot(wg, b, h, s);
            wabs[s] = _mm256_abs_epi8(wsgn[s]);
        }
        for (int j = 0; j < NT; j++) {
            const int64_t ii = (i0 + j) * nb + b;
            const int8_t* xq = a.qs.data() + (i0 + j) * k + b * QK8_0;
            __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
            for (int s = 0; s < 8; s += 2) {
                s0 = dp4(s0, wabs[s], _mm256_sign_epi8(bc(xq + 4 * s), wsgn[s]));
                s1 = dp4(s1, wabs[s + 1], _mm256_sign_epi8(bc(xq + 4 * s + 4), wsgn[s + 1]));
            }
            const __m256 sc = _mm256_mul_ps(dw, _mm256_set1_ps(a.d[ii]));
            acc[j] = _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1)), acc[j]);
        }
    }
    for (int j = 0; j < NT; j++) store_out(A, i0 + j, g, h, acc[j]);
}

template <int NT> void q8_0_tile(const GemmArgs& A, const uint8_t* wg, int64_t g, int64_t i0, int h) { q8_tile<Q8_0W, NT>(A, wg, g, i0, h); }
template <int NT> void iq4_nl_tile(const GemmArgs& A, const uint8_t* wg, int64_t g, int64_t i0, int h) { q8_tile<IQ4_NLW, NT>(A, wg, g, i0, h); }

template <int NT>
void q4_0_tile(const GemmArgs& A, const uint8_t* wg, int64_t g, int64_t i0, int h) {
    const ActQ8& a = *A.a8;
    const int64_t nb = a.nb, k = a.k;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc[NT], t[NT];
    for (int j = 0; j < NT; j++) acc[j] = _mm256_setzero_ps();
    // (no prefetch of the next group here, unlike q8_tile: measured 4% slower at 4 rows, mixed at 2)
    auto block = [&](int64_t b) __attribute__((always_inline)) {
        const uint8_t* blk = wg + pair_quant_off<kPackQ4_0>(b);
        const __m256 dw = load_ph(wg + pair_scale_off<kPackQ4_0>(b) + 16 * h);
        __m256i lo[4], hi[4];
        for (int s = 0; s < 4; s++) {
            const __m256i v = _mm256_loadu_si256((const __m256i*)(blk + 64 * s + 32 * h));
            lo[s] = _mm256_and_si256(v, m4);
            hi[s] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        }
        for (int j = 0; j < NT; j++) {
            const int64_t ii = (i0 + j) * nb + b;
            const int8_t* xq = a.qs.data() + (i0 + j) * k + b * QK4_0;
            __m256i s0 = _mm256_set1_epi32(-8 * a.sum[ii]), s1 = _mm256_setzero_si256();
            s0 = dp4(s0, lo[0], bc(xq));
            s1 = dp4(s1, lo[1], bc(xq + 4));
            s0 = dp4(s0, lo[2], bc(xq + 8));
            s1 = dp4(s1, lo[3], bc(xq + 12));
            s0 = dp4(s0, hi[0], bc(xq + 16));
            s1 = dp4(s1, hi[1], bc(xq + 20));
            s0 = dp4(s0, hi[2], bc(xq + 24));
            s1 = dp4(s1, hi[3], bc(xq + 28));
            t[j] = _mm256_fmadd_ps(dw, _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1)), t[j]);
        }
    };
    for (int64_t c = 0; c < a.ng; c++) {
        for (int j = 0; j < NT; j++) t[j] = _mm256_setzero_ps();
        const int64_t b0 = c * a.gb, b1 = std::min(nb, b0 + a.gb);
        if (b1 - b0 == 4) {  // whole groups unrolled (the loop of run-time count below ran slower)
            block(b0); block(b0 + 1); block(b0 + 2); block(b0 + 3);
        } else {
            for (int64_t b = b0; b < b1; b++) block(b);
        }
        for (int j = 0; j < NT; j++) acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(a.d[(i0 + j) * a.ng + c]), t[j], acc[j]);
    }
    for (int j = 0; j < NT; j++) store_out(A, i0 + j, g, h, acc[j]);
}

// Q4_1 / Q5_1 (values with a minimum), half h of a group for NT rows: per activation scale group c, per
// block t = fma(dw, float(isum), t); t = fma(mw, float(xsum), t); then acc = fma(dx, t, acc).
template <bool Q5, int NT>
void min_tile(const GemmArgs& A, const uint8_t* wg, int64_t g, int64_t i0, int h) {
    const ActQ8& a = *A.a8;
    const int64_t nb = a.nb, k = a.k;
    constexpr size_t kB = Q5 ? kPackQ5_1 : kPackQ4_1;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc[NT], t[NT];
    for (int j = 0; j < NT; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t c = 0; c < a.ng; c++) {
        for (int j = 0; j < NT; j++) t[j] = _mm256_setzero_ps();
        for (int64_t b = c * a.gb; b < std::min(nb, (c + 1) * a.gb); b++) {
            const uint8_t* blk = wg + b * kB;
            const __m256 dw = load_ph(blk + 16 * h), mw = load_ph(blk + 32 + 16 * h);
            __m256i w[8];
            if constexpr (Q5) {
                for (int s = 0; s < 8; s++) w[s] = _mm256_loadu_si256((const __m256i*)(blk + 64 + 64 * s + 32 * h));
            } else {
                for (int s = 0; s < 4; s++) {
                    const __m256i v = _mm256_loadu_si256((const __m256i*)(blk + 64 + 64 * s + 32 * h));
                    w[s] = _mm256_and_si256(v, m4);
                    w[s + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                }
            }
            for (int j = 0; j < NT; j++) {
                const int64_t ii = (i0 + j) * nb + b;
                const int8_t* xq = a.qs.data() + (i0 + j) * k + b * 32;
                __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
                for (int s = 0; s < 8; s += 2) {
                    s0 = dp4(s0, w[s], bc(xq + 4 * s));
                    s1 = dp4(s1, w[s + 1], bc(xq + 4 * s + 4));
                }
                t[j] = _mm256_fmadd_ps(dw, _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1)), t[j]);
                t[j] = _mm256_fmadd_ps(mw, _mm256_set1_ps((float)a.sum[ii]), t[j]);
            }
        }
        for (int j = 0; j < NT; j++) acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(a.d[(i0 + j) * a.ng + c]), t[j], acc[j]);
    }
    for (int j = 0; j < NT; j++) store_out(A, i0 + j, g, h, acc[j]);
}
template <int NT> void q4_1_tile(const GemmArgs& A, const uint8_t* wg, int64_t g, int64_t i0, int h) { min_tile<false, NT>(A, wg, g, i0, h); }
template <int NT> void q5_1_tile(const GemmArgs& A, const uint8_t* wg, int64_t g, int64_t i0, int h) { min_tile<true, NT>(A, wg, g, i0, h); }
// Decode: the tile of one row, for each half of each of the NG groups in turn.
template <bool Q5, int NG>
void min_vec(const GemmArgs& A, const uint8_t* const* wg, const int64_t* g) {
    for (int j = 0; j < NG; j++)
        for (int h = 0; h < 2; h++) min_tile<Q5, 1>(A, wg[j], g[j], 0, h);
}

// Decode (one activation row) over NG groups taken from NG separate places of the weight, both
// halves of each: NG memory streams per core instead of one. Per output the arithmetic of the tiles.
template <class W, int NG>
void q8_vec(const GemmArgs& A, const uint8_t* const* wg, const int64_t* g) {
    const ActQ8& a = *A.a8;
    __m256 acc[NG][2];
    for (int j = 0; j < NG; j++) acc[j][0] = acc[j][1] = _mm256_setzero_ps();
    for (int64_t b = 0; b < a.nb; b++) {
        const int8_t* xq = a.qs.data() + b * QK8_0;
        const __m256 dx = _mm256_set1_ps(a.d[b]);
        for (int j = 0; j < NG; j++)
            for (int h = 0; h < 2; h++) {
                const __m256 dw = W::scale(wg[j], b, h);
                __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
                for (int s = 0; s < 8; s += 2) {
                    const __m256i w0 = W::slot(wg[j], b, h, s), w1 = W::slot(wg[j], b, h, s + 1);
                    s0 = dp4(s0, _mm256_abs_epi8(w0), _mm256_sign_epi8(bc(xq + 4 * s), w0));
                    s1 = dp4(s1, _mm256_abs_epi8(w1), _mm256_sign_epi8(bc(xq + 4 * s + 4), w1));
                }
                acc[j][h] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1)), acc[j][h]);
            }
    }
    for (int j = 0; j < NG; j++)
        for (int h = 0; h < 2; h++) store_out(A, 0, g[j], h, acc[j][h]);
}

template <int NG> void q8_0_vec(const GemmArgs& A, const uint8_t* const* wg, const int64_t* g) { q8_vec<Q8_0W, NG>(A, wg, g); }
template <int NG> void iq4_nl_vec(const GemmArgs& A, const uint8_t* const* wg, const int64_t* g) { q8_vec<IQ4_NLW, NG>(A, wg, g); }

template <int NG>
void q4_0_vec(const GemmArgs& A, const uint8_t* const* wg, const int64_t* g) {
    const ActQ8& a = *A.a8;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc[NG][2];
    for (int j = 0; j < NG; j++) acc[j][0] = acc[j][1] = _mm256_setzero_ps();
    for (int64_t c = 0; c < a.ng; c++) {
        __m256 t[NG][2];
        for (int j = 0; j < NG; j++) t[j][0] = t[j][1] = _mm256_setzero_ps();
        for (int64_t b = c * a.gb; b < std::min(a.nb, (c + 1) * a.gb); b++) {
            const int8_t* xq = a.qs.data() + b * QK4_0;
            const __m256i corr = _mm256_set1_epi32(-8 * a.sum[b]);
            for (int j = 0; j < NG; j++)
                for (int h = 0; h < 2; h++) {
                    const uint8_t* blk = wg[j] + pair_quant_off<kPackQ4_0>(b) + 32 * h;
                    const __m256 dw = load_ph(wg[j] + pair_scale_off<kPackQ4_0>(b) + 16 * h);
                    __m256i v[4];
                    for (int s = 0; s < 4; s++) v[s] = _mm256_loadu_si256((const __m256i*)(blk + 64 * s));
                    __m256i s0 = corr, s1 = _mm256_setzero_si256();
                    for (int s = 0; s < 4; s += 2) {  // low nibbles: values 0..15, then high: 16..31
                        s0 = dp4(s0, _mm256_and_si256(v[s], m4), bc(xq + 4 * s));
                        s1 = dp4(s1, _mm256_and_si256(v[s + 1], m4), bc(xq + 4 * s + 4));
                    }
                    for (int s = 0; s < 4; s += 2) {
                        s0 = dp4(s0, _mm256_and_si256(_mm256_srli_epi16(v[s], 4), m4), bc(xq + 16 + 4 * s));
                        s1 = dp4(s1, _mm256_and_si256(_mm256_srli_epi16(v[s + 1], 4), m4), bc(xq + 20 + 4 * s));
                    }
                    t[j][h] = _mm256_fmadd_ps(dw, _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1)), t[j][h]);
                }
        }
        const __m256 dx = _mm256_set1_ps(a.d[c]);
        for (int j = 0; j < NG; j++)
            for (int h = 0; h < 2; h++) acc[j][h] = _mm256_fmadd_ps(dx, t[j][h], acc[j][h]);
    }
    for (int j = 0; j < NG; j++)
        for (int h = 0; h < 2; h++) store_out(A, 0, g[j], h, acc[j][h]);
}

// ---- K-quants -------------------------------------------------------------------------------
// One super-block b of half h of a group (wg: the group's data) against NT activation rows from i0,
// acc[j] updated with the arithmetic of matmul_impl.h. The tiles walk the super-blocks of one group;
// the decode kernels (NT = 1) walk one super-block of each of NG groups in turn (NG memory streams
// per core).

// Q4_K, and Q5_K (Q5: the 5th bits come from the qh slots after Q4_K's layout, bit 2c of a qh byte for
// the low nibbles of chunk c, bit 2c + 1 for the high ones).
template <int NT, bool Q5 = false>
__attribute__((always_inline)) inline void q4_K_super(const ActQ8K& a, const uint8_t* wg, int64_t b, int h, int64_t i0, __m256 (&acc)[NT]) {
    const int64_t nb = a.nb, k = a.k;
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    const uint8_t* blk = wg + b * (Q5 ? kPackQ5_K : kPackQ4_K);
    const uint8_t* qs = blk + 320 + 32 * h;
    __m256i isum[NT];
    for (int j = 0; j < NT; j++) isum[j] = _mm256_setzero_si256();
    for (int c = 0; c < 4; c++) {
        __m256i ae[NT], ao[NT];
        for (int j = 0; j < NT; j++) ae[j] = ao[j] = _mm256_setzero_si256();
        for (int s = 0; s < 8; s++) {
            const __m256i v = _mm256_loadu_si256((const __m256i*)(qs + 64 * (8 * c + s)));
            __m256i lo = _mm256_and_si256(v, m4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            if constexpr (Q5) {  // bit b of each byte to bit 4 (16-bit shifts; the masks keep bytes apart)
                const __m256i hb = _mm256_loadu_si256((const __m256i*)(blk + kPackQ4_K + 64 * s + 32 * h));
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * c), one), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * c + 1), one), 4));
            }
            for (int j = 0; j < NT; j++) {
                const int8_t* xq = a.qs.data() + (i0 + j) * k + b * QK_K + 64 * c + 4 * s;
                ae[j] = dp4(ae[j], lo, bc(xq));
                ao[j] = dp4(ao[j], hi, bc(xq + 32));
            }
        }
        const __m256i sce = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(blk + 64 + 16 * (2 * c) + 8 * h)));
        const __m256i sco = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(blk + 64 + 16 * (2 * c + 1) + 8 * h)));
        for (int j = 0; j < NT; j++)
            isum[j] = _mm256_add_epi32(isum[j], _mm256_add_epi32(_mm256_mullo_epi32(ae[j], sce),
                                                                 _mm256_mullo_epi32(ao[j], sco)));
    }
    const __m256 dw = load_ph(blk + 16 * h);
    const __m256 dm = load_ph(blk + 32 + 16 * h);
    __m256i mp[4];
    for (int p = 0; p < 4; p++)
        mp[p] = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(blk + 192 + 32 * p + 16 * h)));
    for (int j = 0; j < NT; j++) {
        const int64_t ii = (i0 + j) * nb + b;
        const int32_t* pr = a.pair32.data() + ii * 4;
        __m256i msum = _mm256_setzero_si256();
        for (int p = 0; p < 4; p++) msum = _mm256_add_epi32(msum, _mm256_madd_epi16(mp[p], _mm256_set1_epi32(pr[p])));
        const __m256 dx = _mm256_set1_ps(a.d[ii]);
        acc[j] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(isum[j]), acc[j]);
        acc[j] = _mm256_fnmadd_ps(_mm256_mul_ps(dm, dx), _mm256_cvtepi32_ps(msum), acc[j]);
    }
}

// Q6_K, and Q3_K (widened into its layout); Q2 (Q2_K): the layout of Q6_K plus the mins (matmul_impl.h).
template <int NT, bool Q2 = false>
__attribute__((always_inline)) inline void q6_K_super(const ActQ8K& a, const uint8_t* wg, int64_t b, int h, int64_t i0, __m256 (&acc)[NT]) {
    const int64_t nb = a.nb, k = a.k;
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    const uint8_t* blk = wg + b * (Q2 ? kPackQ2_K : kPackQ6_K);
    const uint8_t* qq = blk + 288 + 32 * h;
    __m256i isum[NT];
    for (int j = 0; j < NT; j++) isum[j] = _mm256_setzero_si256();
    for (int t = 0; t < 16; t++) {
        const __m256i l0 = _mm256_loadu_si256((const __m256i*)(qq + 192 * t));
        const __m256i l1 = _mm256_loadu_si256((const __m256i*)(qq + 192 * t + 64));
        const __m256i hb = _mm256_loadu_si256((const __m256i*)(qq + 192 * t + 128));
        const __m256i u0 = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30));
        const __m256i u1 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                           _mm256_and_si256(_mm256_slli_epi16(hb, 2), m30));
        const __m256i u2 = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(hb, m30));
        const __m256i u3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                           _mm256_and_si256(_mm256_srli_epi16(hb, 2), m30));
        const __m256i sc = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(blk + 32 + 16 * t + 8 * h)));
        for (int j = 0; j < NT; j++) {
            const int64_t ii = (i0 + j) * nb + b;
            const int8_t* xq = a.qs.data() + (i0 + j) * k + b * QK_K + 16 * t;
            __m256i s = _mm256_set1_epi32(-32 * a.bsum[ii * 16 + t]);
            s = dp4(s, u0, bc(xq));
            s = dp4(s, u1, bc(xq + 4));
            s = dp4(s, u2, bc(xq + 8));
            s = dp4(s, u3, bc(xq + 12));
            isum[j] = _mm256_add_epi32(isum[j], _mm256_mullo_epi32(s, sc));
        }
    }
    const __m256 dw = load_ph(blk + 16 * h);
    for (int j = 0; j < NT; j++) {
        const __m256 dx = _mm256_set1_ps(a.d[(i0 + j) * nb + b]);
        acc[j] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(isum[j]), acc[j]);
    }
    if constexpr (Q2) {
        const uint8_t* mb = blk + kPackQ6_K;
        const __m256 dm = load_ph(mb + 16 * h);
        __m256i mp[8];  // (m of sub-block 2p, m of 2p + 1) of each of the 8 rows
        for (int p = 0; p < 8; p++) mp[p] = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(mb + 32 + 32 * p + 16 * h)));
        for (int j = 0; j < NT; j++) {
            const int64_t ii = (i0 + j) * nb + b;
            const int32_t* bs = a.bsum.data() + ii * 16;
            __m256i msum = _mm256_setzero_si256();
            for (int p = 0; p < 8; p++)
                msum = _mm256_add_epi32(msum, _mm256_madd_epi16(mp[p], _mm256_set1_epi32(pack_int16_pair(bs[2 * p], bs[2 * p + 1]))));
            const __m256 dx = _mm256_set1_ps(a.d[ii]);
            acc[j] = _mm256_fnmadd_ps(_mm256_mul_ps(dm, dx), _mm256_cvtepi32_ps(msum), acc[j]);
        }
    }
}

// IQ4_XS: Q4_K's walk over the nibbles, each index looked up (vpshufb) as its signed value w. pmaddubsw
// takes |w| and x with w's sign (|w| * |x| * 2 <= 127 * 127 * 2 fits its int16 sums; the unsigned
// values w + 128 of the AVX-512 kernel would not), which gives the exact dot of each sub-block.
template <int NT>
__attribute__((always_inline)) inline void iq4_xs_super(const ActQ8K& a, const uint8_t* wg, int64_t b, int h, int64_t i0, __m256 (&acc)[NT]) {
    const int64_t nb = a.nb, k = a.k;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i lut = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)kIQ4NL));
    const uint8_t* blk = wg + b * kPackIQ4_XS;
    const uint8_t* qs = blk + 192 + 32 * h;
    __m256i isum[NT];
    for (int j = 0; j < NT; j++) isum[j] = _mm256_setzero_si256();
    for (int c = 0; c < 4; c++) {
        __m256i ae[NT], ao[NT];
        for (int j = 0; j < NT; j++) ae[j] = ao[j] = _mm256_setzero_si256();
        for (int s = 0; s < 8; s++) {
            const __m256i v = _mm256_loadu_si256((const __m256i*)(qs + 64 * (8 * c + s)));
            const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, m4));
            const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
            const __m256i alo = _mm256_abs_epi8(lo), ahi = _mm256_abs_epi8(hi);
            for (int j = 0; j < NT; j++) {
                const int8_t* xq = a.qs.data() + (i0 + j) * k + b * QK_K + 64 * c + 4 * s;
                ae[j] = dp4(ae[j], alo, _mm256_sign_epi8(bc(xq), lo));
                ao[j] = dp4(ao[j], ahi, _mm256_sign_epi8(bc(xq + 32), hi));
            }
        }
        const __m256i sce = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(blk + 32 + 16 * (2 * c) + 8 * h)));
        const __m256i sco = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(blk + 32 + 16 * (2 * c + 1) + 8 * h)));
        for (int j = 0; j < NT; j++)
            isum[j] = _mm256_add_epi32(isum[j], _mm256_add_epi32(_mm256_mullo_epi32(ae[j], sce),
                                                                 _mm256_mullo_epi32(ao[j], sco)));
    }
    const __m256 dw = load_ph(blk + 16 * h);
    for (int j = 0; j < NT; j++) {
        const __m256 dx = _mm256_set1_ps(a.d[(i0 + j) * nb + b]);
        acc[j] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(isum[j]), acc[j]);
    }
}

// The prompt tile (NT activation rows of one group, one 8-row half h) and the decode kernel (one row,
// NG groups, both halves) of each K-quant type, made from its super-block routine. Each calls the
// routine directly: passed as a template parameter instead, GCC compiled the Q6_K tile to slower code.
#define TG_TILE_AND_VEC(NAME, SUPER)                                                                 \
    template <int NT>                                                                                \
    void NAME##_tile(const GemmArgs& A, const uint8_t* wg, int64_t g, int64_t i0, int h) {           \
        const ActQ8K& a = *A.ak;                                                                     \
        __m256 acc[NT];                                                                              \
        for (int j = 0; j < NT; j++) acc[j] = _mm256_setzero_ps();                                   \
        for (int64_t b = 0; b < a.nb; b++) SUPER<NT>(a, wg, b, h, i0, acc);                          \
        for (int j = 0; j < NT; j++) store_out(A, i0 + j, g, h, acc[j]);                             \
    }                                                                                                \
    template <int NG>                                                                                \
    void NAME##_vec(const GemmArgs& A, const uint8_t* const* wg, const int64_t* g) {                 \
        const ActQ8K& a = *A.ak;                                                                     \
        __m256 acc[NG][2][1];                                                                        \
        for (int j = 0; j < NG; j++) acc[j][0][0] = acc[j][1][0] = _mm256_setzero_ps();              \
        for (int64_t b = 0; b < a.nb; b++)                                                           \
            for (int j = 0; j < NG; j++)                                                             \
                for (int h = 0; h < 2; h++) SUPER<1>(a, wg[j], b, h, 0, acc[j][h]);                  \
        for (int j = 0; j < NG; j++)                                                                 \
            for (int h = 0; h < 2; h++) store_out(A, 0, g[j], h, acc[j][h][0]);                      \
    }

TG_TILE_AND_VEC(q4_K, q4_K_super)
template <int NT>
__attribute__((always_inline)) inline void q5_K_super(const ActQ8K& a, const uint8_t* wg, int64_t b, int h, int64_t i0, __m256 (&acc)[NT]) {
    q4_K_super<NT, true>(a, wg, b, h, i0, acc);
}
TG_TILE_AND_VEC(q5_K, q5_K_super)
TG_TILE_AND_VEC(q6_K, q6_K_super)
template <int NT>
__attribute__((always_inline)) inline void q2_K_super(const ActQ8K& a, const uint8_t* wg, int64_t b, int h, int64_t i0, __m256 (&acc)[NT]) {
    q6_K_super<NT, true>(a, wg, b, h, i0, acc);
}
TG_TILE_AND_VEC(q2_K, q2_K_super)
TG_TILE_AND_VEC(iq4_xs, iq4_xs_super)
#undef TG_TILE_AND_VEC

// ---- activation quantizers (byte-identical to the scalar ones in matmul.cpp) ------------------

inline __m256 abs8(__m256 v) { return _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff))); }
inline bool nan8(__m256 v) { return _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0; }

inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

inline int32_t hsum8(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    return _mm_cvtsi128_si32(s);
}

inline __m256i clamp_cvt(__m256 r, float lo) {
    r = _mm256_min_ps(_mm256_max_ps(r, _mm256_set1_ps(lo)), _mm256_set1_ps(127.f));
    return _mm256_cvttps_epi32(r);
}

// round half away from zero, clamped to [-128, 127] (finite inputs)
inline __m256i round_away8(__m256 v) {
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 up = _mm256_cmp_ps(abs8(_mm256_sub_ps(v, t)), _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    const __m256 one = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(v, _mm256_set1_ps(-0.0f)));
    return clamp_cvt(_mm256_add_ps(t, _mm256_and_ps(up, one)), -128.f);
}

// 32 int32 values (4 vectors, in order) -> 32 int8
inline void store_i8x32(int8_t* dst, const __m256i q[4]) {
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256((__m256i*)dst, _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}

}  // namespace

void quantize_act_q8_row(const float* x, int64_t k, int8_t* qs, float* d, int32_t* sum, int gb) {
    const int64_t nb = k / QK8_0;
    for (int64_t b0 = 0, c = 0; b0 < nb; b0 += gb, c++) {
        const int64_t b1 = std::min<int64_t>(b0 + gb, nb);
        bool nan = false;
        __m256 m = _mm256_setzero_ps();
        for (int64_t j = b0 * QK8_0; j < b1 * QK8_0; j += 8) {
            const __m256 v = _mm256_loadu_ps(x + j);
            nan |= nan8(v);
            m = _mm256_max_ps(m, abs8(v));
        }
        const float amax = hmax8(m);
        if (nan || !(amax <= 3.4028235e38f)) {  // NaN or inf: the scalar path's values
            tg::quantize_act_q8_row(x + b0 * QK8_0, (b1 - b0) * QK8_0, qs + b0 * QK8_0, d + c, sum + b0, gb);
            continue;
        }
        const float dd = amax / 127.f;
        const float id = dd != 0.f ? 1.0f / dd : 0.0f;
        d[c] = _cvtsh_ss(_cvtss_sh(dd, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        for (int64_t b = b0; b < b1; b++) {
            if (d[c] == 0.f) {
                std::memset(qs + b * QK8_0, 0, QK8_0);
                sum[b] = 0;
                continue;
            }
            __m256i q[4];
            for (int j = 0; j < 4; j++) q[j] = round_away8(_mm256_mul_ps(_mm256_loadu_ps(x + b * QK8_0 + 8 * j), _mm256_set1_ps(id)));
            store_i8x32(qs + b * QK8_0, q);
            sum[b] = hsum8(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
        }
    }
}

void quantize_act_q8k_row(const float* x, int64_t k, int8_t* qs, float* d, int32_t* bsum, int32_t* pair32) {
    for (int64_t b = 0; b < k / QK_K; b++, x += QK_K, qs += QK_K) {
        __m256 m = _mm256_setzero_ps();
        bool nan = false;
        for (int j = 0; j < 32; j++) {
            const __m256 v = _mm256_loadu_ps(x + 8 * j);
            nan |= nan8(v);
            m = _mm256_max_ps(m, abs8(v));
        }
        const float amax = nan ? 0.f : hmax8(m);
        if (nan || amax == 0.f || !(amax <= 3.4028235e38f)) {
            tg::quantize_act_q8k_row(x, QK_K, qs, d + b, bsum + 16 * b, pair32 + 4 * b);
            continue;
        }
        float max = 0.f;
        for (int j = 0; j < 32; j++) {
            const int hit = _mm256_movemask_ps(_mm256_cmp_ps(abs8(_mm256_loadu_ps(x + 8 * j)), _mm256_set1_ps(amax), _CMP_EQ_OQ));
            if (hit) {
                max = x[8 * j + __builtin_ctz((unsigned)hit)];
                break;
            }
        }
        const float iscale = -127.f / max;
        int32_t* bs = bsum + 16 * b;
        for (int j = 0; j < 8; j++) {  // 32 values per step
            __m256i q[4];
            for (int e = 0; e < 4; e++) {
                const __m256 v = _mm256_mul_ps(_mm256_set1_ps(iscale), _mm256_loadu_ps(x + 32 * j + 8 * e));
                q[e] = clamp_cvt(_mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), -127.f);
            }
            store_i8x32(qs + 32 * j, q);
            bs[2 * j] = hsum8(_mm256_add_epi32(q[0], q[1]));
            bs[2 * j + 1] = hsum8(_mm256_add_epi32(q[2], q[3]));
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

void gemm_q8_0(const GemmArgs& A, int64_t g0, int64_t g1) {
    if (A.n == 1)
        return decode_streams<q8_0_vec<kDecodeStreams>, q8_0_vec<1>>(A, g0, g1, packed_group_bytes(GgmlType::Q8_0, A.n_in));
    static const PartTileFn t[4] = {q8_0_tile<1>, q8_0_tile<2>, q8_0_tile<3>, q8_0_tile<4>};
    part_quant_gemm<2>(A, g0, g1, packed_group_bytes(GgmlType::Q8_0, A.n_in), t);
}
void gemm_iq4_nl(const GemmArgs& A, int64_t g0, int64_t g1) {
    if (A.n == 1)
        return decode_streams<iq4_nl_vec<kDecodeStreams>, iq4_nl_vec<1>>(A, g0, g1, packed_group_bytes(GgmlType::IQ4_NL, A.n_in));
    static const PartTileFn t[4] = {iq4_nl_tile<1>, iq4_nl_tile<2>, iq4_nl_tile<3>, iq4_nl_tile<4>};
    part_quant_gemm<2>(A, g0, g1, packed_group_bytes(GgmlType::IQ4_NL, A.n_in), t);
}
void gemm_q4_0(const GemmArgs& A, int64_t g0, int64_t g1) {
    if (A.n == 1)
        return decode_streams<q4_0_vec<kDecodeStreams>, q4_0_vec<1>>(A, g0, g1, packed_group_bytes(GgmlType::Q4_0, A.n_in));
    static const PartTileFn t[4] = {q4_0_tile<1>, q4_0_tile<2>, q4_0_tile<3>, q4_0_tile<4>};
    part_quant_gemm<2>(A, g0, g1, packed_group_bytes(GgmlType::Q4_0, A.n_in), t);
}
void gemm_q4_1(const GemmArgs& A, int64_t g0, int64_t g1) {
    if (A.n == 1)
        return decode_streams<min_vec<false, kDecodeStreams>, min_vec<false, 1>>(A, g0, g1, packed_group_bytes(GgmlType::Q4_1, A.n_in));
    static const PartTileFn t[4] = {q4_1_tile<1>, q4_1_tile<2>, q4_1_tile<3>, q4_1_tile<4>};
    part_quant_gemm<2>(A, g0, g1, packed_group_bytes(GgmlType::Q4_1, A.n_in), t);
}
void gemm_q5_1(const GemmArgs& A, int64_t g0, int64_t g1) {
    if (A.n == 1)
        return decode_streams<min_vec<true, kDecodeStreams>, min_vec<true, 1>>(A, g0, g1, packed_group_bytes(GgmlType::Q5_1, A.n_in));
    static const PartTileFn t[4] = {q5_1_tile<1>, q5_1_tile<2>, q5_1_tile<3>, q5_1_tile<4>};
    part_quant_gemm<2>(A, g0, g1, packed_group_bytes(GgmlType::Q5_1, A.n_in), t);
}
void gemm_q4_K(const GemmArgs& A, int64_t g0, int64_t g1) {
    if (A.n == 1)
        return decode_streams<q4_K_vec<kDecodeStreams>, q4_K_vec<1>>(A, g0, g1, (A.n_in / QK_K) * kPackQ4_K);
    static const PartTileFn t[4] = {q4_K_tile<1>, q4_K_tile<2>, q4_K_tile<3>, q4_K_tile<4>};
    part_quant_gemm<2>(A, g0, g1, (A.n_in / QK_K) * kPackQ4_K, t);
}
void gemm_q5_K(const GemmArgs& A, int64_t g0, int64_t g1) {
    if (A.n == 1)
        return decode_streams<q5_K_vec<kDecodeStreams>, q5_K_vec<1>>(A, g0, g1, (A.n_in / QK_K) * kPackQ5_K);
    static const PartTileFn t[4] = {q5_K_tile<1>, q5_K_tile<2>, q5_K_tile<3>, q5_K_tile<4>};
    part_quant_gemm<2>(A, g0, g1, (A.n_in / QK_K) * kPackQ5_K, t);
}
void gemm_q6_K(const GemmArgs& A, int64_t g0, int64_t g1) {
    if (A.n == 1)
        return decode_streams<q6_K_vec<kDecodeStreams>, q6_K_vec<1>>(A, g0, g1, (A.n_in / QK_K) * kPackQ6_K);
    static const PartTileFn t[4] = {q6_K_tile<1>, q6_K_tile<2>, q6_K_tile<3>, q6_K_tile<4>};
    part_quant_gemm<2>(A, g0, g1, (A.n_in / QK_K) * kPackQ6_K, t);
}
void gemm_q2_K(const GemmArgs& A, int64_t g0, int64_t g1) {
    if (A.n == 1)
        return decode_streams<q2_K_vec<kDecodeStreams>, q2_K_vec<1>>(A, g0, g1, (A.n_in / QK_K) * kPackQ2_K);
    static const PartTileFn t[4] = {q2_K_tile<1>, q2_K_tile<2>, q2_K_tile<3>, q2_K_tile<4>};
    part_quant_gemm<2>(A, g0, g1, (A.n_in / QK_K) * kPackQ2_K, t);
}

void gemm_iq4_xs(const GemmArgs& A, int64_t g0, int64_t g1) {
    if (A.n == 1)
        return decode_streams<iq4_xs_vec<kDecodeStreams>, iq4_xs_vec<1>>(A, g0, g1, (A.n_in / QK_K) * kPackIQ4_XS);
    static const PartTileFn t[4] = {iq4_xs_tile<1>, iq4_xs_tile<2>, iq4_xs_tile<3>, iq4_xs_tile<4>};
    part_quant_gemm<2>(A, g0, g1, (A.n_in / QK_K) * kPackIQ4_XS, t);
}

}  // namespace TG_AVX2_NAMESPACE
}  // namespace tg
