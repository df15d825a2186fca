// The vecmath.h contract written once for the SIMD vector type of simd_vec.h (included by
// vecmath_avx2.cpp and vecmath_avx512.cpp only). Lane by lane the same operations as exp_ref /
// erf_ref; tails shorter than a vector use the scalar functions themselves.
#pragma once
#include "fp16.h"
#include "kernels/simd_vec.h"
#include "kernels/vecmath.h"

namespace tg {
namespace {

inline Vec exp_v(Vec x) {
    using namespace vm;
    x = Vec::max(Vec::set1(kExpLo), x);
    x = Vec::min(Vec::set1(kExpHi), x);
    const Vec t = Vec::fma(x, Vec::set1(kLog2e), Vec::set1(kShift));
    const Vec n = t - Vec::set1(kShift);
    Vec r = Vec::fma(n, Vec::set1(-kLn2Hi), x);
    r = Vec::fma(n, Vec::set1(-kLn2Lo), r);
    Vec p = Vec::fma(Vec::set1(kExpC6), r, Vec::set1(kExpC5));
    p = Vec::fma(p, r, Vec::set1(kExpC4));
    p = Vec::fma(p, r, Vec::set1(kExpC3));
    p = Vec::fma(p, r, Vec::set1(kExpC2));
    p = Vec::fma(p, r, Vec::set1(1.0f));
    p = Vec::fma(p, r, Vec::set1(1.0f));
    Vec s1, s2;
    Vec::pow2_split(t, kShift, s1, s2);
    return (p * s1) * s2;
}

inline Vec erf_v(Vec x) {
    using namespace vm;
    const Vec a = Vec::abs(x);
    const Vec u = a * a;
    Vec q = Vec::fma(Vec::set1(kErfQ[6]), u, Vec::set1(kErfQ[5]));
    for (int i = 4; i >= 0; i--) q = Vec::fma(q, u, Vec::set1(kErfQ[i]));
    const Vec small = q * a;
    const Vec t = Vec::set1(2.0f) / (Vec::set1(2.0f) + a);
    Vec p = Vec::fma(Vec::set1(kErfP[7]), t, Vec::set1(kErfP[6]));
    for (int i = 5; i >= 0; i--) p = Vec::fma(p, t, Vec::set1(kErfP[i]));
    const Vec e = exp_v(Vec::fma(Vec::zero() - a, a, p));
    const Vec large = Vec::fma(Vec::zero() - t, e, Vec::set1(1.0f));
    return Vec::copysign(Vec::select_lt(a, Vec::set1(kErfSplit), small, large), x);
}

void exp_rows(const float* x, float* y, int64_t n) {
    int64_t i = 0;
    for (; i + Vec::W <= n; i += Vec::W) exp_v(Vec::load(x + i)).store(y + i);
    for (; i < n; i++) y[i] = exp_ref(x[i]);
}

void erf_rows(const float* x, float* y, int64_t n) {
    int64_t i = 0;
    for (; i + Vec::W <= n; i += Vec::W) erf_v(Vec::load(x + i)).store(y + i);
    for (; i < n; i++) y[i] = erf_ref(x[i]);
}

void gelu_erf_rows(float* x, int64_t n) {
    int64_t i = 0;
    for (; i + Vec::W <= n; i += Vec::W) {
        const Vec v = Vec::load(x + i), h = Vec::set1(0.5f) * v;
        Vec::fma(h, erf_v(v * Vec::set1(vm::kSqrtHalf)), h).store(x + i);
    }
    for (; i < n; i++) x[i] = gelu_erf_ref(x[i]);
}

void gelu_tanh_rows(float* x, int64_t n) {
    int64_t i = 0;
    for (; i + Vec::W <= n; i += Vec::W) {
        const Vec v = Vec::load(x + i);
        const Vec u = Vec::fma((v * v) * v, Vec::set1(vm::kGeluA), v) * Vec::set1(vm::kGeluM2C);
        (v / (Vec::set1(1.0f) + exp_v(u))).store(x + i);
    }
    for (; i < n; i++) x[i] = gelu_tanh_ref(x[i]);
}

float exp_sum_rows(float* x, int64_t n, float m) {
    constexpr int NV = vm::kSumLanes / Vec::W;
    Vec acc[NV];
    for (int k = 0; k < NV; k++) acc[k] = Vec::zero();
    const Vec vm_ = Vec::set1(m);
    int64_t i = 0;
    for (; i + vm::kSumLanes <= n; i += vm::kSumLanes)
        for (int k = 0; k < NV; k++) {
            const Vec e = exp_v(Vec::load(x + i + k * Vec::W) - vm_);
            e.store(x + i + k * Vec::W);
            acc[k] = acc[k] + e;
        }
    float lanes[vm::kSumLanes];
    for (int k = 0; k < NV; k++) acc[k].store(lanes + k * Vec::W);
    for (int l = 0; i < n; i++, l++) {
        x[i] = exp_ref(x[i] - m);
        lanes[l] = lanes[l] + x[i];
    }
    return lane_sum16(lanes);
}

float max_rows(const float* x, int64_t n) {
    Vec m = Vec::set1(-INFINITY);
    int64_t i = 0;
    for (; i + Vec::W <= n; i += Vec::W) m = Vec::max(Vec::load(x + i), m);
    float r = m.reduce_max();
    for (; i < n; i++) r = x[i] > r ? x[i] : r;
    return r;
}

void to_f16_rows(const float* x, uint16_t* y, int64_t n) {
    int64_t i = 0;
    for (; i + Vec::W <= n; i += Vec::W) Vec::load(x + i).store_f16(y + i);
    for (; i < n; i++) y[i] = fp32_to_fp16(x[i]);
}

void from_f16_rows(const uint16_t* x, float* y, int64_t n) {
    int64_t i = 0;
    for (; i + Vec::W <= n; i += Vec::W) Vec::load_f16(x + i).store(y + i);
    for (; i < n; i++) y[i] = fp16_to_fp32(x[i]);
}

}  // namespace
}  // namespace tg
