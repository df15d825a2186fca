// The EVA ViT image encoder of TinyGPT-V (BLIP-2 flavour) followed by ln_vision.
//
//   x = [cls; W_patch · patches + b] + pos            patches: S/p x S/p squares, (c, ky, kx) order
//   per block:  x += W_o · attn(LN1(x))                 qkv bias = cat(q_bias, 0, v_bias), non-causal
//               x += W_2 · gelu_erf(W_1 · LN2(x))
//   out = LN_post(x)                                    (ln_vision; the ViT itself has no final norm)
//
// The CLS token is kept: the output has 1 + (S/p)^2 rows.
#pragma once
#include <cstdint>
#include <vector>

#include "hot_buffer.h"
#include "kernels/matmul.h"

namespace tg {

class GGUFFile;
class WeightLoader;
class Exec;

struct VisionHparams {
    int64_t image_size = 0;  // S (square input)
    int64_t patch_size = 0;  // p
    int64_t n_embd = 0;      // width of the tokens (1408 for EVA ViT-g)
    int64_t n_layer = 0;
    int64_t n_head = 0;
    int64_t head_dim = 0;
    int64_t n_ff = 0;
    float ln_eps = 1e-6f;    // LN1/LN2 of the blocks
    float post_eps = 1e-5f;  // ln_vision
    float mean[3] = {0, 0, 0}, std[3] = {1, 1, 1};  // per-channel normalisation of the pixels

    int64_t grid() const { return image_size / patch_size; }
    int64_t n_patches() const { return grid() * grid(); }
    int64_t n_tokens() const { return 1 + n_patches(); }
    int64_t patch_dim() const { return 3 * patch_size * patch_size; }

    // Reads tinygptv.vision.* and tinygptv.image.{mean,std}; checks them against each other and against
    // the shapes of v.patch_embd / v.pos_embd before anything is allocated. Throws GGUFError/ModelError.
    static VisionHparams read(const GGUFFile& f);
};

struct VisionLayer {
    const float* ln1_w;   // [n_embd]
    const float* ln1_b;   // [n_embd]
    MatW qkv;             // [3*n_embd, n_embd] rows [q; k; v], heads contiguous within each
    const float* qkv_b;   // [3*n_embd] = cat(q_bias, 0, v_bias)
    MatW out;             // [n_embd, n_embd]
    const float* out_b;   // [n_embd]
    const float* ln2_w;   // [n_embd]
    const float* ln2_b;   // [n_embd]
    MatW up;              // [n_ff, n_embd]
    const float* up_b;    // [n_ff]
    MatW down;            // [n_embd, n_ff]
    const float* down_b;  // [n_embd]
};

struct VisionWeights {
    MatW patch;               // [n_embd, 3*p*p] the conv kernel flattened in (c, ky, kx) order
    const float* patch_b;     // [n_embd]
    const float* cls;         // [n_embd]
    const float* pos;         // [1 + (S/p)^2, n_embd] (CLS position first)
    std::vector<VisionLayer> layers;
    const float* post_w;      // [n_embd] ln_vision
    const float* post_b;      // [n_embd]

    void load(WeightLoader& ld, const VisionHparams& hp);
};

// Scratch of one encoder run, sized once from the hyperparameters.
struct VisionScratch {
    HotVector<float> patches;  // [n_patches, 3*p*p]
    HotVector<float> x;        // [n_tokens, n_embd] residual stream
    HotVector<float> h;        // [n_tokens, n_embd]
    HotVector<float> qkv;      // [n_tokens, 3*n_embd]
    HotVector<float> att;      // [n_tokens, n_embd]
    HotVector<float> ff;       // [n_tokens, n_ff]

    explicit VisionScratch(const VisionHparams& hp);
};

// pixels: [3, S, S] normalised (channel-major); out: [n_tokens, n_embd] = ln_vision(ViT(pixels)).
void vision_forward(const VisionHparams& hp, const VisionWeights& w, const float* pixels, float* out,
                    VisionScratch& s, Exec& ex);

}  // namespace tg
