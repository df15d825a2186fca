#include "threadpool.h"

#include <algorithm>

namespace tg {

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
    for (int i = 1; i < n_threads_; i++) threads_.emplace_back(&ThreadPool::worker, this, i);
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lk(mu_);
        stop_ = true;
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

void ThreadPool::parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t, int)>& fn) {
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
        pending_ = n_threads_ - 1;
        generation_++;
    }
    cv_start_.notify_all();
    int64_t b, e;
    chunk_of(n, grain, n_threads_, 0, &b, &e);
    if (b < e) fn(b, e, 0);
    std::unique_lock<std::mutex> lk(mu_);
    cv_done_.wait(lk, [&] { return pending_ == 0; });
    job_ = nullptr;
}

void ThreadPool::worker(int index) {
    uint64_t seen = 0;
    for (;;) {
        const std::function<void(int64_t, int64_t, int)>* job;
        int64_t n, grain;
        {
            std::unique_lock<std::mutex> lk(mu_);
            cv_start_.wait(lk, [&] { return stop_ || generation_ != seen; });
            if (stop_) return;
            seen = generation_;
            job = job_;
            n = job_n_;
            grain = job_grain_;
        }
        int64_t b, e;
        chunk_of(n, grain, n_threads_, index, &b, &e);
        if (b < e) (*job)(b, e, index);
        {
            std::lock_guard<std::mutex> lk(mu_);
            if (--pending_ == 0) cv_done_.notify_one();
        }
    }
}

}  // namespace tg
