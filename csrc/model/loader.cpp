#include "model/loader.h"

#include <sys/mman.h>
#include <unistd.h>

#include "errors.h"
#include "fp16.h"
#include "exec.h"

#include <cstring>

namespace tg {

// The tensor's bytes at an address aligned for its element type. A file with general.alignment < 4
// may place tensor data at any offset of the mapping; such a tensor is copied once into the arena
// (reading floats through a misaligned pointer is undefined behaviour).
static const void* aligned_data(const GGUFTensor& t, std::deque<std::vector<float>>& arena) {
    if (((uintptr_t)t.data & 3) == 0) return t.data;
    arena.emplace_back((size_t)((t.nbytes + 3) / 4));
    std::memcpy(arena.back().data(), t.data, (size_t)t.nbytes);
    return arena.back().data();
}

const GGUFTensor& WeightLoader::get(const std::string& name) {
    const GGUFTensor* t = f_.find_tensor(name);
    if (!t) throw ModelError(fmt("required tensor '%s' is missing from '%s'", name.c_str(), f_.path().c_str()));
    used_.insert(name);
    return *t;
}

// Drops the pages of [p, p + n) that lie wholly inside the range from this process's memory. The
// mapping is a read-only private file mapping, so this loses nothing: a later read faults the page in
// from the file again.
static void release_pages(const void* p, size_t n) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t b = ((uintptr_t)p + page - 1) / page * page, e = ((uintptr_t)p + n) / page * page;
    if (e > b) madvise((void*)b, e - b, MADV_DONTNEED);
}

MatW WeightLoader::mat(const std::string& name, int64_t n_out, int64_t n_in, bool prepare) {
    const GGUFTensor& t = get(name);
    if (t.n_dims != 2 || t.ne[0] != n_in || t.ne[1] != n_out)
        throw ModelError(fmt("tensor '%s' has shape %s, expected [%lld, %lld]", name.c_str(), t.shape_str().c_str(),
                             (long long)n_in, (long long)n_out));
    if (!matmul_supports(t.type))
        throw ModelError(fmt("tensor '%s' has type %s, which this engine cannot multiply with", name.c_str(),
                             type_name(t.type)));
    MatW w;
    w.type = t.type;
    w.n_out = n_out;
    w.n_in = n_in;
    w.data = aligned_data(t, arena_);
    if (prepare) {
        if (pool_) prepare_weight(w, *pool_);
        else prepare_weight(w);
        if (w.repacked && w.data == (const void*)t.data) release_pages(t.data, (size_t)t.nbytes);
    }
    return w;
}

const float* WeightLoader::vec(const std::string& name, int64_t n) {
    const GGUFTensor& t = get(name);
    if (t.nelements() != n)
        throw ModelError(fmt("tensor '%s' has shape %s (%lld elements), expected %lld elements", name.c_str(),
                             t.shape_str().c_str(), (long long)t.nelements(), (long long)n));
    const void* data = aligned_data(t, arena_);
    if (t.type == GgmlType::F32) return (const float*)data;
    if (t.type != GgmlType::F16 && t.type != GgmlType::BF16)
        throw ModelError(fmt("tensor '%s' has type %s, expected F32, F16 or BF16 (norms, biases and embeddings "
                             "are never quantized)", name.c_str(), type_name(t.type)));
    arena_.emplace_back((size_t)n);
    float* out = arena_.back().data();
    const uint16_t* p = (const uint16_t*)data;
    for (int64_t i = 0; i < n; i++) out[i] = t.type == GgmlType::F16 ? fp16_to_fp32(p[i]) : bf16_to_fp32(p[i]);
    return out;
}

std::vector<std::string> WeightLoader::unused() const {
    std::vector<std::string> out;
    for (auto& t : f_.tensors())
        if (!used_.count(t.name)) out.push_back(t.name);
    return out;
}

}  // namespace tg
