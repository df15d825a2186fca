"""Fuzzing of the tokenizers and of the image front end (atheris / libFuzzer).

    python tests/fuzz/fuzz_inputs.py --target tokenizer --seconds 60
    python tests/fuzz/fuzz_inputs.py --target image --seconds 60

tokenizer: arbitrary bytes go through the GPT-2 byte-level BPE (with Phi-2's added tokens, from
tests/data/gpt2) and the SentencePiece tokenizer of the embedded demo model; for both, decoding the
ids must give back the input bytes exactly, and the stream decoder's pieces must join to the lenient
UTF-8 decoding of those bytes.
image: arbitrary bytes (seeded with small valid PNG/JPEG/GIF/BMP/WEBP/TIFF files) go through
load_image/preprocess; the outcome must be an ImageError or a finite (3, S, S) float32 array.

Without atheris (--engine random) both run a plain random mutation search. Exit status 0: no finding.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(os.path.dirname(HERE), "data", "gpt2")

_stats = {"inputs": 0, "ok": 0}


def _gpt2_tokenizer():
    from tinygptv_native import _core
    with open(os.path.join(DATA, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(DATA, "added_tokens.json"), encoding="utf-8") as f:
        added = json.load(f)
    n = max(max(vocab.values()), max(added.values())) + 1
    tokens, types = [""] * n, [1] * n
    for t, i in vocab.items():
        tokens[i] = t
    for t, i in added.items():  # Phi-2's whitespace runs (user-defined) and <|endoftext|> (control)
        tokens[i] = t
        types[i] = 3 if t == "<|endoftext|>" else 4
    with open(os.path.join(DATA, "merges.txt"), encoding="utf-8") as f:
        merges = [l.rstrip("\n") for l in f if l.strip() and not l.startswith("#version")]
    eot = vocab["<|endoftext|>"]
    return _core.Tokenizer(model="gpt2", tokens=tokens, token_types=types, merges=merges, pre="phi-2",
                           bos=eot, eos=eot, unk=eot)


def tokenizer_target():
    from tinygptv_native import _core
    from tinygptv_native.demo import demo_model_path
    toks = [_gpt2_tokenizer(), _core.tokenizer_from_gguf(_core.GGUFReader(str(demo_model_path())))]

    def one(data: bytes):
        _stats["inputs"] += 1
        for tok in toks:
            ids = tok.encode_bytes(data, False)
            if bytes(tok.decode(ids)) != data:
                raise AssertionError(f"{tok.model}: decode(encode(x)) != x for {data!r}")
            dec = _core.StreamDecoder(tok)
            text = "".join(dec.push(i) for i in ids) + dec.flush()
            if text != data.decode("utf-8", "replace"):
                raise AssertionError(f"{tok.model}: stream decoding differs for {data!r}")
        _stats["ok"] += 1

    seeds = [b"Hello world", "caf\u00e9 \U0001f600 \u4e2d\u6587 \u0645\u0631\u062d\u0628\u0627".encode(),
             b"\n    return x\t\t\ty", b"<|endoftext|>###[INST] <ImageHere>", bytes(range(256)), b" " * 40]
    return one, seeds


def image_target():
    from PIL import Image

    from tinygptv_native.image import ImageError, preprocess

    def one(data: bytes):
        _stats["inputs"] += 1
        try:
            x = preprocess(data, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), max_pixels=1 << 20)
        except ImageError:
            return
        if x.shape != (3, 32, 32) or x.dtype != np.float32 or not np.isfinite(x).all():
            raise AssertionError(f"bad preprocess output {x.shape} {x.dtype}")
        _stats["ok"] += 1

    seeds = []
    rng = np.random.default_rng(0)
    for fmt, mode in (("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("JPEG", "RGB"), ("GIF", "P"),
                      ("BMP", "RGB"), ("WEBP", "RGB"), ("TIFF", "RGB"), ("PNG", "L")):
        im = Image.fromarray(rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)).convert(mode)
        b = io.BytesIO()
        im.save(b, format=fmt)
        seeds.append(b.getvalue())
    return one, seeds


def run_random(one, seeds, seconds, seed):
    rnd = random.Random(seed)
    t0 = time.time()
    while time.time() - t0 < seconds:
        data = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 8)):
            op = rnd.random()
            if op < 0.5 and data:
                data[rnd.randrange(len(data))] = rnd.randrange(256)
            elif op < 0.7:
                data.insert(rnd.randrange(len(data) + 1), rnd.randrange(256))
            elif op < 0.85 and data:
                del data[rnd.randrange(len(data)):][: rnd.randint(1, 16)]
            else:
                data = data[: rnd.randrange(len(data) + 1)]
        one(bytes(data))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", choices=["tokenizer", "image"], required=True)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--engine", choices=["auto", "atheris", "random"], default="auto")
    ap.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF)
    a = ap.parse_args(argv)
    one, seeds = (tokenizer_target if a.target == "tokenizer" else image_target)()
    for s in seeds:
        one(s)
    engine = a.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "random"
    t0 = time.time()
    if engine == "random":
        run_random(one, seeds, a.seconds, a.seed)
    else:
        import tempfile

        import atheris
        corpus = tempfile.mkdtemp(prefix=f"fuzz-{a.target}-")
        for i, s in enumerate(seeds):
            with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
                f.write(s)
        deadline = t0 + a.seconds - 1

        def target(data):
            one(data)
            if time.time() > deadline and not _stats.get("printed"):
                _stats["printed"] = True
                _summary(a.target, t0)
        atheris.Setup([sys.argv[0], corpus, f"-max_total_time={a.seconds}", "-timeout=10", "-rss_limit_mb=2048",
                       "-max_len=4096", f"-seed={a.seed}"], atheris.instrument_func(target))
        atheris.Fuzz()
    _summary(a.target, t0)
    return 0


def _summary(name, t0):
    dt = max(time.time() - t0, 1e-9)
    print(f"fuzz_inputs[{name}]: {_stats['inputs']} executions in {dt:.1f} s "
          f"({_stats['inputs'] / dt:.0f}/s); accepted: {_stats['ok']}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
