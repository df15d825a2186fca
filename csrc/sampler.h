// Token sampler, one per conversation.
//
// sample() applies, in Hugging Face transformers' order (the order TinyGPT-V's reference generate() uses):
//   1. mask: ids the tokenizer cannot produce (type 5 unused/padding rows, ids >= n_vocab when the logits
//      are longer than the vocabulary, e.g. Phi-2's 51200 rows for 50295 tokens) and NaN logits are never
//      chosen, not even by greedy decoding;
//   2. repetition penalty over the distinct ids among the last penalty_last_n entries of history
//      (logit > 0: divided by the penalty, else multiplied; history ids outside the logits are ignored);
//   3. temperature == 0: argmax (ties: lowest id) and stop here; else logits / temperature;
//   4. top-k (k <= 0: off; ties with the k-th value are kept, as HF does);
//   5. top-p (>= 1: off): keep the most probable ids until their mass reaches top_p (the id that crosses
//      it is kept);
//   6. min-p (<= 0: off): drop ids whose probability is below min_p times the largest;
//   7. draw from the softmax of what is left with the sampler's own PCG32 generator (same seed and inputs ->
//      same ids on every platform, up to the last bit of exp()).
// Bad parameters throw std::invalid_argument (Python: ValueError) naming the parameter and value.
#pragma once
#include <cstdint>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace tg {

struct SamplerParams {
    float temperature = 0.8f;        // >= 0; 0 = greedy
    int top_k = 40;                  // <= 0 disables
    float top_p = 0.95f;             // (0, 1]; 1 disables
    float min_p = 0.05f;             // [0, 1]; 0 disables
    float repetition_penalty = 1.0f; // > 0; 1 disables
    int penalty_last_n = 64;         // 0 disables the penalty, -1 = the whole history
    uint64_t seed = 0;

    // The one place the settings are checked: throws std::invalid_argument naming the setting and value.
    void validate() const;
};

// PCG32 (O'Neill, pcg-random.org): small, fast, and the same sequence everywhere.
class Pcg32 {
  public:
    explicit Pcg32(uint64_t seed = 0) { reseed(seed); }
    void reseed(uint64_t seed);
    uint32_t next();
    double uniform();  // [0, 1) with 53 random bits
  private:
    uint64_t state_ = 0, inc_ = 0;
};

class Sampler {
  public:
    Sampler(const SamplerParams& params, const Tokenizer& tok);  // reads which ids tok can sample
    // One id in [0, n_logits). Throws std::invalid_argument when n_logits <= 0 or no id can be sampled.
    int32_t sample(const float* logits, int32_t n_logits, const std::vector<int32_t>& history);
    void reseed(uint64_t seed) { rng_.reseed(seed); }
    const SamplerParams& params() const { return params_; }

  private:
    SamplerParams params_;
    Pcg32 rng_;
    struct Cand {
        float v;       // logit after penalty and temperature
        float w;       // exp(v - max v): probability relative to the most probable id
        int32_t id;
    };
    std::vector<uint8_t> sampleable_;  // per tokenizer id
    // scratch, reused across calls
    std::vector<float> work_;
    std::vector<int32_t> recent_;
    std::vector<Cand> cand_;
};

}  // namespace tg
