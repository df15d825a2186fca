#include "generate.h"

#include "errors.h"

namespace tg {

Generator::Generator(Session& session, const Tokenizer& tok, const SamplerParams& params, std::vector<int32_t> history,
                     std::vector<float> last_logits)
    : s_(session), sampler_(params, tok), history_(std::move(history)), logits_(std::move(last_logits)) {
    if ((int64_t)logits_.size() != s_.model().hparams().n_vocab)
        throw ModelError(fmt("generator needs the %lld logits of the last position, got %zu",
                             (long long)s_.model().hparams().n_vocab, logits_.size()));
}

void Generator::commit() {
    if (pending_ < 0) return;
    int32_t t = pending_;
    pending_ = -1;
    s_.eval_tokens(&t, 1, false, logits_.data());
    history_.push_back(t);
}

int32_t Generator::step() {
    commit();
    pending_ = sampler_.sample(logits_.data(), (int32_t)logits_.size(), history_);
    return pending_;
}

}  // namespace tg
