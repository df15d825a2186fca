// Typed, shape-checked access to a model's tensors in a GGUF file.
// Matrices stay zero-copy views into the mapping (unless the kernels repack them once);
// 1-D parameters (norms, biases, the vision side's embedding tables) are returned as float32,
// converted once into the model's arena when the file stores them as F16/BF16.
#pragma once
#include <deque>
#include <set>
#include <string>
#include <vector>

#include "gguf.h"
#include "kernels/matmul.h"

namespace tg {

class Exec;

class WeightLoader {
public:
    // ex: threads for repacking weights at load (may be null: the calling thread repacks).
    WeightLoader(const GGUFFile& file, std::deque<std::vector<float>>& arena, Exec* ex = nullptr)
        : f_(file), arena_(arena), pool_(ex) {}

    bool has(const std::string& name) const { return f_.find_tensor(name) != nullptr; }

    // A [n_out, n_in] weight (GGUF shape [n_in, n_out]) in a type the kernels support. With prepare
    // (the default) the kernels repack it once for their SIMD layout; the file pages it came from are
    // then released from memory (they are read again only if something asks for them). Weights used
    // only row by row (the token embedding) are not prepared.
    MatW mat(const std::string& name, int64_t n_out, int64_t n_in, bool prepare = true);
    // n float32 values (any shape with exactly n elements; F32, F16 or BF16 storage).
    const float* vec(const std::string& name, int64_t n);
    const float* vec_or_null(const std::string& name, int64_t n) { return has(name) ? vec(name, n) : nullptr; }

    // Names of tensors never asked for (for the "unexpected tensor" check).
    std::vector<std::string> unused() const;

private:
    const GGUFTensor& get(const std::string& name);
    const GGUFFile& f_;
    std::deque<std::vector<float>>& arena_;
    Exec* pool_;
    std::set<std::string> used_;
};

}  // namespace tg
