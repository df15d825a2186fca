"""End to end: tiny TinyGPT-V checkpoint sets -> the converter -> the native image path, against the
PyTorch reference of the test suite (transformers' BLIP-2 modules with the original weights mapped).
Runs when the converter, its checkpoint fixtures and the reference are part of the tree."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gguf")
convert = pytest.importorskip("tinygptv_native.convert")
fx = pytest.importorskip("fixtures.checkpoints")
ref = pytest.importorskip("reference.tinygptv_ref")
for mod, name in ((convert, "convert_tinygptv"), (fx, "make_tinygptv_set"), (fx, "tinygptv_convert_kwargs"),
                  (ref, "TinyGPTVReference"), (ref, "reference_kwargs")):
    if not hasattr(mod, name):
        pytest.skip(f"{mod.__name__}.{name} is not available", allow_module_level=True)

from tinygptv_native import _core  # noqa: E402

CASES = {
    "stage3": dict(stage=3, seed=3),
    "stage4": dict(stage=4, seed=4),  # 2x the EVA grid: interpolated position table
    "stage4-dec2023": dict(stage=4, seed=5, dec2023=True, blip2_visual=True),  # its own Q-Former
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("outtype,cos_min,rel_max", [("f32", 0.99999, 1e-4), ("f16", 0.9999, 5e-3)])
def test_converted_image_embeddings(tmp_path, case, outtype, cos_min, rel_max):
    s = fx.make_tinygptv_set(str(tmp_path / "set"), **CASES[case])
    out = str(tmp_path / "m.gguf")
    convert.convert_tinygptv(out_path=out, progress=False, outtype=outtype, **fx.tinygptv_convert_kwargs(s))
    m = _core.Model(out)
    S = s["image_size"]
    assert m.has_vision and m.image_size == S
    pixels = torch.randn(3, S, S, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref.TinyGPTVReference(**ref.reference_kwargs(s)).image_embeddings(pixels)
    want = want.double().numpy().reshape(m.n_image_tokens, -1)
    got = _core.Context(m, 16, 1, 2).encode_image(pixels.numpy()).numpy().astype(np.float64)
    cos = float((got * want).sum() / (np.linalg.norm(got) * np.linalg.norm(want)))
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    assert cos >= cos_min and rel < rel_max, (cos, rel)
