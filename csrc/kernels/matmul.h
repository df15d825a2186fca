// The matrix-product entry points of the engine. Every model component multiplies through here.
//
//   Y[n, n_out] = X[n, n_in] · W[n_out, n_in]ᵀ (+ bias[n_out])
//
// W is a weight in its GGUF storage type (rows of n_in elements, row-major, usually a zero-copy view
// into the file mapping). X and Y are float32 row-major. n == 1 is the decode (matrix-vector) case.
// The result of each output element must not depend on the thread count or on n.
#pragma once
#include <cstdint>
#include <memory>

#include "ggml_type.h"

namespace tg {

class ThreadPool;

struct MatW {
    GgmlType type = GgmlType::F32;
    int64_t n_out = 0, n_in = 0;
    const void* data = nullptr;            // standard GGML layout, n_out rows
    std::shared_ptr<const void> repacked;  // optional SIMD layout built once by prepare_weight
};

// Is this storage type usable as a matmul weight?
bool matmul_supports(GgmlType t);

// Called once per weight at load (may build `repacked`). Never changes `data`.
void prepare_weight(MatW& w);

void matmul(const MatW& w, const float* x, int64_t n, float* y, const float* bias, ThreadPool& pool);

// Row `row` of W as float32 (embedding lookup). out has n_in floats.
void dequantize_row(const MatW& w, int64_t row, float* out);

}  // namespace tg
