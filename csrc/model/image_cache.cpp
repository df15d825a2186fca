#include "model/image_cache.h"

#include <cstring>

namespace tg {

static inline uint64_t mix(uint64_t x) {  // the 64-bit finaliser of MurmurHash3
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

uint64_t content_hash(const void* data, size_t n) {
    // Four independent lanes over 8-byte words (a pixel buffer is megabytes; a byte loop would cost
    // milliseconds), then the tail, the length and a final mix.
    const uint8_t* p = (const uint8_t*)data;
    uint64_t h[4] = {0x9e3779b97f4a7c15ULL, 0xbf58476d1ce4e5b9ULL, 0x94d049bb133111ebULL, 0x2545f4914f6cdd1dULL};
    size_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int l = 0; l < 4; l++) {
            uint64_t w;
            std::memcpy(&w, p + i + 8 * l, 8);
            h[l] = (h[l] ^ w) * 0x100000001b3ULL;
            h[l] ^= h[l] >> 29;
        }
    uint64_t t = 0xcbf29ce484222325ULL;
    for (; i < n; i++) t = (t ^ p[i]) * 0x100000001b3ULL;
    uint64_t out = mix(n);
    for (int l = 0; l < 4; l++) out = mix(out ^ mix(h[l] + (uint64_t)l));
    return mix(out ^ t);
}

std::shared_ptr<const ImageEmbd> ImageCache::find(uint64_t hash) {
    auto it = index_.find(hash);
    if (it == index_.end()) {
        misses_++;
        return nullptr;
    }
    hits_++;
    lru_.splice(lru_.begin(), lru_, it->second);
    return *it->second;
}

void ImageCache::put(std::shared_ptr<const ImageEmbd> e) {
    auto it = index_.find(e->hash);
    if (it != index_.end()) {
        bytes_ -= (*it->second)->bytes();
        lru_.erase(it->second);
        index_.erase(it);
    }
    bytes_ += e->bytes();
    lru_.push_front(e);
    index_[e->hash] = lru_.begin();
    evict();
}

void ImageCache::set_max_bytes(size_t max_bytes) {
    max_bytes_ = max_bytes;
    evict();
}

void ImageCache::clear() {
    lru_.clear();
    index_.clear();
    bytes_ = 0;
}

void ImageCache::evict() {
    while (bytes_ > max_bytes_ && !lru_.empty()) {
        bytes_ -= lru_.back()->bytes();
        index_.erase(lru_.back()->hash);
        lru_.pop_back();
    }
}

}  // namespace tg
