// Reads a tokenizer description (tokenizer.ggml.* keys, as llama.cpp writes them) from a GGUF file.
#pragma once
#include "gguf.h"
#include "tokenizer/tokenizer.h"

namespace tg {

// Throws GGUFError on missing or wrong-typed keys; the Tokenizer validates the content.
VocabData read_vocab(const GGUFFile& f);

}  // namespace tg
