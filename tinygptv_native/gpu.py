"""The Vulkan devices this machine offers (the GPU backend's view of them), for `tinygptv devices`.

Listing opens the Vulkan loader; nothing is opened at import. A build without the backend, or a machine
without the loader, raises VulkanError with the reason.
"""
from __future__ import annotations

from typing import Dict, List

from . import _core
from ._core import VulkanError  # noqa: F401  (re-exported)


def vulkan_built() -> bool:
    """Whether this build of the package has the Vulkan backend."""
    return _core.vulkan_built()


def vulkan_devices() -> List[Dict]:
    """Every Vulkan device: index, name, type (discrete, integrated, virtual, cpu, other), API version,
    driver, memory heaps and the device-local total, subgroup size, fp16 / int8 / cooperative-matrix support
    and the limits the backend works within. Raises VulkanError without a loader or a built backend."""
    return _core.vulkan_devices()


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def format_device(d: Dict) -> str:
    """A device as a few lines for people."""
    yes = {True: "yes", False: "no"}
    heaps = ", ".join(f"{_gib(h['size'])}{' device-local' if h['device_local'] else ''}" for h in d["memory_heaps"])
    return "\n".join([
        f"{d['index']}: {d['name']} ({d['type']}, Vulkan {d['api_version']})",
        f"   driver:              {d['driver'] or '?'}",
        f"   memory:              {heaps or 'none reported'}",
        f"   subgroup size:       {d['subgroup_size']}",
        f"   fp16 / int8:         {yes[d['fp16']]} / {yes[d['int8']]}",
        f"   cooperative matrix:  {yes[d['cooperative_matrix']]}",
        f"   largest buffer:      {d['max_storage_buffer_range'] / 2**20:.0f} MiB",
    ])
