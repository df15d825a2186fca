"""tinygptv_native: native inference for TinyGPT-V (EVA ViT + Q-Former + Phi-2) from one GGUF file.

    from tinygptv_native import Model
    m = Model("tinygptv.gguf")          # or Model() for the embedded demo model
    print(m.chat("What is in the picture?", image="photo.jpg"))

    chat = m.new_chat()                 # the image is encoded once and stays in the KV cache
    for piece in chat.ask("Describe it.", image="photo.jpg", stream=True):
        print(piece, end="", flush=True)
    print(chat.ask("[grounding] Where is the dog?"), chat.last.timings)
"""


def _missing_core(e: ImportError) -> ImportError:
    """The error for a package without its compiled module: in a source checkout, what to do instead."""
    import os
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    if e.name != __name__ + "._core" or not os.path.isfile(os.path.join(root, "CMakeLists.txt")):
        return e
    return ImportError(
        f"tinygptv_native was imported from the source folder of a checkout ({here}), which holds no compiled "
        f"module (_core). To use the package that pip install . installed, run Python from another folder "
        f"(or take the checkout off sys.path / PYTHONPATH); to use this checkout, make an editable install "
        f"(pip install -e .) or build it in place (tools/dev_build.sh)")


try:
    from ._core import ContextOverflowError, GGUFError, ModelError, TokenizerError, VulkanError  # noqa: F401
except ImportError as _e:
    raise _missing_core(_e) from None
from ._logging import set_verbose  # noqa: F401
from .chat import Chat, ChatStream, ChatTemplate, Message  # noqa: F401
from .grounding import Box, draw_boxes, parse_boxes  # noqa: F401
from .image import ImageError  # noqa: F401
from .gpu import vulkan_devices  # noqa: F401
from .model import GenerationResult, Model, SamplingParams  # noqa: F401

__version__ = "0.1.0"

__all__ = ["Model", "Chat", "ChatStream", "ChatTemplate", "Message", "SamplingParams", "GenerationResult",
           "Box", "parse_boxes", "draw_boxes", "set_verbose", "GGUFError", "ModelError", "TokenizerError",
           "ContextOverflowError", "ImageError", "VulkanError", "vulkan_devices"]
