#include "vulkan/weights.h"

#include <algorithm>
#include <cstdlib>

#include "errors.h"
#include "vulkan/ops.h"

namespace tg {
namespace vk {

uint64_t part_limit(const Device& dev, uint64_t requested) {
    const DeviceInfo& info = dev.info();
    uint64_t limit = info.max_storage_buffer_range & ~uint64_t(3);
    if (info.max_allocation) limit = std::min<uint64_t>(limit, info.max_allocation);
    return requested ? std::min<uint64_t>(requested, limit) : limit;
}

uint64_t max_buffer_from_env() {
    const char* v = std::getenv("TINYGPTV_VK_MAX_BUFFER");
    return v ? std::strtoull(v, nullptr, 10) : 0;
}

GpuMat upload_mat(Device& dev, const MatW& m, const char* what, uint64_t max_buffer, size_t& bytes) {
    if (!vk::matmul_supports(m.type))
        throw VulkanError(fmt("%s is %s; the Vulkan backend reads F32, F16, Q8_0, Q4_0, Q4_K and Q6_K weights", what,
                              type_name(m.type)));
    GpuMat g;
    g.type = m.type;
    g.n_out = m.n_out;
    g.n_in = m.n_in;
    const uint64_t rb = row_bytes(m.type, m.n_in);
    const int64_t per_part = (int64_t)(max_buffer / rb);
    if (per_part < 1)
        throw VulkanError(fmt("%s: one row of %llu bytes exceeds the largest buffer of %llu bytes", what,
                              (unsigned long long)rb, (unsigned long long)max_buffer));
    const uint8_t* src = static_cast<const uint8_t*>(m.data);
    for (int64_t r0 = 0; r0 < m.n_out; r0 += per_part) {
        GpuMat::Part p;
        p.row0 = r0;
        p.rows = std::min(per_part, m.n_out - r0);
        p.buf = dev.buffer(rb * (uint64_t)p.rows);
        dev.upload(*p.buf, src + rb * (uint64_t)r0, rb * (uint64_t)p.rows);
        bytes += p.buf->size();
        g.parts.push_back(std::move(p));
    }
    return g;
}

std::unique_ptr<Buffer> upload_vec(Device& dev, const float* v, int64_t n, size_t& bytes) {
    if (!v) return nullptr;
    auto b = dev.buffer(4ull * (uint64_t)n);
    dev.upload(*b, v, 4ull * (uint64_t)n);
    bytes += b->size();
    return b;
}

void product(Sequence& s, const GpuMat& m, const Buffer& x, int64_t rows, Buffer& y, int64_t y_stride, int64_t y_col0,
             const Buffer* bias, ProductKernel kernel) {
    for (const GpuMat::Part& p : m.parts)
        matmul_rows(s, m.type, *p.buf, p.row0, p.row0 + p.rows, m.n_in, x, rows, y, y_stride, y_col0, bias, kernel);
}

}  // namespace vk
}  // namespace tg
