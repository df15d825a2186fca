#include "tokenizer/tokenizer.h"

#include <climits>

#include "errors.h"
#include "tokenizer/internal.h"

namespace tg {

std::unique_ptr<Tokenizer> Tokenizer::create(const VocabData& vocab) {
    if (vocab.model == "gpt2") return make_bpe_tokenizer(vocab);
    if (vocab.model == "llama") return make_spm_tokenizer(vocab);
    throw TokenizerError(fmt("tokenizer.ggml.model: unsupported tokenizer model '%s' (expected 'gpt2' or 'llama')",
                             vocab.model.c_str()));
}

Tokenizer::~Tokenizer() = default;

Tokenizer::Tokenizer(const VocabData& v)
    : model_(v.model), bos_(v.bos), eos_(v.eos), unk_(v.unk), pad_(v.pad), add_bos_(v.add_bos) {
    const size_t n = v.tokens.size();
    if (n == 0) throw TokenizerError("tokenizer.ggml.tokens: the vocabulary is empty");
    if (n >= (size_t)INT32_MAX)
        throw TokenizerError(fmt("tokenizer.ggml.tokens: %zu tokens, more than an int32 id can index", n));
    if (!v.token_types.empty() && v.token_types.size() != n)
        throw TokenizerError(fmt("tokenizer.ggml.token_type: %zu entries for %zu tokens", v.token_types.size(), n));
    types_.assign(n, kTokenNormal);
    for (size_t i = 0; i < v.token_types.size(); ++i) {
        const int32_t t = v.token_types[i];
        if (t < kTokenNormal || t > kTokenByte)
            throw TokenizerError(fmt("tokenizer.ggml.token_type: token %zu has type %d (expected 1..6)", i, (int)t));
        types_[i] = t;
    }
    for (size_t i = 0; i < n; ++i) {
        const std::string& s = v.tokens[i];
        if (s.size() > kMaxTokenBytes)
            throw TokenizerError(fmt("tokenizer.ggml.tokens: token %zu is %zu bytes long (limit %zu)", i, s.size(),
                                     kMaxTokenBytes));
        if (s.empty() && types_[i] != kTokenUnused)
            throw TokenizerError(fmt("tokenizer.ggml.tokens: token %zu is empty", i));
    }
    const struct { const char* key; int32_t id; } special[] = {
        {"bos_token_id", v.bos}, {"eos_token_id", v.eos}, {"unknown_token_id", v.unk}, {"padding_token_id", v.pad}};
    for (const auto& s : special) {
        if (s.id < -1 || s.id >= (int64_t)n)
            throw TokenizerError(fmt("tokenizer.ggml.%s: id %d is outside the vocabulary of %zu tokens", s.key,
                                     (int)s.id, n));
    }
}

void Tokenizer::check_id(int32_t id) const {
    if (id < 0 || id >= n_vocab())
        throw TokenizerError(fmt("token id %d is outside the vocabulary [0, %d)", (int)id, (int)n_vocab()));
}

int32_t Tokenizer::token_type(int32_t id) const {
    check_id(id);
    return types_[id];
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
    std::string out;
    for (int32_t id : ids) out += token_bytes(id);
    return out;
}

}  // namespace tg
