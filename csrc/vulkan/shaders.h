// The compute shaders, compiled to SPIR-V at build time (csrc/vulkan/shaders/*.comp, see
// CMakeLists.txt) and embedded in the module by cmake/embed_spirv.cmake.
#pragma once
#include <cstddef>
#include <cstdint>

namespace tg {
namespace vk {

struct Spirv {
    const char* name;      // the shader's file stem, plus the variant: "matvec_q4_0"
    const uint32_t* code;
    size_t words;
};

const Spirv* find_spirv(const char* name);  // nullptr when no shader has that name
size_t spirv_count();
const Spirv& spirv_at(size_t i);

}  // namespace vk
}  // namespace tg
