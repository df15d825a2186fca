// Inner loops of attention (ops.h: attention()), with a plain scalar version (attention.cpp) and
// AVX2 / AVX-512 / NEON versions (attention_avx2.cpp, attention_avx512.cpp, attention_neon.cpp) of the
// same arithmetic, so results are bit-identical on every path and for any thread count. Not part of the engine's API.
//
// Two ways to compute one query row against its keys; the caller picks one from the shapes only:
//
//   row path (one query row: the decoder's generation steps), per key j:
//     s_j  = dot16(q, k_j) * scale        dot16: lane l = d mod 16 accumulates fma(q[d], k[d], lane)
//                                         in order of d; lanes combined as in vecmath.h lane_sum16
//   blocked path (several query rows: the vision tower, the Q-Former, the decoder's prompt):
//     s_j  = (fma(q[d], k_j[d], acc) over d = 0, 1, ..., hd-1, acc from 0) * scale
//
//   then for both, over the keys j < len the row sees (all, or up to its own position if causal):
//     m = max_j s_j;  e_j = exp(s_j - m) and sum = exp_sum (vecmath.h);
//     o[d] = (fma(e_j, v_j[d], acc) over j = 0, 1, ..., acc from 0) * (1 / sum)
//   (the blocked path runs the o chain over the longest row of its tile with e_j = 0 beyond a row's
//   len: adding fma(0, v, acc) = acc changes nothing for finite v)
//
// Blocked path in bfloat16 (attention(..., bf16 = true), float K/V only): q, k, v and the e_j are
// rounded to bf16 (bf16_round below) and a lane takes two products per step, as vdpbf16ps does:
//     acc = fma(a[2i+1], b[2i+1], acc); acc = fma(a[2i], b[2i], acc)   for i = 0, 1, ...
// (a product of two bf16 values is exact in float32, so each step is one rounding); the pairs are
// (q[2i], q[2i+1]) x (k_j[2i], k_j[2i+1]) for the scores and (e_2i, e_2i+1) x (v_2i[d], v_2i+1[d]) for
// P V, zero-padded to an even count (bf16_round: fp16.h). sum and m are those of the float32 s_j / e_j as above.
//
// The blocked kernels work on a head's K transposed ("kt": hd rows of ldk keys, zero beyond the
// last key) and V with padded rows ("vp": one row of ldv >= hd floats per key, zero beyond hd), so
// a SIMD lane is one key (scores) or one output dimension (P V). Half-precision K/V are widened to
// float32 when packed (exactly: every fp16 value is a float32 value).
#pragma once
#include <cstdint>

#include "fp16.h"  // bf16_round

namespace tg {

struct AttnKernels {
    // Row path.
    float (*dot_f32)(const float* q, const float* k, int n);
    float (*dot_f16)(const float* q, const uint16_t* k, int n);
    void (*axpy_f32)(float* y, float a, const float* x, int n);  // y[i] = fma(a, x[i], y[i])
    void (*axpy_f16)(float* y, float a, const uint16_t* x, int n);
    // Blocked path. ldk must be a multiple of key_block and ldv of dim_block.
    int key_block, dim_block;
    // s[r * ldk + j] for r < rows and at least j < nk (nk <= ldk; the SIMD kernels compute whole vectors of
    // keys, up to ldk); query row r at q + r * q_stride
    void (*scores)(const float* q, int64_t q_stride, int rows, const float* kt, int64_t ldk, int64_t nk, int hd,
                   float scale, float* s);
    // o[r * ldv + d] = sum over j < n of p[r * ldp + j] * vp[j * ldv + d]  (unnormalised), d < ldv
    void (*pv)(const float* p, int64_t ldp, int rows, int64_t n, const float* vp, int64_t ldv, float* o);
    // bf16 blocked path: the same with pairs of bf16 values (uint32, low half = even index) for elements:
    // q rows of np pairs (stride q_stride pairs), kt np rows of ldk keys, p rows of ldp key pairs, vp one row
    // of ldv dimensions per key pair (n pairs).
    int bf16_key_block, bf16_dim_block;
    void (*scores_bf16)(const uint32_t* q, int64_t q_stride, int rows, const uint32_t* kt, int64_t ldk, int64_t nk,
                        int np, float scale, float* s);
    void (*pv_bf16)(const uint32_t* p, int64_t ldp, int rows, int64_t n, const uint32_t* vp, int64_t ldv, float* o);
    void (*to_bf16)(const float* x, uint16_t* y, int64_t n);  // y[i] = bf16_round(x[i])
};

const AttnKernels& attn_kernels_scalar();
const AttnKernels& attn_kernels_avx2();    // only when the CPU supports it (cpu.h)
const AttnKernels& attn_kernels_avx512();  // only when the CPU supports it (cpu.h)
const AttnKernels& attn_kernels_neon();    // AArch64 builds only
const AttnKernels& attn_kernels();         // the set for the active instruction set (isa_active())

}  // namespace tg
