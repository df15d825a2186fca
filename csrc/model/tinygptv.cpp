#include "model/tinygptv.h"

#include "errors.h"
#include "model/loader.h"

namespace tg {

Model::Model(const std::string& path) : file_(new GGUFFile(path)) {
    hp_ = PhiHparams::read(*file_);
    WeightLoader ld(*file_, arena_);
    lm_.load(ld, hp_);
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

}  // namespace tg
