// Element-wise and row-wise operations of the transformer blocks. Exact GELU and softmax use the
// vectorised exp/erf of vecmath.h; attention lives in attention.cpp (kernels: attention_kernels.h).
// Rows are float32, contiguous; `n` is the row length.
#pragma once
#include <cstdint>

namespace tg {

class Exec;

// y = (x - mean) / sqrt(var + eps) * w + b   (w, b may be null: identity)
void layernorm(const float* x, float* y, int64_t n, const float* w, const float* b, float eps);
// y = x / sqrt(mean(x^2) + eps) * w
void rmsnorm(const float* x, float* y, int64_t n, const float* w, float eps);
// The same over `rows` rows of length n (row stride n), split over the Exec's threads.
void layernorm_rows(const float* x, float* y, int64_t rows, int64_t n, const float* w, const float* b, float eps,
                    Exec& ex);

void gelu_erf(float* x, int64_t n);   // exact GELU: 0.5 x (1 + erf(x / sqrt 2))
void gelu_tanh(float* x, int64_t n);  // gelu_new: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
void add_inplace(float* y, const float* x, int64_t n);

// In-place softmax of a row.
void softmax(float* x, int64_t n);

// NeoX ("rotate half") rotary embedding on the first n_rot dims of one head vector, using
// precomputed cos/sin for this position (each n_rot/2 long).
void rope_neox(float* x, int n_rot, const float* cos, const float* sin);

// Multi-head scaled dot-product attention.
//   q:   T query rows; row t holds n_head heads of hd floats, at q + t*q_stride.
//   k,v: n_kv key/value rows (row j at k + j*kv_stride), n_head_kv heads each, stored as float32
//        (kv_f16 = false) or IEEE half (kv_f16 = true).
//   causal: query row t sees keys [0, pos0 + t] (pos0 = position of the first query row);
//   otherwise every query sees all n_kv keys.
//   out: T rows of n_head*hd floats at out + t*out_stride.
// Several query rows take the blocked path, one query row the row path
// (attention_kernels.h gives each path's arithmetic). Every output is computed in a fixed order:
// the result depends neither on the thread count nor on the instruction set.
//   bf16: the blocked path with float32 K/V multiplies in bfloat16 (q, k, v and the softmax weights
//   rounded to bf16, float32 sums: twice the products per instruction where the CPU has AVX512_BF16);
//   for callers whose q, k, v carry more error than that anyway (a tower with quantized weights).
void attention(const float* q, int64_t T, int64_t q_stride, const void* k, const void* v, int64_t kv_stride,
               bool kv_f16, int64_t n_kv, bool causal, int64_t pos0, int n_head, int n_head_kv, int hd,
               float scale, float* out, int64_t out_stride, Exec& ex, bool bf16 = false);

// One query row of each of several sequences, each against its own cache (a decode step of a batch):
// row i sees keys [0, n_kv) of its k/v (rows kv_stride apart, as in attention()). The arithmetic of
// attention()'s row path, so a row gives the same result alone or in a batch. scratch: ex.size() rows
// of scratch_stride >= max n_kv floats (the caller's, so a decode step allocates nothing).
struct AttnRow {
    const float* q;   // n_head * hd
    const void* k;    // the sequence's keys, position 0
    const void* v;
    int64_t n_kv;     // keys this row sees (its position + 1)
    float* out;       // n_head * hd
};
void attention_decode(const AttnRow* rows, int64_t n, int64_t kv_stride, bool kv_f16, int n_head, int n_head_kv,
                      int hd, float scale, float* scratch, int64_t scratch_stride, Exec& ex);

}  // namespace tg
