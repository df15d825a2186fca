// Inner loops of attention (dot products and scaled additions against K/V rows in float32 or half),
// with a plain scalar version and an AVX2+F16C version of the same signature, chosen once at run time
// (TINYGPTV_ISA=scalar forces the scalar one).
#pragma once
#include <cstdint>

namespace tg {

struct AttnKernels {
    float (*dot_f32)(const float* q, const float* k, int n);
    float (*dot_f16)(const float* q, const uint16_t* k, int n);
    void (*axpy_f32)(float* y, float a, const float* x, int n);
    void (*axpy_f16)(float* y, float a, const uint16_t* x, int n);
};

const AttnKernels& attn_kernels_scalar();
const AttnKernels& attn_kernels_avx2();  // only call when the CPU has AVX2, FMA and F16C
const AttnKernels& attn_kernels();       // the one chosen for this machine
// Forces the choice ("scalar" or "avx2"; tests use this to compare paths). Returns false if unsupported.
bool attn_kernels_select(const char* isa);

}  // namespace tg
