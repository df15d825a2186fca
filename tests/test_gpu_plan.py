"""The GPU memory plan (tinygptv_native/gpu_plan.py): pure arithmetic over a model's tensor table, checked
by hand on its parts and for a real-size TinyGPT-V in Q4_0 at n_ctx 2048 (no device, no file needed). Its
agreement with what the GPU decoder and image path allocate is checked on a device in test_vulkan_model.py."""
import pytest

from tinygptv_native import _core
from tinygptv_native.convert import schema
from tinygptv_native.convert.quantize import choose_type
from tinygptv_native.demo import DEMO_MODEL
from tinygptv_native.gpu import device_budget
from tinygptv_native.gpu_plan import (BUFFER_ALIGN, IMAGE_TABLES, STAGING_BYTES, Hparams, Tensor, file_tensors,
                                      hparams_from_metadata, image_activation_buffers, is_image_tensor,
                                      layers_that_fit, plan, plan_file, split_count, weight_buffers)

GIB = 2**30
# block size and bytes per block of the storage types a Q4_0 file holds
BLOCKS = {"F32": (1, 4), "F16": (1, 2), "Q4_0": (32, 18), "Q6_K": (256, 210), "Q8_0": (32, 34)}

# TinyGPT-V's Phi-2 at its real size (rotary over 32 of a head's 80 dims) and its image path, EVA ViT-g at
# 224 px, the Q-Former and the projector: all of it goes to the device.
REAL = Hparams(n_embd=2560, n_layer=32, n_head=32, n_head_kv=32, n_ff=10240, n_vocab=51200, n_rot=32)
V_EMBD, V_FF, Q_EMBD, Q_FF, N_QUERY, IMAGE_TOKENS = 1408, 6144, 768, 3072, 32, 1 + (224 // 14) ** 2


def real_size_tensors():
    """(name, GGML shape) of every tensor of the real-size model, as the converter names them."""
    h, out = REAL, []

    def lin(base, rows, cols, bias=True):
        out.append((base + ".weight", (cols, rows)))
        if bias:
            out.append((base + ".bias", (rows,)))

    def norm(base, n, bias=True):
        out.append((base + ".weight", (n,)))
        if bias:
            out.append((base + ".bias", (n,)))

    hd = h.n_embd // h.n_head
    out.append((schema.TOKEN_EMBD, (h.n_embd, h.n_vocab)))
    for i in range(h.n_layer):
        b = lambda n: schema.blk(i, n)  # noqa: E731
        norm(b(schema.ATTN_NORM), h.n_embd)
        norm(b(schema.ATTN_Q_NORM), hd)
        norm(b(schema.ATTN_K_NORM), hd)
        lin(b(schema.ATTN_QKV), 3 * h.n_embd, h.n_embd)
        lin(b(schema.ATTN_OUTPUT), h.n_embd, h.n_embd)
        norm(b(schema.ATTN_POST_NORM), h.n_embd, bias=False)
        lin(b(schema.FFN_UP), h.n_ff, h.n_embd)
        lin(b(schema.FFN_DOWN), h.n_embd, h.n_ff)
    norm(schema.OUTPUT_NORM, h.n_embd)
    lin(schema.OUTPUT, h.n_vocab, h.n_embd)
    lin(schema.V_PATCH_EMBD, V_EMBD, 3 * 14 ** 2)
    out.append((schema.V_CLS, (V_EMBD,)))
    out.append((schema.V_POS_EMBD, (V_EMBD, IMAGE_TOKENS)))
    for i in range(39):
        b = lambda n: schema.vblk(i, n)  # noqa: E731
        norm(b(schema.V_LN1), V_EMBD)
        lin(b(schema.V_ATTN_QKV), 3 * V_EMBD, V_EMBD)
        lin(b(schema.V_ATTN_OUT), V_EMBD, V_EMBD)
        norm(b(schema.V_LN2), V_EMBD)
        lin(b(schema.V_FFN_UP), V_FF, V_EMBD)
        lin(b(schema.V_FFN_DOWN), V_EMBD, V_FF)
    norm(schema.V_POST_LN, V_EMBD)
    out.append((schema.QF_QUERY, (Q_EMBD, N_QUERY)))
    norm(schema.QF_EMB_LN, Q_EMBD)
    for i in range(12):
        for part in schema.QF_SELF + (schema.QF_CROSS if i % 2 == 0 else ()) + schema.QF_FFN:
            base = schema.qfblk(i, part)
            if part.endswith("_ln"):
                norm(base, Q_EMBD)
            elif part in ("cross_k", "cross_v"):
                lin(base, Q_EMBD, V_EMBD)
            elif part == "ffn_up":
                lin(base, Q_FF, Q_EMBD)
            elif part == "ffn_down":
                lin(base, Q_EMBD, Q_FF)
            else:
                lin(base, Q_EMBD, Q_EMBD)
    lin(schema.MM_0, 4096, Q_EMBD)
    lin(schema.MM_1, h.n_embd, 4096)
    return out


def q4_0_tensor(name, ne, vision_type=None):
    """The tensor as a Q4_0 file stores it (the converter's choice of type per tensor; vision_type: its
    --vision-type, the image path's own target)."""
    t = choose_type(name, list(ne), "F16", "q4_0", REAL.n_layer, vision_type)
    blk, size = BLOCKS[t]
    n = 1
    for d in ne:
        n *= d
    assert n % blk == 0
    return Tensor(name, t, tuple(ne), n // blk * size)


def _aligned(n):
    return -(-n // BUFFER_ALIGN) * BUFFER_ALIGN


LAVAPIPE_BUFFER = 2**27  # 128 MiB, lavapipe's maxStorageBufferRange: no Q4_0 tensor of Phi-2 is split there


def test_real_size_tinygptv_q4_0_fits_7_gib_at_2048():
    tensors = [q4_0_tensor(n, ne) for n, ne in real_size_tensors()]
    n_params = sum(__import__("math").prod(t.shape) for t in tensors)
    assert 3.6e9 < n_params < 4.0e9  # Phi-2 2.78 B + EVA ViT-g ~1.0 B + Q-Former and projector
    p = plan(tensors, REAL, n_ctx=2048, max_buffer=LAVAPIPE_BUFFER)
    # the weights: the matrices as stored (the image path's in Q4_0 as the converter chooses for a q4_0
    # file, but for the F16 patch embedding, 588 columns), the vectors and the image path's tables (v.cls,
    # v.pos_embd, qf.query) in float32, the RoPE tables
    img = [t for t in tensors if is_image_tensor(t.name)]
    assert {t.type for t in img if len(t.shape) == 2 and t.name not in IMAGE_TABLES} == {"Q4_0", "F16"}
    mats = sum(t.nbytes for t in tensors if len(t.shape) == 2 and t.name not in IMAGE_TABLES)
    vecs = sum(4 * __import__("math").prod(t.shape) for t in tensors if len(t.shape) == 1 or t.name in IMAGE_TABLES)
    rope = 2 * 4 * 2048 * 16
    n_buffers = len(tensors) + 2  # one each (none is split at 128 MiB) and cos, sin
    assert p.weight_buffers == n_buffers
    assert mats + vecs + rope <= p.weights < mats + vecs + rope + n_buffers * BUFFER_ALIGN
    # Q4_0 is 4.5 bits a weight, the output head's Q6_K 6.56: 1.60 GB (1,527 MiB) for Phi-2's 2.78 B,
    # 597 MiB for the image path
    dec_weights = sum(t.nbytes if len(t.shape) == 2 else 4 * t.shape[0] for t in tensors if not is_image_tensor(t.name))
    assert 1.4 * GIB < dec_weights < 1.5 * GIB
    assert 0.55 * GIB < p.weights - dec_weights - rope < 0.6 * GIB, p.describe()
    # keys and values, 32 layers x 2048 positions x 2560 x 2 bytes each
    assert p.kv_cache == 2 * 32 * 2048 * 2560 * 2 == 640 * 2**20
    # a step of 256 rows, all wanting logits: five rows of n_embd, q/k/v, the FFN, tokens, positions and the
    # logits in float32; decode attention's partial outputs (2048 keys in 32 chunks of 64, 32 heads of 80 + 2)
    B = 256
    assert split_count(2048) == 8 and split_count(2048, workgroup=32) == 16
    rows = [4 * B * 2560] * 5 + [4 * B * 3 * 2560, 4 * B * 10240, 4 * B, 4 * B, 4 * B * 51200]
    part = 4 * 32 * 8 * 82
    # an image's pass: 257 tokens of 1408 (1 + 16^2 patches of 588 values), the ViT's FFN of 6144; 32
    # queries of 768, the Q-Former's FFN of 3072, the projector's 4096 and the LM's 2560
    T, E, P, K = 257, 1408, 256, 588
    image = [4 * n for n in [P * K, P * K, T * E, T * E, T * E, T * E, T * 3 * E, T * 6144,
                             32 * 768, 32 * 768, 32 * 768, 32 * 768, 32 * 3 * 768, T * 2 * 768, 32 * 3072, 32 * 4096,
                             32 * 2560]]
    assert image_activation_buffers(tensors) == (image, [4 * P * K, 4 * 32 * 2560])
    assert p.activations == sum(_aligned(r) for r in rows + image) + _aligned(part) + BUFFER_ALIGN
    assert p.activations < 101 * 2**20  # 30 MiB of rows, 50 MiB of logits, 20 MiB of the image's pass
    # host-visible: the inputs of 256 rows, the logits' copy, 64 MiB of transfer (the largest weight, the
    # output head in Q6_K, 51200 x 2560 x 210/256 bytes = 102.5 MiB, goes in two pieces), an image's pixels
    # and its embeddings
    assert p.largest_buffer == 51200 * 2560 // 256 * 210
    assert p.staging == (_aligned(4 * B * 2562) + 4 * B * 51200 + STAGING_BYTES + _aligned(4 * P * K)
                         + _aligned(4 * 32 * 2560))
    assert p.total < 7 * GIB, p.describe()
    # 2,982.8 MiB: weights 2,125.1, KV cache 640, activations 100.3, staging 117.4
    assert 2.85 * GIB < p.total < 2.95 * GIB, p.describe()


# The image path's 1.10 B matrix weights: 1,118.9 MiB in Q8_0 (8.5 bits; the patch embedding, 588 columns,
# stays F16), 2,104.7 MiB in F16. The plans' totals: 3,508.5 and 4,494.4 MiB.
@pytest.mark.parametrize("vision_type,image_mib,total_mib", [("q8_0", 1118.9, 3508.5), ("f16", 2104.7, 4494.4)])
def test_real_size_tinygptv_with_a_wider_image_path_fits_7_gib(vision_type, image_mib, total_mib):
    """q4_0 --vision-type q8_0 | f16: the image path's weights at 8.5 or 16 bits, the plan still under 7 GiB."""
    tensors = [q4_0_tensor(n, ne, vision_type) for n, ne in real_size_tensors()]
    q4 = [q4_0_tensor(n, ne) for n, ne in real_size_tensors()]
    base = plan(q4, REAL, n_ctx=2048, max_buffer=LAVAPIPE_BUFFER)
    p = plan(tensors, REAL, n_ctx=2048, max_buffer=LAVAPIPE_BUFFER)

    def img_mats(ts):
        return [t.nbytes for t in ts if is_image_tensor(t.name) and len(t.shape) == 2 and t.name not in IMAGE_TABLES]

    assert abs(sum(img_mats(tensors)) / 2**20 - image_mib) < 0.1, sum(img_mats(tensors)) / 2**20
    assert (p.kv_cache, p.activations, p.staging) == (base.kv_cache, base.activations, base.staging)
    # only the image path's matrices grew (each buffer's rounding to BUFFER_ALIGN aside)
    grew = sum(img_mats(tensors)) - sum(img_mats(q4))
    assert abs(p.weights - base.weights - grew) < BUFFER_ALIGN * len(img_mats(q4))
    assert abs(p.total / 2**20 - total_mib) < 0.1 and p.total < 7 * GIB, p.describe()


def test_a_split_tensor_takes_more_buffers_of_the_same_bytes():
    tensors = [q4_0_tensor(n, ne) for n, ne in real_size_tensors()]
    whole = weight_buffers(tensors, REAL, 2048)
    split = weight_buffers(tensors, REAL, 2048, max_buffer=2**24)  # 16 MiB parts
    assert sum(split) == sum(whole) and len(split) > len(whole)
    assert max(split) <= 2**24
    row = 2560 // 32 * 18  # a token embedding row in Q4_0
    assert 2**24 // row * row in split
    with pytest.raises(ValueError, match="one row of 1440 bytes exceeds the largest buffer of 1000 bytes"):
        weight_buffers(tensors, REAL, 2048, max_buffer=1000)


@pytest.mark.parametrize("ng", [0, 1, 16, 31, 32])
def test_a_split_plan_counts_only_the_offloaded_layers(ng):
    """gpu_layers=ng: the token embedding, blocks 0..ng-1 and the RoPE tables on the device, the output norm and
    head only with all 32; the KV cache of ng layers; without the head no logits on the device, the hidden
    state read back instead. The image path is on the device whatever ng; with ng 0 it is all there is."""
    tensors = [q4_0_tensor(n, ne) for n, ne in real_size_tensors()]
    whole = plan(tensors, REAL, n_ctx=2048, max_buffer=LAVAPIPE_BUFFER)
    p = plan(tensors, REAL, n_ctx=2048, max_buffer=LAVAPIPE_BUFFER, gpu_layers=ng)
    if ng == 32:
        assert p == whole
        return

    def on_device(name):
        if is_image_tensor(name):
            return True
        if name.startswith("blk."):
            return int(name.split(".")[1]) < ng
        return name == "token_embd.weight" and ng > 0

    def size(t):  # matrices as stored, vectors and the image path's tables in float32
        return t.nbytes if len(t.shape) == 2 and t.name not in IMAGE_TABLES else 4 * __import__("math").prod(t.shape)

    up = [t for t in tensors if on_device(t.name)]
    rope = [4 * 2048 * 16] * 2 if ng else []
    assert p.weight_buffers == len(up) + len(rope)
    assert p.weights == sum(_aligned(b) for b in [size(t) for t in up] + rope)
    assert p.kv_cache == ng * 2048 * 2560 * 2 * 2
    B = 256
    image_dev, image_host = image_activation_buffers(tensors)
    if ng == 0:
        assert p.activations == sum(_aligned(b) for b in image_dev)
        # the transfer buffer as large as the largest upload (here under the 64 MiB cap)
        assert p.staging == _aligned(max(size(t) for t in up)) + sum(_aligned(b) for b in image_host)
        assert p.largest_buffer == max([size(t) for t in up] + image_dev)
    else:
        assert p.activations == whole.activations - _aligned(4 * B * 2560) - _aligned(4 * B * 51200)
        assert p.staging == (_aligned(4 * B * 2562) + _aligned(4 * B * 2560) + STAGING_BYTES
                             + sum(_aligned(b) for b in image_host))
        assert p.largest_buffer == 51200 * 2560 // 32 * 18  # the token embedding stays
    assert p.total < whole.total


def test_the_layers_that_fit_a_budget():
    tensors = [q4_0_tensor(n, ne) for n, ne in real_size_tensors()]
    totals = [plan(tensors, REAL, n_ctx=2048, gpu_layers=ng).total for ng in range(33)]
    assert totals == sorted(totals) and len(set(totals)) == 33
    assert layers_that_fit(tensors, REAL, totals[16], n_ctx=2048) == 16
    assert layers_that_fit(tensors, REAL, totals[16] - 1, n_ctx=2048) == 15
    assert layers_that_fit(tensors, REAL, totals[32], n_ctx=2048) == 32
    assert layers_that_fit(tensors, REAL, totals[1] - 1, n_ctx=2048) == 0


@pytest.mark.parametrize("bad", [-1, 33])
def test_gpu_layers_outside_the_model_are_refused(bad):
    t = [Tensor("blk.0.attn_norm.weight", "F32", (2560,), 4 * 2560)]
    with pytest.raises(ValueError, match=rf"gpu_layers={bad} is outside \[0, 32\]: the model has 32 decoder layers"):
        plan(t, REAL, n_ctx=64, gpu_layers=bad)
    with pytest.raises(TypeError, match="gpu_layers must be an int or None, got bool"):
        plan(t, REAL, n_ctx=64, gpu_layers=True)


def test_more_sequences_and_context_scale_the_cache():
    t = [Tensor("blk.0.attn_norm.weight", "F32", (2560,), 4 * 2560)]
    one = plan(t, REAL, n_ctx=1024)
    four = plan(t, REAL, n_ctx=1024, n_seq=4)
    assert four.kv_cache == 4 * one.kv_cache
    assert plan(t, REAL, n_ctx=2048).kv_cache == 2 * one.kv_cache
    # the norm and the two RoPE tables of 1024 x 16
    assert one.weights == _aligned(4 * 2560) + 2 * 4 * 1024 * 16 and one.weight_buffers == 3
    with pytest.raises(ValueError, match="positive"):
        plan(t, REAL, n_ctx=0)


def test_the_budget_from_the_driver_or_the_heap():
    heap = {"size": 8 * GIB, "device_local": True, "budget": None, "usage": None}
    bar = {"size": 256 * 2**20, "device_local": True, "budget": None, "usage": None}
    host = {"size": 32 * GIB, "device_local": False, "budget": None, "usage": None}
    size, why = device_budget({"memory_heaps": [host, bar, heap]})
    assert size == 8 * GIB and why == "the size of device-local heap 2 (the driver offers no VK_EXT_memory_budget)"
    with_budget = dict(heap, budget=7 * GIB, usage=GIB // 2)
    free, why = device_budget({"memory_heaps": [host, with_budget]})
    assert free == 7 * GIB - GIB // 2
    assert why == "the free VK_EXT_memory_budget of device-local heap 1: budget 7,168.0 MiB less 512.0 MiB in use"
    # no heap flagged device-local: the largest of them
    assert device_budget({"memory_heaps": [dict(host, size=GIB), dict(host, size=2 * GIB)]})[0] == 2 * GIB
def test_plan_of_a_model_file():
    r = _core.GGUFReader(str(DEMO_MODEL))
    tensors = r.tensors()
    hp = hparams_from_metadata(r.metadata(max_array=0), {n: tuple(s) for n, _t, s, _o, _b in tensors})
    md = r.metadata(max_array=0)
    assert hp.n_embd == md["tinygptv.embedding_length"] and hp.n_layer == md["tinygptv.block_count"]
    assert hp.n_rot == md.get("tinygptv.rope.dimension_count", hp.head_dim)
    p = plan_file(str(DEMO_MODEL), n_ctx=512)
    # every tensor, the image path's too; F16 vectors become float32
    assert sum(b for *_r, b in tensors) <= p.weights < sum(b for *_r, b in tensors) * 2
    assert p.kv_cache == hp.n_layer * 512 * 2 * hp.kv_dim * 2
    with pytest.raises(ValueError, match="no memory plan for architecture 'llama'"):
        hparams_from_metadata({"general.architecture": "llama"}, {})


def _fake_device(heap):
    """A device listing entry as vulkan_devices() gives it, with one heap."""
    return {"index": 0, "name": "Fake GPU", "type": "discrete", "memory_heaps": [heap],
            "device_local_bytes": heap["size"], "max_storage_buffer_range": 2**30, "max_allocation": 2**32,
            "max_workgroup_invocations": 1024}


@pytest.mark.parametrize("heap,source", [
    ({"size": 2**20, "device_local": True, "budget": None, "usage": None},
     r"budget is 1\.0 MiB \(the size of device-local heap 0 \(the driver offers no VK_EXT_memory_budget\)\)"),
    ({"size": 8 * GIB, "device_local": True, "budget": 3 * 2**20, "usage": 2**20},
     r"budget is 2\.0 MiB \(the free VK_EXT_memory_budget of device-local heap 0: "
     r"budget 3\.0 MiB less 1\.0 MiB in use\)"),
])
def test_a_model_beyond_the_budget_is_refused_with_the_plan_and_the_budget(monkeypatch, heap, source):
    from tinygptv_native import gpu
    monkeypatch.setattr(gpu, "vulkan_devices", lambda: [_fake_device(heap)])
    with pytest.raises(ValueError, match=r"does not fit Vulkan device 0 \(Fake GPU\): at n_ctx 512 for 2 sequence\(s\) "
                                         r"it needs weights .* MiB, KV cache .*; the " + source):
        gpu.choose_device(str(DEMO_MODEL), "gpu", None, 512, 2)
    assert gpu.choose_device(str(DEMO_MODEL), "auto", None, 512, 2) is None  # auto: the CPU
    big = dict(heap, size=64 * GIB, budget=None if heap["budget"] is None else 60 * GIB)
    monkeypatch.setattr(gpu, "vulkan_devices", lambda: [_fake_device(big)])
    assert gpu.choose_device(str(DEMO_MODEL), "auto", None, 512, 2) == 0


def test_the_device_listing_shows_the_budget():
    from tinygptv_native.gpu import format_device
    d = dict(_fake_device({"size": 8 * GIB, "device_local": True, "budget": 7 * GIB, "usage": GIB // 2}),
             api_version="1.3.0", driver="", subgroup_size=32, fp16=True, int8=True, cooperative_matrix=False)
    assert "memory:              8.0 GiB device-local (budget 7.0 GiB, 0.5 GiB in use)" in format_device(d)


def test_a_split_that_fits_is_taken_and_the_refusal_says_how_many_layers_fit(monkeypatch):
    """A heap that holds the demo's first layers but not the whole decoder: the refusal of the whole model
    names --gpu-layers and how many layers fit; that many are taken, one more is refused."""
    from tinygptv_native import gpu
    hp, tensors = file_tensors(str(DEMO_MODEL))
    assert hp.n_layer >= 2
    k = hp.n_layer // 2
    fits = plan(tensors, hp, 512, 2, max_buffer=2**30, workgroup=64, gpu_layers=k).total
    heap = {"size": fits, "device_local": True, "budget": None, "usage": None}
    monkeypatch.setattr(gpu, "vulkan_devices", lambda: [_fake_device(heap)])
    with pytest.raises(ValueError, match=rf"^the model does not fit Vulkan device 0 .*put only the first layers on the "
                                         rf"GPU with gpu_layers / --gpu-layers N: {k} of {hp.n_layer} fit"):
        gpu.choose_device(str(DEMO_MODEL), "gpu", None, 512, 2)
    assert gpu.choose_device(str(DEMO_MODEL), "gpu", None, 512, 2, gpu_layers=k) == 0
    assert gpu.choose_device(str(DEMO_MODEL), "auto", None, 512, 2, gpu_layers=k) == 0
    assert gpu.choose_device(str(DEMO_MODEL), "auto", None, 512, 2) is None
    with pytest.raises(ValueError, match=rf"^the first {k + 1} of its {hp.n_layer} layers do not fit Vulkan device 0"):
        gpu.choose_device(str(DEMO_MODEL), "gpu", None, 512, 2, gpu_layers=k + 1)
