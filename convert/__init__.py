"""Checkpoint -> GGUF conversion for Phi-2 and TinyGPT-V (installed as ``tinygptv_native.convert``).

Entry points: :func:`convert_phi2`, :func:`convert_tinygptv` and ``cli.main(argv)``.
The GGUF names and metadata keys live in :mod:`.schema`.
"""


class ConvertError(ValueError):
    """A checkpoint cannot be converted: missing file, wrong format, missing or mis-shaped tensors."""


def convert_phi2(*args, **kwargs):
    from .phi2 import convert_phi2 as _impl
    return _impl(*args, **kwargs)


def convert_tinygptv(*args, **kwargs):
    from .tinygptv import convert_tinygptv as _impl
    return _impl(*args, **kwargs)


__all__ = ["ConvertError", "convert_phi2", "convert_tinygptv"]
