// The Vulkan device layer: the instance (with the validation layer on request), the physical devices and
// what they offer, a logical device with one compute queue, buffers (one per tensor), staging transfers,
// compute pipelines from the embedded SPIR-V, and command sequences recorded once and replayed.
//
// Nothing here runs at import: the instance is made on first use. Every failure is a VulkanError that
// names the Vulkan call and its VkResult, or the limit and the value that broke it.
#pragma once
#include <vulkan/vulkan.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace tg {
namespace vk {

struct MemoryHeap {
    uint64_t size = 0;
    bool device_local = false;
    // VK_EXT_memory_budget (has_budget): what this process may allocate from the heap now, other processes'
    // use deducted, and what it has allocated; both change as memory is taken, so they are read on demand.
    bool has_budget = false;
    uint64_t budget = 0, usage = 0;
};

struct DeviceInfo {
    int index = 0;
    std::string name;
    std::string type;  // "discrete", "integrated", "virtual", "cpu", "other"
    uint32_t api = 0;            // VK_MAKE_API_VERSION form
    std::string api_version;     // "1.3.230"
    std::string driver;          // the driver's name and version text where the device reports them
    uint32_t vendor_id = 0, device_id = 0;
    std::vector<MemoryHeap> heaps;
    uint32_t subgroup_size = 0;
    bool fp16 = false;           // shaderFloat16
    bool int8 = false;           // shaderInt8
    bool storage16 = false;      // 16-bit storage buffer access
    bool storage8 = false;       // 8-bit storage buffer access
    bool cooperative_matrix = false;  // VK_KHR_cooperative_matrix (or the NV one) is offered
    bool memory_budget = false;  // VK_EXT_memory_budget is offered
    uint64_t max_storage_buffer_range = 0;
    uint64_t max_allocation = 0;  // maxMemoryAllocationSize
    uint32_t max_shared_memory = 0;
    uint32_t max_workgroup_invocations = 0;
    uint32_t max_workgroup_count[3] = {0, 0, 0};
    uint32_t max_push_constants = 0;
};

// The process's Vulkan instance, made on first use and kept for the life of the process (the driver's
// own teardown at exit runs in an order we do not control, so it is never destroyed). The validation layer
// and a debug-utils messenger are enabled when TINYGPTV_VK_VALIDATION=1; every message it sends is kept
// until take_messages() so tests can fail on any.
class Instance {
public:
    static Instance& get();  // throws VulkanError (no loader, no instance, validation asked for but absent)
    VkInstance handle() const { return instance_; }
    bool validation() const { return validation_; }
    const std::vector<DeviceInfo>& devices() const { return infos_; }
    VkPhysicalDevice physical(int index) const;  // throws VulkanError for an index out of range
    // Device `index`'s heaps as of now (with the driver's budget and usage where it offers VK_EXT_memory_budget).
    std::vector<MemoryHeap> memory_heaps(int index) const;

    void record_message(const std::string& m);
    std::vector<std::string> take_messages();

private:
    Instance();
    VkInstance instance_ = VK_NULL_HANDLE;
    VkDebugUtilsMessengerEXT messenger_ = VK_NULL_HANDLE;
    bool validation_ = false;
    std::vector<VkPhysicalDevice> physical_;
    std::vector<DeviceInfo> infos_;
    std::mutex messages_mutex_;
    std::vector<std::string> messages_;
};

class Device;

// One storage buffer with its own memory: device-local where the device has such memory, else host-visible
// (staging buffers). Sizes are rounded up to 4 bytes, as shaders read 32-bit words.
class Buffer {
public:
    Buffer(Device& dev, uint64_t bytes, bool staging);
    ~Buffer();
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    VkBuffer handle() const { return buffer_; }
    uint64_t size() const { return size_; }
    void* mapped() const { return mapped_; }  // staging buffers only

private:
    Device& dev_;
    VkBuffer buffer_ = VK_NULL_HANDLE;
    VkDeviceMemory memory_ = VK_NULL_HANDLE;
    uint64_t size_ = 0;
    void* mapped_ = nullptr;
};

// A compute pipeline of one embedded shader: n_buffers storage buffers at bindings 0..n-1 of set 0, and
// push_bytes of push constants. The workgroup size is the shader's specialization constant 0.
class Pipeline {
public:
    Pipeline(Device& dev, const std::string& shader, uint32_t n_buffers, uint32_t push_bytes, uint32_t workgroup);
    ~Pipeline();
    Pipeline(const Pipeline&) = delete;
    Pipeline& operator=(const Pipeline&) = delete;
    const std::string& name() const { return name_; }
    uint32_t n_buffers() const { return n_buffers_; }
    uint32_t push_bytes() const { return push_bytes_; }
    uint32_t workgroup() const { return workgroup_; }
    VkPipeline handle() const { return pipeline_; }
    VkPipelineLayout layout() const { return layout_; }
    VkDescriptorSetLayout set_layout() const { return set_layout_; }

private:
    Device& dev_;
    std::string name_;
    uint32_t n_buffers_, push_bytes_, workgroup_;
    VkDescriptorSetLayout set_layout_ = VK_NULL_HANDLE;
    VkPipelineLayout layout_ = VK_NULL_HANDLE;
    VkPipeline pipeline_ = VK_NULL_HANDLE;
};

// Commands recorded once and submitted any number of times: dispatches (each with its own descriptor set,
// so a replay binds the same buffers), copies, and a full compute barrier after each, so every command sees
// the results of the ones before it. run() submits and waits.
class Sequence {
public:
    explicit Sequence(Device& dev);
    ~Sequence();
    Sequence(const Sequence&) = delete;
    Sequence& operator=(const Sequence&) = delete;

    void dispatch(Pipeline& p, const std::vector<const Buffer*>& buffers, const void* push, uint32_t push_bytes,
                  uint32_t gx, uint32_t gy = 1, uint32_t gz = 1);
    void copy(const Buffer& src, const Buffer& dst, uint64_t bytes, uint64_t src_offset = 0, uint64_t dst_offset = 0);
    void finish();  // ends the recording; later dispatches are an error
    void run();     // submits (finishing first if needed) and waits for the device
    Device& device() const { return dev_; }
    bool finished() const { return finished_; }
    int commands() const { return commands_; }

private:
    void barrier();
    VkDescriptorSet new_set(VkDescriptorSetLayout layout);
    Device& dev_;
    VkCommandBuffer cmd_ = VK_NULL_HANDLE;
    std::vector<VkDescriptorPool> pools_;
    uint32_t sets_left_ = 0;
    bool finished_ = false;
    int commands_ = 0;
};

// A logical device with one compute queue, its command pool and fence, a staging buffer for transfers and
// the pipelines made so far. Not thread-safe: its owner serialises use (one engine context each).
class Device {
public:
    explicit Device(int index);
    ~Device();
    Device(const Device&) = delete;
    Device& operator=(const Device&) = delete;

    const DeviceInfo& info() const { return info_; }
    VkDevice handle() const { return device_; }
    VkQueue queue() const { return queue_; }
    VkCommandPool command_pool() const { return pool_; }
    VkFence fence() const { return fence_; }
    uint32_t memory_type(uint32_t allowed_bits, bool staging) const;

    std::unique_ptr<Buffer> buffer(uint64_t bytes);                         // device memory, one tensor
    void upload(Buffer& dst, const void* src, uint64_t bytes, uint64_t dst_offset = 0);
    void download(const Buffer& src, void* dst, uint64_t bytes, uint64_t src_offset = 0);
    // The cached pipeline of a shader (made on first use).
    Pipeline& pipeline(const std::string& shader, uint32_t n_buffers, uint32_t push_bytes);
    // A 4-word buffer bound where an optional input (a bias, a norm's weight) is absent.
    const Buffer& dummy();
    uint32_t workgroup() const { return workgroup_; }
    void submit_and_wait(VkCommandBuffer cmd);

private:
    Buffer& staging(uint64_t bytes);
    int index_;
    DeviceInfo info_;
    VkPhysicalDevice physical_ = VK_NULL_HANDLE;
    VkDevice device_ = VK_NULL_HANDLE;
    VkQueue queue_ = VK_NULL_HANDLE;
    VkCommandPool pool_ = VK_NULL_HANDLE;
    VkFence fence_ = VK_NULL_HANDLE;
    VkPhysicalDeviceMemoryProperties mem_{};
    uint32_t workgroup_ = 64;
    std::unique_ptr<Buffer> staging_;
    std::unique_ptr<Buffer> dummy_;
    std::map<std::string, std::unique_ptr<Pipeline>> pipelines_;
};

}  // namespace vk
}  // namespace tg
