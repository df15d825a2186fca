"""tinygptv_native: native inference for TinyGPT-V (EVA ViT + Q-Former + Phi-2) from one GGUF file.

    from tinygptv_native import Model
    m = Model("tinygptv.gguf")          # or Model() for the embedded demo model
    print(m.chat("photo.jpg", "What is in the picture?"))

    chat = m.new_chat()                 # the image is encoded once and stays in the KV cache
    for piece in chat.ask("Describe it.", image="photo.jpg", stream=True):
        print(piece, end="", flush=True)
    print(chat.ask("[grounding] Where is the dog?"), chat.last.timings)
"""
from ._core import ContextOverflowError, GGUFError, ModelError, TokenizerError  # noqa: F401
from ._logging import set_verbose  # noqa: F401
from .chat import Chat, ChatStream, ChatTemplate, Message  # noqa: F401
from .grounding import Box, draw_boxes, parse_boxes  # noqa: F401
from .image import ImageError  # noqa: F401
from .model import GenerationResult, Model, SamplingParams  # noqa: F401

__version__ = "0.1.0"

__all__ = ["Model", "Chat", "ChatStream", "ChatTemplate", "Message", "SamplingParams", "GenerationResult",
           "Box", "parse_boxes", "draw_boxes", "set_verbose", "GGUFError", "ModelError", "TokenizerError",
           "ContextOverflowError", "ImageError"]
