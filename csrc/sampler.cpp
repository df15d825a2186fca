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

Sampler::Sampler(const SamplerParams& p, const Tokenizer& tok) : params_(p), tok_(tok), rng_(p.seed) {
    if (!std::isfinite(p.temperature) || p.temperature < 0.0f)
        throw std::invalid_argument(fmt("temperature must be a finite number >= 0, got %g", (double)p.temperature));
    if (std::isnan(p.top_p) || p.top_p < 0.0f)
        throw std::invalid_argument(fmt("top_p must be >= 0 (>= 1 disables it), got %g", (double)p.top_p));
    if (std::isnan(p.min_p) || p.min_p > 1.0f)
        throw std::invalid_argument(fmt("min_p must be <= 1 (<= 0 disables it), got %g", (double)p.min_p));
    if (!std::isfinite(p.repetition_penalty) || p.repetition_penalty <= 0.0f)
        throw std::invalid_argument(fmt("repetition_penalty must be a finite number > 0 (1 disables it), got %g",
                                        (double)p.repetition_penalty));
    if (p.penalty_last_n < -1)
        throw std::invalid_argument(fmt("penalty_last_n must be >= -1 (-1: whole history, 0: off), got %d",
                                        p.penalty_last_n));
}

int32_t Sampler::sample(const float* logits, int32_t n, const std::vector<int32_t>& history) {
    if (n <= 0 || logits == nullptr) throw std::invalid_argument(fmt("sample: %d logits given", (int)n));
    const float ninf = -std::numeric_limits<float>::infinity();
    work_.assign(logits, logits + n);
    for (int32_t i = 0; i < n; ++i)
        if (!tok_.is_sampleable(i) || std::isnan(work_[i])) work_[i] = ninf;

    // repetition penalty over the distinct recent ids
    const SamplerParams& p = params_;
    if (p.repetition_penalty != 1.0f && p.penalty_last_n != 0 && !history.empty()) {
        size_t first = 0;
        if (p.penalty_last_n > 0 && history.size() > (size_t)p.penalty_last_n) first = history.size() - p.penalty_last_n;
        cand_.clear();
        for (size_t k = first; k < history.size(); ++k)
            if (history[k] >= 0 && history[k] < n) cand_.push_back(history[k]);
        std::sort(cand_.begin(), cand_.end());
        cand_.erase(std::unique(cand_.begin(), cand_.end()), cand_.end());
        for (int32_t id : cand_) {
            float& v = work_[id];
            v = v > 0.0f ? v / p.repetition_penalty : v * p.repetition_penalty;
        }
    }

    if (p.temperature == 0.0f) {
        int32_t best = -1;
        for (int32_t i = 0; i < n; ++i)
            if (work_[i] != ninf && (best < 0 || work_[i] > work_[best])) best = i;
        if (best < 0) throw std::invalid_argument(fmt("sample: none of the %d logits belongs to a sampleable token", (int)n));
        return best;
    }

    cand_.clear();
    for (int32_t i = 0; i < n; ++i) {
        if (work_[i] == ninf) continue;
        work_[i] /= p.temperature;
        cand_.push_back(i);
    }
    if (cand_.empty()) throw std::invalid_argument(fmt("sample: none of the %d logits belongs to a sampleable token", (int)n));
    // descending value, ties: lower id first
    auto higher = [&](int32_t a, int32_t b) { return work_[a] != work_[b] ? work_[a] > work_[b] : a < b; };

    if (p.top_k > 0 && (size_t)p.top_k < cand_.size()) {
        std::nth_element(cand_.begin(), cand_.begin() + (p.top_k - 1), cand_.end(), higher);
        const float kth = work_[cand_[p.top_k - 1]];
        cand_.erase(std::remove_if(cand_.begin(), cand_.end(), [&](int32_t id) { return work_[id] < kth; }),
                    cand_.end());
    }
    const bool use_top_p = p.top_p < 1.0f;
    if (use_top_p) std::sort(cand_.begin(), cand_.end(), higher);

    // unnormalised probabilities relative to the largest (exp(0) = 1 for it)
    float vmax = ninf;
    for (int32_t id : cand_) vmax = std::max(vmax, work_[id]);
    prob_.resize(cand_.size());
    double total = 0.0;
    for (size_t k = 0; k < cand_.size(); ++k) {
        const float v = work_[cand_[k]];
        // +inf logits: only the +inf ones stay possible, with equal weight
        prob_[k] = std::isinf(vmax) ? (v == vmax ? 1.0 : 0.0) : std::exp((double)v - (double)vmax);
        total += prob_[k];
    }
    if (use_top_p) {
        // keep an id while the mass of the ids above it is below top_p (at least one id)
        double above = 0.0;
        size_t keep = 0;
        while (keep < cand_.size() && (keep == 0 || above < (double)p.top_p * total)) above += prob_[keep++];
        cand_.resize(keep);
        prob_.resize(keep);
    }
    if (p.min_p > 0.0f) {
        // probability ratio to the most probable id (whose weight is 1)
        size_t w = 0;
        for (size_t k = 0; k < cand_.size(); ++k) {
            if (prob_[k] >= (double)p.min_p) {
                cand_[w] = cand_[k];
                prob_[w] = prob_[k];
                ++w;
            }
        }
        cand_.resize(w);
        prob_.resize(w);
    }
    total = 0.0;
    for (double q : prob_) total += q;
    const double u = rng_.uniform() * total;
    double acc = 0.0;
    int32_t last = cand_[0];  // rounding at the very top end: the last id with weight
    for (size_t k = 0; k < cand_.size(); ++k) {
        if (prob_[k] <= 0.0) continue;
        acc += prob_[k];
        last = cand_[k];
        if (u < acc) return cand_[k];
    }
    return last;
}

}  // namespace tg
