// The Model (immutable after load: the file mapping, hyperparameters, weights, tokenizer) and the
// Session (one conversation: KV cache, scratch, its own thread pool). Many Sessions may run on one
// Model at the same time from different threads.
#pragma once
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "gguf.h"
#include "model/phi.h"
#include "model/qformer.h"
#include "model/vision.h"
#include "threadpool.h"

namespace tg {

class Model {
public:
    // n_threads: threads used to prepare (repack) the weights at load; 0 = all cores.
    explicit Model(const std::string& path, int n_threads = 0);

    const GGUFFile& file() const { return *file_; }
    const PhiHparams& hparams() const { return hp_; }
    const PhiWeights& lm() const { return lm_; }

    // Token embeddings of ids (rows of n_embd) into out. Throws ModelError on an id out of range.
    void embed_tokens(const int32_t* ids, int64_t n, float* out) const;

    // The image path (ViT, ln_vision, Q-Former, projector): present when general.architecture is
    // "tinygptv" and the file carries the vision metadata or tensors; then every part is required.
    bool has_vision() const { return has_vision_; }
    const VisionHparams& vision_hparams() const { return vhp_; }
    const VisionWeights& vision() const { return vis_; }
    const QformerHparams& qformer_hparams() const { return qhp_; }
    const QformerWeights& qformer() const { return qf_; }

private:
    std::unique_ptr<GGUFFile> file_;
    std::deque<std::vector<float>> arena_;  // 1-D parameters converted to float32 at load
    PhiHparams hp_;
    PhiWeights lm_;
    bool has_vision_ = false;
    VisionHparams vhp_;
    VisionWeights vis_;
    QformerHparams qhp_;
    QformerWeights qf_;
};

class Session {
public:
    Session(std::shared_ptr<const Model> model, int64_t n_ctx, int n_threads, bool kv_f16);

    const Model& model() const { return *model_; }
    int64_t n_ctx() const { return state_.n_ctx(); }
    int64_t n_past() const { return state_.n_past(); }
    int n_threads() const { return pool_.size(); }
    void rewind(int64_t n_past) { state_.rewind(n_past); }

    // Appends n rows of input embeddings; logits of the last row (or of all rows) into logits.
    void eval_embeddings(const float* x, int64_t n, bool all_logits, float* logits);
    void eval_tokens(const int32_t* ids, int64_t n, bool all_logits, float* logits);

    // pixels: [3, S, S] normalised image (S = vision_hparams().image_size), out: [n_query, n_embd] image
    // embeddings in the language model's width. Does not touch the KV cache. Throws ModelError when the
    // model has no vision path or a pixel is not finite.
    void encode_image(const float* pixels, float* out);

    std::mutex& mutex() { return mu_; }  // held by the binding for the duration of a call
    ThreadPool& pool() { return pool_; }

private:
    std::shared_ptr<const Model> model_;
    ThreadPool pool_;
    PhiState state_;
    std::vector<float> embd_;
    std::unique_ptr<VisionScratch> vis_scratch_;  // allocated on the first encode_image
    std::unique_ptr<QformerScratch> qf_scratch_;
    std::vector<float> img_tokens_;               // [n_tokens, vision n_embd]
    std::mutex mu_;
};

}  // namespace tg
