#include "model/tinygptv.h"

#include <algorithm>
#include <cmath>
#include <thread>

#include <chrono>

#include "cpu.h"
#include "errors.h"
#include "log.h"
#include "exec.h"
#include "model/loader.h"

namespace tg {

Model::Model(const std::string& path, int n_threads) : file_(new GGUFFile(path)) {
    // Every hyperparameter is read and checked before any weight is touched.
    hp_ = PhiHparams::read(*file_);
    has_vision_ = hp_.arch == "tinygptv" &&
                  (file_->has("tinygptv.vision.image_size") || file_->find_tensor("v.patch_embd.weight") != nullptr);
    if (has_vision_) {
        vhp_ = VisionHparams::read(*file_);
        qhp_ = QformerHparams::read(*file_, vhp_.n_embd, hp_.n_embd);
    }
    const auto t0 = std::chrono::steady_clock::now();
    Exec ex(n_threads > 0 ? n_threads : (int)std::max(1u, std::thread::hardware_concurrency()));
    WeightLoader ld(*file_, arena_, &ex);
    lm_.load(ld, hp_);
    if (has_vision_) {
        vis_.load(ld, vhp_);
        qf_.load(ld, qhp_);
    }
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    TG_LOG(LogLevel::Info, "loaded '%s' (%s, %lld layers%s, %zu tensors, %.1f MB) in %.0f ms; kernels: %s",
           path.c_str(), hp_.arch.c_str(), (long long)hp_.n_layer, has_vision_ ? ", vision" : "",
           file_->tensors().size(), file_->file_size() / 1e6, ms, isa_name(isa_active()));
}

void Model::embed_tokens(const int32_t* ids, int64_t n, float* out) const {
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= hp_.n_vocab)
            throw ModelError(fmt("token id %d at index %lld is outside the vocabulary [0, %lld)", ids[i], (long long)i,
                                 (long long)hp_.n_vocab));
        dequantize_row(lm_.tok_embd, ids[i], out + i * hp_.n_embd);
    }
}

}  // namespace tg
