#include "membench.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include "exec.h"

namespace tg {

double read_bandwidth(size_t bytes, int n_threads) {
    const size_t n = std::max<size_t>(bytes / sizeof(uint64_t), 1024);
    std::vector<uint64_t> buf(n);
    for (size_t i = 0; i < n; i++) buf[i] = i;
    Exec ex(n_threads);
    std::vector<uint64_t> sink(64 * (size_t)n_threads);
    double best = 0;
    for (int pass = 0; pass < 4; pass++) {
        auto t0 = std::chrono::steady_clock::now();
        ex.parallel_for((int64_t)n, 4096, [&](int64_t b, int64_t e, int t) {
            // Eight independent accumulators keep the loads in flight.
            uint64_t a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            int64_t i = b;
            for (; i + 8 <= e; i += 8)
                for (int k = 0; k < 8; k++) a[k] ^= buf[(size_t)(i + k)];
            for (; i < e; i++) a[0] ^= buf[(size_t)i];
            sink[64 * (size_t)t] = a[0] ^ a[1] ^ a[2] ^ a[3] ^ a[4] ^ a[5] ^ a[6] ^ a[7];
        });
        double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        best = std::max(best, (double)(n * sizeof(uint64_t)) / s / 1e9);
    }
    return best;
}

}  // namespace tg
