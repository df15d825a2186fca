// Checked reads of hyperparameters from GGUF metadata, shared by the model components.
// Each throws ModelError naming the key and the offending value (GGUFError when the key is missing or
// has the wrong type).
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include "errors.h"
#include "gguf.h"

namespace tg {

// An unsigned integer hyperparameter that must lie in [lo, hi].
inline int64_t meta_u32_in(const GGUFFile& f, const std::string& key, int64_t lo, int64_t hi) {
    const int64_t v = f.get_u32(key);
    if (v < lo || v > hi)
        throw ModelError(fmt("hyperparameter %s = %lld is outside the sane range [%lld, %lld]", key.c_str(),
                             (long long)v, (long long)lo, (long long)hi));
    return v;
}

// A normalisation epsilon: finite, positive, at most 1.
inline float meta_eps(const GGUFFile& f, const std::string& key) {
    const float e = f.get_f32(key);
    if (!(e > 0.f) || !std::isfinite(e) || e > 1.f)
        throw ModelError(fmt("hyperparameter %s = %g must be a small positive number", key.c_str(), (double)e));
    return e;
}

// The same where the key is optional, with a default.
inline float meta_eps_or(const GGUFFile& f, const std::string& key, float def) {
    return f.has(key) ? meta_eps(f, key) : def;
}

// `what` must be divisible by `by` (head counts into widths, patch size into image size).
inline void meta_divides(const char* by_key, int64_t by, const char* what_key, int64_t what) {
    if (by <= 0 || what % by != 0)
        throw ModelError(fmt("%s = %lld does not divide %s = %lld", by_key, (long long)by, what_key, (long long)what));
}

}  // namespace tg
