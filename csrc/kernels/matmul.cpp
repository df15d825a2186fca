// Baseline matmul for F32/F16/BF16 weights (plain C++; the quantized and SIMD paths extend this file).
#include "kernels/matmul.h"

#include <vector>

#include "errors.h"
#include "fp16.h"
#include "threadpool.h"

namespace tg {

bool matmul_supports(GgmlType t) {
    return t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16;
}

void prepare_weight(MatW& w) {
    if (!matmul_supports(w.type)) throw ModelError(fmt("weight type %s is not supported by the kernels", type_name(w.type)));
}

void dequantize_row(const MatW& w, int64_t row, float* out) {
    const int64_t k = w.n_in;
    switch (w.type) {
        case GgmlType::F32: {
            const float* p = (const float*)w.data + row * k;
            for (int64_t i = 0; i < k; i++) out[i] = p[i];
            break;
        }
        case GgmlType::F16: {
            const uint16_t* p = (const uint16_t*)w.data + row * k;
            for (int64_t i = 0; i < k; i++) out[i] = fp16_to_fp32(p[i]);
            break;
        }
        case GgmlType::BF16: {
            const uint16_t* p = (const uint16_t*)w.data + row * k;
            for (int64_t i = 0; i < k; i++) out[i] = bf16_to_fp32(p[i]);
            break;
        }
        default: throw ModelError(fmt("dequantize_row: unsupported type %s", type_name(w.type)));
    }
}

void matmul(const MatW& w, const float* x, int64_t n, float* y, const float* bias, ThreadPool& pool) {
    const int64_t k = w.n_in, m = w.n_out;
    pool.parallel_for(m, 16, [&](int64_t r0, int64_t r1, int) {
        std::vector<float> row(k);
        for (int64_t r = r0; r < r1; r++) {
            dequantize_row(w, r, row.data());
            for (int64_t i = 0; i < n; i++) {
                const float* xi = x + i * k;
                float acc = 0.f;
                for (int64_t j = 0; j < k; j++) acc += row[j] * xi[j];
                y[i * m + r] = acc + (bias ? bias[r] : 0.f);
            }
        }
    });
}

}  // namespace tg
