#include "kernels/ops_simd.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "fp16.h"

namespace tg {

static float dot_f32_scalar(const float* q, const float* k, int n) {
    float acc = 0.f;
    for (int i = 0; i < n; i++) acc += q[i] * k[i];
    return acc;
}
static float dot_f16_scalar(const float* q, const uint16_t* k, int n) {
    float acc = 0.f;
    for (int i = 0; i < n; i++) acc += q[i] * fp16_to_fp32(k[i]);
    return acc;
}
static void axpy_f32_scalar(float* y, float a, const float* x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}
static void axpy_f16_scalar(float* y, float a, const uint16_t* x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * fp16_to_fp32(x[i]);
}

const AttnKernels& attn_kernels_scalar() {
    static const AttnKernels k = {dot_f32_scalar, dot_f16_scalar, axpy_f32_scalar, axpy_f16_scalar};
    return k;
}

static bool cpu_has_avx2() {
#if defined(TINYGPTV_X86)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
    return false;
#endif
}

static std::atomic<const AttnKernels*> g_chosen{nullptr};

const AttnKernels& attn_kernels() {
    const AttnKernels* k = g_chosen.load(std::memory_order_acquire);
    if (k) return *k;
    const char* env = std::getenv("TINYGPTV_ISA");
    bool scalar = env && std::strcmp(env, "scalar") == 0;
#if defined(TINYGPTV_X86)
    k = (!scalar && cpu_has_avx2()) ? &attn_kernels_avx2() : &attn_kernels_scalar();
#else
    (void)scalar;
    k = &attn_kernels_scalar();
#endif
    g_chosen.store(k, std::memory_order_release);
    return *k;
}

bool attn_kernels_select(const char* isa) {
    if (std::strcmp(isa, "scalar") == 0) {
        g_chosen.store(&attn_kernels_scalar());
        return true;
    }
#if defined(TINYGPTV_X86)
    if ((std::strcmp(isa, "avx2") == 0 || std::strcmp(isa, "avx512") == 0) && cpu_has_avx2()) {
        g_chosen.store(&attn_kernels_avx2());
        return true;
    }
#endif
    return false;
}

}  // namespace tg
