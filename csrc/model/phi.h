// The Phi-2 decoder, with TinyGPT-V's block variant (per-head q/k LayerNorm before RoPE and an RMSNorm
// on the attention output) switched on by the presence of those tensors.
//
// Per layer:  h = LN(x);  a = RMSNorm?(Wo·attn(rope(LNq?(q)), rope(LNk?(k)), v));  m = W2·gelu_tanh(W1·h)
//             x = (a + m) + x
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/matmul.h"

namespace tg {

class GGUFFile;
class WeightLoader;
class ThreadPool;

struct PhiHparams {
    std::string arch;      // "phi2" or "tinygptv"
    int64_t n_vocab = 0;   // rows of token_embd / output
    int64_t n_ctx_train = 0;
    int64_t n_embd = 0;
    int64_t n_ff = 0;
    int64_t n_layer = 0;
    int64_t n_head = 0;
    int64_t n_head_kv = 0;
    int64_t head_dim = 0;
    int64_t n_rot = 0;     // rotary dims per head (NeoX style)
    float ln_eps = 1e-5f;
    float rms_eps = 1e-6f;
    float rope_base = 10000.f;
    bool qk_norm = false;    // TinyGPT-V: LayerNorm over each q/k head
    bool post_norm = false;  // TinyGPT-V: RMSNorm on the attention output

    int64_t kv_dim() const { return n_head_kv * head_dim; }
    static PhiHparams read(const GGUFFile& f);  // validated; throws GGUFError/ModelError
};

struct PhiLayer {
    const float* attn_norm_w;  // [n_embd]
    const float* attn_norm_b;  // [n_embd]
    MatW qkv;                  // [n_embd + 2*kv_dim, n_embd] rows [q; k; v]  (or q/k/v separately below)
    const float* qkv_b;        // [n_embd + 2*kv_dim]
    MatW wq, wk, wv;           // separate projections when the file has attn_q/attn_k/attn_v
    const float *bq, *bk, *bv;
    bool fused;
    MatW out;                  // [n_embd, n_embd]
    const float* out_b;        // [n_embd]
    MatW up;                   // [n_ff, n_embd]
    const float* up_b;         // [n_ff]
    MatW down;                 // [n_embd, n_ff]
    const float* down_b;       // [n_embd]
    const float* q_norm_w;     // [head_dim]  (TinyGPT-V, else null)
    const float* q_norm_b;     // [head_dim]
    const float* k_norm_w;     // [head_dim]
    const float* k_norm_b;     // [head_dim]
    const float* post_norm_w;  // [n_embd]    (TinyGPT-V, else null)
};

struct PhiWeights {
    MatW tok_embd;             // [n_vocab, n_embd]
    std::vector<PhiLayer> layers;
    const float* out_norm_w;   // [n_embd]
    const float* out_norm_b;   // [n_embd]
    MatW output;               // [n_vocab, n_embd]
    const float* output_b;     // [n_vocab] (may be null)

    void load(WeightLoader& ld, const PhiHparams& hp);
};

// Per-conversation state of the decoder: the KV cache and scratch buffers.
class PhiState {
public:
    PhiState(const PhiHparams& hp, int64_t n_ctx, bool kv_f16);

    int64_t n_ctx() const { return n_ctx_; }
    int64_t n_past() const { return n_past_; }
    void rewind(int64_t n_past);  // forget every position >= n_past
    bool kv_f16() const { return kv_f16_; }
    size_t kv_bytes() const { return k_.size() + v_.size(); }

    // Runs n input embeddings (rows of n_embd) at positions n_past .. n_past+n-1, appending them to the
    // KV cache. Writes logits of every row (logits: n x n_vocab) when all_logits, else of the last row
    // only (logits: n_vocab); logits may be null.
    void forward(const PhiHparams& hp, const PhiWeights& w, const float* x, int64_t n, bool all_logits,
                 float* logits, ThreadPool& pool);

private:
    void forward_chunk(const PhiHparams& hp, const PhiWeights& w, const float* x, int64_t n, bool all_logits,
                       float* logits, ThreadPool& pool);
    int64_t n_ctx_, n_past_ = 0;
    bool kv_f16_;
    std::vector<uint8_t> k_, v_;    // [n_layer][n_ctx][kv_dim], float32 or half
    std::vector<float> rope_cos_, rope_sin_;  // [n_ctx][n_rot/2]
    std::vector<float> x_, h_, qkv_, att_, a_, ff_, tmp_;  // scratch, grown as needed
};

}  // namespace tg
