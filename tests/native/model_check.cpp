// The whole engine without Python, for machines the Python tests cannot reach (built for AArch64 by
// tests/test_native_kernel_check.py and run under qemu-aarch64, then compared with what the Python
// module computes on this machine from the same inputs):
//
//   model_check MODEL.gguf TEXTS.hex PIXELS.f32 N_GEN
//
// TEXTS.hex holds one text per line, hex-encoded (so any bytes survive). For each text the program
// prints its token ids ("tokens: ..."). Then, with the first text as the prompt: when the model has a
// vision path, the image embeddings of the normalised image in PIXELS.f32 (raw float32 [3, S, S])
// ("image: n sum sum_abs v0 v1 v2 v3"), which are fed to the decoder before the prompt; the last
// position's logits ("logits: argmax max sum"); and N_GEN greedy tokens ("greedy: ...").
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "errors.h"
#include "model/context.h"
#include "model/vocab.h"
#include "tokenizer/tokenizer.h"

using namespace tg;

namespace {

std::string unhex(const std::string& h) {
    std::string s;
    for (size_t i = 0; i + 1 < h.size(); i += 2) s.push_back((char)std::stoi(h.substr(i, 2), nullptr, 16));
    return s;
}

int32_t argmax(const std::vector<float>& v) {
    int32_t best = 0;
    for (int32_t i = 1; i < (int32_t)v.size(); i++)
        if (v[(size_t)i] > v[(size_t)best]) best = i;
    return best;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 5) {
        std::fprintf(stderr, "usage: %s MODEL.gguf TEXTS.hex PIXELS.f32 N_GEN\n", argv[0]);
        return 2;
    }
    try {
        auto model = std::make_shared<const Model>(argv[1], 2);
        auto tok = Tokenizer::create(read_vocab(model->file()));
        std::ifstream in(argv[2]);
        std::vector<std::vector<int32_t>> texts;
        for (std::string line; std::getline(in, line);) {
            texts.push_back(tok->encode(unhex(line), false));
            std::printf("tokens:");
            for (int32_t id : texts.back()) std::printf(" %d", id);
            std::printf("\n");
        }
        if (texts.empty()) throw ModelError("no texts");

        Context ctx(model, 512, 1, 2, true);
        const int64_t V = model->hparams().n_vocab;
        std::vector<float> logits((size_t)V);
        Batch b;
        auto run = [&]() {  // the batch, then the logits of its last row
            const int64_t n = ctx.decode(b);
            std::copy(ctx.logits() + (n - 1) * V, ctx.logits() + n * V, logits.begin());
            b.clear();
        };
        if (model->has_vision()) {
            const int64_t S = model->vision_hparams().image_size;
            std::vector<float> px((size_t)(3 * S * S));
            std::ifstream pf(argv[3], std::ios::binary);
            if (!pf.read((char*)px.data(), (std::streamsize)(px.size() * sizeof(float))))
                throw ModelError(fmt("%s: expected %lld float32 pixels", argv[3], (long long)px.size()));
            std::shared_ptr<const ImageEmbd> img = ctx.encode_image(px.data());
            const std::vector<float>& emb = img->data;
            double sum = 0, sum_abs = 0;
            for (float v : emb) sum += v, sum_abs += std::fabs(v);
            std::printf("image: %lld %.9g %.9g %.9g %.9g %.9g %.9g\n", (long long)emb.size(), sum, sum_abs, emb[0],
                        emb[1], emb[2], emb[3]);
            for (int32_t r = 0; r < (int32_t)img->n_rows; r++) b.add_image_row(*img, r, 0, r, r + 1 == img->n_rows);
            run();
        }
        for (size_t i = 0; i < texts[0].size(); i++)
            b.add_token(texts[0][i], 0, ctx.n_past(0) + (int64_t)i, i + 1 == texts[0].size());
        run();
        double sum = 0;
        for (float v : logits) sum += v;
        const int32_t best = argmax(logits);
        std::printf("logits: %d %.9g %.9g\n", best, logits[(size_t)best], sum);
        std::printf("greedy:");
        int32_t next = best;
        for (int i = 0; i < std::atoi(argv[4]); i++) {
            std::printf(" %d", next);
            b.add_token(next, 0, ctx.n_past(0), true);
            run();
            next = argmax(logits);
        }
        std::printf("\n");
        return 0;
    } catch (const std::exception& e) {
        std::printf("ERROR %s\n", e.what());
        return 1;
    }
}
