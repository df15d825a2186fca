// The Phi-2 decoder on a Vulkan device, or its first layers (llama.cpp's -ngl): the weights uploaded once
// (one buffer per tensor, a tensor larger than the device's storage-buffer range split by rows over several),
// the F16 KV cache per sequence slot on the device, and the forward of a batch as one command sequence per
// step, so the host waits once per step, for the logits. A step's commands are recorded once per shape (its
// rows, which are token or embedding rows, its runs of one sequence with their slots, which rows want
// logits) and replayed while the shape repeats: the values that change from step to step (embedding rows,
// token ids, positions) reach the shaders through the step's input buffer, never through the recording.
//
// The same rows as the CPU's phi_decode (model/phi.h): tokens or embedding rows of any sequences, each with
// its position and whether its logits are wanted; a sequence's rows contiguous and continuing its slot (the
// context checks). What each slot holds (its cells) stays on the host in the context's KvCache. Holding the
// first layers only, a step ends with the hidden state read back instead of the logits: the output norm and
// head stay on the CPU with the other layers, as llama.cpp keeps them with the layers it does not offload.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "ggml_type.h"
#include "kernels/matmul.h"
#include "model/gpu_decoder.h"
#include "model/phi.h"
#include "vulkan/device.h"
#include "vulkan/weights.h"

namespace tg {
namespace vk {

struct GpuLayer {
    std::unique_ptr<Buffer> attn_norm_w, attn_norm_b;    // [n_embd]
    bool fused = false;
    GpuMat qkv;                                          // [n_embd + 2 kv_dim, n_embd] rows [q; k; v] (fused)
    std::unique_ptr<Buffer> qkv_b;                       // [n_embd + 2 kv_dim] (may be null)
    GpuMat wq, wk, wv;                                   // [n_embd | kv_dim | kv_dim, n_embd] (not fused)
    std::unique_ptr<Buffer> bq, bk, bv;                  // their biases (may be null)
    GpuMat out;                                          // [n_embd, n_embd]
    std::unique_ptr<Buffer> out_b;                       // [n_embd]
    GpuMat up;                                           // [n_ff, n_embd]
    std::unique_ptr<Buffer> up_b;                        // [n_ff]
    GpuMat down;                                         // [n_embd, n_ff]
    std::unique_ptr<Buffer> down_b;                      // [n_embd]
    std::unique_ptr<Buffer> q_norm_w, q_norm_b;          // [head_dim] (TinyGPT-V, else null)
    std::unique_ptr<Buffer> k_norm_w, k_norm_b;          // [head_dim]
    std::unique_ptr<Buffer> post_norm_w;                 // [n_embd]   (TinyGPT-V, else null)
};

struct GpuWeights {
    GpuMat tok_embd;                                     // [n_vocab, n_embd] (gathered, never multiplied)
    std::vector<GpuLayer> layers;                        // the layers on the device: the first ones
    std::unique_ptr<Buffer> out_norm_w, out_norm_b;      // [n_embd]      (with every layer only, else null)
    GpuMat output;                                       // [n_vocab, n_embd] (with every layer only)
    std::unique_ptr<Buffer> output_b;                    // [n_vocab] (may be null)
    std::unique_ptr<Buffer> rope_cos, rope_sin;          // [n_ctx][n_rot / 2], the CPU path's own tables
    size_t bytes = 0;                                    // all of the above
};

class PhiGpu : public GpuDecoder {
public:
    // Uploads the weights of hp / w's first n_layers layers (1 to n_layer; with all of them the output norm
    // and head too) to dev. max_buffer: the largest buffer a tensor part may take (0: the device's
    // storage-buffer range and allocation limit).
    // max_steps: the recorded steps kept for replay (the least recently used go first); 0 records every step.
    PhiGpu(Device& dev, const PhiHparams& hp, const PhiWeights& w, int64_t n_ctx, int n_seq, int64_t n_layers,
           uint64_t max_buffer = 0, size_t max_steps = kMaxSteps);
    static constexpr size_t kMaxSteps = 8;

    void decode(const int32_t* tokens, const float* x, const PhiRow* rows, int64_t n, float* out) override;
    void copy_prefix(int src, int dst, int64_t n) override;
    int64_t n_layers() const override { return n_layers_; }
    StepCounts step_counts() const override { return {recorded_, replayed_}; }
    size_t kv_reserved_bytes() const override;
    size_t weight_bytes() const override { return w_.bytes; }

private:
    struct StepRun {  // a run of rows of one sequence
        int64_t r0, m;
        int32_t seq;
    };
    struct Step {  // a recorded step and the shape it was recorded for
        std::vector<int64_t> key;
        std::unique_ptr<Sequence> seq;
        uint64_t used;
    };
    void record(Sequence& s, const PhiRow* rows, int64_t n, const std::vector<StepRun>& runs, bool host_rows,
                bool token_rows, int64_t n_logits);
    void read_back(float* out, int64_t n, int64_t n_logits, bool want_out) const;
    GpuMat upload_mat(const MatW& m, const char* what) { return vk::upload_mat(dev_, m, what, max_buffer_, w_.bytes); }
    std::unique_ptr<Buffer> upload_vec(const float* v, int64_t n) { return vk::upload_vec(dev_, v, n, w_.bytes); }
    bool reserve(int64_t rows, int64_t n_logits);  // whether a buffer was made anew
    std::vector<std::unique_ptr<Buffer>>& slot(int seq);  // its layers' buffers, made on first use

    Device& dev_;
    PhiHparams hp_;
    int64_t n_ctx_;
    int n_seq_;
    int64_t n_layers_;  // on the device: layers [0, n_layers_)
    bool head_;         // whether the output norm and head are here too (n_layers_ == n_layer)
    uint64_t max_buffer_;
    GpuWeights w_;
    MatW host_embd_;  // the token embedding where its type has no gather on the device (else data is null)
    // Per slot, per layer: keys [n_ctx][kv_dim] then values, F16 (empty until the slot is first written).
    std::vector<std::vector<std::unique_ptr<Buffer>>> kv_;
    // Activations of a step, float32, grown to the largest step so far.
    int64_t cap_rows_ = 0, cap_logits_ = 0;
    std::unique_ptr<Buffer> x_, h_, qkv_, att_, a_, ff_, sel_, logits_, tok_, pos_;
    std::unique_ptr<Buffer> in_, out_;  // host-visible: a step's inputs (x, tokens, positions), its logits
                                        // (or with the first layers only, the hidden state)
    int64_t split_chunk_ = 0;            // keys per split of decode attention
    std::unique_ptr<Buffer> part_;       // the splits' partial outputs, one decode row at a time
    size_t max_steps_;
    std::vector<Step> steps_;            // recorded steps, replayed while their shape repeats
    uint64_t clock_ = 0;
    int64_t recorded_ = 0, replayed_ = 0;
};

}  // namespace vk
}  // namespace tg
