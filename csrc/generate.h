// The token loop of one answer: sample from the last logits, feed the token back, repeat.
// Text handling (stop strings, streaming pieces) stays in Python; this class does all the math, so
// Python makes one call per token and computes nothing itself.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "model/tinygptv.h"
#include "sampler.h"
#include "tokenizer/tokenizer.h"

namespace tg {

class Generator {
public:
    // The session must already hold the prompt and `last_logits` the logits of its last position.
    Generator(Session& session, const Tokenizer& tok, const SamplerParams& params, std::vector<int32_t> history,
              std::vector<float> last_logits);

    // Feeds the pending token (the one returned by the previous step, if any) through the model, then
    // samples the next one and returns it (it stays pending until the next step or commit).
    int32_t step();
    // Feeds the pending token without sampling another (keeps the KV cache complete for a follow-up).
    void commit();
    int32_t pending() const { return pending_; }
    Session& session() { return s_; }
    const std::vector<float>& last_logits() const { return logits_; }

private:
    Session& s_;
    Sampler sampler_;
    std::vector<int32_t> history_;
    std::vector<float> logits_;
    int32_t pending_ = -1;
};

}  // namespace tg
