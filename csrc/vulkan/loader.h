// The Vulkan loader, opened at run time (never linked): the module imports and the CPU path runs on a
// machine without libvulkan. The entry points are fetched through vkGetInstanceProcAddr, so the build
// needs the headers only (VK_NO_PROTOTYPES).
#pragma once
#include <vulkan/vulkan.h>

#include <string>

namespace tg {
namespace vk {

// Global entry points (no instance yet).
#define TG_VK_GLOBAL_FNS(X) \
    X(vkCreateInstance) X(vkEnumerateInstanceLayerProperties) X(vkEnumerateInstanceExtensionProperties) \
    X(vkEnumerateInstanceVersion)

// Instance-level and device-level entry points, all fetched from the instance (the loader's trampolines
// dispatch device calls; one device at a time makes the per-device table's gain negligible here).
#define TG_VK_INSTANCE_FNS(X) \
    X(vkDestroyInstance) X(vkEnumeratePhysicalDevices) X(vkGetPhysicalDeviceProperties) \
    X(vkGetPhysicalDeviceProperties2) X(vkGetPhysicalDeviceFeatures2) X(vkGetPhysicalDeviceMemoryProperties) \
    X(vkGetPhysicalDeviceMemoryProperties2) \
    X(vkGetPhysicalDeviceQueueFamilyProperties) X(vkEnumerateDeviceExtensionProperties) X(vkCreateDevice) \
    X(vkDestroyDevice) X(vkGetDeviceQueue) X(vkCreateBuffer) X(vkDestroyBuffer) \
    X(vkGetBufferMemoryRequirements) X(vkAllocateMemory) X(vkFreeMemory) X(vkBindBufferMemory) \
    X(vkMapMemory) X(vkUnmapMemory) X(vkCreateShaderModule) X(vkDestroyShaderModule) \
    X(vkCreateDescriptorSetLayout) X(vkDestroyDescriptorSetLayout) X(vkCreatePipelineLayout) \
    X(vkDestroyPipelineLayout) X(vkCreateComputePipelines) X(vkDestroyPipeline) \
    X(vkCreateDescriptorPool) X(vkDestroyDescriptorPool) X(vkAllocateDescriptorSets) \
    X(vkUpdateDescriptorSets) X(vkCreateCommandPool) X(vkDestroyCommandPool) \
    X(vkAllocateCommandBuffers) X(vkFreeCommandBuffers) X(vkBeginCommandBuffer) X(vkEndCommandBuffer) \
    X(vkCmdBindPipeline) X(vkCmdBindDescriptorSets) X(vkCmdPushConstants) X(vkCmdDispatch) \
    X(vkCmdPipelineBarrier) X(vkCmdCopyBuffer) X(vkCmdFillBuffer) X(vkCreateFence) X(vkDestroyFence) \
    X(vkResetFences) X(vkWaitForFences) X(vkQueueSubmit) X(vkDeviceWaitIdle)

// Present only when VK_EXT_debug_utils was enabled (validation runs).
#define TG_VK_DEBUG_FNS(X) X(vkCreateDebugUtilsMessengerEXT) X(vkDestroyDebugUtilsMessengerEXT)

struct Fns {
#define TG_VK_DECLARE(name) PFN_##name name = nullptr;
    PFN_vkGetInstanceProcAddr vkGetInstanceProcAddr = nullptr;
    TG_VK_GLOBAL_FNS(TG_VK_DECLARE)
    TG_VK_INSTANCE_FNS(TG_VK_DECLARE)
    TG_VK_DEBUG_FNS(TG_VK_DECLARE)
#undef TG_VK_DECLARE
};

// The process's one table; filled by load_loader() and load_instance_fns().
Fns& fns();

// Opens the loader (once; later calls return at once) and fetches the global entry points. The library
// is libvulkan.so.1 (libvulkan.1.dylib / MoltenVK on macOS, vulkan-1.dll on Windows); the environment
// variable TINYGPTV_VK_LOADER names another file (tests use a bogus one to act out a machine without
// Vulkan). Throws VulkanError naming the library and the system's reason when it cannot be opened.
void load_loader();
// Fetches the instance-level entry points; a missing required one is a VulkanError naming it.
void load_instance_fns(VkInstance instance, bool debug_utils);

// "VK_ERROR_OUT_OF_DEVICE_MEMORY" and the like; the number for codes this table does not know.
std::string result_name(VkResult r);

}  // namespace vk
}  // namespace tg

// Checks a VkResult: anything but VK_SUCCESS is a VulkanError naming the call and the result.
#define TG_VK_CHECK(call)                                                                               \
    do {                                                                                                \
        VkResult tg_vk_r_ = (call);                                                                     \
        if (tg_vk_r_ != VK_SUCCESS)                                                                     \
            throw ::tg::VulkanError(::tg::fmt("%s failed: %s", #call, ::tg::vk::result_name(tg_vk_r_).c_str())); \
    } while (0)
