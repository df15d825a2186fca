#include "vulkan/device.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "errors.h"
#include "vulkan/loader.h"
#include "vulkan/shaders.h"

namespace tg {
namespace vk {

namespace {

const char* kValidationLayer = "VK_LAYER_KHRONOS_validation";

bool env_flag(const char* name) {
    const char* v = std::getenv(name);
    return v && *v && std::strcmp(v, "0") != 0;
}

VKAPI_ATTR VkBool32 VKAPI_CALL on_message(VkDebugUtilsMessageSeverityFlagBitsEXT severity,
                                          VkDebugUtilsMessageTypeFlagsEXT, const VkDebugUtilsMessengerCallbackDataEXT* data,
                                          void* user) {
    const char* level = severity >= VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT ? "error" : "warning";
    static_cast<Instance*>(user)->record_message(fmt("%s: %s", level, data && data->pMessage ? data->pMessage : "?"));
    return VK_FALSE;  // never abort the call: the test that reads the messages decides
}

std::string version_text(uint32_t v) {
    return fmt("%u.%u.%u", VK_API_VERSION_MAJOR(v), VK_API_VERSION_MINOR(v), VK_API_VERSION_PATCH(v));
}

const char* type_text(VkPhysicalDeviceType t) {
    switch (t) {
        case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return "discrete";
        case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return "integrated";
        case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return "virtual";
        case VK_PHYSICAL_DEVICE_TYPE_CPU: return "cpu";
        default: return "other";
    }
}

std::vector<std::string> device_extensions(VkPhysicalDevice pd) {
    uint32_t n = 0;
    TG_VK_CHECK(fns().vkEnumerateDeviceExtensionProperties(pd, nullptr, &n, nullptr));
    std::vector<VkExtensionProperties> ext(n);
    TG_VK_CHECK(fns().vkEnumerateDeviceExtensionProperties(pd, nullptr, &n, ext.data()));
    std::vector<std::string> names;
    for (uint32_t i = 0; i < n; i++) names.emplace_back(ext[i].extensionName);
    return names;
}

// The heaps of pd; with_budget (the device offers VK_EXT_memory_budget): the driver's budget and this
// process's usage of each, read now (the extension's structure may only be chained where it is offered).
// A device of Vulkan 1.0 has no vkGetPhysicalDeviceMemoryProperties2 (and so no budget).
std::vector<MemoryHeap> query_heaps(VkPhysicalDevice pd, uint32_t api, bool with_budget) {
    with_budget = with_budget && api >= VK_API_VERSION_1_1;
    VkPhysicalDeviceMemoryBudgetPropertiesEXT budget{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_BUDGET_PROPERTIES_EXT};
    VkPhysicalDeviceMemoryProperties2 mem{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_PROPERTIES_2};
    if (with_budget) mem.pNext = &budget;
    if (api >= VK_API_VERSION_1_1) fns().vkGetPhysicalDeviceMemoryProperties2(pd, &mem);
    else fns().vkGetPhysicalDeviceMemoryProperties(pd, &mem.memoryProperties);
    std::vector<MemoryHeap> heaps;
    for (uint32_t i = 0; i < mem.memoryProperties.memoryHeapCount; i++) {
        const VkMemoryHeap& h = mem.memoryProperties.memoryHeaps[i];
        MemoryHeap m;
        m.size = h.size;
        m.device_local = (h.flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) != 0;
        m.has_budget = with_budget;
        if (with_budget) {
            m.budget = budget.heapBudget[i];
            m.usage = budget.heapUsage[i];
        }
        heaps.push_back(m);
    }
    return heaps;
}

DeviceInfo describe(VkPhysicalDevice pd, int index) {
    const Fns& f = fns();
    DeviceInfo d;
    d.index = index;
    VkPhysicalDeviceProperties base{};
    f.vkGetPhysicalDeviceProperties(pd, &base);
    d.name = base.deviceName;
    d.type = type_text(base.deviceType);
    d.api = base.apiVersion;
    d.api_version = version_text(base.apiVersion);
    d.vendor_id = base.vendorID;
    d.device_id = base.deviceID;
    d.max_storage_buffer_range = base.limits.maxStorageBufferRange;
    d.max_shared_memory = base.limits.maxComputeSharedMemorySize;
    d.max_workgroup_invocations = base.limits.maxComputeWorkGroupInvocations;
    for (int i = 0; i < 3; i++) d.max_workgroup_count[i] = base.limits.maxComputeWorkGroupCount[i];
    d.max_push_constants = base.limits.maxPushConstantsSize;

    const std::vector<std::string> ext = device_extensions(pd);
    auto has = [&](const char* e) { return std::find(ext.begin(), ext.end(), e) != ext.end(); };
    d.cooperative_matrix = has("VK_KHR_cooperative_matrix") || has("VK_NV_cooperative_matrix");
    d.memory_budget = has("VK_EXT_memory_budget");
    const bool v12 = base.apiVersion >= VK_API_VERSION_1_2;

    if (base.apiVersion >= VK_API_VERSION_1_1) {
        // Structures of an extension the device lacks must stay out of the chains.
        VkPhysicalDeviceSubgroupProperties sub{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
        VkPhysicalDeviceMaintenance3Properties m3{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES};
        VkPhysicalDeviceDriverProperties drv{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES};
        sub.pNext = &m3;
        if (v12 || has("VK_KHR_driver_properties")) m3.pNext = &drv;
        VkPhysicalDeviceProperties2 p2{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
        p2.pNext = &sub;
        f.vkGetPhysicalDeviceProperties2(pd, &p2);
        d.subgroup_size = sub.subgroupSize;
        d.max_allocation = m3.maxMemoryAllocationSize;
        if (m3.pNext) d.driver = fmt("%s (%s)", drv.driverName, drv.driverInfo);

        VkPhysicalDevice16BitStorageFeatures s16{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES};
        VkPhysicalDeviceShaderFloat16Int8Features fi{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_FLOAT16_INT8_FEATURES};
        VkPhysicalDevice8BitStorageFeatures s8{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_8BIT_STORAGE_FEATURES};
        void** tail = &s16.pNext;
        if (v12 || has("VK_KHR_shader_float16_int8")) { *tail = &fi; tail = &fi.pNext; }
        if (v12 || has("VK_KHR_8bit_storage")) { *tail = &s8; tail = &s8.pNext; }
        VkPhysicalDeviceFeatures2 f2{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2};
        f2.pNext = &s16;
        f.vkGetPhysicalDeviceFeatures2(pd, &f2);
        d.storage16 = s16.storageBuffer16BitAccess;
        d.fp16 = fi.shaderFloat16;
        d.int8 = fi.shaderInt8;
        d.storage8 = s8.storageBuffer8BitAccess;
    }
    d.heaps = query_heaps(pd, d.api, d.memory_budget);
    return d;
}

}  // namespace

// ---- Instance ---------------------------------------------------------------------------------------

Instance& Instance::get() {
    static std::mutex m;
    static Instance* inst = nullptr;  // kept for the life of the process (see the class comment)
    std::lock_guard<std::mutex> lock(m);
    if (!inst) inst = new Instance();  // a throw leaves inst null: the next call tries again
    return *inst;
}

Instance::Instance() {
    load_loader();
    Fns& f = fns();
    uint32_t loader_version = VK_API_VERSION_1_0;
    if (f.vkEnumerateInstanceVersion) TG_VK_CHECK(f.vkEnumerateInstanceVersion(&loader_version));
    if (loader_version < VK_API_VERSION_1_1)
        throw VulkanError(fmt("the Vulkan loader offers version %s; 1.1 or later is required",
                              version_text(loader_version).c_str()));

    validation_ = env_flag("TINYGPTV_VK_VALIDATION");
    std::vector<const char*> layers, extensions;
    if (validation_) {
        uint32_t n = 0;
        TG_VK_CHECK(f.vkEnumerateInstanceLayerProperties(&n, nullptr));
        std::vector<VkLayerProperties> props(n);
        TG_VK_CHECK(f.vkEnumerateInstanceLayerProperties(&n, props.data()));
        bool found = false;
        for (const auto& p : props) found = found || std::strcmp(p.layerName, kValidationLayer) == 0;
        if (!found)
            throw VulkanError(fmt("TINYGPTV_VK_VALIDATION=1 asks for %s, which is not installed "
                                  "(Debian: vulkan-validationlayers)", kValidationLayer));
        layers.push_back(kValidationLayer);
        extensions.push_back(VK_EXT_DEBUG_UTILS_EXTENSION_NAME);
    }

    VkApplicationInfo app{VK_STRUCTURE_TYPE_APPLICATION_INFO};
    app.pApplicationName = "tinygptv-native";
    app.pEngineName = "tinygptv-native";
    app.apiVersion = VK_API_VERSION_1_1;
    VkDebugUtilsMessengerCreateInfoEXT dbg{VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT};
    dbg.messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT | VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT;
    dbg.messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT | VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                      VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT;
    dbg.pfnUserCallback = on_message;
    dbg.pUserData = this;
    VkInstanceCreateInfo ci{VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO};
    ci.pApplicationInfo = &app;
    ci.enabledLayerCount = (uint32_t)layers.size();
    ci.ppEnabledLayerNames = layers.data();
    ci.enabledExtensionCount = (uint32_t)extensions.size();
    ci.ppEnabledExtensionNames = extensions.data();
    if (validation_) ci.pNext = &dbg;  // also reports problems of vkCreateInstance itself
    const VkResult r = f.vkCreateInstance(&ci, nullptr, &instance_);
    if (r == VK_ERROR_INCOMPATIBLE_DRIVER)  // what the loader answers when it finds no driver at all
        throw VulkanError("vkCreateInstance failed: VK_ERROR_INCOMPATIBLE_DRIVER: no Vulkan driver was found, or "
                          "none offers Vulkan 1.1 (Debian: mesa-vulkan-drivers, or the GPU vendor's driver)");
    if (r != VK_SUCCESS) throw VulkanError(fmt("vkCreateInstance failed: %s", result_name(r).c_str()));
    load_instance_fns(instance_, validation_);
    if (validation_) {
        if (!f.vkCreateDebugUtilsMessengerEXT)
            throw VulkanError("the validation layer is on but vkCreateDebugUtilsMessengerEXT is missing");
        TG_VK_CHECK(f.vkCreateDebugUtilsMessengerEXT(instance_, &dbg, nullptr, &messenger_));
    }

    uint32_t n = 0;
    TG_VK_CHECK(f.vkEnumeratePhysicalDevices(instance_, &n, nullptr));
    physical_.resize(n);
    if (n) TG_VK_CHECK(f.vkEnumeratePhysicalDevices(instance_, &n, physical_.data()));
    physical_.resize(n);
    for (uint32_t i = 0; i < n; i++) infos_.push_back(describe(physical_[i], (int)i));
}

VkPhysicalDevice Instance::physical(int index) const {
    if (index < 0 || index >= (int)physical_.size())
        throw VulkanError(physical_.empty() ? fmt("no Vulkan device was found (asked for device %d)", index)
                                            : fmt("Vulkan device %d does not exist (devices: 0..%d)", index,
                                                  (int)physical_.size() - 1));
    return physical_[(size_t)index];
}

std::vector<MemoryHeap> Instance::memory_heaps(int index) const {
    const DeviceInfo& d = infos_[(size_t)index];
    return query_heaps(physical(index), d.api, d.memory_budget);
}

void Instance::record_message(const std::string& m) {
    std::lock_guard<std::mutex> lock(messages_mutex_);
    messages_.push_back(m);
}

std::vector<std::string> Instance::take_messages() {
    std::lock_guard<std::mutex> lock(messages_mutex_);
    std::vector<std::string> out;
    out.swap(messages_);
    return out;
}

// ---- Buffer -----------------------------------------------------------------------------------------

Buffer::Buffer(Device& dev, uint64_t bytes, bool staging) : dev_(dev) {
    const Fns& f = fns();
    const DeviceInfo& info = dev.info();
    size_ = std::max<uint64_t>(4, (bytes + 3) & ~uint64_t(3));
    // A shader binds a whole buffer: one larger than the device's storage range could not be bound.
    if (!staging && size_ > info.max_storage_buffer_range)
        throw VulkanError(fmt("a %llu-byte buffer exceeds %s's maxStorageBufferRange of %llu bytes",
                              (unsigned long long)size_, info.name.c_str(),
                              (unsigned long long)info.max_storage_buffer_range));
    if (info.max_allocation && size_ > info.max_allocation)
        throw VulkanError(fmt("a %llu-byte buffer exceeds %s's maxMemoryAllocationSize of %llu bytes",
                              (unsigned long long)size_, info.name.c_str(), (unsigned long long)info.max_allocation));
    VkBufferCreateInfo bi{VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO};
    bi.size = size_;
    bi.usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT;
    bi.sharingMode = VK_SHARING_MODE_EXCLUSIVE;
    TG_VK_CHECK(f.vkCreateBuffer(dev.handle(), &bi, nullptr, &buffer_));
    try {
        VkMemoryRequirements req{};
        f.vkGetBufferMemoryRequirements(dev.handle(), buffer_, &req);
        VkMemoryAllocateInfo ai{VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO};
        ai.allocationSize = req.size;
        ai.memoryTypeIndex = dev.memory_type(req.memoryTypeBits, staging);
        VkResult r = f.vkAllocateMemory(dev.handle(), &ai, nullptr, &memory_);
        if (r != VK_SUCCESS)
            throw VulkanError(fmt("vkAllocateMemory of %llu bytes on %s failed: %s", (unsigned long long)req.size,
                                  info.name.c_str(), result_name(r).c_str()));
        TG_VK_CHECK(f.vkBindBufferMemory(dev.handle(), buffer_, memory_, 0));
        if (staging) TG_VK_CHECK(f.vkMapMemory(dev.handle(), memory_, 0, VK_WHOLE_SIZE, 0, &mapped_));
    } catch (...) {
        if (memory_) f.vkFreeMemory(dev.handle(), memory_, nullptr);
        f.vkDestroyBuffer(dev.handle(), buffer_, nullptr);
        throw;
    }
}

Buffer::~Buffer() {
    const Fns& f = fns();
    if (mapped_) f.vkUnmapMemory(dev_.handle(), memory_);
    f.vkDestroyBuffer(dev_.handle(), buffer_, nullptr);
    f.vkFreeMemory(dev_.handle(), memory_, nullptr);
}

// ---- Pipeline ---------------------------------------------------------------------------------------

Pipeline::Pipeline(Device& dev, const std::string& shader, uint32_t n_buffers, uint32_t push_bytes, uint32_t workgroup)
    : dev_(dev), name_(shader), n_buffers_(n_buffers), push_bytes_(push_bytes), workgroup_(workgroup) {
    const Fns& f = fns();
    const Spirv* spv = find_spirv(shader.c_str());
    if (!spv) throw VulkanError(fmt("no embedded shader is named '%s'", shader.c_str()));
    if (push_bytes > dev.info().max_push_constants)
        throw VulkanError(fmt("shader %s needs %u bytes of push constants; %s allows %u", shader.c_str(), push_bytes,
                              dev.info().name.c_str(), dev.info().max_push_constants));
    VkDevice d = dev.handle();
    std::vector<VkDescriptorSetLayoutBinding> binds(n_buffers);
    for (uint32_t i = 0; i < n_buffers; i++) {
        binds[i] = {};
        binds[i].binding = i;
        binds[i].descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
        binds[i].descriptorCount = 1;
        binds[i].stageFlags = VK_SHADER_STAGE_COMPUTE_BIT;
    }
    VkShaderModule module = VK_NULL_HANDLE;
    try {
        VkDescriptorSetLayoutCreateInfo dl{VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO};
        dl.bindingCount = n_buffers;
        dl.pBindings = binds.data();
        TG_VK_CHECK(f.vkCreateDescriptorSetLayout(d, &dl, nullptr, &set_layout_));
        VkPushConstantRange pc{VK_SHADER_STAGE_COMPUTE_BIT, 0, push_bytes};
        VkPipelineLayoutCreateInfo pl{VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO};
        pl.setLayoutCount = 1;
        pl.pSetLayouts = &set_layout_;
        pl.pushConstantRangeCount = push_bytes ? 1 : 0;
        pl.pPushConstantRanges = &pc;
        TG_VK_CHECK(f.vkCreatePipelineLayout(d, &pl, nullptr, &layout_));
        VkShaderModuleCreateInfo sm{VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO};
        sm.codeSize = spv->words * 4;
        sm.pCode = spv->code;
        TG_VK_CHECK(f.vkCreateShaderModule(d, &sm, nullptr, &module));
        VkSpecializationMapEntry entry{0, 0, sizeof(uint32_t)};
        VkSpecializationInfo spec{1, &entry, sizeof(uint32_t), &workgroup_};
        VkComputePipelineCreateInfo cp{VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO};
        cp.stage.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO;
        cp.stage.stage = VK_SHADER_STAGE_COMPUTE_BIT;
        cp.stage.module = module;
        cp.stage.pName = "main";
        cp.stage.pSpecializationInfo = &spec;
        cp.layout = layout_;
        TG_VK_CHECK(f.vkCreateComputePipelines(d, VK_NULL_HANDLE, 1, &cp, nullptr, &pipeline_));
        f.vkDestroyShaderModule(d, module, nullptr);
    } catch (...) {
        if (module) f.vkDestroyShaderModule(d, module, nullptr);
        if (layout_) f.vkDestroyPipelineLayout(d, layout_, nullptr);
        if (set_layout_) f.vkDestroyDescriptorSetLayout(d, set_layout_, nullptr);
        throw;
    }
}

Pipeline::~Pipeline() {
    const Fns& f = fns();
    f.vkDestroyPipeline(dev_.handle(), pipeline_, nullptr);
    f.vkDestroyPipelineLayout(dev_.handle(), layout_, nullptr);
    f.vkDestroyDescriptorSetLayout(dev_.handle(), set_layout_, nullptr);
}

// ---- Sequence ---------------------------------------------------------------------------------------

namespace {

// Everything written before (by earlier submissions too: the first scope of a barrier covers all commands
// submitted before it on the queue) is visible to everything after.
void full_barrier(VkCommandBuffer cmd) {
    VkMemoryBarrier mb{VK_STRUCTURE_TYPE_MEMORY_BARRIER};
    mb.srcAccessMask = VK_ACCESS_MEMORY_WRITE_BIT;
    mb.dstAccessMask = VK_ACCESS_MEMORY_READ_BIT | VK_ACCESS_MEMORY_WRITE_BIT;
    fns().vkCmdPipelineBarrier(cmd, VK_PIPELINE_STAGE_ALL_COMMANDS_BIT, VK_PIPELINE_STAGE_ALL_COMMANDS_BIT, 0, 1, &mb, 0,
                               nullptr, 0, nullptr);
}

// Device writes made available to the host before the fence that the host waits on.
void host_read_barrier(VkCommandBuffer cmd) {
    VkMemoryBarrier mb{VK_STRUCTURE_TYPE_MEMORY_BARRIER};
    mb.srcAccessMask = VK_ACCESS_MEMORY_WRITE_BIT;
    mb.dstAccessMask = VK_ACCESS_HOST_READ_BIT;
    fns().vkCmdPipelineBarrier(cmd, VK_PIPELINE_STAGE_ALL_COMMANDS_BIT, VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &mb, 0, nullptr,
                               0, nullptr);
}

VkCommandBuffer begin_commands(Device& dev) {
    const Fns& f = fns();
    VkCommandBufferAllocateInfo ai{VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO};
    ai.commandPool = dev.command_pool();
    ai.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
    ai.commandBufferCount = 1;
    VkCommandBuffer cmd = VK_NULL_HANDLE;
    TG_VK_CHECK(f.vkAllocateCommandBuffers(dev.handle(), &ai, &cmd));
    VkCommandBufferBeginInfo bi{VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    VkResult r = f.vkBeginCommandBuffer(cmd, &bi);
    if (r != VK_SUCCESS) {
        f.vkFreeCommandBuffers(dev.handle(), dev.command_pool(), 1, &cmd);
        throw VulkanError(fmt("vkBeginCommandBuffer failed: %s", result_name(r).c_str()));
    }
    full_barrier(cmd);
    return cmd;
}

constexpr uint32_t kSetsPerPool = 64, kMaxBindings = 8;

}  // namespace

Sequence::Sequence(Device& dev) : dev_(dev) { cmd_ = begin_commands(dev); }

Sequence::~Sequence() {
    const Fns& f = fns();
    f.vkFreeCommandBuffers(dev_.handle(), dev_.command_pool(), 1, &cmd_);
    for (VkDescriptorPool p : pools_) f.vkDestroyDescriptorPool(dev_.handle(), p, nullptr);
}

VkDescriptorSet Sequence::new_set(VkDescriptorSetLayout layout) {
    const Fns& f = fns();
    if (sets_left_ == 0) {
        VkDescriptorPoolSize size{VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, kSetsPerPool * kMaxBindings};
        VkDescriptorPoolCreateInfo pi{VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO};
        pi.maxSets = kSetsPerPool;
        pi.poolSizeCount = 1;
        pi.pPoolSizes = &size;
        VkDescriptorPool pool = VK_NULL_HANDLE;
        TG_VK_CHECK(f.vkCreateDescriptorPool(dev_.handle(), &pi, nullptr, &pool));
        pools_.push_back(pool);
        sets_left_ = kSetsPerPool;
    }
    VkDescriptorSetAllocateInfo ai{VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO};
    ai.descriptorPool = pools_.back();
    ai.descriptorSetCount = 1;
    ai.pSetLayouts = &layout;
    VkDescriptorSet set = VK_NULL_HANDLE;
    TG_VK_CHECK(f.vkAllocateDescriptorSets(dev_.handle(), &ai, &set));
    sets_left_--;
    return set;
}

void Sequence::barrier() {
    VkMemoryBarrier mb{VK_STRUCTURE_TYPE_MEMORY_BARRIER};
    mb.srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT;
    mb.dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_READ_BIT |
                       VK_ACCESS_TRANSFER_WRITE_BIT;
    const VkPipelineStageFlags stages = VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
    fns().vkCmdPipelineBarrier(cmd_, stages, stages, 0, 1, &mb, 0, nullptr, 0, nullptr);
}

void Sequence::dispatch(Pipeline& p, const std::vector<const Buffer*>& buffers, const void* push, uint32_t push_bytes,
                        uint32_t gx, uint32_t gy, uint32_t gz) {
    const Fns& f = fns();
    if (finished_) throw VulkanError(fmt("dispatch of %s into a finished command sequence", p.name().c_str()));
    if (buffers.size() != p.n_buffers() || push_bytes != p.push_bytes() || p.n_buffers() > kMaxBindings)
        throw VulkanError(fmt("shader %s takes %u buffers and %u bytes of push constants, given %zu and %u",
                              p.name().c_str(), p.n_buffers(), p.push_bytes(), buffers.size(), push_bytes));
    const uint32_t* lim = dev_.info().max_workgroup_count;
    if (gx == 0 || gy == 0 || gz == 0 || gx > lim[0] || gy > lim[1] || gz > lim[2])
        throw VulkanError(fmt("shader %s: %u x %u x %u workgroups, the device allows 1..%u x %u x %u",
                              p.name().c_str(), gx, gy, gz, lim[0], lim[1], lim[2]));
    VkDescriptorSet set = new_set(p.set_layout());
    std::vector<VkDescriptorBufferInfo> infos(buffers.size());
    std::vector<VkWriteDescriptorSet> writes(buffers.size());
    for (size_t i = 0; i < buffers.size(); i++) {
        infos[i] = {buffers[i]->handle(), 0, VK_WHOLE_SIZE};
        writes[i] = {VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET};
        writes[i].dstSet = set;
        writes[i].dstBinding = (uint32_t)i;
        writes[i].descriptorCount = 1;
        writes[i].descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
        writes[i].pBufferInfo = &infos[i];
    }
    f.vkUpdateDescriptorSets(dev_.handle(), (uint32_t)writes.size(), writes.data(), 0, nullptr);
    f.vkCmdBindPipeline(cmd_, VK_PIPELINE_BIND_POINT_COMPUTE, p.handle());
    f.vkCmdBindDescriptorSets(cmd_, VK_PIPELINE_BIND_POINT_COMPUTE, p.layout(), 0, 1, &set, 0, nullptr);
    if (push_bytes) f.vkCmdPushConstants(cmd_, p.layout(), VK_SHADER_STAGE_COMPUTE_BIT, 0, push_bytes, push);
    f.vkCmdDispatch(cmd_, gx, gy, gz);
    barrier();
    commands_++;
}

void Sequence::copy(const Buffer& src, const Buffer& dst, uint64_t bytes, uint64_t src_offset, uint64_t dst_offset) {
    if (finished_) throw VulkanError("copy into a finished command sequence");
    if (bytes == 0) return;
    if (src_offset + bytes > src.size() || dst_offset + bytes > dst.size())
        throw VulkanError(fmt("copy of %llu bytes from offset %llu of a %llu-byte buffer to offset %llu of a %llu-byte one",
                              (unsigned long long)bytes, (unsigned long long)src_offset, (unsigned long long)src.size(),
                              (unsigned long long)dst_offset, (unsigned long long)dst.size()));
    VkBufferCopy region{src_offset, dst_offset, bytes};
    fns().vkCmdCopyBuffer(cmd_, src.handle(), dst.handle(), 1, &region);
    barrier();
    commands_++;
}

void Sequence::finish() {
    if (finished_) return;
    host_read_barrier(cmd_);
    TG_VK_CHECK(fns().vkEndCommandBuffer(cmd_));
    finished_ = true;
}

void Sequence::run() {
    finish();
    dev_.submit_and_wait(cmd_);
}

// ---- Device -----------------------------------------------------------------------------------------

Device::Device(int index) : index_(index) {
    Instance& inst = Instance::get();
    const Fns& f = fns();
    physical_ = inst.physical(index);
    info_ = inst.devices()[(size_t)index];
    if (info_.api < VK_API_VERSION_1_1)
        throw VulkanError(fmt("Vulkan device %d (%s) offers API %s; 1.1 or later is required", index, info_.name.c_str(),
                              info_.api_version.c_str()));
    f.vkGetPhysicalDeviceMemoryProperties(physical_, &mem_);

    uint32_t nq = 0;
    f.vkGetPhysicalDeviceQueueFamilyProperties(physical_, &nq, nullptr);
    std::vector<VkQueueFamilyProperties> qf(nq);
    f.vkGetPhysicalDeviceQueueFamilyProperties(physical_, &nq, qf.data());
    // A compute-only family where there is one (it runs beside graphics work on the card), else any with compute.
    int family = -1;
    for (uint32_t i = 0; i < nq; i++)
        if ((qf[i].queueFlags & VK_QUEUE_COMPUTE_BIT) && !(qf[i].queueFlags & VK_QUEUE_GRAPHICS_BIT)) { family = (int)i; break; }
    for (uint32_t i = 0; family < 0 && i < nq; i++)
        if (qf[i].queueFlags & VK_QUEUE_COMPUTE_BIT) family = (int)i;
    if (family < 0) throw VulkanError(fmt("Vulkan device %d (%s) has no compute queue", index, info_.name.c_str()));

    const float priority = 1.0f;
    VkDeviceQueueCreateInfo qi{VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO};
    qi.queueFamilyIndex = (uint32_t)family;
    qi.queueCount = 1;
    qi.pQueuePriorities = &priority;
    VkDeviceCreateInfo di{VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO};
    di.queueCreateInfoCount = 1;
    di.pQueueCreateInfos = &qi;
    TG_VK_CHECK(f.vkCreateDevice(physical_, &di, nullptr, &device_));
    try {
        f.vkGetDeviceQueue(device_, (uint32_t)family, 0, &queue_);
        VkCommandPoolCreateInfo pi{VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO};
        pi.queueFamilyIndex = (uint32_t)family;
        pi.flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT;
        TG_VK_CHECK(f.vkCreateCommandPool(device_, &pi, nullptr, &pool_));
        VkFenceCreateInfo fi{VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
        TG_VK_CHECK(f.vkCreateFence(device_, &fi, nullptr, &fence_));
    } catch (...) {
        if (pool_) f.vkDestroyCommandPool(device_, pool_, nullptr);
        f.vkDestroyDevice(device_, nullptr);
        throw;
    }
    // Power of two (the shaders' tree reductions need one), within what the device runs in one workgroup.
    workgroup_ = 64;
    while (workgroup_ > info_.max_workgroup_invocations) workgroup_ /= 2;
}

Device::~Device() {
    const Fns& f = fns();
    f.vkDeviceWaitIdle(device_);
    pipelines_.clear();
    staging_.reset();
    dummy_.reset();
    f.vkDestroyFence(device_, fence_, nullptr);
    f.vkDestroyCommandPool(device_, pool_, nullptr);
    f.vkDestroyDevice(device_, nullptr);
}

uint32_t Device::memory_type(uint32_t allowed_bits, bool staging) const {
    const VkMemoryPropertyFlags want = staging ? (VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT)
                                               : VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT;
    for (uint32_t i = 0; i < mem_.memoryTypeCount; i++)
        if ((allowed_bits & (1u << i)) && (mem_.memoryTypes[i].propertyFlags & want) == want) return i;
    if (!staging)  // no device-local memory for this buffer: any memory it allows
        for (uint32_t i = 0; i < mem_.memoryTypeCount; i++)
            if (allowed_bits & (1u << i)) return i;
    throw VulkanError(fmt("%s has no %s memory type for a buffer (allowed type bits 0x%x)", info_.name.c_str(),
                          staging ? "host-visible coherent" : "usable", allowed_bits));
}

std::unique_ptr<Buffer> Device::buffer(uint64_t bytes) { return std::make_unique<Buffer>(*this, bytes, false); }

Buffer& Device::staging(uint64_t bytes) {
    if (!staging_ || staging_->size() < bytes) {
        staging_.reset();
        staging_ = std::make_unique<Buffer>(*this, bytes, true);
    }
    return *staging_;
}

const Buffer& Device::dummy() {
    if (!dummy_) dummy_ = buffer(16);
    return *dummy_;
}

void Device::submit_and_wait(VkCommandBuffer cmd) {
    const Fns& f = fns();
    VkSubmitInfo si{VK_STRUCTURE_TYPE_SUBMIT_INFO};
    si.commandBufferCount = 1;
    si.pCommandBuffers = &cmd;
    TG_VK_CHECK(f.vkResetFences(device_, 1, &fence_));
    TG_VK_CHECK(f.vkQueueSubmit(queue_, 1, &si, fence_));
    TG_VK_CHECK(f.vkWaitForFences(device_, 1, &fence_, VK_TRUE, UINT64_MAX));
}

namespace {
constexpr uint64_t kStagingChunk = 64ull << 20;  // transfers go through a staging buffer of at most this size
}

void Device::upload(Buffer& dst, const void* src, uint64_t bytes, uint64_t dst_offset) {
    if (dst_offset + bytes > dst.size())
        throw VulkanError(fmt("upload of %llu bytes at offset %llu into a %llu-byte buffer", (unsigned long long)bytes,
                              (unsigned long long)dst_offset, (unsigned long long)dst.size()));
    const uint8_t* p = static_cast<const uint8_t*>(src);
    for (uint64_t done = 0; done < bytes;) {
        // Copies of a buffer must be multiples of 4 bytes from 4-aligned offsets to be portable; the tail of a
        // buffer whose size is not is padded with zeros (buffers are allocated rounded up to 4).
        const uint64_t n = std::min(bytes - done, kStagingChunk);
        const uint64_t padded = std::min<uint64_t>((n + 3) & ~uint64_t(3), dst.size() - dst_offset - done);
        Buffer& st = staging(padded);
        std::memcpy(st.mapped(), p + done, n);
        if (padded > n) std::memset((uint8_t*)st.mapped() + n, 0, padded - n);
        Sequence seq(*this);
        seq.copy(st, dst, padded, 0, dst_offset + done);
        seq.run();
        done += n;
    }
}

void Device::download(const Buffer& src, void* dst, uint64_t bytes, uint64_t src_offset) {
    if (src_offset + bytes > src.size())
        throw VulkanError(fmt("download of %llu bytes at offset %llu from a %llu-byte buffer", (unsigned long long)bytes,
                              (unsigned long long)src_offset, (unsigned long long)src.size()));
    uint8_t* p = static_cast<uint8_t*>(dst);
    for (uint64_t done = 0; done < bytes;) {
        const uint64_t n = std::min(bytes - done, kStagingChunk);
        const uint64_t padded = std::min<uint64_t>((n + 3) & ~uint64_t(3), src.size() - src_offset - done);
        Buffer& st = staging(padded);
        Sequence seq(*this);
        seq.copy(src, st, padded, src_offset + done, 0);
        seq.run();
        std::memcpy(p + done, st.mapped(), n);
        done += n;
    }
}

Pipeline& Device::pipeline(const std::string& shader, uint32_t n_buffers, uint32_t push_bytes) {
    auto it = pipelines_.find(shader);
    if (it != pipelines_.end()) {
        if (it->second->n_buffers() != n_buffers || it->second->push_bytes() != push_bytes)
            throw VulkanError(fmt("shader %s was made with %u buffers and %u push bytes, asked again with %u and %u",
                                  shader.c_str(), it->second->n_buffers(), it->second->push_bytes(), n_buffers, push_bytes));
        return *it->second;
    }
    auto p = std::make_unique<Pipeline>(*this, shader, n_buffers, push_bytes, workgroup_);
    Pipeline& ref = *p;
    pipelines_[shader] = std::move(p);
    return ref;
}

}  // namespace vk
}  // namespace tg
