"""The native Phi-2 decoder against transformers' PhiForCausalLM (the independent reference).

Random small models of several shapes are converted with our converter (F32 and F16) and run
natively; logits, cached incremental decoding and greedy generation must match.
"""
import numpy as np
import pytest
import torch

from fixtures import checkpoints as fx
from tinygptv_native import ContextOverflowError, Model, _core
from tinygptv_native.convert import convert_phi2

CONFIGS = [  # (heads, hidden, partial rotary factor, layers)
    dict(num_attention_heads=4, hidden_size=64, partial_rotary_factor=0.5, num_hidden_layers=2),
    dict(num_attention_heads=8, hidden_size=64, partial_rotary_factor=0.25, num_hidden_layers=3),
    dict(num_attention_heads=2, hidden_size=80, partial_rotary_factor=0.4, num_hidden_layers=2),
    dict(num_attention_heads=4, hidden_size=96, partial_rotary_factor=1.0, num_hidden_layers=2),
]


def _build(tmp_path, outtype="f32", layout="4.36", **cfg):
    folder, hf = fx.make_phi2_folder(str(tmp_path / "hf"), layout=layout, **cfg)
    out = str(tmp_path / f"phi2-{outtype}.gguf")
    convert_phi2(folder, out, outtype=outtype, progress=False)
    return hf, out


def _ref_logits(hf, ids):
    with torch.no_grad():
        return hf(torch.tensor([ids], dtype=torch.long)).logits[0].float().numpy()


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"h{c['num_attention_heads']}-w{c['hidden_size']}-r{c['partial_rotary_factor']}")
def test_logits_match_transformers_f32(tmp_path, cfg):
    hf, path = _build(tmp_path, "f32", **cfg)
    m = Model(path, n_threads=2, kv_type="f32")
    ids = list(np.random.default_rng(1).integers(0, 320, size=40))
    ours = m.logits(ids)
    ref = _ref_logits(hf, ids)
    assert ours.shape == ref.shape == (40, hf.config.vocab_size)
    err = np.abs(ours - ref).max()
    assert err < 1e-4 * ref.std(), (err, ref.std())
    assert (ours.argmax(1) == ref.argmax(1)).all()


def test_logits_match_transformers_f16(tmp_path):
    hf, path = _build(tmp_path, "f16", **CONFIGS[0])
    m = Model(path, n_threads=2)  # F16 weights, F16 KV cache
    ids = list(np.random.default_rng(2).integers(0, 320, size=32))
    ours = m.logits(ids)
    ref = _ref_logits(hf, ids)
    rel = np.abs(ours - ref).max() / ref.std()
    assert rel < 2e-2, rel
    assert (ours.argmax(1) == ref.argmax(1)).mean() >= 0.95


def test_incremental_decode_equals_full_forward(tmp_path):
    hf, path = _build(tmp_path, "f32", **CONFIGS[1])
    m = Model(path, n_threads=2, kv_type="f32")
    ids = np.random.default_rng(3).integers(0, 320, size=24).astype(np.int32)
    full = m.logits(ids)
    s = _core.Context(m._model, 64, 1, 2, False)
    rows = [s.eval_tokens(0, ids[:7], True)]
    rows += [s.eval_tokens(0, ids[i:i + 1], True) for i in range(7, 20)]
    rows.append(s.eval_tokens(0, ids[20:], True))
    inc = np.concatenate(rows)
    np.testing.assert_allclose(inc, full, rtol=0, atol=1e-5 * float(np.abs(full).max()))
    assert (inc.argmax(1) == full.argmax(1)).all()
    # rewinding and re-feeding gives the same logits again
    s.truncate(0, 10)
    again = s.eval_tokens(0, ids[10:], True)
    np.testing.assert_allclose(again, full[10:], rtol=0, atol=1e-5 * float(np.abs(full).max()))



def test_prompt_with_last_row_logits_only(tmp_path):
    """A prompt asking for the last row's logits skips the last layer's work for the other rows (and a
    chunk of a long prompt that needs no logits skips it for all rows, past the keys and values); the
    logits and the cache it leaves must be those of the full computation."""
    hf, path = _build(tmp_path, "f32", **CONFIGS[1])
    m = Model(path, n_threads=2, kv_type="f32")
    ids = np.random.default_rng(4).integers(0, 320, size=301).astype(np.int32)
    full = m.logits(ids)  # every row: nothing skipped
    tol = 1e-5 * float(np.abs(full).max())
    s = _core.Context(m._model, 320, 1, 2, False)
    last = s.eval_tokens(0, ids[:300], False)  # chunks of 256 (no logits) and 44 (last row)
    np.testing.assert_allclose(last, full[299], rtol=0, atol=tol)
    nxt = s.eval_tokens(0, ids[300:], False)  # decodes from the cache the skipping prompt left
    np.testing.assert_allclose(nxt, full[300], rtol=0, atol=tol)
    assert last.argmax() == full[299].argmax() and nxt.argmax() == full[300].argmax()
    ref = _ref_logits(hf, ids.tolist())
    assert np.abs(nxt - ref[300]).max() < 1e-4 * ref.std()

def test_greedy_generation_equals_transformers(tmp_path):
    hf, path = _build(tmp_path, "f32", **CONFIGS[0])
    m = Model(path, n_threads=2, kv_type="f32")
    prompt = m.tokenize("the quick brown fox")
    eos = m._tok.eos
    # transformers: greedy, never choosing the padding rows (type "unused" in the GGUF vocabulary)
    suppress = [i for i in range(hf.config.vocab_size) if not m._tok.is_sampleable(i)]
    assert suppress, "the fixture should have padding rows"

    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False, eos_token_id=eos,
                          pad_token_id=eos, suppress_tokens=suppress or None)
    ref = out[0, len(prompt):].tolist()
    if eos in ref:
        ref = ref[:ref.index(eos)]
    m.generate(prompt, max_new_tokens=32, temperature=0.0)
    assert m.last_result.token_ids == ref
    assert len(ref) > 0


def test_separate_qkv_layout_loads_and_matches(tmp_path):
    """A file with attn_q/attn_k/attn_v instead of the fused attn_qkv (also written by llama.cpp)."""
    import gguf
    hf, path = _build(tmp_path, "f32", **CONFIGS[0])
    r = gguf.GGUFReader(path)
    split = str(tmp_path / "split.gguf")
    w = gguf.GGUFWriter(split, "phi2")
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        t = f.types[0]
        if t == gguf.GGUFValueType.ARRAY:
            vals = f.contents()
            w.add_array(f.name, vals)
        elif t == gguf.GGUFValueType.STRING:
            w.add_string(f.name, f.contents())
        else:
            w.add_key_value(f.name, f.contents(), t)
    E = hf.config.hidden_size
    for t in r.tensors:
        data = np.array(t.data).reshape([int(x) for x in reversed(t.shape)]) if t.data.ndim == 1 and len(t.shape) > 1 else np.array(t.data)
        if ".attn_qkv." in t.name:
            base = t.name.replace("attn_qkv", "{}")
            for j, part in enumerate(("attn_q", "attn_k", "attn_v")):
                w.add_tensor(base.format(part), np.ascontiguousarray(data[j * E:(j + 1) * E]))
        else:
            w.add_tensor(t.name, data)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    ids = list(range(5, 30))
    a = Model(path, n_threads=1, kv_type="f32").logits(ids)
    b = Model(split, n_threads=1, kv_type="f32").logits(ids)
    np.testing.assert_array_equal(a, b)


def test_context_overflow_is_typed_and_leaves_state(tmp_path):
    hf, path = _build(tmp_path, "f32", **CONFIGS[0])
    m = Model(path, n_threads=1, n_ctx=16)
    with pytest.raises(ContextOverflowError, match="does not fit in n_ctx 16"):
        m.generate(list(range(17)), max_new_tokens=1)
    r = m.generate(list(range(10)), max_new_tokens=10, return_result=True, stop_ids=[], temperature=0)
    assert r.finish_reason in ("length", "stop") and len(r.token_ids) <= 16 - 10 + 1
    s = _core.Context(m._model, 8, 1, 1, True)
    s.eval_tokens(0, np.arange(5, dtype=np.int32))
    with pytest.raises(ContextOverflowError, match="exceed n_ctx"):
        s.eval_tokens(0, np.arange(5, dtype=np.int32))
    assert s.n_past(0) == 5
    with pytest.raises(_core.ModelError, match="outside the vocabulary"):
        s.eval_tokens(0, np.array([1, 10**6], dtype=np.int32))
    assert s.n_past(0) == 5


def test_sampling_is_seeded(tmp_path):
    hf, path = _build(tmp_path, "f32", **CONFIGS[0])
    m = Model(path, n_threads=2)
    a = m.generate("the", max_new_tokens=20, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=7)
    ids_a = m.last_result.token_ids
    b = m.generate("the", max_new_tokens=20, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=7)
    assert a == b and m.last_result.token_ids == ids_a
    m.generate("the", max_new_tokens=20, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=8)
    assert m.last_result.token_ids != ids_a
    streamed = "".join(m.generate("the", max_new_tokens=20, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                                  seed=7, stream=True))
    assert streamed == a


@pytest.mark.parametrize("qtype,floor", [("q8_0", 0.93), ("q4_0", 0.62), ("q4_k_m", 0.72), ("q4_k_s", 0.74),
                                         ("q4_1", 0.71), ("q5_0", 0.76), ("q5_1", 0.80), ("q5_k_s", 0.83),
                                         ("q5_k_m", 0.85), ("q6_k", 0.91), ("q2_k", 0.36), ("q3_k_s", 0.53),
                                         ("q3_k_m", 0.58), ("q3_k_l", 0.57), ("iq4_nl", 0.71),
                                         ("iq4_xs", 0.69)])
def test_quantized_top1_agreement(tmp_path, qtype, floor):
    """Quantized weights keep the F32 model's choices (top-1 agreement over 200 positions).

    On random weights the logits have small margins, so agreement is lower than on a trained model:
    llama.cpp on the same files measures 96.5% (Q8_0) and 70% (Q4_0). The floors sit a few points
    under our measured values (96%, 69.5%, 79%); where llama.cpp is installed the test also requires
    our agreement to be within 2 points of llama.cpp's on the very same file
    (tests/test_llamacpp_interop.py). With float activations the same weights agree 98.5%, 70% and
    79.5% (test_activation_quantization_adds_little_error). The 2- and 3-bit mixes measure 39% (Q2_K),
    56.5% (Q3_K_S), 61% (Q3_K_M) and 60.5% (Q3_K_L)."""
    path, q, ids = quantized_parity_model(tmp_path, qtype)
    a = Model(path, n_threads=2, kv_type="f32").logits(ids)
    b = Model(q, n_threads=2).logits(ids)
    top1 = (a.argmax(1) == b.argmax(1)).mean()
    assert top1 >= floor, (qtype, top1)


@pytest.mark.parametrize("qtype,bound", [("q8_0", 1.6), ("q4_0", 1.1), ("q4_k_m", 1.1), ("q4_k_s", 1.1), ("q4_1", 1.1),
                                         ("q5_0", 1.1), ("q5_1", 1.1), ("q5_k_s", 1.1), ("q5_k_m", 1.1), ("q6_k", 1.2),
                                         ("q2_k", 1.1), ("q3_k_s", 1.1), ("q3_k_m", 1.1), ("q3_k_l", 1.1), ("iq4_nl", 1.1),
                                         ("iq4_xs", 1.1)])
def test_activation_quantization_adds_little_error(tmp_path, qtype, bound):
    """The same model with its quantized weights dequantized to F32 (gguf-py's dequantizers) runs with
    float activations: what is left is the weights' own rounding, which no engine reading the file can
    avoid. Our int8 activations may add to it only a little: measured 1.41x the logit error for Q8_0
    (two int8 roundings of equal size add as sqrt(2)), 1.002x / 1.005x for Q4_0 / Q4_K_M (the 4-bit
    weights' error dominates), 1.005-1.025x for Q4_K_S, Q4_1, Q5_0, Q5_1, Q5_K_S, Q5_K_M, 1.08x for Q6_K,
    1.000-1.003x for Q2_K, Q3_K_S, Q3_K_M, Q3_K_L, 1.002x / 1.005x for IQ4_NL / IQ4_XS;
    top-1 agreement within 2 points of the weights-only model's for every type. Top-1 agreement of the weights-only model: 98.5% / 70% / 79.5%, so the
    agreement floors of a trained model cannot be reached on these random weights by any engine."""
    import gguf
    path, q, ids = quantized_parity_model(tmp_path, qtype)
    deq = tmp_path / "dequantized.gguf"
    deq.write_bytes(open(path, "rb").read())
    quant = {t.name: t for t in gguf.GGUFReader(q).tensors}
    mm = np.memmap(deq, mode="r+")
    n = 0
    for t in gguf.GGUFReader(path).tensors:
        tq = quant[t.name]
        if tq.tensor_type != gguf.GGMLQuantizationType.F32:
            v = gguf.quants.dequantize(tq.data, tq.tensor_type).astype(np.float32).ravel()
            assert v.size == t.n_elements
            mm[t.data_offset:t.data_offset + v.nbytes] = v.view(np.uint8)
            n += 1
    mm.flush()
    del mm
    assert n >= 9
    ref = Model(path, n_threads=2, kv_type="f32").logits(ids)
    weights_only = Model(str(deq), n_threads=2, kv_type="f32").logits(ids)
    ours = Model(q, n_threads=2, kv_type="f32").logits(ids)
    e_w, e_q = np.abs(weights_only - ref).mean(), np.abs(ours - ref).mean()
    assert e_w > 0.003 * ref.std()  # the weights did change
    assert e_q <= bound * e_w, (qtype, e_q / e_w)
    # top-1 agreement with the F32 model within 2 points of the weights-only bound
    top1, top1_w = (ours.argmax(1) == ref.argmax(1)).mean(), (weights_only.argmax(1) == ref.argmax(1)).mean()
    assert top1 >= top1_w - 0.02 - 1e-9, (qtype, top1, top1_w)


def quantized_parity_model(tmp_path, qtype):
    """A random Phi-2 (widths multiples of 256, so the K-quants apply to every matrix) in F32 and in
    qtype; returns (f32 path, quantized path, 200 token ids)."""
    from tinygptv_native.quantize import quantize_file
    m = fx.make_phi2_model(seed=0, num_attention_heads=4, hidden_size=256, num_hidden_layers=2,
                           intermediate_size=1024)
    fx.randomize_(m, 0, scale=0.08)
    fx.save_phi2(m, str(tmp_path / "hf"))
    path = str(tmp_path / "f32.gguf")
    convert_phi2(str(tmp_path / "hf"), path, outtype="f32", progress=False)
    q = str(tmp_path / f"{qtype}.gguf")
    types = quantize_file(path, q, qtype, progress=False)
    assert sum(t.startswith(("Q", "IQ")) for t in types.values()) >= 9  # every matrix
    return path, q, [int(t) for t in np.random.default_rng(9).integers(0, 320, size=200)]
