// Tokenizers read from a GGUF's tokenizer.ggml.* keys:
//   model "gpt2":  byte-level BPE with the GPT-2 pre-tokenizer and added tokens (bpe.cpp)
//   model "llama": SentencePiece, BPE by piece score or unigram Viterbi, with byte fallback (spm.cpp)
// A Tokenizer is immutable after create() and safe to use from several threads at once.
// StreamDecoder (stream.cpp) turns a stream of ids into text without ever splitting a UTF-8 character.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace tg {

enum TokenType : int32_t {
    kTokenNormal = 1,
    kTokenUnknown = 2,
    kTokenControl = 3,
    kTokenUserDefined = 4,
    kTokenUnused = 5,
    kTokenByte = 6,
};

// What a GGUF's tokenizer.ggml.* keys hold.
struct VocabData {
    std::string model;                 // tokenizer.ggml.model: "gpt2" or "llama"
    std::string pre;                   // tokenizer.ggml.pre, may be empty
    std::vector<std::string> tokens;   // tokenizer.ggml.tokens
    std::vector<float> scores;         // tokenizer.ggml.scores: llama only (empty -> all 0)
    std::vector<int32_t> token_types;  // tokenizer.ggml.token_type (empty -> all normal)
    std::vector<std::string> merges;   // tokenizer.ggml.merges: gpt2 only, "a b"
    int32_t bos = -1, eos = -1, unk = -1, pad = -1;  // tokenizer.ggml.{bos,eos,unknown,padding}_token_id
    bool add_bos = false;              // tokenizer.ggml.add_bos_token
    // llama only:
    std::string spm_algorithm;         // tokenizer.ggml.spm_algorithm: "bpe" (default when empty) or "unigram"
    bool add_space_prefix = true;      // tokenizer.ggml.add_space_prefix (SentencePiece add_dummy_prefix)
};

class Tokenizer {
  public:
    // Validates everything (token types, ids, merges, byte tokens...) and throws TokenizerError.
    static std::unique_ptr<Tokenizer> create(const VocabData& vocab);
    virtual ~Tokenizer();

    // Token ids of text (any bytes; invalid UTF-8 is kept, see bpe.cpp / spm.cpp). No BOS is added.
    // parse_special: also match control tokens (type 3) in the text; user-defined ones always match.
    virtual std::vector<int32_t> encode(const std::string& text, bool parse_special) const = 0;
    // Raw bytes of one token; throws TokenizerError naming the id when it is out of range.
    virtual std::string token_bytes(int32_t id) const = 0;
    // Concatenated token bytes (may be invalid UTF-8 at the edges).
    std::string decode(const std::vector<int32_t>& ids) const;

    int32_t n_vocab() const { return (int32_t)types_.size(); }
    int32_t bos() const { return bos_; }
    int32_t eos() const { return eos_; }
    bool add_bos() const { return add_bos_; }
    const std::string& model() const { return model_; }
    // false for unused/padding rows (type 5) and ids outside [0, n_vocab).
    bool is_sampleable(int32_t id) const {
        return id >= 0 && id < n_vocab() && types_[id] != kTokenUnused;
    }
    // Token type (1..6); throws TokenizerError on an out-of-range id.
    int32_t token_type(int32_t id) const;

  protected:
    explicit Tokenizer(const VocabData& vocab);  // checks the parts common to every model
    void check_id(int32_t id) const;

    std::string model_;
    std::vector<int32_t> types_;
    int32_t bos_, eos_, unk_, pad_;
    bool add_bos_;
};

// Per conversation: push ids, get text that never ends in half a UTF-8 character.
class StreamDecoder {
  public:
    explicit StreamDecoder(const Tokenizer& tok) : tok_(tok) {}
    // The complete UTF-8 text now available (maybe ""). Invalid bytes become U+FFFD as soon as they are
    // known to be invalid, so the concatenation of push() and flush() outputs equals
    // decode(ids) with invalid subparts replaced (Python: bytes.decode('utf-8', 'replace')).
    std::string push(int32_t id);
    // The held-back rest (an incomplete character becomes U+FFFD); the decoder is then empty.
    std::string flush();

  private:
    const Tokenizer& tok_;
    std::string pending_;  // at most 3 bytes of an incomplete character
};

}  // namespace tg
