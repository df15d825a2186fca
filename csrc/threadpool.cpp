#include "threadpool.h"

#include <algorithm>

namespace tg {

// Spin iterations before sleeping (a pause is a few tens of nanoseconds: tens of microseconds total).
static const int kSpin = 4000;

static inline void cpu_relax() {
#if defined(TINYGPTV_X86)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("isb" ::: "memory");  // a short stall as pause is (yield is a no-op on many cores)
#else
    std::this_thread::yield();
#endif
}

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
    for (int i = 1; i < n_threads_; i++) threads_.emplace_back(&ThreadPool::worker, this, i);
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lk(mu_);
        stop_.store(true, std::memory_order_release);
    }
    cv_start_.notify_all();
    for (auto& t : threads_) t.join();
}

static void chunk_of(int64_t n, int64_t grain, int n_threads, int index, int64_t* b, int64_t* e) {
    int64_t blocks = (n + grain - 1) / grain;
    int64_t per = blocks / n_threads, rem = blocks % n_threads;
    int64_t b0 = index * per + std::min<int64_t>(index, rem);
    int64_t b1 = b0 + per + (index < rem ? 1 : 0);
    *b = std::min(n, b0 * grain);
    *e = std::min(n, b1 * grain);
}

// Takes chunks of a dynamic job until none is left: `chunk` items at a time while much is left, then
// a 2 * n_threads-th of what is left (at least 1), so that the threads finish close together.
static void take_chunks(std::atomic<int64_t>& next, int64_t n, int64_t chunk, int n_threads, int index,
                        const std::function<void(int64_t, int64_t, int)>& fn) {
    int64_t b = next.load(std::memory_order_relaxed);
    for (;;) {
        if (b >= n) return;
        const int64_t len = std::min(chunk, std::max<int64_t>(1, (n - b) / (2 * n_threads)));
        if (next.compare_exchange_weak(b, b + len, std::memory_order_relaxed)) {
            fn(b, b + len, index);
            b = next.load(std::memory_order_relaxed);
        }
    }
}

void ThreadPool::parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t, int)>& fn) {
    run(n, grain, false, fn);
}

void ThreadPool::parallel_chunks(int64_t n, int64_t chunk, const std::function<void(int64_t, int64_t, int)>& fn) {
    run(n, chunk, true, fn);
}

void ThreadPool::run(int64_t n, int64_t grain, bool dynamic, const std::function<void(int64_t, int64_t, int)>& fn) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    if (n_threads_ == 1 || n <= grain) {
        fn(0, n, 0);
        return;
    }
    {
        std::lock_guard<std::mutex> lk(mu_);
        job_ = &fn;
        job_n_ = n;
        job_grain_ = grain;
        job_dynamic_ = dynamic;
        next_chunk_.store(0, std::memory_order_relaxed);
        pending_.store(n_threads_ - 1, std::memory_order_relaxed);
        generation_.fetch_add(1, std::memory_order_release);
    }
    cv_start_.notify_all();
    if (dynamic) {
        take_chunks(next_chunk_, n, grain, n_threads_, 0, fn);
    } else {
        int64_t b, e;
        chunk_of(n, grain, n_threads_, 0, &b, &e);
        if (b < e) fn(b, e, 0);
    }
    for (int i = 0; i < kSpin && pending_.load(std::memory_order_acquire) != 0; i++) cpu_relax();
    if (pending_.load(std::memory_order_acquire) != 0) {
        std::unique_lock<std::mutex> lk(mu_);
        cv_done_.wait(lk, [&] { return pending_.load(std::memory_order_acquire) == 0; });
    }
}

void ThreadPool::worker(int index) {
    uint64_t seen = 0;
    for (;;) {
        uint64_t g = generation_.load(std::memory_order_acquire);
        for (int i = 0; i < kSpin && g == seen && !stop_.load(std::memory_order_relaxed); i++) {
            cpu_relax();
            g = generation_.load(std::memory_order_acquire);
        }
        if (g == seen) {
            std::unique_lock<std::mutex> lk(mu_);
            cv_start_.wait(lk, [&] {
                return stop_.load(std::memory_order_acquire) || generation_.load(std::memory_order_acquire) != seen;
            });
            g = generation_.load(std::memory_order_acquire);
        }
        if (stop_.load(std::memory_order_acquire)) return;
        seen = g;
        const std::function<void(int64_t, int64_t, int)>* job;
        int64_t n, grain;
        bool dynamic;
        {
            std::lock_guard<std::mutex> lk(mu_);  // cheap, uncontended: orders the job fields for TSan too
            job = job_;
            n = job_n_;
            grain = job_grain_;
            dynamic = job_dynamic_;
        }
        if (dynamic) {
            take_chunks(next_chunk_, n, grain, n_threads_, index, *job);
        } else {
            int64_t b, e;
            chunk_of(n, grain, n_threads_, index, &b, &e);
            if (b < e) (*job)(b, e, index);
        }
        if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            std::lock_guard<std::mutex> lk(mu_);
            cv_done_.notify_one();
        }
    }
}

}  // namespace tg
