// A float vector type for the SIMD kernel files: `Vec` is 8 lanes (AVX2 + FMA + F16C) in *_avx2.cpp
// files and 16 lanes (AVX-512) in *_avx512.cpp files, with the few operations the kernels written
// once for both (vecmath_simd.h, attention_simd.h) need. Every operation is the IEEE one of its
// scalar counterpart, so a lane computes exactly what the scalar code computes.
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "fp16.h"

namespace tg {
namespace {

// Lanes l += l + 4, l += l + 2, l += l + 1 of 8 lanes; returns lane 0.
inline float sum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#if defined(__AVX512F__)
struct Vec {
    static constexpr int W = 16;
    __m512 v;
    static Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
    static Vec load_f16(const uint16_t* p) { return {_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p))}; }
    static Vec set1(float x) { return {_mm512_set1_ps(x)}; }
    static Vec zero() { return {_mm512_setzero_ps()}; }
    void store(float* p) const { _mm512_storeu_ps(p, v); }
    // IEEE half, round to nearest even (fp16.h fp32_to_fp16)
    void store_f16(uint16_t* p) const {
        _mm256_storeu_si256((__m256i*)p, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    friend Vec operator+(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
    friend Vec operator-(Vec a, Vec b) { return {_mm512_sub_ps(a.v, b.v)}; }
    friend Vec operator*(Vec a, Vec b) { return {_mm512_mul_ps(a.v, b.v)}; }
    friend Vec operator/(Vec a, Vec b) { return {_mm512_div_ps(a.v, b.v)}; }
    static Vec fma(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
    static Vec max(Vec a, Vec b) { return {_mm512_max_ps(a.v, b.v)}; }  // a > b ? a : b
    static Vec min(Vec a, Vec b) { return {_mm512_min_ps(a.v, b.v)}; }  // a < b ? a : b
    static Vec abs(Vec a) { return {_mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a.v), _mm512_set1_epi32(0x7fffffff)))}; }
    // sign of s on the magnitude of a (a is non-negative or NaN)
    static Vec copysign(Vec a, Vec s) {
        const __m512i m = _mm512_and_si512(_mm512_castps_si512(s.v), _mm512_set1_epi32((int)0x80000000u));
        return {_mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(a.v), m))};
    }
    static Vec select_lt(Vec a, Vec b, Vec x, Vec y) {  // a < b ? x : y (false for NaN)
        return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ), y.v, x.v)};
    }
    // 2^(n >> 1) and 2^(n - (n >> 1)) for the integer n = bits(t) - bits(shift)
    static void pow2_split(Vec t, float shift, Vec& s1, Vec& s2) {
        const __m512i n = _mm512_sub_epi32(_mm512_castps_si512(t.v), _mm512_castps_si512(_mm512_set1_ps(shift)));
        const __m512i n1 = _mm512_srai_epi32(n, 1), n2 = _mm512_sub_epi32(n, n1), b = _mm512_set1_epi32(127);
        s1.v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n1, b), 23));
        s2.v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n2, b), 23));
    }
    float reduce_max() const { return _mm512_reduce_max_ps(v); }
    // ---- pairs of bf16 values in each 32-bit lane (attention_kernels.h) ----
    static Vec load_bits(const uint32_t* p) { return {_mm512_castsi512_ps(_mm512_loadu_si512(p))}; }
    static Vec set1_bits(uint32_t x) { return {_mm512_castsi512_ps(_mm512_set1_epi32((int)x))}; }
    // acc = fma(a.odd, b.odd, acc), then fma(a.even, b.even, acc): vdpbf16ps rounds each step so (the SDM's
    // order; measured on Zen 4). Only called where CPUID has AVX512_BF16 (attention.cpp picks the AVX2
    // kernels' emulation and conversion otherwise).
    static Vec dot_bf16(Vec acc, Vec a, Vec b) {
        return {_mm512_dpbf16_ps(acc.v, (__m512bh)_mm512_castps_si512(a.v), (__m512bh)_mm512_castps_si512(b.v))};
    }
    // bf16_round of 16 floats (of the first n, n <= 16): vcvtneps2bf16 (round to nearest even, NaN ->
    // src[31:16] | 0x40) after zeroing |x| < 2^-50. AVX512_BF16 only, as dot_bf16.
    static void to_bf16(const float* x, uint16_t* y, int n = 16) {
        const __mmask16 in = n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
        const __m512 v = _mm512_maskz_loadu_ps(in, x);
        const __m512i a = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fffffff));
        const __mmask16 keep = _mm512_cmpge_epu32_mask(a, _mm512_set1_epi32(0x26800000));
        _mm256_mask_storeu_epi16(y, in, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_mov_ps(keep, v)));
    }
    // lane_sum16 (vecmath.h) of the 16 lanes in a[0], in registers
    static float sum16(const Vec* a) {
        const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(a[0].v),
                                        _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a[0].v), 1)));
        return sum8(s8);
    }
};
#elif defined(__AVX2__)
struct Vec {
    static constexpr int W = 8;
    __m256 v;
    static Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
    static Vec load_f16(const uint16_t* p) { return {_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p))}; }
    static Vec set1(float x) { return {_mm256_set1_ps(x)}; }
    static Vec zero() { return {_mm256_setzero_ps()}; }
    void store(float* p) const { _mm256_storeu_ps(p, v); }
    void store_f16(uint16_t* p) const {
        _mm_storeu_si128((__m128i*)p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    friend Vec operator+(Vec a, Vec b) { return {_mm256_add_ps(a.v, b.v)}; }
    friend Vec operator-(Vec a, Vec b) { return {_mm256_sub_ps(a.v, b.v)}; }
    friend Vec operator*(Vec a, Vec b) { return {_mm256_mul_ps(a.v, b.v)}; }
    friend Vec operator/(Vec a, Vec b) { return {_mm256_div_ps(a.v, b.v)}; }
    static Vec fma(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
    static Vec max(Vec a, Vec b) { return {_mm256_max_ps(a.v, b.v)}; }
    static Vec min(Vec a, Vec b) { return {_mm256_min_ps(a.v, b.v)}; }
    static Vec abs(Vec a) { return {_mm256_and_ps(a.v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)))}; }
    static Vec copysign(Vec a, Vec s) {
        return {_mm256_or_ps(a.v, _mm256_and_ps(s.v, _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u))))};
    }
    static Vec select_lt(Vec a, Vec b, Vec x, Vec y) { return {_mm256_blendv_ps(y.v, x.v, _mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ))}; }
    static void pow2_split(Vec t, float shift, Vec& s1, Vec& s2) {
        const __m256i n = _mm256_sub_epi32(_mm256_castps_si256(t.v), _mm256_castps_si256(_mm256_set1_ps(shift)));
        const __m256i n1 = _mm256_srai_epi32(n, 1), n2 = _mm256_sub_epi32(n, n1), b = _mm256_set1_epi32(127);
        s1.v = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, b), 23));
        s2.v = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, b), 23));
    }
    static Vec load_bits(const uint32_t* p) { return {_mm256_castsi256_ps(_mm256_loadu_si256((const __m256i*)p))}; }
    static Vec set1_bits(uint32_t x) { return {_mm256_castsi256_ps(_mm256_set1_epi32((int)x))}; }
    static Vec dot_bf16(Vec acc, Vec a, Vec b) {
        const __m256i ai = _mm256_castps_si256(a.v), bi = _mm256_castps_si256(b.v), hi = _mm256_set1_epi32((int)0xffff0000u);
        const __m256 acc1 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(ai, hi)),
                                            _mm256_castsi256_ps(_mm256_and_si256(bi, hi)), acc.v);
        return {_mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(ai, 16)), _mm256_castsi256_ps(_mm256_slli_epi32(bi, 16)), acc1)};
    }
    static void to_bf16(const float* x, uint16_t* y, int n = 8) {  // (a < 2^31: signed compares are unsigned ones)
        if (n < 8) {
            for (int i = 0; i < n; i++) y[i] = bf16_round(x[i]);
            return;
        }
        const __m256i u = _mm256_castps_si256(_mm256_loadu_ps(x));
        const __m256i a = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
        const __m256i tiny = _mm256_cmpgt_epi32(_mm256_set1_epi32(0x26800000), a);
        const __m256i nan = _mm256_cmpgt_epi32(a, _mm256_set1_epi32(0x7f800000));
        const __m256i hi = _mm256_srli_epi32(u, 16);
        __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), _mm256_and_si256(hi, _mm256_set1_epi32(1))));
        r = _mm256_blendv_epi8(_mm256_srli_epi32(r, 16), _mm256_or_si256(hi, _mm256_set1_epi32(0x40)), nan);
        r = _mm256_andnot_si256(tiny, r);
        const __m256i pk = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
        _mm_storeu_si128((__m128i*)y, _mm256_castsi256_si128(pk));
    }
    // lane_sum16 (vecmath.h) of the 16 lanes in a[0] (lanes 0-7) and a[1] (lanes 8-15), in registers
    static float sum16(const Vec* a) { return sum8(_mm256_add_ps(a[0].v, a[1].v)); }
    float reduce_max() const {
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        return _mm_cvtss_f32(m);
    }
};
#else
#error "simd_vec.h is for the *_avx2.cpp and *_avx512.cpp kernel files"
#endif

}  // namespace
}  // namespace tg
