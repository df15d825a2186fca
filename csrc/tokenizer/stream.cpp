#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace tg {

std::string StreamDecoder::push(int32_t id) {
    pending_ += tok_.token_bytes(id);  // throws on a bad id before any state changes
    std::string out;
    const uint8_t* s = reinterpret_cast<const uint8_t*>(pending_.data());
    const size_t n = pending_.size();
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        const int r = unicode::utf8_step(s + i, n - i, &cp);
        if (r == 0) break;  // incomplete character at the end: hold it back
        if (r > 0) {
            out.append(pending_, i, r);
            i += r;
        } else {
            unicode::append_utf8(out, 0xFFFD);
            i += (size_t)(-r);
        }
    }
    pending_.erase(0, i);
    return out;
}

std::string StreamDecoder::flush() {
    std::string out = unicode::sanitize_utf8(pending_);
    pending_.clear();
    return out;
}

}  // namespace tg
