"""The Vulkan devices this machine offers (the GPU backend's view of them), for `tinygptv devices`, and the
choice of the device a model runs on (`Model(device=..., gpu=...)`).

Listing opens the Vulkan loader; nothing is opened at import. A build without the backend, or a machine
without the loader, raises VulkanError with the reason.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Tuple

from . import _core
from ._core import VulkanError  # noqa: F401  (re-exported)

log = logging.getLogger("tinygptv_native")


def vulkan_built() -> bool:
    """Whether this build of the package has the Vulkan backend."""
    return _core.vulkan_built()


def vulkan_devices() -> List[Dict]:
    """Every Vulkan device: index, name, type (discrete, integrated, virtual, cpu, other), API version,
    driver, memory heaps (size, device-local, and where the driver offers VK_EXT_memory_budget its budget
    and this process's usage, else None; read at each call, as they move with use) and the device-local
    total, subgroup size, fp16 / int8 / cooperative-matrix support and the limits the backend works within.
    Raises VulkanError without a loader or a built backend."""
    return _core.vulkan_devices()


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _format_heap(h: Dict) -> str:
    text = f"{_gib(h['size'])}{' device-local' if h['device_local'] else ''}"
    if h.get("budget") is not None:
        text += f" (budget {_gib(h['budget'])}, {_gib(h['usage'])} in use)"
    return text


def format_device(d: Dict) -> str:
    """A device as a few lines for people."""
    yes = {True: "yes", False: "no"}
    heaps = ", ".join(_format_heap(h) for h in d["memory_heaps"])
    return "\n".join([
        f"{d['index']}: {d['name']} ({d['type']}, Vulkan {d['api_version']})",
        f"   driver:              {d['driver'] or '?'}",
        f"   memory:              {heaps or 'none reported'}",
        f"   subgroup size:       {d['subgroup_size']}",
        f"   fp16 / int8:         {yes[d['fp16']]} / {yes[d['int8']]}",
        f"   cooperative matrix:  {yes[d['cooperative_matrix']]}",
        f"   largest buffer:      {d['max_storage_buffer_range'] / 2**20:.0f} MiB",
    ])


# The weight types the GPU's products read (csrc/vulkan/ops.cpp: matvec_shader), the decoder's and the image
# path's.
GPU_WEIGHT_TYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_K", "Q6_K")
DEVICES = ("auto", "cpu", "gpu")


def _types_unsupported(path: str) -> List[str]:
    """The weight matrices (tensor: type) the GPU cannot multiply: the decoder's and the image path's (v.*,
    qf.*, mm.*), both uploaded; the image path's tables (gpu_plan.IMAGE_TABLES) are loaded as float32."""
    from .gpu_plan import IMAGE_TABLES
    r = _core.GGUFReader(path)
    return [f"{name}: {t}" for name, t, shape, _o, _n in r.tensors()
            if len(shape) == 2 and name not in IMAGE_TABLES and t not in GPU_WEIGHT_TYPES]


def device_budget(d: Dict) -> Tuple[int, str]:
    """Bytes the plan may take on device d, and where that number comes from (for errors and logs).

    The heap is the largest device-local one (the buffers' memory type lives there; a small device-local
    heap beside it, such as a 256 MiB BAR window, is not where they go), or the largest of all where the
    device reports none as device-local. Where the driver offers VK_EXT_memory_budget, the heap's budget
    less what is in use, as listed now: other programs' use (a desktop, another model) is already deducted
    from the budget. Else the heap's size, which counts memory others may hold."""
    heaps = list(enumerate(d["memory_heaps"]))
    local = [(i, h) for i, h in heaps if h["device_local"]] or heaps
    if not local:
        return 0, "the device reports no memory heap"
    i, h = max(local, key=lambda ih: ih[1]["size"])
    kind = "device-local heap" if h["device_local"] else "heap"
    if h.get("budget") is not None:
        free = max(0, int(h["budget"]) - int(h["usage"]))
        return free, (f"the free VK_EXT_memory_budget of {kind} {i}: budget {h['budget'] / 2**20:,.1f} MiB "
                      f"less {h['usage'] / 2**20:,.1f} MiB in use")
    return int(h["size"]), f"the size of {kind} {i} (the driver offers no VK_EXT_memory_budget)"


def device_limits(d: Dict) -> Tuple[int, int]:
    """The largest buffer a weight part takes on device d (as PhiGpu splits them: the storage-buffer range
    and the allocation limit, TINYGPTV_VK_MAX_BUFFER lowering it) and the shaders' workgroup size."""
    max_buffer = int(d["max_storage_buffer_range"]) & ~3
    if d.get("max_allocation"):
        max_buffer = min(max_buffer, int(d["max_allocation"]))
    if os.environ.get("TINYGPTV_VK_MAX_BUFFER"):
        max_buffer = min(max_buffer, int(os.environ["TINYGPTV_VK_MAX_BUFFER"]))
    workgroup = 64  # csrc/vulkan/device.cpp: a power of two within the device's workgroup limit
    while workgroup > int(d.get("max_workgroup_invocations") or 64):
        workgroup //= 2
    return max_buffer, workgroup


def device_plan(path: str, d: Dict, n_ctx: int, n_seq: int, gpu_layers: Optional[int] = None):
    """The memory plan (gpu_plan.plan_file) of model `path` on device d, its first gpu_layers decoder layers
    there (None: all)."""
    from .gpu_plan import plan_file
    max_buffer, workgroup = device_limits(d)
    return plan_file(path, n_ctx, n_seq, max_buffer=max_buffer, workgroup=workgroup, gpu_layers=gpu_layers)


def layers_that_fit(path: str, d: Dict, n_ctx: int, n_seq: int, budget: int) -> Tuple[int, int]:
    """How many of model `path`'s decoder layers fit `budget` bytes on device d, and its layer count."""
    from . import gpu_plan
    max_buffer, workgroup = device_limits(d)
    hp, tensors = gpu_plan.file_tensors(path)
    return gpu_plan.layers_that_fit(tensors, hp, budget, n_ctx, n_seq, max_buffer, workgroup), hp.n_layer


def _budget(d: Dict, budget_mb: Optional[float]) -> Tuple[int, str]:
    if budget_mb is not None:
        return int(budget_mb * 2**20), "gpu_budget_mb"
    return device_budget(d)


def choose_device(path: str, device: str, gpu: Optional[int], n_ctx: int, n_seq: int,
                  budget_mb: Optional[float] = None, gpu_layers: Optional[int] = None) -> Optional[int]:
    """The Vulkan device the decoder of model `path` runs on, or None for the CPU.

    "cpu": None. "gpu": device `gpu` (default 0); VulkanError where the build has no backend, there is no
    loader or no device; ValueError where the index is out of range, the model's weight types have no GPU
    product, or the memory plan (device_plan, of the first gpu_layers layers where given, else of all)
    exceeds the budget (budget_mb, else the device's memory: the free VK_EXT_memory_budget where the driver
    offers it, else the heap's size), with the numbers, which budget was used and how many layers would fit.
    "auto": the device `gpu` names, else the first discrete GPU, where the plan fits and the types are
    supported; else None (the CPU).
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if gpu is not None and (isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0):
        raise ValueError(f"gpu must be a Vulkan device index (0, 1, ...), got {gpu!r}")
    if device == "cpu":
        if gpu is not None:
            raise ValueError(f"gpu={gpu} names a Vulkan device but device='cpu' uses none")
        return None
    if device == "auto":
        try:
            devs = vulkan_devices()
        except VulkanError as e:
            log.info("device auto: the CPU (%s)", e)
            return None
        cands = [d for d in devs if d["index"] == gpu] if gpu is not None else \
            [d for d in devs if d["type"] == "discrete"]
        if not cands:
            log.info("device auto: the CPU (no %s)", f"Vulkan device {gpu}" if gpu is not None else "discrete GPU")
            return None
        if _types_unsupported(path):
            log.info("device auto: the CPU (weight types the GPU does not multiply)")
            return None
        for d in cands:
            p = device_plan(path, d, n_ctx, n_seq, gpu_layers)
            budget, source = _budget(d, budget_mb)
            if p.total <= budget:
                log.info("device auto: Vulkan device %d (%s)", d["index"], d["name"])
                return int(d["index"])
            log.info("device auto: not Vulkan device %d (the plan, %s, exceeds %s, %.1f MiB; --gpu-layers puts "
                     "only the first layers there)", d["index"], p.describe(), source, budget / 2**20)
        log.info("device auto: the CPU (the plan fits no GPU)")
        return None
    devs = vulkan_devices()  # VulkanError: no backend, no loader
    if not devs:
        raise VulkanError("device='gpu' but no Vulkan device was found")
    idx = 0 if gpu is None else gpu
    if idx >= len(devs):
        names = ", ".join(f"{d['index']}: {d['name']}" for d in devs)
        raise ValueError(f"gpu={idx} does not exist (Vulkan devices: {names})")
    d = devs[idx]
    bad = _types_unsupported(path)
    if bad:
        raise ValueError(f"the GPU multiplies {', '.join(GPU_WEIGHT_TYPES)} weights; this model has "
                         f"{', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''} (run it with device='cpu')")
    p = device_plan(path, d, n_ctx, n_seq, gpu_layers)
    budget, source = _budget(d, budget_mb)
    if p.total > budget:
        fit, n_layer = layers_that_fit(path, d, n_ctx, n_seq, budget)
        what = "the model does" if gpu_layers is None else f"the first {gpu_layers} of its {n_layer} layers do"
        raise ValueError(f"{what} not fit Vulkan device {idx} ({d['name']}): at n_ctx {n_ctx} for {n_seq} "
                         f"sequence(s) it needs {p.describe()}; the budget is {budget / 2**20:,.1f} MiB "
                         f"({source}) (lower n_ctx or n_parallel, put only the first layers on the GPU with "
                         f"gpu_layers / --gpu-layers N: {fit} of {n_layer} fit, or use device='cpu')")
    return idx


def add_device_args(p) -> None:
    """--device, --gpu and --gpu-layers of the commands that load a model (an argparse parser)."""
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where the decoder runs: auto (a discrete GPU that holds the model, else the CPU), cpu, "
                        "or gpu (Vulkan; an error where there is none); default auto")
    p.add_argument("--gpu", type=int, default=None, metavar="N",
                   help="the Vulkan device to use (an index of `tinygptv devices`; default: the first that fits)")
    p.add_argument("--gpu-layers", "-ngl", type=int, default=None, metavar="N", dest="gpu_layers",
                   help="put only the first N decoder layers on the GPU (their weights and KV cache), the rest and "
                        "the output head on the CPU, as llama.cpp's -ngl; 0 keeps the decoder on the CPU "
                        "(default: all layers)")
