"""Writes a GGUF file through the `gguf` package: typed metadata, tensors produced one at a time,
a temporary name in the output directory, renamed only when complete."""

import contextlib
import os
import tempfile

import numpy as np

from . import ConvertError
from . import schema


class Metadata:
    """An ordered list of typed key/value pairs (empty strings are kept, unlike GGUFWriter.add_string)."""

    def __init__(self):
        self.items = {}

    def _put(self, key, value, vtype, sub_type=None):
        if key in self.items:
            raise ConvertError(f"metadata key {key!r} set twice")
        self.items[key] = (value, vtype, sub_type)

    def u32(self, key, value):
        import gguf
        value = int(value)
        if not 0 <= value < 2**32:
            raise ConvertError(f"metadata {key} = {value} does not fit in u32")
        self._put(key, value, gguf.GGUFValueType.UINT32)

    def f32(self, key, value):
        import gguf
        self._put(key, float(value), gguf.GGUFValueType.FLOAT32)

    def bool(self, key, value):
        import gguf
        self._put(key, bool(value), gguf.GGUFValueType.BOOL)

    def str(self, key, value):
        import gguf
        if not isinstance(value, str):
            raise ConvertError(f"metadata {key} must be a string, got {type(value).__name__}")
        self._put(key, value, gguf.GGUFValueType.STRING)

    def arr_str(self, key, values):
        import gguf
        if values:  # GGUF has no empty arrays: an absent key means "none"
            self._put(key, [str(v) for v in values], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING)

    def arr_i32(self, key, values):
        import gguf
        if len(values):
            self._put(key, [int(v) for v in values], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32)

    def arr_f32(self, key, values):
        import gguf
        if len(values):
            self._put(key, [float(v) for v in values], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.FLOAT32)

    def __contains__(self, key):
        return key in self.items

    def __getitem__(self, key):
        return self.items[key][0]


class Planned:
    """One output tensor: its GGUF name, its shape (PyTorch order) and a function producing its values."""

    __slots__ = ("name", "shape", "produce")

    def __init__(self, name, shape, produce):
        self.name = name
        self.shape = tuple(int(d) for d in shape)
        self.produce = produce

    def __repr__(self):
        return f"Planned({self.name!r}, {self.shape})"


def tensor_type(name, ndim, outtype):
    """The GGML type a tensor is written with for --outtype f32|f16|bf16."""
    import gguf
    if outtype == "f32" or schema.keeps_f32(name, ndim):
        return gguf.GGMLQuantizationType.F32
    if outtype == "f16":
        return gguf.GGMLQuantizationType.F16
    if outtype == "bf16":
        return gguf.GGMLQuantizationType.BF16
    raise ConvertError(f"unsupported output type {outtype!r} for direct writing (use one of {schema.OUTTYPES_DIRECT})")


def _encode(values, gtype):
    """float32 array -> array in the GGML type's storage (numpy dtype float32/float16/uint16)."""
    import gguf
    import torch
    if gtype == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(values, dtype=np.float32)
    if gtype == gguf.GGMLQuantizationType.F16:
        return np.ascontiguousarray(values.astype(np.float16))
    # bf16: round to nearest even, as torch and ggml do
    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(torch.bfloat16)
    return t.view(torch.int16).numpy().view(np.uint16)


def check_output_path(out_path):
    """Fails early (before any heavy loading) when the output cannot be written."""
    out_path = os.path.abspath(os.fspath(out_path))
    d = os.path.dirname(out_path)
    if not os.path.isdir(d):
        raise ConvertError(f"output directory does not exist: {d}")
    if not os.access(d, os.W_OK | os.X_OK):
        raise ConvertError(f"output directory is not writable: {d}")
    if os.path.isdir(out_path):
        raise ConvertError(f"output path is a directory: {out_path}")
    return out_path


def chmod_like_new_file(path):
    """Gives a file made by mkstemp (mode 0600) the mode open() would have given it: 0666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def atomic_output(out_path):
    """Yields a temporary path next to out_path; renames it to out_path on success, removes it on any
    failure (including KeyboardInterrupt)."""
    out_path = check_output_path(out_path)
    d, base = os.path.split(out_path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=d)
    except OSError as e:
        raise ConvertError(f"cannot create a file in {d}: {e}") from e
    os.close(fd)
    try:
        chmod_like_new_file(tmp)
        yield tmp
        os.replace(tmp, out_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_gguf(out_path, arch, meta, planned, outtype="f32", progress=True):
    """Writes `planned` tensors (list of Planned) and `meta` (Metadata) to out_path atomically.

    Each tensor is produced, converted and written one at a time, so memory stays near the size of
    the largest tensor. `general.architecture` comes from `arch`.
    """
    names = [p.name for p in planned]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConvertError(f"duplicate tensor names in the plan: {dup}")
    types = [tensor_type(p.name, len(p.shape), outtype) for p in planned]
    with atomic_output(out_path) as tmp:
        try:
            _write(tmp, arch, meta, planned, types, progress, os.path.basename(out_path))
        except OSError as e:   # disk full, I/O error: no partial file is left (atomic_output)
            raise ConvertError(f"writing {out_path} failed: {e.strerror or e}") from e


def _write(path, arch, meta, planned, types, progress, label):
    import gguf
    from tqdm import tqdm
    w = gguf.GGUFWriter(path, arch)
    try:
        for key, (value, vtype, sub_type) in meta.items.items():
            w.add_key_value(key, value, vtype, sub_type=sub_type)
        sizes = []
        for p, gtype in zip(planned, types):
            n = int(np.prod(p.shape, dtype=np.int64)) if p.shape else 1
            if gtype == gguf.GGMLQuantizationType.F32:
                store, esize = np.float32, 4
            else:
                store, esize = (np.float16 if gtype == gguf.GGMLQuantizationType.F16 else np.uint16), 2
            w.add_tensor_info(p.name, p.shape, np.dtype(store), n * esize, raw_dtype=gtype)
            sizes.append(n * esize)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        with tqdm(total=sum(sizes), unit="B", unit_scale=True, desc=f"writing {label}", disable=not progress,
                  leave=False) as bar:
            for p, gtype in zip(planned, types):
                values = _as_numpy_f32(p.produce())
                if tuple(values.shape) != p.shape:
                    raise ConvertError(f"tensor {p.name}: produced shape {tuple(values.shape)}, planned {p.shape}")
                data = _encode(values, gtype)
                w.write_tensor_data(data)
                bar.update(data.nbytes)
        w.flush()
        for f in w.fout or []:
            os.fsync(f.fileno())
    finally:
        w.close()


def _as_numpy_f32(values):
    import torch
    if isinstance(values, torch.Tensor):
        return values.detach().to(torch.float32).contiguous().numpy()
    return np.asarray(values, dtype=np.float32)


def write_with_outtype(out_path, arch, meta, planned, outtype, progress=True):
    """--outtype dispatch: f32/f16/bf16 written directly; quantized types written as F32 to a
    temporary file, then handed to quantize.quantize_file (the engine's quantizers)."""
    outtype = outtype.lower()
    if outtype not in schema.OUTTYPES:
        raise ConvertError(f"unknown --outtype {outtype!r}; expected one of {', '.join(schema.OUTTYPES)}")
    if outtype in schema.OUTTYPES_DIRECT:
        meta.u32(schema.GENERAL_FILE_TYPE, schema.FILE_TYPE[outtype])
        meta.u32(schema.GENERAL_QUANTIZATION_VERSION, schema.QUANTIZATION_VERSION)
        write_gguf(out_path, arch, meta, planned, outtype, progress)
        return
    try:
        from .quantize import quantize_file
    except ImportError as e:
        raise ConvertError(f"--outtype {outtype} needs the quantizer of the native core (tinygptv_native._core), "
                           f"which cannot be imported: {e}") from e
    out_path = check_output_path(out_path)
    meta.u32(schema.GENERAL_FILE_TYPE, schema.FILE_TYPE["f32"])
    meta.u32(schema.GENERAL_QUANTIZATION_VERSION, schema.QUANTIZATION_VERSION)
    d, base = os.path.split(out_path)
    fd, f32_tmp = tempfile.mkstemp(prefix=f".{base}.f32.", suffix=".gguf.tmp", dir=d)
    os.close(fd)
    try:
        write_gguf(f32_tmp, arch, meta, planned, "f32", progress)
        quantize_file(f32_tmp, out_path, outtype, progress=progress)
    finally:
        with contextlib.suppress(OSError):
            os.remove(f32_tmp)
