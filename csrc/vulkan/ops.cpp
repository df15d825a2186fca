#include "vulkan/ops.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>

#include "errors.h"

namespace tg {
namespace vk {

namespace {

constexpr int64_t kRowsPerGroup = 8;   // NR of matvec.comp
constexpr int64_t kTileRows = 64;      // BM of matmul.comp
constexpr int64_t kTileOutputs = 64;   // BN of matmul.comp

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

// The tiled shader of each type matvec_shader has (the same variants, built from matmul.comp).
std::string tiled_shader(GgmlType t) { return std::string("matmul") + (matvec_shader(t) + 6); }

}  // namespace

bool matmul_supports(GgmlType t) { return matvec_shader(t) != nullptr; }

int64_t tiled_min_rows() {
    const char* v = std::getenv("TINYGPTV_VK_TILED_ROWS");
    if (!v || !*v) return kTiledMinRows;
    char* end = nullptr;
    const long long n = std::strtoll(v, &end, 10);
    if (*end != '\0' || n < 1)
        throw VulkanError(fmt("TINYGPTV_VK_TILED_ROWS=%s: expected a whole number of rows, at least 1", v));
    return (int64_t)n;
}

bool product_is_tiled(int64_t rows, ProductKernel kernel) {
    switch (kernel) {
        case ProductKernel::MatVec: return false;
        case ProductKernel::Tiled: return true;
        default: return rows >= tiled_min_rows();
    }
}

void matmul(Sequence& s, GgmlType t, const Buffer& w, int64_t n_out, int64_t n_in, const Buffer& x, int64_t rows,
            Buffer& y, const Buffer* bias) {
    matmul_rows(s, t, w, 0, n_out, n_in, x, rows, y, n_out, 0, bias);
}

void matmul_rows(Sequence& s, GgmlType t, const Buffer& w, int64_t o_begin, int64_t o_end, int64_t n_in,
                 const Buffer& x, int64_t rows, Buffer& y, int64_t y_stride, int64_t y_col0, const Buffer* bias,
                 ProductKernel kernel) {
    const char* shader = matvec_shader(t);
    if (!shader) throw VulkanError(fmt("the Vulkan backend has no matrix product for %s weights", type_name(t)));
    const int64_t blk = type_traits((uint32_t)t).block;
    const int64_t n_out = o_end - o_begin;
    // The shaders take quantized rows 32 values at a time (a block, or an eighth of a K-quant super-block).
    if (o_begin < 0 || n_out <= 0 || n_in <= 0 || rows <= 0 || n_in % blk != 0 || (blk > 1 && n_in % 32 != 0) ||
        y_col0 < 0 || y_stride < y_col0 + o_end)
        throw VulkanError(fmt("bad product shape: %lld rows of %lld into outputs [%lld, %lld) (row stride %lld, "
                              "column %lld) with %s weights (block %lld)",
                              (long long)rows, (long long)n_in, (long long)o_begin, (long long)o_end,
                              (long long)y_stride, (long long)y_col0, type_name(t), (long long)blk));
    const uint64_t rb = row_bytes(t, n_in);
    need(w, rb * (uint64_t)n_out, "matmul weights");
    need(x, 4ull * rows * n_in, "matmul input");
    need(y, 4ull * ((rows - 1) * y_stride + y_col0 + o_end), "matmul output");
    if (bias) need(*bias, 4ull * o_end, "matmul bias");
    u32((int64_t)(rb * (uint64_t)n_out), "weight bytes");
    u32(rows * std::max(n_in, y_stride), "activation elements");
    Device& d = s.device();
    const bool tiled = product_is_tiled(rows, kernel);
    // matvec: one workgroup per output and 8 rows; tiled: one per tile of 64 outputs and 64 rows.
    const int64_t per_x = tiled ? kTileOutputs : 1, per_y = tiled ? kTileRows : kRowsPerGroup;
    Pipeline& p = tiled ? d.pipeline(tiled_shader(t), 4, 9 * 4) : d.pipeline(shader, 4, 9 * 4);
    const int64_t row_groups = (rows + per_y - 1) / per_y;
    if (row_groups > d.info().max_workgroup_count[1])
        throw VulkanError(fmt("%lld rows exceed the device's grid", (long long)rows));
    const int64_t max_x = d.info().max_workgroup_count[0];
    for (int64_t o0 = o_begin; o0 < o_end; o0 += max_x * per_x) {
        const uint32_t push[9] = {(uint32_t)n_in, (uint32_t)o_end, (uint32_t)rows, (uint32_t)rb, (uint32_t)o0,
                                  bias ? 1u : 0u, (uint32_t)o_begin, (uint32_t)y_stride, (uint32_t)y_col0};
        const uint32_t gx = (uint32_t)std::min(max_x, (o_end - o0 + per_x - 1) / per_x);
        s.dispatch(p, {&w, &x, bias ? bias : &d.dummy(), &y}, push, sizeof push, gx, (uint32_t)row_groups);
    }
}

namespace {

struct NormPush {
    uint32_t n, rows;
    float eps;
    uint32_t has_w, has_b;
    uint32_t per, stride, off;  // where row r starts: off + (r / per) * stride + (r % per) * n
};

void norm(Sequence& s, const char* shader, const Buffer& x, Buffer& y, int64_t rows, int64_t n, const Buffer* w,
          const Buffer* b, float eps, int64_t per, int64_t stride, int64_t off) {
    if (rows <= 0 || n <= 0 || per <= 0 || stride < per * n || off < 0)
        throw VulkanError(fmt("%s of %lld rows of %lld (%lld per group, stride %lld, offset %lld)", shader,
                              (long long)rows, (long long)n, (long long)per, (long long)stride, (long long)off));
    const int64_t groups = (rows + per - 1) / per;
    const uint64_t span = 4ull * (off + (groups - 1) * stride + per * n);
    need(x, span, shader);
    need(y, span, shader);
    if (w) need(*w, 4ull * n, shader);
    if (b) need(*b, 4ull * n, shader);
    u32((int64_t)(span / 4), "norm elements");
    Device& d = s.device();
    Pipeline& p = d.pipeline(shader, 4, sizeof(NormPush));
    const NormPush push{(uint32_t)n, (uint32_t)rows, eps, w ? 1u : 0u, b ? 1u : 0u,
                        (uint32_t)per, (uint32_t)stride, (uint32_t)off};
    uint32_t gx, gy;
    grid(d, rows, gx, gy);
    s.dispatch(p, {&x, w ? w : &d.dummy(), b ? b : &d.dummy(), &y}, &push, sizeof push, gx, gy);
}

}  // namespace

void layernorm(Sequence& s, const Buffer& x, Buffer& y, int64_t rows, int64_t n, const Buffer* w, const Buffer* b,
               float eps) {
    norm(s, "layernorm", x, y, rows, n, w, b, eps, 1, n, 0);
}

void layernorm_heads(Sequence& s, Buffer& x, int64_t groups, int64_t n_per, int64_t n, int64_t stride, int64_t off,
                     const Buffer* w, const Buffer* b, float eps) {
    norm(s, "layernorm", x, x, groups * n_per, n, w, b, eps, n_per, stride, off);
}

void rmsnorm(Sequence& s, const Buffer& x, Buffer& y, int64_t rows, int64_t n, const Buffer* w, float eps) {
    norm(s, "rmsnorm", x, y, rows, n, w, nullptr, eps, 1, n, 0);
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

namespace {

const char* embed_shader(GgmlType t) {
    switch (t) {
        case GgmlType::F32: return "embed_f32";
        case GgmlType::F16: return "embed_f16";
        case GgmlType::Q8_0: return "embed_q8_0";
        case GgmlType::Q4_0: return "embed_q4_0";
        case GgmlType::Q4_K: return "embed_q4_k";
        case GgmlType::Q6_K: return "embed_q6_k";
        default: return nullptr;
    }
}

}  // namespace

void embed(Sequence& s, GgmlType t, const Buffer& w, int64_t row0, int64_t n_held, int64_t n_embd, const Buffer& tok,
           int64_t rows, Buffer& x) {
    const char* shader = embed_shader(t);
    if (!shader) throw VulkanError(fmt("the Vulkan backend has no embedding gather for %s weights", type_name(t)));
    const int64_t blk = type_traits((uint32_t)t).block;
    if (row0 < 0 || n_held <= 0 || n_embd <= 0 || rows <= 0 || n_embd % blk != 0 || (blk > 1 && n_embd % 32 != 0))
        throw VulkanError(fmt("embed: rows [%lld, +%lld) of %lld columns of %s, %lld rows of x", (long long)row0,
                              (long long)n_held, (long long)n_embd, type_name(t), (long long)rows));
    const uint64_t rb = row_bytes(t, n_embd);
    need(w, rb * (uint64_t)n_held, "embed weights");
    need(tok, 4ull * rows, "embed tokens");
    need(x, 4ull * rows * n_embd, "embed output");
    u32(rows * n_embd, "embed elements");
    u32((int64_t)(rb * (uint64_t)n_held), "embed weight bytes");
    Device& d = s.device();
    Pipeline& p = d.pipeline(shader, 3, 5 * 4);
    const uint32_t push[5] = {(uint32_t)n_embd, (uint32_t)rows, (uint32_t)rb, u32(row0, "embed row0"),
                              u32(n_held, "embed rows")};
    uint32_t gx, gy;
    grid(d, rows, gx, gy);
    s.dispatch(p, {&w, &tok, &x}, push, sizeof push, gx, gy);
}

void kv_write(Sequence& s, const Buffer& qkv, int64_t row0, int64_t rows, int64_t qkv_stride, int64_t k_col,
              int64_t kv_dim, Buffer& kv, const Buffer& pos, int64_t n_ctx) {
    if (row0 < 0 || rows <= 0 || kv_dim <= 0 || kv_dim % 2 || k_col < 0 || k_col + 2 * kv_dim > qkv_stride ||
        rows > n_ctx)
        throw VulkanError(fmt("kv_write: rows [%lld, +%lld) of stride %lld, k at %lld, kv_dim %lld (even), "
                              "into a slot of %lld positions", (long long)row0, (long long)rows,
                              (long long)qkv_stride, (long long)k_col, (long long)kv_dim, (long long)n_ctx));
    need(qkv, 4ull * (row0 + rows) * qkv_stride, "kv_write rows");
    need(kv, 2ull * 2 * n_ctx * kv_dim, "kv_write slot");
    need(pos, 4ull * (row0 + 1), "kv_write positions");
    Device& d = s.device();
    u32(2 * n_ctx * kv_dim, "kv elements");
    Pipeline& p = d.pipeline("kv_write", 3, 6 * 4);
    const uint32_t push[6] = {(uint32_t)row0, (uint32_t)rows, u32(qkv_stride, "qkv stride"), (uint32_t)k_col,
                              (uint32_t)kv_dim, (uint32_t)n_ctx};
    const int64_t items = rows * kv_dim;  // words: rows x (kv_dim / 2) x {k, v}
    uint32_t gx, gy;
    grid(d, (items + d.workgroup() - 1) / d.workgroup(), gx, gy);
    s.dispatch(p, {&qkv, &kv, &pos}, push, sizeof push, gx, gy);
}

void attention(Sequence& s, const Buffer& qkv, int64_t row0, int64_t rows, int64_t qkv_stride, const Buffer& kv,
               const Buffer& pos, int64_t n_ctx, int n_head, int n_head_kv, int head_dim, float scale, Buffer& o,
               int64_t o_stride, Buffer* part, int64_t chunk) {
    Device& d = s.device();
    const int64_t kv_dim = (int64_t)n_head_kv * head_dim;
    if (row0 < 0 || rows <= 0 || n_head <= 0 || n_head_kv <= 0 || n_head % n_head_kv || head_dim <= 0 ||
        head_dim > 256 || head_dim > 4 * (int64_t)d.workgroup() || kv_dim % 2 || rows > n_ctx ||
        qkv_stride < (int64_t)n_head * head_dim || o_stride < (int64_t)n_head * head_dim)
        throw VulkanError(fmt("attention: rows [%lld, +%lld), %d heads (%d kv) of %d (at most 256 and 4 x %u), "
                              "a slot of %lld positions", (long long)row0, (long long)rows, n_head, n_head_kv,
                              head_dim, d.workgroup(), (long long)n_ctx));
    need(qkv, 4ull * (row0 + rows) * qkv_stride, "attention queries");
    need(kv, 2ull * 2 * n_ctx * kv_dim, "attention slot");
    need(o, 4ull * (row0 + rows) * o_stride, "attention output");
    need(pos, 4ull * (row0 + 1), "attention positions");
    u32(2 * n_ctx * kv_dim, "kv elements");
    // Splits: enough to cover n_ctx keys in chunks (a chunk a whole number of key tiles), so the recording
    // holds for any position; splits past a row's keys cost a workgroup that writes an empty part.
    const int64_t n_keys = n_ctx;
    int64_t n_split = 1;
    if (part && chunk > 0) {
        if (chunk % d.workgroup())
            throw VulkanError(fmt("attention: a chunk of %lld keys is not a whole number of tiles of %u",
                                  (long long)chunk, d.workgroup()));
        n_split = (n_keys + chunk - 1) / chunk;
    }
    if (n_split <= 1) chunk = n_keys;
    else need(*part, 4ull * attention_part_floats(rows, n_head, head_dim, n_split), "attention splits");
    Pipeline& p = d.pipeline("attention", 5, 12 * 4);
    uint32_t push[12] = {(uint32_t)row0, (uint32_t)rows, u32(qkv_stride, "qkv stride"), (uint32_t)n_head,
                         (uint32_t)n_head_kv, (uint32_t)head_dim, (uint32_t)kv_dim, (uint32_t)n_ctx,
                         u32(o_stride, "o stride"), 0, (uint32_t)chunk, (uint32_t)n_split};
    std::memcpy(&push[9], &scale, 4);
    uint32_t gx, gy;
    grid(d, rows * n_head * n_split, gx, gy);
    s.dispatch(p, {&qkv, &kv, &o, n_split > 1 ? part : &d.dummy(), &pos}, push, sizeof push, gx, gy);
    if (n_split > 1) {
        Pipeline& m = d.pipeline("attention_merge", 2, 6 * 4);
        const uint32_t mp[6] = {(uint32_t)row0, (uint32_t)rows, (uint32_t)n_head, (uint32_t)head_dim,
                                (uint32_t)n_split, (uint32_t)o_stride};
        grid(d, rows * n_head, gx, gy);
        s.dispatch(m, {part, &o}, mp, sizeof mp, gx, gy);
    }
}

void attention_full(Sequence& s, const Buffer& q, int64_t q_stride, int64_t q_off, const Buffer& k, int64_t k_stride,
                    int64_t k_off, const Buffer& v, int64_t v_stride, int64_t v_off, int64_t n_q, int64_t n_kv,
                    int n_head, int head_dim, float scale, Buffer& o, int64_t o_stride) {
    Device& d = s.device();
    const int64_t width = (int64_t)n_head * head_dim;
    if (n_q <= 0 || n_kv <= 0 || n_head <= 0 || head_dim <= 0 || head_dim > 256 ||
        head_dim > 4 * (int64_t)d.workgroup() || q_off < 0 || k_off < 0 || v_off < 0 || q_stride < width ||
        k_stride < width || v_stride < width || o_stride < width)
        throw VulkanError(fmt("attention_full: %lld queries against %lld keys, %d heads of %d (at most 256 and 4 x %u), "
                              "strides q %lld k %lld v %lld o %lld (at least %lld), offsets q %lld k %lld v %lld",
                              (long long)n_q, (long long)n_kv, n_head, head_dim, d.workgroup(), (long long)q_stride,
                              (long long)k_stride, (long long)v_stride, (long long)o_stride, (long long)width,
                              (long long)q_off, (long long)k_off, (long long)v_off));
    const uint64_t q_end = q_off + (n_q - 1) * q_stride + width, k_end = k_off + (n_kv - 1) * k_stride + width;
    const uint64_t v_end = v_off + (n_kv - 1) * v_stride + width, o_end = (n_q - 1) * o_stride + width;
    need(q, 4 * q_end, "attention_full queries");
    need(k, 4 * k_end, "attention_full keys");
    need(v, 4 * v_end, "attention_full values");
    need(o, 4 * o_end, "attention_full output");
    u32((int64_t)std::max({q_end, k_end, v_end, o_end}), "attention_full elements");
    Pipeline& p = d.pipeline("attention_full", 4, 12 * 4);
    uint32_t push[12] = {(uint32_t)n_q, (uint32_t)n_kv, (uint32_t)n_head, (uint32_t)head_dim,
                         (uint32_t)q_stride, (uint32_t)q_off, (uint32_t)k_stride, (uint32_t)k_off,
                         (uint32_t)v_stride, (uint32_t)v_off, (uint32_t)o_stride, 0};
    std::memcpy(&push[11], &scale, 4);
    uint32_t gx, gy;
    grid(d, n_q * n_head, gx, gy);
    s.dispatch(p, {&q, &k, &v, &o}, push, sizeof push, gx, gy);
}

void patches(Sequence& s, const Buffer& pixels, int64_t image_size, int64_t patch_size, Buffer& out) {
    if (image_size <= 0 || patch_size <= 0 || image_size % patch_size != 0)
        throw VulkanError(fmt("patches: an image of %lld pixels a side is not a whole number of %lld-pixel patches",
                              (long long)image_size, (long long)patch_size));
    const int64_t g = image_size / patch_size, n = g * g * 3 * patch_size * patch_size;
    need(pixels, 4ull * 3 * image_size * image_size, "patches image");
    need(out, 4ull * n, "patches output");
    Device& d = s.device();
    Pipeline& p = d.pipeline("patches", 2, 4 * 4);
    const uint32_t push[4] = {(uint32_t)image_size, (uint32_t)patch_size, (uint32_t)g, u32(n, "patch values")};
    uint32_t gx, gy;
    grid(d, (n + d.workgroup() - 1) / d.workgroup(), gx, gy);
    s.dispatch(p, {&pixels, &out}, push, sizeof push, gx, gy);
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
