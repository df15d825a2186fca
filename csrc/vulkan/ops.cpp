#include "vulkan/ops.h"

#include <algorithm>
#include <limits>

#include "errors.h"

namespace tg {
namespace vk {

namespace {

constexpr int64_t kRowsPerGroup = 8;  // NR of matvec.comp

// The shaders index with 32-bit integers.
uint32_t u32(int64_t v, const char* what) {
    if (v < 0 || v > (int64_t)std::numeric_limits<uint32_t>::max())
        throw VulkanError(fmt("%s = %lld is outside the 32-bit range the shaders index with", what, (long long)v));
    return (uint32_t)v;
}

void need(const Buffer& b, uint64_t bytes, const char* what) {
    if (b.size() < bytes)
        throw VulkanError(fmt("%s: the buffer holds %llu bytes, the operation needs %llu", what,
                              (unsigned long long)b.size(), (unsigned long long)bytes));
}

// Workgroups for `items` work items of one workgroup each, spread over x and y (x holds at most 65535 on
// some devices); the shaders flatten them back (flat_group in common.glsl) and skip the excess.
void grid(Device& d, int64_t items, uint32_t& gx, uint32_t& gy) {
    const int64_t max_x = std::min<int64_t>(d.info().max_workgroup_count[0], 65535);
    gx = (uint32_t)std::max<int64_t>(1, std::min(items, max_x));
    gy = (uint32_t)std::max<int64_t>(1, (items + gx - 1) / gx);
    if (gy > d.info().max_workgroup_count[1])
        throw VulkanError(fmt("%lld workgroups exceed the device's grid", (long long)items));
}

const char* matvec_shader(GgmlType t) {
    switch (t) {
        case GgmlType::F32: return "matvec_f32";
        case GgmlType::F16: return "matvec_f16";
        case GgmlType::Q8_0: return "matvec_q8_0";
        case GgmlType::Q4_0: return "matvec_q4_0";
        case GgmlType::Q4_K: return "matvec_q4_k";
        case GgmlType::Q6_K: return "matvec_q6_k";
        default: return nullptr;
    }
}

}  // namespace

bool matmul_supports(GgmlType t) { return matvec_shader(t) != nullptr; }

void matmul(Sequence& s, GgmlType t, const Buffer& w, int64_t n_out, int64_t n_in, const Buffer& x, int64_t rows,
            Buffer& y, const Buffer* bias) {
    const char* shader = matvec_shader(t);
    if (!shader) throw VulkanError(fmt("the Vulkan backend has no matrix product for %s weights", type_name(t)));
    const int64_t blk = type_traits((uint32_t)t).block;
    // The shaders take quantized rows 32 values at a time (a block, or an eighth of a K-quant super-block).
    if (n_out <= 0 || n_in <= 0 || rows <= 0 || n_in % blk != 0 || (blk > 1 && n_in % 32 != 0))
        throw VulkanError(fmt("bad product shape: %lld rows of %lld into %lld outputs with %s weights (block %lld)",
                              (long long)rows, (long long)n_in, (long long)n_out, type_name(t), (long long)blk));
    const uint64_t rb = row_bytes(t, n_in);
    need(w, rb * (uint64_t)n_out, "matmul weights");
    need(x, 4ull * rows * n_in, "matmul input");
    need(y, 4ull * rows * n_out, "matmul output");
    if (bias) need(*bias, 4ull * n_out, "matmul bias");
    u32((int64_t)(rb * (uint64_t)n_out), "weight bytes");
    u32(rows * std::max(n_in, n_out), "activation elements");
    Device& d = s.device();
    Pipeline& p = d.pipeline(shader, 4, 6 * 4);
    const int64_t row_groups = (rows + kRowsPerGroup - 1) / kRowsPerGroup;
    if (row_groups > d.info().max_workgroup_count[1])
        throw VulkanError(fmt("%lld rows exceed the device's grid", (long long)rows));
    const int64_t max_x = d.info().max_workgroup_count[0];
    for (int64_t o0 = 0; o0 < n_out; o0 += max_x) {
        const uint32_t push[6] = {(uint32_t)n_in, (uint32_t)n_out, (uint32_t)rows, (uint32_t)rb, (uint32_t)o0,
                                  bias ? 1u : 0u};
        const uint32_t gx = (uint32_t)std::min(max_x, n_out - o0);
        s.dispatch(p, {&w, &x, bias ? bias : &d.dummy(), &y}, push, sizeof push, gx, (uint32_t)row_groups);
    }
}

namespace {

struct NormPush {
    uint32_t n, rows;
    float eps;
    uint32_t has_w, has_b;
};

void norm(Sequence& s, const char* shader, const Buffer& x, Buffer& y, int64_t rows, int64_t n, const Buffer* w,
          const Buffer* b, float eps) {
    if (rows <= 0 || n <= 0) throw VulkanError(fmt("%s of %lld rows of %lld", shader, (long long)rows, (long long)n));
    need(x, 4ull * rows * n, shader);
    need(y, 4ull * rows * n, shader);
    if (w) need(*w, 4ull * n, shader);
    if (b) need(*b, 4ull * n, shader);
    u32(rows * n, "norm elements");
    Device& d = s.device();
    Pipeline& p = d.pipeline(shader, 4, sizeof(NormPush));
    const NormPush push{(uint32_t)n, (uint32_t)rows, eps, w ? 1u : 0u, b ? 1u : 0u};
    uint32_t gx, gy;
    grid(d, rows, gx, gy);
    s.dispatch(p, {&x, w ? w : &d.dummy(), b ? b : &d.dummy(), &y}, &push, sizeof push, gx, gy);
}

}  // namespace

void layernorm(Sequence& s, const Buffer& x, Buffer& y, int64_t rows, int64_t n, const Buffer* w, const Buffer* b,
               float eps) {
    norm(s, "layernorm", x, y, rows, n, w, b, eps);
}

void rmsnorm(Sequence& s, const Buffer& x, Buffer& y, int64_t rows, int64_t n, const Buffer* w, float eps) {
    norm(s, "rmsnorm", x, y, rows, n, w, nullptr, eps);
}

void gelu(Sequence& s, Buffer& x, int64_t n, bool tanh_form) {
    const char* shader = tanh_form ? "gelu_tanh" : "gelu_erf";
    if (n <= 0) throw VulkanError(fmt("%s of %lld values", shader, (long long)n));
    need(x, 4ull * n, shader);
    Device& d = s.device();
    Pipeline& p = d.pipeline(shader, 1, 4);
    const uint32_t push = u32(n, "gelu elements");
    uint32_t gx, gy;
    grid(d, (n + d.workgroup() - 1) / d.workgroup(), gx, gy);
    s.dispatch(p, {&x}, &push, sizeof push, gx, gy);
}

void softmax(Sequence& s, Buffer& x, int64_t rows, int64_t n) {
    if (rows <= 0 || n <= 0) throw VulkanError(fmt("softmax of %lld rows of %lld", (long long)rows, (long long)n));
    need(x, 4ull * rows * n, "softmax");
    Device& d = s.device();
    Pipeline& p = d.pipeline("softmax", 1, 8);
    u32(rows * n, "softmax elements");
    const uint32_t push[2] = {(uint32_t)n, (uint32_t)rows};
    uint32_t gx, gy;
    grid(d, rows, gx, gy);
    s.dispatch(p, {&x}, push, sizeof push, gx, gy);
}

void rope_neox(Sequence& s, Buffer& x, int64_t rows, int64_t row_stride, int n_head, int head_dim, int n_rot,
               const Buffer& pos, const Buffer& cos, const Buffer& sin, int64_t n_pos) {
    if (rows <= 0 || n_head <= 0 || head_dim <= 0 || n_rot < 2 || n_rot % 2 || n_rot > head_dim ||
        row_stride < (int64_t)n_head * head_dim || n_pos <= 0)
        throw VulkanError(fmt("rope_neox: %lld rows (stride %lld) of %d heads of %d, n_rot %d, %lld positions",
                              (long long)rows, (long long)row_stride, n_head, head_dim, n_rot, (long long)n_pos));
    need(x, 4ull * ((rows - 1) * row_stride + (int64_t)n_head * head_dim), "rope_neox rows");
    need(pos, 4ull * rows, "rope_neox positions");
    need(cos, 4ull * n_pos * (n_rot / 2), "rope_neox cos table");
    need(sin, 4ull * n_pos * (n_rot / 2), "rope_neox sin table");
    const int64_t items = rows * n_head * (n_rot / 2);
    u32(rows * row_stride, "rope elements");
    Device& d = s.device();
    Pipeline& p = d.pipeline("rope_neox", 4, 6 * 4);
    const uint32_t push[6] = {(uint32_t)rows, (uint32_t)n_head, (uint32_t)head_dim, (uint32_t)n_rot,
                              (uint32_t)row_stride, u32(n_pos, "rope positions")};
    uint32_t gx, gy;
    grid(d, (items + d.workgroup() - 1) / d.workgroup(), gx, gy);
    s.dispatch(p, {&x, &pos, &cos, &sin}, push, sizeof push, gx, gy);
}

void add(Sequence& s, const Buffer& a, const Buffer& b, Buffer& y, int64_t n, int64_t nb) {
    if (n <= 0 || nb <= 0 || n % nb != 0)
        throw VulkanError(fmt("add of %lld values and %lld (a whole number of b's rows is needed)", (long long)n,
                              (long long)nb));
    need(a, 4ull * n, "add a");
    need(b, 4ull * nb, "add b");
    need(y, 4ull * n, "add y");
    Device& d = s.device();
    Pipeline& p = d.pipeline("add", 3, 8);
    const uint32_t push[2] = {u32(n, "add elements"), (uint32_t)nb};
    uint32_t gx, gy;
    grid(d, (n + d.workgroup() - 1) / d.workgroup(), gx, gy);
    s.dispatch(p, {&a, &b, &y}, push, sizeof push, gx, gy);
}

}  // namespace vk
}  // namespace tg
