// Vectorised float32 exp and erf, and the row operations built on them (exact GELU, softmax sums).
// A plain scalar version (vecmath.cpp) and AVX2 / AVX-512 / NEON versions (vecmath_avx2.cpp,
// vecmath_avx512.cpp, vecmath_neon.cpp) follow the same arithmetic, so results are bit-identical on every path:
//
//   exp(x):  x = min(max(x, -104), 89)                     (NaN passes through)
//            t = fma(x, log2(e), 1.5 * 2^23);  n = t - 1.5 * 2^23       (round to nearest integer)
//            r = fma(n, -ln2_hi, x);  r = fma(n, -ln2_lo, r)
//            p = 1 + r + r^2 (c2 + c3 r + ... + c6 r^4)       (Horner, one fma per step)
//            y = (p * 2^(n >> 1)) * 2^(n - (n >> 1))      (two exact-power scalings: the last one
//                                                          rounds once into the subnormal range or to inf)
//            Error < 0.9 ulp for normal results (measured), subnormals within 1 unit; exp(x) = 0
//            below -103.97, inf above 88.72.
//   erf(x):  a = |x|
//            a < 0.875:  erf = a * Q(a*a)                  (Q: degree 6, Horner with fma)
//            otherwise:  t = 2 / (2 + a);  erfc = t * exp(fma(-a, a, P(t)))   (P: degree 7)
//                        erf = fma(-t, exp(...), 1)
//            result with the sign of x.  Absolute error <= 1.1e-7 (at most 2.3 ulp; measured
//            against float64 over [-6, 6] in tests/test_vecmath.py).
//   gelu_erf(x) = fma(h, erf(x * sqrt(1/2)), h) with h = 0.5 * x
//   gelu_tanh(x) = 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)),  u = sqrt(2/pi) (x + 0.044715 x^3):
//            computed as  v = fma((x * x) * x, 0.044715, x) * (-2 sqrt(2/pi));  x / (1 + exp(v))
//            (x -> -inf: exp overflows to inf and the result is -0; x -> +inf: exp(v) = 0, result x)
//   exp_sum(x, n, m): x[i] = exp(x[i] - m); returns the sum of the new x[i] accumulated in 16 lanes
//            (lane l adds elements i = l mod 16, in order of i), then lanes combined as
//            l += l + 8, l += l + 4, l += l + 2, l += l + 1 (lane 0 is the sum).
//   max(x, n): the largest x[i] (order-free).
//   to_f16(x, y, n): y[i] = x[i] as IEEE half, rounded to nearest even (fp16.h fp32_to_fp16; the
//            SIMD paths use the F16C conversion, which rounds and handles NaN and overflow the same).
//   from_f16(x, y, n): y[i] = the half x[i] as float32 (exact; fp16.h fp16_to_fp32).
// These files are compiled without floating-point contraction, so no a*b+c is fused behind our back.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace tg {

namespace vm {
constexpr float kExpLo = -104.0f, kExpHi = 89.0f;
constexpr float kLog2e = 1.44269502162933349609375f;
constexpr float kShift = 12582912.0f;  // 1.5 * 2^23
constexpr float kLn2Hi = 0.693147182464599609375f;
constexpr float kLn2Lo = -1.904654323148236e-09f;
// exp(r) = 1 + r + r^2 * (c2 + c3 r + c4 r^2 + c5 r^3 + c6 r^4), fitted on |r| <= ln(2)/2
constexpr float kExpC2 = 0.49999988079071045f, kExpC3 = 0.16666516661643982f, kExpC4 = 0.0416695661842823f,
                kExpC5 = 0.00836912076920271f, kExpC6 = 0.0013750663492828608f;
// erf(a) = a * Q(a^2) for a < kErfSplit
constexpr float kErfSplit = 0.875f;
constexpr float kErfQ[7] = {1.128379225730896f,      -0.37612637877464294f,  0.11283741146326065f,
                            -0.026861969381570816f,  0.005207621492445469f,  -0.0008220518357120454f,
                            8.714060095371678e-05f};
// erfc(a) = t * exp(-a^2 + P(t)), t = 2 / (2 + a), for a >= kErfSplit
constexpr float kErfP[8] = {-1.264978051185608f,   0.9904339909553528f, 0.44917982816696167f, -0.24010686576366425f,
                            0.7706395983695984f,   -1.512721300125122f, 1.0861585140228271f,  -0.27882346510887146f};
constexpr float kSqrtHalf = 0.70710678118654752f;
constexpr float kGeluA = 0.044715f;
constexpr float kGeluM2C = -1.5957691216057308f;  // -2 sqrt(2/pi)
constexpr int kSumLanes = 16;
}  // namespace vm

// Scalar definitions of the contract (also used for the tails of the SIMD loops).
static inline float exp_ref(float x) {
    using namespace vm;
    x = kExpLo > x ? kExpLo : x;
    x = kExpHi < x ? kExpHi : x;
    const float t = std::fma(x, kLog2e, kShift);
    const float n = t - kShift;
    float r = std::fma(n, -kLn2Hi, x);
    r = std::fma(n, -kLn2Lo, r);
    float p = std::fma(kExpC6, r, kExpC5);
    p = std::fma(p, r, kExpC4);
    p = std::fma(p, r, kExpC3);
    p = std::fma(p, r, kExpC2);
    p = std::fma(p, r, 1.0f);
    p = std::fma(p, r, 1.0f);
    uint32_t tb, sb;
    std::memcpy(&tb, &t, 4);
    std::memcpy(&sb, &kShift, 4);
    const int32_t ni = (int32_t)(tb - sb);
    const int32_t n1 = ni >> 1, n2 = ni - n1;
    const uint32_t b1 = (uint32_t)(n1 + 127) << 23, b2 = (uint32_t)(n2 + 127) << 23;
    float s1, s2;
    std::memcpy(&s1, &b1, 4);
    std::memcpy(&s2, &b2, 4);
    return (p * s1) * s2;
}

static inline float erf_ref(float x) {
    using namespace vm;
    const float a = std::fabs(x);
    const float u = a * a;
    float q = std::fma(kErfQ[6], u, kErfQ[5]);
    for (int i = 4; i >= 0; i--) q = std::fma(q, u, kErfQ[i]);
    const float small = q * a;
    const float t = 2.0f / (2.0f + a);
    float p = std::fma(kErfP[7], t, kErfP[6]);
    for (int i = 5; i >= 0; i--) p = std::fma(p, t, kErfP[i]);
    const float large = std::fma(-t, exp_ref(std::fma(-a, a, p)), 1.0f);
    return std::copysign(a < kErfSplit ? small : large, x);
}

static inline float gelu_erf_ref(float x) {
    const float h = 0.5f * x;
    return std::fma(h, erf_ref(x * vm::kSqrtHalf), h);
}

static inline float gelu_tanh_ref(float x) {
    const float v = std::fma((x * x) * x, vm::kGeluA, x) * vm::kGeluM2C;
    return x / (1.0f + exp_ref(v));
}

// Combines the 16 lane sums of exp_sum in the fixed order of the contract.
static inline float lane_sum16(float* acc) {
    for (int w = vm::kSumLanes / 2; w >= 1; w /= 2)
        for (int l = 0; l < w; l++) acc[l] = acc[l] + acc[l + w];
    return acc[0];
}

struct VecMath {
    void (*exp)(const float* x, float* y, int64_t n);
    void (*erf)(const float* x, float* y, int64_t n);
    void (*gelu_erf)(float* x, int64_t n);
    void (*gelu_tanh)(float* x, int64_t n);
    float (*exp_sum)(float* x, int64_t n, float m);
    float (*max)(const float* x, int64_t n);  // -inf for n = 0
    void (*to_f16)(const float* x, uint16_t* y, int64_t n);
    void (*from_f16)(const uint16_t* x, float* y, int64_t n);
};

const VecMath& vecmath_scalar();
const VecMath& vecmath_avx2();    // only when the CPU supports it (cpu.h)
const VecMath& vecmath_avx512();  // only when the CPU supports it (cpu.h)
const VecMath& vecmath_neon();    // AArch64 builds only
const VecMath& vecmath();         // the set for the active instruction set (isa_active())

}  // namespace tg
