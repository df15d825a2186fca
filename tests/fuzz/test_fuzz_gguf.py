"""The fuzz harness in the test suite: every saved finding replays cleanly, and a bounded fuzzing run
(TINYGPTV_FUZZ_SECONDS, default 60; 0 skips it) ends without a finding."""
from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


def test_regressions_replay():
    """Inputs that once crashed the harness (tests/fuzz/regressions/) now raise typed errors only."""
    import fuzz_gguf
    from tinygptv_native import _core
    fuzz_gguf._core = _core
    fuzz_gguf._path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"fuzz-replay-{os.getpid()}.gguf")
    files = sorted(glob.glob(os.path.join(HERE, "regressions", "*.gguf")))
    assert files, "the regression corpus is empty"
    try:
        for f in files:
            with open(f, "rb") as fh:
                fuzz_gguf.one_input(fh.read())
        for s in fuzz_gguf.seed_files():
            fuzz_gguf.one_input(s)
    finally:
        if os.path.exists(fuzz_gguf._path):
            os.unlink(fuzz_gguf._path)
    assert fuzz_gguf._stats["model_ok"] >= 2  # the model seeds load and run


def test_structured_mutator_reaches_fields():
    import fuzz_gguf
    import random
    seeds = fuzz_gguf.seed_files()
    fields = fuzz_gguf.gguf_fields(seeds[0])
    # magic-less header fields, every key/type/value, every tensor info
    assert len(fields) > 40
    rnd = random.Random(0)
    muts = {fuzz_gguf.structured_mutate(seeds[0], rnd, 1 << 16) for _ in range(200)}
    assert len(muts) > 150 and all(len(m) <= 1 << 16 for m in muts)


@pytest.mark.skipif(os.environ.get("TINYGPTV_FUZZ_SECONDS", "60") == "0", reason="TINYGPTV_FUZZ_SECONDS=0")
def test_bounded_fuzz_run(tmp_path):
    seconds = int(os.environ.get("TINYGPTV_FUZZ_SECONDS", "60"))
    cmd = [sys.executable, os.path.join(HERE, "fuzz_gguf.py"), "--seconds", str(seconds),
           "--artifacts", str(tmp_path / "artifacts")]
    from fixtures.proc import CHILD_CWD, child_env
    p = subprocess.run(cmd, cwd=CHILD_CWD, env=child_env(), capture_output=True, text=True, timeout=seconds + 120)
    out = p.stdout + p.stderr
    tail = "\n".join(out.splitlines()[-40:])
    assert p.returncode == 0, f"fuzzing found a problem (artifacts in {tmp_path / 'artifacts'}):\n{tail}"
    assert "fuzz_gguf: engine" in out
    print(tail)


@pytest.mark.skipif(os.environ.get("TINYGPTV_FUZZ_SECONDS", "60") == "0", reason="TINYGPTV_FUZZ_SECONDS=0")
@pytest.mark.parametrize("target", ["tokenizer", "image"])
def test_bounded_input_fuzz_run(target):
    """The tokenizer and image harnesses (tests/fuzz/fuzz_inputs.py) for a third of the GGUF run's time."""
    from fixtures.proc import CHILD_CWD, child_env
    seconds = max(5, int(os.environ.get("TINYGPTV_FUZZ_SECONDS", "60")) // 3)
    cmd = [sys.executable, os.path.join(HERE, "fuzz_inputs.py"), "--target", target, "--seconds", str(seconds)]
    p = subprocess.run(cmd, cwd=CHILD_CWD, env=child_env(), capture_output=True, text=True, timeout=seconds + 120)
    out = p.stdout + p.stderr
    assert p.returncode == 0, "\n".join(out.splitlines()[-40:])
    assert f"fuzz_inputs[{target}]" in out
