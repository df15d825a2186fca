// A persistent pool of worker threads (created once per Session or load, never per token).
// parallel_for splits [0, n) into contiguous chunks, one per thread. Work functions must write
// disjoint outputs and compute each output the same way whatever the split, so results are
// bit-identical for any thread count.
//
// Between jobs, workers spin briefly on an atomic before sleeping on a condition variable: the
// decoder issues hundreds of small jobs per token, and waking sleeping threads for each one costs
// more than the work itself.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace tg {

class ThreadPool {
public:
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }

    // fn(begin, end, thread_index) is called on every thread with a non-empty chunk of [0, n).
    // Chunks are multiples of `grain` (except the last). Blocks until all are done.
    // Not reentrant: one parallel_for at a time per pool (callers hold a Session lock).
    void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t, int)>& fn);

    // [0, n) cut into chunks that the threads take in turn until none is left: `chunk` items while
    // much is left, then smaller ones (a 2 * size()-th of what is left, at least 1) so that the threads
    // finish together. fn(begin, end, thread_index) runs once per chunk, so a thread may run it several
    // times or not at all, and a thread that runs slower (another process on its core) takes fewer.
    // For work whose outputs do not depend on which thread computes them. Blocks until all are done.
    void parallel_chunks(int64_t n, int64_t chunk, const std::function<void(int64_t, int64_t, int)>& fn);

private:
    void worker(int index);
    void run(int64_t n, int64_t grain, bool dynamic, const std::function<void(int64_t, int64_t, int)>& fn);

    int n_threads_;
    std::vector<std::thread> threads_;
    std::mutex mu_;
    std::condition_variable cv_start_, cv_done_;
    // The job: written by parallel_for before generation_ is bumped (release), read by workers after
    // they see the new generation (acquire).
    const std::function<void(int64_t, int64_t, int)>* job_ = nullptr;
    int64_t job_n_ = 0, job_grain_ = 1;
    bool job_dynamic_ = false;
    std::atomic<int64_t> next_chunk_{0};  // dynamic jobs: the first item not yet taken
    std::atomic<uint64_t> generation_{0};
    std::atomic<int> pending_{0};
    std::atomic<bool> stop_{false};
};

}  // namespace tg
