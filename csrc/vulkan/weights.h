// Weights on a Vulkan device, shared by the decoder (phi_gpu.h) and the image path (vision_gpu.h): one
// buffer per tensor, a matrix larger than the device's storage-buffer range split by rows over several,
// vectors (norms, biases, embeddings) in float32 as the loader holds them.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "ggml_type.h"
#include "kernels/matmul.h"
#include "vulkan/device.h"
#include "vulkan/ops.h"

namespace tg {
namespace vk {

// A weight matrix [n_out][n_in] as the file stores it (GGUF rows), in parts of whole rows: one part unless
// the tensor exceeds the device's storage-buffer range (Phi-2's F16 token embedding and output, 262 MB each,
// against lavapipe's 128 MiB).
struct GpuMat {
    GgmlType type = GgmlType::F32;
    int64_t n_out = 0, n_in = 0;
    struct Part {
        int64_t row0 = 0, rows = 0;
        std::unique_ptr<Buffer> buf;
    };
    std::vector<Part> parts;
};

// The largest buffer a tensor part may take on dev: `requested` (0: no request) within the device's
// storage-buffer range and allocation limit.
uint64_t part_limit(const Device& dev, uint64_t requested);
// TINYGPTV_VK_MAX_BUFFER, or 0: a smaller part size than the device's range, so the split of large tensors
// is exercised on small models (tests).
uint64_t max_buffer_from_env();

// Uploads m (its GGUF rows, never the CPU's repacked copy) in parts of at most max_buffer bytes; adds the
// buffers' sizes to bytes. `what` names the tensor in errors (a type the shaders do not read, a row larger
// than a buffer).
GpuMat upload_mat(Device& dev, const MatW& m, const char* what, uint64_t max_buffer, size_t& bytes);
// A float32 vector of n values in a buffer of its own (null for a null v); adds its size to bytes.
std::unique_ptr<Buffer> upload_vec(Device& dev, const float* v, int64_t n, size_t& bytes);
// y[rows][y_stride] (outputs from column y_col0) = x[rows][n_in] . m^T (+ bias), part by part. The decoder
// keeps the default, the mat-vec for any row count: its rows share a step with other sequences' rows, and a
// row's bits must not depend on that company (the tiled shader sums in another order). The image pass,
// whose shape is fixed, takes ProductKernel::Auto.
void product(Sequence& s, const GpuMat& m, const Buffer& x, int64_t rows, Buffer& y, int64_t y_stride, int64_t y_col0,
             const Buffer* bias, ProductKernel kernel = ProductKernel::MatVec);

}  // namespace vk
}  // namespace tg
