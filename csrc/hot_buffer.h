// Memory for the engine's large, hot arrays (repacked weights, the vision tower's activations):
// 64-byte aligned, and from 2 MB up 2 MB aligned and advised for transparent huge pages, so that
// streams through them cross no 4 KB page boundary (where the hardware prefetchers stop) and
// strided walks (a head's rows of q, k, v) miss the TLB 512x less. Advice only: where the system
// has no transparent huge pages this is plain aligned memory.
#pragma once
#include <cstddef>
#include <cstdlib>
#include <new>
#include <vector>

namespace tg {

void* hot_alloc(size_t bytes);  // free with std::free; throws std::bad_alloc

template <class T>
struct HotAllocator {
    using value_type = T;
    HotAllocator() = default;
    template <class U> HotAllocator(const HotAllocator<U>&) {}
    T* allocate(size_t n) { return (T*)hot_alloc(n * sizeof(T)); }
    void deallocate(T* p, size_t) { std::free(p); }
    template <class U> bool operator==(const HotAllocator<U>&) const { return true; }
    template <class U> bool operator!=(const HotAllocator<U>&) const { return false; }
};

template <class T>
using HotVector = std::vector<T, HotAllocator<T>>;

}  // namespace tg
