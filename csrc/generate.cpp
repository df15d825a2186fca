#include "generate.h"

#include <algorithm>
#include <cmath>

#include "errors.h"

namespace tg {

Generator::Generator(Context& ctx, const Tokenizer& tok, int64_t n_batch)
    : ctx_(ctx), tok_(tok), n_batch_(n_batch), slots_((size_t)ctx.n_seq()) {
    if (n_batch < 2) throw ModelError(fmt("n_batch %lld must be at least 2", (long long)n_batch));
    if (tok.n_vocab() > ctx.model().hparams().n_vocab)
        throw ModelError(fmt("the tokenizer has %d tokens, the model %lld", tok.n_vocab(),
                             (long long)ctx.model().hparams().n_vocab));
}

bool Generator::has_free_slot() const {
    for (auto& s : slots_)
        if (!s.active) return true;
    return false;
}

int Generator::n_active() const {
    int n = 0;
    for (auto& s : slots_) n += s.active ? 1 : 0;
    return n;
}

int Generator::submit(GenRequest req, int64_t* cached, uint64_t* ticket) {
    // Checks first: nothing changes for a bad request.
    req.sampling.validate();
    const PhiHparams& hp = ctx_.model().hparams();
    if (req.max_new_tokens < 0)
        throw ModelError(fmt("max_new_tokens must be >= 0, got %lld", (long long)req.max_new_tokens));
    std::vector<Cell> cells;
    std::vector<const float*> embd;
    for (const auto& p : req.prompt) {
        if (p.image) {
            if (p.image->n_embd != hp.n_embd)
                throw ModelError(fmt("image embeddings have width %lld, the model %lld", (long long)p.image->n_embd,
                                     (long long)hp.n_embd));
            for (int64_t r = 0; r < p.image->n_rows; r++) {
                cells.push_back(Cell::of_image(p.image->hash, (int32_t)r));
                embd.push_back(p.image->row(r));
            }
        }
        for (size_t i = 0; i < p.tokens.size(); i++) {
            const int32_t t = p.tokens[i];
            if (t < 0 || t >= hp.n_vocab)
                throw ModelError(fmt("prompt token id %d is outside the vocabulary [0, %lld)", t, (long long)hp.n_vocab));
            cells.push_back(Cell::of_token(t));
            embd.push_back(nullptr);
        }
    }
    const int64_t n = (int64_t)cells.size();
    if (n == 0) throw ModelError("empty prompt: no tokens and no image");
    // Only the prompt must fit: the answer stops at the end of the context ("length"), as llama.cpp's.
    if (n > ctx_.n_ctx())
        throw ContextOverflow(fmt("a prompt of %lld positions does not fit in n_ctx %lld", (long long)n,
                                  (long long)ctx_.n_ctx()));
    for (int32_t t : req.stop_ids)
        if (t < 0) throw ModelError(fmt("stop id %d is negative", t));
    if (req.n_probs < 0 || req.n_probs > 20)
        throw ModelError(fmt("n_probs %d must be in [0, 20]", req.n_probs));
    auto sampler = std::make_unique<Sampler>(req.sampling, tok_);

    // The slot: the free one holding the longest prefix (ties: least recently used), unless a busy
    // one holds more, which is then copied into the least recently used free slot.
    int best = -1;
    int64_t best_len = -1;
    for (int s = 0; s < (int)slots_.size(); s++) {
        if (slots_[(size_t)s].active) continue;
        const int64_t l = ctx_.kv().common_prefix(s, cells.data(), n);
        if (l > best_len || (l == best_len && slots_[(size_t)s].last_used < slots_[(size_t)best].last_used)) {
            best = s;
            best_len = l;
        }
    }
    if (best < 0) throw ModelError(fmt("all %d sequences of the context are busy", (int)slots_.size()));
    allowed_.assign(slots_.size(), 0);
    for (size_t s = 0; s < slots_.size(); s++) allowed_[s] = slots_[s].active ? 1 : 0;
    const std::pair<int, int64_t> busy = ctx_.longest_prefix(cells.data(), n, &allowed_);
    if (busy.first >= 0 && busy.second > best_len) {
        int lru = -1;
        for (int s = 0; s < (int)slots_.size(); s++)
            if (!slots_[(size_t)s].active && (lru < 0 || slots_[(size_t)s].last_used < slots_[(size_t)lru].last_used))
                lru = s;
        ctx_.seq_copy(busy.first, lru, busy.second);
        best = lru;
        best_len = busy.second;
    }
    // Evaluate at least the last position (its logits start the answer), and at least two where the
    // prompt has them: a lone row takes attention's row path, which a fresh evaluation would not.
    int64_t keep = std::min(best_len, n - 1);
    if (n - keep == 1 && keep > 0) keep--;
    ctx_.seq_truncate(best, keep);

    Slot& sl = slots_[(size_t)best];
    sl.active = true;
    sl.last_used = ++tick_;
    sl.cells = std::move(cells);
    sl.embd = std::move(embd);
    sl.images.clear();
    for (const auto& p : req.prompt)
        if (p.image) sl.images.push_back(p.image);
    sl.n_done = keep;
    sl.pending = -1;
    sl.max_new = req.max_new_tokens;
    sl.n_probs = req.n_probs;
    sl.n_new = 0;
    sl.use_eos = req.use_eos;
    sl.stop_ids = std::move(req.stop_ids);
    if (req.use_eos && tok_.eos() >= 0) sl.stop_ids.push_back(tok_.eos());
    sl.history = std::move(req.penalty_history);
    sl.sampler = std::move(sampler);
    sl.dec = std::make_unique<StreamDecoder>(tok_);
    sl.stop = StopMatcher(std::move(req.stop_strings));
    sl.ticket = ++tickets_;
    if (cached) *cached = keep;
    if (ticket) *ticket = sl.ticket;
    return best;
}

void Generator::finish(int seq, const char* reason, GenEvent& ev, bool stop_hit) {
    Slot& sl = slots_[(size_t)seq];
    if (!stop_hit) {
        // the held-back tail: an incomplete character, or text that did not become a stop string
        std::string tail = sl.stop.push(sl.dec->flush(), &stop_hit);
        if (!stop_hit) tail += sl.stop.flush();
        ev.text += tail;
    }
    ev.seq = seq;
    ev.ticket = sl.ticket;
    ev.finished = true;
    ev.finish_reason = stop_hit ? "stop" : reason;
    sl.active = false;
    sl.images.clear();
    sl.sampler.reset();
    sl.dec.reset();
    sl.last_used = ++tick_;
}

// The log-softmax of the logits at tok, and the k largest (ties: lower id first). NaN logits count as
// impossible.
void Generator::log_probs(const float* logits, int32_t n, int32_t tok, int32_t k, GenEvent& ev) {
    float mx = -INFINITY;
    for (int32_t i = 0; i < n; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0;
    for (int32_t i = 0; i < n; i++)
        if (logits[i] == logits[i]) sum += std::exp((double)logits[i] - mx);
    const float lse = mx + (float)std::log(sum);
    ev.logprob = logits[tok] - lse;
    top_.clear();
    // a heap whose front is the worst of the k kept
    auto better = [](const std::pair<int32_t, float>& a, const std::pair<int32_t, float>& b) {
        return a.second > b.second || (a.second == b.second && a.first < b.first);
    };
    for (int32_t i = 0; i < n; i++) {
        if (!(logits[i] == logits[i])) continue;
        std::pair<int32_t, float> c(i, logits[i] - lse);
        if ((int32_t)top_.size() < k) {
            top_.push_back(c);
            std::push_heap(top_.begin(), top_.end(), better);
        } else if (better(c, top_.front())) {
            std::pop_heap(top_.begin(), top_.end(), better);
            top_.back() = c;
            std::push_heap(top_.begin(), top_.end(), better);
        }
    }
    std::sort_heap(top_.begin(), top_.end(), better);
    ev.top = top_;
}

void Generator::sample(int seq, const float* logits, GenEvent& ev) {
    Slot& sl = slots_[(size_t)seq];
    ev.seq = seq;
    ev.ticket = sl.ticket;
    const int32_t tok = sl.sampler->sample(logits, (int32_t)ctx_.model().hparams().n_vocab, sl.history);
    if (std::find(sl.stop_ids.begin(), sl.stop_ids.end(), tok) != sl.stop_ids.end()) {
        sl.pending = -1;
        finish(seq, "stop", ev);
        return;
    }
    ev.token = tok;
    if (sl.n_probs > 0) log_probs(logits, (int32_t)ctx_.model().hparams().n_vocab, tok, sl.n_probs, ev);
    sl.history.push_back(tok);
    sl.n_new++;
    sl.pending = tok;
    bool hit = false;
    ev.text = sl.stop.push(sl.dec->push(tok), &hit);
    if (hit) {
        finish(seq, "stop", ev, true);
    } else if (sl.n_new >= sl.max_new) {
        finish(seq, "length", ev);
    }
}

const std::vector<GenEvent>& Generator::step() {
    events_.clear();
    batch_.clear();
    row_slot_.clear();
    // Decode rows first: every active sequence with a pending token; one whose cache is full ends.
    for (int s = 0; s < (int)slots_.size(); s++) {
        Slot& sl = slots_[(size_t)s];
        if (!sl.active || sl.pending < 0) continue;
        const int64_t past = ctx_.n_past(s);
        if (past >= ctx_.n_ctx()) {
            events_.emplace_back();
            finish(s, "length", events_.back());
            continue;
        }
        batch_.add_token(sl.pending, s, past, true);
        row_slot_.push_back(s);
        sl.pending = -1;
    }
    // Then prompt rows, n_batch at most, in pieces of two rows or more (see submit()).
    int64_t budget = n_batch_;
    for (int s = 0; s < (int)slots_.size() && budget > 0; s++) {
        Slot& sl = slots_[(size_t)s];
        if (!sl.active || sl.n_done >= (int64_t)sl.cells.size()) continue;
        const int64_t left = (int64_t)sl.cells.size() - sl.n_done;
        int64_t k = std::min(left, budget);
        if (left - k == 1) k--;
        if (k < 2 && left > 1) continue;
        const int64_t past = ctx_.n_past(s);
        for (int64_t i = 0; i < k; i++) {
            const size_t c = (size_t)(sl.n_done + i);
            const bool last = sl.n_done + i + 1 == (int64_t)sl.cells.size();
            const Cell& cell = sl.cells[c];
            if (cell.token >= 0) {
                batch_.add_token(cell.token, s, past + i, last);
            } else {
                batch_.token.push_back(-1);
                batch_.embd.push_back(sl.embd[c]);
                batch_.cell.push_back(cell);
                batch_.seq.push_back(s);
                batch_.pos.push_back(past + i);
                batch_.logits.push_back(last ? 1 : 0);
            }
            if (last) row_slot_.push_back(s);
        }
        sl.n_done += k;
        budget -= k;
    }
    if (batch_.size() == 0) return events_;
    ctx_.decode(batch_);
    const int64_t V = ctx_.model().hparams().n_vocab;
    for (size_t i = 0; i < row_slot_.size(); i++) {
        const int s = row_slot_[i];
        Slot& sl = slots_[(size_t)s];
        events_.emplace_back();
        GenEvent& ev = events_.back();
        ev.seq = s;
        ev.ticket = sl.ticket;
        if (sl.n_new == 0) sl.prompt_logits.assign(ctx_.logits() + (int64_t)i * V, ctx_.logits() + (int64_t)(i + 1) * V);
        if (sl.n_new >= sl.max_new) {  // max_new_tokens 0: the prompt only
            finish(s, "length", ev);
            continue;
        }
        sample(s, ctx_.logits() + (int64_t)i * V, ev);
    }
    return events_;
}

const std::vector<float>& Generator::prompt_logits(int seq) const {
    if (seq < 0 || seq >= (int)slots_.size()) throw ModelError(fmt("sequence %d is outside [0, %zu)", seq, slots_.size()));
    return slots_[(size_t)seq].prompt_logits;
}

GenEvent Generator::cancel(int seq) {
    if (seq < 0 || seq >= (int)slots_.size() || !slots_[(size_t)seq].active || slots_[(size_t)seq].reserved)
        throw ModelError(fmt("sequence %d is not generating", seq));
    GenEvent ev;
    slots_[(size_t)seq].pending = -1;
    finish(seq, "interrupted", ev);
    return ev;
}

}  // namespace tg

namespace tg {

int Generator::reserve() {
    int lru = -1;
    for (int s = 0; s < (int)slots_.size(); s++)
        if (!slots_[(size_t)s].active && (lru < 0 || slots_[(size_t)s].last_used < slots_[(size_t)lru].last_used))
            lru = s;
    if (lru < 0) throw ModelError(fmt("all %d sequences of the context are busy", (int)slots_.size()));
    Slot& sl = slots_[(size_t)lru];
    sl.active = sl.reserved = true;
    sl.cells.clear();
    sl.embd.clear();
    sl.n_done = 0;
    sl.pending = -1;
    sl.last_used = ++tick_;
    return lru;
}

void Generator::release(int seq) {
    if (seq < 0 || seq >= (int)slots_.size() || !slots_[(size_t)seq].reserved)
        throw ModelError(fmt("sequence %d is not reserved", seq));
    slots_[(size_t)seq].active = slots_[(size_t)seq].reserved = false;
}

}  // namespace tg
