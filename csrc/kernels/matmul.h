// The matrix-product entry points of the engine. Every model component multiplies through here.
//
//   Y[n, n_out] = X[n, n_in] · W[n_out, n_in]ᵀ (+ bias[n_out])
//
// W is a weight in its GGUF storage type (rows of n_in elements, row-major, usually a zero-copy view
// into the file mapping). X and Y are float32 row-major. n == 1 is the decode (matrix-vector) case.
// The result of each output element must not depend on the thread count or on n.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "ggml_type.h"

namespace tg {

class Exec;

struct MatW {
    GgmlType type = GgmlType::F32;
    int64_t n_out = 0, n_in = 0;
    const void* data = nullptr;            // standard GGML layout, n_out rows
    std::shared_ptr<const void> repacked;  // optional SIMD layout built once by prepare_weight
};

// Is this storage type usable as a matmul weight?
bool matmul_supports(GgmlType t);

// Called once per weight at load: validates the shape and, when a SIMD path is active, builds
// `repacked` (an interleaved copy, see kernels/matmul_impl.h: the same size as the data for most
// types, Q4_K +2.8%, rows padded to a multiple of 16). Never changes `data`. After this, matmul
// reads only `repacked` (dequantize_row still reads `data`), so a loader may drop the file pages
// of `data` from memory (madvise MADV_DONTNEED on a read-only file mapping).
// Throws ModelError for an unsupported type or a row length that is not a multiple of the block.
void prepare_weight(MatW& w);
// The same, repacking on the Exec's threads (load time).
void prepare_weight(MatW& w, Exec& ex);
// The same with the plain element-by-element repack, which the fast one must match byte for byte
// (tests).
void prepare_weight_reference(MatW& w);
// Bytes of w.repacked (0 without one).
size_t repacked_bytes(const MatW& w);

// Quantized weights multiply int8 activations (x quantized on the fly to Q8_0-style blocks for
// Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/IQ4_NL, to Q8_K for Q2_K/Q3_K/Q4_K/Q5_K/Q6_K/IQ4_XS) with integer dot products; float weights
// use float FMAs. Q5_0 weights are widened to Q8_0's repacked layout at load (1.55x the file's
// bytes) and run Q8_0's kernels, Q3_K weights to Q6_K's (1.9x) and run Q6_K's, Q2_K weights to Q6_K's
// plus their mins (2.7x) and run Q6_K's with a min term. (A type without SIMD kernels on the active path would run the
// scalar kernels over the standard layout, prepare_weight building no `repacked` for it.) Every output is
// computed with the same arithmetic on every instruction set and thread count (bit-identical).
// A weight without `repacked` (prepare_weight not called) is repacked group by group on every call:
// same results, slower. y must not overlap x or bias.
void matmul(const MatW& w, const float* x, int64_t n, float* y, const float* bias, Exec& ex);

// Row `row` of W as float32 (embedding lookup). out has n_in floats.
void dequantize_row(const MatW& w, int64_t row, float* out);

}  // namespace tg
