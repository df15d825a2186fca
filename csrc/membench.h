// Measures how fast this machine streams memory into the cores: the ceiling of matrix-vector speed.
#pragma once
#include <cstddef>

namespace tg {

// Reads a buffer of `bytes` (allocated and touched first) with n_threads threads; returns GB/s of the
// fastest of a few passes.
double read_bandwidth(size_t bytes, int n_threads);

}  // namespace tg
