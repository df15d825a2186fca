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
#include "kernels/ops.h"

namespace tg {

class GGUFFile;
class WeightLoader;
class Exec;
class KvCache;

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

// One row of a decode batch as the decoder sees it: its input embedding is row i of x.
struct PhiRow {
    int32_t seq;   // the cache slot it belongs to
    int64_t pos;   // its position in that sequence
    bool logits;   // whether its logits are wanted
};

// Scratch of the decoder's forward and its RoPE tables: owned by a context, grown to the largest batch
// it has run and then reused, so a decode step allocates nothing.
struct PhiScratch {
    PhiScratch(const PhiHparams& hp, int64_t n_ctx);
    std::vector<float> rope_cos, rope_sin;  // [n_ctx][n_rot/2]
    std::vector<float> x, h, qkv, att, a, ff, tmp;
    std::vector<float> attn;                // per thread: one row of scores (decode attention)
    std::vector<AttnRow> decode_rows;
    std::vector<int64_t> out_rows;          // rows computed by the last layer
};

// Runs the n rows of x (input embeddings, rows of n_embd) through the decoder. Rows of one sequence are
// contiguous, at consecutive positions that continue what its slot holds (the caller checks); their
// keys and values are written into kv at those positions. A sequence with several rows takes the
// blocked attention, one row the row path, so a row's result does not depend on what else is in the
// batch. Logits of the rows that want them, in row order, go to logits (rows x n_vocab).
// layer0 > 0: x is the hidden state after layers [0, layer0), which ran elsewhere (the first layers of a
// decoder split with the GPU); this runs the rest, kv holding their keys and values, and the output head.
void phi_decode(const PhiHparams& hp, const PhiWeights& w, const float* x, const PhiRow* rows, int64_t n, KvCache& kv,
                PhiScratch& s, float* logits, Exec& ex, int64_t layer0 = 0);

}  // namespace tg
