// The Python binding is split per component; module.cpp calls each bind_* once.
// Only files under csrc/python/ include pybind11.
#pragma once
#include <pybind11/pybind11.h>

#include <mutex>
#include <string>
#include <utility>

#include "ggml_type.h"
#include "sampler.h"

namespace tg {

// Sampling settings as the Python keyword arguments name them (Sampler and Generator share them).
inline SamplerParams sampler_params(float temperature, int top_k, float top_p, float min_p, float repetition_penalty,
                                    int penalty_last_n, uint64_t seed) {
    SamplerParams p;
    p.temperature = temperature;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.repetition_penalty = repetition_penalty;
    p.penalty_last_n = penalty_last_n;
    p.seed = seed;
    return p;
}

// Runs fn under a context's lock with the GIL released, and returns its (C++) result. A thread that waits
// for the lock while another decodes must not hold the GIL meanwhile: that would stop every other Python
// thread, the server's event loop among them, for up to a whole step. fn must not touch Python objects.
template <class Lockable, class Fn>
auto without_gil_locked(Lockable& c, Fn&& fn) -> decltype(fn()) {
    pybind11::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lk(c.mutex());
    return std::forward<Fn>(fn)();
}

// A GGML type by its name, any case ("q4_0", "Q4_K"); ModelError for an unknown one (bind_kernels.cpp).
GgmlType type_from_name(const std::string& name);

void bind_errors(pybind11::module_& m);
void bind_kernels(pybind11::module_& m);    // quantizers
void bind_kernel_hooks(pybind11::module_& t);  // _testing: matmul, attention, vector math, ISA control
void bind_tokenizer(pybind11::module_& m);  // Tokenizer, StreamDecoder, Sampler
void bind_model(pybind11::module_& m);      // GGUF reader, the Model
void bind_context(pybind11::module_& m);    // the engine Context, its batches and image embeddings
void bind_generate(pybind11::module_& m);   // the token loop (Generator), tokenizer of a Model
void bind_bench(pybind11::module_& t);      // _testing: machine measurements for the benchmarks
void bind_log(pybind11::module_& m);        // the core's log lines to a Python callable
// vulkan_built, vulkan_devices; _testing: the Vulkan kernels (with or without the backend built)
void bind_vulkan(pybind11::module_& m, pybind11::module_& t);
}  // namespace tg
