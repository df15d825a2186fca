// The image path of TinyGPT-V on a Vulkan device: the EVA ViT with ln_vision (model/vision.h), the
// Q-Former and the projector (model/qformer.h), the same arithmetic as the CPU path in float32 activations.
// The weights are uploaded once (one buffer per tensor, split by rows where larger than the device's
// buffer range, vectors in float32), the buffers of a pass allocated once at a fixed size (one image, its
// token count fixed by the file), and an image is one recorded pass: the pixels go up, the projected
// embeddings come down, the host waits once.
//
// The embeddings come back to the host (n_query rows of the LM's width, 320 KiB for TinyGPT-V) once per
// image: the image cache keys them by content and the decoder takes image rows with its step's inputs, so
// keeping them on the device would save one small copy per image and per conversation turn, not more.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "model/gpu_decoder.h"
#include "model/qformer.h"
#include "model/vision.h"
#include "vulkan/device.h"
#include "vulkan/weights.h"

namespace tg {
namespace vk {

// E = vision n_embd, F = vision n_ff, T = 1 + (S/p)^2 tokens, K = 3 p^2.
struct GpuVisionLayer {
    std::unique_ptr<Buffer> ln1_w, ln1_b;  // [E]
    GpuMat qkv;                            // [3E, E] rows [q; k; v]
    std::unique_ptr<Buffer> qkv_b;         // [3E] = cat(q_bias, 0, v_bias)
    GpuMat out;                            // [E, E]
    std::unique_ptr<Buffer> out_b;         // [E]
    std::unique_ptr<Buffer> ln2_w, ln2_b;  // [E]
    GpuMat up;                             // [F, E]
    std::unique_ptr<Buffer> up_b;          // [F]
    GpuMat down;                           // [E, F]
    std::unique_ptr<Buffer> down_b;        // [E]
};

struct GpuVisionWeights {
    GpuMat patch;                            // [E, K] the conv kernel in (c, ky, kx) order
    std::unique_ptr<Buffer> patch_b;         // [E]
    std::unique_ptr<Buffer> cls;             // [E]
    std::unique_ptr<Buffer> pos;             // [T, E] (CLS position first)
    std::vector<GpuVisionLayer> layers;
    std::unique_ptr<Buffer> post_w, post_b;  // [E] ln_vision
};

// Q = Q-Former n_embd, QF = its n_ff, NQ = queries, M = mm.0's rows, O = the LM's n_embd.
// A linear layer of the Q-Former on the device, as the CPU's Linear: its matrix and its bias.
struct GpuLinear {
    GpuMat w;
    std::unique_ptr<Buffer> b;
};

struct GpuQformerLayer {
    GpuLinear attn_q, attn_k, attn_v, attn_out;       // [Q, Q], bias [Q]
    std::unique_ptr<Buffer> attn_ln_w, attn_ln_b;     // [Q]
    bool cross = false;
    GpuLinear cross_q, cross_out;                     // [Q, Q], bias [Q]  (cross layers only)
    GpuLinear cross_k, cross_v;                       // [Q, E], bias [Q]
    std::unique_ptr<Buffer> cross_ln_w, cross_ln_b;   // [Q]
    GpuLinear ffn_up;                                 // [QF, Q], bias [QF]
    GpuLinear ffn_down;                               // [Q, QF], bias [Q]
    std::unique_ptr<Buffer> ffn_ln_w, ffn_ln_b;       // [Q]
};

struct GpuQformerWeights {
    std::unique_ptr<Buffer> query;                // [NQ, Q]
    std::unique_ptr<Buffer> emb_ln_w, emb_ln_b;   // [Q]
    std::vector<GpuQformerLayer> layers;
    GpuMat proj0;                                 // mm.0 [M, Q] (folded: [O, Q])
    std::unique_ptr<Buffer> proj0_b;              // [M] (folded: [O])
    GpuMat proj1;                                 // mm.1 [O, M] (folded: no parts)
    std::unique_ptr<Buffer> proj1_b;              // [O] (folded: null)
};

class ImageGpu : public GpuImageEncoder {
public:
    // Uploads the image path's weights to dev and allocates a pass's buffers. max_buffer: the largest
    // buffer a tensor part may take (0: the device's storage-buffer range and allocation limit).
    ImageGpu(Device& dev, const VisionHparams& vhp, const VisionWeights& vw, const QformerHparams& qhp,
             const QformerWeights& qw, uint64_t max_buffer = 0);

    void encode(const float* pixels, float* out) override;
    size_t weight_bytes() const override { return bytes_; }
    size_t activation_bytes() const override { return act_bytes_; }

private:
    std::unique_ptr<Buffer> act(uint64_t floats, bool host = false);  // a pass's buffer, counted
    void record_vision(Sequence& s);
    void record_qformer(Sequence& s);

    Device& dev_;
    VisionHparams vhp_;
    QformerHparams qhp_;
    uint64_t max_buffer_;
    size_t bytes_ = 0;      // the weights' buffers
    size_t act_bytes_ = 0;  // the pass's buffers
    GpuVisionWeights v_;
    GpuQformerWeights q_;
    // The pass's buffers, float32. The ViT: [3, S, S] pixels, [T - 1, K] patches, the residual stream x and
    // h, att [T, E], qkv [T, 3E], ff [T, F], img [T, E] (ln_vision's output, the Q-Former's keys' source).
    std::unique_ptr<Buffer> pix_, patches_, x_, h_, att_, qkv_, ff_, img_;
    // The Q-Former: qh (its stream), qtmp, qatt, qq [NQ, Q], qqkv [NQ, 3Q], ckv [T, 2Q] cross keys | values,
    // qff [NQ, QF], mid [NQ, M] (none when folded), out [NQ, O].
    std::unique_ptr<Buffer> qh_, qtmp_, qatt_, qq_, qqkv_, ckv_, qff_, mid_, out_;
    std::unique_ptr<Buffer> in_, down_;  // host-visible: the pixels going up, the embeddings coming down
};

}  // namespace vk
}  // namespace tg
