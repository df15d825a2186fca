// Typed errors of the core. Each maps to one Python exception class (see csrc/python/module.cpp):
//   GGUFError -> tinygptv_native.GGUFError, ModelError -> tinygptv_native.ModelError,
//   TokenizerError -> tinygptv_native.TokenizerError, ContextOverflow -> ContextOverflowError,
//   VulkanError -> tinygptv_native.VulkanError (a RuntimeError: the device or its driver failed, not the input).
// Messages name the field and the offending value.
#pragma once
#include <cstdio>
#include <stdexcept>
#include <string>

namespace tg {

struct GGUFError : std::runtime_error { using std::runtime_error::runtime_error; };
struct ModelError : std::runtime_error { using std::runtime_error::runtime_error; };
struct TokenizerError : std::runtime_error { using std::runtime_error::runtime_error; };
struct ContextOverflow : std::runtime_error { using std::runtime_error::runtime_error; };
// The GPU backend: no loader, no device, or a Vulkan call that failed (the message names the call and
// its VkResult). Raised also when the module was built without the backend.
struct VulkanError : std::runtime_error { using std::runtime_error::runtime_error; };

// printf-style message builder for error text.
template <typename... Args>
std::string fmt(const char* f, Args... args) {
    int n = std::snprintf(nullptr, 0, f, args...);
    std::string s(n > 0 ? n : 0, '\0');
    if (n > 0) std::snprintf(&s[0], n + 1, f, args...);
    return s;
}

}  // namespace tg
