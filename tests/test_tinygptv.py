"""The whole multimodal forward (image + prompt -> logits) against the PyTorch reference of TinyGPT-V.

Tiny random checkpoint sets with the real key names (tests/fixtures) are converted by our converter
and run natively; the reference (tests/reference/tinygptv_ref.py) builds the same model from the
checkpoint files with transformers' BLIP-2 vision and Q-Former modules and a Phi-2 with TinyGPT-V's
norms, LoRA applied unmerged, and splices the image the way TinyGPT-V does.
"""
import numpy as np
import pytest
import torch
from PIL import Image

from fixtures import checkpoints as fx
from reference import tinygptv_ref as ref
from tinygptv_native import Model


def _picture(size=37, seed=0):
    rng = np.random.default_rng(seed)
    a = (rng.random((size, size + 11, 3)) * 255).astype(np.uint8)
    a[5:20, 8:30] = [250, 20, 20]
    return Image.fromarray(a)


@pytest.fixture(scope="module", params=[3, 4], ids=["stage3", "stage4-interpolated"])
def model_set(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"stage{request.param}")
    path, s = fx.make_tinygptv_gguf(str(folder), stage=request.param, outtype="f32")
    return path, s


def test_multimodal_logits_match_reference(model_set):
    path, s = model_set
    m = Model(path, n_threads=2, kv_type="f32")
    assert m.metadata["tinygptv.stage"] == s["stage"]
    size = m.image_size
    assert size == s["image_size"]
    img = _picture()
    ids = list(np.random.default_rng(5).integers(0, 300, size=14))
    at = 5
    ours = m.logits(ids, image=img, image_at=at)
    pixels = ref.preprocess(img, size)[None]
    for merged in (False, True):
        r = ref.TinyGPTVReference(**ref.reference_kwargs(s, lora_merged=merged))
        with torch.no_grad():
            want = r.logits([int(i) for i in ids], pixels, image_at=at)
        want = want[0].float().numpy() if want.ndim == 3 else want.float().numpy()
        assert ours.shape == want.shape == (len(ids) + m.n_image_tokens, m.n_vocab)
        err = np.abs(ours - want).max()
        assert err < 1e-4 * want.std() + 1e-5, (merged, err, want.std())
        assert (ours.argmax(1) == want.argmax(1)).all()


def test_image_embeddings_match_reference(model_set):
    path, s = model_set
    m = Model(path, n_threads=2)
    img = _picture(seed=3)
    ours = m.encode_image(img)
    r = ref.TinyGPTVReference(**ref.reference_kwargs(s))
    with torch.no_grad():
        want = r.image_embeddings(ref.preprocess(img, m.image_size)[None])
    want = want.reshape(ours.shape).float().numpy()
    cos = (ours * want).sum() / np.linalg.norm(ours) / np.linalg.norm(want)
    assert cos > 0.99999
    assert np.abs(ours - want).max() < 1e-4 * np.abs(want).max()


def test_quantized_model_stays_close(model_set, tmp_path):
    """Q8_0 of the whole model (vision included) keeps the answer distribution close to F32."""
    from tinygptv_native.quantize import quantize_file
    path, s = model_set
    q8 = str(tmp_path / "q8.gguf")
    quantize_file(path, q8, "q8_0", progress=False)
    img = _picture(seed=4)
    ids = list(range(3, 15))
    a = Model(path, n_threads=2).logits(ids, image=img, image_at=2)
    b = Model(q8, n_threads=2).logits(ids, image=img, image_at=2)
    assert np.abs(a - b).max() < 0.1 * a.std()
