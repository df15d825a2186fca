#include "kernels/ops.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "fp16.h"
#include "kernels/ops_simd.h"
#include "kernels/vecmath.h"
#include "threadpool.h"

namespace tg {

void layernorm(const float* x, float* y, int64_t n, const float* w, const float* b, float eps) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += x[i];
    const float mean = (float)(sum / n);
    double var = 0.0;
    for (int64_t i = 0; i < n; i++) {
        float d = x[i] - mean;
        var += (double)d * d;
    }
    const float inv = 1.0f / std::sqrt((float)(var / n) + eps);
    for (int64_t i = 0; i < n; i++) {
        float v = (x[i] - mean) * inv;
        if (w) v *= w[i];
        if (b) v += b[i];
        y[i] = v;
    }
}

void rmsnorm(const float* x, float* y, int64_t n, const float* w, float eps) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    const float inv = 1.0f / std::sqrt((float)(ss / n) + eps);
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * inv * (w ? w[i] : 1.0f);
}

void layernorm_rows(const float* x, float* y, int64_t rows, int64_t n, const float* w, const float* b, float eps,
                    ThreadPool& pool) {
    pool.parallel_for(rows, 1, [&](int64_t r0, int64_t r1, int) {
        for (int64_t r = r0; r < r1; r++) layernorm(x + r * n, y + r * n, n, w, b, eps);
    });
}

void gelu_erf(float* x, int64_t n) { vecmath().gelu_erf(x, n); }

void gelu_tanh(float* x, int64_t n) {
    const float c = 0.79788456080286536f;  // sqrt(2/pi)
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + std::tanh(c * (v + 0.044715f * v * v * v)));
    }
}

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

template <bool F16>
static void attention_impl(const float* q, int64_t T, int64_t q_stride, const void* k, const void* v,
                           int64_t kv_stride, int64_t n_kv, bool causal, int64_t pos0, int n_head, int n_head_kv,
                           int hd, float scale, float* out, int64_t out_stride, ThreadPool& pool) {
    const size_t esz = F16 ? 2 : 4;
    const int group = n_head / n_head_kv;
    const AttnKernels& K = attn_kernels();
    pool.parallel_for(T * n_head, 1, [&](int64_t i0, int64_t i1, int) {
        std::vector<float> att((size_t)n_kv);
        for (int64_t i = i0; i < i1; i++) {
            const int64_t t = i / n_head;
            const int h = (int)(i % n_head), hk = h / group;
            const int64_t len = causal ? std::min<int64_t>(n_kv, pos0 + t + 1) : n_kv;
            const float* qh = q + t * q_stride + (int64_t)h * hd;
            const uint8_t* kb = (const uint8_t*)k + (size_t)hk * hd * esz;
            const uint8_t* vb = (const uint8_t*)v + (size_t)hk * hd * esz;
            float mx = -INFINITY;
            for (int64_t j = 0; j < len; j++) {
                const void* kr = kb + (size_t)j * kv_stride * esz;
                float s = (F16 ? K.dot_f16(qh, (const uint16_t*)kr, hd) : K.dot_f32(qh, (const float*)kr, hd)) * scale;
                att[j] = s;
                mx = std::max(mx, s);
            }
            double sum = 0.0;
            for (int64_t j = 0; j < len; j++) {
                att[j] = std::exp(att[j] - mx);
                sum += att[j];
            }
            const float inv = (float)(1.0 / sum);
            float* o = out + t * out_stride + (int64_t)h * hd;
            std::fill(o, o + hd, 0.f);
            for (int64_t j = 0; j < len; j++) {
                const void* vr = vb + (size_t)j * kv_stride * esz;
                if (F16) K.axpy_f16(o, att[j] * inv, (const uint16_t*)vr, hd);
                else K.axpy_f32(o, att[j] * inv, (const float*)vr, hd);
            }
        }
    });
}

void attention(const float* q, int64_t T, int64_t q_stride, const void* k, const void* v, int64_t kv_stride,
               bool kv_f16, int64_t n_kv, bool causal, int64_t pos0, int n_head, int n_head_kv, int hd,
               float scale, float* out, int64_t out_stride, ThreadPool& pool) {
    if (kv_f16)
        attention_impl<true>(q, T, q_stride, k, v, kv_stride, n_kv, causal, pos0, n_head, n_head_kv, hd, scale, out,
                             out_stride, pool);
    else
        attention_impl<false>(q, T, q_stride, k, v, kv_stride, n_kv, causal, pos0, n_head, n_head_kv, hd, scale, out,
                              out_stride, pool);
}

}  // namespace tg
