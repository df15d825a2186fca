#include "hot_buffer.h"

#include <cstdio>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace tg {

constexpr size_t kHuge = (size_t)2 << 20;

#if defined(__linux__) && defined(MADV_HUGEPAGE)
// Bytes the kernel holds free in blocks of 2 MB or more (/proc/buddyinfo: per zone, the count of free
// blocks of each order, 4 KB << order); 0 if unknown. Huge pages are asked for only when that many
// are free already: where they must first be made by compaction, a fault stalls on it (measured: a
// 2 GB model's load went from 0.65 s to 1.75 s after a 15 GB process had run).
static size_t free_huge_bytes() {
    FILE* f = std::fopen("/proc/buddyinfo", "r");
    if (!f) return 0;
    size_t total = 0;
    char zone[32];
    while (std::fscanf(f, " Node %*d, zone %31s", zone) == 1) {
        for (int order = 0; order <= 10; order++) {
            unsigned long n = 0;
            if (std::fscanf(f, "%lu", &n) != 1) break;
            if (order >= 9) total += (size_t)n * ((size_t)4096 << order);
        }
        std::fscanf(f, "%*[^\n]");  // orders above 10 (some kernels), if any
    }
    std::fclose(f);
    return total;
}
#endif

void* hot_alloc(size_t bytes) {
    const size_t align = bytes >= kHuge ? kHuge : 64;
    void* p = std::aligned_alloc(align, (bytes + align - 1) / align * align);  // (a size of 0 is rounded to 0)
    if (!p && bytes) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (align == kHuge && free_huge_bytes() >= 2 * bytes) madvise(p, bytes / kHuge * kHuge, MADV_HUGEPAGE);
#endif
    return p;
}

}  // namespace tg
