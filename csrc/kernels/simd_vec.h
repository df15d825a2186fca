// A float vector type for the SIMD kernel files: `Vec` is 8 lanes (AVX2 + FMA + F16C) in *_avx2.cpp
// files, 16 lanes (AVX-512) in *_avx512.cpp files and 4 lanes (AArch64 NEON) in *_neon.cpp files,
// with the few operations the kernels written once for all (vecmath_simd.h, attention_simd.h) need.
// Every operation is the IEEE one of its scalar counterpart, so a lane computes exactly what the
// scalar code computes.
#pragma once
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#elif defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>
#endif

#include <cstdint>
#include <cstring>

#include "fp16.h"

namespace tg {
namespace {

#if defined(__AVX2__) || defined(__AVX512F__)
// Lanes l += l + 4, l += l + 2, l += l + 1 of 8 lanes; returns lane 0.
inline float sum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

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
#elif defined(__ARM_NEON) && defined(__aarch64__)
struct Vec {
    static constexpr int W = 4;
    float32x4_t v;
    static Vec load(const float* p) { return {vld1q_f32(p)}; }
    static Vec load_f16(const uint16_t* p) { return {vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)))}; }
    static Vec set1(float x) { return {vdupq_n_f32(x)}; }
    static Vec zero() { return {vdupq_n_f32(0.f)}; }
    void store(float* p) const { vst1q_f32(p, v); }
    // IEEE half, round to nearest even (the default rounding mode; fp16.h fp32_to_fp16)
    void store_f16(uint16_t* p) const { vst1_u16(p, vreinterpret_u16_f16(vcvt_f16_f32(v))); }
    friend Vec operator+(Vec a, Vec b) { return {vaddq_f32(a.v, b.v)}; }
    friend Vec operator-(Vec a, Vec b) { return {vsubq_f32(a.v, b.v)}; }
    friend Vec operator*(Vec a, Vec b) { return {vmulq_f32(a.v, b.v)}; }
    friend Vec operator/(Vec a, Vec b) { return {vdivq_f32(a.v, b.v)}; }
    static Vec fma(Vec a, Vec b, Vec c) { return {vfmaq_f32(c.v, a.v, b.v)}; }
    // a > b ? a : b and a < b ? a : b, as x86's maxps / minps (fmax / vmaxq would treat NaN otherwise)
    static Vec max(Vec a, Vec b) { return {vbslq_f32(vcgtq_f32(a.v, b.v), a.v, b.v)}; }
    static Vec min(Vec a, Vec b) { return {vbslq_f32(vcltq_f32(a.v, b.v), a.v, b.v)}; }
    static Vec abs(Vec a) { return {vabsq_f32(a.v)}; }
    static Vec copysign(Vec a, Vec s) {
        const uint32x4_t m = vandq_u32(vreinterpretq_u32_f32(s.v), vdupq_n_u32(0x80000000u));
        return {vreinterpretq_f32_u32(vorrq_u32(vreinterpretq_u32_f32(a.v), m))};
    }
    static Vec select_lt(Vec a, Vec b, Vec x, Vec y) { return {vbslq_f32(vcltq_f32(a.v, b.v), x.v, y.v)}; }
    static void pow2_split(Vec t, float shift, Vec& s1, Vec& s2) {
        const int32x4_t n = vsubq_s32(vreinterpretq_s32_f32(t.v), vreinterpretq_s32_f32(vdupq_n_f32(shift)));
        const int32x4_t n1 = vshrq_n_s32(n, 1), n2 = vsubq_s32(n, n1), b = vdupq_n_s32(127);
        s1.v = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n1, b), 23));
        s2.v = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n2, b), 23));
    }
    static Vec load_bits(const uint32_t* p) { return {vreinterpretq_f32_u32(vld1q_u32(p))}; }
    static Vec set1_bits(uint32_t x) { return {vreinterpretq_f32_u32(vdupq_n_u32(x))}; }
    // the two fmas of a bf16 pair step, the odd (high) halves first
    static Vec dot_bf16(Vec acc, Vec a, Vec b) {
        const uint32x4_t ai = vreinterpretq_u32_f32(a.v), bi = vreinterpretq_u32_f32(b.v), hi = vdupq_n_u32(0xffff0000u);
        const float32x4_t acc1 = vfmaq_f32(acc.v, vreinterpretq_f32_u32(vandq_u32(ai, hi)), vreinterpretq_f32_u32(vandq_u32(bi, hi)));
        return {vfmaq_f32(acc1, vreinterpretq_f32_u32(vshlq_n_u32(ai, 16)), vreinterpretq_f32_u32(vshlq_n_u32(bi, 16)))};
    }
    // bf16_round (fp16.h) of 4 floats (of the first n, n <= 4), in integer steps
    static void to_bf16(const float* x, uint16_t* y, int n = 4) {
        if (n < 4) {
            for (int i = 0; i < n; i++) y[i] = bf16_round(x[i]);
            return;
        }
        const uint32x4_t u = vld1q_u32((const uint32_t*)(const void*)x);
        const uint32x4_t a = vandq_u32(u, vdupq_n_u32(0x7fffffff));
        const uint32x4_t tiny = vcltq_u32(a, vdupq_n_u32(0x26800000)), nan = vcgtq_u32(a, vdupq_n_u32(0x7f800000));
        const uint32x4_t hi = vshrq_n_u32(u, 16);
        uint32x4_t r = vshrq_n_u32(vaddq_u32(u, vaddq_u32(vdupq_n_u32(0x7fff), vandq_u32(hi, vdupq_n_u32(1)))), 16);
        r = vbslq_u32(nan, vorrq_u32(hi, vdupq_n_u32(0x40)), r);
        r = vbicq_u32(r, tiny);
        vst1_u16(y, vmovn_u32(r));
    }
    // lane_sum16 (vecmath.h) of the 16 lanes in a[0] (lanes 0-3) .. a[3] (lanes 12-15), in registers
    static float sum16(const Vec* a) {
        const float32x4_t s = vaddq_f32(vaddq_f32(a[0].v, a[2].v), vaddq_f32(a[1].v, a[3].v));  // l += l + 8, l + 4
        const float32x4_t t = vaddq_f32(s, vextq_f32(s, s, 2));                                   // l += l + 2
        return vgetq_lane_f32(t, 0) + vgetq_lane_f32(t, 1);                                      // l += l + 1
    }
    // lanes i vs i + 2, then 0 vs 1, each a > b ? a : b (the AVX2 order)
    float reduce_max() const {
        const Vec h = max(*this, Vec{vextq_f32(v, v, 2)});
        const float a0 = vgetq_lane_f32(h.v, 0), a1 = vgetq_lane_f32(h.v, 1);
        return a0 > a1 ? a0 : a1;
    }
};
#else
#error "simd_vec.h is for the *_avx2.cpp, *_avx512.cpp and *_neon.cpp kernel files"
#endif

}  // namespace
}  // namespace tg
