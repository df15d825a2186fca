// UTF-8 decoding and the code point classes of the GPT-2 pre-tokenizer.
// Invalid UTF-8 is handled the way Unicode recommends ("maximal subpart" replacement, which is also what
// Python's bytes.decode('utf-8', 'replace') does): each maximal prefix of a would-be sequence is one error.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace tg {
namespace unicode {

enum CodepointClass : uint8_t { kOther = 0, kLetter = 1, kNumber = 2, kSpace = 3 };

struct CodepointRange {
    uint32_t first, last;  // inclusive
    uint8_t cls;           // CodepointClass
};
extern const CodepointRange kClassRanges[];  // generated: unicode_tables.cpp
extern const int kNumClassRanges;
extern const char* const kUnicodeVersion;

// Class of a code point (binary search over the generated ranges; ASCII by a direct table).
CodepointClass classify(uint32_t cp);

// One step of UTF-8 decoding at s[0..n), n > 0.
//   returns len > 0: a valid character of len bytes, *cp set;
//   returns -len:    an invalid maximal subpart of len >= 1 bytes (one U+FFFD when replaced);
//   returns 0:       a valid but incomplete sequence that runs to the end of the input (more bytes may follow).
int utf8_step(const uint8_t* s, size_t n, uint32_t* cp);

// Appends the UTF-8 encoding of cp.
void append_utf8(std::string& out, uint32_t cp);

// bytes with every invalid or incomplete subpart replaced by U+FFFD.
std::string sanitize_utf8(const std::string& bytes);

}  // namespace unicode
}  // namespace tg
