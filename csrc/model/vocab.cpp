#include "model/vocab.h"

#include "errors.h"

namespace tg {

VocabData read_vocab(const GGUFFile& f) {
    VocabData v;
    v.model = f.get_str("tokenizer.ggml.model");
    v.pre = f.get_str_or("tokenizer.ggml.pre", "");
    v.tokens = f.get_str_arr("tokenizer.ggml.tokens");
    if (f.has("tokenizer.ggml.scores")) v.scores = f.get_f32_arr("tokenizer.ggml.scores");
    if (f.has("tokenizer.ggml.token_type")) v.token_types = f.get_i32_arr("tokenizer.ggml.token_type");
    if (f.has("tokenizer.ggml.merges")) v.merges = f.get_str_arr("tokenizer.ggml.merges");
    v.bos = f.get_i32_or("tokenizer.ggml.bos_token_id", -1);
    v.eos = f.get_i32_or("tokenizer.ggml.eos_token_id", -1);
    v.unk = f.get_i32_or("tokenizer.ggml.unknown_token_id", -1);
    v.pad = f.get_i32_or("tokenizer.ggml.padding_token_id", -1);
    v.add_bos = f.get_bool_or("tokenizer.ggml.add_bos_token", false);
    v.spm_algorithm = f.get_str_or("tokenizer.ggml.spm_algorithm", "");
    v.add_space_prefix = f.get_bool_or("tokenizer.ggml.add_space_prefix", true);
    return v;
}

}  // namespace tg
