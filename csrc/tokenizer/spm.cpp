// SentencePiece (tokenizer.ggml.model = "llama"), matching the sentencepiece library's encoder.
//
// The GGUF key tokenizer.ggml.spm_algorithm picks the algorithm, since both kinds of model are stored as
// "llama" (VocabData::spm_algorithm):
//   "bpe" (also when absent, as llama.cpp assumes): pieces are merged greedily, best piece score first
//        (ties: leftmost), as sentencepiece's bpe_model.cc does; merges into unused pieces are undone.
//   "unigram": Viterbi over piece scores (sentencepiece's optimized unigram encoder): unknown characters
//        score min(normal score) - 10, user-defined pieces 0.1 * (bytes - 1), as sentencepiece 0.2.x does.
// Normalization is sentencepiece's with the "identity" rule and remove_extra_whitespaces = false (the way
// our vocabularies are trained, as Llama's is): every ' ' becomes U+2581 "▁" and, with add_space_prefix
// (sentencepiece's add_dummy_prefix), one "▁" is put in front of non-empty text. Models trained with the
// default nmt_nfkc rule would need NFKC normalization, which is not done here.
// User-defined pieces (type 4) are matched as whole symbols the way sentencepiece does. Pieces that end up
// unknown become their UTF-8 bytes as <0xXX> tokens when the vocabulary has them (byte fallback), else the
// unknown token. Control tokens (type 3) are recognised in the text only with parse_special; each text
// fragment between them is then encoded on its own, space prefix included (as llama.cpp does).
// Invalid UTF-8 (possible only through raw bytes) is not replaced by U+FFFD as sentencepiece would: each
// invalid subpart is one unknown character, so with byte fallback decode(encode(b)) keeps every byte.
//
// token_bytes: "▁" -> ' ' in normal, user-defined and unused pieces; <0xXX> -> that byte; the unknown
// token -> " \u2047 " (sentencepiece's surface for it); control tokens -> their text.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <queue>
#include <unordered_map>

#include "errors.h"
#include "tokenizer/internal.h"
#include "tokenizer/unicode.h"

namespace tg {

namespace {

const char kSpaceMark[] = "\xE2\x96\x81";  // U+2581
constexpr size_t kSpaceMarkLen = 3;
constexpr float kUnkPenalty = 10.0f;

int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

// Byte length of the character at s[0..n) (an invalid subpart counts as one character).
size_t char_len(const char* s, size_t n) {
    uint32_t cp;
    const int r = unicode::utf8_step(reinterpret_cast<const uint8_t*>(s), n, &cp);
    if (r > 0) return (size_t)r;
    if (r < 0) return (size_t)(-r);
    return n;
}

class SpmTokenizer final : public Tokenizer {
  public:
    explicit SpmTokenizer(const VocabData& v);
    std::vector<int32_t> encode(const std::string& text, bool parse_special) const override;
    std::string token_bytes(int32_t id) const override;

  private:
    struct Piece {
        size_t off, len;  // in the normalized text
        int32_t id;
    };
    void encode_fragment(const char* s, size_t n, std::vector<int32_t>& out) const;
    void encode_bpe(const std::string& norm, std::vector<Piece>& pieces) const;
    void encode_unigram(const std::string& norm, std::vector<Piece>& pieces) const;
    int32_t piece_to_id(const std::string& piece) const;
    void emit(const std::string& norm, const Piece& p, std::vector<int32_t>& out) const;
    bool is_unused(int32_t id) const { return types_[id] == kTokenUnused; }

    bool unigram_, add_space_prefix_, byte_fallback_ = false;
    int32_t unk_id_ = -1;
    float min_score_ = FLT_MAX;
    std::vector<float> scores_;
    std::vector<std::string> bytes_;                        // token_bytes
    std::unordered_map<std::string, int32_t> pieces_;       // normal, user-defined, unused
    std::unordered_map<std::string, int32_t> reserved_;     // control, unknown, byte
    int32_t byte_piece_[256];
    ByteTrie pieces_trie_;   // pieces_ (unigram)
    ByteTrie user_trie_;     // user-defined pieces
    ByteTrie control_trie_;  // control tokens (parse_special)
    bool has_control_ = false;
};

SpmTokenizer::SpmTokenizer(const VocabData& v) : Tokenizer(v), add_space_prefix_(v.add_space_prefix) {
    if (v.spm_algorithm.empty() || v.spm_algorithm == "bpe") unigram_ = false;
    else if (v.spm_algorithm == "unigram") unigram_ = true;
    else
        throw TokenizerError(fmt("tokenizer.ggml.spm_algorithm: unsupported value '%s' (expected 'bpe' or "
                                 "'unigram')", v.spm_algorithm.c_str()));
    const int32_t n = n_vocab();
    if (!v.scores.empty() && v.scores.size() != (size_t)n)
        throw TokenizerError(fmt("tokenizer.ggml.scores: %zu entries for %d tokens", v.scores.size(), (int)n));
    scores_ = v.scores.empty() ? std::vector<float>(n, 0.0f) : v.scores;
    for (int32_t i = 0; i < n; ++i)
        if (!std::isfinite(scores_[i]))
            throw TokenizerError(fmt("tokenizer.ggml.scores: token %d has score %f", (int)i, (double)scores_[i]));
    for (int b = 0; b < 256; ++b) byte_piece_[b] = -1;
    bytes_.resize(n);
    int n_bytes = 0;
    for (int32_t i = 0; i < n; ++i) {
        const std::string& tok = v.tokens[i];
        const int32_t t = types_[i];
        const bool normal = t == kTokenNormal || t == kTokenUserDefined || t == kTokenUnused;
        if (!tok.empty()) {
            auto r = (normal ? pieces_ : reserved_).emplace(tok, i);
            if (!r.second)
                throw TokenizerError(fmt("tokenizer.ggml.tokens: token %d '%s' duplicates token %d", (int)i,
                                         tok.c_str(), (int)r.first->second));
        }
        if (t == kTokenNormal) {
            min_score_ = std::min(min_score_, scores_[i]);
        }
        if (t == kTokenUserDefined) user_trie_.insert(tok, i);
        if (t == kTokenControl) {
            control_trie_.insert(tok, i);
            has_control_ = true;
        }
        if (normal && !tok.empty()) pieces_trie_.insert(tok, i);
        if (t == kTokenUnknown && unk_id_ < 0) unk_id_ = i;
        if (t == kTokenByte) {
            int hi = tok.size() == 6 ? hex_digit(tok[3]) : -1, lo = tok.size() == 6 ? hex_digit(tok[4]) : -1;
            if (tok.size() != 6 || tok.compare(0, 3, "<0x") != 0 || tok[5] != '>' || hi < 0 || lo < 0)
                throw TokenizerError(fmt("tokenizer.ggml.tokens: byte token %d is '%s', expected <0xXX>", (int)i,
                                         tok.c_str()));
            const int b = hi * 16 + lo;
            if (byte_piece_[b] >= 0)
                throw TokenizerError(fmt("tokenizer.ggml.tokens: byte token %d '%s' duplicates token %d", (int)i,
                                         tok.c_str(), (int)byte_piece_[b]));
            byte_piece_[b] = i;
            ++n_bytes;
            bytes_[i] = std::string(1, (char)b);
        } else if (t == kTokenUnknown) {
            bytes_[i] = " \xE2\x81\x87 ";
        } else if (t == kTokenControl) {
            bytes_[i] = tok;
        } else {
            std::string s;
            for (size_t k = 0; k < tok.size();) {
                if (tok.compare(k, kSpaceMarkLen, kSpaceMark) == 0) {
                    s += ' ';
                    k += kSpaceMarkLen;
                } else {
                    s += tok[k++];
                }
            }
            bytes_[i] = s;
        }
    }
    if (n_bytes != 0 && n_bytes != 256)
        throw TokenizerError(fmt("tokenizer.ggml.tokens: %d byte tokens <0xXX>; byte fallback needs all 256",
                                 n_bytes));
    byte_fallback_ = n_bytes == 256;
    if (v.unk >= 0) unk_id_ = v.unk;
    if (unk_id_ < 0)
        throw TokenizerError("tokenizer.ggml.unknown_token_id: a SentencePiece vocabulary needs an unknown token "
                             "(none given and no token of type 2)");
}

std::string SpmTokenizer::token_bytes(int32_t id) const {
    check_id(id);
    return bytes_[id];
}

int32_t SpmTokenizer::piece_to_id(const std::string& piece) const {
    auto it = reserved_.find(piece);
    if (it != reserved_.end()) return it->second;
    auto it2 = pieces_.find(piece);
    if (it2 != pieces_.end()) return it2->second;
    return unk_id_;
}

void SpmTokenizer::emit(const std::string& norm, const Piece& p, std::vector<int32_t>& out) const {
    if (byte_fallback_ && (p.id == unk_id_ || types_[p.id] == kTokenUnknown)) {
        for (size_t k = 0; k < p.len; ++k) out.push_back(byte_piece_[(uint8_t)norm[p.off + k]]);
    } else {
        out.push_back(p.id);
    }
}

std::vector<int32_t> SpmTokenizer::encode(const std::string& text, bool parse_special) const {
    if (text.size() >= kMaxEncodeBytes)
        throw TokenizerError(fmt("encode: text of %zu bytes is too long (limit %zu)", text.size(), kMaxEncodeBytes));
    std::vector<int32_t> out;
    if (!parse_special || !has_control_) {
        encode_fragment(text.data(), text.size(), out);
        return out;
    }
    const size_t n = text.size();
    size_t frag = 0, i = 0;
    while (i < n) {
        int32_t best_id = -1;
        size_t best_len = 0;
        control_trie_.prefixes(text.data() + i, n - i, [&](int32_t id, size_t len) {
            best_id = id;
            best_len = len;
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

void SpmTokenizer::encode_fragment(const char* s, size_t n, std::vector<int32_t>& out) const {
    if (n == 0) return;
    std::string norm;
    norm.reserve(n + n / 2 + kSpaceMarkLen);
    if (add_space_prefix_) norm.append(kSpaceMark, kSpaceMarkLen);
    for (size_t k = 0; k < n; ++k) {
        if (s[k] == ' ') norm.append(kSpaceMark, kSpaceMarkLen);
        else norm += s[k];
    }
    std::vector<Piece> pieces;
    if (unigram_) encode_unigram(norm, pieces);
    else encode_bpe(norm, pieces);
    // consecutive unknown pieces become one (sentencepiece does so; with byte fallback it changes nothing)
    size_t w = 0;
    for (size_t k = 0; k < pieces.size(); ++k) {
        if (w > 0 && pieces[k].id == unk_id_ && pieces[w - 1].id == unk_id_) {
            pieces[w - 1].len += pieces[k].len;
        } else {
            pieces[w++] = pieces[k];
        }
    }
    pieces.resize(w);
    for (const Piece& p : pieces) emit(norm, p, out);
}

void SpmTokenizer::encode_bpe(const std::string& norm, std::vector<Piece>& pieces) const {
    struct Sym {
        size_t off, len;  // len 0: merged into its left neighbour
        int32_t prev, next;
        bool freeze;      // user-defined piece: never merged
    };
    std::vector<Sym> sym;
    const size_t n = norm.size();
    for (size_t pos = 0; pos < n;) {
        size_t len = 0;
        user_trie_.prefixes(norm.data() + pos, n - pos, [&](int32_t, size_t l) { len = l; });
        const bool freeze = len > 0;
        if (!freeze) len = char_len(norm.data() + pos, n - pos);
        const int32_t idx = (int32_t)sym.size();
        sym.push_back({pos, len, idx - 1, -1, freeze});
        if (idx > 0) sym[idx - 1].next = idx;
        pos += len;
    }
    struct Pair {
        float score;
        int32_t left, right;
        size_t size;
    };
    struct Worse {  // priority: higher score, then smaller left
        bool operator()(const Pair& a, const Pair& b) const {
            return a.score != b.score ? a.score < b.score : a.left > b.left;
        }
    };
    std::priority_queue<Pair, std::vector<Pair>, Worse> agenda;
    // merged unused pieces -> the two pieces they were made of, to split them again at the end
    std::unordered_map<std::string, std::pair<std::string, std::string>> rev_merge;
    std::string buf;
    auto maybe_add = [&](int32_t left, int32_t right) {
        if (left < 0 || right < 0 || sym[left].freeze || sym[right].freeze) return;
        buf.assign(norm, sym[left].off, sym[left].len + sym[right].len);
        auto it = pieces_.find(buf);
        if (it == pieces_.end()) return;
        agenda.push({scores_[it->second], left, right, buf.size()});
        if (is_unused(it->second))
            rev_merge[buf] = {norm.substr(sym[left].off, sym[left].len), norm.substr(sym[right].off, sym[right].len)};
    };
    for (size_t i = 1; i < sym.size(); ++i) maybe_add((int32_t)i - 1, (int32_t)i);
    while (!agenda.empty()) {
        const Pair top = agenda.top();
        agenda.pop();
        Sym& l = sym[top.left];
        Sym& r = sym[top.right];
        if (l.len == 0 || r.len == 0 || l.len + r.len != top.size) continue;  // stale
        l.len += r.len;
        r.len = 0;
        l.next = r.next;
        if (r.next >= 0) sym[r.next].prev = top.left;
        maybe_add(l.prev, top.left);
        maybe_add(top.left, l.next);
    }
    // resegment: unused pieces are split back into what they were merged from
    std::vector<std::pair<std::string, size_t>> stack;
    for (int32_t i = sym.empty() ? -1 : 0; i >= 0; i = sym[i].next) {
        stack.assign(1, {norm.substr(sym[i].off, sym[i].len), sym[i].off});
        while (!stack.empty()) {
            auto [w, off] = stack.back();
            stack.pop_back();
            const int32_t id = piece_to_id(w);
            if (is_unused(id)) {
                auto it = rev_merge.find(w);
                if (it != rev_merge.end()) {
                    const size_t left_len = it->second.first.size();
                    stack.push_back({it->second.second, off + left_len});  // right half after the left
                    stack.push_back({it->second.first, off});
                    continue;
                }
            }
            pieces.push_back({off, w.size(), id});
        }
    }
}

void SpmTokenizer::encode_unigram(const std::string& norm, std::vector<Piece>& pieces) const {
    struct Best {
        int32_t id = -1;
        float score = 0.0f;
        int64_t starts_at = -1;
    };
    const size_t n = norm.size();
    const float unk_score = min_score_ - kUnkPenalty;
    std::vector<Best> best(n + 1);
    size_t start = 0;
    while (start < n) {
        const float till_here = best[start].score;
        const size_t mblen = char_len(norm.data() + start, n - start);
        bool has_single = false;
        pieces_trie_.prefixes(norm.data() + start, n - start, [&](int32_t id, size_t len) {
            if (is_unused(id)) return;
            // sentencepiece 0.2.x scores user-defined pieces 0.1 * (bytes - 1); on equal path scores the
            // first candidate found stays (strict >)
            const float score = types_[id] == kTokenUserDefined ? (float)(0.1 * ((double)len - 1.0)) : scores_[id];
            const float cand = score + till_here;
            Best& t = best[start + len];
            if (t.starts_at == -1 || cand > t.score) {
                t.score = cand;
                t.starts_at = (int64_t)start;
                t.id = id;
            }
            if (len == mblen) has_single = true;
        });
        if (!has_single) {
            Best& t = best[start + mblen];
            const float cand = unk_score + till_here;
            if (t.starts_at == -1 || cand > t.score) {
                t.score = cand;
                t.starts_at = (int64_t)start;
                t.id = unk_id_;
            }
        }
        start += mblen;
    }
    const size_t first = pieces.size();
    for (int64_t end = (int64_t)n; end > 0;) {
        const Best& b = best[end];
        if (b.starts_at < 0) throw TokenizerError(fmt("unigram encode: no path to byte %lld", (long long)end));
        pieces.push_back({(size_t)b.starts_at, (size_t)(end - b.starts_at), b.id});
        end = b.starts_at;
    }
    std::reverse(pieces.begin() + first, pieces.end());
}

}  // namespace

std::unique_ptr<Tokenizer> make_spm_tokenizer(const VocabData& v) { return std::make_unique<SpmTokenizer>(v); }

}  // namespace tg
