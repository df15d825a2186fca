#include "kernels/ops.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/vecmath.h"
#include "exec.h"

namespace tg {

// Sums in eight double accumulators, lane l taking elements l, l + 8, ... and the lanes combined
// in a fixed tree: a set order (so the result does not depend on how the compiler vectorizes it)
// without the serial chain of one accumulator.
namespace {
template <typename F>
double sum8(int64_t n, F term) {
    double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) s[l] += term(i + l);
    for (int l = 0; i < n; i++, l++) s[l] += term(i);
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}
}  // namespace

void layernorm(const float* x, float* y, int64_t n, const float* w, const float* b, float eps) {
    const float mean = (float)(sum8(n, [x](int64_t i) { return (double)x[i]; }) / n);
    const double var = sum8(n, [x, mean](int64_t i) {
        const float d = x[i] - mean;
        return (double)d * d;
    });
    const float inv = 1.0f / std::sqrt((float)(var / n) + eps);
    for (int64_t i = 0; i < n; i++) {
        float v = (x[i] - mean) * inv;
        if (w) v *= w[i];
        if (b) v += b[i];
        y[i] = v;
    }
}

void rmsnorm(const float* x, float* y, int64_t n, const float* w, float eps) {
    const double ss = sum8(n, [x](int64_t i) { return (double)x[i] * x[i]; });
    const float inv = 1.0f / std::sqrt((float)(ss / n) + eps);
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * inv * (w ? w[i] : 1.0f);
}

void layernorm_rows(const float* x, float* y, int64_t rows, int64_t n, const float* w, const float* b, float eps,
                    Exec& ex) {
    ex.parallel_for(rows, 1, [&](int64_t r0, int64_t r1, int) {
        for (int64_t r = r0; r < r1; r++) layernorm(x + r * n, y + r * n, n, w, b, eps);
    });
}

void gelu_erf(float* x, int64_t n) { vecmath().gelu_erf(x, n); }

void gelu_tanh(float* x, int64_t n) { vecmath().gelu_tanh(x, n); }

void add_inplace(float* y, const float* x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

void softmax(float* x, int64_t n) {
    const VecMath& M = vecmath();
    const float inv = 1.0f / M.exp_sum(x, n, M.max(x, n));
    for (int64_t i = 0; i < n; i++) x[i] = x[i] * inv;
}

void rope_neox(float* x, int n_rot, const float* cos, const float* sin) {
    const int half = n_rot / 2;
    for (int i = 0; i < half; i++) {
        float a = x[i], b = x[i + half];
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = b * cos[i] + a * sin[i];
    }
}

}  // namespace tg
