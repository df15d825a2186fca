#include "model/context.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "errors.h"

namespace tg {

// Rows per forward pass: bounds the scratch of a long prompt.
static const int64_t kMaxPieceRows = 256;

void Batch::clear() {
    token.clear();
    embd.clear();
    cell.clear();
    seq.clear();
    pos.clear();
    logits.clear();
}

void Batch::add_token(int32_t tok, int32_t s, int64_t p, bool want_logits) {
    token.push_back(tok);
    embd.push_back(nullptr);
    cell.push_back(Cell::of_token(tok));
    seq.push_back(s);
    pos.push_back(p);
    logits.push_back(want_logits ? 1 : 0);
}

void Batch::add_image_row(const ImageEmbd& img, int32_t row, int32_t s, int64_t p, bool want_logits) {
    token.push_back(-1);
    embd.push_back(img.row(row));
    cell.push_back(Cell::of_image(img.hash, row));
    seq.push_back(s);
    pos.push_back(p);
    logits.push_back(want_logits ? 1 : 0);
}

static std::shared_ptr<vk::Device> gpu_or_null(int gpu, bool kv_f16) {
    if (gpu < 0) return nullptr;
    if (!kv_f16) throw ModelError("the GPU backend keeps its KV cache in F16 (kv_f16 must be true)");
    return open_gpu(gpu);
}

// The decoder layers on the device: none on the CPU backend, all for gpu_layers -1.
static int64_t device_layers(const Model& m, int gpu, int64_t gpu_layers) {
    const int64_t n_layer = m.hparams().n_layer;
    if (gpu_layers < -1 || gpu_layers > n_layer)
        throw ModelError(fmt("gpu_layers %lld must be in [0, %lld] (the model's layers), or -1 for all of them",
                             (long long)gpu_layers, (long long)n_layer));
    if (gpu < 0) return 0;
    return gpu_layers < 0 ? n_layer : gpu_layers;
}

Context::Context(std::shared_ptr<const Model> model, int64_t n_ctx, int n_seq, int n_threads, bool kv_f16,
                 size_t image_cache_bytes, int gpu, int64_t gpu_layers)
    : model_(std::move(model)),
      ex_(n_threads, gpu_or_null(gpu, kv_f16)),
      kv_(model_->hparams(), n_ctx, n_seq, kv_f16, device_layers(*model_, gpu, gpu_layers)),
      phi_(model_->hparams(), n_ctx),
      images_(image_cache_bytes) {
    if (n_threads < 1 || n_threads > 512) throw ModelError(fmt("n_threads %d must be in [1, 512]", n_threads));
    if (kv_.layer0() > 0) gpu_ = make_gpu_decoder(*model_, ex_, n_ctx, n_seq, kv_.layer0());
    // the image path goes to the device whatever the decoder's split (llama.cpp's -ngl keeps the
    // projector on the GPU too)
    if (gpu >= 0 && model_->has_vision()) gpu_image_ = make_gpu_image_encoder(*model_, ex_);
}

// The GPU buffers go before the device the Exec holds.
Context::~Context() {
    gpu_image_.reset();
    gpu_.reset();
}

void Context::seq_copy(int src, int dst, int64_t n) {
    kv_.copy_prefix(src, dst, n);  // checks first: a bad copy changes nothing
    if (gpu_) gpu_->copy_prefix(src, dst, n);
}

void Context::check(const Batch& b) const {
    const int64_t n = b.size();
    if (n < 1) throw ModelError("decode needs a batch of at least one row");
    if ((int64_t)b.token.size() != n || (int64_t)b.embd.size() != n || (int64_t)b.cell.size() != n ||
        (int64_t)b.pos.size() != n || (int64_t)b.logits.size() != n)
        throw ModelError("batch columns have different lengths");
    const int64_t V = model_->hparams().n_vocab;
    seen_.assign((size_t)kv_.n_seq(), 0);
    for (int64_t r0 = 0; r0 < n;) {
        const int32_t s = b.seq[(size_t)r0];
        if (s < 0 || s >= kv_.n_seq())
            throw ModelError(fmt("batch row %lld: sequence %d is outside [0, %d)", (long long)r0, s, kv_.n_seq()));
        if (seen_[(size_t)s])
            throw ModelError(fmt("batch row %lld: the rows of sequence %d are not contiguous", (long long)r0, s));
        seen_[(size_t)s] = 1;
        int64_t r1 = r0;
        const int64_t past = kv_.n_past(s);
        for (; r1 < n && b.seq[(size_t)r1] == s; r1++) {
            if (b.pos[(size_t)r1] != past + (r1 - r0))
                throw ModelError(fmt("batch row %lld: position %lld for sequence %d, which holds %lld positions "
                                     "(expected %lld)", (long long)r1, (long long)b.pos[(size_t)r1], s,
                                     (long long)past, (long long)(past + (r1 - r0))));
            const int32_t t = b.token[(size_t)r1];
            if (t < 0 && !b.embd[(size_t)r1])
                throw ModelError(fmt("batch row %lld has neither a token nor an embedding", (long long)r1));
            if (t >= V)
                throw ModelError(fmt("batch row %lld: token id %d is outside the vocabulary [0, %lld)", (long long)r1,
                                     t, (long long)V));
        }
        if (past + (r1 - r0) > kv_.n_ctx())
            throw ContextOverflow(fmt("sequence %d holds %lld positions; %lld more exceed n_ctx = %lld", s,
                                      (long long)past, (long long)(r1 - r0), (long long)kv_.n_ctx()));
        r0 = r1;
    }
}

int64_t Context::decode(const Batch& b) {
    check(b);
    const PhiHparams& hp = model_->hparams();
    const int64_t n = b.size(), E = hp.n_embd, V = hp.n_vocab;
    int64_t n_logits = 0;
    for (int64_t i = 0; i < n; i++) n_logits += b.logits[(size_t)i] ? 1 : 0;
    if ((int64_t)logits_.size() < n_logits * V) logits_.resize((size_t)(n_logits * V));

    // Pieces of at most kMaxPieceRows rows, never leaving one row of a longer run on either side of a
    // cut: one row takes the row path of attention, several the blocked path, and a sequence's rows
    // must take the path they take when the sequence runs alone.
    int64_t done_logits = 0;
    for (int64_t p0 = 0; p0 < n;) {
        int64_t p1 = std::min(n, p0 + kMaxPieceRows);
        if (p1 < n && b.seq[(size_t)p1] == b.seq[(size_t)(p1 - 1)]) {
            const int32_t s = b.seq[(size_t)p1];
            int64_t rs = p1, re = p1;
            while (rs > p0 && b.seq[(size_t)(rs - 1)] == s) rs--;
            while (re < n && b.seq[(size_t)re] == s) re++;
            if (re - p1 == 1) p1--;
            if (p1 - rs == 1) p1--;
        }
        const int64_t m = p1 - p0;
        if ((int64_t)x_.size() < m * E) x_.resize((size_t)(m * E));
        rows_.resize((size_t)m);
        tokens_.resize((size_t)m);
        for (int64_t i = 0; i < m; i++) {
            const size_t r = (size_t)(p0 + i);
            tokens_[(size_t)i] = b.token[r];
            // Token rows: embedded here on the CPU, on the device where the GPU decoder holds layers.
            if (b.token[r] >= 0) {
                if (!gpu_) model_->embed_tokens(&b.token[r], 1, &x_[(size_t)(i * E)]);
            } else {
                std::memcpy(&x_[(size_t)(i * E)], b.embd[r], sizeof(float) * (size_t)E);
            }
            rows_[(size_t)i] = PhiRow{b.seq[r], b.pos[r], b.logits[r] != 0};
        }
        float* piece_logits = logits_.data() + done_logits * V;
        if (gpu_ && !kv_.host()) {
            gpu_->decode(tokens_.data(), x_.data(), rows_.data(), m, piece_logits);
        } else if (gpu_) {  // the first layers on the device, the rest here from its hidden state
            if ((int64_t)hidden_.size() < m * E) hidden_.resize((size_t)(m * E));
            gpu_->decode(tokens_.data(), x_.data(), rows_.data(), m, hidden_.data());
            phi_decode(hp, model_->lm(), hidden_.data(), rows_.data(), m, kv_, phi_, piece_logits, ex_, kv_.layer0());
        } else {
            phi_decode(hp, model_->lm(), x_.data(), rows_.data(), m, kv_, phi_, piece_logits, ex_);
        }
        for (int64_t i = 0; i < m;) {  // the pieces' cells, per sequence run
            int64_t j = i;
            while (j < m && b.seq[(size_t)(p0 + j)] == b.seq[(size_t)(p0 + i)]) j++;
            kv_.append(b.seq[(size_t)(p0 + i)], &b.cell[(size_t)(p0 + i)], j - i);
            i = j;
        }
        for (int64_t i = p0; i < p1; i++) done_logits += b.logits[(size_t)i] ? 1 : 0;
        p0 = p1;
    }
    return n_logits;
}

std::pair<int, int64_t> Context::longest_prefix(const Cell* cells, int64_t n, const std::vector<uint8_t>* allowed) const {
    int best = -1;
    int64_t len = 0;
    for (int s = 0; s < kv_.n_seq(); s++) {
        if (allowed && !(*allowed)[(size_t)s]) continue;
        const int64_t l = kv_.common_prefix(s, cells, n);
        if (best < 0 || l > len) {
            best = s;
            len = l;
        }
    }
    return {best, len};
}

std::shared_ptr<const ImageEmbd> Context::encode_image(const float* pixels) {
    const Model& m = *model_;
    if (!m.has_vision())
        throw ModelError(fmt("this model (general.architecture '%s') has no vision encoder", m.hparams().arch.c_str()));
    const VisionHparams& vhp = m.vision_hparams();
    const int64_t n_pix = 3 * vhp.image_size * vhp.image_size;
    for (int64_t i = 0; i < n_pix; i++)
        if (!std::isfinite(pixels[i]))
            throw ModelError(fmt("pixel %lld (channel %lld, row %lld, column %lld) is %g; the image must be finite",
                                 (long long)i, (long long)(i / (vhp.image_size * vhp.image_size)),
                                 (long long)(i / vhp.image_size % vhp.image_size), (long long)(i % vhp.image_size),
                                 (double)pixels[i]));
    const uint64_t hash = content_hash(pixels, sizeof(float) * (size_t)n_pix);
    if (auto hit = images_.find(hash)) return hit;
    auto e = std::make_shared<ImageEmbd>();
    e->hash = hash;
    e->n_rows = m.qformer_hparams().n_query;
    e->n_embd = m.hparams().n_embd;
    e->data.resize((size_t)(e->n_rows * e->n_embd));
    if (gpu_image_) {
        gpu_image_->encode(pixels, e->data.data());
        images_.put(e);
        return e;
    }
    if (!vis_scratch_) {
        vis_scratch_.reset(new VisionScratch(vhp));
        qf_scratch_.reset(new QformerScratch(m.qformer_hparams(), vhp.n_tokens()));
        img_tokens_.resize((size_t)(vhp.n_tokens() * vhp.n_embd));
    }
    vision_forward(vhp, m.vision(), pixels, img_tokens_.data(), *vis_scratch_, ex_);
    qformer_forward(m.qformer_hparams(), m.qformer(), img_tokens_.data(), vhp.n_tokens(), e->data.data(), *qf_scratch_,
                    ex_);
    images_.put(e);
    return e;
}

}  // namespace tg
