"""tinygptv_native: native inference for TinyGPT-V (EVA ViT + Q-Former + Phi-2) from one GGUF file.

    from tinygptv_native import Model
    m = Model("tinygptv.gguf")          # or Model() for the embedded demo model
    print(m.chat("photo.jpg", "What is in the picture?"))
"""
from ._core import ContextOverflowError, GGUFError, ModelError, TokenizerError  # noqa: F401
from .image import ImageError  # noqa: F401
from .model import GenerationResult, Model, SamplingParams  # noqa: F401

__version__ = "0.1.0"

__all__ = ["Model", "SamplingParams", "GenerationResult", "GGUFError", "ModelError", "TokenizerError",
           "ContextOverflowError", "ImageError"]
