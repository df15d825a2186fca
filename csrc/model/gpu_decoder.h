// The seam between the engine context and the GPU: what Context needs of the decoder and of the image
// path on a device, without naming the Vulkan types, so the engine builds and runs where the backend is not
// built. The Vulkan implementations are csrc/vulkan/phi_gpu.h and csrc/vulkan/vision_gpu.h; where the
// backend is not built, open_gpu, make_gpu_decoder and make_gpu_image_encoder throw VulkanError
// (csrc/model/gpu_decoder.cpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "model/phi.h"

namespace tg {

class Exec;
class Model;

namespace vk {
class Device;
}

class GpuDecoder {
public:
    virtual ~GpuDecoder() = default;
    // The decoder forward of n rows, as phi_decode (model/phi.h): row i is token tokens[i] when that is
    // >= 0, else row i of x (n_embd floats; x's token rows are not read). Keys and values go to the device's
    // cache slots. Holding every layer, the decoder writes the logits of the rows that want them, in row
    // order, to out (host memory); holding the first n_layers() only, it writes the hidden state after them
    // of every row ([n][n_embd]), for the CPU to run the rest (phi_decode from that layer). The host waits
    // once, for the whole step.
    virtual void decode(const int32_t* tokens, const float* x, const PhiRow* rows, int64_t n, float* out) = 0;
    // The device side of KvCache::copy_prefix (its layers): slot dst's first n positions become src's.
    virtual void copy_prefix(int src, int dst, int64_t n) = 0;
    virtual int64_t n_layers() const = 0;          // the decoder layers on the device: the first ones
    // Steps whose commands were recorded, and steps that replayed an earlier recording of the same shape.
    struct StepCounts {
        int64_t recorded = 0, replayed = 0;
    };
    virtual StepCounts step_counts() const = 0;
    virtual size_t kv_reserved_bytes() const = 0;  // device memory of the slots written so far
    virtual size_t weight_bytes() const = 0;       // device memory of the uploaded weights
};

class GpuImageEncoder {
public:
    virtual ~GpuImageEncoder() = default;
    // The image path (ViT, ln_vision, Q-Former, projector) of one normalised [3, S, S] image into
    // out[n_query][the language model's n_embd] (host memory): one upload, one recorded pass, one wait.
    virtual void encode(const float* pixels, float* out) = 0;
    virtual size_t weight_bytes() const = 0;      // device memory of the uploaded weights
    virtual size_t activation_bytes() const = 0;  // device and host-visible memory of a pass's buffers
};

// The logical device of Vulkan device `index` (VulkanError where there is none, or no backend).
std::shared_ptr<vk::Device> open_gpu(int index);
// The decoder of model m on ex's device (ex.gpu()), its first n_layers layers (1 to n_layer; with all of
// them also the output norm and head): uploads their weights, one buffer per tensor.
std::unique_ptr<GpuDecoder> make_gpu_decoder(const Model& m, Exec& ex, int64_t n_ctx, int n_seq, int64_t n_layers);
// The image path of model m (m.has_vision()) on ex's device: uploads its weights and allocates the buffers
// of a pass, so what it takes is known when the context is made.
std::unique_ptr<GpuImageEncoder> make_gpu_image_encoder(const Model& m, Exec& ex);

}  // namespace tg
