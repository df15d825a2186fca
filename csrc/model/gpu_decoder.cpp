// Where the Vulkan backend is not built: the GPU entry points say so. (With the backend, this file is
// compiled with TINYGPTV_HAVE_VULKAN and the definitions come from csrc/vulkan/phi_gpu.cpp and
// csrc/vulkan/vision_gpu.cpp.)
#include "model/gpu_decoder.h"

#ifndef TINYGPTV_HAVE_VULKAN
#include "errors.h"

namespace tg {

namespace {
const char* kNoBackend = "this build of tinygptv_native has no Vulkan backend (the Vulkan headers or a GLSL compiler "
                         "were missing when it was built, or TINYGPTV_VULKAN was OFF)";
}

std::shared_ptr<vk::Device> open_gpu(int) { throw VulkanError(kNoBackend); }
std::unique_ptr<GpuDecoder> make_gpu_decoder(const Model&, Exec&, int64_t, int, int64_t) {
    throw VulkanError(kNoBackend);
}
std::unique_ptr<GpuImageEncoder> make_gpu_image_encoder(const Model&, Exec&) { throw VulkanError(kNoBackend); }

}  // namespace tg
#endif
