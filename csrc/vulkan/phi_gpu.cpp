#include "vulkan/phi_gpu.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "errors.h"
#include "exec.h"
#include "kernels/matmul.h"
#include "model/tinygptv.h"
#include "vulkan/ops.h"

namespace tg {

std::shared_ptr<vk::Device> open_gpu(int index) { return std::make_shared<vk::Device>(index); }

std::unique_ptr<GpuDecoder> make_gpu_decoder(const Model& m, Exec& ex, int64_t n_ctx, int n_seq, int64_t n_layers) {
    if (!ex.gpu()) throw VulkanError("the GPU decoder needs an execution context with a Vulkan device");
    // TINYGPTV_VK_REPLAY=0 records every step anew (the reference the replayed steps are tested against).
    const char* replay = std::getenv("TINYGPTV_VK_REPLAY");
    const size_t max_steps = replay && std::string(replay) == "0" ? 0 : vk::PhiGpu::kMaxSteps;
    return std::make_unique<vk::PhiGpu>(*ex.gpu(), m.hparams(), m.lm(), n_ctx, n_seq, n_layers, vk::max_buffer_from_env(),
                                        max_steps);
}

namespace vk {

namespace {

bool embed_supported(GgmlType t) {
    return t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::Q8_0 || t == GgmlType::Q4_0 ||
           t == GgmlType::Q4_K || t == GgmlType::Q6_K;
}

// Grows a device buffer to hold `bytes` (its contents are not kept: scratch of the next step).
void grow(Device& d, std::unique_ptr<Buffer>& b, uint64_t bytes, bool host = false) {
    if (!b || b->size() < bytes) {
        b.reset();
        b = host ? std::make_unique<Buffer>(d, bytes, true) : d.buffer(bytes);
    }
}

}  // namespace

PhiGpu::PhiGpu(Device& dev, const PhiHparams& hp, const PhiWeights& w, int64_t n_ctx, int n_seq, int64_t n_layers,
               uint64_t max_buffer, size_t max_steps)
    : dev_(dev), hp_(hp), n_ctx_(n_ctx), n_seq_(n_seq), n_layers_(n_layers), head_(n_layers == hp.n_layer),
      max_steps_(max_steps) {
    if (n_layers < 1 || n_layers > hp.n_layer)
        throw VulkanError(fmt("the GPU decoder takes 1 to %lld layers of this model, not %lld", (long long)hp.n_layer,
                              (long long)n_layers));
    const DeviceInfo& info = dev.info();
    const uint64_t limit = part_limit(dev, 0);
    max_buffer_ = part_limit(dev, max_buffer);
    if (hp.kv_dim() % 2)
        throw VulkanError(fmt("the GPU KV cache packs two halves per word: kv_dim %lld must be even",
                              (long long)hp.kv_dim()));
    if (hp.head_dim > 256 || hp.head_dim > 4 * (int64_t)dev.workgroup())
        throw VulkanError(fmt("the GPU attention takes heads of at most %u values; this model's have %lld",
                              std::min<uint32_t>(256, 4 * dev.workgroup()), (long long)hp.head_dim));
    // A slot's layer is one buffer: refused here, before any upload, rather than at the first decode.
    const uint64_t layer_bytes = 2ull * 2 * (uint64_t)n_ctx * (uint64_t)hp.kv_dim();
    if (layer_bytes > limit)
        throw VulkanError(fmt("the GPU KV cache holds a layer's keys and values of a sequence in one buffer: %llu "
                              "bytes at n_ctx %lld, beyond %s's largest buffer of %llu bytes (lower n_ctx)",
                              (unsigned long long)layer_bytes, (long long)n_ctx, info.name.c_str(),
                              (unsigned long long)limit));
    kv_.resize((size_t)n_seq);
    // Decode attention's split over keys: chunks of kSplitTiles key tiles, at most kMaxSplits of them (a
    // longer context takes longer chunks), so its scratch is fixed.
    constexpr int64_t kSplitTiles = 4, kMaxSplits = 32;
    split_chunk_ = kSplitTiles * dev.workgroup();
    while ((n_ctx + split_chunk_ - 1) / split_chunk_ > kMaxSplits) split_chunk_ *= 2;
    part_ = dev.buffer(4ull * (uint64_t)attention_part_floats(1, (int)hp.n_head, (int)hp.head_dim,
                                                              (n_ctx + split_chunk_ - 1) / split_chunk_));

    // The token embedding is gathered on the device where the gather reads its type; else the host
    // dequantizes token rows as the CPU path does and they travel with the step's inputs.
    if (embed_supported(w.tok_embd.type)) w_.tok_embd = upload_mat(w.tok_embd, "token_embd.weight");
    else host_embd_ = w.tok_embd;
    w_.layers.resize((size_t)n_layers);
    for (int64_t il = 0; il < n_layers; il++) {
        const PhiLayer& L = w.layers[(size_t)il];
        GpuLayer& G = w_.layers[(size_t)il];
        const int64_t E = hp.n_embd, KV = hp.kv_dim(), F = hp.n_ff, D = hp.head_dim;
        const std::string b = fmt("blk.%lld.", (long long)il);
        G.attn_norm_w = upload_vec(L.attn_norm_w, E);
        G.attn_norm_b = upload_vec(L.attn_norm_b, E);
        G.fused = L.fused;
        if (L.fused) {
            G.qkv = upload_mat(L.qkv, (b + "attn_qkv.weight").c_str());
            G.qkv_b = upload_vec(L.qkv_b, E + 2 * KV);
        } else {
            G.wq = upload_mat(L.wq, (b + "attn_q.weight").c_str());
            G.wk = upload_mat(L.wk, (b + "attn_k.weight").c_str());
            G.wv = upload_mat(L.wv, (b + "attn_v.weight").c_str());
            G.bq = upload_vec(L.bq, E);
            G.bk = upload_vec(L.bk, KV);
            G.bv = upload_vec(L.bv, KV);
        }
        G.out = upload_mat(L.out, (b + "attn_output.weight").c_str());
        G.out_b = upload_vec(L.out_b, E);
        G.up = upload_mat(L.up, (b + "ffn_up.weight").c_str());
        G.up_b = upload_vec(L.up_b, F);
        G.down = upload_mat(L.down, (b + "ffn_down.weight").c_str());
        G.down_b = upload_vec(L.down_b, E);
        G.q_norm_w = upload_vec(L.q_norm_w, D);
        G.q_norm_b = upload_vec(L.q_norm_b, D);
        G.k_norm_w = upload_vec(L.k_norm_w, D);
        G.k_norm_b = upload_vec(L.k_norm_b, D);
        G.post_norm_w = upload_vec(L.post_norm_w, E);
    }
    if (head_) {
        w_.out_norm_w = upload_vec(w.out_norm_w, hp.n_embd);
        w_.out_norm_b = upload_vec(w.out_norm_b, hp.n_embd);
        w_.output = upload_mat(w.output, "output.weight");
        w_.output_b = upload_vec(w.output_b, hp.n_vocab);
    }
    if (hp.n_rot > 0) {
        const PhiScratch tables(hp, n_ctx);  // the CPU path's tables: both paths rotate by the same values
        w_.rope_cos = upload_vec(tables.rope_cos.data(), (int64_t)tables.rope_cos.size());
        w_.rope_sin = upload_vec(tables.rope_sin.data(), (int64_t)tables.rope_sin.size());
    }
}

bool PhiGpu::reserve(int64_t rows, int64_t n_logits) {
    const bool grows = rows > cap_rows_ || (head_ && n_logits > cap_logits_);
    const int64_t E = hp_.n_embd, QKV = E + 2 * hp_.kv_dim(), F = hp_.n_ff, V = hp_.n_vocab;
    if (rows > cap_rows_) {
        grow(dev_, x_, 4ull * rows * E);
        grow(dev_, h_, 4ull * rows * E);
        grow(dev_, qkv_, 4ull * rows * QKV);
        grow(dev_, att_, 4ull * rows * E);
        grow(dev_, a_, 4ull * rows * E);
        if (head_) grow(dev_, sel_, 4ull * rows * E);  // the rows that want logits, gathered
        grow(dev_, ff_, 4ull * rows * F);
        grow(dev_, tok_, 4ull * rows);
        grow(dev_, pos_, 4ull * rows);
        grow(dev_, in_, 4ull * rows * (E + 2), true);
        if (!head_) grow(dev_, out_, 4ull * rows * E, true);  // the hidden state goes back, every row
        cap_rows_ = rows;
    }
    if (head_ && n_logits > cap_logits_) {
        grow(dev_, logits_, 4ull * n_logits * V);
        grow(dev_, out_, 4ull * n_logits * V, true);
        cap_logits_ = n_logits;
    }
    return grows;
}

std::vector<std::unique_ptr<Buffer>>& PhiGpu::slot(int seq) {
    if (seq < 0 || seq >= n_seq_) throw VulkanError(fmt("sequence %d is outside [0, %d)", seq, n_seq_));
    auto& layers = kv_[(size_t)seq];
    if (layers.empty()) {
        const uint64_t bytes = 2ull * 2 * (uint64_t)n_ctx_ * (uint64_t)hp_.kv_dim();
        for (int64_t il = 0; il < n_layers_; il++) layers.push_back(dev_.buffer(bytes));
    }
    return layers;
}

size_t PhiGpu::kv_reserved_bytes() const {
    size_t b = 0;
    for (const auto& layers : kv_)
        for (const auto& buf : layers) b += buf->size();
    return b;
}

void PhiGpu::copy_prefix(int src, int dst, int64_t n) {
    if (src == dst || n <= 0) return;
    auto& from = slot(src);
    auto& to = slot(dst);
    const uint64_t bytes = 2ull * (uint64_t)n * (uint64_t)hp_.kv_dim();
    const uint64_t v_off = 2ull * (uint64_t)n_ctx_ * (uint64_t)hp_.kv_dim();
    Sequence s(dev_);
    for (int64_t il = 0; il < n_layers_; il++) {
        s.copy(*from[(size_t)il], *to[(size_t)il], bytes, 0, 0);
        s.copy(*from[(size_t)il], *to[(size_t)il], bytes, v_off, v_off);
    }
    s.run();
}

void PhiGpu::decode(const int32_t* tokens, const float* x, const PhiRow* rows, int64_t n, float* out) {
    const int64_t E = hp_.n_embd;
    int64_t n_logits = 0;
    bool host_rows = false, token_rows = false;
    for (int64_t i = 0; i < n; i++) {
        n_logits += rows[i].logits ? 1 : 0;
        if (tokens[i] < 0 || host_embd_.data) host_rows = true;
        else token_rows = true;
        if (rows[i].pos < 0 || rows[i].pos >= n_ctx_)
            throw VulkanError(fmt("row %lld: position %lld is outside [0, %lld)", (long long)i, (long long)rows[i].pos,
                                  (long long)n_ctx_));
    }
    if (reserve(n, n_logits)) steps_.clear();  // new activation buffers: the recordings bind the old ones

    // The step's inputs, through the host-visible buffer: embedding rows (and token rows where the host
    // gathers), token ids (-1 for rows the host wrote), positions. The recorded commands read them from
    // there, so they hold for any values.
    float* in_x = static_cast<float*>(in_->mapped());
    int32_t* in_tok = reinterpret_cast<int32_t*>(in_x + n * E);
    int32_t* in_pos = in_tok + n;
    for (int64_t i = 0; i < n; i++) {
        const bool gathered = tokens[i] >= 0 && !host_embd_.data;
        if (tokens[i] >= 0 && host_embd_.data) dequantize_row(host_embd_, tokens[i], in_x + i * E);
        else if (tokens[i] < 0) std::memcpy(in_x + i * E, x + i * E, sizeof(float) * (size_t)E);
        in_tok[i] = gathered ? tokens[i] : -1;
        in_pos[i] = (int32_t)rows[i].pos;
    }

    // The step's shape: what the recording depends on. Rows, which of them are host-written or gathered,
    // the runs of one sequence with their slots (each slot's cache is a buffer of its own, bound by the
    // recording), and the rows whose logits are read back.
    const bool want_out = n_logits > 0 && out;
    std::vector<int64_t> key{n, host_rows, token_rows, want_out};
    std::vector<StepRun> runs;
    for (int64_t r0 = 0; r0 < n;) {
        int64_t r1 = r0 + 1;
        while (r1 < n && rows[r1].seq == rows[r0].seq) r1++;
        runs.push_back(StepRun{r0, r1 - r0, rows[r0].seq});
        key.insert(key.end(), {r0, r1 - r0, rows[r0].seq});
        r0 = r1;
    }
    if (head_ && want_out)
        for (int64_t i = 0; i < n; i++) key.push_back(rows[i].logits ? 1 : 0);

    Step* step = nullptr;
    for (Step& st : steps_)
        if (st.key == key) step = &st;
    if (step) {
        replayed_++;
    } else {
        for (const StepRun& r : runs) slot(r.seq);  // the slots' buffers exist before they are bound
        auto seq = std::make_unique<Sequence>(dev_);
        record(*seq, rows, n, runs, host_rows, token_rows, want_out ? n_logits : 0);
        recorded_++;
        if (max_steps_ == 0) {  // recording anew every step
            seq->run();
            read_back(out, n, n_logits, want_out);
            return;
        }
        if (steps_.size() >= max_steps_) {  // the least recently used shape goes
            auto lru = std::min_element(steps_.begin(), steps_.end(),
                                        [](const Step& a, const Step& b) { return a.used < b.used; });
            steps_.erase(lru);
        }
        steps_.push_back(Step{std::move(key), std::move(seq), 0});
        step = &steps_.back();
    }
    step->used = ++clock_;
    step->seq->run();  // the one wait of the step
    read_back(out, n, n_logits, want_out);
}

void PhiGpu::read_back(float* out, int64_t n, int64_t n_logits, bool want_out) const {
    if (!head_) std::memcpy(out, out_->mapped(), sizeof(float) * (size_t)(n * hp_.n_embd));
    else if (want_out) std::memcpy(out, out_->mapped(), sizeof(float) * (size_t)(n_logits * hp_.n_vocab));
}

void PhiGpu::record(Sequence& s, const PhiRow* rows, int64_t n, const std::vector<StepRun>& runs, bool host_rows,
                    bool token_rows, int64_t n_logits) {
    const int64_t E = hp_.n_embd, KV = hp_.kv_dim(), F = hp_.n_ff, V = hp_.n_vocab, D = hp_.head_dim;
    const int64_t H = hp_.n_head, HKV = hp_.n_head_kv, QKV = E + 2 * KV;
    if (host_rows) s.copy(*in_, *x_, 4ull * n * E, 0, 0);
    s.copy(*in_, *tok_, 4ull * n, 4ull * n * E, 0);
    s.copy(*in_, *pos_, 4ull * n, 4ull * n * (E + 1), 0);
    if (token_rows)
        for (const GpuMat::Part& p : w_.tok_embd.parts)
            embed(s, w_.tok_embd.type, *p.buf, p.row0, p.rows, E, *tok_, n, *x_);

    const float scale = 1.0f / std::sqrt((float)D);
    for (int64_t il = 0; il < n_layers_; il++) {
        const GpuLayer& L = w_.layers[(size_t)il];
        layernorm(s, *x_, *h_, n, E, L.attn_norm_w.get(), L.attn_norm_b.get(), hp_.ln_eps);
        if (L.fused) {
            product(s, L.qkv, *h_, n, *qkv_, QKV, 0, L.qkv_b.get());
        } else {  // separate projections, written side by side into the same [q | k | v] rows
            product(s, L.wq, *h_, n, *qkv_, QKV, 0, L.bq.get());
            product(s, L.wk, *h_, n, *qkv_, QKV, E, L.bk.get());
            product(s, L.wv, *h_, n, *qkv_, QKV, E + KV, L.bv.get());
        }
        if (L.q_norm_w) {
            layernorm_heads(s, *qkv_, n, H, D, QKV, 0, L.q_norm_w.get(), L.q_norm_b.get(), hp_.ln_eps);
            layernorm_heads(s, *qkv_, n, HKV, D, QKV, E, L.k_norm_w.get(), L.k_norm_b.get(), hp_.ln_eps);
        }
        // q's heads and k's heads are contiguous in a row: one rotation over H + HKV heads.
        if (hp_.n_rot > 0)
            rope_neox(s, *qkv_, n, QKV, (int)(H + HKV), (int)D, (int)hp_.n_rot, *pos_, *w_.rope_cos, *w_.rope_sin,
                      n_ctx_);
        for (const StepRun& r : runs)
            kv_write(s, *qkv_, r.r0, r.m, QKV, E, KV, *kv_[(size_t)r.seq][(size_t)il], *pos_, n_ctx_);
        // A decode row (a run of one) splits its keys: alone it would keep n_head workgroups busy.
        for (const StepRun& r : runs)
            attention(s, *qkv_, r.r0, r.m, QKV, *kv_[(size_t)r.seq][(size_t)il], *pos_, n_ctx_, (int)H, (int)HKV,
                      (int)D, scale, *att_, E, r.m == 1 ? part_.get() : nullptr, split_chunk_);
        product(s, L.out, *att_, n, *a_, E, 0, L.out_b.get());
        if (L.post_norm_w) rmsnorm(s, *a_, *a_, n, E, L.post_norm_w.get(), hp_.rms_eps);
        product(s, L.up, *h_, n, *ff_, F, 0, L.up_b.get());
        gelu(s, *ff_, n * F, /*tanh_form=*/true);
        product(s, L.down, *ff_, n, *h_, E, 0, L.down_b.get());  // h is free again: the MLP's output
        add(s, *a_, *h_, *a_, n * E, n * E);                       // x = (a + m) + x, as the CPU sums
        add(s, *a_, *x_, *x_, n * E, n * E);
    }
    if (!head_) {
        // The CPU runs the other layers from here: the hidden state of every row goes back.
        s.copy(*x_, *out_, 4ull * n * E, 0, 0);
    } else if (n_logits > 0) {
        // The rows that want logits, moved together (all rows: x as it is).
        const Buffer* rows_x = x_.get();
        if (n_logits < n) {
            int64_t k = 0;
            for (int64_t i = 0; i < n; i++)
                if (rows[i].logits) s.copy(*x_, *sel_, 4ull * E, 4ull * i * E, 4ull * (k++) * E);
            rows_x = sel_.get();
        }
        layernorm(s, *rows_x, *h_, n_logits, E, w_.out_norm_w.get(), w_.out_norm_b.get(), hp_.ln_eps);
        product(s, w_.output, *h_, n_logits, *logits_, V, 0, w_.output_b.get());
        s.copy(*logits_, *out_, 4ull * n_logits * V, 0, 0);
    }
    s.finish();
}

}  // namespace vk
}  // namespace tg
