#include "model/kv_cache.h"

#include <cstdlib>
#include <cstring>

#include "errors.h"
#include "model/phi.h"

namespace tg {

void KvCache::Free::operator()(uint8_t* p) const { std::free(p); }

KvCache::KvCache(const PhiHparams& hp, int64_t n_ctx, int n_seq, bool f16, int64_t layer0)
    : n_ctx_(n_ctx), n_layer_(hp.n_layer), kv_dim_(hp.kv_dim()), layer0_(layer0), n_seq_(n_seq), f16_(f16) {
    if (n_ctx < 1 || n_ctx > (1 << 20)) throw ModelError(fmt("n_ctx %lld must be in [1, 1048576]", (long long)n_ctx));
    if (n_seq < 1 || n_seq > 256) throw ModelError(fmt("n_seq %d must be in [1, 256]", n_seq));
    if (layer0 < 0 || layer0 > n_layer_)
        throw ModelError(fmt("the KV cache's first host layer %lld is outside [0, %lld]", (long long)layer0,
                             (long long)n_layer_));
    slot_bytes_ = (size_t)(n_layer_ - layer0_) * 2 * layer_bytes();
    mem_.resize((size_t)n_seq);
    cells_.resize((size_t)n_seq);
}

size_t KvCache::reserved_bytes() const {
    size_t b = 0;
    for (auto& m : mem_) b += m ? slot_bytes_ : 0;
    return b;
}

int KvCache::check(int seq) const {
    if (seq < 0 || seq >= n_seq_) throw ModelError(fmt("sequence %d is outside [0, %d)", seq, n_seq_));
    return seq;
}

uint8_t* KvCache::base(int seq) {
    auto& m = mem_[(size_t)check(seq)];
    if (!host()) throw ModelError("this KV cache keeps its keys and values on the device");
    if (!m) {
        // calloc: large blocks come straight from the kernel as untouched zero pages, so a slot costs
        // memory only as its positions are written.
        m.reset((uint8_t*)std::calloc(slot_bytes_, 1));
        if (!m) throw ModelError(fmt("cannot reserve %.1f MB for the KV cache of sequence %d", slot_bytes_ / 1e6, seq));
    }
    return m.get();
}

void KvCache::append(int seq, const Cell* cells, int64_t n) {
    auto& c = cells_[(size_t)check(seq)];
    if ((int64_t)c.size() + n > n_ctx_)
        throw ContextOverflow(fmt("sequence %d holds %zu positions; %lld more exceed n_ctx = %lld", seq, c.size(),
                                  (long long)n, (long long)n_ctx_));
    c.insert(c.end(), cells, cells + n);
}

void KvCache::truncate(int seq, int64_t p0) {
    auto& c = cells_[(size_t)check(seq)];
    if (p0 < 0 || p0 > (int64_t)c.size())
        throw ModelError(fmt("cannot cut sequence %d at position %lld: it holds %zu", seq, (long long)p0, c.size()));
    c.resize((size_t)p0);
}

void KvCache::copy_prefix(int src, int dst, int64_t n) {
    check(src);
    check(dst);
    if (n < 0 || n > n_past(src))
        throw ModelError(fmt("cannot copy %lld positions of sequence %d: it holds %lld", (long long)n, src,
                             (long long)n_past(src)));
    if (src == dst) {
        truncate(dst, n);
        return;
    }
    const size_t bytes = (size_t)n * (size_t)kv_dim_ * elem_size();
    if (bytes && host())
        for (int64_t il = layer0_; il < n_layer_; il++) {
            std::memcpy(k(dst, il), k(src, il), bytes);
            std::memcpy(v(dst, il), v(src, il), bytes);
        }
    const auto& s = cells_[(size_t)src];
    cells_[(size_t)dst].assign(s.begin(), s.begin() + n);
}

int64_t KvCache::common_prefix(int seq, const Cell* cells, int64_t n) const {
    const auto& c = cells_[(size_t)check(seq)];
    int64_t i = 0;
    while (i < n && i < (int64_t)c.size() && c[(size_t)i] == cells[i]) i++;
    return i;
}

}  // namespace tg
