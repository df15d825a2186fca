"""Native tokenizers against independent references.

GPT-2 byte-level BPE (+ Phi-2's added tokens): HF `tokenizers` built from the same vocab.json/merges.txt,
llama.cpp's GPT-2 test vectors, and known ids. SentencePiece: the `sentencepiece` library on models trained
here on a generated corpus (BPE and unigram).
"""
import json
import os
import random
import unicodedata

import pytest

from tinygptv_native import TokenizerError, _core

DATA = os.path.join(os.path.dirname(__file__), "data")
GPT2 = os.path.join(DATA, "gpt2")
N_PHI2_ROWS = 51200


def load_gpt2_files():
    with open(os.path.join(GPT2, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(GPT2, "added_tokens.json"), encoding="utf-8") as f:
        added = json.load(f)
    with open(os.path.join(GPT2, "merges.txt"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [ln for ln in lines if ln and not ln.startswith("#version")]
    return vocab, added, merges


def gguf_like_vocab(phi2: bool):
    """What a GGUF converter writes: tokens by id, types, merges (llama.cpp conventions)."""
    vocab, added, merges = load_gpt2_files()
    if not phi2:
        added = {"<|endoftext|>": 50256}
    n = max(max(vocab.values()), max(added.values())) + 1
    tokens, types = [None] * n, [1] * n
    for t, i in vocab.items():
        tokens[i] = t
    for t, i in added.items():
        tokens[i] = t
        types[i] = 3 if t == "<|endoftext|>" else 4
    assert None not in tokens
    if phi2:
        tokens += ["[PAD%d]" % i for i in range(n, N_PHI2_ROWS)]
        types += [5] * (N_PHI2_ROWS - n)
    return dict(model="gpt2", pre="phi-2" if phi2 else "gpt-2", tokens=tokens, token_types=types, merges=merges,
                bos=50256, eos=50256, unk=50256)


@pytest.fixture(scope="module")
def phi2():
    return _core.Tokenizer(**gguf_like_vocab(True))


@pytest.fixture(scope="module")
def gpt2():
    return _core.Tokenizer(**gguf_like_vocab(False))


def hf_reference(phi2: bool, encode_special: bool):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import AddedToken, models, pre_tokenizers

    vocab, added, merges = load_gpt2_files()
    ref = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges]))
    ref.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    ref.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    if phi2:
        for t, i in sorted(added.items(), key=lambda kv: kv[1]):
            if t != "<|endoftext|>":
                ref.add_tokens([AddedToken(t, normalized=True)])
                assert ref.token_to_id(t) == i
    ref.encode_special_tokens = encode_special  # True: <|endoftext|> in text is not matched
    return ref


# ---------------------------------------------------------------- generated strings

SCRIPT_SAMPLES = [
    "hello", "World", "don't", "I'M", "we'Ve", "they'll", "she'd", "it's", "'s", "'re", "''", "naïve", "café",
    "Füße", "Ελληνικά", "русский", "Български", "עברית", "العربية", "हिन्दी", "ภาษาไทย", "ខ្មែរ", "日本語",
    "中文字符", "한국어", "ｆｕｌｌｗｉｄｔｈ", "１２３", "٣٤٥", "Ⅻ", "½", "²³", "🦙", "😶‍🌫️", "👍🏽", "🇫🇷", "✅",
    "e\u0301", "\u200b", "\u00ad", "def f(x):", "return x**2", "if (a && b) {", "}", "#include <stdio.h>",
    "0.23.3", "3333333", "1,000,000", "$5.99", "!!!", "...", "«quote»", "—", "~", "<|endoftext|>", "<|endo",
    "\x00", "\x1c", "\x1f", "\x7f", "\u0085", "\u00a0", "\u1680", "\u2028", "\u2029", "\u202f", "\u3000",
    # assigned in Unicode 15.0-16.0 (letters and numbers for HF's Oniguruma 16.0 tables, unassigned in 14.0)
    # ("X's" splits as X + 's only when X is a letter or number, else as X' + s)
    "\U0001E030's", "\U00011F04's", "\U0001D2C0's", "\u1c89's", "\U00010D50's", "\U00031350's",
    # assigned after 16.0: still "other" for both
    "\u0558's", "\uA7CE's",
]
SPACES = [" ", "  ", "   ", "    ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n", "\n ", "\n    ", "\t \t",
          " " * 17, " " * 40, "\u00a0 ", " \u3000", "\x0b", "\x0c"]


def assigned_chars():
    out = []
    for cp in range(0x20, 0x30000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        if unicodedata.category(chr(cp)) in ("Cn", "Co", "Cs"):
            continue
        out.append(chr(cp))
    return out


def random_strings(n, seed):
    rng = random.Random(seed)
    chars = assigned_chars()
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            if r < 0.35:
                parts.append(rng.choice(SCRIPT_SAMPLES))
            elif r < 0.6:
                parts.append(rng.choice(SPACES))
            elif r < 0.8:
                parts.append("".join(rng.choice(chars) for _ in range(rng.randint(1, 6))))
            elif r < 0.9:
                parts.append("".join(rng.choice("abcXYZ019'.,;-_ \t\n") for _ in range(rng.randint(1, 12))))
            else:
                parts.append(str(rng.randint(0, 10 ** rng.randint(1, 12))))
        out.append("".join(parts))
    return out


# ---------------------------------------------------------------- GPT-2 / Phi-2

def test_known_ids(phi2, gpt2):
    for tok in (phi2, gpt2):
        assert tok.encode("Hello world") == [15496, 995]
        assert tok.encode("###") == [21017]
        assert tok.encode("") == []
        assert tok.encode("<|endoftext|>", parse_special=True) == [50256]
        assert tok.encode("<|endoftext|>") == [27, 91, 437, 1659, 5239, 91, 29]
    assert phi2.encode("\n    return") == [198, 50284, 7783]
    assert gpt2.encode("\n    return") == [198, 220, 220, 220, 1441]
    assert phi2.n_vocab == N_PHI2_ROWS and gpt2.n_vocab == 50257
    assert phi2.bos == 50256 and phi2.eos == 50256
    assert phi2.token_type(50256) == 3 and phi2.token_type(50284) == 4 and phi2.token_type(50295) == 5
    assert phi2.is_sampleable(50294) and not phi2.is_sampleable(50295) and not phi2.is_sampleable(51199)
    assert not phi2.is_sampleable(-1) and not phi2.is_sampleable(N_PHI2_ROWS)
    assert phi2.token_bytes(50284) == b"    " and phi2.token_bytes(198) == b"\n"
    assert phi2.token_bytes(50256) == b"<|endoftext|>"


def test_llama_cpp_vectors(gpt2):
    d = os.path.join(DATA, "llama.cpp-gpt2-vectors")
    with open(os.path.join(d, "ggml-vocab-gpt-2.gguf.inp"), encoding="utf-8") as f:
        texts = f.read().split("\n__ggml_vocab_test__\n")[:-1]
    with open(os.path.join(d, "ggml-vocab-gpt-2.gguf.out"), encoding="utf-8") as f:
        outs = f.read().split("\n")[:-1]
    assert len(texts) == len(outs) == 46
    for text, line in zip(texts, outs):
        expected = [int(x) for x in line.split()]
        assert gpt2.encode(text) == expected, repr(text)


@pytest.mark.parametrize("phi2_added", [True, False])
@pytest.mark.parametrize("parse_special", [True, False])
def test_matches_hf_tokenizers(phi2, gpt2, phi2_added, parse_special):
    tok = phi2 if phi2_added else gpt2
    ref = hf_reference(phi2_added, encode_special=not parse_special)
    texts = random_strings(1500, seed=1 + 2 * phi2_added + parse_special)
    texts += SCRIPT_SAMPLES + SPACES + [a + b + c for a in SPACES for b in ("x", "1", "!", "\n") for c in SPACES]
    bad = []
    for s in texts:
        got, want = tok.encode(s, parse_special=parse_special), ref.encode(s).ids
        if got != want:
            bad.append((s, got, want))
    assert not bad, "%d of %d differ, first: %r" % (len(bad), len(texts), bad[:3])


def test_roundtrip_and_stream(phi2):
    texts = random_strings(800, seed=7) + SCRIPT_SAMPLES + ["", " ", "\n" * 50]
    for s in texts:
        ids = phi2.encode(s)
        data = phi2.decode(ids)
        assert data == s.encode("utf-8"), repr(s)
        assert b"".join(phi2.token_bytes(i) for i in ids) == data
        dec = _core.StreamDecoder(phi2)
        pieces = [dec.push(i) for i in ids] + [dec.flush()]
        assert "".join(pieces) == s
        # never half a character: every piece is a whole str already, and encodes back to a prefix
        pos = 0
        for p in pieces:
            b = p.encode("utf-8")
            assert data[pos:pos + len(b)] == b
            pos += len(b)


def test_stream_decoder_invalid_bytes(gpt2):
    # byte tokens spelling invalid / truncated UTF-8: output equals Python's 'replace' decoding
    rng = random.Random(3)
    byte_ids = [gpt2.encode_bytes(bytes([b]))[0] for b in range(256)]
    for b in range(256):
        assert gpt2.token_bytes(byte_ids[b]) == bytes([b])
    for _ in range(300):
        seq = bytes(rng.choice([rng.randrange(256), rng.choice(b"\xc3\xa9\xe2\x82\xac\xf0\x9f\xa6\x99")])
                    for _ in range(rng.randint(0, 12)))
        ids = [byte_ids[b] for b in seq]
        dec = _core.StreamDecoder(gpt2)
        out = "".join(dec.push(i) for i in ids) + dec.flush()
        assert out == seq.decode("utf-8", "replace"), seq
    dec = _core.StreamDecoder(gpt2)
    assert dec.push(byte_ids[0xF0]) == "" and dec.push(byte_ids[0x9F]) == "" and dec.push(byte_ids[0xA6]) == ""
    assert dec.push(byte_ids[0x99]) == "🦙"
    assert dec.push(byte_ids[0xE2]) == "" and dec.flush() == "\ufffd" and dec.flush() == ""


def test_encode_bytes_invalid_utf8(phi2):
    rng = random.Random(5)
    for _ in range(300):
        b = bytes(rng.randrange(256) for _ in range(rng.randint(0, 30)))
        ids = phi2.encode_bytes(b)
        assert phi2.decode(ids) == b
    # valid UTF-8 through bytes gives the same ids as through str
    for s in SCRIPT_SAMPLES:
        assert phi2.encode_bytes(s.encode("utf-8")) == phi2.encode(s)
    with pytest.raises(UnicodeEncodeError):
        phi2.encode("\ud800")


def test_long_inputs_are_linear(phi2):
    # would take minutes with quadratic BPE or pre-tokenization; here well under a second each
    for s in (" " * 200_000, "a" * 200_000, "\n" * 100_000 + "x", "🦙" * 50_000, "1" * 100_000,
              ("word " * 40_000), "\t" * 100_000):
        ids = phi2.encode(s)
        assert phi2.decode(ids) == s.encode("utf-8")
    ref = hf_reference(True, encode_special=False)
    for s in ("  " * 3000 + "x", "ab" * 5000, "x\n" + " " * 1001 + "y"):
        assert phi2.encode(s) == ref.encode(s).ids


def test_bad_ids_and_vocab(phi2):
    with pytest.raises(TokenizerError, match="51200"):
        phi2.decode([1, 51200])
    with pytest.raises(TokenizerError, match="-5"):
        phi2.token_bytes(-5)
    with pytest.raises(TokenizerError, match="-1"):
        _core.StreamDecoder(phi2).push(-1)
    with pytest.raises(TypeError):
        phi2.decode([1 << 40])
    v = gguf_like_vocab(False)
    with pytest.raises(TokenizerError, match="bert"):
        _core.Tokenizer(**dict(v, model="bert"))
    with pytest.raises(TokenizerError, match="llama3"):
        _core.Tokenizer(**dict(v, pre="llama3"))
    with pytest.raises(TokenizerError, match="token_type"):
        _core.Tokenizer(**dict(v, token_types=v["token_types"][:-1]))
    with pytest.raises(TokenizerError, match="type 9"):
        _core.Tokenizer(**dict(v, token_types=[9] + v["token_types"][1:]))
    with pytest.raises(TokenizerError, match="merge 3"):
        _core.Tokenizer(**dict(v, merges=v["merges"][:3] + ["nospace"] + v["merges"][4:]))
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        _core.Tokenizer(**dict(v, merges=["zzqq xxyy"]))
    with pytest.raises(TokenizerError, match="eos_token_id: id 99999"):
        _core.Tokenizer(**dict(v, eos=99999))
    with pytest.raises(TokenizerError, match="duplicates"):
        _core.Tokenizer(**dict(v, tokens=v["tokens"][:-2] + [v["tokens"][0], v["tokens"][-1]]))
    with pytest.raises(TokenizerError, match="byte 0x"):
        _core.Tokenizer(**dict(v, tokens=["x" + t for t in v["tokens"]], merges=[]))
    with pytest.raises(TokenizerError, match="empty"):
        _core.Tokenizer(model="gpt2", tokens=[])


def test_concurrent_encode(phi2):
    from concurrent.futures import ThreadPoolExecutor

    texts = random_strings(200, seed=11)
    want = [phi2.encode(s) for s in texts]
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(phi2.encode, texts * 4))
    assert got == want * 4


# ---------------------------------------------------------------- SentencePiece

USER_SYMBOLS = ["<sep>", "@@"]
CONTROL_SYMBOLS = ["<ctl>"]


def spm_corpus(rng):
    words = ["the", "cat", "sat", "on", "mat", "image", "describe", "photo", "red", "blue", "car", "tree",
             "what", "is", "in", "this", "picture", "a", "an", "of", "and", "with", "dog", "running", "über",
             "naïve", "日本", "数字", "12", "345", "-", "--", "---", "==", "=", "..", "don't", "it's", "hello", "world", "Hello", "World"]
    syl = ["ka", "to", "mi", "re", "su", "lan", "der", "ing", "ö", "qu", "ax", "el", "on", "tr", "sch", "ß"]
    words = words + ["".join(rng.choice(syl) for _ in range(rng.randint(1, 4))) for _ in range(400)]
    lines = []
    for _ in range(3000):
        ws = [rng.choice(words) for _ in range(rng.randint(3, 14))]
        sep = rng.choice([" ", " ", " ", "  ", ", ", ". "])
        lines.append(sep.join(ws) + rng.choice(["", ".", "?", "!"]))
    return lines


def train_spm(tmp_path_factory, model_type, byte_fallback=True, add_dummy_prefix=True, vocab_size=400):
    spm = pytest.importorskip("sentencepiece")
    rng = random.Random(42)
    d = tmp_path_factory.mktemp("spm_%s_%d_%d" % (model_type, byte_fallback, add_dummy_prefix))
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join(spm_corpus(rng)) + "\n", encoding="utf-8")
    prefix = str(d / "m")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=prefix, vocab_size=vocab_size, model_type=model_type,
        byte_fallback=byte_fallback, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=add_dummy_prefix, user_defined_symbols=USER_SYMBOLS, control_symbols=CONTROL_SYMBOLS,
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2, num_threads=1)
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        tokens.append(piece)
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(2)
        elif sp.is_control(i):
            types.append(3)
        elif sp.is_unused(i):
            types.append(5)
        elif sp.is_byte(i):
            types.append(6)
        elif piece in USER_SYMBOLS:
            types.append(4)
        else:
            types.append(1)
    tok = _core.Tokenizer(model="llama", tokens=tokens, scores=scores, token_types=types, bos=sp.bos_id(),
                          eos=sp.eos_id(), unk=sp.unk_id(), add_bos=True, spm_algorithm=model_type,
                          add_space_prefix=add_dummy_prefix)
    return sp, tok


def spm_texts(n, seed):
    rng = random.Random(seed)
    base = spm_corpus(random.Random(seed + 100))
    extra = ["", " ", "  ", "\t", "\n", " hello", "hello ", "a  b", "<sep>", "x<sep>y", "@@@", "<ctl>", "<s>",
             "</s>", "<unk>", "<0x41>", "🦙 llama", "ÄÖÜ", "Ω", "\u00a0", "tab\there", "line\nbreak", "12345678",
             "▁", "▁▁x", "don't", "日本語の文字", "-----", "------", "=====", "......", "@@@@@", "aaaaaaa"]
    chars = assigned_chars()
    out = list(extra)
    for _ in range(n):
        r = rng.random()
        if r < 0.4:
            out.append(rng.choice(base))
        elif r < 0.7:
            s = rng.choice(base)
            k = rng.randint(0, len(s))
            out.append(s[:k] + rng.choice(extra + ["".join(rng.choice(chars) for _ in range(3))]) + s[k:])
        else:
            out.append("".join(rng.choice(extra + ["the", "cat", " ", "  ", "e", "ö", "数"]) for _ in range(rng.randint(1, 8))))
    return out


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
@pytest.mark.parametrize("byte_fallback,add_dummy_prefix", [(True, True), (False, True), (True, False)])
def test_sentencepiece_matches_library(tmp_path_factory, model_type, byte_fallback, add_dummy_prefix):
    sp, tok = train_spm(tmp_path_factory, model_type, byte_fallback, add_dummy_prefix)
    assert tok.n_vocab == sp.get_piece_size()
    texts = spm_texts(2000, seed=(model_type == "bpe") * 4 + byte_fallback * 2 + add_dummy_prefix)
    bad = []
    for s in texts:
        got, want = tok.encode(s), sp.encode(s)
        if got != want:
            bad.append((s, got, want))
    assert not bad, "%d of %d differ, first: %r" % (len(bad), len(texts), bad[:3])
    if byte_fallback:
        prefix = " " if add_dummy_prefix else ""
        for s in texts:
            # a literal "▁" in the text reads back as a space, as in sentencepiece
            want = ((prefix + s) if s else "").replace("\u2581", " ")
            assert tok.decode(tok.encode(s)) == want.encode("utf-8"), repr(s)


def test_sentencepiece_details(tmp_path_factory):
    sp, tok = train_spm(tmp_path_factory, "bpe")
    ctl = sp.piece_to_id("<ctl>")
    # control tokens only with parse_special; each fragment gets its own space prefix (as llama.cpp)
    assert ctl not in tok.encode("a<ctl>b")
    assert tok.encode("a<ctl>b", parse_special=True) == sp.encode("a") + [ctl] + sp.encode("b")
    assert tok.encode("<ctl>", parse_special=True) == [ctl]
    # invalid UTF-8 falls back to byte tokens, losslessly
    b = b"ab\xff\xc3(c\xe2\x82"
    ids = tok.encode_bytes(b)
    assert tok.decode(ids) == b" " + b
    assert tok.token_bytes(sp.unk_id()) == " \u2047 ".encode("utf-8")
    assert tok.add_bos and tok.bos == sp.bos_id()
    for n in (50_000,):
        s = "the cat " * n
        assert tok.encode(s) == sp.encode(s)
    _, utok = train_spm(tmp_path_factory, "unigram")
    s = "日本 cat" * 20_000
    assert utok.decode(utok.encode(s)) == (" " + s).encode("utf-8")


def test_sentencepiece_bad_vocab():
    base = dict(model="llama", tokens=["<unk>", "a", "b"], token_types=[2, 1, 1], scores=[0.0, -1.0, -2.0])
    tok = _core.Tokenizer(**base)
    assert tok.encode("ab c") == [0, 1, 2, 0]  # no byte fallback: "▁", then "▁c" as one unknown
    with pytest.raises(TokenizerError, match="spm_algorithm"):
        _core.Tokenizer(**dict(base, spm_algorithm="wordpiece"))
    with pytest.raises(TokenizerError, match="scores"):
        _core.Tokenizer(**dict(base, scores=[0.0]))
    with pytest.raises(TokenizerError, match="unknown"):
        _core.Tokenizer(**dict(base, token_types=[1, 1, 1]))
    with pytest.raises(TokenizerError, match="<0xZZ>"):
        _core.Tokenizer(**dict(base, tokens=["<unk>", "<0xZZ>", "b"], token_types=[2, 6, 1]))
    with pytest.raises(TokenizerError, match="byte fallback needs all 256"):
        _core.Tokenizer(**dict(base, tokens=["<unk>", "<0x41>", "b"], token_types=[2, 6, 1]))
    with pytest.raises(TokenizerError, match="score"):
        _core.Tokenizer(**dict(base, scores=[0.0, float("nan"), 1.0]))


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num, wire, payload):
    key = _varint((num << 3) | wire)
    if wire == 0:
        return key + _varint(payload)
    if wire == 5:
        import struct
        return key + struct.pack("<f", payload)
    return key + _varint(len(payload)) + payload


def spm_model_proto(pieces, model_type, add_dummy_prefix=True):
    """A sentencepiece ModelProto written by hand: pieces = [(piece, score, type)]."""
    body = b""
    for piece, score, typ in pieces:
        body += _field(1, 2, _field(1, 2, piece.encode("utf-8")) + _field(2, 5, score) + _field(3, 0, typ))
    trainer = _field(3, 0, {"unigram": 1, "bpe": 2}[model_type])
    normalizer = (_field(1, 2, b"identity") + _field(3, 0, int(add_dummy_prefix)) + _field(4, 0, 0)
                  + _field(5, 0, 1))
    return body + _field(2, 2, trainer) + _field(3, 2, normalizer)


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_exact_score_ties(model_type):
    """Vocabularies whose segmentations tie exactly: the tie-breaking must be the library's."""
    spm = pytest.importorskip("sentencepiece")
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3), ("@@", 0.0, 4), ("▁", -1.0, 1),
              ("-", -1.0, 1), ("--", -2.0, 1), ("---", -3.0, 1), ("a", -1.0, 1), ("b", -1.0, 1),
              ("ab", -2.0, 1), ("ba", -2.0, 1), ("aba", -3.0, 1), ("▁a", -2.0, 1), ("@", -0.5, 1),
              ("x", -2.0, 1), ("xx", -2.0, 1), ("xxx", -2.0, 1)]
    sp = spm.SentencePieceProcessor(model_proto=spm_model_proto(pieces, model_type))
    tok = _core.Tokenizer(model="llama", tokens=[p[0] for p in pieces], scores=[p[1] for p in pieces],
                          token_types=[p[2] for p in pieces], unk=0, spm_algorithm=model_type)
    rng = random.Random(9)
    texts = ["-" * n for n in range(1, 13)] + ["@" * n for n in range(1, 8)] + ["x" * n for n in range(1, 10)]
    texts += ["".join(rng.choice(["-", "a", "b", "@", " ", "x", "ab", "--", "c"]) for _ in range(rng.randint(1, 12)))
              for _ in range(3000)]
    bad = [(s, tok.encode(s), sp.encode(s)) for s in texts if tok.encode(s) != sp.encode(s)]
    assert not bad, "%d of %d differ, first: %r" % (len(bad), len(texts), bad[:3])


def test_unicode_table_is_current():
    """The committed class table is what tools/gen_unicode_tables.py makes (Unicode 16.0, HF's version)."""
    import subprocess
    import sys

    ud2 = pytest.importorskip("unicodedata2")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "csrc", "tokenizer", "unicode_tables.cpp")
    with open(path, encoding="utf-8") as f:
        committed = f.read()
    assert "Unicode 16.0.0." in committed.split("\n", 1)[0]
    if ud2.unidata_version != "16.0.0":
        pytest.skip("unicodedata2 %s installed; the table is made with 16.0.0" % ud2.unidata_version)
    out = subprocess.run([sys.executable, os.path.join(root, "tools", "gen_unicode_tables.py")],
                         capture_output=True, text=True, check=True).stdout
    assert out == committed


def test_objects_keep_their_tokenizer_alive():
    import gc

    tok = _core.Tokenizer(**gguf_like_vocab(False))
    dec = _core.StreamDecoder(tok)
    sampler = _core.Sampler(tok, temperature=0.0)
    ids = tok.encode("naïve café")
    del tok
    gc.collect()
    assert "".join(dec.push(i) for i in ids) + dec.flush() == "naïve café"
    import numpy as np
    assert sampler.sample(np.arange(50257, dtype=np.float32), []) == 50256


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_unused_pieces(model_type):
    """Unused pieces (type 5) are never emitted: BPE merges through them and splits them back."""
    spm = pytest.importorskip("sentencepiece")
    pieces = [("<unk>", 0.0, 2), ("▁", -1.0, 1), ("a", -1.0, 1), ("b", -1.5, 1), ("c", -2.0, 1),
              ("ab", -0.5, 5), ("abc", -1.0, 1), ("bc", -2.5, 1), ("▁a", -3.0, 1), ("ca", -1.2, 5)]
    sp = spm.SentencePieceProcessor(model_proto=spm_model_proto(pieces, model_type))
    tok = _core.Tokenizer(model="llama", tokens=[p[0] for p in pieces], scores=[p[1] for p in pieces],
                          token_types=[p[2] for p in pieces], spm_algorithm=model_type)
    rng = random.Random(13)
    texts = ["".join(rng.choice("abc ") for _ in range(rng.randint(1, 14))) for _ in range(2000)]
    bad = [(s, tok.encode(s), sp.encode(s)) for s in texts if tok.encode(s) != sp.encode(s)]
    assert not bad, "%d of %d differ, first: %r" % (len(bad), len(texts), bad[:3])
    assert all(tok.token_type(i) != 5 for s in texts for i in tok.encode(s))
