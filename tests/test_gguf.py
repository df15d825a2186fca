"""GGUF reader and model loader against hostile files: one test per attack class (H1-H3 header,
K1-K8 metadata, T1-T5 tensor infos, D1-D2 data, S1-S3 model semantics), plus round trips against
gguf-py's reader.

Every malformed file is loaded in a separate worker process whose address space is capped at
(its size after imports + 512 MiB): a parser that tries a large allocation gets MemoryError there
(a failure, since only GGUFError/ModelError are accepted), a crash or a hang kills only the worker
and is reported with its signal. The worker also reports its peak RSS after each load.
"""
from __future__ import annotations

import json
import math
import os
import select
import signal
import struct
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import gguf_builder as gb  # noqa: E402
from gguf_builder import (ARRAY, BOOL, F32, F64, GT_BF16, GT_F16, GT_F32, GT_I8, GT_I32, GT_I64,  # noqa: E402
                          GT_Q4_0, GT_Q8_0, I8, I16, I32, I64, STRING, U8, U16, U32, U64, set_fields)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADDRESS_SPACE_HEADROOM = 512 << 20  # bytes the worker may map beyond its size after imports
RSS_GROWTH_LIMIT_KB = 64 << 10      # peak RSS may grow by at most 64 MiB over the whole module
REQUEST_TIMEOUT_S = 30


# ---- the isolated loader process ------------------------------------------------------------------

def _worker_main():
    import resource
    import numpy  # noqa: F401
    sys.path.append(ROOT)  # after PYTHONPATH, so a sanitizer build staged there is the one used
    from tinygptv_native import _core

    sanitized = "asan" in os.environ.get("LD_PRELOAD", "") or "tsan" in os.environ.get("LD_PRELOAD", "")
    if not sanitized:  # ASan/TSan reserve terabytes of shadow memory; they bound allocations themselves
        with open("/proc/self/status") as f:
            vm = int([line for line in f if line.startswith("VmSize:")][0].split()[1]) * 1024
        limit = vm + ADDRESS_SPACE_HEADROOM
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def run(op, path):
        if op == "reader":
            r = _core.GGUFReader(path)
            r.metadata()
            for name, *_ in r.tensors():
                r.tensor_data(name)
        elif op == "validate":
            _core.GGUFReader(path).validate()
        elif op == "model":
            m = _core.Model(path)
            s = _core.Context(m, 8, 1, 1, False)
            s.eval_tokens(0, numpy.array([1, 2, 3], numpy.int32))
        else:
            raise RuntimeError(op)

    for line in sys.stdin:
        req = json.loads(line)
        out = []
        for path in req["paths"]:
            try:
                run(req["op"], path)
                res = {"ok": True}
            except BaseException as e:  # noqa: BLE001 - reported to the test, which judges the type
                res = {"ok": False, "exc": type(e).__name__, "msg": str(e),
                       "bases": [c.__name__ for c in type(e).__mro__]}
            res["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            out.append(res)
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


class Loader:
    """Talks to the worker; restarts it after a crash or a hang."""

    def __init__(self):
        self.proc = None
        self.base_rss_kb = None

    def _start(self):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)

    def run(self, op, paths):
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write(json.dumps({"op": op, "paths": [str(p) for p in paths]}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], REQUEST_TIMEOUT_S * max(1, len(paths) // 200))
        if not ready:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            pytest.fail(f"loader hung (> {REQUEST_TIMEOUT_S} s) on {op} of {paths[:3]}")
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait()
            self.proc = None
            sig = signal.Signals(-rc).name if rc < 0 else f"exit {rc}"
            pytest.fail(f"loader process died ({sig}) on {op} of {paths[:3]}")
        res = json.loads(line)
        if self.base_rss_kb is None:
            self.base_rss_kb = res[0]["maxrss_kb"]
        for r in res:
            assert r["maxrss_kb"] - self.base_rss_kb < RSS_GROWTH_LIMIT_KB, \
                f"peak RSS grew by {(r['maxrss_kb'] - self.base_rss_kb) >> 10} MiB loading {paths[:3]}"
        return res

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def loader():
    ld = Loader()
    # Warm up with a valid model so the baseline RSS includes the extension's steady state.
    yield ld
    ld.close()


def fails(loader, tmp_path, data: bytes, *fragments, op="reader", exc="GGUFError", name="bad.gguf"):
    """Loads `data` in the worker and checks it raises `exc` (a ValueError) whose message holds every
    fragment. Returns the message."""
    p = tmp_path / name
    p.write_bytes(data)
    (r,) = loader.run(op, [p])
    assert not r["ok"], f"{op} accepted a malformed file (expected {exc} with {fragments})"
    assert r["exc"] == exc, f"expected {exc}, got {r['exc']}: {r['msg']}"
    assert "ValueError" in r["bases"]
    for f in fragments:
        assert f in r["msg"], f"message {r['msg']!r} lacks {f!r}"
    assert r["msg"].isprintable(), f"message holds unprintable characters: {r['msg']!r}"
    return r["msg"]


def loads(loader, tmp_path, data: bytes, op="reader", name="ok.gguf"):
    p = tmp_path / name
    p.write_bytes(data)
    (r,) = loader.run(op, [p])
    assert r["ok"], f"{op} rejected a valid file: {r.get('exc')}: {r.get('msg')}"


# ---- files --------------------------------------------------------------------------------------

def small_builder(alignment=None) -> gb.GGUFBuilder:
    """A few keys of assorted types and tensors of several types; not a model."""
    rng = np.random.default_rng(1)
    b = gb.GGUFBuilder(alignment=alignment)
    b.kv("general.architecture", STRING, "test")
    b.kv("test.u32", U32, 7)
    b.kv("test.flag", BOOL, 1)
    b.kv("test.f32", F32, 0.5)
    b.kv("test.ints", ARRAY, [1, -2, 3], I32)
    b.kv("test.strs", ARRAY, ["a", "bc", ""], STRING)
    b.tensor_np("a", rng.standard_normal((3, 4)).astype(np.float32))
    b.tensor_np("b", rng.standard_normal(8).astype(np.float32), GT_F16)
    b.tensor("c", [32, 2], GT_Q8_0, gb.q8_0_bytes(rng.standard_normal(64)))
    return b


SMALL = small_builder()
PHI = gb.phi2_builder()


def phi_with(fn, **kw) -> bytes:
    """A fresh phi2 builder, edited by fn(builder), serialised."""
    b = gb.phi2_builder(**kw)
    fn(b)
    return b.build()


# ---- H: header ----------------------------------------------------------------------------------

def test_h1_tiny_and_bad_magic(loader, tmp_path):
    fails(loader, tmp_path, b"", "too small", "0 bytes")
    fails(loader, tmp_path, b"GGU", "too small", "3 bytes")
    fails(loader, tmp_path, SMALL.build(set_fields(magic=b"FUGG")), "bad magic 'FUGG'")
    msg = fails(loader, tmp_path, SMALL.build(set_fields(magic=b"\x00\x01\xff\x7f")), "bad magic")
    assert "'????'" in msg  # exactly four replaced characters: no over-read past the magic
    fails(loader, tmp_path, b"GGUF" + b"\x03\0\0\0" + b"\0" * 15, "too small", "23 bytes")
    # a directory and a missing path
    fails(loader, tmp_path, b"x", name="plain")  # sanity of the helper
    (r,) = loader.run("reader", [tmp_path])
    assert r["exc"] == "GGUFError" and "not a regular file" in r["msg"]
    (r,) = loader.run("reader", [tmp_path / "missing.gguf"])
    assert r["exc"] == "GGUFError" and "missing.gguf" in r["msg"] and "No such file" in r["msg"]


@pytest.mark.parametrize("version,fragment", [(0, "version 0"), (1, "version 1"), (2, "version 2"),
                                              (4, "version 4"), (0x03000000, "byte-swapped")])
def test_h2_version(loader, tmp_path, version, fragment):
    fails(loader, tmp_path, SMALL.build(set_fields(version=version)), fragment)


def test_h3_counts(loader, tmp_path):
    nk, nt = len(SMALL.kvs), len(SMALL.tensors)
    fails(loader, tmp_path, SMALL.build(set_fields(n_tensors=2**64 - 1)), "tensor_count 18446744073709551615")
    fails(loader, tmp_path, SMALL.build(set_fields(n_kv=2**64 - 1)), "metadata_kv_count 18446744073709551615")
    fails(loader, tmp_path, SMALL.build(set_fields(n_kv=2**40)), "metadata_kv_count 1099511627776")
    fails(loader, tmp_path, SMALL.build(set_fields(n_tensors=2**31)), "tensor_count 2147483648")
    # counts within the size bound but more than the file holds: the parse runs into the end, cleanly
    fails(loader, tmp_path, SMALL.build(set_fields(n_kv=nk + 20)), "")
    fails(loader, tmp_path, SMALL.build(set_fields(n_tensors=nt + 3)), "")
    # fewer keys than written: the remaining key bytes are read as tensor infos and rejected
    fails(loader, tmp_path, SMALL.build(set_fields(n_kv=nk - 1)), "tensor 'test.strs'", "n_dims")


# ---- K: metadata --------------------------------------------------------------------------------

def test_k1_key_length(loader, tmp_path):
    fails(loader, tmp_path, SMALL.build(set_fields(**{"kv[1].key_len": 2**64 - 1})),
          "metadata entry 1 key", "18446744073709551615", "exceeds the limit")
    size = len(SMALL.build())
    fails(loader, tmp_path, SMALL.build(set_fields(**{"kv[1].key_len": size})), "metadata entry 1 key", "truncated")
    # 1 GiB claimed in a 1 KiB file: refused before any allocation (the worker's address space is capped)
    data = SMALL.build(set_fields(**{"kv[1].key_len": 1 << 30}))
    assert len(data) < 2048
    fails(loader, tmp_path, data, "needs 1073741824 bytes")
    fails(loader, tmp_path, small_builder().kv("s", STRING, "x").build(set_fields(**{"kv[6].value.len": 2**63})),
          "metadata 's'", "9223372036854775808")


def test_k2_keys(loader, tmp_path):
    fails(loader, tmp_path, small_builder().kv("", U8, 1).build(), "empty key")
    fails(loader, tmp_path, small_builder().add_kv("test.u32", U32, 8).build(), "duplicate metadata key 'test.u32'")
    # valid UTF-8, non-ASCII: accepted and round-tripped exactly
    p = tmp_path / "utf8.gguf"
    small_builder().kv("général.名前", STRING, "värde ✓").write(p)
    from tinygptv_native import _core
    assert _core.GGUFReader(str(p)).metadata()["général.名前"] == "värde ✓"
    # not UTF-8: accepted as bytes (GGUF does not require UTF-8), never mangles error text
    loads(loader, tmp_path, small_builder().kv(b"bad\xff\xfekey", U8, 1).build())
    msg = fails(loader, tmp_path, small_builder().kv(b"bad\xff\x00key", U8, 1).add_kv(b"bad\xff\x00key", U8, 2).build(),
                "duplicate metadata key 'bad??key'")
    assert "\x00" not in msg


def test_k3_value_types(loader, tmp_path):
    for t in (13, 0xFFFFFFFF, 100):
        fails(loader, tmp_path, small_builder().kv("x", t, b"\0" * 8).build(), "metadata 'x'", f"invalid value type {t}")
    fails(loader, tmp_path, small_builder().kv("x", ARRAY, [], 13).build(), "invalid array element type 13")
    fails(loader, tmp_path, small_builder().kv("x", ARRAY, [(U8, [1, 2])], ARRAY).build(), "arrays of arrays")
    # deep nesting (5000 levels): rejected at the first level, no recursion
    depth = 5000
    body = struct.pack("<IQ", ARRAY, 1) * (depth - 1) + struct.pack("<IQ", U8, 1) + b"\1"
    b = small_builder().kv("deep", ARRAY, [(U8, [1])], ARRAY)
    fails(loader, tmp_path, b.build(set_fields(**{f"kv[{len(b.kvs) - 1}].elems": body})), "metadata 'deep'",
          "arrays of arrays")


def test_k4_array_lengths(loader, tmp_path):
    b = small_builder()
    i_ints = [k for k, *_ in b.kvs].index("test.ints")
    i_strs = [k for k, *_ in b.kvs].index("test.strs")
    # n * elem_size overflows 64 bits
    fails(loader, tmp_path, b.build(set_fields(**{f"kv[{i_ints}].count": 2**62 + 1})), "metadata 'test.ints'",
          "4611686018427387905", "exceeds the limit")
    u64b = small_builder().kv("big", ARRAY, [1, 2], U64)
    i_big = len(u64b.kvs) - 1
    fails(loader, tmp_path, u64b.build(set_fields(**{f"kv[{i_big}].count": 2**61 + 1})), "metadata 'big'",
          "exceeds the limit")
    # at the element cap, more than the file holds
    fails(loader, tmp_path, u64b.build(set_fields(**{f"kv[{i_big}].count": 1 << 30})), "metadata 'big'",
          "array of 1073741824 u64 needs 8589934592 bytes")
    fails(loader, tmp_path, b.build(set_fields(**{f"kv[{i_ints}].count": 1000})), "metadata 'test.ints'",
          "array of 1000 i32 needs 4000 bytes")
    # strings whose 8-byte length prefixes alone exceed the file
    fails(loader, tmp_path, b.build(set_fields(**{f"kv[{i_strs}].count": 100000})), "metadata 'test.strs'",
          "100000 strings cannot fit")
    # a string in the array longer than the file
    body = struct.pack("<Q", 1) + b"a" + struct.pack("<Q", 2**40)
    fails(loader, tmp_path, b.build(set_fields(**{f"kv[{i_strs}].elems": body})), "metadata 'test.strs'",
          "1099511627776")


@pytest.mark.parametrize("byte", [2, 255])
def test_k5_bool_bytes(loader, tmp_path, byte):
    b = small_builder()
    i = [k for k, *_ in b.kvs].index("test.flag")
    fails(loader, tmp_path, b.build(set_fields(**{f"kv[{i}].value": byte})), "metadata 'test.flag'",
          f"bool value {byte} is neither 0 nor 1")
    fails(loader, tmp_path, small_builder().kv("flags", ARRAY, [1, 0, byte], BOOL).build(), "metadata 'flags'",
          f"bool value {byte}")


@pytest.mark.parametrize("key,vtype,value,fragments", [
    ("phi2.block_count", STRING, "2", ("phi2.block_count", "type string, expected an integer")),
    ("phi2.block_count", F32, 2.0, ("phi2.block_count", "type f32, expected an integer")),
    ("phi2.embedding_length", I64, -32, ("phi2.embedding_length", "-32", "out of range")),
    ("phi2.attention.head_count", U64, 2**40, ("head_count", "1099511627776", "out of range")),
    ("phi2.context_length", ARRAY, [64], ("phi2.context_length", "type array")),
    ("phi2.attention.layer_norm_epsilon", U32, 1, ("layer_norm_epsilon", "type u32, expected a float")),
    ("phi2.rope.freq_base", STRING, "1e4", ("rope.freq_base", "type string, expected a float")),
    ("general.architecture", U32, 2, ("general.architecture", "type u32, expected string")),
])
def test_k6_wrong_typed_required_key(loader, tmp_path, key, vtype, value, fragments):
    et = U32 if vtype == ARRAY else None
    data = phi_with(lambda b: b.kv(key, vtype, value, et))
    fails(loader, tmp_path, data, *fragments, op="model")


def test_k6_alignment_type(loader, tmp_path):
    for t, v in ((I32, 32), (U64, 32), (STRING, "32"), (F32, 32.0)):
        fails(loader, tmp_path, small_builder().kv("general.alignment", t, v).build(), "general.alignment has type")


@pytest.mark.parametrize("align", [0, 3, 13, 48, 1 << 21, 1 << 31, 2**32 - 1])
def test_k7_bad_alignment(loader, tmp_path, align):
    b = small_builder()
    b.kv("general.alignment", U32, align)
    fails(loader, tmp_path, b.build(), f"general.alignment {align}", "power of two")


def test_k8_truncated_anywhere(loader, tmp_path):
    """Every prefix of a valid file (header, metadata, tensor infos, padding, data) is rejected. (The
    file is written without the padding after its last tensor, which a reader need not require.)"""
    data = small_builder().build(set_fields(**{"data_pad[2]": b""}))
    paths = []
    for n in range(len(data)):
        p = tmp_path / f"cut{n}.gguf"
        p.write_bytes(data[:n])
        paths.append(p)
    results = loader.run("reader", paths)
    for n, r in enumerate(results):
        assert not r["ok"], f"a file truncated to {n} of {len(data)} bytes was accepted"
        assert r["exc"] == "GGUFError", (n, r)
        if n >= 24:
            assert any(w in r["msg"] for w in ("truncated", "outside the file", "past the end", "cannot fit", "remain")), (n, r)


def test_k8_model_truncated(loader, tmp_path):
    """Prefixes of a phi2 model file: every byte of the header and metadata, then a sample of the data."""
    data = PHI.build(set_fields(**{f"data_pad[{len(PHI.tensors) - 1}]": b""}))
    from tinygptv_native import _core
    full = tmp_path / "full.gguf"
    full.write_bytes(data)
    header_end = len(data) - sum(gb._pad(len(t["data"]), 32) for t in PHI.tensors)
    rng = np.random.default_rng(0)
    cuts = list(range(0, header_end, 3)) + sorted(rng.integers(header_end, len(data), 100).tolist())
    paths = []
    for n in cuts:
        p = tmp_path / f"m{n}.gguf"
        p.write_bytes(data[:n])
        paths.append(p)
    for n, r in zip(cuts, loader.run("model", paths)):
        assert not r["ok"] and r["exc"] == "GGUFError", (n, r)
    assert _core.Model(str(full)).n_layer == 2


# ---- T: tensor infos ----------------------------------------------------------------------------

def test_t1_tensor_names(loader, tmp_path):
    loads(loader, tmp_path, small_builder().tensor("n" * 63, [4], GT_F32, b"\0" * 16).build())
    fails(loader, tmp_path, small_builder().tensor("n" * 64, [4], GT_F32, b"\0" * 16).build(),
          "64 bytes long (limit 63)")
    fails(loader, tmp_path, SMALL.build(set_fields(**{"ti[1].name_len": 2**64 - 1})), "tensor info 1 name",
          "18446744073709551615")
    fails(loader, tmp_path, SMALL.build(set_fields(**{"ti[1].name_len": 1 << 30})), "tensor info 1 name", "truncated")
    b = small_builder()
    b.tensors[2]["name"] = "a"
    fails(loader, tmp_path, b.build(), "duplicate tensor name 'a'")
    b = small_builder()
    b.tensors[1]["name"] = ""
    fails(loader, tmp_path, b.build(), "tensor info 1: empty tensor name")
    # names are UTF-8 text (a fuzzing find: invalid bytes made tensors() raise UnicodeDecodeError)
    for bad in (b"w\x98x", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"a\x00b", b"tab\tname", b"\xe2\x82"):
        b = small_builder()
        b.tensors[1]["name"] = bad
        fails(loader, tmp_path, b.build(), "tensor info 1: tensor name", "is not UTF-8 text")
    b = small_builder()
    b.tensors[1]["name"] = "blk.0.ä€😀"
    loads(loader, tmp_path, b.build())


@pytest.mark.parametrize("n_dims", [0, 5, 2**32 - 1])
def test_t2_n_dims(loader, tmp_path, n_dims):
    fails(loader, tmp_path, SMALL.build(set_fields(**{"ti[0].n_dims": n_dims})), "tensor 'a'", f"n_dims {n_dims}")


def test_t3_shapes(loader, tmp_path):
    fails(loader, tmp_path, SMALL.build(set_fields(**{"ti[0].ne[1]": 2**64 - 1})), "tensor 'a'",
          "dimension 1 has invalid size 18446744073709551615")
    fails(loader, tmp_path, SMALL.build(set_fields(**{"ti[0].ne[0]": 0})), "tensor 'a'", "dimension 0 has invalid size 0")
    big = 4 * (2**31 - 1)
    b = small_builder().tensor("huge", [big] * 4, GT_F32, b"")
    fails(loader, tmp_path, b.build(), "tensor 'huge'", "element count of shape overflows")
    # 2^62 I64 elements: representable count, byte size 2^65 > 2^64
    b = small_builder().tensor("wide", [2**31, 2**31], GT_I64, b"")
    fails(loader, tmp_path, b.build(), "tensor 'wide'", "byte size overflows")
    b = small_builder().tensor("big", [2**20, 2**10], GT_F32, b"")
    fails(loader, tmp_path, b.build(), "tensor 'big'", "needs 4294967296 bytes, more than the whole file")
    for t, name in ((GT_Q8_0, "Q8_0"), (GT_Q4_0, "Q4_0")):
        b = small_builder().tensor("q", [33, 2], t, b"\0" * 80)
        fails(loader, tmp_path, b.build(), "tensor 'q'", f"row length 33 is not a multiple of the {name} block size 32")


@pytest.mark.parametrize("type_id", [4, 5, 31, 32, 33, 36, 40, 41, 1000, 2**31, 2**32 - 1])
def test_t4_tensor_type(loader, tmp_path, type_id):
    fails(loader, tmp_path, SMALL.build(set_fields(**{"ti[0].type": type_id})), "tensor 'a'",
          f"unknown tensor type id {type_id}")


def test_t5_offsets(loader, tmp_path):
    off1 = 64  # tensor 'a' is 48 bytes, padded to 64
    fails(loader, tmp_path, SMALL.build(set_fields(**{"ti[0].offset": 2**64 - 1})),
          "tensor 'a' has data offset 18446744073709551615, expected 0")
    fails(loader, tmp_path, SMALL.build(set_fields(**{"ti[1].offset": off1 + 1})), "tensor 'b' has data offset 65, expected 64")
    fails(loader, tmp_path, SMALL.build(set_fields(**{"ti[1].offset": off1 + 32})), "tensor 'b' has data offset 96")
    fails(loader, tmp_path, SMALL.build(set_fields(**{"ti[1].offset": 0})), "tensor 'b' has data offset 0, expected 64")
    # out of order: b's data before a's
    fails(loader, tmp_path, SMALL.build(set_fields(**{"ti[0].offset": 32, "ti[1].offset": 0})),
          "tensor 'a' has data offset 32, expected 0")
    # past the end of the file
    b = small_builder()
    fails(loader, tmp_path, b.build(set_fields(**{"data[2]": b"\0" * 10, "data_pad[2]": b""})), "tensor 'c'",
          "outside the file")
    # two tensors of 0x7FFFFFFFFFFFFFC0 I8 elements: the size accumulator would overflow
    b = gb.GGUFBuilder()
    b.tensor("x", [0x7FFFFFFFFFFFFFC0], GT_I8, b"")
    b.tensor("y", [0x7FFFFFFFFFFFFFC0], GT_I8, b"")
    fails(loader, tmp_path, b.build(set_fields(**{"ti[1].offset": 0x7FFFFFFFFFFFFFC0})), "tensor 'x'", "needs",
          "more than the whole file")


# ---- D: data ------------------------------------------------------------------------------------

def test_d1_short_data(loader, tmp_path):
    data = SMALL.build(set_fields(**{"data_pad[2]": b""}))  # the file ends with the last tensor's data
    loads(loader, tmp_path, data)
    fails(loader, tmp_path, data[:-1], "tensor 'c'", "outside the file", "truncated")
    fails(loader, tmp_path, data[: len(data) // 2], "")
    # infos written, data section absent
    fails(loader, tmp_path, SMALL.build(set_fields(pad=b"", **{f"data[{j}]": b"" for j in range(3)},
                                                   **{f"data_pad[{j}]": b"" for j in range(3)})), "")
    # no tensors at all: a valid (metadata-only) file
    b = gb.GGUFBuilder()
    b.kv("general.architecture", STRING, "none")
    loads(loader, tmp_path, b.build())
    # zero-length tensor data is impossible (ne = 0 is rejected above); trailing bytes are allowed
    loads(loader, tmp_path, SMALL.build(set_fields(tail=b"\0" * 100)))


def _nan_file(kind):
    b = small_builder()
    rng = np.random.default_rng(3)
    if kind == "f32":
        x = rng.standard_normal(40).astype(np.float32)
        x[37] = np.nan
        b.tensor_np("w", x)
        return b, "tensor 'w' (F32, shape [40]): value at element 37 is NaN"
    if kind == "f16":
        x = rng.standard_normal((2, 8)).astype(np.float32)
        x[1, 3] = np.inf
        b.tensor_np("w", x, GT_F16)
        return b, "tensor 'w' (F16, shape [8, 2]): value at element 11 is +Inf"
    if kind == "bf16":
        x = rng.standard_normal(16).astype(np.float32)
        x[0] = -np.inf
        b.tensor_np("w", x, GT_BF16)
        return b, "tensor 'w' (BF16, shape [16]): value at element 0 is -Inf"
    if kind == "q8_0":
        sc = [0.1, 0.2, np.nan, 0.3]
        b.tensor("w", [64, 2], GT_Q8_0, gb.q8_0_bytes(rng.standard_normal(128), sc))
        return b, "tensor 'w' (Q8_0, shape [64, 2]): block scale d at element 64 is NaN"
    if kind == "q4_0":
        sc = [0.1, np.inf]
        b.tensor("w", [64], GT_Q4_0, gb.q4_0_bytes(rng.standard_normal(64), sc))
        return b, "tensor 'w' (Q4_0, shape [64]): block scale d at element 32 is +Inf"
    if kind in ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_xs", "iq4_nl"):
        from tinygptv_native import _core
        name = kind.upper()
        raw = _core.quantize(name, rng.standard_normal((1, 512)).astype(np.float32)).reshape(2, -1).copy()
        if kind in ("q3_k", "q6_k"):  # d last
            raw[1, -2:] = np.array([np.nan], np.float16).view(np.uint8)
            what = "super-block scale d at element 256 is NaN"
        elif kind == "q2_k":  # d, dmin last
            raw[1, -2:] = np.array([np.inf], np.float16).view(np.uint8)
            what = "super-block scale dmin at element 256 is +Inf"
        elif kind == "iq4_xs":
            raw[1, 0:2] = np.array([np.inf], np.float16).view(np.uint8)
            what = "super-block scale d at element 256 is +Inf"
        elif kind == "iq4_nl":
            raw = raw.reshape(16, -1)
            raw[9, 0:2] = np.array([np.nan], np.float16).view(np.uint8)
            what = "block scale d at element 288 is NaN"
        else:
            raw[1, 2:4] = np.array([-np.inf], np.float16).view(np.uint8)
            what = "super-block scale dmin at element 256 is -Inf"
        b.tensor("w", [512], {"q2_k": 10, "q3_k": 11, "q4_k": 12, "q5_k": 13, "q6_k": 14, "iq4_nl": 20, "iq4_xs": 23}[kind], raw.tobytes())
        return b, f"tensor 'w' ({name}, shape [512]): {what}"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16", "q8_0", "q4_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_nl",
                                  "iq4_xs"])
def test_d2_validate_nan_inf(loader, tmp_path, kind):
    b, expected = _nan_file(kind)
    data = b.build()
    loads(loader, tmp_path, data)  # a plain load never reads tensor data
    fails(loader, tmp_path, data, expected, op="validate")


def test_d2_validate_clean_and_model(loader, tmp_path):
    from tinygptv_native import _core
    p = tmp_path / "clean.gguf"
    small_builder().tensor("q4", [64], GT_Q4_0, gb.q4_0_bytes(np.linspace(-1, 1, 64))).write(p)
    assert _core.GGUFReader(str(p)).validate() is None
    # subnormal and max-finite halves are fine
    b = small_builder()
    b.tensor("edge", [4], GT_F16, np.array([6e-8, 65504, -65504, 0], np.float16).tobytes())
    b.write(p)
    _core.GGUFReader(str(p)).validate()
    # a NaN deep inside a model weight, reported through Model.validate
    b = gb.phi2_builder()
    t = next(t for t in b.tensors if t["name"] == "blk.1.ffn_up.weight")
    x = np.frombuffer(t["data"], np.float32).copy()
    x[100] = np.nan
    t["data"] = x.tobytes()
    b.write(p)
    m = _core.Model(str(p))  # loads: validation is optional
    with pytest.raises(_core.GGUFError, match=r"tensor 'blk\.1\.ffn_up\.weight' .* element 100 is NaN"):
        m.validate()


# ---- S: model semantics -------------------------------------------------------------------------

def _drop(name):
    return lambda b: b.drop_tensor(name)


def _retensor(name, fn):
    def edit(b):
        t = next(t for t in b.tensors if t["name"] == name)
        fn(t)
    return edit


def test_s1_tensors(loader, tmp_path):
    fails(loader, tmp_path, phi_with(_drop("blk.1.ffn_down.weight")), "required tensor 'blk.1.ffn_down.weight' is missing",
          op="model", exc="ModelError")
    fails(loader, tmp_path, phi_with(_drop("output_norm.bias")), "'output_norm.bias' is missing", op="model",
          exc="ModelError")
    fails(loader, tmp_path, phi_with(_drop("token_embd.weight")), "'token_embd.weight' is missing", op="model",
          exc="ModelError")
    fails(loader, tmp_path, phi_with(lambda b: b.tensor_np("blk.0.extra.weight", np.zeros(4, np.float32))),
          "unexpected tensor", "blk.0.extra.weight", op="model", exc="ModelError")
    # a third layer's tensors in a 2-layer file
    fails(loader, tmp_path, phi_with(lambda b: b.tensor_np("blk.2.attn_norm.weight", np.ones(32, np.float32))),
          "unexpected tensor", "blk.2.attn_norm.weight", op="model", exc="ModelError")

    def transpose(t):
        t["ne"] = t["ne"][::-1]
    fails(loader, tmp_path, phi_with(_retensor("blk.0.ffn_up.weight", transpose)),
          "tensor 'blk.0.ffn_up.weight' has shape [64, 32], expected [32, 64]", op="model", exc="ModelError")

    def shorten(t):
        t["ne"] = [31]
        t["data"] = t["data"][:124]
    fails(loader, tmp_path, phi_with(_retensor("blk.1.attn_norm.weight", shorten)),
          "tensor 'blk.1.attn_norm.weight' has shape [31] (31 elements), expected 32 elements", op="model",
          exc="ModelError")
    fails(loader, tmp_path, phi_with(_retensor("output.weight", lambda t: t.update(ne=[32, 259], data=t["data"][:32 * 259 * 4]))),
          "tensor 'output.weight' has shape [32, 259], expected [32, 260]", op="model", exc="ModelError")

    def quantize_norm(t):
        t.update(type=GT_Q8_0, data=gb.q8_0_bytes(np.frombuffer(t["data"], np.float32)))
    fails(loader, tmp_path, phi_with(_retensor("blk.0.attn_norm.weight", quantize_norm)),
          "tensor 'blk.0.attn_norm.weight' has type Q8_0", op="model", exc="ModelError")

    def as_i32(t):
        t["type"] = GT_I32
    fails(loader, tmp_path, phi_with(_retensor("blk.0.attn_output.weight", as_i32)),
          "tensor 'blk.0.attn_output.weight' has type I32", op="model", exc="ModelError")
    fails(loader, tmp_path, phi_with(_retensor("blk.0.attn_norm.bias", as_i32)),
          "tensor 'blk.0.attn_norm.bias' has type I32", op="model", exc="ModelError")


@pytest.mark.parametrize("key,vtype,value,fragments", [
    ("phi2.block_count", U32, 0, ("block_count = 0", "outside")),
    ("phi2.block_count", U32, 2**31, ("block_count = 2147483648", "outside")),
    ("phi2.attention.head_count", U32, 0, ("head_count = 0",)),
    ("phi2.attention.head_count", U32, 5, ("head_count 5 does not divide embedding_length 32",)),
    ("phi2.attention.head_count_kv", U32, 0, ("head_count_kv = 0",)),
    ("phi2.attention.head_count_kv", U32, 3, ("head_count_kv 3 does not divide head_count 4",)),
    ("phi2.rope.dimension_count", U32, 16, ("rope.dimension_count 16", "head size 8")),
    ("phi2.rope.dimension_count", U32, 3, ("rope.dimension_count 3", "even")),
    ("phi2.context_length", U32, 0, ("context_length = 0",)),
    ("phi2.embedding_length", U32, 0, ("embedding_length = 0",)),
    ("phi2.embedding_length", U32, 2**32 - 1, ("embedding_length = 4294967295",)),
    ("phi2.feed_forward_length", U32, 0, ("feed_forward_length = 0",)),
    ("phi2.attention.layer_norm_epsilon", F32, 0.0, ("layer_norm_epsilon = 0",)),
    ("phi2.attention.layer_norm_epsilon", F32, -1e-5, ("layer_norm_epsilon = -1e-05",)),
    ("phi2.attention.layer_norm_epsilon", F32, float("nan"), ("layer_norm_epsilon = nan",)),
    ("phi2.attention.layer_norm_epsilon", F64, float("inf"), ("layer_norm_epsilon = inf",)),
    ("phi2.rope.freq_base", F32, float("nan"), ("rope.freq_base nan",)),
    ("phi2.rope.freq_base", F32, 0.0, ("rope.freq_base 0",)),
    ("general.architecture", STRING, "llama", ("general.architecture 'llama'",)),
])
def test_s2_absurd_hparams(loader, tmp_path, key, vtype, value, fragments):
    fails(loader, tmp_path, phi_with(lambda b: b.kv(key, vtype, value)), *fragments, op="model", exc="ModelError")


def test_s2_architecture_not_text(loader, tmp_path):
    """File bytes in a message are escaped (a fuzzing find: a non-UTF-8 architecture name made the error
    message itself undecodable, so Model() raised UnicodeDecodeError instead of ModelError)."""
    fails(loader, tmp_path, phi_with(lambda b: b.kv("general.architecture", STRING, b"\x95\x9ast\x00\n")),
          "general.architecture '??st??'", op="model", exc="ModelError")
    fails(loader, tmp_path, phi_with(lambda b: b.kv("general.architecture", STRING, "x" * 5000)),
          "general.architecture '" + "x" * 64 + "'", op="model", exc="ModelError")


def test_s2_missing_hparams(loader, tmp_path):
    for key in ("phi2.block_count", "phi2.embedding_length", "general.architecture"):
        fails(loader, tmp_path, phi_with(lambda b: b.drop_kv(key)), f"required metadata key '{key}' is missing",
              op="model")


def test_s2_vocab_vs_embedding_rows(loader, tmp_path):
    def short_vocab(b):
        toks = b.get_kv("tokenizer.ggml.tokens")[:-1]
        b.kv("tokenizer.ggml.tokens", ARRAY, toks, STRING)
    fails(loader, tmp_path, phi_with(short_vocab), "tokenizer.ggml.tokens has 259 entries",
          "token_embd.weight has 260 rows", op="model", exc="ModelError")
    fails(loader, tmp_path, phi_with(lambda b: b.kv("phi2.vocab_size", U32, 300)), "phi2.vocab_size = 300",
          "token_embd.weight has 260 rows", op="model", exc="ModelError")
    loads(loader, tmp_path, phi_with(lambda b: b.kv("phi2.vocab_size", U32, 260)), op="model")


def test_s3_tokenizer_metadata_types(loader, tmp_path):
    fails(loader, tmp_path, phi_with(lambda b: b.kv("tokenizer.ggml.tokens", ARRAY, list(range(260)), I32)),
          "tokenizer.ggml.tokens", op="model")


# ---- valid files --------------------------------------------------------------------------------

def test_valid_phi2_variants_load_and_agree(tmp_path):
    """Layout details that must not change the numbers: custom alignment (1, 8, 64), an odd header
    length (the data section starts after padding from a header of length 7 mod 32), separate q/k/v."""
    from tinygptv_native import _core
    ids = np.array([5, 17, 258, 0, 99], np.int32)

    def logits(b, name):
        p = tmp_path / name
        b.write(p)
        m = _core.Model(str(p))
        return _core.Context(m, 16, 1, 1, False).eval_tokens(0, ids, True)

    ref = logits(gb.phi2_builder(), "ref.gguf")
    assert np.isfinite(ref).all() and ref.shape == (5, 260)
    for a in (1, 2, 8, 64, 4096):
        np.testing.assert_array_equal(logits(gb.phi2_builder(alignment=a), f"a{a}.gguf"), ref, err_msg=f"alignment {a}")
    # alignment 1 and 2 with the data section at an odd offset: F32 data not 4-byte aligned in memory
    for a, name_len in ((1, 1), (1, 2), (1, 3), (2, 2)):
        b = gb.phi2_builder(alignment=a)
        for extra in range(8):
            b.kv("general.name", STRING, "n" * extra)
            if len(b.build(set_fields(**{f"data[{j}]": b"" for j in range(len(b.tensors))}))) % 4 == name_len % 4:
                break
        got = logits(b, f"odd{a}_{name_len}.gguf")
        np.testing.assert_array_equal(got, ref, err_msg=f"alignment {a}, data start {name_len} mod 4")
    b = gb.phi2_builder()
    for extra in range(32):
        b.kv("general.name", STRING, "x" * extra)
        header = len(b.build()) - sum(gb._pad(len(t["data"]), 32) for t in b.tensors)
        unpadded = header - len(b.build(set_fields(pad=b"")))  # padding bytes before the data section
        if (header - unpadded) % 32 == 7:
            break
    assert (header - unpadded) % 32 == 7
    np.testing.assert_array_equal(logits(b, "odd.gguf"), ref)


def _rich_builder(seed, alignment=None):
    """Keys of every type (scalars, strings, arrays of each, empty arrays, unicode) and tensors of
    several types and ranks, all values random."""
    rng = np.random.default_rng(seed)
    b = gb.GGUFBuilder(alignment=alignment)
    b.kv("general.architecture", STRING, "roundtrip")
    lim = {U8: (0, 255), I8: (-128, 127), U16: (0, 65535), I16: (-32768, 32767), U32: (0, 2**32 - 1),
           I32: (-2**31, 2**31 - 1), U64: (0, 2**64 - 1), I64: (-2**63, 2**63 - 1)}
    n_keys = int(rng.integers(10, 40))
    for k in range(n_keys):
        t = int(rng.choice([U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64]))
        key = f"rt.k{k}.{'ü' * int(rng.integers(0, 3))}"
        if t in lim:
            b.kv(key, t, int(rng.integers(lim[t][0], lim[t][1], endpoint=True, dtype=np.uint64 if t == U64 else np.int64)))
        elif t == F32:
            b.kv(key, t, float(np.float32(rng.standard_normal())))
        elif t == F64:
            b.kv(key, t, float(rng.standard_normal()) * 1e100)
        elif t == BOOL:
            b.kv(key, t, int(rng.integers(0, 2)))
        elif t == STRING:
            b.kv(key, t, "".join(chr(int(c)) for c in rng.integers(32, 0x3000, int(rng.integers(0, 20)))))
        else:
            et = int(rng.choice([U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, U64, I64, F64]))
            n = int(rng.integers(0, 50))
            if et in lim:
                vals = [int(v) for v in rng.integers(lim[et][0], lim[et][1], n, endpoint=True,
                                                     dtype=np.uint64 if et == U64 else np.int64)]
            elif et == F32:
                vals = [float(np.float32(v)) for v in rng.standard_normal(n)]
            elif et == F64:
                vals = [float(v) for v in rng.standard_normal(n)]
            elif et == BOOL:
                vals = [int(v) for v in rng.integers(0, 2, n)]
            else:
                vals = ["".join(chr(int(c)) for c in rng.integers(32, 0x500, int(rng.integers(0, 8)))) for _ in range(n)]
            b.kv(key, ARRAY, vals, et)
    for j in range(int(rng.integers(1, 12))):
        t = int(rng.choice([GT_F32, GT_F16, GT_BF16, GT_Q8_0, GT_Q4_0, GT_I8, GT_I32]))
        blk = gb.BLOCK[t][0]
        ne = [int(blk * rng.integers(1, 5))] + [int(rng.integers(1, 4)) for _ in range(int(rng.integers(0, 4)))]
        nbytes = gb.nbytes_of(t, ne)
        b.tensor(f"t{j}.{'x' * int(rng.integers(0, 20))}", ne, t, rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes())
    return b


def _gguf_py_value(field):
    from gguf import GGUFValueType
    if field.types[0] == GGUFValueType.ARRAY and field.types[-1] == GGUFValueType.BOOL:
        return [bool(v) for v in field.contents()]
    if field.types[0] == GGUFValueType.BOOL:
        return bool(field.contents())
    return field.contents()


@pytest.mark.parametrize("seed,alignment", [(0, None), (1, None), (2, 64), (3, 1), (4, 8), (5, 256),
                                            (int.from_bytes(os.urandom(4), "little"), None)])
def test_roundtrip_vs_gguf_py(tmp_path, seed, alignment):
    from gguf import GGUFReader as PyReader
    from tinygptv_native import _core
    b = _rich_builder(seed, alignment)
    p = tmp_path / f"rt{seed}.gguf"
    b.write(p)
    ours = _core.GGUFReader(str(p))
    ref = PyReader(str(p))
    meta = ours.metadata()
    ref_fields = {k: f for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert list(meta) == list(ref_fields), f"seed {seed}: key order/set differs"
    for key, f in ref_fields.items():
        want = _gguf_py_value(f)
        got = meta[key]
        if isinstance(want, float) or (isinstance(want, list) and want and isinstance(want[0], float)):
            np.testing.assert_array_equal(np.float64(got), np.float64(want), err_msg=f"seed {seed} key {key}")
        else:
            assert got == want, f"seed {seed} key {key}: {got!r} != {want!r}"
        # and both against what was written
        written = b.get_kv(key)
        if isinstance(written, list) and written and isinstance(written[0], int) and f.types[-1].name == "BOOL":
            written = [bool(v) for v in written]
        if isinstance(written, int) and f.types[0].name == "BOOL":
            written = bool(written)
        assert got == written or np.array_equal(np.float64(got), np.float64(written)), (key, got, written)
    tensors = ours.tensors()
    assert [t[0] for t in tensors] == [t.name for t in ref.tensors]
    for (name, tname, shape, offset, nbytes), rt, wt in zip(tensors, ref.tensors, b.tensors):
        assert tname == rt.tensor_type.name
        assert shape == [int(x) for x in rt.shape] == wt["ne"]
        assert nbytes == rt.n_bytes == len(wt["data"])
        assert offset + (rt.data_offset - offset) == rt.data_offset
        got = ours.tensor_data(name)
        assert not got.flags.writeable
        assert got.tobytes() == rt.data.tobytes() == wt["data"], f"seed {seed}: data of {name} differs"
    assert ours.alignment == (alignment or 32) == ref.alignment


def test_tensor_data_keeps_file_alive(tmp_path):
    from tinygptv_native import _core
    p = tmp_path / "alive.gguf"
    SMALL.write(p)
    arr = _core.GGUFReader(str(p)).tensor_data("a")  # the reader goes out of scope here
    import gc
    gc.collect()
    np.testing.assert_array_equal(arr.view(np.float32), np.frombuffer(SMALL.tensors[0]["data"], np.float32))
    with pytest.raises(KeyError):
        _core.GGUFReader(str(p)).tensor_data("nope")


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker_main()
