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


def test_quantized_vision_tower_stays_close(tmp_path):
    """A vision tower wide enough to quantize (64 = 4 heads x 16, MLP 96): Q8_0 (float32 attention) and
    Q4_0 (attention in bf16, csrc/model/vision.cpp) image embeddings against the float32 reference."""
    import gguf
    from tinygptv_native.quantize import quantize_file
    path, s = fx.make_tinygptv_gguf(str(tmp_path / "set"), stage=3, outtype="f32", vision_width=64, vit_mlp=96)
    img = _picture(seed=3)
    r = ref.TinyGPTVReference(**ref.reference_kwargs(s))
    with torch.no_grad():
        want = r.image_embeddings(ref.preprocess(img, s["image_size"])[None]).reshape(-1).float().numpy()
    for qtype, floor in (("q8_0", 0.9995), ("q4_0", 0.97)):
        q = str(tmp_path / f"{qtype}.gguf")
        quantize_file(path, q, qtype, progress=False)
        kinds = {t.name: t.tensor_type.name for t in gguf.GGUFReader(q).tensors}
        assert kinds["v.blk.0.attn_qkv.weight"] == qtype.upper()
        ours = Model(q, n_threads=2).encode_image(img).reshape(-1)
        cos = float(ours @ want / np.linalg.norm(ours) / np.linalg.norm(want))
        assert cos > floor, (qtype, cos)


def test_quantize_vision_type_keeps_image_path(model_set, tmp_path):
    """`quantize q4_0 --vision-type f16`: the image path's weights are F16, the decoder's Q4_0, and the
    image embeddings are exactly those of the all-F16 file."""
    import gguf
    from tinygptv_native.quantize import QuantizeError, main, quantize_file
    path, _ = model_set
    mixed, f16 = str(tmp_path / "q4_0-vf16.gguf"), str(tmp_path / "f16.gguf")
    types = quantize_file(path, mixed, "q4_0", progress=False, vision_type="f16")
    quantize_file(path, f16, "f16", progress=False)
    reader = gguf.GGUFReader(mixed)
    seen = set()
    for t in reader.tensors:
        if len(t.shape) < 2 or not t.name.endswith(".weight"):
            continue
        want = "F16" if t.name.startswith(("v.", "qf.", "mm.")) else "Q4_0"
        if t.name == "output.weight":  # llama.cpp's Q4_0 mix: Q6_K, Q8_0 for rows not a multiple of 256
            want = "Q6_K" if int(t.shape[0]) % 256 == 0 else "Q8_0"
        if int(t.shape[0]) % 32 and want in ("Q4_0", "Q8_0"):
            want = "F32"
        assert t.tensor_type.name == want == types[t.name], t.name
        seen.add(want)
    assert seen >= {"F16", "Q4_0"}
    assert int(reader.fields["general.file_type"].contents()) == 2
    img = _picture(seed=6)
    a = Model(mixed, n_threads=2).encode_image(img)
    b = Model(f16, n_threads=2).encode_image(img)
    assert np.array_equal(a, b)
    with pytest.raises(QuantizeError, match="q4_k"):
        quantize_file(path, str(tmp_path / "x.gguf"), "q4_0", progress=False, vision_type="q4_k")
    assert not (tmp_path / "x.gguf").exists()
    with pytest.raises(SystemExit):
        main([path, str(tmp_path / "y.gguf"), "q8_0", "--vision-type", "bf16", "--quiet"])
    assert main([path, str(tmp_path / "y.gguf"), "q8_0", "--vision-type", "q4_0", "--quiet"]) == 0
