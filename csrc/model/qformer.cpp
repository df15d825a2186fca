#include "model/qformer.h"

#include <cmath>
#include <cstring>
#include <string>

#include "errors.h"
#include "gguf.h"
#include "kernels/ops.h"
#include "model/loader.h"
#include "model/meta.h"
#include "exec.h"

namespace tg {

QformerHparams QformerHparams::read(const GGUFFile& f, int64_t n_embd_enc, int64_t n_embd_out) {
    const std::string p = "tinygptv.qformer.";
    QformerHparams hp;
    hp.n_embd = meta_u32_in(f, p + "embedding_length", 1, 1 << 14);
    hp.n_layer = meta_u32_in(f, p + "block_count", 1, 256);
    hp.n_head = meta_u32_in(f, p + "attention.head_count", 1, 1024);
    hp.n_ff = meta_u32_in(f, p + "feed_forward_length", 1, 1 << 16);
    hp.n_query = meta_u32_in(f, p + "query_count", 1, 4096);
    hp.cross_freq = meta_u32_in(f, p + "cross_attention_freq", 1, 256);
    hp.ln_eps = meta_eps(f, p + "layer_norm_epsilon");
    meta_divides("tinygptv.qformer.attention.head_count", hp.n_head, "tinygptv.qformer.embedding_length", hp.n_embd);
    hp.head_dim = hp.n_embd / hp.n_head;
    hp.n_embd_enc = n_embd_enc;
    hp.n_embd_out = n_embd_out;

    const GGUFTensor* q = f.find_tensor("qf.query");
    if (!q) throw ModelError("required tensor 'qf.query' is missing");
    if (q->ne[0] != hp.n_embd || q->nelements() != hp.n_query * hp.n_embd)
        throw ModelError(fmt("tensor 'qf.query' has shape %s, expected [%lld, %lld] (tinygptv.qformer.query_count "
                             "rows of tinygptv.qformer.embedding_length)",
                             q->shape_str().c_str(), (long long)hp.n_embd, (long long)hp.n_query));
    const GGUFTensor* m0 = f.find_tensor("mm.0.weight");
    if (!m0) throw ModelError("required tensor 'mm.0.weight' is missing");
    if (m0->n_dims != 2 || m0->ne[0] != hp.n_embd || m0->ne[1] < 1 || m0->ne[1] > (1 << 16))
        throw ModelError(fmt("tensor 'mm.0.weight' has shape %s, expected [%lld, n_mid] with n_mid <= 65536",
                             m0->shape_str().c_str(), (long long)hp.n_embd));
    const bool folded = f.find_tensor("mm.1.weight") == nullptr;
    hp.n_proj_mid = folded ? 0 : m0->ne[1];
    if (folded && m0->ne[1] != n_embd_out)
        throw ModelError(fmt("tensor 'mm.0.weight' has shape %s and there is no 'mm.1.weight': a folded projector "
                             "must have %lld rows (the language model's embedding_length)",
                             m0->shape_str().c_str(), (long long)n_embd_out));
    return hp;
}

static QformerLinear linear(WeightLoader& ld, const std::string& name, int64_t n_out, int64_t n_in) {
    QformerLinear l;
    l.w = ld.mat(name + ".weight", n_out, n_in);
    l.b = ld.vec(name + ".bias", n_out);
    return l;
}

void QformerWeights::load(WeightLoader& ld, const QformerHparams& hp) {
    const int64_t E = hp.n_embd, F = hp.n_ff, EV = hp.n_embd_enc;
    query = ld.vec("qf.query", hp.n_query * E);
    emb_ln_w = ld.vec("qf.emb_ln.weight", E);
    emb_ln_b = ld.vec("qf.emb_ln.bias", E);
    layers.resize((size_t)hp.n_layer);
    for (int64_t i = 0; i < hp.n_layer; i++) {
        QformerLayer& l = layers[(size_t)i];
        const std::string b = "qf.blk." + std::to_string(i) + ".";
        l.attn_q = linear(ld, b + "attn_q", E, E);
        l.attn_k = linear(ld, b + "attn_k", E, E);
        l.attn_v = linear(ld, b + "attn_v", E, E);
        l.attn_out = linear(ld, b + "attn_out", E, E);
        l.attn_ln_w = ld.vec(b + "attn_ln.weight", E);
        l.attn_ln_b = ld.vec(b + "attn_ln.bias", E);
        l.cross = hp.has_cross(i);
        if (l.cross) {
            l.cross_q = linear(ld, b + "cross_q", E, E);
            l.cross_k = linear(ld, b + "cross_k", E, EV);
            l.cross_v = linear(ld, b + "cross_v", E, EV);
            l.cross_out = linear(ld, b + "cross_out", E, E);
            l.cross_ln_w = ld.vec(b + "cross_ln.weight", E);
            l.cross_ln_b = ld.vec(b + "cross_ln.bias", E);
        } else {
            if (ld.has(b + "cross_q.weight"))
                throw ModelError(fmt("tensor '%scross_q.weight' is present but layer %lld has no cross-attention with "
                                     "tinygptv.qformer.cross_attention_freq = %lld",
                                     b.c_str(), (long long)i, (long long)hp.cross_freq));
            l.cross_q = l.cross_k = l.cross_v = l.cross_out = QformerLinear{MatW{}, nullptr};
            l.cross_ln_w = l.cross_ln_b = nullptr;
        }
        l.ffn_up = linear(ld, b + "ffn_up", F, E);
        l.ffn_down = linear(ld, b + "ffn_down", E, F);
        l.ffn_ln_w = ld.vec(b + "ffn_ln.weight", E);
        l.ffn_ln_b = ld.vec(b + "ffn_ln.bias", E);
    }
    if (ld.has("qf.blk." + std::to_string(hp.n_layer) + ".attn_q.weight"))
        throw ModelError(fmt("the file has more Q-Former layers than tinygptv.qformer.block_count = %lld",
                             (long long)hp.n_layer));
    if (hp.n_proj_mid == 0) {
        proj0 = linear(ld, "mm.0", hp.n_embd_out, E);
        proj1 = QformerLinear{MatW{}, nullptr};
    } else {
        proj0 = linear(ld, "mm.0", hp.n_proj_mid, E);
        proj1 = linear(ld, "mm.1", hp.n_embd_out, hp.n_proj_mid);
    }
}

QformerScratch::QformerScratch(const QformerHparams& hp, int64_t n_img) {
    const size_t qe = (size_t)(hp.n_query * hp.n_embd);
    for (auto* v : {&h, &q, &k, &v, &att, &tmp}) v->resize(qe);
    ck.resize((size_t)(n_img * hp.n_embd));
    cv.resize((size_t)(n_img * hp.n_embd));
    ff.resize((size_t)(hp.n_query * hp.n_ff));
    mid.resize((size_t)(hp.n_query * hp.n_proj_mid));
}

void qformer_forward(const QformerHparams& hp, const QformerWeights& w, const float* img, int64_t n_img, float* out,
                     QformerScratch& s, Exec& ex) {
    const int64_t E = hp.n_embd, F = hp.n_ff, NQ = hp.n_query;
    const int H = (int)hp.n_head, D = (int)hp.head_dim;
    const float scale = 1.0f / std::sqrt((float)hp.head_dim);
    float *h = s.h.data(), *q = s.q.data(), *k = s.k.data(), *v = s.v.data(), *att = s.att.data(), *tmp = s.tmp.data();

    // Post-LN residual: h = LN(tmp + h), tmp already holding the sublayer's output.
    auto residual_ln = [&](const float* lw, const float* lb) {
        add_inplace(tmp, h, NQ * E);
        layernorm_rows(tmp, h, NQ, E, lw, lb, hp.ln_eps, ex);
    };

    layernorm_rows(w.query, h, NQ, E, w.emb_ln_w, w.emb_ln_b, hp.ln_eps, ex);
    for (const QformerLayer& L : w.layers) {
        matmul(L.attn_q.w, h, NQ, q, L.attn_q.b, ex);
        matmul(L.attn_k.w, h, NQ, k, L.attn_k.b, ex);
        matmul(L.attn_v.w, h, NQ, v, L.attn_v.b, ex);
        attention(q, NQ, E, k, v, E, false, NQ, false, 0, H, H, D, scale, att, E, ex);
        matmul(L.attn_out.w, att, NQ, tmp, L.attn_out.b, ex);
        residual_ln(L.attn_ln_w, L.attn_ln_b);

        if (L.cross) {
            matmul(L.cross_q.w, h, NQ, q, L.cross_q.b, ex);
            matmul(L.cross_k.w, img, n_img, s.ck.data(), L.cross_k.b, ex);
            matmul(L.cross_v.w, img, n_img, s.cv.data(), L.cross_v.b, ex);
            attention(q, NQ, E, s.ck.data(), s.cv.data(), E, false, n_img, false, 0, H, H, D, scale, att, E, ex);
            matmul(L.cross_out.w, att, NQ, tmp, L.cross_out.b, ex);
            residual_ln(L.cross_ln_w, L.cross_ln_b);
        }

        matmul(L.ffn_up.w, h, NQ, s.ff.data(), L.ffn_up.b, ex);
        gelu_erf(s.ff.data(), NQ * F);
        matmul(L.ffn_down.w, s.ff.data(), NQ, tmp, L.ffn_down.b, ex);
        residual_ln(L.ffn_ln_w, L.ffn_ln_b);
    }

    if (hp.n_proj_mid == 0) {
        matmul(w.proj0.w, h, NQ, out, w.proj0.b, ex);
    } else {
        matmul(w.proj0.w, h, NQ, s.mid.data(), w.proj0.b, ex);
        matmul(w.proj1.w, s.mid.data(), NQ, out, w.proj1.b, ex);
    }
}

}  // namespace tg
