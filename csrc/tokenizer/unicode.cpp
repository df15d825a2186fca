#include "tokenizer/unicode.h"

namespace tg {
namespace unicode {

namespace {
struct AsciiTable {
    uint8_t cls[128];
    AsciiTable() {
        for (int c = 0; c < 128; ++c) {
            CodepointClass k = kOther;
            if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) k = kLetter;
            else if (c >= '0' && c <= '9') k = kNumber;
            else if ((c >= 0x09 && c <= 0x0D) || c == ' ') k = kSpace;
            cls[c] = k;
        }
    }
};
const AsciiTable kAscii;
}  // namespace

CodepointClass classify(uint32_t cp) {
    if (cp < 128) return static_cast<CodepointClass>(kAscii.cls[cp]);
    int lo = 0, hi = kNumClassRanges - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const CodepointRange& r = kClassRanges[mid];
        if (cp < r.first) hi = mid - 1;
        else if (cp > r.last) lo = mid + 1;
        else return static_cast<CodepointClass>(r.cls);
    }
    return kOther;
}

int utf8_step(const uint8_t* s, size_t n, uint32_t* cp) {
    const uint8_t b = s[0];
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    int need;            // continuation bytes
    uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the first continuation byte
    uint32_t v;
    if (b >= 0xC2 && b <= 0xDF) { need = 1; v = b & 0x1F; }
    else if (b >= 0xE0 && b <= 0xEF) {
        need = 2; v = b & 0x0F;
        if (b == 0xE0) lo = 0xA0;         // no overlongs
        else if (b == 0xED) hi = 0x9F;    // no surrogates
    } else if (b >= 0xF0 && b <= 0xF4) {
        need = 3; v = b & 0x07;
        if (b == 0xF0) lo = 0x90;         // no overlongs
        else if (b == 0xF4) hi = 0x8F;    // nothing above U+10FFFF
    } else {
        return -1;  // 0x80..0xC1, 0xF5..0xFF never start a character
    }
    for (int i = 1; i <= need; ++i) {
        if ((size_t)i >= n) return 0;  // valid so far, input ends
        const uint8_t c = s[i];
        const uint8_t l = (i == 1) ? lo : 0x80, h = (i == 1) ? hi : 0xBF;
        if (c < l || c > h) return -i;
        v = (v << 6) | (c & 0x3F);
    }
    *cp = v;
    return need + 1;
}

void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
        out += (char)cp;
    } else if (cp < 0x800) {
        out += (char)(0xC0 | (cp >> 6));
        out += (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += (char)(0xE0 | (cp >> 12));
        out += (char)(0x80 | ((cp >> 6) & 0x3F));
        out += (char)(0x80 | (cp & 0x3F));
    } else {
        out += (char)(0xF0 | (cp >> 18));
        out += (char)(0x80 | ((cp >> 12) & 0x3F));
        out += (char)(0x80 | ((cp >> 6) & 0x3F));
        out += (char)(0x80 | (cp & 0x3F));
    }
}

std::string sanitize_utf8(const std::string& bytes) {
    std::string out;
    out.reserve(bytes.size());
    const uint8_t* s = reinterpret_cast<const uint8_t*>(bytes.data());
    size_t n = bytes.size(), i = 0;
    while (i < n) {
        uint32_t cp;
        int r = utf8_step(s + i, n - i, &cp);
        if (r > 0) {
            out.append(bytes, i, r);
            i += r;
        } else {
            append_utf8(out, 0xFFFD);
            i += (r < 0) ? (size_t)(-r) : (n - i);
        }
    }
    return out;
}

}  // namespace unicode
}  // namespace tg
