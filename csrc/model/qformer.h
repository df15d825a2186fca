// The BLIP-2 Q-Former on its query-only path, and the projector into the language model's width.
//
//   h = LN_emb(query)
//   per layer l:  h = LN_attn(W_o · selfattn(h) + h)                           (post-LN BERT, no mask)
//                 if l % cross_freq == 0:  h = LN_cross(W_co · crossattn(q = h, k = v = image) + h)
//                 h = LN_ffn(W_2 · gelu_erf(W_1 · h) + h)                      (the query FFN)
//   out = mm.1 · (mm.0 · h + b0) + b1                                         (no activation in between)
//
// The two projector matrices are applied one after the other (not folded here), so the result matches
// the reference's two Linear layers up to float32 rounding. A file whose converter folded them into one
// affine map stores only mm.0 [n_embd_out rows]; then that single product is the projector.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/matmul.h"

namespace tg {

class GGUFFile;
class WeightLoader;
class Exec;

struct QformerHparams {
    int64_t n_embd = 0;      // 768 for the BERT-base Q-Former
    int64_t n_layer = 0;
    int64_t n_head = 0;
    int64_t head_dim = 0;
    int64_t n_ff = 0;        // query FFN width
    int64_t n_query = 0;     // learned queries = image tokens given to the LM
    int64_t cross_freq = 0;  // cross-attention on layers 0, f, 2f, ...
    int64_t n_embd_enc = 0;  // width of the image tokens (the ViT's n_embd)
    int64_t n_proj_mid = 0;  // rows of mm.0 (4096 in TinyGPT-V); 0 when the projector is folded into mm.0
    int64_t n_embd_out = 0;  // rows of mm.1 = the language model's n_embd
    float ln_eps = 1e-12f;

    bool has_cross(int64_t layer) const { return layer % cross_freq == 0; }
    // Reads tinygptv.qformer.*; n_embd_enc and n_embd_out come from the ViT and LM hyperparameters, the
    // projector's middle width from mm.0's shape. Throws GGUFError/ModelError.
    static QformerHparams read(const GGUFFile& f, int64_t n_embd_enc, int64_t n_embd_out);
};

struct QformerLinear {
    MatW w;           // [n_out, n_in]
    const float* b;   // [n_out]
};

struct QformerLayer {
    QformerLinear attn_q, attn_k, attn_v;  // [n_embd, n_embd] each
    QformerLinear attn_out;                // [n_embd, n_embd]
    const float* attn_ln_w;                // [n_embd]
    const float* attn_ln_b;                // [n_embd]
    bool cross;
    QformerLinear cross_q;                 // [n_embd, n_embd]           (cross layers only)
    QformerLinear cross_k, cross_v;        // [n_embd, n_embd_enc]
    QformerLinear cross_out;               // [n_embd, n_embd]
    const float* cross_ln_w;               // [n_embd]
    const float* cross_ln_b;               // [n_embd]
    QformerLinear ffn_up;                  // [n_ff, n_embd]
    QformerLinear ffn_down;                // [n_embd, n_ff]
    const float* ffn_ln_w;                 // [n_embd]
    const float* ffn_ln_b;                 // [n_embd]
};

struct QformerWeights {
    const float* query;      // [n_query, n_embd]
    const float* emb_ln_w;   // [n_embd]
    const float* emb_ln_b;   // [n_embd]
    std::vector<QformerLayer> layers;
    QformerLinear proj0;     // mm.0: [n_proj_mid, n_embd]  (folded: [n_embd_out, n_embd])
    QformerLinear proj1;     // mm.1: [n_embd_out, n_proj_mid] (folded: absent, w.data null)

    void load(WeightLoader& ld, const QformerHparams& hp);
};

// Scratch of one Q-Former + projector run, sized once from the hyperparameters and the image token count.
struct QformerScratch {
    std::vector<float> h, q, k, v, att, tmp;  // [n_query, n_embd]
    std::vector<float> ck, cv;                // [n_img, n_embd] cross-attention keys / values
    std::vector<float> ff;                    // [n_query, n_ff]
    std::vector<float> mid;                   // [n_query, n_proj_mid]

    QformerScratch(const QformerHparams& hp, int64_t n_img);
};

// img: [n_img, n_embd_enc] image tokens (after ln_vision); out: [n_query, n_embd_out].
void qformer_forward(const QformerHparams& hp, const QformerWeights& w, const float* img, int64_t n_img, float* out,
                     QformerScratch& s, Exec& ex);

}  // namespace tg
