"""The Phi-2 decoder and the image path (ViT, Q-Former, projector) on the GPU (Vulkan), against the CPU
engine, on random models and the embedded demo model, with the validation layer on (any message it sends
fails the test).

The GPU multiplies float32 activations by the weights as stored; the CPU engine quantizes activations to
int8 for quantized weights (kernels/matmul.h). So for F32 and F16 files the reference is the CPU on the same
file, and for Q8_0 and Q4_0 files it is the CPU on the file's weights dequantized to F32 (the arithmetic the
GPU does), while the gap to the CPU on the quantized file is bounded by the CPU's own activation rounding.

Skips where the backend or a device is missing; with TINYGPTV_REQUIRE_VULKAN=1 (CI, on lavapipe) that
fails instead. Timings on lavapipe (a CPU driver) say nothing of GPU speed and none are asserted.
"""
import os
import subprocess
import sys

os.environ.setdefault("TINYGPTV_VK_VALIDATION", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import gguf_builder as gb  # noqa: E402
from fixtures.proc import CHILD_CWD, child_env  # noqa: E402
from tinygptv_native import _core  # noqa: E402

from fixtures.vulkan import vk  # noqa: E402,F401  (the fixture)
N_CTX = 96


def _dequantized_copy(f32, q, deq):
    """deq: the F32 file with the weights of q (its quantized twin), dequantized by gguf-py, written over
    its tensors (same layout): the arithmetic the GPU does on q's blocks, for the CPU to run in float."""
    import gguf
    with open(f32, "rb") as src, open(deq, "wb") as dst:
        dst.write(src.read())
    quant = {x.name: x for x in gguf.GGUFReader(q).tensors}
    mm = np.memmap(deq, mode="r+")
    for x in gguf.GGUFReader(f32).tensors:
        tq = quant[x.name]
        if tq.tensor_type != gguf.GGMLQuantizationType.F32:
            v = gguf.quants.dequantize(tq.data, tq.tensor_type).astype(np.float32).ravel()
            mm[x.data_offset:x.data_offset + v.nbytes] = v.view(np.uint8)
    mm.flush()
    del mm


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{type: (the file, the file the CPU reference reads)} for F32, F16, Q8_0 and Q4_0 (GQA: 4 heads, 2 kv)."""
    from tinygptv_native.quantize import quantize_file
    d = tmp_path_factory.mktemp("vkmodel")
    f32 = str(d / "f32.gguf")
    gb.phi2_builder(n_vocab=288, n_embd=64, n_head=4, n_head_kv=2, n_layer=3, n_ff=128, n_rot=8, n_ctx=N_CTX,
                    seed=5).write(f32)
    out = {"f32": (f32, f32)}
    for t in ("f16", "q8_0", "q4_0"):
        q = str(d / f"{t}.gguf")
        quantize_file(f32, q, t, progress=False)
        if t == "f16":
            out[t] = (q, q)
            continue
        deq = str(d / f"{t}-dequantized.gguf")
        _dequantized_copy(f32, q, deq)
        out[t] = (q, deq)
    return out


def _greedy(ctx, prompt, n_new):
    """Logits of the prompt's rows and of n_new greedy steps (sequence 0), and the tokens chosen."""
    rows = [ctx.eval_tokens(0, prompt, True)]
    toks = []
    for _ in range(n_new):
        toks.append(int(np.argmax(rows[-1][-1])))
        rows.append(ctx.eval_tokens(0, np.array([toks[-1]], np.int32), True))
    return np.concatenate(rows), toks


def _forced(ctx, prompt, toks):
    """Logits of the prompt's rows and of the given tokens fed one step at a time (sequence 0)."""
    rows = [ctx.eval_tokens(0, prompt, True)]
    rows += [ctx.eval_tokens(0, np.array([t], np.int32), True) for t in toks]
    return np.concatenate(rows)


def _same_choices(lg, lr, bound):
    """The GPU's greedy choice equals the reference's at every row whose two best logits are further
    apart than the sums' rounding can move them (a random model has a near-tie now and then)."""
    top2 = np.sort(lr, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * bound
    assert clear.mean() > 0.9, clear.mean()
    assert (lg.argmax(1) == lr.argmax(1))[clear].all()


def _prompt(k, n):
    return np.random.default_rng(300 + k).integers(0, 288, n).astype(np.int32)


# The largest logit difference, measured on lavapipe: 1.7e-4 (F32), 2.7e-5 (F16), 2.4e-4 (Q8_0) and 1.9e-4
# (Q4_0) against the references above, with logits up to 9 in magnitude: the GPU sums in another order (tree
# reductions, an online softmax over key tiles), nothing more. (The CPU on the quantized files is 1.8e-2 /
# 2.0e-2 from those references on average, its int8 activations; the GPU 1.8e-2 / 2.0e-2 from it.)
# Split after 1, 2 of the 3 layers: 2.8e-4 / 2.8e-4 (F32), 1.6e-5 / 6.2e-5 (F16); the demo TinyGPT-V in F16
# split after 1, 2, 4 of its 4 layers: 8.9e-5, 7.5e-5, 7.0e-5, logits up to 17.
BOUND = 1e-3


@pytest.mark.parametrize("wtype", ["f32", "f16", "q8_0", "q4_0"])
def test_logits_and_greedy_tokens_match_the_cpu(vk, files, wtype):
    path, ref_path = files[wtype]
    gpu = _core.Context(_core.Model(path, 1), N_CTX, 1, 1, True, 64.0, 0)
    assert gpu.backend == "vulkan" and gpu.gpu_weight_bytes > 0
    ref = _core.Context(_core.Model(ref_path, 1), N_CTX, 1, 1, True)
    prompt = _prompt(0, 19)
    lr, tr = _greedy(ref, prompt, 24)
    lg = _forced(gpu, prompt, tr)  # the reference's 24 greedy tokens
    _same_choices(lg, lr, BOUND)
    err = np.abs(lg - lr).max()
    assert err <= BOUND, (wtype, err)
    if wtype in ("q8_0", "q4_0"):
        # The CPU engine on the quantized file rounds its activations to int8: the GPU (float activations)
        # is as far from it as that rounding takes the CPU from the dequantized reference, not farther.
        cpu_q = _core.Context(_core.Model(path, 1), N_CTX, 1, 1, True)
        lq = cpu_q.eval_tokens(0, np.concatenate([prompt, np.array(tr, np.int32)]), True)
        e_act = np.abs(lq - lr).mean()
        e_gpu = np.abs(lq - lg).mean()
        assert e_gpu <= 1.1 * e_act + BOUND, (wtype, e_gpu, e_act)


@pytest.mark.parametrize("wtype,ng", [("f16", 0), ("f16", 1), ("f16", 2), ("f16", 3), ("f32", 1)])
def test_a_split_decoder_matches_the_cpu(vk, files, wtype, ng):
    """gpu_layers=ng: the first ng layers on the device, the rest and the head on the CPU from the hidden
    state the device hands back: the logits and greedy tokens of the CPU engine, the device holding the
    weights and KV cache of those layers only."""
    path, ref_path = files[wtype]
    m = _core.Model(path, 1)
    gpu = _core.Context(m, N_CTX, 1, 1, True, 64.0, 0, ng)
    whole = _core.Context(m, N_CTX, 1, 1, True, 64.0, 0)
    assert (gpu.backend, gpu.gpu_layers, whole.gpu_layers) == ("vulkan", ng, 3)
    assert (gpu.gpu_weight_bytes == 0) == (ng == 0) and gpu.gpu_weight_bytes <= whole.gpu_weight_bytes
    ref = _core.Context(_core.Model(ref_path, 1), N_CTX, 1, 1, True)
    prompt = _prompt(0, 19)
    lg, tg_ = _greedy(gpu, prompt, 24)
    lr, tr = _greedy(ref, prompt, 24)
    assert tg_ == tr
    err = np.abs(lg - lr).max()
    assert err <= BOUND, (wtype, ng, err)
    # 3 layers x (k, v) x n_ctx x kv_dim x F16, the first ng of them on the device
    layer = 2 * N_CTX * 32 * 2
    assert (gpu.gpu_kv_reserved_bytes, gpu.kv_reserved_bytes) == (ng * layer, 3 * layer)


@pytest.mark.parametrize("qtype", ["q4_k_m", "q6_k"])
def test_k_quants_match_their_dequantized_weights(vk, tmp_path, qtype):
    """Q4_K and Q6_K blocks (super-blocks of 256: a model 256 wide), gathered and multiplied on the GPU,
    against the CPU on the same weights dequantized to F32."""
    from tinygptv_native.quantize import quantize_file
    f32, q, deq = (str(tmp_path / n) for n in ("f32.gguf", "q.gguf", "deq.gguf"))
    gb.phi2_builder(n_vocab=288, n_embd=256, n_head=4, n_layer=2, n_ff=512, n_rot=16, n_ctx=N_CTX, seed=8,
                    scale=0.08).write(f32)
    types = quantize_file(f32, q, qtype, progress=False)
    assert {"Q4_K", "Q6_K"} & set(types.values()) == ({"Q4_K", "Q6_K"} if qtype == "q4_k_m" else {"Q6_K"})
    _dequantized_copy(f32, q, deq)
    gpu = _core.Context(_core.Model(q, 1), N_CTX, 1, 1, True, 64.0, 0)
    ref = _core.Context(_core.Model(deq, 1), N_CTX, 1, 1, True)
    prompt = _prompt(4, 19)
    lg, tg_ = _greedy(gpu, prompt, 20)
    lr, tr = _greedy(ref, prompt, 20)
    assert tg_ == tr
    assert np.abs(lg - lr).max() <= BOUND


def test_decode_attention_split_over_keys_matches_the_cpu(vk, tmp_path):
    """Decode rows past 256 keys take the split pass (chunks of 4 key tiles, merged after); the prompt rows
    before them the one-pass attention: both against the CPU, and the same greedy tokens."""
    path = str(tmp_path / "long.gguf")
    gb.phi2_builder(n_vocab=288, n_embd=64, n_head=4, n_head_kv=2, n_layer=2, n_ff=128, n_rot=8, n_ctx=640,
                    seed=6, dtype=gb.GT_F16).write(path)
    m = _core.Model(path, 1)
    gpu = _core.Context(m, 640, 1, 1, True, 64.0, 0)
    ref = _core.Context(m, 640, 1, 1, True)
    prompt = _prompt(5, 250)
    lg, tg_ = _greedy(gpu, prompt, 140)  # decode rows at 251..390 keys: 1, then 2 splits
    lr, tr = _greedy(ref, prompt, 140)
    assert tg_ == tr
    assert np.abs(lg - lr).max() <= BOUND


def test_a_tensor_split_over_buffers_gives_the_same_logits(vk, files, monkeypatch):
    """Parts of at most 4 KiB: the Q4_0 token embedding and output (288 rows of 36 bytes) take 3 buffers each,
    as Phi-2's F16 embedding (262 MB) takes 2 of lavapipe's 128 MiB; every part is read at its own offset."""
    path, _ = files["q4_0"]
    m = _core.Model(path, 1)
    whole = _core.Context(m, N_CTX, 1, 1, True, 64.0, 0)
    monkeypatch.setenv("TINYGPTV_VK_MAX_BUFFER", "4096")
    split = _core.Context(m, N_CTX, 1, 1, True, 64.0, 0)
    prompt = _prompt(1, 17)
    a, ta = _greedy(whole, prompt, 6)
    b, tb = _greedy(split, prompt, 6)
    assert ta == tb and np.array_equal(a, b)


@pytest.mark.parametrize("ng", [-1, 1, 2])
@pytest.mark.parametrize("tiled_rows", ["1", None])
def test_batched_sequences_equal_each_alone(vk, files, monkeypatch, ng, tiled_rows):
    """Prompt pieces of some sequences and decode steps of others in one batch: each row's logits are
    those of its sequence run alone (bit for bit: a row's arithmetic does not depend on its company), the
    decoder whole on the device or split after layer ng. The decoder's products all take the mat-vec, whatever
    TINYGPTV_VK_TILED_ROWS says (1: the tiled shader from one row, for the image pass)."""
    if tiled_rows is not None:
        monkeypatch.setenv("TINYGPTV_VK_TILED_ROWS", tiled_rows)
    m = _core.Model(files["q8_0"][0], 1)
    specs = [(0, 7), (1, 1), (2, 13), (3, 4)]
    alone = {}
    for k, n in specs:
        c = _core.Context(m, N_CTX, 1, 1, True, 64.0, 0, ng)
        alone[k] = [c.eval_tokens(0, _prompt(k, n), True)]
        for step in range(3):
            alone[k].append(c.eval_tokens(0, _prompt(10 + k, 3)[step:step + 1], True))
        alone[k] = np.concatenate(alone[k])
    c = _core.Context(m, N_CTX, 4, 1, True, 64.0, 0, ng)
    got = {k: [] for k, _ in specs}
    # step 0: every prompt; then steps where some sequences decode and the last prompt is resent piecewise
    b = _core.Batch()
    for k, n in specs:
        for i, t in enumerate(_prompt(k, n)):
            b.add_token(int(t), k, i, True)
    out = c.decode(b)
    r = 0
    for k, n in specs:
        got[k].append(out[r:r + n])
        r += n
    for step in range(3):
        b = _core.Batch()
        for k, n in specs:
            b.add_token(int(_prompt(10 + k, 3)[step]), k, n + step, True)
        out = c.decode(b)
        for i, (k, _) in enumerate(specs):
            got[k].append(out[i:i + 1])
    for k, _ in specs:
        assert np.array_equal(np.concatenate(got[k]), alone[k]), k


def _replay_schedule():
    """Batches of a run over 3 slots: ([(slot, token, wants logits)...], slot to cut first (slot, keep) or
    None, prefix copy first (src, dst, n) or None). Prompts of some slots, then decode steps whose positions
    move every step, of different slots together, with cuts and copies that move positions back."""
    rng = np.random.default_rng(77)
    tok = lambda: int(rng.integers(0, 288))  # noqa: E731
    plan = [([(0, tok(), i == 6) for i in range(7)], None, None),
            ([(1, tok(), i == 4) for i in range(5)], None, None)]
    plan += [([(0, tok(), True), (1, tok(), True)], None, None) for _ in range(12)]
    plan += [([(0, tok(), True), (1, tok(), False)], None, None) for _ in range(4)]  # another logits mask
    plan += [([(2, tok(), True)], None, (0, 2, 9))]                                     # slot 2: a copy of 0
    plan += [([(2, tok(), True)], None, None) for _ in range(6)]
    plan += [([(1, tok(), True), (2, tok(), True)], None, None) for _ in range(8)]       # other slots
    plan += [([(0, tok(), True), (1, tok(), True)], (0, 5), None) for _ in range(1)]    # slot 0 cut back
    plan += [([(0, tok(), True), (1, tok(), True)], None, None) for _ in range(8)]
    return plan


@pytest.mark.parametrize("ng", [-1, 2])
def test_a_replayed_step_gives_the_bits_of_a_freshly_recorded_one(vk, files, monkeypatch, ng):
    """The same batches through a context that records every step (TINYGPTV_VK_REPLAY=0) and one that
    replays a step while its shape repeats, with positions moving every step, slots changing, a cut and a
    prefix copy: the same logits bit for bit at every step; a step of a new shape (rows, runs and their slots,
    which rows want logits) is recorded, a repeated one replayed."""
    m = _core.Model(files["q8_0"][0], 1)
    monkeypatch.setenv("TINYGPTV_VK_REPLAY", "0")
    fresh = _core.Context(m, N_CTX, 3, 1, True, 64.0, 0, ng)
    monkeypatch.delenv("TINYGPTV_VK_REPLAY")
    replay = _core.Context(m, N_CTX, 3, 1, True, 64.0, 0, ng)
    shapes = set()
    for step, (rows, cut, copy) in enumerate(_replay_schedule()):
        for c in (fresh, replay):
            if cut:
                c.truncate(*cut)
            if copy:
                c.copy(*copy)
        # the shape a recording is kept for: rows, runs of one sequence with their slots, logits mask (with
        # the head on the device)
        runs = tuple(sorted({(s, sum(1 for r in rows if r[0] == s)) for s, _t, _l in rows}))
        shape = (runs, tuple(r[2] for r in rows) if ng < 0 else None)
        before = replay.gpu_steps
        out = []
        for c in (fresh, replay):
            b = _core.Batch()
            pos = {}
            for s, t, want in rows:
                pos.setdefault(s, c.n_past(s))
                b.add_token(t, s, pos[s], want)
                pos[s] += 1
            out.append(c.decode(b))
        assert np.array_equal(out[0], out[1]), step
        after = replay.gpu_steps
        new = shape not in shapes
        shapes.add(shape)
        assert (after["recorded"] - before["recorded"], after["replayed"] - before["replayed"]) == \
            ((1, 0) if new else (0, 1)), (step, shape)
    n = len(_replay_schedule())
    assert fresh.gpu_steps == {"recorded": n, "replayed": 0}
    assert replay.gpu_steps == {"recorded": len(shapes), "replayed": n - len(shapes)}
    assert 5 <= len(shapes) <= 8 and n - len(shapes) > 30


@pytest.mark.parametrize("ng", [-1, 0, 1, 2])
def test_truncate_and_copy_prefix_agree_with_a_fresh_forward(vk, files, monkeypatch, ng):
    """Cut and copied sequences continue as a fresh forward of what they hold, with the cache on the device,
    on the host, or split between them (the first ng layers on the device)."""
    m = _core.Model(files["f16"][0], 1)
    c = _core.Context(m, N_CTX, 3, 1, True, 64.0, 0, ng)
    p = _prompt(2, 20)
    c.eval_tokens(0, p)
    c.copy(0, 1, 12)         # sequence 1: the first 12 positions of 0
    c.truncate(0, 15)        # sequence 0: its first 15
    assert (c.n_past(0), c.n_past(1)) == (15, 12)
    tail = _prompt(3, 5)
    got0 = c.eval_tokens(0, tail, True)
    got1 = c.eval_tokens(1, tail, True)
    c.copy(1, 2, 17)         # a copy of a whole sequence, then its continuation
    got2 = c.eval_tokens(2, tail[:2], True)

    def fresh(ids):
        f = _core.Context(m, N_CTX, 1, 1, True, 64.0, 0, ng)
        return f.eval_tokens(0, np.asarray(ids, np.int32), True)

    np.testing.assert_allclose(got0, fresh(np.concatenate([p[:15], tail]))[15:], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got1, fresh(np.concatenate([p[:12], tail]))[12:], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got2, fresh(np.concatenate([p[:12], tail, tail[:2]]))[17:], rtol=0, atol=1e-5)
    assert c.kv_reserved_bytes == 3 * 3 * 2 * N_CTX * 32 * 2  # 3 slots x 3 layers x (k, v) x n_ctx x kv_dim x F16
    assert c.gpu_kv_reserved_bytes == 3 * (3 if ng < 0 else ng) * 2 * N_CTX * 32 * 2


@pytest.mark.parametrize("wtype,max_buffer,ng", [("f32", None, None), ("q4_0", None, None), ("f16", 4096, None),
                                                 ("demo", None, None), ("f32", None, 1), ("f16", 4096, 2),
                                                 ("demo", None, 2), ("demo", None, 0)])
def test_the_memory_plan_counts_what_the_gpu_allocates(vk, files, monkeypatch, wtype, max_buffer, ng):
    """gpu_plan's weights and KV cache against the GPU's own count after a decode of each of 2 slots
    (random Phi-2s, and the demo TinyGPT-V, whose image path is uploaded with the decoder whatever its
    split), the whole decoder on the device or its first ng layers. The device rounds a buffer to 4 bytes,
    which weight_buffers' sizes so rounded give exactly; the plan rounds each to 256 (BUFFER_ALIGN), so it
    may exceed the real count by under 256 bytes a buffer. The image path's pass: image_activation_buffers
    against the buffers the context allocated for it, to the byte."""
    from tinygptv_native import gpu_plan
    from tinygptv_native.demo import DEMO_MODEL
    from tinygptv_native.gpu import device_limits, device_plan
    path = str(DEMO_MODEL) if wtype == "demo" else files[wtype][0]
    if max_buffer:  # a split of the larger matrices into parts of at most 4 KiB
        monkeypatch.setenv("TINYGPTV_VK_MAX_BUFFER", str(max_buffer))
    c = _core.Context(_core.Model(path, 1), N_CTX, 2, 1, True, 64.0, 0, -1 if ng is None else ng)
    c.eval_tokens(0, _prompt(4, 7), True)
    c.eval_tokens(1, _prompt(5, 1), True)
    dev = _core.vulkan_devices()[0]
    p = device_plan(path, dev, N_CTX, 2, ng)
    hp, tensors = gpu_plan.file_tensors(path)
    raw = gpu_plan.weight_buffers(tensors, hp, N_CTX, device_limits(dev)[0], ng)
    n_dev = hp.n_layer if ng is None else ng
    assert c.gpu_layers == n_dev
    n_image = sum(1 for t in tensors if gpu_plan.is_image_tensor(t.name))
    assert (n_image > 0) == (wtype == "demo")
    if n_dev == 0:  # the image path alone: its tensors, one buffer each
        assert len(raw) == n_image and p.kv_cache == 0 and c.gpu_kv_reserved_bytes == 0
    if max_buffer and ng is None:
        assert len(raw) > sum(1 for t in tensors if gpu_plan.is_decoder_tensor(t.name)) + 2  # some were split
    if wtype == "demo" and ng is None:  # every tensor, and the RoPE tables
        assert len(raw) == len(tensors) + 2
    dev_bufs, host_bufs = gpu_plan.image_activation_buffers(tensors)
    assert sum(max(4, -(-b // 4) * 4) for b in dev_bufs + host_bufs) == c.gpu_image_activation_bytes
    assert (c.gpu_image_activation_bytes > 0) == (wtype == "demo")
    assert sum(max(4, -(-b // 4) * 4) for b in raw) == c.gpu_weight_bytes
    assert c.gpu_weight_bytes <= p.weights < c.gpu_weight_bytes + gpu_plan.BUFFER_ALIGN * p.weight_buffers
    assert p.weight_buffers == len(raw)
    # 2 slots x the device's layers x (k, v) x n_ctx x kv_dim x F16
    assert p.kv_cache == c.gpu_kv_reserved_bytes == 2 * n_dev * 2 * N_CTX * hp.kv_dim * 2
    assert c.kv_reserved_bytes == 2 * hp.n_layer * 2 * N_CTX * hp.kv_dim * 2
    if wtype != "demo":
        assert (hp.n_layer, hp.kv_dim) == (3, 32)


def test_the_demo_model_answers_as_on_the_cpu(vk):
    """An image question and a multi-turn chat about the image on the CPU, on the GPU, and with the decoder
    split after 0, 1 and 2 of its 4 layers: the same answers."""
    from tinygptv_native import Model
    from tinygptv_native.demo import DEMO_IMAGE
    answers = {}
    for device, ng in (("cpu", None), ("gpu", None), ("gpu", 0), ("gpu", 1), ("gpu", 2)):
        m = Model(device=device, n_parallel=2, gpu_layers=ng)
        assert m.device == device and (m.gpu is None) == (device == "cpu")
        assert m.gpu_layers == (0 if device == "cpu" else m.n_layer if ng is None else ng) == m.engine.ctx.gpu_layers
        c = m.new_chat()
        answers[device, ng] = [m.chat("How many shapes are there?", image=DEMO_IMAGE, temperature=0),
                               c.ask("What color is the triangle?", image=DEMO_IMAGE, temperature=0),
                               c.ask("What color is the circle?", temperature=0)]
        m.close()
    for key, a in answers.items():
        assert a == answers["cpu", None], (key, a)
    assert answers["gpu", None][0] == "three"


@pytest.fixture(scope="module")
def demo_f16(tmp_path_factory):
    """The demo TinyGPT-V with its weights stored as F16: the CPU multiplies F16 weights by float activations,
    as the GPU does, where on the Q8_0 file it rounds activations to int8 (and a split hands the CPU's layers
    a hidden state that may round the other way)."""
    from tinygptv_native.demo import DEMO_MODEL
    from tinygptv_native.quantize import quantize_file
    path = str(tmp_path_factory.mktemp("demo") / "demo-f16.gguf")
    quantize_file(str(DEMO_MODEL), path, "f16", progress=False)
    return path


@pytest.mark.parametrize("ng", [1, 2, 4])
def test_the_demo_model_split_batches_an_image_and_text_as_the_cpu(vk, demo_f16, ng):
    """Two sequences in one batch, one an image's rows and a question, the other text, then decode steps of
    both together: the demo TinyGPT-V (F16) split after ng of its 4 layers gives the CPU engine's logits
    (within BOUND) and greedy tokens."""
    from tinygptv_native import Model
    from tinygptv_native.demo import DEMO_IMAGE
    host = Model(device="cpu", n_ctx=256)
    emb = host.encode_image_embedding(DEMO_IMAGE)
    q, t = host.tokenize("How many shapes are there?"), host.tokenize("Describe a circle.")
    core = _core.Model(demo_f16, 1)
    assert core.n_layer == 4
    out = {}
    for name, ctx in (("cpu", _core.Context(core, 256, 2, 1, True)),
                      ("gpu", _core.Context(core, 256, 2, 1, True, 64.0, 0, ng))):
        b = _core.Batch()
        for r in range(emb.n_rows):
            b.add_image_row(emb, r, 0, r, False)
        for i, tok in enumerate(q):
            b.add_token(tok, 0, emb.n_rows + i, i == len(q) - 1)
        for i, tok in enumerate(t):
            b.add_token(tok, 1, i, i == len(t) - 1)
        rows, toks = [ctx.decode(b)], []
        pos = [emb.n_rows + len(q), len(t)]
        for _ in range(8):
            nxt = [int(np.argmax(rows[-1][k])) for k in range(2)]
            toks.append(nxt)
            b = _core.Batch()
            for k in range(2):
                b.add_token(nxt[k], k, pos[k], True)
                pos[k] += 1
            rows.append(ctx.decode(b))
        out[name] = (np.concatenate(rows), toks)
    assert out["gpu"][1] == out["cpu"][1]
    err = np.abs(out["gpu"][0] - out["cpu"][0]).max()
    assert err <= BOUND, (ng, err)


# ---- the image path on the GPU --------------------------------------------------------------------

def _picture(seed=0):
    from PIL import Image
    a = (np.random.default_rng(seed).random((40, 52, 3)) * 255).astype(np.uint8)
    a[5:20, 8:30] = [250, 20, 20]
    return Image.fromarray(a)


@pytest.fixture(scope="module")
def tinygptv_files(tmp_path_factory):
    """{type: (the file, the file the CPU reference reads)}: a small random TinyGPT-V converted from a
    checkpoint set (tests/fixtures/checkpoints.py; widths of 64 in the ViT, 32 in the Q-Former, so every
    image matrix but the 48-wide patch embedding takes Q8_0 blocks), in F32, F16 and Q8_0."""
    from fixtures import checkpoints as fx
    from tinygptv_native.quantize import quantize_file
    d = tmp_path_factory.mktemp("vkimage")
    f32, _ = fx.make_tinygptv_gguf(str(d), stage=3, outtype="f32", vision_width=64, vit_mlp=96, qformer_width=32,
                                   qformer_ffn=64, proj_width=64)
    out = {"f32": (f32, f32)}
    for t in ("f16", "q8_0"):
        q = str(d / f"{t}.gguf")
        types = quantize_file(f32, q, t, progress=False)
        if t == "f16":
            out[t] = (q, q)
            continue
        assert types["v.blk.0.attn_qkv.weight"] == types["qf.blk.0.cross_k.weight"] == "Q8_0"
        deq = str(d / f"{t}-dequantized.gguf")
        _dequantized_copy(f32, q, deq)
        out[t] = (q, deq)
    return out


def _embeddings(path, device, image, **kw):
    from tinygptv_native import Model
    m = Model(path, device=device, n_ctx=N_CTX, **kw)
    try:
        if device == "gpu":
            assert m.engine.ctx.gpu_image_activation_bytes > 0  # the image path is on the device
        return m.encode_image(image)
    finally:
        m.close()


# The largest difference of the image embeddings (8 rows of 64, values up to 4.5), measured on lavapipe:
# 4.1e-6 (F32), 3.7e-6 (F16) against the CPU engine on the same file, 4.5e-6 (Q8_0) against the CPU on its
# weights dequantized to F32: float32 sums in another order. The CPU on the Q8_0 file itself rounds its
# activations to int8: 0.085 at most and 0.023 on average from the GPU, as from that dequantized reference.
IMAGE_BOUND = 2e-5


@pytest.mark.parametrize("wtype", ["f32", "f16", "q8_0"])
def test_image_embeddings_match_the_cpu(vk, tinygptv_files, wtype):
    path, ref_path = tinygptv_files[wtype]
    img = _picture(1)
    gpu = _embeddings(path, "gpu", img)
    ref = _embeddings(ref_path, "cpu", img)
    assert gpu.shape == ref.shape == (8, 64)
    err = np.abs(gpu - ref).max()
    assert err <= IMAGE_BOUND * max(1.0, np.abs(ref).max()), (wtype, err)
    if wtype == "q8_0":
        cpu_q = _embeddings(path, "cpu", img)
        e_act, e_gpu = np.abs(cpu_q - ref).mean(), np.abs(cpu_q - gpu).mean()
        assert e_act > 100 * IMAGE_BOUND  # the CPU's int8 activations: the GPU is not running the CPU's path
        assert e_gpu <= 1.1 * e_act + IMAGE_BOUND, (e_gpu, e_act)


@pytest.mark.parametrize("image_size,cross_freq,folded", [(28, 2, False), (56, 2, False), (28, 1, False),
                                                         (42, 3, False), (28, 2, True)])
def test_the_image_path_matches_transformers_blip2(vk, tmp_path, image_size, cross_freq, folded):
    """The GPU's image path against transformers' BLIP-2 vision model and Q-Former in float64 (test_vision's
    reference and files: patches of 14, heads of 12 and 16, cross-attention every 1, 2 or 3 layers, the
    projector as two products or folded into one). Measured on lavapipe: at most 2.9e-7 of the largest
    value off (the CPU engine: 5.9e-7)."""
    pytest.importorskip("transformers.models.blip_2.modeling_blip_2")
    import test_vision as tv
    ref = tv.Reference(image_size, cross_freq, seed=image_size + cross_freq)
    if folded:  # mm.1 . mm.0 stored as one affine map in mm.0
        W1, b1 = tv._np(ref.proj0.weight), tv._np(ref.proj0.bias)
        W2, b2 = tv._np(ref.proj1.weight), tv._np(ref.proj1.bias)
        fold = {"mm.0.weight": (W2 @ W1).astype(np.float32), "mm.0.bias": (W2 @ b1 + b2).astype(np.float32)}
        path = tv.write_gguf(tmp_path / "m.gguf", ref, tensor_override=fold, drop=("mm.1.weight", "mm.1.bias"))
    else:
        path = tv.write_gguf(tmp_path / "m.gguf", ref)
    m = _core.Model(str(path), 1)
    assert (m.vision_hparams["proj_n_mid"] == 0) == folded
    ctx = _core.Context(m, 16, 1, 1, True, 64.0, 0)
    assert ctx.gpu_image_activation_bytes > 0
    pixels = tv._pixels(image_size, 1)
    cos, rel = tv._compare(ctx.encode_image(pixels).numpy(), ref(pixels))
    assert cos >= 0.999999 and rel < 1e-5, (cos, rel)


def test_the_image_path_split_over_buffers_gives_the_same_embeddings(vk, tinygptv_files, monkeypatch):
    """Parts of at most 4 KiB: the ViT's Q8_0 qkv (192 rows of 68 bytes) takes 4 buffers, its attention
    output and FFN matrices 2 each; every part is read at its own offset."""
    path, _ = tinygptv_files["q8_0"]
    img = _picture(2)
    whole = _embeddings(path, "gpu", img)
    monkeypatch.setenv("TINYGPTV_VK_MAX_BUFFER", "4096")
    assert np.array_equal(_embeddings(path, "gpu", img), whole)


def test_a_random_tinygptv_chats_with_an_image_as_on_the_cpu(vk, tinygptv_files):
    """Greedy multi-turn chats on the F32 file: an image in the first turn, a text turn about it, a second
    image later; the same answers on the GPU as on the CPU, and the embeddings of both images encoded on
    the device (the image cache holds them)."""
    from tinygptv_native import Model
    path, _ = tinygptv_files["f32"]
    answers = {}
    for device in ("cpu", "gpu"):
        m = Model(path, device=device, n_ctx=256, n_parallel=2)
        kw = dict(temperature=0, max_new_tokens=8)
        c = m.new_chat()
        answers[device] = [m.chat("What is in the picture?", image=_picture(3), **kw),
                           c.ask("Describe it.", image=_picture(4), **kw),
                           c.ask("And the colours?", **kw),
                           c.ask("Now this one.", image=_picture(5), **kw)]
        if device == "gpu":
            assert m.engine.ctx.backend == "vulkan" and m.engine.ctx.gpu_image_activation_bytes > 0
        m.close()
    assert answers["gpu"] == answers["cpu"]
    assert all(answers["cpu"])


# The demo model's image path is Q8_0: the CPU rounds its activations to int8, the GPU keeps them in
# float32. Measured on lavapipe: at most 0.053 apart (embedding values up to 7.1), 0.010 on average.
DEMO_IMAGE_BOUND, DEMO_IMAGE_MEAN_BOUND = 0.15, 0.03


def test_the_demo_models_image_embeddings_match_the_cpu(vk):
    from tinygptv_native.demo import DEMO_IMAGE, DEMO_MODEL
    gpu = _embeddings(str(DEMO_MODEL), "gpu", DEMO_IMAGE)
    cpu = _embeddings(str(DEMO_MODEL), "cpu", DEMO_IMAGE)
    assert gpu.shape == cpu.shape and np.abs(cpu).max() > 1
    d = np.abs(gpu - cpu)
    assert d.max() <= DEMO_IMAGE_BOUND and d.mean() <= DEMO_IMAGE_MEAN_BOUND, (d.max(), d.mean())


def test_device_choice_and_its_errors(vk, files):
    from tinygptv_native import Model
    path = files["f32"][0]
    with pytest.raises(ValueError, match=r"does not fit Vulkan device 0 .*needs weights .* MiB.*budget is 0\.0 MiB"):
        Model(path, device="gpu", gpu_budget_mb=0.01)
    with pytest.raises(ValueError, match="gpu=99 does not exist"):
        Model(path, device="gpu", gpu=99)
    with pytest.raises(ValueError, match="kv_type='f32' needs device='cpu'"):
        Model(path, device="gpu", kv_type="f32")
    with pytest.raises(ValueError, match="device must be one of"):
        Model(path, device="cuda")
    with pytest.raises(ValueError, match="device='cpu' uses none"):
        Model(path, device="cpu", gpu=0)
    m = Model(path, device="gpu", n_ctx=N_CTX)
    assert (m.device, m.gpu, m.engine.ctx.backend, m.gpu_layers) == ("gpu", 0, "vulkan", 3)
    # auto takes a discrete GPU only: lavapipe is a CPU device, so auto stays on the CPU there
    devs = _core.vulkan_devices()
    auto = Model(path, n_ctx=N_CTX)
    assert auto.device == ("gpu" if any(d["type"] == "discrete" for d in devs) else "cpu")
    # auto with gpu=N and a budget the plan exceeds: the CPU
    assert Model(path, n_ctx=N_CTX, gpu=0, gpu_budget_mb=0.01).device == "cpu"


NO_LOADER = """
import tinygptv_native as tg
try:
    tg.Model(device="gpu")
except tg.VulkanError as e:
    print("VulkanError:", e)
m = tg.Model()  # auto: the CPU
print(m.device)
"""


def test_without_the_loader_gpu_raises_and_auto_takes_the_cpu():
    p = subprocess.run([sys.executable, "-c", NO_LOADER], capture_output=True, text=True, timeout=120,
                       env=child_env(TINYGPTV_VK_LOADER="libtinygptv-no-such-vulkan.so.1"), cwd=CHILD_CWD)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("VulkanError:") and lines[1] == "cpu", p.stdout


def _tinygptv(*args, **env):
    p = subprocess.run([sys.executable, "-m", "tinygptv_native", *args], capture_output=True, text=True, timeout=300,
                       env=child_env(**env), cwd=CHILD_CWD)
    return p.returncode, p.stdout, p.stderr


def test_the_run_command_on_the_gpu(vk):
    rc, out, err = _tinygptv("run", "--device", "gpu", "--gpu", "0", "-p", "How many shapes are there?")
    assert rc == 0, err
    assert out.strip() == "three"
    rc, out, err = _tinygptv("run", "--device", "gpu", "--gpu", "9", "-p", "x")
    assert rc == 1 and out == ""
    assert err.strip().splitlines()[-1].startswith("tinygptv: error: gpu=9 does not exist (Vulkan devices: 0: ")


def test_gpu_layers_choice_and_its_errors(vk, files):
    """gpu_layers outside [0, n_layer] is refused with the value and the layer count; a budget that holds one
    layer but not the model refuses the whole with how many layers fit, and takes that many."""
    from tinygptv_native import Model, gpu_plan
    from tinygptv_native.gpu import device_limits
    path = files["f32"][0]
    for bad in (-1, 4):
        with pytest.raises(ValueError, match=rf"gpu_layers={bad} is outside \[0, 3\]: the model has 3 decoder layers"):
            Model(path, device="gpu", n_ctx=N_CTX, gpu_layers=bad)
    with pytest.raises(TypeError, match="gpu_layers must be an int or None, got str"):
        Model(path, device="gpu", n_ctx=N_CTX, gpu_layers="2")
    with pytest.raises(ValueError, match=r"gpu_layers=2 puts layers on a GPU but device='cpu' uses none"):
        Model(path, device="cpu", gpu_layers=2)
    with pytest.raises(_core.ModelError, match=r"gpu_layers 4 must be in \[0, 3\]"):
        _core.Context(_core.Model(path, 1), N_CTX, 1, 1, True, 64.0, 0, 4)
    max_buffer, workgroup = device_limits(_core.vulkan_devices()[0])
    hp, tensors = gpu_plan.file_tensors(path)
    one = gpu_plan.plan(tensors, hp, N_CTX, 4, max_buffer=max_buffer, workgroup=workgroup, gpu_layers=1).total
    budget_mb = (one + 1) / 2**20
    with pytest.raises(ValueError, match=r"^the model does not fit Vulkan device 0 .*gpu_layers / --gpu-layers N: "
                                         r"1 of 3 fit, or use device='cpu'\)$"):
        Model(path, device="gpu", n_ctx=N_CTX, gpu_budget_mb=budget_mb)
    m = Model(path, device="gpu", n_ctx=N_CTX, gpu_budget_mb=budget_mb, gpu_layers=1)
    assert (m.device, m.gpu_layers, m.engine.ctx.gpu_layers) == ("gpu", 1, 1)
    assert m.engine.ctx.gpu_weight_bytes <= one
    cpu = Model(path, device="cpu", n_ctx=N_CTX)
    ids = [int(t) for t in _prompt(6, 9)]
    assert np.abs(m.logits(ids) - cpu.logits(ids)).max() <= BOUND
    assert Model(path, n_ctx=N_CTX, gpu=0, gpu_budget_mb=budget_mb).device == "cpu"  # auto: the whole does not fit
    assert Model(path, n_ctx=N_CTX, gpu=0, gpu_budget_mb=budget_mb, gpu_layers=1).gpu_layers == 1


def test_the_run_command_with_gpu_layers(vk):
    rc, out, err = _tinygptv("run", "--device", "gpu", "--gpu-layers", "2", "-p", "How many shapes are there?")
    assert rc == 0, err
    assert out.strip() == "three"
    rc, out, err = _tinygptv("run", "--device", "gpu", "-ngl", "9", "-p", "x")
    assert rc == 1 and out == ""
    assert err.strip().splitlines()[-1] == ("tinygptv: error: gpu_layers=9 is outside [0, 4]: the model has 4 "
                                            "decoder layers")
