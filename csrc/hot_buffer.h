// Memory for large arrays walked with big strides (the vision tower's activations: a head's rows of
// q, k, v lie a whole qkv row apart): 64-byte aligned, and from 2 MB up 2 MB aligned and advised for
// transparent huge pages, so that those walks miss the TLB 512x less (the larger the image, the more
// the vision tower's encode gains).
// Advice only: where the system has no transparent huge pages this is plain aligned memory. Not for
// the weights (see matmul.cpp prepare: their load got slower and less predictable).
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
