// The engine context: one execution object over a shared, immutable Model, in the manner of
// llama.cpp's llama_context + llama_batch.
//
// A Context holds an Exec (on the CPU: its thread pool, one however many sequences), a KV cache of
// n_seq sequences (slots) with the record of what each holds, the decoder's scratch, the vision
// scratch and a cache of image embeddings. decode() runs one batch: rows of any sequences, each a
// token or an embedding row, so that prompt chunks of some sequences and decode steps of others read
// the weights once. A row's result does not depend on the other rows of its batch, nor on the thread
// count.
//
// Not thread-safe: one call at a time (the bindings hold mutex() for each call).
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "exec.h"
#include "model/gpu_decoder.h"
#include "model/image_cache.h"
#include "model/kv_cache.h"
#include "model/phi.h"
#include "model/tinygptv.h"

namespace tg {

// The rows of one decode call. The rows of a sequence are contiguous and continue its slot: the first
// at the position the slot holds next, the others after it.
struct Batch {
    std::vector<int32_t> token;        // token id, or -1 where embd names the row's input
    std::vector<const float*> embd;    // n_embd floats (image rows), or null for a token
    std::vector<Cell> cell;            // what the position will be recorded as
    std::vector<int32_t> seq;
    std::vector<int64_t> pos;
    std::vector<uint8_t> logits;       // whether the row's logits are wanted

    int64_t size() const { return (int64_t)seq.size(); }
    void clear();  // keeps the capacity: a reused Batch allocates nothing
    void add_token(int32_t tok, int32_t s, int64_t p, bool want_logits);
    // A row of an image's embeddings (the buffer must outlive the decode call).
    void add_image_row(const ImageEmbd& img, int32_t row, int32_t s, int64_t p, bool want_logits);
};

class Context {
public:
    // n_ctx: positions per sequence. image_cache_bytes: bound of the image-embedding cache.
    // gpu >= 0: the decoder runs on that Vulkan device (weights uploaded here, the F16 KV cache on the device;
    // kv_f16 must be true), and so does the image path of a model that has one (its weights uploaded here
    // too). VulkanError where it cannot.
    // gpu_layers (with gpu >= 0): only the first gpu_layers decoder layers go to the device, their weights and
    // their KV cache; the rest, the output norm and head run on the CPU threads, the hidden state handed over
    // once per step. -1: every layer; 0: none (the device is opened, the decoder runs on the CPU; the image
    // path still runs on the device).
    Context(std::shared_ptr<const Model> model, int64_t n_ctx, int n_seq, int n_threads, bool kv_f16,
            size_t image_cache_bytes = 64u << 20, int gpu = -1, int64_t gpu_layers = -1);
    ~Context();

    const Model& model() const { return *model_; }
    std::shared_ptr<const Model> model_ptr() const { return model_; }
    Exec& exec() { return ex_; }
    int64_t n_ctx() const { return kv_.n_ctx(); }
    int n_seq() const { return kv_.n_seq(); }
    int n_threads() const { return ex_.size(); }
    const KvCache& kv() const { return kv_; }
    Backend backend() const { return ex_.backend(); }
    // Bytes of the KV cache reserved by the sequences written so far: on the device and on the host.
    size_t kv_reserved_bytes() const { return gpu_kv_bytes() + kv_.reserved_bytes(); }
    size_t gpu_kv_bytes() const { return gpu_ ? gpu_->kv_reserved_bytes() : 0; }  // the device's part
    // Device memory of the uploaded weights: the decoder's and the image path's.
    size_t gpu_weight_bytes() const {
        return (gpu_ ? gpu_->weight_bytes() : 0) + (gpu_image_ ? gpu_image_->weight_bytes() : 0);
    }
    // Device and host-visible memory of the image path's pass on the GPU (0 without one).
    size_t gpu_image_activation_bytes() const { return gpu_image_ ? gpu_image_->activation_bytes() : 0; }
    int64_t gpu_layers() const { return gpu_ ? gpu_->n_layers() : 0; }  // decoder layers on the device
    GpuDecoder::StepCounts gpu_steps() const { return gpu_ ? gpu_->step_counts() : GpuDecoder::StepCounts{}; }

    // Runs the batch; checked first (sequence ids, positions, token ids, room), so a bad batch changes
    // nothing. Returns how many rows wanted logits: logits() holds them, in row order.
    int64_t decode(const Batch& b);
    const float* logits() const { return logits_.data(); }  // [rows that wanted them][n_vocab]

    // Sequence operations.
    int64_t n_past(int seq) const { return kv_.n_past(seq); }
    void seq_truncate(int seq, int64_t p0) { kv_.truncate(seq, p0); }  // forget [p0, n_past)
    void seq_copy(int src, int dst, int64_t n);
    void seq_clear(int seq) { kv_.truncate(seq, 0); }
    // The sequence (among those where allowed[seq], all when allowed is null) holding the longest prefix
    // of cells; ties go to the lowest id. Returns {seq, length}; {-1, 0} when none is allowed.
    std::pair<int, int64_t> longest_prefix(const Cell* cells, int64_t n, const std::vector<uint8_t>* allowed) const;

    // The projected embeddings of a normalised [3, S, S] image: from the cache when the same pixels were
    // encoded before, else encoded (ViT, Q-Former, projector; on the device for the GPU backend) and cached. Throws ModelError when the
    // model has no vision path or a pixel is not finite.
    std::shared_ptr<const ImageEmbd> encode_image(const float* pixels);
    ImageCache& image_cache() { return images_; }

    std::mutex& mutex() { return mu_; }

private:
    void check(const Batch& b) const;

    std::shared_ptr<const Model> model_;
    Exec ex_;
    KvCache kv_;
    PhiScratch phi_;
    std::unique_ptr<GpuDecoder> gpu_;  // the decoder on the device (GPU backend), else null
    std::unique_ptr<GpuImageEncoder> gpu_image_;  // the image path on the device (GPU backend, vision), else null
    std::vector<int32_t> tokens_;      // token ids of a batch piece (-1: an embedding row), for the GPU
    std::vector<float> x_;        // input embeddings of a batch piece
    std::vector<float> hidden_;   // its hidden state after the device's layers (a split decoder)
    std::vector<PhiRow> rows_;
    std::vector<float> logits_;
    mutable std::vector<uint8_t> seen_;
    std::unique_ptr<VisionScratch> vis_scratch_;  // allocated on the first image (CPU backend)
    std::unique_ptr<QformerScratch> qf_scratch_;
    std::vector<float> img_tokens_;               // [n_tokens, vision n_embd]
    ImageCache images_;
    std::mutex mu_;
};

}  // namespace tg
