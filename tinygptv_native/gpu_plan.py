"""The GPU memory plan of a model file: what the Vulkan decoder (csrc/vulkan/phi_gpu.cpp) and the image path
(csrc/vulkan/vision_gpu.cpp) will allocate on the device, computed from the file's tensor table and
hyperparameters before anything is uploaded, so a model that does not fit is refused with the numbers.

Counted (bytes; each buffer rounded up to BUFFER_ALIGN, the allocation granularity of most devices, where
the decoder's own count, Context.gpu_weight_bytes / gpu_kv_reserved_bytes, rounds to 4):
- weights: the decoder's tensors (token_embd, blk.*, output_norm, output) and, in a TinyGPT-V file, the
  image path's (v.*, qf.*, mm.*): each matrix as the file stores it (the mat-vec shaders read GGUF blocks as
  they are), split by rows into parts of at most max_buffer bytes, a buffer each; each vector (norms,
  biases, and the image path's v.cls, v.pos_embd and qf.query tables) as float32; the RoPE tables, float32
  [n_ctx][n_rot / 2] for cos and for sin. A token embedding of a type the device does not gather stays on
  the host;
- kv_cache: per sequence slot and layer one buffer of keys and values at n_ctx positions, in F16 (a slot
  is made when first written; the plan counts all n_seq);
- activations: the float32 buffers of a step of n_batch rows (the context's piece size), all of whose rows
  may want logits: residual, norm, attention output, projection and row selection (n_embd each), q/k/v,
  FFN, tokens and positions, logits; the split decode attention's partial outputs; a 16-byte stand-in
  for absent inputs. No score matrix: attention keeps its softmax online. With an image path, the
  float32 buffers of one image's pass (image_activation_buffers), allocated with the context;
- staging: host-visible memory, counted against the same budget to be safe (integrated GPUs have one
  heap): the step's inputs (n_batch rows of n_embd + 2), its logits, and the transfer buffer (the largest
  weight buffer, at most 64 MiB); with an image path, an image's pixels going up and its embeddings
  coming down.

With gpu_layers (llama.cpp's -ngl) below n_layer, only the first gpu_layers layers are on the device: their
tensors and their KV cache, with the token embedding and RoPE tables; the output norm and head stay on the
host with the other layers, so there are no logits on the device and the step reads back the hidden state
(n_batch rows of n_embd) instead. gpu_layers 0 puts nothing of the decoder on the device. The image path
goes to the device whatever gpu_layers is.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Dict, Iterable, List, Optional, Tuple

BUFFER_ALIGN = 256        # a buffer's size is rounded up to this (allocation granularity on most devices)
STAGING_BYTES = 64 << 20  # csrc/vulkan/device.cpp: kStagingChunk
PIECE_ROWS = 256          # csrc/model/context.cpp: kMaxPieceRows, the most rows of one decode step
F32, F16 = 4, 2
# csrc/vulkan/phi_gpu.cpp: embed_supported, the types the token gather reads on the device
GATHER_TYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_K", "Q6_K")
# csrc/vulkan/phi_gpu.cpp: decode attention's split, kSplitTiles tiles of a workgroup's keys, kMaxSplits
SPLIT_TILES, MAX_SPLITS = 4, 32


@dataclass(frozen=True)
class Hparams:
    """What the plan needs of the decoder's shape."""
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    n_rot: Optional[int] = None  # rotary dims per head; None: the whole head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_dim(self) -> int:
        return self.head_dim * self.n_head_kv


@dataclass(frozen=True)
class Tensor:
    """A tensor of the file: GGML shape order (shape[0] is a row's length), bytes as stored."""
    name: str
    type: str
    shape: Tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class MemoryPlan:
    weights: int
    kv_cache: int
    activations: int
    staging: int
    largest_buffer: int  # the largest single buffer: must fit the device's maxStorageBufferRange
    weight_buffers: int  # how many buffers the weights take (the alignment tolerance against the real count)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.staging

    def describe(self) -> str:
        mib = lambda n: f"{n / 2**20:,.1f} MiB"  # noqa: E731
        return (f"weights {mib(self.weights)}, KV cache {mib(self.kv_cache)}, activations {mib(self.activations)}, "
                f"staging {mib(self.staging)}: {mib(self.total)} in all (largest buffer {mib(self.largest_buffer)})")


def _buffer(n: int) -> int:
    """Bytes of a buffer of n bytes: rounded to 4 by the device layer (a word at least), then to BUFFER_ALIGN."""
    n = max(4, -(-n // 4) * 4)
    return -(-n // BUFFER_ALIGN) * BUFFER_ALIGN


def is_decoder_tensor(name: str) -> bool:
    """Whether the GPU decoder uploads the tensor."""
    return name == "token_embd.weight" or name.startswith(("blk.", "output_norm.", "output."))


def is_image_tensor(name: str) -> bool:
    """Whether the tensor is the image path's (the ViT, the Q-Former, the projector), uploaded with it."""
    return name.startswith(("v.", "qf.", "mm."))


# The image path's 2-D tensors the loader holds as float32 tables (WeightLoader::vec), not as matrices.
IMAGE_TABLES = ("v.cls", "v.pos_embd", "qf.query")


def _on_device(name: str, n_layer: int, gpu_layers: int) -> bool:
    """Whether a decoder tensor is uploaded when the first gpu_layers of n_layer layers go to the device."""
    if name.startswith("blk."):
        return int(name.split(".")[1]) < gpu_layers
    if name.startswith(("output_norm.", "output.")):
        return gpu_layers == n_layer
    return gpu_layers > 0  # the token embedding


def check_gpu_layers(gpu_layers: Optional[int], n_layer: int) -> int:
    """The layers on the device: gpu_layers (None: all n_layer), checked to be in [0, n_layer]."""
    if gpu_layers is None:
        return n_layer
    if isinstance(gpu_layers, bool) or not hasattr(gpu_layers, "__index__"):
        raise TypeError(f"gpu_layers must be an int or None, got {type(gpu_layers).__name__}")
    gpu_layers = int(gpu_layers)
    if not 0 <= gpu_layers <= n_layer:
        raise ValueError(f"gpu_layers={gpu_layers} is outside [0, {n_layer}]: the model has {n_layer} decoder layers")
    return gpu_layers


def _parts(t: Tensor, max_buffer: Optional[int]) -> List[int]:
    """Bytes of the buffers a matrix takes: whole rows, at most max_buffer bytes a part (PhiGpu::upload_mat)."""
    rows = prod(t.shape[1:])
    row_bytes = t.nbytes // rows
    per_part = rows if not max_buffer else max_buffer // row_bytes
    if per_part < 1:
        raise ValueError(f"{t.name}: one row of {row_bytes} bytes exceeds the largest buffer of {max_buffer} bytes")
    return [row_bytes * min(per_part, rows - r0) for r0 in range(0, rows, per_part)]


def weight_buffers(tensors: Iterable[Tensor], hp: Hparams, n_ctx: int, max_buffer: Optional[int] = None,
                   gpu_layers: Optional[int] = None) -> List[int]:
    """Bytes of each weight buffer uploaded (before alignment): the decoder's first gpu_layers layers (None:
    all) with what goes with them, and the image path's."""
    ng = check_gpu_layers(gpu_layers, hp.n_layer)
    out: List[int] = []
    for t in tensors:
        on_device = is_image_tensor(t.name) or (is_decoder_tensor(t.name) and _on_device(t.name, hp.n_layer, ng))
        if not on_device:
            continue
        if len(t.shape) >= 2 and prod(t.shape[1:]) > 1 and t.name not in IMAGE_TABLES:
            if t.name == "token_embd.weight" and t.type not in GATHER_TYPES:
                continue  # the host dequantizes token rows and sends them with the step's inputs
            out += _parts(t, max_buffer)
        else:
            out.append(F32 * prod(t.shape))  # vectors are loaded as float32 whatever the file stores
    n_rot = hp.head_dim if hp.n_rot is None else hp.n_rot
    if n_rot > 0 and ng > 0:
        out += [F32 * n_ctx * (n_rot // 2)] * 2  # cos and sin
    return out


def image_activation_buffers(tensors: Iterable[Tensor]) -> Tuple[List[int], List[int]]:
    """Bytes of the buffers of the image path's pass on the GPU (ImageGpu's constructor): (device-local,
    host-visible); both empty for a file without an image path. Every shape comes from the tensor table."""
    shapes = {t.name: t.shape for t in tensors}
    if "v.patch_embd.weight" not in shapes:
        return [], []
    K, E = shapes["v.patch_embd.weight"]          # 3 p^2 values a patch, the ViT's width
    T = shapes["v.pos_embd"][-1] if len(shapes["v.pos_embd"]) > 1 else shapes["v.pos_embd"][0] // E
    F = shapes["v.blk.0.ffn_up.weight"][1] if "v.blk.0.ffn_up.weight" in shapes else 0
    Q, NQ = shapes["qf.query"]
    QF = shapes["qf.blk.0.ffn_up.weight"][1] if "qf.blk.0.ffn_up.weight" in shapes else 0
    M = shapes["mm.0.weight"][1]
    folded = "mm.1.weight" not in shapes
    O = M if folded else shapes["mm.1.weight"][1]
    pixels = (T - 1) * K                          # 3 S^2 = (S/p)^2 patches of 3 p^2 values
    floats = [pixels, (T - 1) * K] + [T * E] * 4 + [T * 3 * E, T * F]  # the ViT
    floats += [NQ * Q] * 4 + [NQ * 3 * Q, T * 2 * Q, NQ * QF] + ([] if folded else [NQ * M]) + [NQ * O]
    return [F32 * n for n in floats], [F32 * pixels, F32 * NQ * O]


def split_count(n_ctx: int, workgroup: int = 64) -> int:
    """How many key chunks a decode row's attention takes (PhiGpu's split_chunk_ and its partial buffer)."""
    chunk = SPLIT_TILES * workgroup
    while -(-n_ctx // chunk) > MAX_SPLITS:
        chunk *= 2
    return -(-n_ctx // chunk)


def plan(tensors: Iterable[Tensor], hp: Hparams, n_ctx: int, n_seq: int = 1, n_batch: int = PIECE_ROWS,
         max_buffer: Optional[int] = None, workgroup: int = 64, gpu_layers: Optional[int] = None) -> MemoryPlan:
    """The plan of a model with these tensors at n_ctx positions for n_seq sequences, decoding steps of at
    most n_batch rows, on a device whose buffers take at most max_buffer bytes (None: no tensor is split)
    and whose shaders run `workgroup` invocations, with its first gpu_layers layers there (None: all)."""
    if n_ctx < 1 or n_seq < 1 or n_batch < 1:
        raise ValueError(f"n_ctx, n_seq and n_batch must be positive, got {n_ctx}, {n_seq}, {n_batch}")
    tensors = list(tensors)
    ng = check_gpu_layers(gpu_layers, hp.n_layer)
    head = ng == hp.n_layer  # the output norm and head are on the device too
    raw = weight_buffers(tensors, hp, n_ctx, max_buffer, ng)
    image_dev, image_host = image_activation_buffers(tensors)
    if ng == 0:  # nothing of the decoder: the image path alone, if the file has one
        transfer = min(max(raw, default=0), STAGING_BYTES)
        return MemoryPlan(sum(_buffer(b) for b in raw), 0, sum(_buffer(b) for b in image_dev),
                          (_buffer(transfer) if raw else 0) + sum(_buffer(b) for b in image_host),
                          max(raw + image_dev, default=0), len(raw))
    weights = sum(_buffer(b) for b in raw)
    kv_layer = 2 * n_ctx * hp.kv_dim * F16  # keys then values
    kv = n_seq * ng * _buffer(kv_layer)

    E, B = hp.n_embd, min(n_batch, PIECE_ROWS, n_ctx * n_seq)
    logits = F32 * B * hp.n_vocab
    # residual, norm, attention output, projection (and with the head, the rows that want logits)
    row_buffers = [F32 * B * E] * (5 if head else 4)
    row_buffers += [F32 * B * (E + 2 * hp.kv_dim), F32 * B * hp.n_ff, F32 * B, F32 * B] + ([logits] if head else [])
    part = F32 * hp.n_head * split_count(n_ctx, workgroup) * (hp.head_dim + 2)
    activations = sum(_buffer(b) for b in row_buffers + image_dev) + _buffer(part) + _buffer(16)
    transfer = min(max(raw, default=0), STAGING_BYTES)
    readback = logits if head else F32 * B * E  # the logits, or the hidden state for the host's layers
    staging = (_buffer(F32 * B * (E + 2)) + _buffer(readback) + _buffer(transfer)
               + sum(_buffer(b) for b in image_host))
    largest = max(raw + image_dev + [kv_layer, F32 * B * hp.n_ff] + ([logits] if head else []))
    return MemoryPlan(weights, kv, activations, staging, largest, len(raw))


def layers_that_fit(tensors: Iterable[Tensor], hp: Hparams, budget: int, n_ctx: int, n_seq: int = 1,
                    max_buffer: Optional[int] = None, workgroup: int = 64) -> int:
    """The most layers (0 to n_layer) whose plan fits budget bytes: a gpu_layers to suggest."""
    tensors = list(tensors)
    for ng in range(hp.n_layer, 0, -1):
        if plan(tensors, hp, n_ctx, n_seq, max_buffer=max_buffer, workgroup=workgroup, gpu_layers=ng).total <= budget:
            return ng
    return 0


def hparams_from_metadata(md: Dict, tensor_shapes: Dict[str, Tuple[int, ...]]) -> Hparams:
    """Hparams from a GGUF file's metadata (phi2 or tinygptv) and its tensors' shapes (GGML order)."""
    arch = md.get("general.architecture")
    if arch not in ("phi2", "tinygptv"):
        raise ValueError(f"no memory plan for architecture {arch!r} (phi2 and tinygptv have one)")

    def get(key: str, default: Optional[int] = None) -> Optional[int]:
        if key in md:
            return int(md[key])
        if default is None:
            raise ValueError(f"the model file has no {key}")
        return default

    n_head = get(f"{arch}.attention.head_count")
    if "token_embd.weight" not in tensor_shapes:
        raise ValueError("the model file has no token_embd.weight")
    n_rot = int(md[f"{arch}.rope.dimension_count"]) if f"{arch}.rope.dimension_count" in md else None
    return Hparams(n_embd=get(f"{arch}.embedding_length"), n_layer=get(f"{arch}.block_count"), n_head=n_head,
                   n_head_kv=get(f"{arch}.attention.head_count_kv", n_head), n_ff=get(f"{arch}.feed_forward_length"),
                   n_vocab=int(tensor_shapes["token_embd.weight"][-1]), n_rot=n_rot)


def file_tensors(path: str) -> Tuple[Hparams, List[Tensor]]:
    """A GGUF model file's decoder hyperparameters and tensor table (reads its header only)."""
    from . import _core
    r = _core.GGUFReader(path)
    tensors = [Tensor(name, t, tuple(shape), nbytes) for name, t, shape, _o, nbytes in r.tensors()]
    hp = hparams_from_metadata(r.metadata(max_array=0), {t.name: t.shape for t in tensors})
    return hp, tensors


def plan_file(path: str, n_ctx: int, n_seq: int = 1, n_batch: int = PIECE_ROWS, max_buffer: Optional[int] = None,
              workgroup: int = 64, gpu_layers: Optional[int] = None) -> MemoryPlan:
    """The plan of a GGUF model file (reads its header only)."""
    hp, tensors = file_tensors(path)
    return plan(tensors, hp, n_ctx, n_seq, n_batch, max_buffer, workgroup, gpu_layers)
