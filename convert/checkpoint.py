"""Reading checkpoints safely: `.pth`/`.bin` only through torch.load(weights_only=True), safetensors
through safe_open, sharded folders through their index. Every failure is a ConvertError naming the file."""

import json
import os
import pickle

from . import ConvertError


def require_file(path, what):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConvertError(f"{what} not found: {path}")
    if not os.path.isfile(path):
        raise ConvertError(f"{what} is not a file: {path}")
    return path


def torch_load(path, what="checkpoint"):
    """torch.load(..., weights_only=True) with clear errors; memory-maps zip checkpoints when it can."""
    import torch
    path = require_file(path, what)
    if os.path.getsize(path) == 0:
        raise ConvertError(f"{what} {path} is empty")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):   # legacy (non-zip) files cannot be memory-mapped
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        glob = next((ln for ln in lines if "Unsupported global" in ln), None)
        if glob is not None:
            detail = glob.split("Unsupported global:", 1)[1].split(" was not", 1)[0].strip()
            raise ConvertError(f"refusing to load {what} {path}: unpickling it would call {detail}, which a "
                               "weights-only checkpoint never does") from None
        detail = next((ln for ln in lines if ln.startswith("Unsupported") or "load key" in ln), lines[-1] if lines else "")
        raise ConvertError(f"refusing to load {what} {path}: it is not a weights-only PyTorch checkpoint "
                           f"({detail})") from None
    except Exception as e:  # torch.load raises many types on damaged input (EOFError, KeyError, RuntimeError...)
        text = str(e).strip().splitlines()
        raise ConvertError(f"cannot read {what} {path}: truncated or corrupt file ({type(e).__name__}: "
                           f"{text[0] if text else 'no detail'})") from None


class TensorStore:
    """Lazily loaded named tensors: shapes without loading, values on demand (as torch tensors)."""

    def __init__(self, source):
        self.source = source
        self._shapes = {}
        self._where = {}       # name -> loader key
        self._loaders = {}     # loader key -> callable(name) -> tensor

    def keys(self):
        return self._shapes.keys()

    def __contains__(self, name):
        return name in self._shapes

    def shape(self, name):
        return self._shapes[name]

    def get(self, name):
        return self._loaders[self._where[name]](name)

    def add_dict(self, key, tensors):
        import torch
        for name, t in tensors.items():
            if isinstance(t, torch.Tensor):
                self._shapes[name] = tuple(t.shape)
                self._where[name] = key
        self._loaders[key] = tensors.__getitem__

    def add_safetensors(self, path):
        from safetensors import safe_open
        try:
            f = safe_open(path, framework="pt")
            names = list(f.keys())
            shapes = {n: tuple(f.get_slice(n).get_shape()) for n in names}
        except Exception as e:  # safetensors raises its own error types
            raise ConvertError(f"cannot read safetensors file {path}: {e}") from None
        for n in names:
            self._shapes[n] = shapes[n]
            self._where[n] = path
        self._loaders[path] = f.get_tensor


def _flat_state_dict(obj, path):
    import torch
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConvertError(f"{path} is not a state dict of tensors")
    return obj


def open_hf_weights(folder):
    """The weights of a Hugging Face model folder: model.safetensors, model.safetensors.index.json,
    pytorch_model.bin or pytorch_model.bin.index.json (safetensors preferred)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ConvertError(f"model folder not found: {folder}")
    store = TensorStore(folder)
    j = lambda n: os.path.join(folder, n)  # noqa: E731
    if os.path.isfile(j("model.safetensors")):
        store.add_safetensors(j("model.safetensors"))
    elif os.path.isfile(j("model.safetensors.index.json")):
        for shard in _shards(j("model.safetensors.index.json")):
            store.add_safetensors(require_file(j(shard), "safetensors shard"))
    elif os.path.isfile(j("pytorch_model.bin")):
        store.add_dict(j("pytorch_model.bin"), _flat_state_dict(torch_load(j("pytorch_model.bin")), j("pytorch_model.bin")))
    elif os.path.isfile(j("pytorch_model.bin.index.json")):
        for shard in _shards(j("pytorch_model.bin.index.json")):
            p = require_file(j(shard), "checkpoint shard")
            store.add_dict(p, _flat_state_dict(torch_load(p), p))
    else:
        raise ConvertError(f"no weights in {folder}: expected model.safetensors, pytorch_model.bin or a sharded "
                           "index (*.index.json)")
    return store


def _shards(index_path):
    try:
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConvertError(f"cannot read shard index {index_path}: {e}") from None
    for s in shards:
        if os.path.isabs(s) or ".." in s.replace("\\", "/").split("/"):
            raise ConvertError(f"{index_path}: shard name {s!r} points outside the folder")
    return shards


def read_json(path, what):
    require_file(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ConvertError(f"cannot read {what} {path}: {e}") from None
