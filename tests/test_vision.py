"""Parity of the native image path (EVA ViT + ln_vision + Q-Former + projector) with transformers' BLIP-2
vision model and Q-Former, on tiny random models written to GGUF here with gguf-py."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
blip2 = pytest.importorskip("transformers.models.blip_2.modeling_blip_2")
from transformers import Blip2QFormerConfig, Blip2VisionConfig  # noqa: E402

import tinygptv_native as tn  # noqa: E402
from tinygptv_native import _core  # noqa: E402

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

# Small but awkward sizes: head sizes that are not powers of two, FFN widths that are not 4x.
VIT = dict(n_embd=48, n_head=4, n_ff=80, n_layer=3, patch=14)
QF = dict(n_embd=32, n_head=2, n_ff=64, n_layer=4, n_query=6)
PROJ_MID, LM_EMBD = 40, 24


def _randomize(module, gen):
    """Replace every parameter with values that exercise it (HF's init leaves LN at 1/0 and biases at 0)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            low = name.lower()
            if "norm" in low and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
            elif p.ndim == 1:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
            else:
                fan_in = p.shape[-1] if p.ndim == 2 else int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(max(fan_in, 1)))


class Reference:
    """transformers modules (float64) plus the two projector layers, with TinyGPT-V's epsilons."""

    def __init__(self, image_size, cross_freq, seed):
        gen = torch.Generator().manual_seed(seed)
        vc = Blip2VisionConfig(hidden_size=VIT["n_embd"], intermediate_size=VIT["n_ff"],
                               num_hidden_layers=VIT["n_layer"], num_attention_heads=VIT["n_head"],
                               image_size=image_size, patch_size=VIT["patch"], hidden_act="gelu",
                               layer_norm_eps=1e-6, qkv_bias=True)
        self.vision = blip2.Blip2VisionModel(vc).double().eval()
        self.vision.post_layernorm.eps = 1e-5  # ln_vision uses PyTorch's default eps, the blocks 1e-6
        qc = Blip2QFormerConfig(hidden_size=QF["n_embd"], num_hidden_layers=QF["n_layer"],
                                num_attention_heads=QF["n_head"], intermediate_size=QF["n_ff"],
                                hidden_act="gelu", layer_norm_eps=1e-12, cross_attention_frequency=cross_freq,
                                encoder_hidden_size=VIT["n_embd"])
        self.qformer = blip2.Blip2QFormerModel(qc).double().eval()
        self.query = torch.nn.Parameter(torch.zeros(1, QF["n_query"], QF["n_embd"], dtype=torch.float64))
        self.proj0 = torch.nn.Linear(QF["n_embd"], PROJ_MID).double()
        self.proj1 = torch.nn.Linear(PROJ_MID, LM_EMBD).double()
        for m in (self.vision, self.qformer, self.proj0, self.proj1):
            _randomize(m, gen)
        with torch.no_grad():
            self.query.copy_(torch.randn(self.query.shape, generator=gen, dtype=torch.float64))
            E = VIT["n_embd"]
            for layer in self.vision.encoder.layers:  # EVA: k has no bias
                layer.self_attn.qkv.bias[E:2 * E] = 0.0
        self.image_size, self.cross_freq = image_size, cross_freq

    def round_matrices_to_f16(self):
        with torch.no_grad():
            for m in (self.vision, self.qformer, self.proj0, self.proj1):
                for name, p in m.named_parameters():
                    # the matrices the GGUF stores in half (the position and class tables stay float32)
                    if p.ndim >= 2 and "position_embedding" not in name and "class_embedding" not in name:
                        p.copy_(p.to(torch.float16).to(torch.float64))

    @torch.no_grad()
    def __call__(self, pixels):
        x = torch.from_numpy(pixels.astype(np.float64))[None]
        img = self.vision(pixel_values=x).last_hidden_state
        q = self.qformer(query_embeds=self.query, encoder_hidden_states=img).last_hidden_state
        return self.proj1(self.proj0(q))[0].numpy()


def _np(t):
    return t.detach().to(torch.float64).numpy()


def write_gguf(path, ref, weight_dtype=np.float32, meta_override=None, tensor_override=None, drop=()):
    """The tinygptv GGUF layout: a tiny random Phi-2 LM plus the vision path mapped from `ref`."""
    rng = np.random.default_rng(7)
    tensors = {}

    def mat(name, a):
        tensors[name] = np.ascontiguousarray(a, dtype=weight_dtype)

    def vec(name, a):
        tensors[name] = np.ascontiguousarray(a, dtype=np.float32)

    # Language model (only its width matters here).
    E, V, F = LM_EMBD, 50, 48
    vec("token_embd.weight", rng.standard_normal((V, E)))
    vec("blk.0.attn_norm.weight", np.ones(E))
    vec("blk.0.attn_norm.bias", np.zeros(E))
    vec("blk.0.attn_qkv.weight", rng.standard_normal((3 * E, E)) * 0.1)
    vec("blk.0.attn_qkv.bias", np.zeros(3 * E))
    vec("blk.0.attn_output.weight", rng.standard_normal((E, E)) * 0.1)
    vec("blk.0.attn_output.bias", np.zeros(E))
    vec("blk.0.ffn_up.weight", rng.standard_normal((F, E)) * 0.1)
    vec("blk.0.ffn_up.bias", np.zeros(F))
    vec("blk.0.ffn_down.weight", rng.standard_normal((E, F)) * 0.1)
    vec("blk.0.ffn_down.bias", np.zeros(E))
    vec("output_norm.weight", np.ones(E))
    vec("output_norm.bias", np.zeros(E))
    vec("output.weight", rng.standard_normal((V, E)) * 0.1)
    vec("output.bias", np.zeros(V))

    # EVA ViT
    vis = ref.vision
    emb = vis.embeddings
    mat("v.patch_embd.weight", _np(emb.patch_embedding.weight).reshape(VIT["n_embd"], -1))  # (c, ky, kx)
    vec("v.patch_embd.bias", _np(emb.patch_embedding.bias))
    vec("v.cls", _np(emb.class_embedding).reshape(-1))
    vec("v.pos_embd", _np(emb.position_embedding)[0])
    for i, layer in enumerate(vis.encoder.layers):
        b = f"v.blk.{i}."
        vec(b + "ln1.weight", _np(layer.layer_norm1.weight))
        vec(b + "ln1.bias", _np(layer.layer_norm1.bias))
        mat(b + "attn_qkv.weight", _np(layer.self_attn.qkv.weight))
        vec(b + "attn_qkv.bias", _np(layer.self_attn.qkv.bias))
        mat(b + "attn_out.weight", _np(layer.self_attn.projection.weight))
        vec(b + "attn_out.bias", _np(layer.self_attn.projection.bias))
        vec(b + "ln2.weight", _np(layer.layer_norm2.weight))
        vec(b + "ln2.bias", _np(layer.layer_norm2.bias))
        mat(b + "ffn_up.weight", _np(layer.mlp.fc1.weight))
        vec(b + "ffn_up.bias", _np(layer.mlp.fc1.bias))
        mat(b + "ffn_down.weight", _np(layer.mlp.fc2.weight))
        vec(b + "ffn_down.bias", _np(layer.mlp.fc2.bias))
    vec("v.post_ln.weight", _np(vis.post_layernorm.weight))
    vec("v.post_ln.bias", _np(vis.post_layernorm.bias))

    # Q-Former (query-only path) and projector
    qf = ref.qformer
    vec("qf.query", _np(ref.query)[0])
    vec("qf.emb_ln.weight", _np(qf.layernorm.weight))
    vec("qf.emb_ln.bias", _np(qf.layernorm.bias))

    def linear(name, lin):
        mat(name + ".weight", _np(lin.weight))
        vec(name + ".bias", _np(lin.bias))

    for i, layer in enumerate(qf.encoder.layer):
        b = f"qf.blk.{i}."
        sa = layer.attention
        linear(b + "attn_q", sa.attention.query)
        linear(b + "attn_k", sa.attention.key)
        linear(b + "attn_v", sa.attention.value)
        linear(b + "attn_out", sa.output.dense)
        vec(b + "attn_ln.weight", _np(sa.output.LayerNorm.weight))
        vec(b + "attn_ln.bias", _np(sa.output.LayerNorm.bias))
        if layer.has_cross_attention:
            ca = layer.crossattention
            linear(b + "cross_q", ca.attention.query)
            linear(b + "cross_k", ca.attention.key)
            linear(b + "cross_v", ca.attention.value)
            linear(b + "cross_out", ca.output.dense)
            vec(b + "cross_ln.weight", _np(ca.output.LayerNorm.weight))
            vec(b + "cross_ln.bias", _np(ca.output.LayerNorm.bias))
        linear(b + "ffn_up", layer.intermediate_query.dense)
        linear(b + "ffn_down", layer.output_query.dense)
        vec(b + "ffn_ln.weight", _np(layer.output_query.LayerNorm.weight))
        vec(b + "ffn_ln.bias", _np(layer.output_query.LayerNorm.bias))
    linear("mm.0", ref.proj0)
    linear("mm.1", ref.proj1)

    A = "tinygptv"
    meta = {
        f"{A}.context_length": ("u32", 128), f"{A}.embedding_length": ("u32", E),
        f"{A}.feed_forward_length": ("u32", F), f"{A}.block_count": ("u32", 1),
        f"{A}.attention.head_count": ("u32", 2), f"{A}.attention.head_count_kv": ("u32", 2),
        f"{A}.rope.dimension_count": ("u32", 6), f"{A}.attention.layer_norm_epsilon": ("f32", 1e-5),
        f"{A}.attention.layer_norm_rms_epsilon": ("f32", 1e-6), f"{A}.stage": ("u32", 3),
        f"{A}.vision.image_size": ("u32", ref.image_size), f"{A}.vision.patch_size": ("u32", VIT["patch"]),
        f"{A}.vision.embedding_length": ("u32", VIT["n_embd"]), f"{A}.vision.block_count": ("u32", VIT["n_layer"]),
        f"{A}.vision.attention.head_count": ("u32", VIT["n_head"]),
        f"{A}.vision.feed_forward_length": ("u32", VIT["n_ff"]),
        f"{A}.vision.attention.layer_norm_epsilon": ("f32", 1e-6), f"{A}.vision.post_norm_epsilon": ("f32", 1e-5),
        f"{A}.qformer.embedding_length": ("u32", QF["n_embd"]), f"{A}.qformer.block_count": ("u32", QF["n_layer"]),
        f"{A}.qformer.attention.head_count": ("u32", QF["n_head"]),
        f"{A}.qformer.feed_forward_length": ("u32", QF["n_ff"]), f"{A}.qformer.query_count": ("u32", QF["n_query"]),
        f"{A}.qformer.cross_attention_freq": ("u32", ref.cross_freq),
        f"{A}.qformer.layer_norm_epsilon": ("f32", 1e-12),
        f"{A}.image.mean": ("arr", list(MEAN)), f"{A}.image.std": ("arr", list(STD)),
    }
    meta.update(meta_override or {})
    tensors.update(tensor_override or {})
    w = gguf.GGUFWriter(str(path), A)
    w.add_name("tiny-tinygptv-test")
    for k, (kind, v) in meta.items():
        if v is None:
            continue
        {"u32": w.add_uint32, "f32": w.add_float32, "arr": w.add_array, "str": w.add_string}[kind](k, v)
    for name, a in tensors.items():
        if name not in drop:
            w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _pixels(size, seed):
    return np.random.default_rng(seed).standard_normal((3, size, size)).astype(np.float32)


def _compare(got, want):
    got, want = got.astype(np.float64), want.astype(np.float64)
    cos = float(np.dot(got.ravel(), want.ravel()) / (np.linalg.norm(got) * np.linalg.norm(want)))
    rel = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    return cos, rel


def _encode(path, pixels, n_threads=2):
    m = tn._core.Model(str(path))
    s = _core.Context(m, 16, 1, n_threads)
    return m, s, s.encode_image(pixels).numpy()


@pytest.mark.parametrize("image_size,cross_freq", [(28, 2), (56, 2), (28, 1), (42, 3)])
def test_parity_f32(tmp_path, image_size, cross_freq):
    ref = Reference(image_size, cross_freq, seed=image_size + cross_freq)
    path = write_gguf(tmp_path / "m.gguf", ref)
    pixels = _pixels(image_size, 1)
    m, s, got = _encode(path, pixels)
    want = ref(pixels)
    assert got.dtype == np.float32 and got.shape == (QF["n_query"], LM_EMBD) == want.shape
    cos, rel = _compare(got, want)
    assert cos >= 0.99999, cos
    assert rel < 1e-4, rel
    # A second image through the same session (scratch reused) is independent of the first.
    pixels2 = _pixels(image_size, 2)
    cos2, rel2 = _compare(s.encode_image(pixels2).numpy(), ref(pixels2))
    assert cos2 >= 0.99999 and rel2 < 1e-4, (cos2, rel2)
    assert s.n_past(0) == 0  # the KV cache is not touched


def test_parity_f16_weights(tmp_path):
    ref = Reference(28, 2, seed=11)
    pixels = _pixels(28, 3)
    want_f32 = ref(pixels)
    path = write_gguf(tmp_path / "m16.gguf", ref, weight_dtype=np.float16)
    m, s, got = _encode(path, pixels)
    assert any(t[1] == "F16" and t[0] == "v.blk.0.attn_qkv.weight" for t in m.tensors())
    # Against the float32 model: the weight rounding shows, but only a little.
    cos, rel = _compare(got, want_f32)
    assert cos >= 0.9999 and rel < 5e-3, (cos, rel)
    # Against the reference with the same matrices rounded to half: as tight as F32.
    ref.round_matrices_to_f16()
    cos, rel = _compare(got, ref(pixels))
    assert cos >= 0.99999 and rel < 1e-4, (cos, rel)


def test_folded_projector(tmp_path):
    # A converter may store mm.1 . mm.0 as one affine map in mm.0 (float64 product, rounded once).
    ref = Reference(28, 2, seed=8)
    W1, b1 = _np(ref.proj0.weight), _np(ref.proj0.bias)
    W2, b2 = _np(ref.proj1.weight), _np(ref.proj1.bias)
    fold = {"mm.0.weight": (W2 @ W1).astype(np.float32), "mm.0.bias": (W2 @ b1 + b2).astype(np.float32)}
    path = write_gguf(tmp_path / "fold.gguf", ref, tensor_override=fold, drop=("mm.1.weight", "mm.1.bias"))
    pixels = _pixels(28, 6)
    m, s, got = _encode(path, pixels)
    assert m.vision_hparams["proj_n_mid"] == 0
    cos, rel = _compare(got, ref(pixels))
    assert cos >= 0.99999 and rel < 1e-4, (cos, rel)


def test_thread_count_invariance(tmp_path):
    ref = Reference(56, 2, seed=5)
    path = write_gguf(tmp_path / "m.gguf", ref)
    pixels = _pixels(56, 4)
    m = _core.Model(str(path))
    outs = [_core.Context(m, 16, 1, n).encode_image(pixels).numpy() for n in (1, 2, 3)]
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


def test_model_properties(tmp_path):
    ref = Reference(42, 3, seed=3)
    m = _core.Model(str(write_gguf(tmp_path / "m.gguf", ref)))
    assert m.has_vision and m.arch == "tinygptv"
    assert m.image_size == 42 and m.n_image_tokens == QF["n_query"]
    assert np.allclose(m.image_mean, MEAN, rtol=0, atol=1e-7) and np.allclose(m.image_std, STD, rtol=0, atol=1e-7)
    hp = m.vision_hparams
    assert hp["n_tokens"] == 1 + 3 * 3 and hp["vit_n_layer"] == VIT["n_layer"] and hp["cross_attention_freq"] == 3
    assert hp["proj_n_mid"] == PROJ_MID and hp["proj_n_out"] == LM_EMBD
    assert math.isclose(hp["qformer_ln_eps"], 1e-12, rel_tol=1e-6)


def test_encode_image_input_errors(tmp_path):
    ref = Reference(28, 2, seed=9)
    m = _core.Model(str(write_gguf(tmp_path / "m.gguf", ref)))
    s = _core.Context(m, 16, 1, 1)
    with pytest.raises(tn.ModelError, match=r"\(3, 28, 28\), got \(3, 56, 56\)"):
        s.encode_image(np.zeros((3, 56, 56), np.float32))
    with pytest.raises(tn.ModelError, match=r"got \(28, 28\)"):
        s.encode_image(np.zeros((28, 28), np.float32))
    bad = np.zeros((3, 28, 28), np.float32)
    bad[1, 2, 5] = np.nan
    with pytest.raises(tn.ModelError, match=r"channel 1, row 2, column 5"):
        s.encode_image(bad)
    # float64 input is converted, not refused
    assert s.encode_image(np.zeros((3, 28, 28), np.float64)).numpy().shape == (QF["n_query"], LM_EMBD)


def test_no_vision_path(tmp_path):
    ref = Reference(28, 2, seed=2)
    drop = [k for k in _all_names(ref) if k.startswith(("v.", "qf.", "mm."))]
    meta = {k: (None, None) for k in _vision_keys()}
    m = _core.Model(str(write_gguf(tmp_path / "m.gguf", ref, meta_override=meta, drop=drop)))
    assert not m.has_vision and m.image_size is None and m.n_image_tokens == 0
    with pytest.raises(tn.ModelError, match="no vision encoder"):
        _core.Context(m, 16, 1, 1).encode_image(np.zeros((3, 28, 28), np.float32))


def _vision_keys():
    return [f"tinygptv.{k}" for k in (
        "vision.image_size", "vision.patch_size", "vision.embedding_length", "vision.block_count",
        "vision.attention.head_count", "vision.feed_forward_length", "vision.attention.layer_norm_epsilon",
        "vision.post_norm_epsilon", "qformer.embedding_length", "qformer.block_count",
        "qformer.attention.head_count", "qformer.feed_forward_length", "qformer.query_count",
        "qformer.cross_attention_freq", "qformer.layer_norm_epsilon", "image.mean", "image.std")]


def _all_names(ref):
    names = []
    E = VIT["n_embd"]
    names += ["v.patch_embd.weight", "v.patch_embd.bias", "v.cls", "v.pos_embd", "v.post_ln.weight", "v.post_ln.bias"]
    for i in range(VIT["n_layer"]):
        names += [f"v.blk.{i}.{t}.{wb}" for t in ("ln1", "attn_qkv", "attn_out", "ln2", "ffn_up", "ffn_down")
                  for wb in ("weight", "bias")]
    names += ["qf.query", "qf.emb_ln.weight", "qf.emb_ln.bias", "mm.0.weight", "mm.0.bias", "mm.1.weight", "mm.1.bias"]
    for i in range(QF["n_layer"]):
        parts = ["attn_q", "attn_k", "attn_v", "attn_out", "attn_ln", "ffn_up", "ffn_down", "ffn_ln"]
        if i % ref.cross_freq == 0:
            parts += ["cross_q", "cross_k", "cross_v", "cross_out", "cross_ln"]
        names += [f"qf.blk.{i}.{t}.{wb}" for t in parts for wb in ("weight", "bias")]
    return names


@pytest.mark.parametrize("override,drop,exc,pattern", [
    ({"tinygptv.vision.patch_size": ("u32", 13)}, (), tn.ModelError, r"patch_size = 13 does not divide .*image_size = 28"),
    ({"tinygptv.vision.attention.head_count": ("u32", 5)}, (), tn.ModelError,
     r"vision.attention.head_count = 5 does not divide .*embedding_length = 48"),
    ({"tinygptv.qformer.attention.head_count": ("u32", 3)}, (), tn.ModelError, r"qformer.attention.head_count = 3"),
    ({"tinygptv.vision.image_size": ("u32", 42)}, (), tn.ModelError, r"v.pos_embd.*expected \[48, 10\]"),
    ({"tinygptv.vision.block_count": ("u32", 100000)}, (), tn.ModelError, r"vision.block_count = 100000 is outside"),
    ({"tinygptv.vision.block_count": ("u32", 2)}, (), tn.ModelError, r"more vision blocks than .*block_count = 2"),
    ({"tinygptv.vision.block_count": ("u32", 4)}, (), tn.ModelError, r"'v.blk.3.ln1.weight' is missing"),
    ({"tinygptv.vision.image_size": ("u32", 0)}, (), tn.ModelError, r"image_size = 0 is outside"),
    ({"tinygptv.vision.post_norm_epsilon": ("f32", -1e-5)}, (), tn.ModelError, r"post_norm_epsilon = -1e-05"),
    ({"tinygptv.qformer.layer_norm_epsilon": ("f32", 0.0)}, (), tn.ModelError, r"qformer.layer_norm_epsilon = 0"),
    ({"tinygptv.qformer.cross_attention_freq": ("u32", 0)}, (), tn.ModelError, r"cross_attention_freq = 0"),
    ({"tinygptv.qformer.cross_attention_freq": ("u32", 1)}, (), tn.ModelError, r"'qf.blk.1.cross_q.weight' is missing"),
    ({"tinygptv.qformer.cross_attention_freq": ("u32", 4)}, (), tn.ModelError, r"'qf.blk.2.cross_q.weight' is present"),
    ({"tinygptv.qformer.query_count": ("u32", 7)}, (), tn.ModelError, r"'qf.query' has shape"),
    ({"tinygptv.image.std": ("arr", [0.2, 0.0, 0.3])}, (), tn.ModelError, r"image.std\[1\] = 0"),
    ({"tinygptv.image.mean": ("arr", [0.2, 0.3])}, (), tn.ModelError, r"image.mean has 2 values"),
    ({"tinygptv.vision.embedding_length": (None, None)}, (), tn.GGUFError, r"tinygptv.vision.embedding_length"),
    ({}, ("v.blk.1.attn_qkv.bias",), tn.ModelError, r"'v.blk.1.attn_qkv.bias' is missing"),
    ({}, ("mm.1.weight",), tn.ModelError, r"no 'mm.1.weight': a folded projector must have 24 rows"),
    ({"tinygptv.vision.image_size": ("u32", 4080), "tinygptv.vision.patch_size": ("u32", 16),
      "tinygptv.vision.feed_forward_length": ("u32", 65536)}, (), tn.ModelError, r"65026 x 65536 scratch buffer"),
    ({"tinygptv.vision.image_size": ("u32", 4088)}, (), tn.ModelError, r"gives 85265 tokens"),
])
def test_bad_hparams(tmp_path, override, drop, exc, pattern):
    ref = Reference(28, 2, seed=4)
    path = write_gguf(tmp_path / "bad.gguf", ref, meta_override=override, drop=drop)
    with pytest.raises(exc, match=pattern):
        _core.Model(str(path))


def test_bad_tensor_shapes(tmp_path):
    ref = Reference(28, 2, seed=4)
    cases = [
        ({"v.patch_embd.weight": np.zeros((48, 3 * 13 * 13), np.float32)}, r"'v.patch_embd.weight' has shape"),
        ({"qf.blk.0.cross_k.weight": np.zeros((32, 40), np.float32)}, r"'qf.blk.0.cross_k.weight' has shape"),
        ({"mm.1.weight": np.zeros((LM_EMBD + 1, PROJ_MID), np.float32)}, r"'mm.1.weight' has shape"),
        ({"v.cls": np.zeros(47, np.float32)}, r"'v.cls' has shape"),
    ]
    for i, (tens, pattern) in enumerate(cases):
        path = write_gguf(tmp_path / f"bad{i}.gguf", ref, tensor_override=tens)
        with pytest.raises(tn.ModelError, match=pattern):
            _core.Model(str(path))
