"""The server's settings (from the command line, or given by a program that embeds the server)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional


@dataclass
class ServerConfig:
    """What `tinygptv serve` runs with. ``model`` may be an already loaded Model (then ``model_path``,
    ``n_threads``, ``n_ctx`` and ``n_parallel`` are taken from it)."""
    model_path: Optional[str] = None      # None: the embedded demo model
    model: Any = None                     # a loaded tinygptv_native.Model to serve instead of loading one
    alias: Optional[str] = None           # the model's name in /v1/models and /api/tags (default: file stem)
    n_threads: Optional[int] = None
    n_ctx: int = 2048
    n_parallel: int = 4                   # sequences decoded together
    device: str = "auto"                  # where the decoder runs: auto, cpu, gpu (Model's device)
    gpu: Optional[int] = None             # the Vulkan device index (Model's gpu)
    gpu_layers: Optional[int] = None      # decoder layers on the GPU, the first ones (Model's gpu_layers)
    max_queue: int = 64                   # requests waiting beyond n_parallel; more get 503
    api_keys: List[str] = field(default_factory=list)
    cors_origins: List[str] = field(default_factory=list)
    media_dir: Optional[str] = None       # the only folder file:// image URLs may read
    max_body_bytes: int = 32 << 20
    max_images: int = 8                   # images in one request (all messages)
    max_image_bytes: int = 20 << 20       # one image, encoded
    max_image_pixels: int = 50_000_000    # one image, width x height (checked on the header)
    max_tokens_limit: int = 0             # the most max_tokens a request may ask (0: n_ctx)
    shutdown_grace: float = 5.0           # seconds in-flight requests get to finish on SIGINT/SIGTERM

    def check(self) -> "ServerConfig":
        if not 1 <= int(self.n_parallel) <= 256:
            raise ValueError(f"--parallel must be in [1, 256], got {self.n_parallel}")
        if int(self.max_queue) < 0:
            raise ValueError(f"--max-queue must be >= 0, got {self.max_queue}")
        if not 16 <= int(self.n_ctx) <= 1 << 20:
            raise ValueError(f"--ctx must be in [16, 1048576], got {self.n_ctx}")
        if self.n_threads is not None and not 1 <= int(self.n_threads) <= 512:
            raise ValueError(f"--threads must be in [1, 512], got {self.n_threads}")
        for name in ("max_body_bytes", "max_images", "max_image_bytes", "max_image_pixels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.shutdown_grace < 0:
            raise ValueError(f"--shutdown-grace must be >= 0, got {self.shutdown_grace}")
        if self.device not in ("auto", "cpu", "gpu"):
            raise ValueError(f"--device must be auto, cpu or gpu, got {self.device!r}")
        if self.gpu is not None and int(self.gpu) < 0:
            raise ValueError(f"--gpu must be a Vulkan device index (0, 1, ...), got {self.gpu}")
        if self.gpu_layers is not None and int(self.gpu_layers) < 0:
            raise ValueError(f"--gpu-layers must be >= 0, got {self.gpu_layers}")
        if any(not k for k in self.api_keys):
            raise ValueError("an API key must not be empty")
        if self.media_dir is not None:
            p = Path(self.media_dir)
            if not p.is_dir():
                raise ValueError(f"--media-dir '{p}' is not a folder")
            self.media_dir = str(p.resolve())
        if self.model_path is not None and self.model is None and not Path(self.model_path).is_file():
            raise ValueError(f"model file not found: '{self.model_path}'")
        return self

    @property
    def model_name(self) -> str:
        if self.alias:
            return self.alias
        path = self.model_path or (getattr(self.model, "path", None) if self.model is not None else None)
        if path is None:
            from ..demo import DEMO_MODEL
            path = DEMO_MODEL
        return Path(path).stem
