#include "vulkan/loader.h"

#include <cstdlib>
#include <mutex>

#include "errors.h"

#ifdef _WIN32
#include <windows.h>
#else
#include <dlfcn.h>
#endif

namespace tg {
namespace vk {

Fns& fns() {
    static Fns f;
    return f;
}

namespace {

std::mutex load_mutex;
bool loaded = false;

const char* default_loader_name() {
#if defined(_WIN32)
    return "vulkan-1.dll";
#elif defined(__APPLE__)
    return "libvulkan.1.dylib";  // the Vulkan SDK's loader, which finds MoltenVK
#else
    return "libvulkan.so.1";
#endif
}

void* open_library(const std::string& name, std::string& why) {
#ifdef _WIN32
    HMODULE h = LoadLibraryA(name.c_str());
    if (!h) why = fmt("error %lu", (unsigned long)GetLastError());
    return (void*)h;
#else
    // RTLD_LOCAL: the loader's symbols stay out of the process's global namespace.
    void* h = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char* e = dlerror();
        why = e ? e : "unknown error";
    }
    return h;
#endif
}

void* library_symbol(void* lib, const char* name) {
#ifdef _WIN32
    return (void*)GetProcAddress((HMODULE)lib, name);
#else
    return dlsym(lib, name);
#endif
}

}  // namespace

void load_loader() {
    std::lock_guard<std::mutex> lock(load_mutex);
    if (loaded) return;
    const char* env = std::getenv("TINYGPTV_VK_LOADER");
    std::string name = env && *env ? env : default_loader_name();
    std::string why;
    void* lib = open_library(name, why);
#ifdef __APPLE__
    if (!lib && !(env && *env)) lib = open_library("libMoltenVK.dylib", why);
#endif
    if (!lib)
        throw VulkanError(fmt("the Vulkan loader %s could not be opened (%s): install a Vulkan driver "
                              "(Debian: libvulkan1 with mesa-vulkan-drivers) or use the CPU",
                              name.c_str(), why.c_str()));
    // The library stays open for the life of the process: Vulkan objects may outlive any one owner.
    Fns& f = fns();
    f.vkGetInstanceProcAddr = (PFN_vkGetInstanceProcAddr)library_symbol(lib, "vkGetInstanceProcAddr");
    if (!f.vkGetInstanceProcAddr)
        throw VulkanError(fmt("%s has no vkGetInstanceProcAddr: not a Vulkan loader", name.c_str()));
#define TG_VK_LOAD_GLOBAL(fn) f.fn = (PFN_##fn)f.vkGetInstanceProcAddr(VK_NULL_HANDLE, #fn);
    TG_VK_GLOBAL_FNS(TG_VK_LOAD_GLOBAL)
#undef TG_VK_LOAD_GLOBAL
    if (!f.vkCreateInstance || !f.vkEnumerateInstanceLayerProperties || !f.vkEnumerateInstanceExtensionProperties)
        throw VulkanError(fmt("the Vulkan loader %s lacks the global entry points", name.c_str()));
    loaded = true;
}

void load_instance_fns(VkInstance instance, bool debug_utils) {
    Fns& f = fns();
#define TG_VK_LOAD_INSTANCE(fn)                                                                         \
    f.fn = (PFN_##fn)f.vkGetInstanceProcAddr(instance, #fn);                                            \
    if (!f.fn) throw VulkanError(fmt("the Vulkan loader has no %s (Vulkan 1.1 is required)", #fn));
    TG_VK_INSTANCE_FNS(TG_VK_LOAD_INSTANCE)
#undef TG_VK_LOAD_INSTANCE
    if (debug_utils) {
#define TG_VK_LOAD_DEBUG(fn) f.fn = (PFN_##fn)f.vkGetInstanceProcAddr(instance, #fn);
        TG_VK_DEBUG_FNS(TG_VK_LOAD_DEBUG)
#undef TG_VK_LOAD_DEBUG
    }
}

std::string result_name(VkResult r) {
    switch (r) {
#define TG_VK_RESULT(x) case x: return #x;
        TG_VK_RESULT(VK_SUCCESS) TG_VK_RESULT(VK_NOT_READY) TG_VK_RESULT(VK_TIMEOUT) TG_VK_RESULT(VK_INCOMPLETE)
        TG_VK_RESULT(VK_ERROR_OUT_OF_HOST_MEMORY) TG_VK_RESULT(VK_ERROR_OUT_OF_DEVICE_MEMORY)
        TG_VK_RESULT(VK_ERROR_INITIALIZATION_FAILED) TG_VK_RESULT(VK_ERROR_DEVICE_LOST)
        TG_VK_RESULT(VK_ERROR_MEMORY_MAP_FAILED) TG_VK_RESULT(VK_ERROR_LAYER_NOT_PRESENT)
        TG_VK_RESULT(VK_ERROR_EXTENSION_NOT_PRESENT) TG_VK_RESULT(VK_ERROR_FEATURE_NOT_PRESENT)
        TG_VK_RESULT(VK_ERROR_INCOMPATIBLE_DRIVER) TG_VK_RESULT(VK_ERROR_TOO_MANY_OBJECTS)
        TG_VK_RESULT(VK_ERROR_FORMAT_NOT_SUPPORTED) TG_VK_RESULT(VK_ERROR_FRAGMENTED_POOL)
        TG_VK_RESULT(VK_ERROR_UNKNOWN) TG_VK_RESULT(VK_ERROR_OUT_OF_POOL_MEMORY)
        TG_VK_RESULT(VK_ERROR_INVALID_EXTERNAL_HANDLE) TG_VK_RESULT(VK_ERROR_FRAGMENTATION)
#undef TG_VK_RESULT
        default: return fmt("VkResult %d", (int)r);
    }
}

}  // namespace vk
}  // namespace tg
