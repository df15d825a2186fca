#include "hot_buffer.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace tg {

void* hot_alloc(size_t bytes) {
    constexpr size_t kHuge = (size_t)2 << 20;
    const size_t align = bytes >= kHuge ? kHuge : 64;
    void* p = std::aligned_alloc(align, (bytes + align - 1) / align * align);  // (a size of 0 is rounded to 0)
    if (!p && bytes) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (align == kHuge) madvise(p, bytes / kHuge * kHuge, MADV_HUGEPAGE);  // advice only
#endif
    return p;
}

}  // namespace tg
