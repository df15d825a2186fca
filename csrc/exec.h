// The execution seam: what every forward and every op runs on, in place of a bare thread pool.
//
// On the CPU an Exec owns the persistent worker threads: one per engine context (csrc/model/context.h),
// however many sequences the context holds, never one per conversation. A GPU backend plugs in here:
// model code reaches the hardware only through the Exec it is handed and the kernels it calls with it,
// so it makes no assumption about where buffers live beyond what the kernels of the backend accept.
//
// The Vulkan variant also holds the logical device (csrc/vulkan/device.h) that the context's GPU decoder
// and GPU image path record on; it keeps the thread pool for the work that stays on the CPU (the host side
// of a batch). The device type is only declared here, so this header builds without Vulkan.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>

#include "threadpool.h"

namespace tg {

namespace vk {
class Device;
}

enum class Backend { Cpu, Vulkan };

class Exec {
public:
    explicit Exec(int n_threads, std::shared_ptr<vk::Device> gpu = nullptr) : pool_(n_threads), gpu_(std::move(gpu)) {}
    Exec(const Exec&) = delete;
    Exec& operator=(const Exec&) = delete;

    Backend backend() const { return gpu_ ? Backend::Vulkan : Backend::Cpu; }
    vk::Device* gpu() const { return gpu_.get(); }  // null on the CPU backend
    int size() const { return pool_.size(); }  // threads that run a parallel job

    // See ThreadPool: a static contiguous split, or chunks taken in turn. Not reentrant.
    void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t, int)>& fn) {
        pool_.parallel_for(n, grain, fn);
    }
    void parallel_chunks(int64_t n, int64_t chunk, const std::function<void(int64_t, int64_t, int)>& fn) {
        pool_.parallel_chunks(n, chunk, fn);
    }

private:
    ThreadPool pool_;
    std::shared_ptr<vk::Device> gpu_;
};

}  // namespace tg
