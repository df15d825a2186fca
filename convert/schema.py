"""The GGUF contract between the converter and the engine: every tensor name and metadata key.

This is the one place defining them; the converter, the docs (docs/gguf-format.md) and the tests
read them from here. Shapes below are in PyTorch order ([rows, cols]); GGUF stores them reversed.
"""

# ---------------------------------------------------------------------------------------------------
# architectures and general keys (llama.cpp names)

ARCH_PHI2 = "phi2"
ARCH_TINYGPTV = "tinygptv"

GENERAL_ARCHITECTURE = "general.architecture"
GENERAL_NAME = "general.name"
GENERAL_FILE_TYPE = "general.file_type"              # u32, llama.cpp's LlamaFileType
GENERAL_QUANTIZATION_VERSION = "general.quantization_version"  # u32, 2

# llama.cpp LlamaFileType values for the types the converter writes itself
FILE_TYPE = {"f32": 0, "f16": 1, "bf16": 32, "q4_0": 2, "q4_1": 3, "q5_0": 8, "q5_1": 9, "q8_0": 7, "q4_k_s": 14,
             "q4_k_m": 15, "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18, "q2_k": 10, "q3_k_s": 11, "q3_k_m": 12, "q3_k_l": 13,
             "iq4_nl": 25, "iq4_xs": 30}
QUANTIZATION_VERSION = 2
OUTTYPES_DIRECT = ("f32", "f16", "bf16")             # written by the converter
OUTTYPES_QUANTIZED = ("q8_0", "q4_0", "q4_k_m", "q4_k_s", "q4_1", "q5_0", "q5_1", "q5_k_s", "q5_k_m", "q6_k",
                      "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "iq4_nl", "iq4_xs")  # f32 file first, then quantize_file()
OUTTYPES = OUTTYPES_DIRECT + OUTTYPES_QUANTIZED


# ---------------------------------------------------------------------------------------------------
# language model hyperparameters: prefix "{arch}." (phi2. or tinygptv.)

def lm_key(arch, name):
    return f"{arch}.{name}"


LM_CONTEXT_LENGTH = "context_length"                       # u32
LM_EMBEDDING_LENGTH = "embedding_length"                   # u32
LM_FEED_FORWARD_LENGTH = "feed_forward_length"             # u32
LM_BLOCK_COUNT = "block_count"                             # u32
LM_HEAD_COUNT = "attention.head_count"                     # u32
LM_HEAD_COUNT_KV = "attention.head_count_kv"               # u32
LM_ROPE_DIMENSION_COUNT = "rope.dimension_count"           # u32, rotary dims per head
LM_LAYER_NORM_EPS = "attention.layer_norm_epsilon"         # f32, input/final/q/k LayerNorm eps
LM_ROPE_FREQ_BASE = "rope.freq_base"                       # f32, default 10000
LM_LAYER_NORM_RMS_EPS = "attention.layer_norm_rms_epsilon" # f32, tinygptv only: post-attention RMSNorm


# ---------------------------------------------------------------------------------------------------
# language model tensors (llama.cpp phi2 names; TinyGPT-V additions marked)

TOKEN_EMBD = "token_embd.weight"        # [n_vocab, n_embd]
OUTPUT_NORM = "output_norm"             # .weight/.bias [n_embd], final LayerNorm
OUTPUT = "output"                       # .weight [n_vocab, n_embd], .bias [n_vocab]


def blk(i, name):
    """Language-model block tensor base name, e.g. blk(3, ATTN_QKV) -> 'blk.3.attn_qkv'."""
    return f"blk.{i}.{name}"


ATTN_NORM = "attn_norm"         # .weight/.bias [n_embd], input LayerNorm (feeds attention and MLP)
ATTN_QKV = "attn_qkv"           # .weight [3*n_embd, n_embd], .bias [3*n_embd]; rows [q(all heads); k; v]
ATTN_OUTPUT = "attn_output"     # .weight [n_embd, n_embd], .bias [n_embd]
FFN_UP = "ffn_up"               # .weight [n_ff, n_embd], .bias [n_ff]
FFN_DOWN = "ffn_down"           # .weight [n_embd, n_ff], .bias [n_embd]
ATTN_Q_NORM = "attn_q_norm"     # TinyGPT-V: .weight/.bias [head_dim], LayerNorm per head before RoPE
ATTN_K_NORM = "attn_k_norm"     # TinyGPT-V: .weight/.bias [head_dim]
ATTN_POST_NORM = "attn_post_norm"  # TinyGPT-V: .weight [n_embd], RMSNorm on the attention output


# ---------------------------------------------------------------------------------------------------
# vision tower (EVA ViT-g) tensors

V_PATCH_EMBD = "v.patch_embd"   # .weight [n_embd_v, 3*p*p] conv kernel flattened (c, ky, kx); .bias [n_embd_v]
V_CLS = "v.cls"                 # [n_embd_v]
V_POS_EMBD = "v.pos_embd"       # [1+N, n_embd_v], already interpolated to the model's image size
V_POST_LN = "v.post_ln"         # .weight/.bias [n_embd_v], ln_vision (eps 1e-5)


def vblk(i, name):
    return f"v.blk.{i}.{name}"


V_LN1 = "ln1"                   # .weight/.bias [n_embd_v]
V_ATTN_QKV = "attn_qkv"         # .weight [3*n_embd_v, n_embd_v]; .bias = cat(q_bias, 0, v_bias)
V_ATTN_OUT = "attn_out"         # .weight [n_embd_v, n_embd_v], .bias
V_LN2 = "ln2"                   # .weight/.bias [n_embd_v]
V_FFN_UP = "ffn_up"             # .weight [n_ff_v, n_embd_v], .bias [n_ff_v]
V_FFN_DOWN = "ffn_down"         # .weight [n_embd_v, n_ff_v], .bias [n_embd_v]


# ---------------------------------------------------------------------------------------------------
# Q-Former tensors

QF_QUERY = "qf.query"           # [n_query, n_embd_q]
QF_EMB_LN = "qf.emb_ln"         # .weight/.bias [n_embd_q]


def qfblk(i, name):
    return f"qf.blk.{i}.{name}"


QF_SELF = ("attn_q", "attn_k", "attn_v", "attn_out", "attn_ln")
QF_CROSS = ("cross_q", "cross_k", "cross_v", "cross_out", "cross_ln")  # cross_k/v: [n_embd_q, n_embd_v]
QF_FFN = ("ffn_up", "ffn_down", "ffn_ln")   # intermediate_query / output_query / output_query.LayerNorm


# ---------------------------------------------------------------------------------------------------
# projector

MM_0 = "mm.0"                   # llama_proj:  .weight [n_proj, n_embd_q], .bias [n_proj]
MM_1 = "mm.1"                   # llama_proj2: .weight [n_embd, n_proj], .bias [n_embd]


# tensors that stay F32 whatever --outtype says (besides every 1-D tensor)
KEEP_F32 = (V_CLS, V_POS_EMBD, QF_QUERY)


def keeps_f32(name, ndim):
    """1-D tensors and embeddings-that-are-added (cls, position, query) are always written F32."""
    return ndim < 2 or name in KEEP_F32


# ---------------------------------------------------------------------------------------------------
# TinyGPT-V metadata

T = ARCH_TINYGPTV
STAGE = f"{T}.stage"                                           # u32, 1..4

VISION_IMAGE_SIZE = f"{T}.vision.image_size"                   # u32
VISION_PATCH_SIZE = f"{T}.vision.patch_size"                   # u32
VISION_EMBEDDING_LENGTH = f"{T}.vision.embedding_length"       # u32
VISION_BLOCK_COUNT = f"{T}.vision.block_count"                 # u32 (blocks used, 39 for EVA ViT-g)
VISION_HEAD_COUNT = f"{T}.vision.attention.head_count"         # u32
VISION_FEED_FORWARD_LENGTH = f"{T}.vision.feed_forward_length" # u32
VISION_LAYER_NORM_EPS = f"{T}.vision.attention.layer_norm_epsilon"  # f32, 1e-6
VISION_POST_NORM_EPS = f"{T}.vision.post_norm_epsilon"         # f32, ln_vision, 1e-5

QFORMER_EMBEDDING_LENGTH = f"{T}.qformer.embedding_length"     # u32
QFORMER_BLOCK_COUNT = f"{T}.qformer.block_count"               # u32
QFORMER_HEAD_COUNT = f"{T}.qformer.attention.head_count"       # u32
QFORMER_FEED_FORWARD_LENGTH = f"{T}.qformer.feed_forward_length"  # u32
QFORMER_QUERY_COUNT = f"{T}.qformer.query_count"               # u32 = number of image tokens
QFORMER_CROSS_ATTENTION_FREQ = f"{T}.qformer.cross_attention_freq"  # u32, cross-attn on layers l % freq == 0
QFORMER_LAYER_NORM_EPS = f"{T}.qformer.layer_norm_epsilon"     # f32, 1e-12

IMAGE_MEAN = f"{T}.image.mean"                                 # f32[3]
IMAGE_STD = f"{T}.image.std"                                   # f32[3]

CHAT_TEMPLATE = f"{T}.chat.template"              # str: first turn, contains IMAGE_PLACEHOLDER and PROMPT_PLACEHOLDER
CHAT_SYSTEM = f"{T}.chat.system"                  # str: prepended once before the first turn (may be "")
CHAT_TURN_TEMPLATE = f"{T}.chat.turn_template"    # str: each later turn, contains PROMPT_PLACEHOLDER
CHAT_ANSWER_SUFFIX = f"{T}.chat.answer_suffix"    # str: appended after each answer kept in the history
CHAT_STOP_STRINGS = f"{T}.chat.stop_strings"      # str[]
CHAT_STOP_IDS = f"{T}.chat.stop_ids"              # i32[]
CHAT_TEMPERATURE = f"{T}.chat.temperature"        # f32
CHAT_TOP_P = f"{T}.chat.top_p"                    # f32
CHAT_REPETITION_PENALTY = f"{T}.chat.repetition_penalty"  # f32
CHAT_MAX_NEW_TOKENS = f"{T}.chat.max_new_tokens"  # u32

PROMPT_PLACEHOLDER = "{prompt}"     # replaced literally (str.replace, not str.format) by the user text
IMAGE_PLACEHOLDER = "<ImageHere>"   # where the image embeddings are spliced in

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

VISION_LN_EPS = 1e-6
VISION_POST_LN_EPS = 1e-5
QFORMER_LN_EPS = 1e-12
LM_RMS_EPS = 1e-6
VIT_HEAD_SIZE = 88
QFORMER_HEAD_SIZE = 64

# The prompt format and default generation settings of each stage's reference demo
# (stages 1-3: demo.py, CONV_VISION_Vicuna0; stage 4: demo_v2.py). A full first prompt is
# system + template; after an answer the history grows by answer + answer_suffix + turn_template.
STAGE123_CHAT = {
    "system": ("Give the following image: <Img>ImageContent</Img>. You will be able to see the image "
               "once I provide it to you. Please answer my questions."),
    "template": "###Human: <Img><ImageHere></Img> {prompt}###Assistant: ",
    "turn_template": "Human: {prompt}###Assistant: ",
    "answer_suffix": "###",
    "stop_strings": ["###"],
    "temperature": 1.0, "top_p": 0.9, "repetition_penalty": 1.05, "max_new_tokens": 300,
}
STAGE4_CHAT = {
    "system": "",
    "template": "<s>[INST] <Img><ImageHere></Img> {prompt} [/INST]",
    "turn_template": "<s>[INST] {prompt} [/INST]",
    "answer_suffix": "",
    "stop_strings": ["###"],
    "temperature": 0.6, "top_p": 0.9, "repetition_penalty": 1.05, "max_new_tokens": 500,
}


def chat_defaults(stage):
    return dict(STAGE4_CHAT if stage == 4 else STAGE123_CHAT)


# ---------------------------------------------------------------------------------------------------
# tokenizer (llama.cpp keys)

TOKENIZER_MODEL = "tokenizer.ggml.model"            # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
TOKENIZER_PRE = "tokenizer.ggml.pre"                # "phi-2" / "gpt-2" (gpt2 model only)
TOKENIZER_TOKENS = "tokenizer.ggml.tokens"          # str[n_vocab]
TOKENIZER_TOKEN_TYPE = "tokenizer.ggml.token_type"  # i32[n_vocab]
TOKENIZER_SCORES = "tokenizer.ggml.scores"          # f32[n_vocab] (llama model only)
TOKENIZER_MERGES = "tokenizer.ggml.merges"          # str[] "left right" (gpt2 model only)
TOKENIZER_BOS_ID = "tokenizer.ggml.bos_token_id"    # u32
TOKENIZER_EOS_ID = "tokenizer.ggml.eos_token_id"    # u32
TOKENIZER_UNK_ID = "tokenizer.ggml.unknown_token_id"  # u32
TOKENIZER_PAD_ID = "tokenizer.ggml.padding_token_id"  # u32
TOKENIZER_ADD_BOS = "tokenizer.ggml.add_bos_token"  # bool
TOKENIZER_ADD_EOS = "tokenizer.ggml.add_eos_token"  # bool
TOKENIZER_ADD_SPACE_PREFIX = "tokenizer.ggml.add_space_prefix"  # bool (llama model only)
TOKENIZER_SPM_ALGORITHM = "tokenizer.ggml.spm_algorithm"  # "bpe" | "unigram" (llama model only; ours)

TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

PAD_TOKEN_FORMAT = "[PAD{}]"      # padding rows up to the embedding rows, type TOKEN_UNUSED
PAD_TOKEN_SCORE = -1000.0         # their score in a SentencePiece vocabulary


def lm_tensor_names(n_layer, *, tinygptv=False):
    """Every language-model tensor name, in the order the converter writes them."""
    names = [TOKEN_EMBD]
    for i in range(n_layer):
        names += [blk(i, ATTN_NORM) + ".weight", blk(i, ATTN_NORM) + ".bias"]
        if tinygptv:
            names += [blk(i, ATTN_Q_NORM) + ".weight", blk(i, ATTN_Q_NORM) + ".bias",
                      blk(i, ATTN_K_NORM) + ".weight", blk(i, ATTN_K_NORM) + ".bias"]
        names += [blk(i, ATTN_QKV) + ".weight", blk(i, ATTN_QKV) + ".bias",
                  blk(i, ATTN_OUTPUT) + ".weight", blk(i, ATTN_OUTPUT) + ".bias"]
        if tinygptv:
            names += [blk(i, ATTN_POST_NORM) + ".weight"]
        names += [blk(i, FFN_UP) + ".weight", blk(i, FFN_UP) + ".bias",
                  blk(i, FFN_DOWN) + ".weight", blk(i, FFN_DOWN) + ".bias"]
    names += [OUTPUT_NORM + ".weight", OUTPUT_NORM + ".bias", OUTPUT + ".weight", OUTPUT + ".bias"]
    return names


def vision_tensor_names(n_layer):
    names = [V_PATCH_EMBD + ".weight", V_PATCH_EMBD + ".bias", V_CLS, V_POS_EMBD]
    for i in range(n_layer):
        for part in (V_LN1, V_ATTN_QKV, V_ATTN_OUT, V_LN2, V_FFN_UP, V_FFN_DOWN):
            names += [vblk(i, part) + ".weight", vblk(i, part) + ".bias"]
    names += [V_POST_LN + ".weight", V_POST_LN + ".bias"]
    return names


def qformer_tensor_names(n_layer, cross_attention_freq):
    names = [QF_QUERY, QF_EMB_LN + ".weight", QF_EMB_LN + ".bias"]
    for i in range(n_layer):
        parts = QF_SELF + (QF_CROSS if i % cross_attention_freq == 0 else ()) + QF_FFN
        for part in parts:
            names += [qfblk(i, part) + ".weight", qfblk(i, part) + ".bias"]
    return names


def projector_tensor_names():
    return [MM_0 + ".weight", MM_0 + ".bias", MM_1 + ".weight", MM_1 + ".bias"]
