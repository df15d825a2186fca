"""Tokenizer files -> llama.cpp `tokenizer.ggml.*` metadata.

Two kinds are read:
- GPT-2 byte-level BPE ("gpt2"): vocab.json + merges.txt (+ added_tokens.json, tokenizer_config.json,
  special_tokens_map.json), or a `tokenizer.json` whose model is BPE.
- SentencePiece ("llama"): tokenizer.model (a ModelProto, parsed here without protobuf).

As llama.cpp does: normal tokens are stored in their byte-level (GPT-2) form; added tokens in their
raw text (e.g. Phi-2's "    "), typed USER_DEFINED (4) or CONTROL (3) when special; every id up to
the embedding rows that the tokenizer lacks becomes "[PAD{i}]" of type UNUSED (5).
"""

import json
import os
import re
import struct

from . import ConvertError
from . import schema


class Vocab:
    """Everything written under tokenizer.ggml.*."""

    def __init__(self, model):
        self.model = model            # "gpt2" | "llama"
        self.pre = None               # gpt2 only
        self.tokens = []
        self.types = []
        self.scores = None            # llama only
        self.merges = None            # gpt2 only
        self.bos = self.eos = self.unk = self.pad = None
        self.add_bos = False
        self.add_eos = None
        self.add_space_prefix = None  # llama only
        self.spm_algorithm = None     # llama only

    def token_id(self, text):
        """Id of the token whose text is `text` (for gpt2 vocabularies, written in plain text: it is
        looked up both as is and in its byte-level form, e.g. " ###" -> "\u0120###")."""
        for form in (text, gpt2_byte_level(text)) if self.model == "gpt2" else (text,):
            try:
                return self.tokens.index(form)
            except ValueError:
                pass
        return None

    def add_to(self, meta):
        meta.str(schema.TOKENIZER_MODEL, self.model)
        if self.pre:
            meta.str(schema.TOKENIZER_PRE, self.pre)
        meta.arr_str(schema.TOKENIZER_TOKENS, self.tokens)
        if self.scores is not None:
            meta.arr_f32(schema.TOKENIZER_SCORES, self.scores)
        meta.arr_i32(schema.TOKENIZER_TOKEN_TYPE, self.types)
        if self.merges:
            meta.arr_str(schema.TOKENIZER_MERGES, self.merges)
        for key, value in ((schema.TOKENIZER_BOS_ID, self.bos), (schema.TOKENIZER_EOS_ID, self.eos),
                           (schema.TOKENIZER_UNK_ID, self.unk), (schema.TOKENIZER_PAD_ID, self.pad)):
            if value is not None:
                meta.u32(key, value)
        meta.bool(schema.TOKENIZER_ADD_BOS, self.add_bos)
        if self.add_eos is not None:
            meta.bool(schema.TOKENIZER_ADD_EOS, self.add_eos)
        if self.add_space_prefix is not None:
            meta.bool(schema.TOKENIZER_ADD_SPACE_PREFIX, self.add_space_prefix)
        if self.spm_algorithm is not None:
            meta.str(schema.TOKENIZER_SPM_ALGORITHM, self.spm_algorithm)


def _gpt2_byte_map():
    """GPT-2's reversible byte -> printable character map (printable Latin-1 bytes map to themselves,
    the others to U+0100 onwards, in byte order)."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


_BYTE_MAP = _gpt2_byte_map()


def gpt2_byte_level(text):
    return "".join(_BYTE_MAP[b] for b in text.encode("utf-8"))


def _read_json(path):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"cannot read tokenizer file {path}: {e}") from e


def _token_text(v):
    """A special-token entry of tokenizer_config.json: a string, {"content": ...} or null."""
    if isinstance(v, dict):
        return v.get("content")
    return v if isinstance(v, str) else None


def _looks_special(text):
    return bool(re.fullmatch(r"<\|[^|]*\|>", text)) or text in ("<s>", "</s>", "<unk>", "<pad>", "<mask>")


def load_vocab(folder, n_vocab, pre="phi-2"):
    """Reads the tokenizer in `folder` and pads it to `n_vocab` (the embedding rows)."""
    p = lambda name: os.path.join(folder, name)  # noqa: E731
    if os.path.isfile(p("tokenizer.model")):
        v = _load_spm(p("tokenizer.model"), n_vocab)
    elif os.path.isfile(p("vocab.json")) and os.path.isfile(p("merges.txt")):
        v = _load_bpe_files(folder, n_vocab)
        v.pre = pre
    elif os.path.isfile(p("tokenizer.json")):
        v = _load_tokenizer_json(p("tokenizer.json"), folder, n_vocab)
        v.pre = pre
    else:
        raise ConvertError(f"no tokenizer in {folder}: expected vocab.json + merges.txt, tokenizer.json "
                           "or tokenizer.model")
    _apply_tokenizer_config(v, folder)
    return v


# ----------------------------------------------------------------------------------------- GPT-2 BPE

def _load_bpe_files(folder, n_vocab):
    vocab = _read_json(os.path.join(folder, "vocab.json"))
    if not isinstance(vocab, dict):
        raise ConvertError(f"{os.path.join(folder, 'vocab.json')}: expected a JSON object of token -> id")
    merges = []
    try:
        with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
            for n, line in enumerate(f):
                line = line.rstrip("\n").rstrip("\r")
                if (n == 0 and line.startswith("#version")) or not line:
                    continue
                if len(line.split(" ")) != 2:
                    raise ConvertError(f"merges.txt line {n + 1} is not 'left right': {line!r}")
                merges.append(line)
    except (OSError, UnicodeDecodeError) as e:
        raise ConvertError(f"cannot read {os.path.join(folder, 'merges.txt')}: {e}") from e
    added = {}
    if os.path.isfile(os.path.join(folder, "added_tokens.json")):
        added = _read_json(os.path.join(folder, "added_tokens.json"))
        if not isinstance(added, dict):
            raise ConvertError("added_tokens.json: expected a JSON object of token -> id")
    special = _special_from_configs(folder)
    return _build_bpe(vocab, merges, {t: (i, t in special) for t, i in added.items()}, special, n_vocab)


def _load_tokenizer_json(path, folder, n_vocab):
    tj = _read_json(path)
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise ConvertError(f"{path}: tokenizer model type {model.get('type')!r} is not supported here "
                           "(byte-level BPE expected; for SentencePiece give tokenizer.model)")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    special = _special_from_configs(folder)
    added = {}
    for a in tj.get("added_tokens", []):
        added[a["content"]] = (int(a["id"]), bool(a.get("special")) or a["content"] in special)
    return _build_bpe(dict(model.get("vocab", {})), merges, added, special, n_vocab)


def _special_from_configs(folder):
    """Token texts marked special in tokenizer_config.json / special_tokens_map.json."""
    special = set()
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        cfg = _read_json(path)
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            t = _token_text(cfg.get(key))
            if t:
                special.add(t)
        for entry in (cfg.get("added_tokens_decoder") or {}).values():
            if entry.get("special"):
                special.add(entry.get("content"))
    return special


def _build_bpe(vocab, merges, added, special, n_vocab):
    by_id = {}
    kinds = {}
    bad = []
    for text, i in vocab.items():
        if not isinstance(i, int) or i < 0:
            bad.append(f"{text!r} -> {i!r}")
            continue
        by_id.setdefault(i, text)
        kinds[i] = schema.TOKEN_CONTROL if (text in special or _looks_special(text)) else schema.TOKEN_NORMAL
    for text, (i, is_special) in added.items():
        if not isinstance(i, int) or i < 0:
            bad.append(f"{text!r} -> {i!r}")
            continue
        if i in by_id and by_id[i] != text:
            bad.append(f"id {i} is both {by_id[i]!r} and added token {text!r}")
            continue
        by_id[i] = text
        kinds[i] = schema.TOKEN_CONTROL if (is_special or _looks_special(text)) else schema.TOKEN_USER_DEFINED
    if bad:
        raise ConvertError(f"invalid tokenizer entries: {', '.join(bad[:10])}")
    too_big = sorted(i for i in by_id if i >= n_vocab)
    if too_big:
        raise ConvertError(f"tokenizer has ids up to {too_big[-1]} but the embedding has only {n_vocab} rows")
    v = Vocab("gpt2")
    for i in range(n_vocab):
        if i in by_id:
            v.tokens.append(by_id[i])
            v.types.append(kinds[i])
        else:
            v.tokens.append(schema.PAD_TOKEN_FORMAT.format(i))
            v.types.append(schema.TOKEN_UNUSED)
    v.merges = merges
    # defaults for a GPT-2 vocabulary: <|endoftext|> is bos, eos, unk and pad (Phi-2, CodeGen)
    eot = v.token_id("<|endoftext|>")
    v.bos = v.eos = v.unk = v.pad = eot
    return v


# ------------------------------------------------------------------------------------- SentencePiece

def _varint(buf, pos):
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ConvertError("tokenizer.model: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ConvertError("tokenizer.model: varint too long")


def _fields(buf):
    """Yields (field number, wire type, value) of a protobuf message (value: int, float bytes or bytes)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise ConvertError("tokenizer.model: truncated field")
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ConvertError(f"tokenizer.model: unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise ConvertError("tokenizer.model: truncated field")
        yield field, wire, value


# ModelProto: 1 pieces, 2 trainer_spec, 3 normalizer_spec. SentencePiece: 1 piece, 2 score, 3 type.
# TrainerSpec: 3 model_type (1 unigram, 2 bpe, 3 word, 4 char), 40 unk_id, 41 bos_id, 42 eos_id, 43 pad_id.
# NormalizerSpec: 3 add_dummy_prefix (default true).
_SPM_ALGORITHMS = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


def parse_spm_model(data):
    pieces = []
    trainer = {"model_type": 1}
    add_dummy_prefix = True
    for field, wire, value in _fields(data):
        if field == 1 and wire == 2:
            piece, score, ptype = "", 0.0, schema.TOKEN_NORMAL
            for f2, w2, v2 in _fields(value):
                if f2 == 1 and w2 == 2:
                    piece = v2.decode("utf-8")
                elif f2 == 2 and w2 == 5:
                    score = struct.unpack("<f", v2)[0]
                elif f2 == 3 and w2 == 0:
                    ptype = v2
            pieces.append((piece, score, ptype))
        elif field == 2 and wire == 2:
            for f2, w2, v2 in _fields(value):
                if w2 == 0 and f2 in (3, 40, 41, 42, 43):
                    trainer[{3: "model_type", 40: "unk_id", 41: "bos_id", 42: "eos_id", 43: "pad_id"}[f2]] = v2
        elif field == 3 and wire == 2:
            for f2, w2, v2 in _fields(value):
                if f2 == 3 and w2 == 0:
                    add_dummy_prefix = bool(v2)
    if not pieces:
        raise ConvertError("tokenizer.model holds no pieces (not a SentencePiece model?)")
    return pieces, trainer, add_dummy_prefix


def _signed(v):
    return v - (1 << 64) if v >= 1 << 63 else v


def _load_spm(path, n_vocab):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConvertError(f"cannot read {path}: {e}") from e
    pieces, trainer, add_dummy_prefix = parse_spm_model(data)
    if len(pieces) > n_vocab:
        raise ConvertError(f"{path}: {len(pieces)} pieces but the embedding has only {n_vocab} rows")
    if trainer["model_type"] not in (1, 2):
        raise ConvertError(f"{path}: SentencePiece model type {_SPM_ALGORITHMS.get(trainer['model_type'], trainer['model_type'])!r} "
                           "is not supported (bpe or unigram)")
    v = Vocab("llama")
    v.scores = []
    for piece, score, ptype in pieces:
        if ptype not in (1, 2, 3, 4, 5, 6):
            raise ConvertError(f"{path}: piece {piece!r} has unknown type {ptype}")
        v.tokens.append(piece)
        v.scores.append(score)
        v.types.append(ptype)   # SentencePiece's piece types equal llama.cpp's token types
    added_path = os.path.join(os.path.dirname(path), "added_tokens.json")
    if os.path.isfile(added_path):
        for text, i in sorted(_read_json(added_path).items(), key=lambda kv: kv[1]):
            if i < len(v.tokens):
                continue
            if i != len(v.tokens) or i >= n_vocab:
                raise ConvertError(f"added_tokens.json: token {text!r} has id {i}, expected {len(v.tokens)}")
            v.tokens.append(text)
            v.scores.append(-1000.0)
            v.types.append(schema.TOKEN_USER_DEFINED)
    for i in range(len(v.tokens), n_vocab):
        v.tokens.append(schema.PAD_TOKEN_FORMAT.format(i))
        v.scores.append(schema.PAD_TOKEN_SCORE)
        v.types.append(schema.TOKEN_UNUSED)
    ids = {k: _signed(trainer.get(k + "_id", d)) for k, d in (("unk", 0), ("bos", 1), ("eos", 2), ("pad", -1))}
    v.unk = ids["unk"] if 0 <= ids["unk"] < n_vocab else None
    v.bos = ids["bos"] if 0 <= ids["bos"] < n_vocab else None
    v.eos = ids["eos"] if 0 <= ids["eos"] < n_vocab else None
    v.pad = ids["pad"] if 0 <= ids["pad"] < n_vocab else None
    v.add_space_prefix = add_dummy_prefix
    v.spm_algorithm = _SPM_ALGORITHMS[trainer["model_type"]]
    return v


# ---------------------------------------------------------------------------------- shared configs

def _apply_tokenizer_config(v, folder):
    """bos/eos/unk/pad and add_bos/add_eos from tokenizer_config.json / special_tokens_map.json."""
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        cfg = _read_json(path)
        for key, attr in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unk"), ("pad_token", "pad")):
            text = _token_text(cfg.get(key))
            if text is None:
                continue
            i = v.token_id(text)
            if i is None:
                raise ConvertError(f"{path}: {key} {text!r} is not in the vocabulary")
            setattr(v, attr, i)
        if isinstance(cfg.get("add_bos_token"), bool):
            v.add_bos = cfg["add_bos_token"]
        if isinstance(cfg.get("add_eos_token"), bool):
            v.add_eos = cfg["add_eos_token"]
