// The Model: immutable after load (the file mapping, hyperparameters, weights). Many engine contexts
// (model/context.h) may share one Model, from different threads.
#pragma once
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "gguf.h"
#include "model/phi.h"
#include "model/qformer.h"
#include "model/vision.h"
#include "exec.h"

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

}  // namespace tg
