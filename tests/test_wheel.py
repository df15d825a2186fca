"""The wheel: built here and repaired by auditwheel, it is a manylinux wheel, and installed into a fresh venv
with no compiler on PATH it answers the README's first question, run from a folder outside the checkout.

Opt in (building takes minutes):
    TINYGPTV_WHEEL=build pytest tests/test_wheel.py     # builds and repairs it with tools/build_wheel.sh
    TINYGPTV_WHEEL=dist/tinygptv_native-...whl pytest   # checks a wheel that command already made
.ci/run builds the wheel once with tools/build_wheel.sh, installs it for the whole suite and passes it here.
"""
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WHEEL = os.environ.get("TINYGPTV_WHEEL")
COMPILERS = ("cc", "gcc", "g++", "c++", "clang", "clang++", "cmake", "ninja", "make")

pytestmark = [pytest.mark.wheel, pytest.mark.skipif(
    not WHEEL, reason="opt in with TINYGPTV_WHEEL=build (builds the wheel: minutes) or TINYGPTV_WHEEL=<repaired wheel>")]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    if WHEEL != "build":
        path = Path(WHEEL).resolve()
        assert path.is_file(), f"TINYGPTV_WHEEL={WHEEL}: no such file"
        return path
    out = tmp_path_factory.mktemp("wheelhouse")
    t0 = time.monotonic()
    p = subprocess.run(["bash", str(ROOT / "tools" / "build_wheel.sh"), str(out)], capture_output=True, text=True,
                       env={**os.environ, "PYTHON": sys.executable}, timeout=3600)
    assert p.returncode == 0, p.stderr[-5000:]
    print(f"\nwheel built and repaired in {time.monotonic() - t0:.0f} s")
    return Path(p.stdout.strip().splitlines()[-1])


def test_the_wheel_is_a_manylinux_wheel(wheel):
    if not sys.platform.startswith("linux"):
        pytest.skip("manylinux wheels are Linux's")
    assert re.search(r"-manylinux_2_\d+_(x86_64|aarch64)\.whl$", wheel.name), wheel.name
    p = subprocess.run([sys.executable, "-m", "auditwheel", "show", str(wheel)], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    # auditwheel's own reading of the file: its glibc symbol versions fit a manylinux_2_xx tag, and every
    # library it needs is either in the manylinux set or copied into the wheel
    text = " ".join(p.stdout.split())
    assert re.search(r'consistent with the following platform tag: "manylinux_2_\d+_', text), p.stdout


def test_installs_and_answers_without_a_compiler(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    # PATH holds the venv's scripts and nothing else: installing and running need no other program, and
    # neither a compiler nor CMake can be found, so nothing can have been built from source on the way
    path = str(bindir)
    found = [c for c in COMPILERS if shutil.which(c, path=path)]
    assert not found, found
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = path
    python = str(bindir / "python")
    # --only-binary: numpy and pillow as wheels too; with no compiler a source build would fail anyway
    p = subprocess.run([python, "-m", "pip", "install", "-q", "--only-binary=:all:", str(wheel)], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    away = tmp_path / "elsewhere"  # outside the checkout: its source folder cannot be imported by accident
    away.mkdir()
    p = subprocess.run([python, str(ROOT / "tools" / "wheel_check.py"), str(ROOT / "README.md")], cwd=away,
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    # the answer came from the package installed in the fresh venv
    m = re.search(r"\(package at (.+)\)", p.stdout)
    assert m and Path(m.group(1)).resolve().is_relative_to(venv.resolve()), p.stdout
