#include "model/vision.h"

#include <algorithm>
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

VisionHparams VisionHparams::read(const GGUFFile& f) {
    const std::string p = "tinygptv.vision.";
    VisionHparams hp;
    hp.image_size = meta_u32_in(f, p + "image_size", 1, 4096);
    hp.patch_size = meta_u32_in(f, p + "patch_size", 1, 256);
    hp.n_embd = meta_u32_in(f, p + "embedding_length", 1, 1 << 14);
    hp.n_layer = meta_u32_in(f, p + "block_count", 1, 256);
    hp.n_head = meta_u32_in(f, p + "attention.head_count", 1, 1024);
    hp.n_ff = meta_u32_in(f, p + "feed_forward_length", 1, 1 << 16);
    hp.ln_eps = meta_eps(f, p + "attention.layer_norm_epsilon");
    hp.post_eps = meta_eps(f, p + "post_norm_epsilon");
    meta_divides("tinygptv.vision.patch_size", hp.patch_size, "tinygptv.vision.image_size", hp.image_size);
    meta_divides("tinygptv.vision.attention.head_count", hp.n_head, "tinygptv.vision.embedding_length", hp.n_embd);
    hp.head_dim = hp.n_embd / hp.n_head;
    if (hp.n_tokens() > (1 << 16))
        throw ModelError(fmt("tinygptv.vision.image_size %lld / patch_size %lld gives %lld tokens (at most 65536)",
                             (long long)hp.image_size, (long long)hp.patch_size, (long long)hp.n_tokens()));

    // The largest scratch buffer (tokens x max(n_ff, 3 n_embd) floats) must stay reasonable, whatever the file claims.
    const int64_t widest = std::max(hp.n_ff, 3 * hp.n_embd);
    if (hp.n_tokens() * widest > (int64_t(1) << 28))
        throw ModelError(fmt("vision hyperparameters need a %lld x %lld scratch buffer (more than 2^28 floats): "
                             "image_size %lld, patch_size %lld, feed_forward_length %lld, embedding_length %lld",
                             (long long)hp.n_tokens(), (long long)widest, (long long)hp.image_size,
                             (long long)hp.patch_size, (long long)hp.n_ff, (long long)hp.n_embd));

    for (int k = 0; k < 2; k++) {
        const std::string key = k == 0 ? "tinygptv.image.mean" : "tinygptv.image.std";
        const std::vector<float> v = f.get_f32_arr(key);
        if (v.size() != 3) throw ModelError(fmt("metadata %s has %zu values, expected 3", key.c_str(), v.size()));
        for (int c = 0; c < 3; c++) {
            if (!std::isfinite(v[c]) || (k == 1 && !(v[c] > 0.f)))
                throw ModelError(fmt("metadata %s[%d] = %g is not %s", key.c_str(), c, (double)v[c],
                                     k == 0 ? "finite" : "a positive number"));
            (k == 0 ? hp.mean : hp.std)[c] = v[c];
        }
    }

    // The position table fixes the token count: it must match the image size (the converter interpolates it).
    const GGUFTensor* pos = f.find_tensor("v.pos_embd");
    if (!pos) throw ModelError("required tensor 'v.pos_embd' is missing");
    const int64_t pos_rows = pos->n_dims >= 2 ? pos->ne[1] : 1;
    if (pos->ne[0] != hp.n_embd || pos_rows != hp.n_tokens() || pos->nelements() != hp.n_tokens() * hp.n_embd)
        throw ModelError(fmt("tensor 'v.pos_embd' has shape %s, expected [%lld, %lld] (1 + (%lld/%lld)^2 positions)",
                             pos->shape_str().c_str(), (long long)hp.n_embd, (long long)hp.n_tokens(),
                             (long long)hp.image_size, (long long)hp.patch_size));
    return hp;
}

void VisionWeights::load(WeightLoader& ld, const VisionHparams& hp) {
    const int64_t E = hp.n_embd, F = hp.n_ff;
    patch = ld.mat("v.patch_embd.weight", E, hp.patch_dim());
    patch_b = ld.vec("v.patch_embd.bias", E);
    cls = ld.vec("v.cls", E);
    pos = ld.vec("v.pos_embd", hp.n_tokens() * E);
    layers.resize((size_t)hp.n_layer);
    for (int64_t i = 0; i < hp.n_layer; i++) {
        VisionLayer& l = layers[(size_t)i];
        const std::string b = "v.blk." + std::to_string(i) + ".";
        l.ln1_w = ld.vec(b + "ln1.weight", E);
        l.ln1_b = ld.vec(b + "ln1.bias", E);
        l.qkv = ld.mat(b + "attn_qkv.weight", 3 * E, E);
        l.qkv_b = ld.vec(b + "attn_qkv.bias", 3 * E);
        l.out = ld.mat(b + "attn_out.weight", E, E);
        l.out_b = ld.vec(b + "attn_out.bias", E);
        l.ln2_w = ld.vec(b + "ln2.weight", E);
        l.ln2_b = ld.vec(b + "ln2.bias", E);
        l.up = ld.mat(b + "ffn_up.weight", F, E);
        l.up_b = ld.vec(b + "ffn_up.bias", F);
        l.down = ld.mat(b + "ffn_down.weight", E, F);
        l.down_b = ld.vec(b + "ffn_down.bias", E);
    }
    if (ld.has("v.blk." + std::to_string(hp.n_layer) + ".ln1.weight"))
        throw ModelError(fmt("the file has more vision blocks than tinygptv.vision.block_count = %lld",
                             (long long)hp.n_layer));
    post_w = ld.vec("v.post_ln.weight", E);
    post_b = ld.vec("v.post_ln.bias", E);
}

VisionScratch::VisionScratch(const VisionHparams& hp)
    : patches((size_t)(hp.n_patches() * hp.patch_dim())),
      x((size_t)(hp.n_tokens() * hp.n_embd)),
      h((size_t)(hp.n_tokens() * hp.n_embd)),
      qkv((size_t)(hp.n_tokens() * 3 * hp.n_embd)),
      att((size_t)(hp.n_tokens() * hp.n_embd)),
      ff((size_t)(hp.n_tokens() * hp.n_ff)) {}

// The residual step and the layer norm after it, one row at a time (one pass over x, one parallel
// dispatch): x[r] += h[r], then dst[r] = layernorm(x[r]). dst may be h.
static void add_layernorm_rows(float* x, const float* h, float* dst, int64_t rows, int64_t n, const float* w,
                               const float* b, float eps, Exec& ex) {
    ex.parallel_for(rows, 1, [&](int64_t r0, int64_t r1, int) {
        for (int64_t r = r0; r < r1; r++) {
            add_inplace(x + r * n, h + r * n, n);
            layernorm(x + r * n, dst + r * n, n, w, b, eps);
        }
    });
}

void vision_forward(const VisionHparams& hp, const VisionWeights& w, const float* pixels, float* out,
                    VisionScratch& s, Exec& ex) {
    const int64_t E = hp.n_embd, F = hp.n_ff, T = hp.n_tokens(), P = hp.patch_size, G = hp.grid(), S = hp.image_size;
    const int64_t K = hp.patch_dim();

    // Patch embedding as one matrix product: gather each patch in (c, ky, kx) order (the conv kernel's order).
    ex.parallel_for(hp.n_patches(), 1, [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; i++) {
            const int64_t gy = i / G, gx = i % G;
            float* dst = &s.patches[i * K];
            for (int64_t c = 0; c < 3; c++)
                for (int64_t ky = 0; ky < P; ky++)
                    std::memcpy(dst + (c * P + ky) * P, pixels + (c * S + gy * P + ky) * S + gx * P, sizeof(float) * P);
        }
    });
    float* x = s.x.data();
    std::memcpy(x, w.cls, sizeof(float) * E);
    matmul(w.patch, s.patches.data(), hp.n_patches(), x + E, w.patch_b, ex);

    const float scale = 1.0f / std::sqrt((float)hp.head_dim);
    float *h = s.h.data(), *qkv = s.qkv.data(), *att = s.att.data(), *ff = s.ff.data();
    const size_t nl = w.layers.size();
    // x += position embeddings; h = the first block's ln1(x)
    if (nl) add_layernorm_rows(x, w.pos, h, T, E, w.layers[0].ln1_w, w.layers[0].ln1_b, hp.ln_eps, ex);
    else add_layernorm_rows(x, w.pos, out, T, E, w.post_w, w.post_b, hp.post_eps, ex);
    for (size_t il = 0; il < nl; il++) {
        const VisionLayer& L = w.layers[il];
        matmul(L.qkv, h, T, qkv, L.qkv_b, ex);
        // With 4-6 bit weights, q, k and v carry errors far above bf16 rounding: the attention multiplies
        // in bf16 (twice the products per instruction with AVX512_BF16). Float and Q8_0 weights keep
        // float32 attention: their own error is small enough that bf16 rounding would add about as much
        // again, while next to 4-6 bit weights it hardly moves the image embeddings.
        const GgmlType t = L.qkv.type;
        const bool bf16 = t != GgmlType::F32 && t != GgmlType::F16 && t != GgmlType::BF16 && t != GgmlType::Q8_0;
        attention(qkv, T, 3 * E, qkv + E, qkv + 2 * E, 3 * E, false, T, false, 0, (int)hp.n_head, (int)hp.n_head,
                  (int)hp.head_dim, scale, att, E, ex, bf16);
        matmul(L.out, att, T, h, L.out_b, ex);
        add_layernorm_rows(x, h, h, T, E, L.ln2_w, L.ln2_b, hp.ln_eps, ex);

        matmul(L.up, h, T, ff, L.up_b, ex);
        ex.parallel_for(T, 1, [&](int64_t r0, int64_t r1, int) { gelu_erf(ff + r0 * F, (r1 - r0) * F); });
        matmul(L.down, ff, T, h, L.down_b, ex);
        if (il + 1 < nl) add_layernorm_rows(x, h, h, T, E, w.layers[il + 1].ln1_w, w.layers[il + 1].ln1_b, hp.ln_eps, ex);
        else add_layernorm_rows(x, h, out, T, E, w.post_w, w.post_b, hp.post_eps, ex);  // post norm (ln_vision)
    }
}

}  // namespace tg
