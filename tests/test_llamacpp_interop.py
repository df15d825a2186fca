"""Our Phi-2 GGUF files load in llama.cpp, and both engines compute the same logits.

llama.cpp is driven through the `llama-cpp-python` package (CI installs it; the test is skipped where
it is not installed). The file comes from our converter, so this checks the converter's names and
keys against llama.cpp's loader, and our decoder against a second independent implementation.
"""
import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from fixtures import checkpoints as fx  # noqa: E402
from tinygptv_native import Model  # noqa: E402


@pytest.mark.parametrize("outtype,tol,agree", [("f32", 1e-2, 0.95), ("f16", 2e-2, 0.95), ("q8_0", 5e-2, 0.9)])
def test_llamacpp_loads_our_file_and_agrees(tmp_path, outtype, tol, agree):
    path, hf, _ = fx.make_phi2_gguf(str(tmp_path), outtype=outtype, hidden_size=128, num_attention_heads=4,
                                    intermediate_size=256, num_hidden_layers=2, partial_rotary_factor=0.5)
    ids = [int(t) for t in np.random.default_rng(0).integers(0, 300, size=24)]
    ours = Model(path, n_threads=2, kv_type="f32").logits(ids)  # llama.cpp keeps its KV cache in F16
    llm = llama_cpp.Llama(model_path=path, n_ctx=64, n_threads=2, logits_all=True, verbose=False)
    llm.eval(ids)
    theirs = np.array(llm.scores[: len(ids)], dtype=np.float32)
    assert theirs.shape == ours.shape
    rel = np.abs(ours - theirs).max() / ours.std()
    assert rel < tol, rel
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= agree
    # the tokenizer agrees too (llama.cpp reads the same tokenizer.ggml.* data)
    text = "the quick brown fox,  jumps\n\tover 12 lazy dogs"
    m = Model(path, n_threads=1)
    assert m.tokenize(text) == llm.tokenize(text.encode(), add_bos=False, special=False)


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_k_m"])
def test_llamacpp_quantized_agreement_on_the_same_file(tmp_path, qtype):
    """Against the F32 model, our quantized top-1 agreement is within 2 points of llama.cpp's on the
    very same quantized file (both engines quantize activations on the fly)."""
    from test_phi2 import quantized_parity_model
    path, q, ids = quantized_parity_model(tmp_path, qtype)
    ref = Model(path, n_threads=2, kv_type="f32").logits(ids).argmax(1)
    ours = (Model(q, n_threads=2).logits(ids).argmax(1) == ref).mean()
    llm = llama_cpp.Llama(model_path=q, n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    llm.eval(ids)
    theirs = (np.array(llm.scores[: len(ids)]).argmax(1) == ref).mean()
    assert ours >= theirs - 0.02, (qtype, ours, theirs)
