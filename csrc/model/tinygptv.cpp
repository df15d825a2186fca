#include "model/tinygptv.h"

#include <algorithm>
#include <cmath>
#include <thread>

#include <chrono>

#include "cpu.h"
#include "errors.h"
#include "log.h"
#include "model/loader.h"

namespace tg {

Model::Model(const std::string& path, int n_threads) : file_(new GGUFFile(path)) {
    // Every hyperparameter is read and checked before any weight is touched.
    hp_ = PhiHparams::read(*file_);
    has_vision_ = hp_.arch == "tinygptv" &&
                  (file_->has("tinygptv.vision.image_size") || file_->find_tensor("v.patch_embd.weight") != nullptr);
    if (has_vision_) {
        vhp_ = VisionHparams::read(*file_);
        qhp_ = QformerHparams::read(*file_, vhp_.n_embd, hp_.n_embd);
    }
    const auto t0 = std::chrono::steady_clock::now();
    ThreadPool pool(n_threads > 0 ? n_threads : (int)std::max(1u, std::thread::hardware_concurrency()));
    WeightLoader ld(*file_, arena_, &pool);
    lm_.load(ld, hp_);
    if (has_vision_) {
        vis_.load(ld, vhp_);
        qf_.load(ld, qhp_);
    }
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    TG_LOG(LogLevel::Info, "loaded '%s' (%s, %lld layers%s, %zu tensors, %.1f MB) in %.0f ms; kernels: %s",
           path.c_str(), hp_.arch.c_str(), (long long)hp_.n_layer, has_vision_ ? ", vision" : "",
           file_->tensors().size(), file_->file_size() / 1e6, ms, isa_name(isa_active()));
}

void Model::embed_tokens(const int32_t* ids, int64_t n, float* out) const {
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= hp_.n_vocab)
            throw ModelError(fmt("token id %d at index %lld is outside the vocabulary [0, %lld)", ids[i], (long long)i,
                                 (long long)hp_.n_vocab));
        dequantize_row(lm_.tok_embd, ids[i], out + i * hp_.n_embd);
    }
}

Session::Session(std::shared_ptr<const Model> model, int64_t n_ctx, int n_threads, bool kv_f16)
    : model_(std::move(model)), pool_(n_threads), state_(model_->hparams(), n_ctx, kv_f16) {}

void Session::eval_embeddings(const float* x, int64_t n, bool all_logits, float* logits) {
    state_.forward(model_->hparams(), model_->lm(), x, n, all_logits, logits, pool_);
}

void Session::eval_tokens(const int32_t* ids, int64_t n, bool all_logits, float* logits) {
    const int64_t E = model_->hparams().n_embd;
    if ((int64_t)embd_.size() < n * E) embd_.resize((size_t)(n * E));
    model_->embed_tokens(ids, n, embd_.data());
    eval_embeddings(embd_.data(), n, all_logits, logits);
}

void Session::encode_image(const float* pixels, float* out) {
    const Model& m = *model_;
    if (!m.has_vision())
        throw ModelError(fmt("this model (general.architecture '%s') has no vision encoder", m.hparams().arch.c_str()));
    const VisionHparams& vhp = m.vision_hparams();
    const int64_t n_pix = 3 * vhp.image_size * vhp.image_size;
    for (int64_t i = 0; i < n_pix; i++)
        if (!std::isfinite(pixels[i]))
            throw ModelError(fmt("pixel %lld (channel %lld, row %lld, column %lld) is %g; the image must be finite",
                                 (long long)i, (long long)(i / (vhp.image_size * vhp.image_size)),
                                 (long long)(i / vhp.image_size % vhp.image_size), (long long)(i % vhp.image_size),
                                 (double)pixels[i]));
    if (!vis_scratch_) {
        vis_scratch_.reset(new VisionScratch(vhp));
        qf_scratch_.reset(new QformerScratch(m.qformer_hparams(), vhp.n_tokens()));
        img_tokens_.resize((size_t)(vhp.n_tokens() * vhp.n_embd));
    }
    vision_forward(vhp, m.vision(), pixels, img_tokens_.data(), *vis_scratch_, pool_);
    qformer_forward(m.qformer_hparams(), m.qformer(), img_tokens_.data(), vhp.n_tokens(), out, *qf_scratch_, pool_);
}

}  // namespace tg
