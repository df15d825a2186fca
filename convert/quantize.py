"""Rewrite a GGUF file with quantized weights: quantize_file, behind `tinygptv quantize IN OUT TYPE`
(tinygptv_native/quantize.py) and the converter's quantized --outtypes (writer.py).

The bytes come from the engine's quantizers (tinygptv_native._core.quantize / dequantize; gguf-py
has none for the K-quants), the files are read and written with gguf-py.

The type is one of f16, q8_0, q4_0, q4_k_m, q4_k_s, q4_1, q5_0, q5_1, q5_k_s, q5_k_m, q6_k, q2_k,
q3_k_s, q3_k_m, q3_k_l, iq4_nl, iq4_xs. Which tensors change:

- 2-D tensors named ``*.weight`` are matrix weights and get the target type.
- 1-D tensors (norms, biases) are written as F32. Other tensors that are not ``*.weight``
  (v.cls, v.pos_embd, qf.query, ...) keep their type.
- A weight whose row length is not a multiple of the target's block size (32 for Q8_0/Q4_0,
  256 for the K-quants) keeps its float type (F16 stays F16, anything else becomes F32); for
  q4_k_m such a weight becomes Q8_0 when its rows are a multiple of 32.
- q4_0 follows llama.cpp's Q4_0 mix: Q4_0 everywhere but output.weight, which gets Q6_K (Q8_0 when
  its rows are not a multiple of 256); q8_0 and f16 are the plain type everywhere, as in llama.cpp.
- q4_k_m follows llama.cpp's Q4_K_M mix for the language model: output.weight Q6_K;
  token_embd.weight Q4_K; blk.N.ffn_down.weight Q6_K on the layers llama.cpp gives more bits
  (N < L/8, N >= 7L/8, or (N - L/8) % 3 == 2), Q4_K elsewhere. Phi-2 fuses Q, K and V into
  blk.N.attn_qkv, which llama.cpp counts as an attn_v tensor: Q6_K on the same "more bits" layers,
  Q4_K on the others. All other LM weights Q4_K.
  The vision tower, Q-Former and projector (v.*, qf.*, mm.*) are stored as Q8_0.
- q4_k_s, q4_1, q5_0, q5_1, q5_k_s, q5_k_m and q6_k follow llama.cpp's choice for phi2 (llama-quant.cpp,
  no importance matrix): every LM weight gets the base type (Q4_K, Q4_1, Q5_0, Q5_1, Q5_K, Q6_K) except
  output.weight, which gets Q6_K (Q8_0 when its rows are not a multiple of 256); q5_k_m also gives
  Q6_K to blk.N.attn_qkv and blk.N.ffn_down on the "more bits" layers (llama.cpp counts the fused
  attn_qkv as an attn_v tensor); q4_k_s gives Q5_K to blk.N.attn_qkv for N < 4 and to
  blk.N.ffn_down for N < L/8.
- q3_k_s, q3_k_m and q3_k_l follow llama.cpp's choice for phi2 in the same way (base type Q3_K,
  output.weight Q6_K): q3_k_m gives blk.N.attn_qkv Q5_K for N < 2 and Q4_K above, blk.N.ffn_down
  Q5_K for N < L/16 and Q4_K above, blk.N.attn_output Q4_K; q3_k_l gives those three Q5_K; q3_k_s
  keeps them Q3_K. q2_k (base type Q2_K, output.weight Q6_K) gives blk.N.attn_qkv, blk.N.ffn_down and
  blk.N.attn_output Q3_K (phi2 has no grouped-query attention, where llama.cpp would take Q4_K).
- Rows that are not a multiple of 256 fall back as llama.cpp does (Q2_K, Q3_K -> Q4_0, Q5_K -> Q5_1,
  Q6_K -> Q8_0); rows that are not a multiple of 32 keep their float type. The image
  path is stored as Q8_0, as for q4_k_m. Files quantized by llama.cpp's own quantizer in these mixes
  hold the same types and the same bytes (tests/test_llamacpp_interop.py).
- iq4_nl and iq4_xs follow llama.cpp's IQ4_NL / IQ4_XS mixes for phi2 (no importance matrix): the base
  type (IQ4_NL, IQ4_XS) everywhere in the language model except output.weight (Q6_K) and
  blk.N.ffn_down for N < L/8 (Q5_K: llama.cpp gives the first layers' down projections more bits
  when it has no importance matrix). Rows that are not a multiple of 256 fall back as llama.cpp
  does (IQ4_XS -> IQ4_NL, Q5_K -> Q5_1, Q6_K -> Q8_0); the image path is stored as Q8_0.
- --vision-type f16|q8_0|q4_0 (vision_type=) gives the weights of the vision tower, Q-Former and
  projector (v.*, qf.*, mm.*) that type instead, whatever type the language model gets: for
  example `q4_0 --vision-type f16` keeps the image path in half precision (slower to encode,
  closest to the float model) while the decoder is 4-bit.

All metadata is kept; general.file_type is set as llama.cpp does (1 F16, 7 Q8_0, 2 Q4_0,
15 Q4_K_M, 14 Q4_K_S, 3 Q4_1, 8 Q5_0, 9 Q5_1, 16 Q5_K_S, 17 Q5_K_M, 18 Q6_K, 10 Q2_K, 11 Q3_K_S,
12 Q3_K_M, 13 Q3_K_L, 25 IQ4_NL, 30 IQ4_XS) and general.quantization_version to 2
for quantized files. The output is written to
a temporary file next to the output and renamed when complete, so a failure leaves no output
behind (and an existing one untouched).
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Sequence

import numpy as np

from tinygptv_native import _core

from . import schema

TYPES = ("f16", "q8_0", "q4_0", "q4_k_m", "q4_k_s", "q4_1", "q5_0", "q5_1", "q5_k_s", "q5_k_m", "q6_k", "q2_k",
         "q3_k_s", "q3_k_m", "q3_k_l", "iq4_nl", "iq4_xs")
VISION_TYPES = ("f16", "q8_0", "q4_0")
_VISION_PREFIXES = ("v.", "qf.", "mm.")
FILE_TYPE = {t: schema.FILE_TYPE[t] for t in TYPES}  # llama.cpp's general.file_type
QUANTIZATION_VERSION = schema.QUANTIZATION_VERSION
_BLOCK = {"F32": 1, "F16": 1, "BF16": 1, "Q8_0": 32, "Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32,
          "Q2_K": 256, "Q3_K": 256, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256, "IQ4_NL": 32, "IQ4_XS": 256}
_BASE = {"q4_k_s": "Q4_K", "q4_1": "Q4_1", "q5_0": "Q5_0", "q5_1": "Q5_1", "q5_k_s": "Q5_K", "q5_k_m": "Q5_K", "q6_k": "Q6_K",
         "q2_k": "Q2_K", "q3_k_s": "Q3_K", "q3_k_m": "Q3_K", "q3_k_l": "Q3_K", "iq4_nl": "IQ4_NL", "iq4_xs": "IQ4_XS"}
_CHUNK_VALUES = 8 << 20  # float values dequantized/quantized per work item


class QuantizeError(ValueError):
    """The input cannot be quantized as asked (names the tensor, type or value at fault)."""


def _gguf():
    try:
        import gguf  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "tinygptv quantize needs the 'gguf' package: pip install 'tinygptv-native[convert]'") from e
    return gguf


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's rule for the layers that get more bits in the _M mixes."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


_BLK = re.compile(r"^blk\.(\d+)\.(.+)$")


def _layer_type(target: str, rest: str, i_layer: int, n_layers: int, want: str) -> str:
    """llama.cpp's per-layer choice for the mixes other than q4_k_m (rest: the name after blk.N.).
    llama.cpp counts phi2's fused attn_qkv as an attn_v tensor."""
    attn_v = rest in ("attn_qkv.weight", "attn_v.weight")
    if target == "q5_k_m":
        if (attn_v or rest == "ffn_down.weight") and use_more_bits(i_layer, n_layers):
            return "Q6_K"
    elif target == "q4_k_s":
        if (attn_v and i_layer < 4) or (rest == "ffn_down.weight" and i_layer < n_layers // 8):
            return "Q5_K"
    elif target in ("iq4_nl", "iq4_xs"):
        if rest == "ffn_down.weight" and i_layer < n_layers // 8:
            return "Q5_K"
    elif target == "q2_k":
        if attn_v or rest in ("ffn_down.weight", "attn_output.weight"):
            return "Q3_K"
    elif target == "q3_k_m":
        if attn_v:
            return "Q5_K" if i_layer < 2 else "Q4_K"
        if rest == "ffn_down.weight":
            return "Q5_K" if i_layer < n_layers // 16 else "Q4_K"
        if rest == "attn_output.weight":
            return "Q4_K"
    elif target == "q3_k_l":
        if attn_v or rest in ("ffn_down.weight", "attn_output.weight"):
            return "Q5_K"
    return want


def choose_type(name: str, ne: Sequence[int], in_type: str, target: str, n_layers: int,
                vision_type: Optional[str] = None) -> str:
    """Storage type of one tensor in the output. ne is the GGML shape (ne[0] = row length).
    vision_type, when given, is the target of the image path's weights (v.*, qf.*, mm.*)."""
    if vision_type is not None and name.startswith(_VISION_PREFIXES):
        target = vision_type
    dims = [d for d in ne]
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    float_keep = "F16" if in_type == "F16" else "F32"
    if len(dims) < 2:
        return "F32" if in_type in ("F32", "F16", "BF16", "F64") else in_type
    if not name.endswith(".weight"):
        return in_type
    row = dims[0]
    if target == "f16":
        return "F16"
    if target in ("q8_0", "q4_0"):
        want = target.upper()
        if target == "q4_0" and name == "output.weight":
            # llama.cpp's Q4_0 mix keeps the output head at Q6_K (Q8_0 when its rows are not a
            # multiple of 256): it is the tensor whose rounding the logits feel most
            want = "Q6_K" if row % 256 == 0 else "Q8_0"
        return want if row % _BLOCK[want] == 0 else float_keep
    # the mixes
    if name.startswith(_VISION_PREFIXES):
        return "Q8_0" if row % 32 == 0 else float_keep
    if target in _BASE:
        want = _BASE[target]
        m = _BLK.match(name)
        if name == "output.weight":
            want = "Q6_K"
        elif m:
            want = _layer_type(target, m.group(2), int(m.group(1)), n_layers, want)
        if row % _BLOCK[want] != 0:  # llama.cpp's fallbacks
            want = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
                    "IQ4_XS": "IQ4_NL"}.get(want, want)
        return want if row % _BLOCK[want] == 0 else float_keep
    # q4_k_m
    want = "Q4_K"
    if name == "output.weight":
        want = "Q6_K"
    else:
        m = _BLK.match(name)
        if m:
            i_layer, rest = int(m.group(1)), m.group(2)
            if rest in ("ffn_down.weight", "attn_qkv.weight", "attn_v.weight") and use_more_bits(i_layer, n_layers):
                want = "Q6_K"
    if row % 256 == 0:
        return want
    return "Q8_0" if row % 32 == 0 else float_keep


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.bar, self.enabled = max(total, 1), 0, None, enabled
        if not enabled:
            return
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc="quantize", file=sys.stderr)
        except ImportError:
            self.bar = None

    def update(self, n: int, label: str = "") -> None:
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            if label:
                self.bar.set_postfix_str(label, refresh=False)
        else:
            frac = self.done / self.total
            filled = int(frac * 30)
            sys.stderr.write(f"\rquantize [{'#' * filled}{'.' * (30 - filled)}] {frac * 100:5.1f}% {label[:40]:40s}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\n")


def _type_name(t) -> str:
    return t.name if hasattr(t, "name") else str(t)


def _rows_as_float(data: np.ndarray, in_type: str, ne0: int, r0: int, r1: int) -> np.ndarray:
    """Rows [r0, r1) of a tensor as float32 [rows, ne0]."""
    if in_type == "F32":
        return np.asarray(data, dtype=np.float32).reshape(-1, ne0)[r0:r1]
    if in_type == "F16":
        return np.asarray(data).view(np.float16).reshape(-1, ne0)[r0:r1].astype(np.float32)
    if in_type == "F64":
        return np.asarray(data).view(np.float64).reshape(-1, ne0)[r0:r1].astype(np.float32)
    if in_type in _BLOCK:
        raw = np.asarray(data).view(np.uint8).reshape(-1)
        rb = _row_bytes(in_type, ne0)
        return _core.dequantize(in_type, raw[r0 * rb:r1 * rb], (r1 - r0, ne0))
    raise QuantizeError(f"cannot read tensor data of type {in_type}")


def _row_bytes(t: str, n: int) -> int:
    sizes = {"F32": (1, 4), "F16": (1, 2), "BF16": (1, 2), "F64": (1, 8), "Q8_0": (32, 34), "Q4_0": (32, 18),
             "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176),
             "Q6_K": (256, 210), "IQ4_NL": (32, 18), "IQ4_XS": (256, 136)}
    blk, nb = sizes[t]
    return n // blk * nb


def _convert(data: np.ndarray, in_type: str, out_type: str, ne0: int, n_rows: int, pool: ThreadPoolExecutor,
             on_chunk: Callable[[int], None]) -> np.ndarray:
    """Whole tensor converted to out_type, as a flat uint8 array (or float32 for F32)."""
    rb = _row_bytes(out_type, ne0)
    out = np.empty(n_rows * rb, dtype=np.uint8)
    step = max(1, _CHUNK_VALUES // max(ne0, 1))

    def work(r0: int) -> int:
        r1 = min(n_rows, r0 + step)
        x = _rows_as_float(data, in_type, ne0, r0, r1)
        out[r0 * rb:r1 * rb] = _core.quantize(out_type, np.ascontiguousarray(x, dtype=np.float32)).reshape(-1)
        return (r1 - r0) * rb

    for nbytes in pool.map(work, range(0, n_rows, step)):
        on_chunk(nbytes)
    return out


def quantize_file(in_path: str, out_path: str, type: str, progress: bool = True, n_threads: Optional[int] = None,
                  vision_type: Optional[str] = None) -> dict:
    """Write `out_path`, a copy of the GGUF file `in_path` with weights stored as `type`
    (one of TYPES); `vision_type` (f16, q8_0 or q4_0) overrides it for the image
    path's weights (v.*, qf.*, mm.*). Returns {tensor name: output type name}."""
    target = str(type).lower()
    if target not in TYPES:
        raise QuantizeError(f"unknown quantization type {type!r} (expected one of {', '.join(TYPES)})")
    if vision_type is not None:
        vision_type = str(vision_type).lower()
        if vision_type not in VISION_TYPES:
            raise QuantizeError(f"unknown vision type {vision_type!r} (expected one of {', '.join(VISION_TYPES)})")
    in_path, out_path = os.fspath(in_path), os.fspath(out_path)
    if os.path.isdir(in_path):
        raise QuantizeError(f"input '{in_path}' is a directory, not a GGUF file")
    if not os.path.isfile(in_path):
        raise FileNotFoundError(f"input file not found: {in_path}")
    out_dir = os.path.dirname(os.path.abspath(out_path)) or "."
    if not os.path.isdir(out_dir):
        raise QuantizeError(f"output folder does not exist: {os.path.dirname(out_path) or out_dir}")
    if os.path.isdir(out_path):
        raise QuantizeError(f"output '{out_path}' is a directory")
    # the engine's own reader first: it names what is wrong with a damaged file (truncated, bad offsets)
    try:
        _core.GGUFReader(in_path)
    except _core.GGUFError as e:
        raise _core.GGUFError(f"cannot read GGUF file {in_path}: {e}") from None
    _gguf()
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

    try:
        reader = GGUFReader(in_path, "r")
    except Exception as e:
        raise _core.GGUFError(f"cannot read GGUF file {in_path}: {e}") from e

    arch_field = reader.fields.get("general.architecture")
    if arch_field is None:
        raise _core.GGUFError(f"{in_path}: missing general.architecture")
    arch = arch_field.contents()
    n_layers = 0
    bc = reader.fields.get(f"{arch}.block_count")
    if bc is not None:
        n_layers = int(bc.contents())
    else:
        for t in reader.tensors:
            m = _BLK.match(t.name)
            if m:
                n_layers = max(n_layers, int(m.group(1)) + 1)

    plan = []
    for t in reader.tensors:
        in_type = _type_name(t.tensor_type)
        ne = [int(d) for d in t.shape]
        out_type = choose_type(t.name, ne, in_type, target, n_layers, vision_type)
        if out_type != in_type and in_type not in _BLOCK and in_type != "F64":
            raise QuantizeError(f"tensor {t.name}: cannot convert type {in_type} to {out_type}")
        n_rows = int(np.prod(ne[1:])) if len(ne) > 1 else 1
        plan.append((t, in_type, out_type, ne, n_rows))

    try:
        fd, tmp = tempfile.mkstemp(prefix=".quantize-", suffix=".gguf.tmp", dir=out_dir)
    except OSError as e:
        raise QuantizeError(f"cannot create a file in {out_dir}: {e.strerror or e}") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    bar = None
    try:
        writer = GGUFWriter(tmp, arch)
        for name, field in reader.fields.items():
            if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type",
                                                    "general.quantization_version"):
                continue
            vtype = field.types[0]
            sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
            if vtype == GGUFValueType.ARRAY and len(field.types) > 2:
                raise QuantizeError(f"metadata {name}: nested arrays are not supported")
            writer.add_key_value(name, field.contents(), vtype, sub_type=sub)
            if name == "general.alignment":
                writer.data_alignment = int(field.contents())
        writer.add_key_value("general.file_type", FILE_TYPE[target], GGUFValueType.UINT32)
        if any(p[2].startswith("Q") for p in plan):
            writer.add_key_value("general.quantization_version", QUANTIZATION_VERSION, GGUFValueType.UINT32)
        total = 0
        for t, in_type, out_type, ne, n_rows in plan:
            qt = GGMLQuantizationType[out_type]
            nbytes = n_rows * _row_bytes(out_type, ne[0]) if out_type in _BLOCK or out_type == "F64" else int(t.n_bytes)
            if out_type == in_type:
                nbytes = int(t.n_bytes)
            total += nbytes
            writer.add_tensor_info(t.name, list(reversed(ne)), np.dtype(np.float32), nbytes, raw_dtype=qt)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        bar = _Progress(total, progress)
        threads = n_threads or os.cpu_count() or 1
        result = {}
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for t, in_type, out_type, ne, n_rows in plan:
                if out_type == in_type:
                    data = np.asarray(t.data).view(np.uint8).reshape(-1)
                    bar.update(data.size, t.name)
                else:
                    data = _convert(t.data, in_type, out_type, ne[0], n_rows, pool, lambda n: bar.update(n, t.name))
                writer.write_tensor_data(data)
                result[t.name] = out_type
        writer.close()
        bar.close()
        bar = None
        os.replace(tmp, out_path)
        return result
    except BaseException:
        if bar is not None:
            bar.close()
        try:
            writer.close()  # type: ignore[possibly-undefined]
        except Exception:
            pass
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
