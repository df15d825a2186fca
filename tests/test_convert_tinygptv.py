"""TinyGPT-V converter tests on tiny checkpoint sets with the real key names and nesting.

Expected tensors are computed here from the fixture files (torch.load of the originals), and the
GGUF content is cross-checked against the weights of the independent PyTorch reference
(tests/reference/tinygptv_ref.py, built on transformers' Blip2VisionModel, Blip2QFormerModel and
PhiForCausalLM). The reference itself is checked: LoRA merged == unmerged, and its vision and
Q-Former path against a plain forward written here from the spec.
"""

import math
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

gguf = pytest.importorskip("gguf")

from tinygptv_native.convert import ConvertError, convert_tinygptv  # noqa: E402
from tinygptv_native.convert import schema  # noqa: E402
from tinygptv_native.convert.cli import main as cli_main  # noqa: E402
from fixtures import checkpoints as fx  # noqa: E402
from reference import tinygptv_ref as ref  # noqa: E402


def read(path):
    r = gguf.GGUFReader(path)
    return ({t.name: np.asarray(t.data, dtype=np.float32) for t in r.tensors},
            {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")})


def convert(s, out, **kw):
    kw.setdefault("outtype", "f32")
    convert_tinygptv(out_path=str(out), progress=False, **fx.tinygptv_convert_kwargs(s), **kw)
    return read(str(out))


def load(path):
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return obj["model"] if isinstance(obj, dict) and "model" in obj else obj


def expected(s, image_size=None, alpha=None):
    """Every GGUF tensor, computed from the original files with the spec's rules."""
    eva, blip, st = load(s["eva"]), load(s["blip2"]), load(s["stage_file"])
    m = s["phi_model"]
    c = m.config
    E, H, L = c.hidden_size, c.num_attention_heads, c.num_hidden_layers
    D = E // H
    msd = {k: v.float() for k, v in m.state_dict().items()}
    pfx = "llama_model.model." if s["stage"] == 1 else "llama_model.base_model.model.model."
    scale = (alpha or s["lora_alpha"]) / s["lora_r"]
    out = {"token_embd.weight": msd["model.embed_tokens.weight"], "output.weight": msd["lm_head.weight"],
           "output.bias": msd["lm_head.bias"], "output_norm.weight": st[pfx + "final_layernorm.weight"],
           "output_norm.bias": msd["model.final_layernorm.bias"]}
    for i in range(L):
        b, sp = f"blk.{i}.", f"{pfx}layers.{i}."
        qkv_436 = torch.stack([msd[f"model.layers.{i}.self_attn.{p}_proj.weight"].reshape(H, D, E) for p in "qkv"], 1)
        qkv_436 = qkv_436.reshape(3 * E, E)
        dense = msd[f"model.layers.{i}.self_attn.dense.weight"]
        if s["stage"] != 1:
            qa, qb = st[sp + "self_attn.query_key_value.lora_A.weight"], st[sp + "self_attn.query_key_value.lora_B.weight"]
            qkv_436 = qkv_436 + scale * (qb @ qa)
            da, db = st[sp + "self_attn.dense.lora_A.weight"], st[sp + "self_attn.dense.lora_B.weight"]
            dense = dense + scale * (db @ da)
        per_head = qkv_436.reshape(H, 3, D, E)
        out[b + "attn_qkv.weight"] = torch.cat([per_head[:, j].reshape(E, E) for j in range(3)])
        out[b + "attn_qkv.bias"] = torch.cat([msd[f"model.layers.{i}.self_attn.{p}_proj.bias"] for p in "qkv"])
        out[b + "attn_output.weight"] = dense
        out[b + "attn_output.bias"] = msd[f"model.layers.{i}.self_attn.dense.bias"]
        out[b + "attn_norm.weight"] = st[sp + "input_layernorm.weight"]
        out[b + "attn_norm.bias"] = msd[f"model.layers.{i}.input_layernorm.bias"]
        out[b + "attn_q_norm.weight"] = st[sp + "self_attn.q_layernorm.weight"]
        out[b + "attn_k_norm.weight"] = st[sp + "self_attn.k_layernorm.weight"]
        out[b + "attn_q_norm.bias"] = out[b + "attn_k_norm.bias"] = torch.zeros(D)
        out[b + "attn_post_norm.weight"] = st[sp + "post_layernorm.weight"]
        for g, h in (("ffn_up", "fc1"), ("ffn_down", "fc2")):
            for wb in ("weight", "bias"):
                out[f"{b}{g}.{wb}"] = msd[f"model.layers.{i}.mlp.{h}.{wb}"]
    # vision (EVA file, maybe overridden by BLIP-2's visual_encoder.*)
    v = {k: t.float() for k, t in eva.items()}
    v.update({k[len("visual_encoder."):]: t.float() for k, t in blip.items() if k.startswith("visual_encoder.")})
    W, p = v["patch_embed.proj.weight"].shape[0], v["patch_embed.proj.weight"].shape[2]
    S = image_size or s["image_size"]
    out["v.patch_embd.weight"] = v["patch_embed.proj.weight"].reshape(W, -1)
    out["v.patch_embd.bias"] = v["patch_embed.proj.bias"]
    out["v.cls"] = v["cls_token"].reshape(W)
    pos = v["pos_embed"][0]
    g0, g1 = math.isqrt(pos.shape[0] - 1), S // p
    if g0 != g1:
        grid = F.interpolate(pos[1:].T.reshape(1, W, g0, g0), size=(g1, g1), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:1], grid.reshape(W, g1 * g1).T])
    out["v.pos_embd"] = pos
    for i in range(s["vision_layers"]):
        b, e = f"v.blk.{i}.", f"blocks.{i}."
        out[b + "attn_qkv.weight"] = v[e + "attn.qkv.weight"]
        out[b + "attn_qkv.bias"] = torch.cat([v[e + "attn.q_bias"], torch.zeros(W), v[e + "attn.v_bias"]])
        for g, h in (("ln1", "norm1"), ("ln2", "norm2"), ("attn_out", "attn.proj"), ("ffn_up", "mlp.fc1"),
                     ("ffn_down", "mlp.fc2")):
            for wb in ("weight", "bias"):
                out[f"{b}{g}.{wb}"] = v[f"{e}{h}.{wb}"]
    q = dict(blip)
    q.update(st)   # the stage file's Q-Former (Dec-2023 stage 4) wins
    out["v.post_ln.weight"], out["v.post_ln.bias"] = q["ln_vision.weight"], q["ln_vision.bias"]
    out["qf.query"] = q["query_tokens"][0]
    out["qf.emb_ln.weight"] = q["Qformer.bert.embeddings.LayerNorm.weight"]
    out["qf.emb_ln.bias"] = q["Qformer.bert.embeddings.LayerNorm.bias"]
    names = {"attn_q": "attention.self.query", "attn_k": "attention.self.key", "attn_v": "attention.self.value",
             "attn_out": "attention.output.dense", "attn_ln": "attention.output.LayerNorm",
             "cross_q": "crossattention.self.query", "cross_k": "crossattention.self.key",
             "cross_v": "crossattention.self.value", "cross_out": "crossattention.output.dense",
             "cross_ln": "crossattention.output.LayerNorm", "ffn_up": "intermediate_query.dense",
             "ffn_down": "output_query.dense", "ffn_ln": "output_query.LayerNorm"}
    for k, t in q.items():
        if k.startswith("Qformer.bert.encoder.layer."):
            l, rest = k[len("Qformer.bert.encoder.layer."):].split(".", 1)
            mod, wb = rest.rsplit(".", 1)
            for g, n in names.items():
                if n == mod:
                    out[f"qf.blk.{l}.{g}.{wb}"] = t
    for g, n in (("mm.0", "llama_proj"), ("mm.1", "llama_proj2")):
        for wb in ("weight", "bias"):
            out[f"{g}.{wb}"] = st[f"{n}.{wb}"]
    return {k: t.float().numpy() for k, t in out.items()}


def assert_tensors(got, exp, rtol=1e-6, atol=1e-6):
    assert set(got) == set(exp), (sorted(set(got) ^ set(exp)))
    for k in exp:
        assert got[k].shape == exp[k].shape, (k, got[k].shape, exp[k].shape)
        np.testing.assert_allclose(got[k], exp[k], rtol=rtol, atol=atol, err_msg=k)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinygptv")
    return {
        1: fx.make_tinygptv_set(str(root / "s1"), stage=1, seed=1),
        2: fx.make_tinygptv_set(str(root / "s2"), stage=2, seed=2, lora_style="lora_A.default.weight"),
        3: fx.make_tinygptv_set(str(root / "s3"), stage=3, seed=3),
        4: fx.make_tinygptv_set(str(root / "s4"), stage=4, seed=4, phi_layout="msft", phi_fmt="safetensors"),
        "dec": fx.make_tinygptv_set(str(root / "dec"), stage=4, seed=5, dec2023=True, blip2_visual=True),
    }


def _lora_style_to_plain(exp_fn, s):
    """expected() reads plain lora_A.weight keys; map .default. keys for the set that uses them."""
    st_path = s["stage_file"]
    obj = torch.load(st_path, weights_only=True)
    if any(".default." in k for k in obj["model"]):
        plain = dict(s)
        plain_path = st_path + ".plain"
        obj["model"] = {k.replace(".default.", "."): v for k, v in obj["model"].items()}
        torch.save(obj, plain_path)
        plain["stage_file"] = plain_path
        try:
            return exp_fn(plain)
        finally:
            os.remove(plain_path)
    return exp_fn(s)


@pytest.mark.parametrize("key", [1, 2, 3, 4, "dec"])
def test_stage_converts_to_expected_tensors(tmp_path, sets, key):
    s = sets[key]
    got, meta = convert(s, tmp_path / "o.gguf")
    exp = _lora_style_to_plain(expected, s)
    assert_tensors(got, exp)
    n_layer = s["phi_model"].config.num_hidden_layers
    order = (schema.lm_tensor_names(n_layer, tinygptv=True) + schema.vision_tensor_names(s["vision_layers"])
             + schema.qformer_tensor_names(4, 2) + schema.projector_tensor_names())
    assert list(got) == order
    assert meta["general.architecture"] == "tinygptv"
    assert meta["tinygptv.stage"] == s["stage"]
    assert meta["tinygptv.vision.image_size"] == s["image_size"]


def test_dec2023_stage4_qformer_overrides_blip2(sets):
    s = sets["dec"]
    blip, st = load(s["blip2"]), load(s["stage_file"])
    k = "Qformer.bert.encoder.layer.2.attention.self.key.weight"
    assert not torch.equal(blip[k], st[k])
    assert "visual_encoder.blocks.0.attn.qkv.weight" in blip   # and BLIP-2's visual_encoder overrides eva


def test_lora_merge_value_by_hand(tmp_path, sets):
    """One qkv row picked by hand: row r of the [q;k;v] output is head h, part j, dim d of the 4.36 rows."""
    s = sets[3]
    got, _ = convert(s, tmp_path / "o.gguf")
    st = load(s["stage_file"])
    m = s["phi_model"]
    E, H = m.config.hidden_size, m.config.num_attention_heads
    D = E // H
    pfx = "llama_model.base_model.model.model.layers.1.self_attn.query_key_value."
    A, B = st[pfx + "lora_A.weight"], st[pfx + "lora_B.weight"]
    h, j, d = 2, 1, 5                       # head 2, the k part, dim 5
    row_436 = h * 3 * D + j * D + d
    row_out = j * E + h * D + d
    base = m.model.layers[1].self_attn.k_proj.weight.detach()[h * D + d]
    want = base + (s["lora_alpha"] / s["lora_r"]) * (B[row_436] @ A)
    np.testing.assert_allclose(got["blk.1.attn_qkv.weight"][row_out], want.numpy(), rtol=1e-6, atol=1e-6)


def test_lora_alpha_from_config_and_override(tmp_path, sets):
    s = sets[3]
    got, _ = convert(s, tmp_path / "a.gguf", lora_alpha=12.0)
    exp = expected(s, alpha=12.0)
    np.testing.assert_allclose(got["blk.0.attn_output.weight"], exp["blk.0.attn_output.weight"], rtol=1e-6, atol=1e-6)
    assert s["lora_alpha"] != 12.0


def test_pos_embed_interpolation_matches_torch(tmp_path, sets):
    s = sets[4]
    got, meta = convert(s, tmp_path / "o.gguf")
    eva = load(s["eva"])
    pos = eva["pos_embed"].float()          # [1, 1+16, W] for a 4x4 grid, fp16 in the file
    W = pos.shape[-1]
    grid = pos[:, 1:].reshape(1, 4, 4, W).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(64, W)
    assert meta["tinygptv.vision.image_size"] == 32
    np.testing.assert_array_equal(got["v.pos_embd"][0], pos[0, 0].numpy())
    np.testing.assert_allclose(got["v.pos_embd"][1:], want.numpy(), rtol=0, atol=1e-6)
    assert got["v.pos_embd"].shape == (65, W)


def test_image_size_sources(tmp_path):
    s = fx.make_tinygptv_set(str(tmp_path / "a"), stage=4, seed=7, image_size=24, save_config=True)
    _, meta = convert(s, tmp_path / "a.gguf")
    assert meta["tinygptv.vision.image_size"] == 24          # from the stage file's config
    got, meta = convert(s, tmp_path / "b.gguf", image_size=40)
    assert meta["tinygptv.vision.image_size"] == 40 and got["v.pos_embd"].shape[0] == 1 + 10 * 10
    s2 = fx.make_tinygptv_set(str(tmp_path / "c"), stage=4, seed=8, save_config=False)
    _, meta = convert(s2, tmp_path / "c.gguf")
    assert meta["tinygptv.stage"] == 3                        # no config: LoRA file -> stage 3 ...
    assert meta["tinygptv.vision.image_size"] == 16           # ... at the EVA grid size
    _, meta = convert(s2, tmp_path / "d.gguf", stage=4)
    assert meta["tinygptv.stage"] == 4 and meta["tinygptv.vision.image_size"] == 32   # x2 for stage 4
    with pytest.raises(ConvertError, match="not a positive multiple of the patch size"):
        convert(s2, tmp_path / "e.gguf", image_size=30)


def test_stage_detection(tmp_path, sets):
    for key, want in ((1, 1), (2, 2), (3, 3), (4, 4)):
        _, meta = convert(sets[key], tmp_path / f"{key}.gguf")
        assert meta["tinygptv.stage"] == want
    _, meta = convert(sets[3], tmp_path / "o.gguf", stage=2)
    assert meta["tinygptv.stage"] == 2


def test_vision_layers_flag(tmp_path, sets):
    got, meta = convert(sets[3], tmp_path / "o.gguf", vision_layers=3)
    assert meta["tinygptv.vision.block_count"] == 3 and "v.blk.2.ln1.weight" in got
    with pytest.raises(ConvertError, match="outside 1..3"):
        convert(sets[3], tmp_path / "p.gguf", vision_layers=4)


def test_metadata(tmp_path, sets):
    s = sets[3]
    _, meta = convert(s, tmp_path / "o.gguf")
    c = s["phi_model"].config
    assert meta["tinygptv.embedding_length"] == c.hidden_size
    assert meta["tinygptv.attention.head_count"] == c.num_attention_heads
    assert meta["tinygptv.rope.dimension_count"] == int(0.5 * c.hidden_size // c.num_attention_heads)
    assert meta["tinygptv.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert meta["tinygptv.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    assert meta["tinygptv.vision.patch_size"] == 4
    assert meta["tinygptv.vision.embedding_length"] == 48
    assert meta["tinygptv.vision.block_count"] == 2
    assert meta["tinygptv.vision.attention.head_count"] == 3
    assert meta["tinygptv.vision.feed_forward_length"] == 80
    assert meta["tinygptv.vision.attention.layer_norm_epsilon"] == pytest.approx(1e-6)
    assert meta["tinygptv.vision.post_norm_epsilon"] == pytest.approx(1e-5)
    assert meta["tinygptv.qformer.embedding_length"] == 32
    assert meta["tinygptv.qformer.block_count"] == 4
    assert meta["tinygptv.qformer.attention.head_count"] == 2
    assert meta["tinygptv.qformer.feed_forward_length"] == 48
    assert meta["tinygptv.qformer.query_count"] == 8
    assert meta["tinygptv.qformer.cross_attention_freq"] == 2
    assert meta["tinygptv.qformer.layer_norm_epsilon"] == pytest.approx(1e-12)
    np.testing.assert_allclose(meta["tinygptv.image.mean"], schema.CLIP_MEAN, rtol=1e-6)
    np.testing.assert_allclose(meta["tinygptv.image.std"], schema.CLIP_STD, rtol=1e-6)
    assert meta["tinygptv.chat.template"] == "###Human: <Img><ImageHere></Img> {prompt}###Assistant: "
    assert meta["tinygptv.chat.system"].startswith("Give the following image: <Img>ImageContent</Img>.")
    assert meta["tinygptv.chat.stop_strings"] == ["###"]
    vocab = meta["tokenizer.ggml.tokens"]
    assert meta["tinygptv.chat.stop_ids"] == [vocab.index("###"), vocab.index("<|endoftext|>")]
    assert meta["tinygptv.chat.temperature"] == pytest.approx(1.0)
    assert meta["tinygptv.chat.top_p"] == pytest.approx(0.9)
    assert meta["tinygptv.chat.repetition_penalty"] == pytest.approx(1.05)
    assert meta["tinygptv.chat.max_new_tokens"] == 300
    assert meta["tokenizer.ggml.model"] == "gpt2"
    _, m4 = convert(sets[4], tmp_path / "4.gguf")
    assert m4["tinygptv.chat.template"] == "<s>[INST] <Img><ImageHere></Img> {prompt} [/INST]"
    assert m4["tinygptv.chat.turn_template"] == "<s>[INST] {prompt} [/INST]"
    assert m4["tinygptv.chat.system"] == ""
    assert m4["tinygptv.chat.temperature"] == pytest.approx(0.6) and m4["tinygptv.chat.max_new_tokens"] == 500


def test_cli_with_chat_overrides(tmp_path, sets, capsys):
    s = sets[1]
    out = str(tmp_path / "cli.gguf")
    rc = cli_main(["tinygptv", "--phi2", s["phi2"], "--eva", s["eva"], "--blip2", s["blip2"],
                   "--stage-file", s["stage_file"], "-o", out, "--outtype", "f16", "--vision-head-size", "16",
                   "--qformer-head-size", "16", "--template", "USER: <ImageHere> {prompt}\nASSISTANT:",
                   "--system", "", "--stop", "USER:", "--stop", "###", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    r = gguf.GGUFReader(out)
    types = {t.name: t.tensor_type for t in r.tensors}
    assert types["blk.0.attn_qkv.weight"] == gguf.GGMLQuantizationType.F16
    assert types["v.patch_embd.weight"] == gguf.GGMLQuantizationType.F16
    for name in ("v.pos_embd", "v.cls", "qf.query", "blk.0.attn_q_norm.weight", "v.blk.0.attn_qkv.bias"):
        assert types[name] == gguf.GGMLQuantizationType.F32, name
    meta = {k: f.contents() for k, f in r.fields.items()}
    assert meta["tinygptv.chat.template"] == "USER: <ImageHere> {prompt}\nASSISTANT:"
    assert meta["tinygptv.chat.system"] == ""
    assert meta["tinygptv.chat.stop_strings"] == ["USER:", "###"]
    assert meta["general.file_type"] == 1
    rc = cli_main(["tinygptv", "--phi2", s["phi2"], "--eva", s["eva"], "--blip2", s["blip2"],
                   "--stage-file", s["stage_file"], "-o", out, "--template", "no placeholder",
                   "--vision-head-size", "16", "--qformer-head-size", "16", "--no-progress"])
    assert rc == 1 and "must contain <ImageHere>" in capsys.readouterr().err


# ------------------------------------------------------------------------- reference cross-checks

@pytest.mark.parametrize("key", [3, 4, "dec"])
def test_gguf_equals_reference_weights(tmp_path, sets, key):
    """The converter's tensors equal the weights the independent reference builds from the same files."""
    s = sets[key]
    got, _ = convert(s, tmp_path / "o.gguf")
    r = ref.TinyGPTVReference(**ref.reference_kwargs(s, lora_merged=True))
    att = r.phi.model.layers[1].self_attn
    np.testing.assert_allclose(got["blk.1.attn_qkv.weight"],
                               torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]).detach().numpy(),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["blk.1.attn_output.weight"], att.dense.weight.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got["blk.1.attn_post_norm.weight"], r.phi.model.layers[1].post_rms.weight.detach().numpy())
    np.testing.assert_array_equal(got["blk.0.attn_k_norm.bias"], att.k_layernorm.bias.detach().numpy())
    emb = r.vision.embeddings
    np.testing.assert_allclose(got["v.pos_embd"], emb.position_embedding[0].detach().numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got["v.blk.1.attn_qkv.bias"], r.vision.encoder.layers[1].self_attn.qkv.bias.detach().numpy())
    np.testing.assert_array_equal(got["qf.blk.2.cross_k.weight"],
                                  r.qformer.encoder.layer[2].crossattention.attention.key.weight.detach().numpy())


@pytest.mark.parametrize("key", [3, 4])
def test_reference_lora_merged_equals_unmerged(sets, key):
    s = sets[key]
    S = s["image_size"]
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(3, S, S, generator=g)
    ids = [5, 17, 42, 99, 7, 250, 3]
    a = ref.TinyGPTVReference(**ref.reference_kwargs(s, lora_merged=False)).logits(ids, pixels, image_at=3)
    b = ref.TinyGPTVReference(**ref.reference_kwargs(s, lora_merged=True)).logits(ids, pixels, image_at=3)
    assert a.shape == (len(ids) + 8, s["phi_model"].config.vocab_size)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * a.abs().max().item())
    c = ref.TinyGPTVReference(**ref.reference_kwargs(s, lora_merged=True, lora_alpha=0.0)).logits(ids, pixels, image_at=3)
    assert (a - c).abs().max() > 1e-3     # the LoRA update matters in these fixtures


def _plain_vit(v, x, heads, depth, grid):
    """EVA ViT from the spec, by hand: patchify, CLS, pos-embed, pre-norm blocks, no final norm."""
    W = v["cls_token"].shape[-1]
    p = v["patch_embed.proj.weight"].shape[-1]
    t = F.conv2d(x[None], v["patch_embed.proj.weight"], v["patch_embed.proj.bias"], stride=p)
    t = t.flatten(2).transpose(1, 2)[0]
    t = torch.cat([v["cls_token"].reshape(1, W), t]) + ref.interpolate_pos(v["pos_embed"], grid)[0]
    for i in range(depth):
        b = f"blocks.{i}."
        h = F.layer_norm(t, (W,), v[b + "norm1.weight"], v[b + "norm1.bias"], eps=1e-6)
        qkv = h @ v[b + "attn.qkv.weight"].T + torch.cat([v[b + "attn.q_bias"], torch.zeros(W), v[b + "attn.v_bias"]])
        q, k, vv = qkv.reshape(-1, 3, heads, W // heads).permute(1, 2, 0, 3)
        a = torch.softmax((q * (W // heads) ** -0.5) @ k.transpose(-1, -2), -1) @ vv
        t = t + a.transpose(0, 1).reshape(-1, W) @ v[b + "attn.proj.weight"].T + v[b + "attn.proj.bias"]
        h = F.layer_norm(t, (W,), v[b + "norm2.weight"], v[b + "norm2.bias"], eps=1e-6)
        t = t + F.gelu(h @ v[b + "mlp.fc1.weight"].T + v[b + "mlp.fc1.bias"]) @ v[b + "mlp.fc2.weight"].T + v[b + "mlp.fc2.bias"]
    return t


def _plain_qformer(q, img, heads, freq=2):
    def attn(x, kv, pre):
        Wd = x.shape[-1]
        Q = x @ q[pre + "self.query.weight"].T + q[pre + "self.query.bias"]
        K = kv @ q[pre + "self.key.weight"].T + q[pre + "self.key.bias"]
        V = kv @ q[pre + "self.value.weight"].T + q[pre + "self.value.bias"]
        sh = lambda t: t.reshape(t.shape[0], heads, -1).transpose(0, 1)  # noqa: E731
        a = torch.softmax(sh(Q) @ sh(K).transpose(-1, -2) / math.sqrt(Wd // heads), -1) @ sh(V)
        o = a.transpose(0, 1).reshape(x.shape[0], Wd) @ q[pre + "output.dense.weight"].T + q[pre + "output.dense.bias"]
        return F.layer_norm(o + x, (Wd,), q[pre + "output.LayerNorm.weight"], q[pre + "output.LayerNorm.bias"], eps=1e-12)
    h = q["query_tokens"][0]
    Wq = h.shape[-1]
    h = F.layer_norm(h, (Wq,), q["Qformer.bert.embeddings.LayerNorm.weight"], q["Qformer.bert.embeddings.LayerNorm.bias"], eps=1e-12)
    nl = len({k.split(".")[4] for k in q if k.startswith("Qformer.bert.encoder.layer.")})
    for l in range(nl):
        p = f"Qformer.bert.encoder.layer.{l}."
        h = attn(h, h, p + "attention.")
        if l % freq == 0:
            h = attn(h, img, p + "crossattention.")
        f = F.gelu(h @ q[p + "intermediate_query.dense.weight"].T + q[p + "intermediate_query.dense.bias"])
        h = F.layer_norm(f @ q[p + "output_query.dense.weight"].T + q[p + "output_query.dense.bias"] + h, (Wq,),
                         q[p + "output_query.LayerNorm.weight"], q[p + "output_query.LayerNorm.bias"], eps=1e-12)
    return h


@pytest.mark.parametrize("key", [3, "dec"])
def test_reference_vision_path_equals_plain_spec_forward(sets, key):
    """transformers' Blip2 modules with the mapped weights == the spec's EVA/Q-Former by hand."""
    s = sets[key]
    S = s["image_size"]
    pixels = torch.randn(3, S, S, generator=torch.Generator().manual_seed(1))
    r = ref.TinyGPTVReference(**ref.reference_kwargs(s))
    eva, blip, st = load(s["eva"]), load(s["blip2"]), load(s["stage_file"])
    v = {k: t.float() for k, t in eva.items()}
    v.update({k[len("visual_encoder."):]: t.float() for k, t in blip.items() if k.startswith("visual_encoder.")})
    q = {k: t.float() for k, t in {**blip, **st}.items() if t.is_floating_point()}
    with torch.no_grad():
        t = _plain_vit(v, pixels, s["vision_heads"], s["vision_layers"], S // s["patch"])
        t = F.layer_norm(t, (t.shape[-1],), q["ln_vision.weight"], q["ln_vision.bias"], eps=1e-5)
        torch.testing.assert_close(r.vision_tokens(pixels), t, rtol=1e-5, atol=1e-5)
        h = _plain_qformer(q, t, s["qformer_heads"])
        e = (h @ st["llama_proj.weight"].T + st["llama_proj.bias"]) @ st["llama_proj2.weight"].T + st["llama_proj2.bias"]
        torch.testing.assert_close(r.image_embeddings(pixels), e, rtol=1e-5, atol=1e-5)


def test_reference_preprocess():
    from PIL import Image
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (13, 21, 3), dtype=np.uint8))
    x = ref.preprocess(img, 16)
    want = np.asarray(img.resize((16, 16), Image.BICUBIC), dtype=np.float32) / 255.0
    want = (want - np.array(schema.CLIP_MEAN, dtype=np.float32)) / np.array(schema.CLIP_STD, dtype=np.float32)
    np.testing.assert_allclose(x.numpy(), want.transpose(2, 0, 1), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------ errors

def _ls(p):
    return sorted(os.listdir(p))


def test_missing_files(tmp_path, sets):
    s = dict(sets[3])
    for key in ("eva", "blip2", "stage_file"):
        bad = dict(s, **{key: str(tmp_path / "nope.pth")})
        with pytest.raises(ConvertError, match="not found: .*nope.pth"):
            convert(bad, tmp_path / "o.gguf")
    with pytest.raises(ConvertError, match="not found"):
        convert(dict(s, phi2=str(tmp_path / "nophi")), tmp_path / "o.gguf")
    assert _ls(tmp_path) == []


def test_wrong_checkpoints(tmp_path, sets):
    s = sets[3]
    with pytest.raises(ConvertError, match="not a TinyGPT-V stage file"):
        convert(dict(s, stage_file=s["blip2"]), tmp_path / "o.gguf")
    with pytest.raises(ConvertError, match="not a TinyGPT-V stage file"):
        convert(dict(s, stage_file=s["eva"]), tmp_path / "o.gguf")
    with pytest.raises(ConvertError, match="not an EVA ViT checkpoint"):
        convert(dict(s, eva=s["blip2"]), tmp_path / "o.gguf")
    with pytest.raises(ConvertError, match="not a BLIP-2 checkpoint"):
        convert(dict(s, blip2=s["eva"]), tmp_path / "o.gguf")
    assert _ls(tmp_path) == []


def test_truncated_stage_file(tmp_path, sets):
    s = sets[3]
    data = open(s["stage_file"], "rb").read()
    for n in (len(data) // 2, 100):
        p = tmp_path / f"trunc{n}.pth"
        p.write_bytes(data[:n])
        with pytest.raises(ConvertError, match="truncated or corrupt"):
            convert(dict(s, stage_file=str(p)), tmp_path / "o.gguf")
    assert "o.gguf" not in _ls(tmp_path)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_stage_file(tmp_path, sets):
    s = sets[3]
    marker = str(tmp_path / "pwned")
    p = tmp_path / "evil.pth"
    obj = torch.load(s["stage_file"], weights_only=True)
    obj["config"] = {"model": _Evil(marker)}
    torch.save(obj, p)
    with pytest.raises(ConvertError, match="refusing to load"):
        convert(dict(s, stage_file=str(p)), tmp_path / "o.gguf")
    with open(tmp_path / "evil2.pth", "wb") as f:
        pickle.dump({"model": _Evil(marker)}, f)
    with pytest.raises(ConvertError, match="refusing to load"):
        convert(dict(s, eva=str(tmp_path / "evil2.pth")), tmp_path / "o.gguf")
    assert not os.path.exists(marker)
    assert "o.gguf" not in _ls(tmp_path)


def test_all_key_problems_in_one_error(tmp_path, sets):
    s = sets[3]
    obj = torch.load(s["stage_file"], weights_only=True)
    sd = obj["model"]
    pfx = "llama_model.base_model.model.model."
    del sd[pfx + "layers.1.post_layernorm.weight"]
    del sd[pfx + "layers.0.self_attn.dense.lora_B.weight"]
    sd["llama_proj2.weight"] = torch.zeros(64, 57)
    sd[pfx + "layers.0.self_attn.q_layernorm.weight"] = torch.zeros(17)
    sd["llama_model.base_model.model.lm_head.lora_A.weight"] = torch.zeros(2, 2)
    sd["something_else.weight"] = torch.zeros(2)
    stage = tmp_path / "bad_stage.pth"
    torch.save(obj, stage)
    eva = torch.load(s["eva"], weights_only=True)
    del eva["blocks.1.attn.v_bias"]
    eva["blocks.0.mlp.fc2.bias"] = torch.zeros(47)
    eva["rel_pos_bias.table"] = torch.zeros(3)
    torch.save(eva, tmp_path / "bad_eva.pth")
    with pytest.raises(ConvertError) as e:
        convert(dict(s, stage_file=str(stage), eva=str(tmp_path / "bad_eva.pth")), tmp_path / "o.gguf")
    msg = str(e.value)
    for needle in (pfx + "layers.1.post_layernorm.weight", pfx + "layers.0.self_attn.dense.lora_B.weight",
                   "llama_proj2.weight (64, 57) (expected (64, 56)", pfx + "layers.0.self_attn.q_layernorm.weight (17,)",
                   "llama_model.base_model.model.lm_head.lora_A.weight", "something_else.weight",
                   "visual_encoder.blocks.1.attn.v_bias", "visual_encoder.blocks.0.mlp.fc2.bias (47,)",
                   "rel_pos_bias.table"):
        assert needle in msg, needle
    assert "o.gguf" not in _ls(tmp_path)


def test_interrupted_tinygptv_write(tmp_path, sets, monkeypatch):
    from tinygptv_native.convert import tinygptv as tg
    real = tg.interpolate_pos_embed

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(tg, "interpolate_pos_embed", boom)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        convert(sets[4], out / "o.gguf")
    assert _ls(out) == []
    monkeypatch.setattr(tg, "interpolate_pos_embed", real)


def test_unwritable_output_dir_checked_first(tmp_path, sets):
    with pytest.raises(ConvertError, match="output directory does not exist"):
        convert(sets[3], tmp_path / "missing" / "o.gguf")


def _plain_phi_logits(s, ids, merged_alpha):
    """The modified Phi-2 of the spec (section 5.4) by hand, from the original files, LoRA merged."""
    m = s["phi_model"]
    c = m.config
    E, H, L = c.hidden_size, c.num_attention_heads, c.num_hidden_layers
    D = E // H
    R = int(c.rope_parameters["partial_rotary_factor"] * D)
    sd = {k: v.float() for k, v in m.state_dict().items()}
    st = load(s["stage_file"])
    pfx = "llama_model.model." if s["stage"] == 1 else "llama_model.base_model.model.model."
    x = sd["model.embed_tokens.weight"][torch.tensor(ids)]
    T = x.shape[0]
    inv = 10000.0 ** (-torch.arange(0, R, 2).float() / R)
    ang = torch.arange(T).float()[:, None] * inv[None]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)

    def rope(t):   # t [H, T, D]; NeoX rotate-half on the first R dims
        r, rest = t[..., :R], t[..., R:]
        rot = torch.cat([-r[..., R // 2:], r[..., :R // 2]], -1)
        return torch.cat([r * cos + rot * sin, rest], -1)

    for i in range(L):
        p, sp = f"model.layers.{i}.", f"{pfx}layers.{i}."
        h = F.layer_norm(x, (E,), st[sp + "input_layernorm.weight"], sd[p + "input_layernorm.bias"], eps=1e-5)
        wq = torch.stack([sd[p + f"self_attn.{n}_proj.weight"].reshape(H, D, E) for n in "qkv"], 1).reshape(3 * E, E)
        bq = torch.stack([sd[p + f"self_attn.{n}_proj.bias"].reshape(H, D) for n in "qkv"], 1).reshape(3 * E)
        wd = sd[p + "self_attn.dense.weight"]
        if s["stage"] != 1:
            A, B = st[sp + "self_attn.query_key_value.lora_A.weight"], st[sp + "self_attn.query_key_value.lora_B.weight"]
            wq = wq + merged_alpha / A.shape[0] * (B @ A)
            A, B = st[sp + "self_attn.dense.lora_A.weight"], st[sp + "self_attn.dense.lora_B.weight"]
            wd = wd + merged_alpha / A.shape[0] * (B @ A)
        qkv = (h @ wq.T + bq).view(T, H, 3, D)               # per-head interleaved
        q, k, v = (qkv[:, :, j].transpose(0, 1) for j in range(3))
        q = F.layer_norm(q, (D,), st[sp + "self_attn.q_layernorm.weight"], torch.zeros(D), eps=1e-5)
        k = F.layer_norm(k, (D,), st[sp + "self_attn.k_layernorm.weight"], torch.zeros(D), eps=1e-5)
        q, k = rope(q), rope(k)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(D) + torch.full((T, T), float("-inf")).triu(1)
        o = (torch.softmax(att, -1) @ v).transpose(0, 1).reshape(T, E)
        a = o @ wd.T + sd[p + "self_attn.dense.bias"]
        a = st[sp + "post_layernorm.weight"] * (a * torch.rsqrt(a.pow(2).mean(-1, keepdim=True) + 1e-6))
        f = F.gelu(h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"], approximate="tanh")
        x = a + f @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"] + x
    x = F.layer_norm(x, (E,), st[pfx + "final_layernorm.weight"], sd["model.final_layernorm.bias"], eps=1e-5)
    return x @ sd["lm_head.weight"].T + sd["lm_head.bias"]


@pytest.mark.parametrize("key", [1, 3])
def test_reference_language_model_equals_plain_spec_forward(sets, key):
    s = sets[key]
    ids = [5, 17, 42, 99, 7, 250, 3, 11, 300]
    r = ref.TinyGPTVReference(**ref.reference_kwargs(s))
    want = _plain_phi_logits(s, ids, s["lora_alpha"])
    got = r.logits(ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize("content", [b"not a checkpoint at all", bytes(range(256)) * 4, b"PK\x03\x04" + b"\x00" * 60])
def test_garbage_files(tmp_path, sets, content):
    p = tmp_path / "garbage.pth"
    p.write_bytes(content)
    for key in ("eva", "blip2", "stage_file"):
        with pytest.raises(ConvertError, match=r"garbage.pth: (truncated or corrupt|it is not a weights-only)"):
            convert(dict(sets[3], **{key: str(p)}), tmp_path / "o.gguf")
    p.write_bytes(b"")
    with pytest.raises(ConvertError, match="is empty"):
        convert(dict(sets[3], eva=str(p)), tmp_path / "o.gguf")
    assert _ls(tmp_path) == ["garbage.pth"]
