"""Converter tests: every Phi-2 layout, tokenizers, output types and the error cases.

Values are checked against independent sources: the transformers model the fixture was made from,
the tokenizer files themselves, sentencepiece, and gguf-py's GGUFReader for reading the output.
The TinyGPT-V converter tests are in tests/test_convert_tinygptv.py.
"""

import json
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from tinygptv_native.convert import ConvertError, convert_phi2  # noqa: E402
from tinygptv_native.convert import schema  # noqa: E402
from tinygptv_native.convert.cli import main as cli_main  # noqa: E402
from fixtures import checkpoints as fx  # noqa: E402


def read_gguf(path):
    r = gguf.GGUFReader(path)
    tensors = {t.name: t for t in r.tensors}
    fields = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    return r, tensors, fields


def as_f32(t):
    if t.tensor_type == gguf.GGMLQuantizationType.BF16:
        return gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(tuple(reversed([int(x) for x in t.shape])))
    return np.asarray(t.data, dtype=np.float32)


@pytest.fixture(scope="module")
def phi_model():
    return fx.make_phi2_model(seed=3)


def expected_phi2_tensors(model):
    """What the GGUF must hold, computed from the transformers model directly."""
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    exp = {"token_embd.weight": sd["model.embed_tokens.weight"],
           "output_norm.weight": sd["model.final_layernorm.weight"],
           "output_norm.bias": sd["model.final_layernorm.bias"],
           "output.weight": sd["lm_head.weight"], "output.bias": sd["lm_head.bias"]}
    for i in range(model.config.num_hidden_layers):
        p = f"model.layers.{i}."
        for wb in ("weight", "bias"):
            exp[f"blk.{i}.attn_norm.{wb}"] = sd[p + "input_layernorm." + wb]
            exp[f"blk.{i}.attn_qkv.{wb}"] = np.concatenate([sd[p + f"self_attn.{x}_proj.{wb}"] for x in "qkv"])
            exp[f"blk.{i}.attn_output.{wb}"] = sd[p + "self_attn.dense." + wb]
            exp[f"blk.{i}.ffn_up.{wb}"] = sd[p + "mlp.fc1." + wb]
            exp[f"blk.{i}.ffn_down.{wb}"] = sd[p + "mlp.fc2." + wb]
            if model.config.qk_layernorm:
                exp[f"blk.{i}.attn_q_norm.{wb}"] = sd[p + "self_attn.q_layernorm." + wb]
                exp[f"blk.{i}.attn_k_norm.{wb}"] = sd[p + "self_attn.k_layernorm." + wb]
    return exp


@pytest.mark.parametrize("layout,fmt", [("4.36", "bin"), ("4.36", "safetensors"), ("4.37", "safetensors"),
                                        ("msft", "safetensors"), ("4.36", "sharded-bin"),
                                        ("4.37", "sharded-safetensors"), ("msft", "bin")])
def test_phi2_layouts_give_the_model_tensors(tmp_path, phi_model, layout, fmt):
    d = fx.save_phi2(phi_model, str(tmp_path / "phi"), layout=layout, fmt=fmt)
    out = str(tmp_path / "phi.gguf")
    convert_phi2(d, out, outtype="f32", progress=False)
    _, tensors, fields = read_gguf(out)
    exp = expected_phi2_tensors(phi_model)
    assert set(tensors) == set(exp)
    assert list(tensors) == schema.lm_tensor_names(phi_model.config.num_hidden_layers)
    for name, want in exp.items():
        t = tensors[name]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        np.testing.assert_array_equal(np.asarray(t.data), want, err_msg=name)
    assert fields["general.architecture"] == "phi2"
    assert fields["general.file_type"] == 0


def test_phi2_metadata_as_llama_cpp(tmp_path):
    d, model = fx.make_phi2_folder(str(tmp_path / "phi"), layout="4.36", hidden_size=80, num_attention_heads=5,
                                   partial_rotary_factor=0.4, intermediate_size=320, num_hidden_layers=3,
                                   rope_theta=5000.0)
    out = str(tmp_path / "o.gguf")
    convert_phi2(d, out, outtype="f32", progress=False)
    _, _, f = read_gguf(out)
    c = model.config
    assert f["phi2.context_length"] == c.max_position_embeddings
    assert f["phi2.embedding_length"] == 80
    assert f["phi2.feed_forward_length"] == 320
    assert f["phi2.block_count"] == 3
    assert f["phi2.attention.head_count"] == 5 and f["phi2.attention.head_count_kv"] == 5
    assert f["phi2.rope.dimension_count"] == int(0.4 * 80) // 5 == 6
    assert f["phi2.rope.freq_base"] == pytest.approx(5000.0)
    assert f["phi2.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    assert f["tokenizer.ggml.add_bos_token"] is False
    assert f["general.quantization_version"] == 2


def test_phi2_qk_layernorm_checkpoint(tmp_path):
    model = fx.make_phi2_model(seed=5, qk_layernorm=True)
    d = fx.save_phi2(model, str(tmp_path / "phi"), layout="4.37", fmt="safetensors")
    out = str(tmp_path / "o.gguf")
    convert_phi2(d, out, outtype="f32", progress=False)
    _, tensors, _ = read_gguf(out)
    for name, want in expected_phi2_tensors(model).items():
        np.testing.assert_array_equal(np.asarray(tensors[name].data), want, err_msg=name)
    assert "blk.0.attn_q_norm.weight" in tensors


def test_phi2_gpt2_tokenizer_matches_files(tmp_path, phi_model):
    d = fx.save_phi2(phi_model, str(tmp_path / "phi"), layout="4.36", fmt="bin")
    out = str(tmp_path / "o.gguf")
    convert_phi2(d, out, outtype="f32", progress=False)
    _, _, f = read_gguf(out)
    vocab = json.load(open(os.path.join(d, "vocab.json"), encoding="utf-8"))
    added = json.load(open(os.path.join(d, "added_tokens.json"), encoding="utf-8"))
    merges = [ln.rstrip("\n") for ln in open(os.path.join(d, "merges.txt"), encoding="utf-8")][1:]
    tokens, ttypes = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"]
    n_rows = phi_model.config.vocab_size
    assert len(tokens) == len(ttypes) == n_rows
    eot = vocab["<|endoftext|>"]
    for t, i in vocab.items():
        assert tokens[i] == t
        assert ttypes[i] == (schema.TOKEN_CONTROL if i == eot else schema.TOKEN_NORMAL)
    for t, i in added.items():
        assert tokens[i] == t and ttypes[i] == schema.TOKEN_USER_DEFINED
    n_real = len(vocab) + len(added)
    for i in range(n_real, n_rows):
        assert tokens[i] == f"[PAD{i}]" and ttypes[i] == schema.TOKEN_UNUSED
    assert f["tokenizer.ggml.merges"] == [m for m in merges if m]
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "phi-2"
    for k in ("bos", "eos", "unknown"):
        assert f[f"tokenizer.ggml.{k}_token_id"] == eot


def test_phi2_tokenizer_json_equals_vocab_files(tmp_path, phi_model):
    outs = []
    for kind in ("files", "json"):
        d = fx.save_phi2(phi_model, str(tmp_path / kind), layout="4.36", fmt="bin", tokenizer=kind)
        out = str(tmp_path / f"{kind}.gguf")
        convert_phi2(d, out, outtype="f32", progress=False)
        outs.append(read_gguf(out)[2])
    assert os.path.exists(tmp_path / "json" / "tokenizer.json") and not os.path.exists(tmp_path / "json" / "vocab.json")
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                "tokenizer.ggml.eos_token_id"):
        assert outs[0][key] == outs[1][key], key


@pytest.mark.parametrize("model_type,dummy", [("bpe", True), ("unigram", False)])
def test_sentencepiece_tokenizer(tmp_path, phi_model, model_type, dummy):
    import sentencepiece as spm
    d = fx.save_phi2(phi_model, str(tmp_path / "phi"), layout="4.37", fmt="safetensors", tokenizer=None)
    path = fx.make_spm_tokenizer(d, vocab_size=360, model_type=model_type, add_dummy_prefix=dummy)
    out = str(tmp_path / "o.gguf")
    convert_phi2(d, out, outtype="f32", progress=False)
    _, _, f = read_gguf(out)
    sp = spm.SentencePieceProcessor(model_file=path)
    n = sp.get_piece_size()
    tokens, scores, ttypes = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.scores"], f["tokenizer.ggml.token_type"]
    assert len(tokens) == len(scores) == len(ttypes) == phi_model.config.vocab_size
    for i in range(n):
        assert tokens[i] == sp.id_to_piece(i)
        assert scores[i] == pytest.approx(sp.get_score(i))
        want = (schema.TOKEN_UNKNOWN if sp.is_unknown(i) else schema.TOKEN_CONTROL if sp.is_control(i)
                else schema.TOKEN_BYTE if sp.is_byte(i) else schema.TOKEN_UNUSED if sp.is_unused(i) else None)
        if want is not None:
            assert ttypes[i] == want, (i, tokens[i])
        else:
            assert ttypes[i] in (schema.TOKEN_NORMAL, schema.TOKEN_USER_DEFINED)
    assert tokens[sp.piece_to_id("###")] == "###" and ttypes[sp.piece_to_id("###")] == schema.TOKEN_USER_DEFINED
    assert tokens[sp.piece_to_id("<0x41>")] == "<0x41>" and ttypes[sp.piece_to_id("<0x41>")] == schema.TOKEN_BYTE
    for i in range(n, len(tokens)):
        assert tokens[i] == f"[PAD{i}]" and ttypes[i] == schema.TOKEN_UNUSED
    assert f["tokenizer.ggml.model"] == "llama"
    assert f["tokenizer.ggml.spm_algorithm"] == model_type
    assert f["tokenizer.ggml.add_space_prefix"] is dummy
    assert f["tokenizer.ggml.bos_token_id"] == sp.bos_id() and f["tokenizer.ggml.eos_token_id"] == sp.eos_id()
    assert f["tokenizer.ggml.unknown_token_id"] == sp.unk_id()
    assert "tokenizer.ggml.merges" not in f and "tokenizer.ggml.pre" not in f


@pytest.mark.parametrize("outtype,gtype,tol", [("f16", gguf.GGMLQuantizationType.F16, 1e-3),
                                               ("bf16", gguf.GGMLQuantizationType.BF16, 8e-3)])
def test_phi2_half_outtypes(tmp_path, phi_model, outtype, gtype, tol):
    d = fx.save_phi2(phi_model, str(tmp_path / "phi"), layout="4.36", fmt="bin")
    out = str(tmp_path / "o.gguf")
    convert_phi2(d, out, outtype=outtype, progress=False)
    _, tensors, f = read_gguf(out)
    assert f["general.file_type"] == schema.FILE_TYPE[outtype]
    for name, want in expected_phi2_tensors(phi_model).items():
        t = tensors[name]
        assert t.tensor_type == (gtype if want.ndim == 2 else gguf.GGMLQuantizationType.F32), name
        got = as_f32(t)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max(), err_msg=name)
    if outtype == "bf16":   # round-to-nearest-even, as torch does
        w = expected_phi2_tensors(phi_model)["blk.0.ffn_up.weight"]
        np.testing.assert_array_equal(as_f32(tensors["blk.0.ffn_up.weight"]),
                                      torch.from_numpy(w).bfloat16().float().numpy())


def test_phi2_fp16_checkpoint(tmp_path, phi_model):
    d = fx.save_phi2(phi_model, str(tmp_path / "phi"), layout="4.36", fmt="bin", dtype=torch.float16)
    out = str(tmp_path / "o.gguf")
    convert_phi2(d, out, outtype="f32", progress=False)
    _, tensors, _ = read_gguf(out)
    for name, want in expected_phi2_tensors(phi_model).items():
        np.testing.assert_array_equal(np.asarray(tensors[name].data),
                                      torch.from_numpy(want).half().float().numpy(), err_msg=name)


def test_quantized_outtype_goes_through_quantize_file(tmp_path, phi_model, monkeypatch):
    d = fx.save_phi2(phi_model, str(tmp_path / "phi"), layout="4.36", fmt="bin")
    calls = []

    def fake_quantize_file(in_path, out_path, type, progress=True):
        r = gguf.GGUFReader(in_path)   # the intermediate is a complete F32 file
        assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in r.tensors)
        calls.append((in_path, out_path, type))
        with open(out_path, "wb") as fo, open(in_path, "rb") as fi:
            fo.write(fi.read())

    mod = types.ModuleType("tinygptv_native.convert.quantize")
    mod.quantize_file = fake_quantize_file
    monkeypatch.setitem(sys.modules, "tinygptv_native.convert.quantize", mod)
    out = str(tmp_path / "q.gguf")
    convert_phi2(d, out, outtype="q8_0", progress=False)
    assert len(calls) == 1 and calls[0][1] == os.path.abspath(out) and calls[0][2] == "q8_0"
    assert not os.path.exists(calls[0][0])
    assert sorted(os.listdir(tmp_path)) == ["phi", "q.gguf"]


def test_cli_phi2(tmp_path, phi_model, capsys):
    d = fx.save_phi2(phi_model, str(tmp_path / "phi"), layout="msft", fmt="safetensors")
    out = str(tmp_path / "cli.gguf")
    assert cli_main(["convert", "phi2", d, "-o", out, "--outtype", "f32", "--no-progress"]) == 0
    _, tensors, f = read_gguf(out)
    np.testing.assert_array_equal(np.asarray(tensors["output.bias"].data),
                                  phi_model.lm_head.bias.detach().numpy())
    assert cli_main(["phi2", str(tmp_path / "nope"), "-o", out]) == 1
    assert "not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- errors

def _listing(p):
    return sorted(os.listdir(p))


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(ConvertError, match="not found"):
        convert_phi2(str(tmp_path / "missing"), str(tmp_path / "o.gguf"), progress=False)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ConvertError, match="config"):
        convert_phi2(str(tmp_path / "empty"), str(tmp_path / "o.gguf"), progress=False)
    assert _listing(tmp_path) == ["empty"]


def test_missing_and_misshaped_tensors_listed_together(tmp_path, phi_model):
    d = fx.save_phi2(phi_model, str(tmp_path / "phi"), layout="4.36", fmt="safetensors")
    from safetensors.torch import load_file, save_file
    sd = load_file(os.path.join(d, "model.safetensors"))
    del sd["model.layers.1.mlp.fc2.bias"]
    del sd["model.final_layernorm.weight"]
    sd["model.layers.0.self_attn.dense.weight"] = torch.zeros(64, 63)
    sd["model.layers.0.mlp.extra.weight"] = torch.zeros(3)
    save_file(sd, os.path.join(d, "model.safetensors"))
    with pytest.raises(ConvertError) as e:
        convert_phi2(d, str(tmp_path / "o.gguf"), progress=False)
    msg = str(e.value)
    for needle in ("model.layers.1.mlp.fc2.bias", "model.final_layernorm.weight",
                   "model.layers.0.self_attn.dense.weight (64, 63) (expected (64, 64))", "model.layers.0.mlp.extra.weight",
                   "missing (2)", "wrong shape (1)", "unexpected (1)"):
        assert needle in msg
    assert _listing(tmp_path) == ["phi"]


def test_not_a_phi2_checkpoint(tmp_path, phi_model):
    d = fx.save_phi2(phi_model, str(tmp_path / "phi"), layout="4.36", fmt="bin")
    torch.save({"encoder.weight": torch.zeros(2, 2)}, os.path.join(d, "pytorch_model.bin"))
    with pytest.raises(ConvertError, match="not a Phi-2 checkpoint"):
        convert_phi2(d, str(tmp_path / "o.gguf"), progress=False)


def test_truncated_bin(tmp_path, phi_model):
    d = fx.save_phi2(phi_model, str(tmp_path / "phi"), layout="4.36", fmt="bin")
    p = os.path.join(d, "pytorch_model.bin")
    data = open(p, "rb").read()
    open(p, "wb").write(data[: len(data) // 2])
    with pytest.raises(ConvertError, match="truncated or corrupt"):
        convert_phi2(d, str(tmp_path / "o.gguf"), progress=False)
    assert _listing(tmp_path) == ["phi"]


class _Evil:
    marker = None

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("zip_format", [True, False])
def test_malicious_pickle_refused(tmp_path, phi_model, zip_format):
    d = fx.save_phi2(phi_model, str(tmp_path / "phi"), layout="4.36", fmt="bin")
    marker = str(tmp_path / "pwned")
    evil = _Evil()
    evil.marker = marker
    p = os.path.join(d, "pytorch_model.bin")
    if zip_format:
        torch.save({"x": torch.zeros(1), "y": evil}, p)
    else:
        with open(p, "wb") as f:
            pickle.dump({"y": evil}, f)
    with pytest.raises(ConvertError, match="refusing to load"):
        convert_phi2(d, str(tmp_path / "o.gguf"), progress=False)
    assert not os.path.exists(marker)


def test_unwritable_output(tmp_path, phi_model):
    d = fx.save_phi2(phi_model, str(tmp_path / "phi"), layout="4.36", fmt="bin")
    with pytest.raises(ConvertError, match="output directory does not exist"):
        convert_phi2(d, str(tmp_path / "no" / "o.gguf"), progress=False)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            # privileged user: permissions are not enforced, so make the kernel refuse the file instead
            import tempfile
            real = tempfile.mkstemp

            def refuse(*a, dir=None, **k):
                if dir and os.path.samefile(dir, ro):
                    raise PermissionError(13, "Permission denied", dir)
                return real(*a, dir=dir, **k)
            import unittest.mock
            with unittest.mock.patch.object(os, "access", lambda p, m: not os.path.samefile(p, ro)):
                with pytest.raises(ConvertError, match="not writable"):
                    convert_phi2(d, str(ro / "o.gguf"), progress=False)
            with unittest.mock.patch.object(tempfile, "mkstemp", refuse):
                with pytest.raises(ConvertError, match="cannot create a file in"):
                    convert_phi2(d, str(ro / "o.gguf"), progress=False)
        else:
            with pytest.raises(ConvertError, match="not writable"):
                convert_phi2(d, str(ro / "o.gguf"), progress=False)
    finally:
        ro.chmod(0o700)
    assert _listing(ro) == []
    with pytest.raises(ConvertError, match="is a directory"):
        convert_phi2(d, str(tmp_path / "phi"), progress=False)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupted_write_leaves_nothing(tmp_path, phi_model, monkeypatch, exc):
    from tinygptv_native.convert import phi2 as phi2_mod
    d = fx.save_phi2(phi_model, str(tmp_path / "phi"), layout="4.36", fmt="bin")
    out = tmp_path / "out"
    out.mkdir()
    (out / "o.gguf").write_bytes(b"previous")
    real = phi2_mod.Phi2.layer_tensor

    def flaky(self, i, part, wb):
        if i == 1 and part == "fc1":
            raise exc("stop")
        return real(self, i, part, wb)

    monkeypatch.setattr(phi2_mod.Phi2, "layer_tensor", flaky)
    with pytest.raises(exc):
        convert_phi2(d, str(out / "o.gguf"), progress=False)
    assert _listing(out) == ["o.gguf"]
    assert (out / "o.gguf").read_bytes() == b"previous"   # an existing file is only replaced when complete


def test_tokenizer_larger_than_embedding(tmp_path):
    d, _ = fx.make_phi2_folder(str(tmp_path / "phi"), layout="4.36", vocab_size=300)
    with pytest.raises(ConvertError, match="embedding has only 300 rows"):
        convert_phi2(d, str(tmp_path / "o.gguf"), progress=False)


def test_bad_head_count(tmp_path, phi_model):
    d = fx.save_phi2(phi_model, str(tmp_path / "phi"), layout="4.36", fmt="bin")
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg["num_attention_heads"] = 5
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    with pytest.raises(ConvertError, match="num_attention_heads 5"):
        convert_phi2(d, str(tmp_path / "o.gguf"), progress=False)


def test_gpt2_byte_level_form_matches_tokenizers():
    from tokenizers import pre_tokenizers
    from tinygptv_native.convert.tokenizer import gpt2_byte_level
    pt = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    for text in [" ###", "\n\n", "héllo wörld", "\t\x00\x7f\xa0 end", "日本語 🙂", "".join(map(chr, range(256)))]:
        assert gpt2_byte_level(text) == "".join(piece for piece, _ in pt.pre_tokenize_str(text))


def test_shard_index_cannot_point_outside(tmp_path, phi_model):
    d = fx.save_phi2(phi_model, str(tmp_path / "phi"), layout="4.37", fmt="sharded-safetensors")
    idx = os.path.join(d, "model.safetensors.index.json")
    j = json.load(open(idx))
    first = next(iter(j["weight_map"]))
    j["weight_map"][first] = "../outside.safetensors"
    json.dump(j, open(idx, "w"))
    with pytest.raises(ConvertError, match="points outside the folder"):
        convert_phi2(d, str(tmp_path / "o.gguf"), progress=False)
    j["weight_map"][first] = "missing-shard.safetensors"
    json.dump(j, open(idx, "w"))
    with pytest.raises(ConvertError, match="shard not found"):
        convert_phi2(d, str(tmp_path / "o.gguf"), progress=False)


def test_disk_full_while_writing(tmp_path, phi_model, monkeypatch):
    import errno
    d = fx.save_phi2(phi_model, str(tmp_path / "phi"), layout="4.36", fmt="bin")
    out = tmp_path / "out"
    out.mkdir()
    real = gguf.GGUFWriter.write_tensor_data
    count = {"n": 0}

    def full(self, *a, **k):
        count["n"] += 1
        if count["n"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", full)
    with pytest.raises(ConvertError, match="No space left on device"):
        convert_phi2(d, str(out / "o.gguf"), progress=False)
    assert _listing(out) == []


def test_default_head_sizes(tmp_path):
    """ViT heads of 88 and Q-Former heads of 64 unless told otherwise (the released sizes)."""
    from tinygptv_native.convert import convert_tinygptv
    s = fx.make_tinygptv_set(str(tmp_path / "s"), stage=3, vision_width=176, qformer_width=128)
    out = str(tmp_path / "o.gguf")
    convert_tinygptv(s["phi2"], s["eva"], s["blip2"], s["stage_file"], out, outtype="f32", progress=False)
    _, _, f = read_gguf(out)
    assert f["tinygptv.vision.attention.head_count"] == 2 and f["tinygptv.qformer.attention.head_count"] == 2
    from tinygptv_native.convert.tinygptv import TinyGPTV
    with pytest.raises(ConvertError, match="width 176 is not a multiple of the head size 64"):
        TinyGPTV(s["phi2"], s["eva"], s["blip2"], s["stage_file"], vision_head_size=64)
