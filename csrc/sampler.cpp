#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "errors.h"

namespace tg {

void Pcg32::reseed(uint64_t seed) {
    state_ = 0;
    inc_ = (0xda3e39cb94b95bdbULL << 1u) | 1u;
    next();
    state_ += seed;
    next();
}

uint32_t Pcg32::next() {
    const uint64_t old = state_;
    state_ = old * 6364136223846793005ULL + inc_;
    const uint32_t xorshifted = (uint32_t)(((old >> 18u) ^ old) >> 27u);
    const uint32_t rot = (uint32_t)(old >> 59u);
    return (xorshifted >> rot) | (xorshifted << ((32u - rot) & 31u));
}

double Pcg32::uniform() {
    const uint64_t a = next() >> 5, b = next() >> 6;  // 27 + 26 bits
    return ((double)a * 67108864.0 + (double)b) * (1.0 / 9007199254740992.0);
}

void SamplerParams::validate() const {
    const SamplerParams& p = *this;
    if (!std::isfinite(p.temperature) || p.temperature < 0.0f)
        throw std::invalid_argument(fmt("temperature must be a finite number >= 0, got %g", (double)p.temperature));
    if (!(p.top_p > 0.0f && p.top_p <= 1.0f))
        throw std::invalid_argument(fmt("top_p must be in (0, 1] (1 disables it), got %g", (double)p.top_p));
    if (!(p.min_p >= 0.0f && p.min_p <= 1.0f))
        throw std::invalid_argument(fmt("min_p must be in [0, 1] (0 disables it), got %g", (double)p.min_p));
    if (!std::isfinite(p.repetition_penalty) || p.repetition_penalty <= 0.0f)
        throw std::invalid_argument(fmt("repetition_penalty must be a finite number > 0 (1 disables it), got %g",
                                        (double)p.repetition_penalty));
    if (p.penalty_last_n < -1)
        throw std::invalid_argument(fmt("penalty_last_n must be >= -1 (-1: whole history, 0: off), got %d",
                                        p.penalty_last_n));
}

Sampler::Sampler(const SamplerParams& p, const Tokenizer& tok) : params_(p), rng_(p.seed) {
    p.validate();
    sampleable_.resize(tok.n_vocab());
    for (int32_t i = 0; i < tok.n_vocab(); ++i) sampleable_[i] = tok.is_sampleable(i) ? 1 : 0;
}

int32_t Sampler::sample(const float* logits, int32_t n, const std::vector<int32_t>& history) {
    if (n <= 0 || logits == nullptr) throw std::invalid_argument(fmt("sample: %d logits given", (int)n));
    const SamplerParams& p = params_;
    const int32_t n_ok = std::min<int32_t>(n, (int32_t)sampleable_.size());  // ids >= n_vocab: never
    work_.assign(logits, logits + n_ok);

    // repetition penalty over the distinct recent ids
    if (p.repetition_penalty != 1.0f && p.penalty_last_n != 0 && !history.empty()) {
        size_t first = 0;
        if (p.penalty_last_n > 0 && history.size() > (size_t)p.penalty_last_n) first = history.size() - p.penalty_last_n;
        recent_.clear();
        for (size_t k = first; k < history.size(); ++k)
            if (history[k] >= 0 && history[k] < n_ok) recent_.push_back(history[k]);
        std::sort(recent_.begin(), recent_.end());
        recent_.erase(std::unique(recent_.begin(), recent_.end()), recent_.end());
        for (int32_t id : recent_) {
            float& v = work_[id];
            v = v > 0.0f ? v / p.repetition_penalty : v * p.repetition_penalty;
        }
    }
    auto usable = [&](int32_t i) { return sampleable_[i] && !std::isnan(work_[i]) && work_[i] != -INFINITY; };

    if (p.temperature == 0.0f) {
        int32_t best = -1;
        for (int32_t i = 0; i < n_ok; ++i)
            if (usable(i) && (best < 0 || work_[i] > work_[best])) best = i;
        if (best < 0) throw std::invalid_argument(fmt("sample: none of the %d logits belongs to a sampleable token", (int)n));
        return best;
    }

    cand_.clear();
    for (int32_t i = 0; i < n_ok; ++i)
        if (usable(i)) cand_.push_back({work_[i] / p.temperature, 0.0f, i});
    if (cand_.empty()) throw std::invalid_argument(fmt("sample: none of the %d logits belongs to a sampleable token", (int)n));
    // a total order (descending value, ties: lower id first), so results do not depend on the sort routine
    auto higher = [](const Cand& a, const Cand& b) { return a.v != b.v ? a.v > b.v : a.id < b.id; };

    bool sorted = false;
    if (p.top_k > 0 && (size_t)p.top_k < cand_.size()) {
        std::nth_element(cand_.begin(), cand_.begin() + (p.top_k - 1), cand_.end(), higher);
        const float kth = cand_[p.top_k - 1].v;
        cand_.erase(std::remove_if(cand_.begin(), cand_.end(), [&](const Cand& c) { return c.v < kth; }), cand_.end());
        std::sort(cand_.begin(), cand_.end(), higher);  // k (plus ties) ids
        sorted = true;
    }

    float vmax = -INFINITY;
    for (const Cand& c : cand_) vmax = std::max(vmax, c.v);
    double total = 0.0;
    for (Cand& c : cand_) {
        // +inf logits: only the +inf ones stay possible, with equal weight
        c.w = std::isinf(vmax) ? (c.v == vmax ? 1.0f : 0.0f) : std::exp(c.v - vmax);
        total += c.w;
    }

    if (p.top_p < 1.0f) {
        // keep ids, most probable first, while the mass above them is below top_p (at least one id);
        // sort only as far as needed: the top 64, then 4x more each time
        const double limit = (double)p.top_p * total;
        double above = 0.0;
        size_t keep = 0, done = sorted ? cand_.size() : 0;
        for (;;) {
            if (keep == done) {
                if (done == cand_.size()) break;
                const size_t upto = std::min(cand_.size(), std::max<size_t>(64, done * 4));
                std::partial_sort(cand_.begin() + done, cand_.begin() + upto, cand_.end(), higher);
                done = upto;
            }
            if (keep > 0 && above >= limit) break;
            above += cand_[keep++].w;
        }
        cand_.resize(keep);
    }
    if (p.min_p > 0.0f) {
        // weight = probability relative to the most probable id
        cand_.erase(std::remove_if(cand_.begin(), cand_.end(), [&](const Cand& c) { return c.w < p.min_p; }),
                    cand_.end());
    }
    total = 0.0;
    for (const Cand& c : cand_) total += c.w;
    const double u = rng_.uniform() * total;
    double acc = 0.0;
    int32_t last = cand_[0].id;  // rounding at the very top end: the last id with weight
    for (const Cand& c : cand_) {
        if (c.w <= 0.0f) continue;
        acc += c.w;
        last = c.id;
        if (u < acc) return c.id;
    }
    return last;
}

}  // namespace tg
