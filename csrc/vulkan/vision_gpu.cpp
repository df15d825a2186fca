#include "vulkan/vision_gpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "errors.h"
#include "exec.h"
#include "model/tinygptv.h"
#include "vulkan/ops.h"

namespace tg {

std::unique_ptr<GpuImageEncoder> make_gpu_image_encoder(const Model& m, Exec& ex) {
    if (!ex.gpu()) throw VulkanError("the GPU image path needs an execution context with a Vulkan device");
    if (!m.has_vision())
        throw ModelError(fmt("this model (general.architecture '%s') has no vision encoder", m.hparams().arch.c_str()));
    return std::make_unique<vk::ImageGpu>(*ex.gpu(), m.vision_hparams(), m.vision(), m.qformer_hparams(), m.qformer(),
                                          vk::max_buffer_from_env());
}

namespace vk {

ImageGpu::ImageGpu(Device& dev, const VisionHparams& vhp, const VisionWeights& vw, const QformerHparams& qhp,
                   const QformerWeights& qw, uint64_t max_buffer)
    : dev_(dev), vhp_(vhp), qhp_(qhp), max_buffer_(part_limit(dev, max_buffer)) {
    const uint32_t max_d = std::min<uint32_t>(256, 4 * dev.workgroup());
    for (int64_t d : {vhp.head_dim, qhp.head_dim})
        if (d > max_d)
            throw VulkanError(fmt("the GPU attention takes heads of at most %u values; the image path has heads of %lld "
                                  "(vision %lld, Q-Former %lld)", max_d, (long long)d, (long long)vhp.head_dim,
                                  (long long)qhp.head_dim));
    const int64_t E = vhp.n_embd, F = vhp.n_ff, T = vhp.n_tokens();
    auto mat = [&](const MatW& m, const std::string& name) { return upload_mat(dev, m, name.c_str(), max_buffer_, bytes_); };
    auto vec = [&](const float* p, int64_t n) { return upload_vec(dev, p, n, bytes_); };
    auto lin = [&](const auto& l, const std::string& name, int64_t n_out) { return GpuLinear{mat(l.w, name), vec(l.b, n_out)}; };

    v_.patch = mat(vw.patch, "v.patch_embd.weight");
    v_.patch_b = vec(vw.patch_b, E);
    v_.cls = vec(vw.cls, E);
    v_.pos = vec(vw.pos, T * E);
    v_.layers.resize(vw.layers.size());
    for (size_t il = 0; il < vw.layers.size(); il++) {
        const VisionLayer& L = vw.layers[il];
        GpuVisionLayer& G = v_.layers[il];
        const std::string b = "v.blk." + std::to_string(il) + ".";
        G.ln1_w = vec(L.ln1_w, E);
        G.ln1_b = vec(L.ln1_b, E);
        G.qkv = mat(L.qkv, b + "attn_qkv.weight");
        G.qkv_b = vec(L.qkv_b, 3 * E);
        G.out = mat(L.out, b + "attn_out.weight");
        G.out_b = vec(L.out_b, E);
        G.ln2_w = vec(L.ln2_w, E);
        G.ln2_b = vec(L.ln2_b, E);
        G.up = mat(L.up, b + "ffn_up.weight");
        G.up_b = vec(L.up_b, F);
        G.down = mat(L.down, b + "ffn_down.weight");
        G.down_b = vec(L.down_b, E);
    }
    v_.post_w = vec(vw.post_w, E);
    v_.post_b = vec(vw.post_b, E);

    const int64_t Q = qhp.n_embd, QF = qhp.n_ff, NQ = qhp.n_query;
    q_.query = vec(qw.query, NQ * Q);
    q_.emb_ln_w = vec(qw.emb_ln_w, Q);
    q_.emb_ln_b = vec(qw.emb_ln_b, Q);
    q_.layers.resize(qw.layers.size());
    for (size_t il = 0; il < qw.layers.size(); il++) {
        const QformerLayer& L = qw.layers[il];
        GpuQformerLayer& G = q_.layers[il];
        const std::string b = "qf.blk." + std::to_string(il) + ".";
        G.attn_q = lin(L.attn_q, b + "attn_q.weight", Q);
        G.attn_k = lin(L.attn_k, b + "attn_k.weight", Q);
        G.attn_v = lin(L.attn_v, b + "attn_v.weight", Q);
        G.attn_out = lin(L.attn_out, b + "attn_out.weight", Q);
        G.attn_ln_w = vec(L.attn_ln_w, Q);
        G.attn_ln_b = vec(L.attn_ln_b, Q);
        G.cross = L.cross;
        if (L.cross) {
            G.cross_q = lin(L.cross_q, b + "cross_q.weight", Q);
            G.cross_k = lin(L.cross_k, b + "cross_k.weight", Q);
            G.cross_v = lin(L.cross_v, b + "cross_v.weight", Q);
            G.cross_out = lin(L.cross_out, b + "cross_out.weight", Q);
            G.cross_ln_w = vec(L.cross_ln_w, Q);
            G.cross_ln_b = vec(L.cross_ln_b, Q);
        }
        G.ffn_up = lin(L.ffn_up, b + "ffn_up.weight", QF);
        G.ffn_down = lin(L.ffn_down, b + "ffn_down.weight", Q);
        G.ffn_ln_w = vec(L.ffn_ln_w, Q);
        G.ffn_ln_b = vec(L.ffn_ln_b, Q);
    }
    const bool folded = qhp.n_proj_mid == 0;
    q_.proj0 = mat(qw.proj0.w, "mm.0.weight");
    q_.proj0_b = vec(qw.proj0.b, folded ? qhp.n_embd_out : qhp.n_proj_mid);
    if (!folded) {
        q_.proj1 = mat(qw.proj1.w, "mm.1.weight");
        q_.proj1_b = vec(qw.proj1.b, qhp.n_embd_out);
    }

    // A pass's buffers, at their one size: an image always has T tokens.
    const int64_t S = vhp.image_size, O = qhp.n_embd_out;
    pix_ = act(3 * S * S);
    patches_ = act(vhp.n_patches() * vhp.patch_dim());
    x_ = act(T * E);
    h_ = act(T * E);
    att_ = act(T * E);
    qkv_ = act(T * 3 * E);
    ff_ = act(T * F);
    img_ = act(T * E);
    qh_ = act(NQ * Q);
    qtmp_ = act(NQ * Q);
    qatt_ = act(NQ * Q);
    qq_ = act(NQ * Q);
    qqkv_ = act(NQ * 3 * Q);
    ckv_ = act(T * 2 * Q);
    qff_ = act(NQ * QF);
    if (!folded) mid_ = act(NQ * qhp.n_proj_mid);
    out_ = act(NQ * O);
    in_ = act(3 * S * S, true);
    down_ = act(NQ * O, true);
}

std::unique_ptr<Buffer> ImageGpu::act(uint64_t floats, bool host) {
    auto b = host ? std::make_unique<Buffer>(dev_, 4 * floats, true) : dev_.buffer(4 * floats);
    act_bytes_ += b->size();
    return b;
}

// The ViT and ln_vision, as vision_forward (model/vision.cpp): pixels in pix_, tokens out in img_.
void ImageGpu::record_vision(Sequence& s) {
    const int64_t E = vhp_.n_embd, F = vhp_.n_ff, T = vhp_.n_tokens(), NP = vhp_.n_patches();
    patches(s, *pix_, vhp_.image_size, vhp_.patch_size, *patches_);
    // x = [cls; W_patch . patches + b] + pos: the patch rows land in h, then move below the CLS row.
    product(s, v_.patch, *patches_, NP, *h_, E, 0, v_.patch_b.get(), ProductKernel::Auto);
    s.copy(*v_.cls, *x_, 4ull * E, 0, 0);
    s.copy(*h_, *x_, 4ull * NP * E, 0, 4ull * E);
    add(s, *x_, *v_.pos, *x_, T * E, T * E);

    const float scale = 1.0f / std::sqrt((float)vhp_.head_dim);
    const int H = (int)vhp_.n_head, D = (int)vhp_.head_dim;
    for (const GpuVisionLayer& L : v_.layers) {
        layernorm(s, *x_, *h_, T, E, L.ln1_w.get(), L.ln1_b.get(), vhp_.ln_eps);
        product(s, L.qkv, *h_, T, *qkv_, 3 * E, 0, L.qkv_b.get(), ProductKernel::Auto);
        attention_full(s, *qkv_, 3 * E, 0, *qkv_, 3 * E, E, *qkv_, 3 * E, 2 * E, T, T, H, D, scale, *att_, E);
        product(s, L.out, *att_, T, *h_, E, 0, L.out_b.get(), ProductKernel::Auto);
        add(s, *x_, *h_, *x_, T * E, T * E);
        layernorm(s, *x_, *h_, T, E, L.ln2_w.get(), L.ln2_b.get(), vhp_.ln_eps);
        product(s, L.up, *h_, T, *ff_, F, 0, L.up_b.get(), ProductKernel::Auto);
        gelu(s, *ff_, T * F, /*tanh_form=*/false);
        product(s, L.down, *ff_, T, *att_, E, 0, L.down_b.get(), ProductKernel::Auto);
        add(s, *x_, *att_, *x_, T * E, T * E);
    }
    layernorm(s, *x_, *img_, T, E, v_.post_w.get(), v_.post_b.get(), vhp_.post_eps);
}

// The Q-Former and the projector, as qformer_forward (model/qformer.cpp): image tokens from img_, the
// projected queries out in out_.
void ImageGpu::record_qformer(Sequence& s) {
    const int64_t Q = qhp_.n_embd, QF = qhp_.n_ff, NQ = qhp_.n_query, T = vhp_.n_tokens(), O = qhp_.n_embd_out;
    const int H = (int)qhp_.n_head, D = (int)qhp_.head_dim;
    const float scale = 1.0f / std::sqrt((float)qhp_.head_dim), eps = qhp_.ln_eps;
    // Post-LN residual: h = LN(tmp + h), tmp holding the sublayer's output.
    auto residual_ln = [&](const Buffer* w, const Buffer* b) {
        add(s, *qtmp_, *qh_, *qtmp_, NQ * Q, NQ * Q);
        layernorm(s, *qtmp_, *qh_, NQ, Q, w, b, eps);
    };

    layernorm(s, *q_.query, *qh_, NQ, Q, q_.emb_ln_w.get(), q_.emb_ln_b.get(), eps);
    for (const GpuQformerLayer& L : q_.layers) {
        // self-attention: q, k and v side by side in the rows of qqkv
        product(s, L.attn_q.w, *qh_, NQ, *qqkv_, 3 * Q, 0, L.attn_q.b.get(), ProductKernel::Auto);
        product(s, L.attn_k.w, *qh_, NQ, *qqkv_, 3 * Q, Q, L.attn_k.b.get(), ProductKernel::Auto);
        product(s, L.attn_v.w, *qh_, NQ, *qqkv_, 3 * Q, 2 * Q, L.attn_v.b.get(), ProductKernel::Auto);
        attention_full(s, *qqkv_, 3 * Q, 0, *qqkv_, 3 * Q, Q, *qqkv_, 3 * Q, 2 * Q, NQ, NQ, H, D, scale, *qatt_, Q);
        product(s, L.attn_out.w, *qatt_, NQ, *qtmp_, Q, 0, L.attn_out.b.get(), ProductKernel::Auto);
        residual_ln(L.attn_ln_w.get(), L.attn_ln_b.get());

        if (L.cross) {  // the queries attend the image tokens: keys and values side by side in ckv
            product(s, L.cross_q.w, *qh_, NQ, *qq_, Q, 0, L.cross_q.b.get(), ProductKernel::Auto);
            product(s, L.cross_k.w, *img_, T, *ckv_, 2 * Q, 0, L.cross_k.b.get(), ProductKernel::Auto);
            product(s, L.cross_v.w, *img_, T, *ckv_, 2 * Q, Q, L.cross_v.b.get(), ProductKernel::Auto);
            attention_full(s, *qq_, Q, 0, *ckv_, 2 * Q, 0, *ckv_, 2 * Q, Q, NQ, T, H, D, scale, *qatt_, Q);
            product(s, L.cross_out.w, *qatt_, NQ, *qtmp_, Q, 0, L.cross_out.b.get(), ProductKernel::Auto);
            residual_ln(L.cross_ln_w.get(), L.cross_ln_b.get());
        }

        product(s, L.ffn_up.w, *qh_, NQ, *qff_, QF, 0, L.ffn_up.b.get(), ProductKernel::Auto);
        gelu(s, *qff_, NQ * QF, /*tanh_form=*/false);
        product(s, L.ffn_down.w, *qff_, NQ, *qtmp_, Q, 0, L.ffn_down.b.get(), ProductKernel::Auto);
        residual_ln(L.ffn_ln_w.get(), L.ffn_ln_b.get());
    }

    if (!mid_) {  // a folded projector: one affine map
        product(s, q_.proj0, *qh_, NQ, *out_, O, 0, q_.proj0_b.get(), ProductKernel::Auto);
    } else {
        product(s, q_.proj0, *qh_, NQ, *mid_, qhp_.n_proj_mid, 0, q_.proj0_b.get(), ProductKernel::Auto);
        product(s, q_.proj1, *mid_, NQ, *out_, O, 0, q_.proj1_b.get(), ProductKernel::Auto);
    }
}

void ImageGpu::encode(const float* pixels, float* out) {
    const uint64_t pix_bytes = 4ull * 3 * vhp_.image_size * vhp_.image_size;
    const uint64_t out_bytes = 4ull * qhp_.n_query * qhp_.n_embd_out;
    std::memcpy(in_->mapped(), pixels, pix_bytes);
    Sequence s(dev_);
    s.copy(*in_, *pix_, pix_bytes, 0, 0);
    record_vision(s);
    record_qformer(s);
    s.copy(*out_, *down_, out_bytes, 0, 0);
    s.run();  // the one wait of the image
    std::memcpy(out, down_->mapped(), out_bytes);
}

}  // namespace vk
}  // namespace tg
