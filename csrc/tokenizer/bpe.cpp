// GPT-2 byte-level BPE (tokenizer.ggml.model = "gpt2").
//
// encode(text):
//   1. added tokens: user-defined ones (type 4) always, control ones (type 3) only with parse_special, are
//      cut out of the text first, leftmost-longest (HF tokenizers' added-vocabulary semantics: Phi-2's
//      whitespace runs, "\n    return" -> "\n", "    ", "return"). Unused rows (type 5) never match.
//   2. each remaining fragment is split by the GPT-2 pre-tokenizer pattern
//        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//      written out by hand over code point classes (unicode_tables.cpp);
//   3. each piece is mapped byte by byte to the GPT-2 byte alphabet and merged by merge rank
//      (lowest rank first, leftmost first among equal ranks) with a heap: O(n log n) for a piece of n bytes.
// Invalid UTF-8 in the input is kept, not replaced: each invalid subpart is one "other" character for the
// pre-tokenizer and its bytes go through byte-level BPE, so decode(encode(b)) == b for any bytes b.
//
// token_bytes: normal tokens are mapped back from the byte alphabet; control, user-defined and unused
// tokens are stored as their raw text (llama.cpp's convention) and returned as is.
#include <algorithm>
#include <queue>
#include <unordered_map>

#include "errors.h"
#include "tokenizer/internal.h"
#include "tokenizer/unicode.h"

namespace tg {

namespace {

// GPT-2's reversible byte <-> code point map: printable bytes map to themselves, the rest to U+0100...
struct ByteAlphabet {
    uint32_t byte_to_cp[256];
    std::unordered_map<uint32_t, uint8_t> cp_to_byte;
    ByteAlphabet() {
        uint32_t extra = 0;
        for (int b = 0; b < 256; ++b) {
            const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
            byte_to_cp[b] = printable ? (uint32_t)b : 256 + extra++;
            cp_to_byte[byte_to_cp[b]] = (uint8_t)b;
        }
    }
};
const ByteAlphabet& byte_alphabet() {
    static const ByteAlphabet a;
    return a;
}

// One character of the input for the pre-tokenizer.
struct Unit {
    uint32_t offset, len;  // bytes in the fragment
    uint32_t cp;           // code point; kInvalidCp for an invalid UTF-8 subpart
    uint8_t cls;           // unicode::CodepointClass
};
constexpr uint32_t kInvalidCp = 0xFFFFFFFFu;

class BpeTokenizer final : public Tokenizer {
  public:
    explicit BpeTokenizer(const VocabData& v);
    std::vector<int32_t> encode(const std::string& text, bool parse_special) const override;
    std::string token_bytes(int32_t id) const override;

  private:
    struct Merge {
        int32_t rank, id;
    };
    static uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

    void encode_fragment(const char* s, size_t n, std::vector<int32_t>& out) const;
    void bpe_piece(const char* s, size_t n, std::vector<int32_t>& out) const;

    std::vector<std::string> bytes_;      // raw bytes of each token
    int32_t byte_token_[256];             // token of each single byte
    std::unordered_map<uint64_t, Merge> merges_;
    ByteTrie added_;                     // user-defined and control tokens
};

BpeTokenizer::BpeTokenizer(const VocabData& v) : Tokenizer(v) {
    if (!v.pre.empty() && v.pre != "gpt-2" && v.pre != "phi-2" && v.pre != "gpt2" && v.pre != "default")
        throw TokenizerError(fmt("tokenizer.ggml.pre: unsupported pre-tokenizer '%s' for model 'gpt2' "
                                 "(supported: gpt-2, phi-2)", v.pre.c_str()));
    const ByteAlphabet& alpha = byte_alphabet();
    const int32_t n = n_vocab();
    std::unordered_map<std::string, int32_t> normal;  // byte-alphabet form -> id
    std::unordered_map<std::string, int32_t> added;   // raw text -> id
    bytes_.resize(n);
    for (int32_t i = 0; i < n; ++i) {
        const std::string& tok = v.tokens[i];
        const int32_t t = types_[i];
        if (t == kTokenControl || t == kTokenUserDefined || t == kTokenUnused) {
            bytes_[i] = tok;
            if (t != kTokenUnused) {
                auto r = added.emplace(tok, i);
                if (!r.second)
                    throw TokenizerError(fmt("tokenizer.ggml.tokens: added token %d '%s' duplicates token %d", (int)i,
                                             tok.c_str(), (int)r.first->second));
                added_.insert(tok, i);
            }
            continue;
        }
        // normal (and unknown/byte, treated alike): decode the byte alphabet
        std::string raw;
        const uint8_t* s = reinterpret_cast<const uint8_t*>(tok.data());
        for (size_t k = 0; k < tok.size();) {
            uint32_t cp;
            const int r = unicode::utf8_step(s + k, tok.size() - k, &cp);
            if (r <= 0)
                throw TokenizerError(fmt("tokenizer.ggml.tokens: token %d is not valid UTF-8", (int)i));
            auto it = alpha.cp_to_byte.find(cp);
            if (it != alpha.cp_to_byte.end()) raw += (char)it->second;
            else raw.append(tok, k, r);  // not in the byte alphabet: keep the character itself
            k += r;
        }
        bytes_[i] = raw;
        auto r = normal.emplace(tok, i);
        if (!r.second)
            throw TokenizerError(fmt("tokenizer.ggml.tokens: token %d '%s' duplicates token %d", (int)i, tok.c_str(),
                                     (int)r.first->second));
    }
    for (int b = 0; b < 256; ++b) {
        std::string key;
        unicode::append_utf8(key, alpha.byte_to_cp[b]);
        auto it = normal.find(key);
        if (it == normal.end())
            throw TokenizerError(fmt("tokenizer.ggml.tokens: no token for byte 0x%02X ('%s'); a byte-level BPE "
                                     "vocabulary needs all 256", b, key.c_str()));
        byte_token_[b] = it->second;
    }
    if (v.merges.size() >= (size_t)INT32_MAX)
        throw TokenizerError(fmt("tokenizer.ggml.merges: %zu merges is too many", v.merges.size()));
    merges_.reserve(v.merges.size());
    for (size_t r = 0; r < v.merges.size(); ++r) {
        const std::string& m = v.merges[r];
        const size_t sp = m.find(' ');
        if (sp == std::string::npos || sp == 0 || sp + 1 >= m.size() || m.find(' ', sp + 1) != std::string::npos)
            throw TokenizerError(fmt("tokenizer.ggml.merges: merge %zu '%s' is not of the form 'a b'", r, m.c_str()));
        const std::string a = m.substr(0, sp), b = m.substr(sp + 1);
        auto ia = normal.find(a), ib = normal.find(b), iab = normal.find(a + b);
        if (ia == normal.end() || ib == normal.end() || iab == normal.end())
            throw TokenizerError(fmt("tokenizer.ggml.merges: merge %zu '%s' uses or makes a token that is not in "
                                     "the vocabulary", r, m.c_str()));
        // a repeated pair keeps its first (lowest) rank, as HF tokenizers does
        merges_.emplace(pair_key(ia->second, ib->second), Merge{(int32_t)r, iab->second});
    }
}

std::string BpeTokenizer::token_bytes(int32_t id) const {
    check_id(id);
    return bytes_[id];
}

std::vector<int32_t> BpeTokenizer::encode(const std::string& text, bool parse_special) const {
    if (text.size() >= kMaxEncodeBytes)
        throw TokenizerError(fmt("encode: text of %zu bytes is too long (limit %zu)", text.size(), kMaxEncodeBytes));
    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 1);
    const size_t n = text.size();
    size_t frag = 0;  // start of the pending text fragment
    size_t i = 0;
    while (i < n) {
        // longest added token starting at i
        int32_t best_id = -1;
        size_t best_len = 0;
        added_.prefixes(text.data() + i, n - i, [&](int32_t id, size_t len) {
            if (parse_special || types_[id] != kTokenControl) {
                best_id = id;
                best_len = len;
            }
        });
        if (best_id < 0) {
            ++i;
            continue;
        }
        if (i > frag) encode_fragment(text.data() + frag, i - frag, out);
        out.push_back(best_id);
        i += best_len;
        frag = i;
    }
    if (n > frag) encode_fragment(text.data() + frag, n - frag, out);
    return out;
}

void BpeTokenizer::encode_fragment(const char* text, size_t n, std::vector<int32_t>& out) const {
    // characters and their classes
    std::vector<Unit> u;
    u.reserve(n);
    const uint8_t* s = reinterpret_cast<const uint8_t*>(text);
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        const int r = unicode::utf8_step(s + i, n - i, &cp);
        if (r > 0) {
            u.push_back({(uint32_t)i, (uint32_t)r, cp, (uint8_t)unicode::classify(cp)});
            i += r;
        } else {
            const size_t len = r < 0 ? (size_t)(-r) : n - i;
            u.push_back({(uint32_t)i, (uint32_t)len, kInvalidCp, (uint8_t)unicode::kOther});
            i += len;
        }
    }
    const size_t m = u.size();
    auto cls = [&](size_t k) { return u[k].cls; };
    auto emit = [&](size_t a, size_t b) {  // units [a, b)
        const size_t off = u[a].offset, end = u[b - 1].offset + u[b - 1].len;
        bpe_piece(text + off, end - off, out);
    };
    size_t i = 0;
    while (i < m) {
        const uint32_t c = u[i].cp;
        // 's|'t|'re|'ve|'m|'ll|'d
        if (c == '\'' && i + 1 < m) {
            const uint32_t c1 = u[i + 1].cp;
            if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
                emit(i, i + 2);
                i += 2;
                continue;
            }
            if (i + 2 < m) {
                const uint32_t c2 = u[i + 2].cp;
                if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
                    emit(i, i + 3);
                    i += 3;
                    continue;
                }
            }
        }
        //  ?\p{L}+ |  ?\p{N}+ |  ?[^\s\p{L}\p{N}]+
        size_t start = i, k = i;
        if (c == ' ' && i + 1 < m && cls(i + 1) != unicode::kSpace) k = i + 1;
        const uint8_t run = cls(k);
        if (run != unicode::kSpace) {
            while (k < m && cls(k) == run) ++k;
            emit(start, k);
            i = k;
            continue;
        }
        // \s+(?!\S) | \s+
        size_t j = i;
        while (j < m && cls(j) == unicode::kSpace) ++j;
        if (j == m) {
            emit(i, j);
            i = j;
        } else if (j - i >= 2) {
            emit(i, j - 1);  // leave the last space to the next piece
            i = j - 1;
        } else {
            emit(i, j);
            i = j;
        }
    }
}

void BpeTokenizer::bpe_piece(const char* text, size_t n, std::vector<int32_t>& out) const {
    if (n == 1) {
        out.push_back(byte_token_[(uint8_t)text[0]]);
        return;
    }
    struct Sym {
        int32_t id;
        int32_t prev, next;  // -1 at the ends
    };
    std::vector<Sym> sym(n);
    for (size_t i = 0; i < n; ++i)
        sym[i] = {byte_token_[(uint8_t)text[i]], (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1};
    struct Cand {
        int32_t rank, pos, id;
        bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    auto consider = [&](int32_t left) {
        if (left < 0) return;
        const int32_t right = sym[left].next;
        if (right < 0) return;
        auto it = merges_.find(pair_key(sym[left].id, sym[right].id));
        if (it != merges_.end()) heap.push({it->second.rank, left, it->second.id});
    };
    for (size_t i = 0; i + 1 < n; ++i) consider((int32_t)i);
    std::vector<uint8_t> dead(n, 0);
    while (!heap.empty()) {
        const Cand c = heap.top();
        heap.pop();
        if (dead[c.pos]) continue;
        const int32_t right = sym[c.pos].next;
        if (right < 0) continue;
        auto it = merges_.find(pair_key(sym[c.pos].id, sym[right].id));
        if (it == merges_.end() || it->second.id != c.id) continue;  // stale
        sym[c.pos].id = c.id;
        sym[c.pos].next = sym[right].next;
        if (sym[right].next >= 0) sym[sym[right].next].prev = c.pos;
        dead[right] = 1;
        consider(sym[c.pos].prev);
        consider(c.pos);
    }
    for (int32_t i = 0; i >= 0; i = sym[i].next) out.push_back(sym[i].id);
}

}  // namespace

std::unique_ptr<Tokenizer> make_bpe_tokenizer(const VocabData& v) { return std::make_unique<BpeTokenizer>(v); }

}  // namespace tg
