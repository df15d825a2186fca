#include "model/phi.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "errors.h"
#include "gguf.h"
#include "kernels/ops.h"
#include "kernels/vecmath.h"
#include "model/loader.h"
#include "threadpool.h"

namespace tg {

static int64_t bounded(const GGUFFile& f, const std::string& key, int64_t lo, int64_t hi) {
    int64_t v = f.get_u32(key);
    if (v < lo || v > hi)
        throw ModelError(fmt("hyperparameter %s = %lld is outside the sane range [%lld, %lld]", key.c_str(),
                             (long long)v, (long long)lo, (long long)hi));
    return v;
}

static float positive_eps(const GGUFFile& f, const std::string& key, float def) {
    float e = f.get_f32_or(key, def);
    if (!(e > 0.f) || !std::isfinite(e) || e > 1.f)
        throw ModelError(fmt("hyperparameter %s = %g must be a small positive number", key.c_str(), (double)e));
    return e;
}

PhiHparams PhiHparams::read(const GGUFFile& f) {
    PhiHparams hp;
    hp.arch = f.get_str("general.architecture");
    if (hp.arch != "phi2" && hp.arch != "tinygptv") {
        std::string shown;  // file bytes: printable ASCII only, so the message is valid text
        for (size_t i = 0; i < hp.arch.size() && i < 64; i++)
            shown += (hp.arch[i] >= 32 && hp.arch[i] < 127) ? hp.arch[i] : '?';
        throw ModelError(fmt("unsupported general.architecture '%s' (expected 'phi2' or 'tinygptv')", shown.c_str()));
    }
    const std::string p = hp.arch + ".";
    hp.n_ctx_train = bounded(f, p + "context_length", 1, 1 << 20);
    hp.n_embd = bounded(f, p + "embedding_length", 1, 1 << 16);
    hp.n_ff = bounded(f, p + "feed_forward_length", 1, 1 << 18);
    hp.n_layer = bounded(f, p + "block_count", 1, 1024);
    hp.n_head = bounded(f, p + "attention.head_count", 1, 1024);
    hp.n_head_kv = f.has(p + "attention.head_count_kv") ? bounded(f, p + "attention.head_count_kv", 1, 1024) : hp.n_head;
    if (hp.n_embd % hp.n_head != 0)
        throw ModelError(fmt("attention.head_count %lld does not divide embedding_length %lld", (long long)hp.n_head,
                             (long long)hp.n_embd));
    if (hp.n_head % hp.n_head_kv != 0)
        throw ModelError(fmt("attention.head_count_kv %lld does not divide head_count %lld", (long long)hp.n_head_kv,
                             (long long)hp.n_head));
    hp.head_dim = hp.n_embd / hp.n_head;
    hp.n_rot = f.has(p + "rope.dimension_count") ? bounded(f, p + "rope.dimension_count", 0, 1 << 16) : hp.head_dim;
    if (hp.n_rot > hp.head_dim || hp.n_rot % 2 != 0)
        throw ModelError(fmt("rope.dimension_count %lld must be even and at most the head size %lld", (long long)hp.n_rot,
                             (long long)hp.head_dim));
    hp.ln_eps = positive_eps(f, p + "attention.layer_norm_epsilon", 1e-5f);
    hp.rms_eps = positive_eps(f, p + "attention.layer_norm_rms_epsilon", 1e-6f);
    hp.rope_base = f.get_f32_or(p + "rope.freq_base", 10000.f);
    if (!(hp.rope_base > 1.f) || !std::isfinite(hp.rope_base))
        throw ModelError(fmt("rope.freq_base %g must be a finite number above 1", (double)hp.rope_base));
    const GGUFTensor* emb = f.find_tensor("token_embd.weight");
    if (!emb) throw ModelError("required tensor 'token_embd.weight' is missing");
    if (emb->n_dims != 2 || emb->ne[0] != hp.n_embd)
        throw ModelError(fmt("token_embd.weight has shape %s, expected [%lld, n_vocab]", emb->shape_str().c_str(),
                             (long long)hp.n_embd));
    hp.n_vocab = emb->ne[1];
    // The vocabulary (llama.cpp derives n_vocab from the token list) must match the embedding rows.
    if (const GGUFValue* toks = f.find("tokenizer.ggml.tokens")) {
        if (toks->type != GGUFValueType::ARRAY || toks->elem_type != GGUFValueType::STRING)
            throw GGUFError("metadata 'tokenizer.ggml.tokens' is not an array of strings");
        if ((int64_t)toks->n != hp.n_vocab)
            throw ModelError(fmt("tokenizer.ggml.tokens has %llu entries but token_embd.weight has %lld rows",
                                 (unsigned long long)toks->n, (long long)hp.n_vocab));
    }
    if (f.has(p + "vocab_size") && (int64_t)f.get_u32(p + "vocab_size") != hp.n_vocab)
        throw ModelError(fmt("%svocab_size = %u but token_embd.weight has %lld rows", p.c_str(), f.get_u32(p + "vocab_size"),
                             (long long)hp.n_vocab));
    hp.qk_norm = f.find_tensor("blk.0.attn_q_norm.weight") != nullptr;
    hp.post_norm = f.find_tensor("blk.0.attn_post_norm.weight") != nullptr;
    return hp;
}

void PhiWeights::load(WeightLoader& ld, const PhiHparams& hp) {
    const int64_t E = hp.n_embd, KV = hp.kv_dim(), F = hp.n_ff, D = hp.head_dim;
    tok_embd = ld.mat("token_embd.weight", hp.n_vocab, E, /*prepare=*/false);  // read row by row
    layers.resize((size_t)hp.n_layer);
    for (int64_t i = 0; i < hp.n_layer; i++) {
        PhiLayer& l = layers[(size_t)i];
        const std::string b = "blk." + std::to_string(i) + ".";
        l.attn_norm_w = ld.vec(b + "attn_norm.weight", E);
        l.attn_norm_b = ld.vec(b + "attn_norm.bias", E);
        l.fused = ld.has(b + "attn_qkv.weight");
        if (l.fused) {
            l.qkv = ld.mat(b + "attn_qkv.weight", E + 2 * KV, E);
            l.qkv_b = ld.vec_or_null(b + "attn_qkv.bias", E + 2 * KV);
            l.bq = l.bk = l.bv = nullptr;
        } else {
            l.wq = ld.mat(b + "attn_q.weight", E, E);
            l.wk = ld.mat(b + "attn_k.weight", KV, E);
            l.wv = ld.mat(b + "attn_v.weight", KV, E);
            l.bq = ld.vec_or_null(b + "attn_q.bias", E);
            l.bk = ld.vec_or_null(b + "attn_k.bias", KV);
            l.bv = ld.vec_or_null(b + "attn_v.bias", KV);
            l.qkv_b = nullptr;
        }
        l.out = ld.mat(b + "attn_output.weight", E, E);
        l.out_b = ld.vec_or_null(b + "attn_output.bias", E);
        l.up = ld.mat(b + "ffn_up.weight", F, E);
        l.up_b = ld.vec_or_null(b + "ffn_up.bias", F);
        l.down = ld.mat(b + "ffn_down.weight", E, F);
        l.down_b = ld.vec_or_null(b + "ffn_down.bias", E);
        l.q_norm_w = l.q_norm_b = l.k_norm_w = l.k_norm_b = l.post_norm_w = nullptr;
        if (hp.qk_norm) {
            l.q_norm_w = ld.vec(b + "attn_q_norm.weight", D);
            l.q_norm_b = ld.vec_or_null(b + "attn_q_norm.bias", D);
            l.k_norm_w = ld.vec(b + "attn_k_norm.weight", D);
            l.k_norm_b = ld.vec_or_null(b + "attn_k_norm.bias", D);
        }
        if (hp.post_norm) l.post_norm_w = ld.vec(b + "attn_post_norm.weight", E);
    }
    out_norm_w = ld.vec("output_norm.weight", E);
    out_norm_b = ld.vec("output_norm.bias", E);
    output = ld.mat("output.weight", hp.n_vocab, E);
    output_b = ld.vec_or_null("output.bias", hp.n_vocab);
    // A plain Phi-2 file holds nothing else (a tinygptv file also holds the vision side, loaded elsewhere).
    if (hp.arch == "phi2") {
        std::vector<std::string> extra = ld.unused();
        if (!extra.empty()) {
            std::string names;
            for (size_t i = 0; i < extra.size() && i < 5; i++) names += (i ? ", '" : "'") + extra[i] + "'";
            if (extra.size() > 5) names += ", ...";
            throw ModelError(fmt("%zu unexpected tensor(s) in a phi2 file with %lld layers: %s", extra.size(),
                                 (long long)hp.n_layer, names.c_str()));
        }
    }
}

PhiState::PhiState(const PhiHparams& hp, int64_t n_ctx, bool kv_f16) : n_ctx_(n_ctx), kv_f16_(kv_f16) {
    if (n_ctx < 1 || n_ctx > (1 << 20)) throw ModelError(fmt("n_ctx %lld must be in [1, 1048576]", (long long)n_ctx));
    const size_t esz = kv_f16 ? 2 : 4;
    const size_t bytes = (size_t)hp.n_layer * (size_t)n_ctx * (size_t)hp.kv_dim() * esz;
    k_.assign(bytes, 0);
    v_.assign(bytes, 0);
    const int64_t half = hp.n_rot / 2;
    rope_cos_.resize((size_t)(n_ctx * half));
    rope_sin_.resize((size_t)(n_ctx * half));
    for (int64_t i = 0; i < half; i++) {
        // inv_freq computed in float32 as the reference implementation does.
        const float inv_freq = 1.0f / std::pow(hp.rope_base, (float)(2 * i) / (float)hp.n_rot);
        for (int64_t p = 0; p < n_ctx; p++) {
            const float ang = (float)p * inv_freq;
            rope_cos_[(size_t)(p * half + i)] = std::cos(ang);
            rope_sin_[(size_t)(p * half + i)] = std::sin(ang);
        }
    }
}

void PhiState::rewind(int64_t n_past) {
    if (n_past < 0 || n_past > n_past_)
        throw ModelError(fmt("cannot rewind to position %lld (the cache holds %lld)", (long long)n_past, (long long)n_past_));
    n_past_ = n_past;
}

static void grow(std::vector<float>& v, size_t n) {
    if (v.size() < n) v.resize(n);
}

void PhiState::forward(const PhiHparams& hp, const PhiWeights& w, const float* x, int64_t n, bool all_logits,
                       float* logits, ThreadPool& pool) {
    if (n < 1) throw ModelError("forward needs at least one input row");
    if (n_past_ + n > n_ctx_)
        throw ContextOverflow(fmt("%lld positions in the cache plus %lld new ones exceed n_ctx = %lld",
                                  (long long)n_past_, (long long)n, (long long)n_ctx_));
    const int64_t CHUNK = 256;  // bounds the scratch memory of a long prefill
    for (int64_t s = 0; s < n; s += CHUNK) {
        const int64_t m = std::min(CHUNK, n - s);
        const bool last = s + m == n;
        float* lg = nullptr;
        if (logits && all_logits) lg = logits + s * hp.n_vocab;
        else if (logits && last) lg = logits;
        forward_chunk(hp, w, x + s * hp.n_embd, m, all_logits, lg, pool);
    }
}

void PhiState::forward_chunk(const PhiHparams& hp, const PhiWeights& w, const float* xin, int64_t n, bool all_logits,
                             float* logits, ThreadPool& pool) {
    const int64_t E = hp.n_embd, KV = hp.kv_dim(), F = hp.n_ff, D = hp.head_dim, H = hp.n_head, HKV = hp.n_head_kv;
    const int64_t QKV = E + 2 * KV, half = hp.n_rot / 2;
    const size_t esz = kv_f16_ ? 2 : 4;
    grow(x_, n * E);
    grow(h_, n * E);
    grow(qkv_, n * QKV);
    grow(att_, n * E);
    grow(a_, n * E);
    grow(ff_, n * F);
    std::memcpy(x_.data(), xin, sizeof(float) * n * E);
    const float scale = 1.0f / std::sqrt((float)D);

    // Rows whose output is needed after the last layer: those that get logits (none, the last, or all).
    // The last layer computes the keys and values of every row (the cache needs them) but the rest only
    // for those rows, as llama.cpp does: a prompt of n rows saves most of one layer's work for n - 1.
    const int64_t r_out = !logits ? n : all_logits ? 0 : n - 1;
    for (int64_t il = 0; il < hp.n_layer; il++) {
        const PhiLayer& L = w.layers[(size_t)il];
        const int64_t r0 = il == hp.n_layer - 1 ? r_out : 0;  // this layer's output rows: [r0, n)
        layernorm_rows(x_.data(), h_.data(), n, E, L.attn_norm_w, L.attn_norm_b, hp.ln_eps, pool);
        if (L.fused) {
            matmul(L.qkv, h_.data(), n, qkv_.data(), L.qkv_b, pool);
        } else {  // separate projections: write into the same [q | k | v] row layout
            grow(tmp_, n * E);
            matmul(L.wq, h_.data(), n, tmp_.data(), L.bq, pool);
            for (int64_t t = 0; t < n; t++) std::memcpy(&qkv_[t * QKV], &tmp_[t * E], sizeof(float) * E);
            matmul(L.wk, h_.data(), n, tmp_.data(), L.bk, pool);
            for (int64_t t = 0; t < n; t++) std::memcpy(&qkv_[t * QKV + E], &tmp_[t * KV], sizeof(float) * KV);
            matmul(L.wv, h_.data(), n, tmp_.data(), L.bv, pool);
            for (int64_t t = 0; t < n; t++) std::memcpy(&qkv_[t * QKV + E + KV], &tmp_[t * KV], sizeof(float) * KV);
        }
        // q/k norms and rotary embedding per (row, head); then store k, v into the cache.
        uint8_t* kc = k_.data() + (size_t)il * n_ctx_ * KV * esz;
        uint8_t* vc = v_.data() + (size_t)il * n_ctx_ * KV * esz;
        const VecMath& M = vecmath();
        pool.parallel_for(n, 1, [&](int64_t t0, int64_t t1, int) {
            for (int64_t t = t0; t < t1; t++) {
                const int64_t pos = n_past_ + t;
                float* row = &qkv_[t * QKV];
                const float* cs = &rope_cos_[pos * half];
                const float* sn = &rope_sin_[pos * half];
                for (int64_t h = 0; h < H && t >= r0; h++) {  // queries of output rows only
                    float* q = row + h * D;
                    if (L.q_norm_w) layernorm(q, q, D, L.q_norm_w, L.q_norm_b, hp.ln_eps);
                    if (half) rope_neox(q, (int)hp.n_rot, cs, sn);
                }
                for (int64_t h = 0; h < HKV; h++) {
                    float* k = row + E + h * D;
                    if (L.k_norm_w) layernorm(k, k, D, L.k_norm_w, L.k_norm_b, hp.ln_eps);
                    if (half) rope_neox(k, (int)hp.n_rot, cs, sn);
                }
                const float* k = row + E;
                const float* v = row + E + KV;
                if (kv_f16_) {
                    M.to_f16(k, (uint16_t*)(kc + (size_t)pos * KV * esz), KV);
                    M.to_f16(v, (uint16_t*)(vc + (size_t)pos * KV * esz), KV);
                } else {
                    std::memcpy(kc + (size_t)pos * KV * esz, k, sizeof(float) * KV);
                    std::memcpy(vc + (size_t)pos * KV * esz, v, sizeof(float) * KV);
                }
            }
        });
        const int64_t m = n - r0;
        if (m == 0) continue;
        attention(&qkv_[r0 * QKV], m, QKV, kc, vc, KV, kv_f16_, n_past_ + n, true, n_past_ + r0, (int)H, (int)HKV,
                  (int)D, scale, &att_[r0 * E], E, pool);
        matmul(L.out, &att_[r0 * E], m, &a_[r0 * E], L.out_b, pool);
        if (L.post_norm_w) {
            pool.parallel_for(m, 1, [&](int64_t t0, int64_t t1, int) {
                for (int64_t t = r0 + t0; t < r0 + t1; t++) rmsnorm(&a_[t * E], &a_[t * E], E, L.post_norm_w, hp.rms_eps);
            });
        }
        matmul(L.up, &h_[r0 * E], m, &ff_[r0 * F], L.up_b, pool);
        pool.parallel_for(m, 1, [&](int64_t t0, int64_t t1, int) { gelu_tanh(&ff_[(r0 + t0) * F], (t1 - t0) * F); });
        matmul(L.down, &ff_[r0 * F], m, &h_[r0 * E], L.down_b, pool);  // h_ is free again: reuse for the MLP output
        for (int64_t i = r0 * E; i < n * E; i++) x_[i] = (a_[i] + h_[i]) + x_[i];
    }
    n_past_ += n;

    if (!logits) return;
    const int64_t first = all_logits ? 0 : n - 1, rows = n - first;
    layernorm_rows(&x_[first * E], h_.data(), rows, E, w.out_norm_w, w.out_norm_b, hp.ln_eps, pool);
    matmul(w.output, h_.data(), rows, logits, w.output_b, pool);
}

}  // namespace tg
