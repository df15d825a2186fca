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

// Which shader takes a product: matvec.comp (decode's few rows: a workgroup per output, 8 rows at a time)
// or matmul.comp (many rows: tiles of 64 rows x 64 outputs, each weight read once per tile). Auto picks the
// tiled one from tiled_min_rows() rows. The two sum in different orders: their results differ in the last
// bits, so a row's bits depend on the kernel its product took (on the rows it shares the product with).
enum class ProductKernel { Auto, MatVec, Tiled };
constexpr int64_t kTiledMinRows = 16;
// kTiledMinRows, or TINYGPTV_VK_TILED_ROWS where set (tests: 1 puts every product on the tiled shader, a
// large value every one on matvec).
int64_t tiled_min_rows();
bool product_is_tiled(int64_t rows, ProductKernel kernel = ProductKernel::Auto);

// y[rows][n_out] = x[rows][n_in] . W[n_out][n_in]^T (+ bias[n_out]); W holds the GGUF rows of type t.
void matmul(Sequence& s, GgmlType t, const Buffer& w, int64_t n_out, int64_t n_in, const Buffer& x, int64_t rows,
            Buffer& y, const Buffer* bias);
// Outputs [o_begin, o_end) of a product whose weight rows are split over buffers: w holds rows
// o_begin..o_end-1. y's rows are y_stride floats apart and output o goes to column y_col0 + o; bias (of the
// whole product) is indexed by o.
void matmul_rows(Sequence& s, GgmlType t, const Buffer& w, int64_t o_begin, int64_t o_end, int64_t n_in,
                 const Buffer& x, int64_t rows, Buffer& y, int64_t y_stride, int64_t y_col0, const Buffer* bias,
                 ProductKernel kernel = ProductKernel::Auto);
// Layer norm / RMS norm of each row; w and b may be null (identity).
void layernorm(Sequence& s, const Buffer& x, Buffer& y, int64_t rows, int64_t n, const Buffer* w, const Buffer* b,
               float eps);
void rmsnorm(Sequence& s, const Buffer& x, Buffer& y, int64_t rows, int64_t n, const Buffer* w, float eps);
// Layer norm, in place, of n_per segments of n floats in each of `groups` rows stride floats apart, the
// first at offset off: the q or k heads inside [q | k | v] rows.
void layernorm_heads(Sequence& s, Buffer& x, int64_t groups, int64_t n_per, int64_t n, int64_t stride, int64_t off,
                     const Buffer* w, const Buffer* b, float eps);
// In place over n floats: exact GELU, or the tanh form.
void gelu(Sequence& s, Buffer& x, int64_t n, bool tanh_form);
// In-place softmax of each row.
void softmax(Sequence& s, Buffer& x, int64_t rows, int64_t n);
// NeoX rotary embedding of the first n_rot dims of each head; pos: int32 per row, cos/sin: [n_pos][n_rot/2].
void rope_neox(Sequence& s, Buffer& x, int64_t rows, int64_t row_stride, int n_head, int head_dim, int n_rot,
               const Buffer& pos, const Buffer& cos, const Buffer& sin, int64_t n_pos);
// x[r] = row tok[r] of an embedding of n_embd columns and type t (for tok[r] in [row0, row0 + n_held), the
// rows w holds); other rows of x are left as they are.
void embed(Sequence& s, GgmlType t, const Buffer& w, int64_t row0, int64_t n_held, int64_t n_embd, const Buffer& tok,
           int64_t rows, Buffer& x);
// Keys and values of rows [row0, row0 + rows) of the [q | k | v] buffer (k at column k_col, v after it) into
// positions p0.. of a cache slot's layer buffer (F16: keys [n_ctx][kv_dim], then values). p0 is pos[row0]
// (pos: int32 per row), read when the commands run: the recording holds no position, so it replays at any.
void kv_write(Sequence& s, const Buffer& qkv, int64_t row0, int64_t rows, int64_t qkv_stride, int64_t k_col,
              int64_t kv_dim, Buffer& kv, const Buffer& pos, int64_t n_ctx);
// Causal attention of those rows (queries at column 0, positions pos[row0]..) against the slot; head outputs
// into rows of o (o_stride apart). With part (scratch of attention_part_floats at n_ctx keys) and chunk > 0,
// the keys are split into chunks of `chunk` taken by workgroups of their own, as many as n_ctx takes (those
// past a row's keys write empty parts), then merged: for decode, where one row would keep only n_head
// workgroups busy. A row's result depends on chunk, never on the other rows.
void attention(Sequence& s, const Buffer& qkv, int64_t row0, int64_t rows, int64_t qkv_stride, const Buffer& kv,
               const Buffer& pos, int64_t n_ctx, int n_head, int n_head_kv, int head_dim, float scale, Buffer& o,
               int64_t o_stride, Buffer* part = nullptr, int64_t chunk = 0);
// Floats of the split pass's scratch for `rows` rows of n_head heads and n_split splits.
inline int64_t attention_part_floats(int64_t rows, int n_head, int head_dim, int64_t n_split) {
    return rows * n_head * n_split * (head_dim + 2);
}
// Full (non-causal) attention of n_q query rows against n_kv key/value rows, all float32: row r of q starts
// at q_off + r * q_stride (head h at h * head_dim after that), likewise k and v (q, k and v may be one buffer);
// head outputs into rows of o, o_stride apart. The image path's self- and cross-attention.
void attention_full(Sequence& s, const Buffer& q, int64_t q_stride, int64_t q_off, const Buffer& k, int64_t k_stride,
                    int64_t k_off, const Buffer& v, int64_t v_stride, int64_t v_off, int64_t n_q, int64_t n_kv,
                    int n_head, int head_dim, float scale, Buffer& o, int64_t o_stride);
// The ViT's patch gather: a normalised [3][S][S] image into the [G * G][3 * P * P] patch matrix (rows in
// grid order, each in the conv kernel's (c, ky, kx) order), G = S / P.
void patches(Sequence& s, const Buffer& pixels, int64_t image_size, int64_t patch_size, Buffer& out);
// y[i] = a[i] + b[i % nb] for i < n (y may be a).
void add(Sequence& s, const Buffer& a, const Buffer& b, Buffer& y, int64_t n, int64_t nb);

}  // namespace vk
}  // namespace tg
