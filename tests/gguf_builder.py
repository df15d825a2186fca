"""A tiny raw GGUF v3 writer for tests, written with `struct` only.

It is independent of the engine and of gguf-py so it can write every malformed file the tests need:
each field of the file is emitted under a name, and a `mutate(name, value)` hook may replace the value
(keeping the field's binary format) or return raw `bytes` that are written instead of the field.

Field names:
    magic, version, n_tensors, n_kv
    kv[i].key_len, kv[i].key, kv[i].type, kv[i].value            (scalars and strings)
    kv[i].value.len                                               (string values)
    kv[i].elem_type, kv[i].count, kv[i].elems                     (arrays; elems is the raw body)
    ti[j].name_len, ti[j].name, ti[j].n_dims, ti[j].ne[d], ti[j].type, ti[j].offset
    pad                     (raw padding bytes between the tensor infos and the data section)
    data[j], data_pad[j]    (raw tensor bytes and the padding after them)
    tail                    (raw bytes appended at the end, empty by default)

Shapes are given GGUF-style: ne[0] is the contiguous dimension (a numpy array of shape (rows, cols)
has ne = [cols, rows]).
"""
from __future__ import annotations

import struct

import numpy as np

# GGUF metadata value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_SCALAR_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
               BOOL: "<B", U64: "<Q", I64: "<q", F64: "<d"}

# GGML tensor types: id -> (elements per block, bytes per block)
GT_F32, GT_F16, GT_Q4_0, GT_Q4_1, GT_Q8_0, GT_I8, GT_I32, GT_I64, GT_BF16 = 0, 1, 2, 3, 8, 24, 26, 27, 30
BLOCK = {GT_F32: (1, 4), GT_F16: (1, 2), GT_Q4_0: (32, 18), GT_Q4_1: (32, 20), GT_Q8_0: (32, 34),
         GT_I8: (1, 1), GT_I32: (1, 4), GT_I64: (1, 8), GT_BF16: (1, 2)}


def nbytes_of(gtype: int, ne) -> int:
    blk, bb = BLOCK[gtype]
    n = 1
    for d in ne:
        n *= d
    return n // blk * bb


def set_fields(**overrides):
    """A mutate hook replacing the named fields: set_fields(n_kv=2**64-1, **{"ti[0].offset": 5})."""
    def mutate(name, value):
        return overrides.get(name, value)
    return mutate


class GGUFBuilder:
    def __init__(self, alignment: int | None = None):
        self.kvs: list[tuple[str | bytes, int, object, int | None]] = []
        self.tensors: list[dict] = []
        self.alignment = alignment if alignment is not None else 32
        if alignment is not None:
            self.kv("general.alignment", U32, alignment)

    # ---- content -------------------------------------------------------------------------------
    def kv(self, key, vtype: int, value, elem_type: int | None = None):
        """Adds (or replaces) a key. Arrays: vtype=ARRAY, elem_type given, value a list.
        Nested arrays: elem_type=ARRAY and value a list of (elem_type, list) pairs."""
        self.kvs = [e for e in self.kvs if e[0] != key]
        self.kvs.append((key, vtype, value, elem_type))
        return self

    def add_kv(self, key, vtype: int, value, elem_type: int | None = None):
        """Appends a key even if it already exists (for duplicate-key files)."""
        self.kvs.append((key, vtype, value, elem_type))
        return self

    def drop_kv(self, key):
        self.kvs = [e for e in self.kvs if e[0] != key]
        return self

    def get_kv(self, key):
        for k, t, v, et in self.kvs:
            if k == key:
                return v
        raise KeyError(key)

    def tensor(self, name, ne, gtype: int, data: bytes):
        self.tensors = [t for t in self.tensors if t["name"] != name]
        self.tensors.append({"name": name, "ne": list(ne), "type": gtype, "data": bytes(data)})
        return self

    def tensor_np(self, name, arr: np.ndarray, gtype: int = GT_F32):
        """Adds a numpy array as F32/F16/BF16 (ne reversed from the numpy shape)."""
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if gtype == GT_F32:
            raw = arr.tobytes()
        elif gtype == GT_F16:
            raw = arr.astype(np.float16).tobytes()
        elif gtype == GT_BF16:
            raw = (arr.view(np.uint32) >> 16).astype(np.uint16).tobytes()  # truncation is fine for tests
        else:
            raise ValueError(f"tensor_np does not encode type {gtype}")
        return self.tensor(name, list(reversed(arr.shape)), gtype, raw)

    def drop_tensor(self, name):
        self.tensors = [t for t in self.tensors if t["name"] != name]
        return self

    # ---- serialisation -------------------------------------------------------------------------
    def build(self, mutate=None) -> bytes:
        mutate = mutate or (lambda name, value: value)
        out = bytearray()

        def field(name, fmt, value):
            v = mutate(name, value)
            if isinstance(v, (bytes, bytearray)) and fmt is not None:
                out.extend(v)
            elif fmt is None:
                out.extend(v)
            else:
                out.extend(struct.pack(fmt, v))

        def value_body(vtype, value, elem_type):
            body = bytearray()
            if vtype == STRING:
                b = value.encode("utf-8") if isinstance(value, str) else bytes(value)
                body += struct.pack("<Q", len(b)) + b
            elif vtype == ARRAY:
                body += struct.pack("<I", elem_type) + struct.pack("<Q", len(value))
                for e in value:
                    if elem_type == ARRAY:
                        body += value_body(ARRAY, e[1], e[0])
                    else:
                        body += value_body(elem_type, e, None)
            else:
                body += struct.pack(_SCALAR_FMT[vtype], value)
            return bytes(body)

        field("magic", None, b"GGUF")
        field("version", "<I", 3)
        field("n_tensors", "<Q", len(self.tensors))
        field("n_kv", "<Q", len(self.kvs))
        for i, (key, vtype, value, elem_type) in enumerate(self.kvs):
            p = f"kv[{i}]"
            kb = key.encode("utf-8") if isinstance(key, str) else bytes(key)
            field(p + ".key_len", "<Q", len(kb))
            field(p + ".key", None, kb)
            field(p + ".type", "<I", vtype)
            if vtype == ARRAY:
                field(p + ".elem_type", "<I", elem_type)
                field(p + ".count", "<Q", len(value))
                body = b"".join(value_body(ARRAY, e[1], e[0]) if elem_type == ARRAY
                                else value_body(elem_type, e, None) for e in value)
                field(p + ".elems", None, body)
            elif vtype == STRING:
                b = value.encode("utf-8") if isinstance(value, str) else bytes(value)
                field(p + ".value.len", "<Q", len(b))
                field(p + ".value", None, b)
            elif vtype in _SCALAR_FMT:
                field(p + ".value", _SCALAR_FMT[vtype], value)
            else:  # an invalid type id: the value bytes are whatever the test supplies
                field(p + ".value", None, value if isinstance(value, (bytes, bytearray)) else b"")

        offset = 0
        offsets = []
        for j, t in enumerate(self.tensors):
            offsets.append(offset)
            offset += _pad(len(t["data"]), self.alignment)
        for j, t in enumerate(self.tensors):
            p = f"ti[{j}]"
            nb = t["name"].encode("utf-8") if isinstance(t["name"], str) else bytes(t["name"])
            field(p + ".name_len", "<Q", len(nb))
            field(p + ".name", None, nb)
            field(p + ".n_dims", "<I", len(t["ne"]))
            for d, ne in enumerate(t["ne"]):
                field(f"{p}.ne[{d}]", "<Q", ne)
            field(p + ".type", "<I", t["type"])
            field(p + ".offset", "<Q", offsets[j])
        field("pad", None, b"\0" * (_pad(len(out), self.alignment) - len(out)) if self.tensors else b"")
        for j, t in enumerate(self.tensors):
            field(f"data[{j}]", None, t["data"])
            field(f"data_pad[{j}]", None, b"\0" * (_pad(len(t["data"]), self.alignment) - len(t["data"])))
        field("tail", None, b"")
        return bytes(out)

    def write(self, path, mutate=None) -> str:
        data = self.build(mutate)
        with open(path, "wb") as f:
            f.write(data)
        return str(path)


def _pad(n: int, a: int) -> int:
    return (n + a - 1) // a * a


# ---- a small but complete Phi-2 file --------------------------------------------------------------

def _byte_tokens():
    """GPT-2's byte-to-unicode table: the 256 single-byte tokens of a byte-level BPE vocabulary."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def phi2_builder(n_vocab=260, n_embd=32, n_head=4, n_head_kv=None, n_layer=2, n_ff=64, n_ctx=64, n_rot=4,
                 dtype=GT_F32, seed=0, alignment=None, fused=True, scale=0.2) -> GGUFBuilder:
    """A random-weight Phi-2 model in llama.cpp's layout (phi2.* keys, llama.cpp tensor names) with a
    small byte-level BPE vocabulary padded to n_vocab rows."""
    rng = np.random.default_rng(seed)
    b = GGUFBuilder(alignment=alignment)
    b.kv("general.architecture", STRING, "phi2")
    b.kv("general.name", STRING, "tiny-phi2-test")
    b.kv("phi2.context_length", U32, n_ctx)
    b.kv("phi2.embedding_length", U32, n_embd)
    b.kv("phi2.feed_forward_length", U32, n_ff)
    b.kv("phi2.block_count", U32, n_layer)
    b.kv("phi2.attention.head_count", U32, n_head)
    b.kv("phi2.attention.head_count_kv", U32, n_head_kv or n_head)
    b.kv("phi2.rope.dimension_count", U32, n_rot)
    b.kv("phi2.attention.layer_norm_epsilon", F32, 1e-5)
    tokens = _byte_tokens() + ["Ġt", "he", "<|endoftext|>"]
    assert n_vocab >= len(tokens)
    types = [1] * 258 + [3]
    tokens += [f"[PAD{i}]" for i in range(len(tokens), n_vocab)]
    types += [5] * (n_vocab - len(types))
    b.kv("tokenizer.ggml.model", STRING, "gpt2")
    b.kv("tokenizer.ggml.pre", STRING, "phi-2")
    b.kv("tokenizer.ggml.tokens", ARRAY, tokens, STRING)
    b.kv("tokenizer.ggml.token_type", ARRAY, types, I32)
    b.kv("tokenizer.ggml.merges", ARRAY, ["Ġ t", "h e"], STRING)
    b.kv("tokenizer.ggml.bos_token_id", U32, 258)
    b.kv("tokenizer.ggml.eos_token_id", U32, 258)
    kv = (n_head_kv or n_head) * (n_embd // n_head)

    def w(*shape):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def vec_dtype():  # llama.cpp keeps 1-D tensors in F32
        return GT_F32

    b.tensor_np("token_embd.weight", w(n_vocab, n_embd), dtype)
    for i in range(n_layer):
        p = f"blk.{i}."
        b.tensor_np(p + "attn_norm.weight", 1 + w(n_embd), vec_dtype())
        b.tensor_np(p + "attn_norm.bias", w(n_embd), vec_dtype())
        if fused:
            b.tensor_np(p + "attn_qkv.weight", w(n_embd + 2 * kv, n_embd), dtype)
            b.tensor_np(p + "attn_qkv.bias", w(n_embd + 2 * kv), vec_dtype())
        else:
            b.tensor_np(p + "attn_q.weight", w(n_embd, n_embd), dtype)
            b.tensor_np(p + "attn_q.bias", w(n_embd), vec_dtype())
            b.tensor_np(p + "attn_k.weight", w(kv, n_embd), dtype)
            b.tensor_np(p + "attn_k.bias", w(kv), vec_dtype())
            b.tensor_np(p + "attn_v.weight", w(kv, n_embd), dtype)
            b.tensor_np(p + "attn_v.bias", w(kv), vec_dtype())
        b.tensor_np(p + "attn_output.weight", w(n_embd, n_embd), dtype)
        b.tensor_np(p + "attn_output.bias", w(n_embd), vec_dtype())
        b.tensor_np(p + "ffn_up.weight", w(n_ff, n_embd), dtype)
        b.tensor_np(p + "ffn_up.bias", w(n_ff), vec_dtype())
        b.tensor_np(p + "ffn_down.weight", w(n_embd, n_ff), dtype)
        b.tensor_np(p + "ffn_down.bias", w(n_embd), vec_dtype())
    b.tensor_np("output_norm.weight", 1 + w(n_embd), vec_dtype())
    b.tensor_np("output_norm.bias", w(n_embd), vec_dtype())
    b.tensor_np("output.weight", w(n_vocab, n_embd), dtype)
    b.tensor_np("output.bias", w(n_vocab), vec_dtype())
    return b


def q8_0_bytes(values: np.ndarray, scales=None) -> bytes:
    """Q8_0 blocks (fp16 d + 32 int8) for values (length multiple of 32); `scales` overrides d per block."""
    values = np.asarray(values, dtype=np.float32).reshape(-1, 32)
    out = bytearray()
    for i, blk in enumerate(values):
        d = float(np.abs(blk).max()) / 127.0
        q = np.zeros(32, np.int8) if d == 0 else np.clip(np.round(blk / d), -127, 127).astype(np.int8)
        dd = np.float16(d if scales is None else scales[i])
        out += dd.tobytes() + q.tobytes()
    return bytes(out)


def q4_0_bytes(values: np.ndarray, scales=None) -> bytes:
    """Q4_0 blocks (fp16 d + 16 bytes of nibbles) for values (length multiple of 32)."""
    values = np.asarray(values, dtype=np.float32).reshape(-1, 32)
    out = bytearray()
    for i, blk in enumerate(values):
        m = blk[np.argmax(np.abs(blk))]
        d = m / -8.0
        q = np.zeros(32, np.uint8) if d == 0 else np.clip(np.floor(blk / d + 8.5), 0, 15).astype(np.uint8)
        dd = np.float16(d if scales is None else scales[i])
        out += dd.tobytes() + (q[:16] | (q[16:] << 4)).astype(np.uint8).tobytes()
    return bytes(out)
