// Projected image embeddings by content, so that the same picture in another conversation (or in a
// request that resends a whole conversation) is not encoded again.
#pragma once
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <unordered_map>
#include <vector>

namespace tg {

// The embeddings of one image in the language model's width: what a batch names for its image rows.
struct ImageEmbd {
    uint64_t hash = 0;        // content hash of the normalised pixels
    int64_t n_rows = 0;       // n_query
    int64_t n_embd = 0;
    std::vector<float> data;  // [n_rows][n_embd]

    const float* row(int64_t r) const { return data.data() + r * n_embd; }
    size_t bytes() const { return data.size() * sizeof(float); }
};

// 64-bit hash of a byte string (the normalised pixels of an image).
uint64_t content_hash(const void* data, size_t n);

// Least recently used entries leave first once the entries take more than max_bytes. An entry is
// shared: one evicted while a sequence still uses it lives on until that sequence lets it go.
class ImageCache {
public:
    explicit ImageCache(size_t max_bytes) : max_bytes_(max_bytes) {}

    std::shared_ptr<const ImageEmbd> find(uint64_t hash);  // marks it most recently used; null if absent
    void put(std::shared_ptr<const ImageEmbd> e);
    void set_max_bytes(size_t max_bytes);
    void clear();

    size_t max_bytes() const { return max_bytes_; }
    size_t bytes() const { return bytes_; }
    size_t size() const { return lru_.size(); }
    uint64_t hits() const { return hits_; }
    uint64_t misses() const { return misses_; }

private:
    void evict();
    size_t max_bytes_, bytes_ = 0;
    uint64_t hits_ = 0, misses_ = 0;
    std::list<std::shared_ptr<const ImageEmbd>> lru_;  // front: most recent
    std::unordered_map<uint64_t, std::list<std::shared_ptr<const ImageEmbd>>::iterator> index_;
};

}  // namespace tg
