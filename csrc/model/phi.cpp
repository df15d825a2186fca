#include "model/phi.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "errors.h"
#include "gguf.h"
#include "kernels/ops.h"
#include "kernels/vecmath.h"
#include "model/kv_cache.h"
#include "model/loader.h"
#include "model/meta.h"
#include "exec.h"

namespace tg {

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
    hp.n_ctx_train = meta_u32_in(f, p + "context_length", 1, 1 << 20);
    hp.n_embd = meta_u32_in(f, p + "embedding_length", 1, 1 << 16);
    hp.n_ff = meta_u32_in(f, p + "feed_forward_length", 1, 1 << 18);
    hp.n_layer = meta_u32_in(f, p + "block_count", 1, 1024);
    hp.n_head = meta_u32_in(f, p + "attention.head_count", 1, 1024);
    hp.n_head_kv = f.has(p + "attention.head_count_kv") ? meta_u32_in(f, p + "attention.head_count_kv", 1, 1024) : hp.n_head;
    if (hp.n_embd % hp.n_head != 0)
        throw ModelError(fmt("attention.head_count %lld does not divide embedding_length %lld", (long long)hp.n_head,
                             (long long)hp.n_embd));
    if (hp.n_head % hp.n_head_kv != 0)
        throw ModelError(fmt("attention.head_count_kv %lld does not divide head_count %lld", (long long)hp.n_head_kv,
                             (long long)hp.n_head));
    hp.head_dim = hp.n_embd / hp.n_head;
    hp.n_rot = f.has(p + "rope.dimension_count") ? meta_u32_in(f, p + "rope.dimension_count", 0, 1 << 16) : hp.head_dim;
    if (hp.n_rot > hp.head_dim || hp.n_rot % 2 != 0)
        throw ModelError(fmt("rope.dimension_count %lld must be even and at most the head size %lld", (long long)hp.n_rot,
                             (long long)hp.head_dim));
    hp.ln_eps = meta_eps_or(f, p + "attention.layer_norm_epsilon", 1e-5f);
    hp.rms_eps = meta_eps_or(f, p + "attention.layer_norm_rms_epsilon", 1e-6f);
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

PhiScratch::PhiScratch(const PhiHparams& hp, int64_t n_ctx) {
    const int64_t half = hp.n_rot / 2;
    rope_cos.resize((size_t)(n_ctx * half));
    rope_sin.resize((size_t)(n_ctx * half));
    for (int64_t i = 0; i < half; i++) {
        // inv_freq computed in float32 as the reference implementation does.
        const float inv_freq = 1.0f / std::pow(hp.rope_base, (float)(2 * i) / (float)hp.n_rot);
        for (int64_t p = 0; p < n_ctx; p++) {
            const float ang = (float)p * inv_freq;
            rope_cos[(size_t)(p * half + i)] = std::cos(ang);
            rope_sin[(size_t)(p * half + i)] = std::sin(ang);
        }
    }
}

static void grow(std::vector<float>& v, size_t n) {
    if (v.size() < n) v.resize(n);
}

// Moves rows keep[0..m) of a [rows][width] buffer to rows 0..m-1 (keep ascending, keep[i] >= i: a row
// is read before anything is written over it).
static void compact_rows(float* buf, int64_t width, const int64_t* keep, int64_t m) {
    for (int64_t i = 0; i < m; i++)
        if (keep[i] != i) std::memcpy(buf + i * width, buf + keep[i] * width, sizeof(float) * (size_t)width);
}

void phi_decode(const PhiHparams& hp, const PhiWeights& w, const float* xin, const PhiRow* rows, int64_t n, KvCache& kv,
                PhiScratch& s, float* logits, Exec& ex, int64_t layer0) {
    const int64_t E = hp.n_embd, KV = hp.kv_dim(), F = hp.n_ff, D = hp.head_dim, H = hp.n_head, HKV = hp.n_head_kv;
    const int64_t QKV = E + 2 * KV, half = hp.n_rot / 2;
    const bool f16 = kv.f16();
    const size_t esz = kv.elem_size();
    grow(s.x, n * E);
    grow(s.h, n * E);
    grow(s.qkv, n * QKV);
    grow(s.att, n * E);
    grow(s.a, n * E);
    grow(s.ff, n * F);
    grow(s.attn, (size_t)ex.size() * kv.n_ctx());
    std::memcpy(s.x.data(), xin, sizeof(float) * n * E);
    const float scale = 1.0f / std::sqrt((float)D);

    // Rows whose output is needed after the last layer: in each sequence's run of rows, those from the
    // first that wants logits to the run's end. The last layer computes keys and values of every row
    // (the cache needs them) but the rest only for those rows, as llama.cpp does: a prompt of n rows
    // saves most of one layer's work for n - 1 of them.
    std::vector<int64_t>& out_rows = s.out_rows;
    out_rows.clear();
    for (int64_t r0 = 0; r0 < n;) {
        int64_t r1 = r0 + 1;
        while (r1 < n && rows[r1].seq == rows[r0].seq) r1++;
        int64_t f = r0;
        while (f < r1 && !rows[f].logits) f++;
        for (int64_t r = f; r < r1; r++) out_rows.push_back(r);
        r0 = r1;
    }
    const int64_t n_out = (int64_t)out_rows.size();

    if (layer0 < 0 || layer0 >= hp.n_layer)
        throw ModelError(fmt("phi_decode from layer %lld: the model has layers [0, %lld)", (long long)layer0,
                             (long long)hp.n_layer));
    for (int64_t il = layer0; il < hp.n_layer; il++) {
        const PhiLayer& L = w.layers[(size_t)il];
        const bool last = il == hp.n_layer - 1;
        layernorm_rows(s.x.data(), s.h.data(), n, E, L.attn_norm_w, L.attn_norm_b, hp.ln_eps, ex);
        if (L.fused) {
            matmul(L.qkv, s.h.data(), n, s.qkv.data(), L.qkv_b, ex);
        } else {  // separate projections: write into the same [q | k | v] row layout
            grow(s.tmp, n * E);
            float* q = s.qkv.data();
            const float* t = s.tmp.data();
            matmul(L.wq, s.h.data(), n, s.tmp.data(), L.bq, ex);
            for (int64_t r = 0; r < n; r++) std::memcpy(q + r * QKV, t + r * E, sizeof(float) * E);
            matmul(L.wk, s.h.data(), n, s.tmp.data(), L.bk, ex);
            for (int64_t r = 0; r < n; r++) std::memcpy(q + r * QKV + E, t + r * KV, sizeof(float) * KV);
            matmul(L.wv, s.h.data(), n, s.tmp.data(), L.bv, ex);
            for (int64_t r = 0; r < n; r++) std::memcpy(q + r * QKV + E + KV, t + r * KV, sizeof(float) * KV);
        }
        // q/k norms and rotary embedding per (row, head); then k, v into the row's own slot. The rows'
        // slots are reserved here, before the parallel job.
        for (int64_t r = 0; r < n; r++) (void)kv.k(rows[r].seq, il);
        const VecMath& M = vecmath();
        const int64_t* outs = out_rows.data();
        ex.parallel_for(n, 1, [&](int64_t t0, int64_t t1, int) {
            for (int64_t t = t0; t < t1; t++) {
                const int64_t pos = rows[t].pos;
                float* row = &s.qkv[t * QKV];
                const float* cs = &s.rope_cos[pos * half];
                const float* sn = &s.rope_sin[pos * half];
                // queries: of every row, but in the last layer only of its output rows
                const bool want_q = !last || std::binary_search(outs, outs + n_out, t);
                for (int64_t h = 0; h < H && want_q; h++) {
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
                uint8_t* kd = kv.k(rows[t].seq, il) + (size_t)pos * KV * esz;
                uint8_t* vd = kv.v(rows[t].seq, il) + (size_t)pos * KV * esz;
                if (f16) {
                    M.to_f16(k, (uint16_t*)kd, KV);
                    M.to_f16(v, (uint16_t*)vd, KV);
                } else {
                    std::memcpy(kd, k, sizeof(float) * KV);
                    std::memcpy(vd, v, sizeof(float) * KV);
                }
            }
        });
        if (last && n_out == 0) break;

        // Attention per sequence against its own slot: a run of several rows in one blocked call, the
        // single rows of all sequences (decode steps) in one dispatch.
        s.decode_rows.clear();
        for (int64_t i = 0; i < (last ? n_out : n);) {
            const int64_t r0 = last ? outs[i] : i;
            int64_t j = i + 1;
            while (j < (last ? n_out : n) && rows[last ? outs[j] : j].seq == rows[r0].seq) j++;
            const int64_t m = j - i;  // the run's rows (consecutive in the batch and in position)
            const int32_t seq = rows[r0].seq;
            const int64_t p0 = rows[r0].pos;
            if (m == 1)
                s.decode_rows.push_back(AttnRow{&s.qkv[r0 * QKV], kv.k(seq, il), kv.v(seq, il), p0 + 1, &s.att[r0 * E]});
            else
                attention(&s.qkv[r0 * QKV], m, QKV, kv.k(seq, il), kv.v(seq, il), KV, f16, p0 + m, true, p0, (int)H,
                          (int)HKV, (int)D, scale, &s.att[r0 * E], E, ex);
            i = j;
        }
        attention_decode(s.decode_rows.data(), (int64_t)s.decode_rows.size(), KV, f16, (int)H, (int)HKV, (int)D, scale,
                         s.attn.data(), kv.n_ctx(), ex);

        // The rest of the layer, row by row: in the last layer over the output rows only, moved to the
        // front of the buffers.
        int64_t m = n;
        if (last && n_out < n) {
            compact_rows(s.att.data(), E, outs, n_out);
            compact_rows(s.h.data(), E, outs, n_out);
            compact_rows(s.x.data(), E, outs, n_out);
            m = n_out;
        }
        matmul(L.out, s.att.data(), m, s.a.data(), L.out_b, ex);
        if (L.post_norm_w) {
            ex.parallel_for(m, 1, [&](int64_t t0, int64_t t1, int) {
                for (int64_t t = t0; t < t1; t++) rmsnorm(&s.a[t * E], &s.a[t * E], E, L.post_norm_w, hp.rms_eps);
            });
        }
        matmul(L.up, s.h.data(), m, s.ff.data(), L.up_b, ex);
        ex.parallel_for(m, 1, [&](int64_t t0, int64_t t1, int) { gelu_tanh(&s.ff[t0 * F], (t1 - t0) * F); });
        matmul(L.down, s.ff.data(), m, s.h.data(), L.down_b, ex);  // h is free again: reuse for the MLP output
        for (int64_t i = 0; i < m * E; i++) s.x[i] = (s.a[i] + s.h[i]) + s.x[i];
    }
    if (n_out == 0 || !logits) return;

    // The output rows that want logits (rows i of x stand for out_rows[i]).
    int64_t n_logits = 0;
    for (int64_t i = 0; i < n_out; i++)
        if (rows[out_rows[(size_t)i]].logits) out_rows[(size_t)n_logits++] = i;
    compact_rows(s.x.data(), E, out_rows.data(), n_logits);
    layernorm_rows(s.x.data(), s.h.data(), n_logits, E, w.out_norm_w, w.out_norm_b, hp.ln_eps, ex);
    matmul(w.output, s.h.data(), n_logits, logits, w.output_b, ex);
}

}  // namespace tg
