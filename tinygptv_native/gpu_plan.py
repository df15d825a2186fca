"""The GPU memory plan of a model file: what the Vulkan backend will hold on the device, computed from the
file's tensor table and hyperparameters before anything is uploaded, so a model that does not fit is refused
with the numbers (or split with gpu_layers, once the model runs on the GPU).

Counted (bytes, each buffer rounded up to BUFFER_ALIGN):
- weights: every tensor as the file stores it (the mat-vec shaders read GGUF blocks as they are), one
  buffer each;
- kv_cache: keys and values of every decoder layer at n_ctx positions for each of n_seq sequences, in F16;
- activations: float32 scratch for the larger of the two phases, which reuse one another's memory:
  decoding a piece of n_batch rows (residual, norms, q/k/v, attention output, FFN, the scores of n_batch rows
  against n_ctx keys per head, logits of n_seq rows), or encoding one image (the vision tower's rows of
  width, q/k/v, MLP and per-head scores; the Q-Former's queries, cross keys/values and scores), plus one
  image's projected embeddings per sequence;
- staging: the host-visible buffer transfers go through (Device::staging, at most 64 MiB).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple

BUFFER_ALIGN = 256        # a buffer's size is rounded up to this (allocation granularity on most devices)
STAGING_BYTES = 64 << 20  # csrc/vulkan/device.cpp: kStagingChunk
F32, F16 = 4, 2


@dataclass(frozen=True)
class Hparams:
    """What the plan needs of a model's shape. Vision fields are zero for a language model alone."""
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    image_size: int = 0
    patch_size: int = 0
    v_embd: int = 0
    v_head: int = 0
    v_ff: int = 0
    q_embd: int = 0
    q_head: int = 0
    q_ff: int = 0
    n_query: int = 0

    @property
    def kv_dim(self) -> int:
        return self.n_embd // self.n_head * self.n_head_kv

    @property
    def image_tokens(self) -> int:
        return 1 + (self.image_size // self.patch_size) ** 2 if self.patch_size else 0


@dataclass(frozen=True)
class MemoryPlan:
    weights: int
    kv_cache: int
    activations: int
    staging: int
    largest_buffer: int  # the largest single tensor: must fit the device's maxStorageBufferRange

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.staging

    def describe(self) -> str:
        mib = lambda n: f"{n / 2**20:,.1f} MiB"  # noqa: E731
        return (f"weights {mib(self.weights)}, KV cache {mib(self.kv_cache)}, activations {mib(self.activations)}, "
                f"staging {mib(self.staging)}: {mib(self.total)} in all (largest buffer {mib(self.largest_buffer)})")


def _aligned(n: int) -> int:
    return -(-n // BUFFER_ALIGN) * BUFFER_ALIGN


def plan(tensor_bytes: Iterable[int], hp: Hparams, n_ctx: int, n_seq: int = 1, n_batch: int = 256) -> MemoryPlan:
    """The plan of a model whose tensors take `tensor_bytes` each, at n_ctx positions for n_seq sequences,
    decoding pieces of at most n_batch rows (the engine context's piece size)."""
    if n_ctx < 1 or n_seq < 1 or n_batch < 1:
        raise ValueError(f"n_ctx, n_seq and n_batch must be positive, got {n_ctx}, {n_seq}, {n_batch}")
    sizes = [_aligned(int(b)) for b in tensor_bytes]
    weights = sum(sizes)
    kv = _aligned(n_seq * hp.n_layer * n_ctx * 2 * hp.kv_dim * F16)

    B = min(n_batch, n_ctx * n_seq)
    decode = F32 * (3 * B * hp.n_embd + B * (hp.n_embd + 2 * hp.kv_dim) + B * hp.n_embd + B * hp.n_ff
                    + hp.n_head * B * n_ctx + n_seq * hp.n_vocab)
    vision = 0
    if hp.image_tokens:
        T, S, Q = hp.image_tokens, hp.image_size, hp.n_query
        tower = F32 * (3 * S * S + 2 * T * hp.v_embd + 3 * T * hp.v_embd + T * hp.v_embd + T * hp.v_ff
                       + hp.v_head * T * T)
        qformer = F32 * (Q * (4 * hp.q_embd + hp.q_ff) + 2 * T * hp.q_embd + hp.q_head * Q * max(Q, T))
        vision = tower + qformer
    embeddings = F32 * n_seq * hp.n_query * hp.n_embd
    activations = _aligned(max(decode, vision)) + _aligned(embeddings)
    return MemoryPlan(weights, kv, activations, STAGING_BYTES, max(sizes, default=0))


def hparams_from_metadata(md: Dict, tensor_shapes: Dict[str, Tuple[int, ...]]) -> Hparams:
    """Hparams from a GGUF file's metadata (phi2 or tinygptv) and its tensors' shapes (GGML order)."""
    arch = md.get("general.architecture")
    if arch not in ("phi2", "tinygptv"):
        raise ValueError(f"no memory plan for architecture {arch!r} (phi2 and tinygptv have one)")

    def get(key: str, default: Optional[int] = None) -> int:
        if key in md:
            return int(md[key])
        if default is None:
            raise ValueError(f"the model file has no {key}")
        return default

    n_head = get(f"{arch}.attention.head_count")
    if "token_embd.weight" not in tensor_shapes:
        raise ValueError("the model file has no token_embd.weight")
    vision = {}
    if arch == "tinygptv":
        t = "tinygptv"
        vision = dict(image_size=get(f"{t}.vision.image_size"), patch_size=get(f"{t}.vision.patch_size"),
                      v_embd=get(f"{t}.vision.embedding_length"), v_head=get(f"{t}.vision.attention.head_count"),
                      v_ff=get(f"{t}.vision.feed_forward_length"), q_embd=get(f"{t}.qformer.embedding_length"),
                      q_head=get(f"{t}.qformer.attention.head_count"), q_ff=get(f"{t}.qformer.feed_forward_length"),
                      n_query=get(f"{t}.qformer.query_count"))
    return Hparams(n_embd=get(f"{arch}.embedding_length"), n_layer=get(f"{arch}.block_count"), n_head=n_head,
                   n_head_kv=get(f"{arch}.attention.head_count_kv", n_head), n_ff=get(f"{arch}.feed_forward_length"),
                   n_vocab=int(tensor_shapes["token_embd.weight"][-1]), **vision)


def plan_file(path: str, n_ctx: int, n_seq: int = 1, n_batch: int = 256) -> MemoryPlan:
    """The plan of a GGUF model file (reads its header only)."""
    from . import _core
    r = _core.GGUFReader(path)
    tensors = r.tensors()
    hp = hparams_from_metadata(r.metadata(max_array=0), {name: tuple(shape) for name, _t, shape, _o, _n in tensors})
    return plan((nbytes for *_rest, nbytes in tensors), hp, n_ctx, n_seq, n_batch)
