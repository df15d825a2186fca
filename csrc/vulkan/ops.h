// The backend's operations: each records its dispatches into a Sequence (nothing runs until the sequence
// does), on buffers of the sequence's device. Shapes are checked against the buffers' sizes here, so a
// shader never reads or writes past a buffer. Rows are float32 and contiguous unless a stride is given.
#pragma once
#include <cstdint>

#include "ggml_type.h"
#include "vulkan/device.h"

namespace tg {
namespace vk {

// The weight types the mat-vec shaders read from GGUF blocks as they are.
bool matmul_supports(GgmlType t);

// y[rows][n_out] = x[rows][n_in] . W[n_out][n_in]^T (+ bias[n_out]); W holds the GGUF rows of type t.
void matmul(Sequence& s, GgmlType t, const Buffer& w, int64_t n_out, int64_t n_in, const Buffer& x, int64_t rows,
            Buffer& y, const Buffer* bias);
// Layer norm / RMS norm of each row; w and b may be null (identity).
void layernorm(Sequence& s, const Buffer& x, Buffer& y, int64_t rows, int64_t n, const Buffer* w, const Buffer* b,
               float eps);
void rmsnorm(Sequence& s, const Buffer& x, Buffer& y, int64_t rows, int64_t n, const Buffer* w, float eps);
// In place over n floats: exact GELU, or the tanh form.
void gelu(Sequence& s, Buffer& x, int64_t n, bool tanh_form);
// In-place softmax of each row.
void softmax(Sequence& s, Buffer& x, int64_t rows, int64_t n);
// NeoX rotary embedding of the first n_rot dims of each head; pos: int32 per row, cos/sin: [n_pos][n_rot/2].
void rope_neox(Sequence& s, Buffer& x, int64_t rows, int64_t row_stride, int n_head, int head_dim, int n_rot,
               const Buffer& pos, const Buffer& cos, const Buffer& sin, int64_t n_pos);
// y[i] = a[i] + b[i % nb] for i < n (y may be a).
void add(Sequence& s, const Buffer& a, const Buffer& b, Buffer& y, int64_t n, int64_t nb);

}  // namespace vk
}  // namespace tg
