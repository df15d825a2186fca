// Scalar kernels of vecmath.h (the reference the SIMD versions match bit for bit) and the
// run-time choice between them.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "kernels/vecmath.h"

#include "cpu.h"
#include "fp16.h"

namespace tg {

static void exp_scalar(const float* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = exp_ref(x[i]);
}

static void erf_scalar(const float* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = erf_ref(x[i]);
}

static void gelu_erf_scalar(float* x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = gelu_erf_ref(x[i]);
}

static void gelu_tanh_scalar(float* x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = gelu_tanh_ref(x[i]);
}

static float exp_sum_scalar(float* x, int64_t n, float m) {
    float lanes[vm::kSumLanes] = {};
    for (int64_t i = 0; i < n; i++) {
        x[i] = exp_ref(x[i] - m);
        lanes[i % vm::kSumLanes] = lanes[i % vm::kSumLanes] + x[i];
    }
    return lane_sum16(lanes);
}

static float max_scalar(const float* x, int64_t n) {
    float r = -INFINITY;
    for (int64_t i = 0; i < n; i++) r = x[i] > r ? x[i] : r;
    return r;
}

static void to_f16_scalar(const float* x, uint16_t* y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = fp32_to_fp16(x[i]);
}

static void from_f16_scalar(const uint16_t* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = fp16_to_fp32(x[i]);
}

const VecMath& vecmath_scalar() {
    static const VecMath k = {exp_scalar,     erf_scalar, gelu_erf_scalar, gelu_tanh_scalar,
                              exp_sum_scalar, max_scalar, to_f16_scalar, from_f16_scalar};
    return k;
}

const VecMath& vecmath() {
#if defined(TINYGPTV_X86)
    switch (isa_active()) {
        case Isa::Avx512: return vecmath_avx512();
        case Isa::Avx2: return vecmath_avx2();
        case Isa::Scalar: case Isa::Neon: break;
    }
#elif defined(TINYGPTV_ARM)
    if (isa_active() == Isa::Neon) return vecmath_neon();
#endif
    return vecmath_scalar();
}

}  // namespace tg
