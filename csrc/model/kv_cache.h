// The decoder's key/value cache for several sequences (slots) of one context, and the record of what
// each slot holds.
//
// Slot s keeps positions [0, n_past(s)) of one sequence: per layer a [n_ctx][kv_dim] block of keys
// (after RoPE) and one of values, float32 or half. Next to them the slot records what each position
// was made from (a Cell: a token id, or one row of an image's embeddings by the image's content
// hash), so that a new request can find the slot whose cache starts with its own prompt and evaluate
// only the rest. A slot's memory is reserved when the slot is first written, so contexts with many
// slots cost only what their sequences use.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

namespace tg {

struct PhiHparams;

// What one cache position was computed from.
struct Cell {
    int32_t token = -1;   // a token id, or -1 for an image row
    int32_t row = 0;      // image rows: which row of the image's embeddings
    uint64_t image = 0;   // image rows: the content hash of the image

    static Cell of_token(int32_t t) { return Cell{t, 0, 0}; }
    static Cell of_image(uint64_t hash, int32_t row) { return Cell{-1, row, hash}; }
    bool operator==(const Cell& o) const { return token == o.token && row == o.row && image == o.image; }
    bool operator!=(const Cell& o) const { return !(*this == o); }
};

class KvCache {
public:
    // layer0: the first layer whose keys and values live here; the layers before it keep theirs on the GPU
    // (the first gpu_layers of a split decoder, every layer with n_layer). Where none live here, the cache
    // records the cells only: k() and v() throw and copy_prefix copies the record.
    KvCache(const PhiHparams& hp, int64_t n_ctx, int n_seq, bool f16, int64_t layer0 = 0);

    int64_t n_ctx() const { return n_ctx_; }
    int n_seq() const { return n_seq_; }
    bool f16() const { return f16_; }
    bool host() const { return layer0_ < n_layer_; }
    int64_t layer0() const { return layer0_; }
    int64_t kv_dim() const { return kv_dim_; }
    size_t elem_size() const { return f16_ ? 2 : 4; }
    size_t slot_bytes() const { return slot_bytes_; }  // keys and values of one slot, every host layer
    size_t reserved_bytes() const;                    // of the slots written so far

    int64_t n_past(int seq) const { return (int64_t)cells_[(size_t)check(seq)].size(); }
    const std::vector<Cell>& cells(int seq) const { return cells_[(size_t)check(seq)]; }

    // Position 0 of layer il's keys / values of slot seq ([n_ctx][kv_dim] each; il >= layer0); reserves the slot.
    uint8_t* k(int seq, int64_t il) { return base(seq) + (size_t)(il - layer0_) * 2 * layer_bytes(); }
    uint8_t* v(int seq, int64_t il) { return base(seq) + ((size_t)(il - layer0_) * 2 + 1) * layer_bytes(); }

    // Records that rows [n_past, n_past + n) of slot seq now hold cells[0..n) (their keys and values
    // are written by the forward).
    void append(int seq, const Cell* cells, int64_t n);
    // Forgets positions [p0, n_past) of slot seq (p0 <= n_past). Only a tail can go: positions after a
    // removed one would keep keys rotated for their old place.
    void truncate(int seq, int64_t p0);
    // Slot dst becomes the first n positions of slot src (src itself is unchanged).
    void copy_prefix(int src, int dst, int64_t n);
    // How many leading cells of `cells` slot seq holds.
    int64_t common_prefix(int seq, const Cell* cells, int64_t n) const;

private:
    int check(int seq) const;
    size_t layer_bytes() const { return (size_t)n_ctx_ * (size_t)kv_dim_ * elem_size(); }
    uint8_t* base(int seq);

    int64_t n_ctx_, n_layer_, kv_dim_, layer0_;
    int n_seq_;
    bool f16_;
    size_t slot_bytes_;
    struct Free { void operator()(uint8_t* p) const; };
    std::vector<std::unique_ptr<uint8_t, Free>> mem_;  // per slot: [n_layer - layer0][k | v][n_ctx][kv_dim]
    std::vector<std::vector<Cell>> cells_;
};

}  // namespace tg
