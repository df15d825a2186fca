"""tinygptv_native: native inference for TinyGPT-V from GGUF files."""
from ._core import GGUFError, ModelError, TokenizerError, ContextOverflowError  # noqa: F401

__version__ = "0.1.0"
