// The token loop of every sequence of a context, in one call per step.
//
// A request is a prompt (pieces of token ids and images, spliced here into one run of positions),
// sampling settings and stop conditions. submit() places it in a free slot of the context: the one
// whose cache already holds the longest prefix of the prompt (copied from a busy slot when that one
// holds more), so a request that repeats a conversation evaluates only what is new. step() makes one
// decode call for all active sequences (prompt chunks of some, the next token of others), samples
// each sequence that got logits, turns its tokens into whole UTF-8 characters, applies stop ids and
// stop strings, and reports what each produced.
//
// A sequence's tokens do not depend on what else is decoded with it: its rows compute as they do
// alone, and each sequence has its own sampler and random stream.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/context.h"
#include "sampler.h"
#include "stop_matcher.h"
#include "tokenizer/tokenizer.h"

namespace tg {

// One piece of a prompt: token ids, or an image's embeddings.
struct PromptPiece {
    std::vector<int32_t> tokens;
    std::shared_ptr<const ImageEmbd> image;
};

struct GenRequest {
    std::vector<PromptPiece> prompt;
    SamplerParams sampling;
    int64_t max_new_tokens = 128;
    std::vector<int32_t> stop_ids;        // end the answer (not part of it); eos too when use_eos
    std::vector<std::string> stop_strings;
    bool use_eos = true;
    std::vector<int32_t> penalty_history;  // ids the repetition penalty sees before the answer
    int32_t n_probs = 0;                   // report the log-probability of each token and this many top ones
};

// What one sequence produced in a step.
struct GenEvent {
    int32_t seq = -1;
    uint64_t ticket = 0;        // the request's (submit's) ticket: a sequence is reused by later requests
    int32_t token = -1;         // the answer's new token, or -1 (an end token, or no token)
    std::string text;           // text that became safe to show (whole characters, no stop string)
    bool finished = false;
    const char* finish_reason = "";  // "stop", "length" or "interrupted" when finished
    // With GenRequest::n_probs: the token's log-probability under the model (log-softmax of the logits,
    // before penalties and sampling settings) and the n_probs most probable ids with theirs.
    float logprob = 0.f;
    std::vector<std::pair<int32_t, float>> top;
};

class Generator {
public:
    // n_batch: most prompt rows evaluated per step (decode rows of active sequences always go).
    Generator(Context& ctx, const Tokenizer& tok, int64_t n_batch = 512);

    // Checks the request (nothing changes when it is bad), places it and returns the slot. cached: how
    // many prompt positions the slot already held. Throws ModelError when no slot is free.
    int submit(GenRequest req, int64_t* cached, uint64_t* ticket = nullptr);
    bool has_free_slot() const;
    int n_active() const;

    // One decode call for all active sequences. The returned events (one per sequence that produced
    // something or finished) stay valid until the next step.
    const std::vector<GenEvent>& step();
    // Ends an active sequence now ("interrupted"); its cache keeps what was evaluated.
    GenEvent cancel(int seq);
    // The logits at the end of the slot's last prompt (kept until its next prompt ends).
    const std::vector<float>& prompt_logits(int seq) const;

    // A free slot (least recently used) taken out of the generator's use until release(), for a caller
    // that decodes into it directly; its cache is kept. Throws ModelError when none is free.
    int reserve();
    void release(int seq);

    Context& context() { return ctx_; }

private:
    struct Slot {
        bool active = false;
        bool reserved = false;
        uint64_t ticket = 0;
        uint64_t last_used = 0;
        std::vector<Cell> cells;                     // the prompt
        std::vector<const float*> embd;              // per prompt position: its image row, or null
        std::vector<std::shared_ptr<const ImageEmbd>> images;  // kept alive while the prompt runs
        int64_t n_done = 0;                          // prompt positions in the cache
        std::vector<float> prompt_logits;            // at the prompt's last position
        int32_t pending = -1;                        // sampled, not yet evaluated
        int64_t max_new = 0, n_new = 0;
        int32_t n_probs = 0;
        bool use_eos = true;
        std::vector<int32_t> stop_ids;
        std::vector<int32_t> history;
        std::unique_ptr<Sampler> sampler;
        std::unique_ptr<StreamDecoder> dec;
        StopMatcher stop;
    };
    void finish(int seq, const char* reason, GenEvent& ev, bool stop_hit = false);
    void sample(int seq, const float* logits, GenEvent& ev);
    void log_probs(const float* logits, int32_t n, int32_t tok, int32_t k, GenEvent& ev);

    Context& ctx_;
    const Tokenizer& tok_;
    int64_t n_batch_;
    uint64_t tick_ = 0, tickets_ = 0;
    std::vector<Slot> slots_;
    Batch batch_;
    std::vector<int32_t> row_slot_;  // per batch row wanting logits: its slot
    std::vector<GenEvent> events_;
    std::vector<uint8_t> allowed_;
    std::vector<std::pair<int32_t, float>> top_;
};

}  // namespace tg
