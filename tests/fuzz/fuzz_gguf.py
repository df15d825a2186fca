"""Coverage-guided fuzzing of the GGUF reader and of Model loading (atheris / libFuzzer).

Each input is written to a file and opened with GGUFReader (metadata, tensor table, every tensor's
bytes, the NaN/Inf validation) and then, when it parses, with Model plus a short Session evaluation.
GGUFError and ModelError are the expected outcomes of bad input; any other exception, a crash, a
sanitizer report, a hang (-timeout) or a large allocation (-rss_limit_mb / -malloc_limit_mb) is a
finding. The seed corpus is generated: small valid files from tests/gguf_builder.py (assorted metadata,
every supported tensor type, custom alignment, a two-layer phi2 model).

Mutation is libFuzzer's byte-level mutator half of the time and a GGUF-aware one the other half: it
walks the file's fields (counts, key/string lengths, value types, array counts, n_dims, shapes, type
ids, offsets) and sets one to an interesting value (0, 1, -1, 2^31, 2^32-1, 2^63, 2^64-1, off by one,
the file size...), or cuts/duplicates a field, so most mutants get past the header.

    python tests/fuzz/fuzz_gguf.py --seconds 90                  # against whatever _core is importable
    tools/sanitize.sh fuzz                                        # clang + libFuzzer coverage + ASan build,
                                                                  # prints the command to run with it
    python tests/fuzz/fuzz_gguf.py --seconds 60 --engine structured   # no atheris: the GGUF-aware
                                                                  # mutator alone, random search

Extra arguments after `--` go to libFuzzer (e.g. -- -jobs=2 -workers=2). Crash inputs are written to
--artifacts (default build/fuzz-artifacts/). Exit status 0 means no finding.
"""
from __future__ import annotations

import argparse
import os
import random
import struct
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))  # tests/ for gguf_builder
sys.path.append(ROOT)                       # after PYTHONPATH: a staged sanitizer build wins

import numpy as np  # noqa: E402

import gguf_builder as gb  # noqa: E402

_core = None
_path = None
_stats = {"inputs": 0, "gguf_ok": 0, "model_ok": 0}


# ---- the target -----------------------------------------------------------------------------------

def _expected_errors():
    return (_core.GGUFError, _core.ModelError)


def one_input(data: bytes):
    """Runs one input; raises on a finding."""
    _stats["inputs"] += 1
    with open(_path, "wb") as f:
        f.write(data)
    try:
        r = _core.GGUFReader(_path)
    except _expected_errors():
        return
    _stats["gguf_ok"] += 1
    r.metadata()
    for name, tname, shape, offset, nbytes in r.tensors():
        arr = r.tensor_data(name)
        if arr.nbytes != nbytes:
            raise AssertionError(f"tensor_data({name!r}) has {arr.nbytes} bytes, the table says {nbytes}")
    try:
        r.validate()
    except _core.GGUFError:
        pass
    del r
    try:
        m = _core.Model(_path)
    except _expected_errors():
        return
    _stats["model_ok"] += 1
    s = _core.Context(m, 8, 1, 1, True)
    ids = np.array([0, m.n_vocab - 1, 1], np.int32)
    s.eval_tokens(0, ids, True)
    try:
        s.eval_tokens(0, np.array([m.n_vocab], np.int32))
        raise AssertionError("an out-of-vocabulary id was accepted")
    except _core.ModelError:
        pass


# ---- seeds ----------------------------------------------------------------------------------------

def seed_files() -> list[bytes]:
    rng = np.random.default_rng(0)
    seeds = []
    b = gb.GGUFBuilder()
    b.kv("general.architecture", gb.STRING, "test")
    b.kv("a.u8", gb.U8, 1).kv("a.i16", gb.I16, -2).kv("a.f64", gb.F64, 0.25).kv("a.b", gb.BOOL, 1)
    b.kv("a.strs", gb.ARRAY, ["x", "yz"], gb.STRING).kv("a.u64s", gb.ARRAY, [1, 2**64 - 1], gb.U64)
    b.tensor_np("f32", rng.standard_normal((2, 4)))
    b.tensor_np("f16", rng.standard_normal(8), gb.GT_F16)
    b.tensor_np("bf16", rng.standard_normal((1, 2, 4)), gb.GT_BF16)
    b.tensor("q8", [32, 2], gb.GT_Q8_0, gb.q8_0_bytes(rng.standard_normal(64)))
    b.tensor("q4", [32], gb.GT_Q4_0, gb.q4_0_bytes(rng.standard_normal(32)))
    b.tensor("i8", [3, 1, 1, 2], gb.GT_I8, bytes(range(6)))
    seeds.append(b.build())
    b2 = gb.GGUFBuilder(alignment=8)
    b2.kv("general.architecture", gb.STRING, "test")
    b2.tensor_np("t", rng.standard_normal(3))
    seeds.append(b2.build())
    seeds.append(gb.GGUFBuilder().kv("k", gb.STRING, "v").build())
    # models: tiny phi2 files (fused and separate q/k/v, F16 weights), small enough to mutate
    seeds.append(gb.phi2_builder(n_vocab=260, n_embd=8, n_head=2, n_layer=1, n_ff=8, n_rot=2).build())
    seeds.append(gb.phi2_builder(n_vocab=260, n_embd=8, n_head=2, n_head_kv=1, n_layer=1, n_ff=16, n_rot=4,
                                 fused=False, dtype=gb.GT_F16, alignment=16).build())
    return seeds


# ---- GGUF-aware mutation --------------------------------------------------------------------------

INTERESTING = [0, 1, 2, 3, 4, 7, 8, 13, 31, 32, 33, 63, 64, 65, 127, 128, 255, 256, 4096, 65535,
               2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1,
               0x7FFFFFFFFFFFFFC0, 1 << 30, (1 << 30) + 1]
_SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def gguf_fields(data: bytes):
    """(offset, size) of every integer field of a GGUF file, walking as far as the bytes are sane."""
    fields = []
    pos = 0
    n = len(data)

    def u(size):
        nonlocal pos
        if pos + size > n:
            raise IndexError
        v = int.from_bytes(data[pos:pos + size], "little")
        fields.append((pos, size))
        pos += size
        return v

    def skip(k):
        nonlocal pos
        if k > n - pos:
            raise IndexError
        pos += k

    try:
        if data[:4] != b"GGUF":
            return fields
        pos = 4
        u(4)
        n_t, n_kv = u(8), u(8)
        for _ in range(min(n_kv, 10000)):
            skip(u(8))
            t = u(4)
            if t == 8:
                skip(u(8))
            elif t == 9:
                et, cnt = u(4), u(8)
                for _ in range(min(cnt, 4096)):
                    if et == 8:
                        skip(u(8))
                    elif et in _SCALAR_SIZE:
                        skip(_SCALAR_SIZE[et]) if cnt > 64 else u(_SCALAR_SIZE[et])
                    else:
                        raise IndexError
            elif t in _SCALAR_SIZE:
                u(_SCALAR_SIZE[t])
            else:
                raise IndexError
        for _ in range(min(n_t, 10000)):
            skip(u(8))
            nd = u(4)
            for _ in range(min(nd, 8)):
                u(8)
            u(4)
            u(8)
    except IndexError:
        pass
    return fields


def structured_mutate(data: bytes, rnd: random.Random, max_size: int) -> bytes:
    fields = gguf_fields(data)
    if not fields or rnd.random() < 0.1:
        return truncate_or_splice(data, rnd, max_size)
    off, size = rnd.choice(fields)
    old = int.from_bytes(data[off:off + size], "little")
    r = rnd.random()
    if r < 0.5:
        v = rnd.choice(INTERESTING)
    elif r < 0.8:
        v = old + rnd.choice([-1, 1, -2, 2, 32, -32, 1 << 8, 1 << 16])
    elif r < 0.9:
        v = len(data) + rnd.randint(-8, 8)
    else:
        v = rnd.getrandbits(8 * size)
    v &= (1 << (8 * size)) - 1
    out = bytearray(data)
    out[off:off + size] = v.to_bytes(size, "little")
    if rnd.random() < 0.2:  # a second field, for pairs such as (count, length)
        off2, size2 = rnd.choice(fields)
        out[off2:off2 + size2] = (rnd.choice(INTERESTING) & ((1 << (8 * size2)) - 1)).to_bytes(size2, "little")
    return bytes(out[:max_size])


def truncate_or_splice(data: bytes, rnd: random.Random, max_size: int) -> bytes:
    if not data:
        return b"GGUF" + struct.pack("<IQQ", 3, 0, 0)
    if rnd.random() < 0.5:
        return data[:rnd.randint(0, len(data))]
    a = rnd.randint(0, len(data))
    b = rnd.randint(a, len(data))
    return (data[:b] + data[a:b] + data[b:])[:max_size]


# ---- drivers --------------------------------------------------------------------------------------

def run_atheris(args, seeds, extra):
    import atheris

    corpus = tempfile.mkdtemp(prefix="gguf-corpus-")
    for i, s in enumerate(seeds):
        with open(os.path.join(corpus, f"seed{i}.gguf"), "wb") as f:
            f.write(s)
    os.makedirs(args.artifacts, exist_ok=True)
    dict_path = os.path.join(corpus, "..", os.path.basename(corpus) + ".dict")
    with open(dict_path, "w") as f:
        for tok in (b"GGUF", b"general.alignment", b"general.architecture", b"phi2", b"phi2.block_count",
                    b"token_embd.weight", b"blk.0.attn_qkv.weight", b"output.weight", b"tokenizer.ggml.tokens"):
            f.write('"' + "".join(f"\\x{c:02x}" for c in tok) + '"\n')

    def mutator(data, max_size, seed):
        rnd = random.Random(seed)
        if rnd.random() < 0.5:
            return atheris.Mutate(data, max_size)
        return structured_mutate(data, rnd, max_size)

    instrumented_input = atheris.instrument_func(one_input)  # Python-side coverage of the harness
    deadline = time.time() + args.seconds - 1

    def target(data):
        instrumented_input(data)
        if time.time() > deadline and not _stats.get("printed"):
            _stats["printed"] = True  # libFuzzer ends the process without returning: report now
            _summary(t0)

    t0 = time.time()
    argv = [sys.argv[0], corpus, f"-max_total_time={args.seconds}", f"-timeout={args.timeout}",
            f"-rss_limit_mb={args.rss_limit_mb}", f"-malloc_limit_mb={args.malloc_limit_mb}",
            f"-max_len={args.max_len}", f"-artifact_prefix={args.artifacts.rstrip('/')}/", f"-dict={dict_path}",
            "-print_final_stats=1", f"-seed={args.seed}"] + extra
    # libFuzzer comes from atheris itself unless a sanitizer runtime with libFuzzer is preloaded
    # (asan_with_fuzzer.so, for the clang-instrumented build of tools/sanitize.sh fuzz).
    preloaded = "with_fuzzer" in os.environ.get("LD_PRELOAD", "")
    atheris.Setup(argv, target, custom_mutator=mutator, internal_libfuzzer=not preloaded)
    atheris.Fuzz()  # does not return: libFuzzer exits the process (status 0 when nothing was found)


def run_structured(args, seeds):
    """Without atheris: random search with the GGUF-aware mutator plus byte flips, no coverage."""
    rnd = random.Random(args.seed)
    pool = list(seeds)
    t0 = time.time()
    while time.time() - t0 < args.seconds:
        data = rnd.choice(pool)
        for _ in range(rnd.randint(1, 4)):
            if rnd.random() < 0.7:
                data = structured_mutate(data, rnd, args.max_len)
            elif data:
                b = bytearray(data)
                i = rnd.randrange(len(b))
                b[i] ^= 1 << rnd.randrange(8)
                data = bytes(b)
        try:
            one_input(data)
        except BaseException:
            os.makedirs(args.artifacts, exist_ok=True)
            p = os.path.join(args.artifacts, f"crash-{_stats['inputs']}.gguf")
            with open(p, "wb") as f:
                f.write(data)
            print(f"finding written to {p}", file=sys.stderr)
            raise
        if len(pool) < 256 and rnd.random() < 0.01:
            pool.append(data)
    _summary(t0)


def _summary(t0):
    dt = max(time.time() - t0, 1e-9)
    n = _stats["inputs"]
    print(f"fuzz_gguf: {n} executions in {dt:.1f} s ({n / dt:.0f}/s); parsed as GGUF: {_stats['gguf_ok']}, "
          f"loaded as a model: {_stats['model_ok']}", flush=True)


def main():
    global _core, _path
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=60, help="total fuzzing time")
    ap.add_argument("--engine", choices=["auto", "atheris", "structured"], default="auto")
    ap.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF)
    ap.add_argument("--timeout", type=int, default=10, help="seconds per input before it counts as a hang")
    ap.add_argument("--rss-limit-mb", type=int, default=2048)
    ap.add_argument("--malloc-limit-mb", type=int, default=512, help="largest single allocation allowed")
    ap.add_argument("--max-len", type=int, default=1 << 16)
    ap.add_argument("--artifacts", default=os.path.join(ROOT, "build", "fuzz-artifacts"))
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    args = ap.parse_args(argv)
    from tinygptv_native import _core as core
    _core = core
    fd, _path = tempfile.mkstemp(suffix=".gguf", prefix="fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.close(fd)
    print(f"fuzz_gguf: module {core.__file__}, seed {args.seed}", flush=True)
    seeds = seed_files()
    for s in seeds:  # every seed must be accepted by the reader
        one_input(s)
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "structured"
    print(f"fuzz_gguf: engine {engine}, {args.seconds} s", flush=True)
    try:
        if engine == "atheris":
            run_atheris(args, seeds, extra)
        else:
            run_structured(args, seeds)
    finally:
        os.unlink(_path)


if __name__ == "__main__":
    main()
