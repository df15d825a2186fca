"""The AArch64 build: the core compiles for 64-bit ARM, and its NEON matrix products equal the scalar
ones bit for bit.

This needs a cross compiler (Debian: g++-aarch64-linux-gnu) and an emulator (qemu-user); CI installs
both, elsewhere the tests are skipped unless TINYGPTV_REQUIRE_ARM_CHECK=1 asks for them. The check
itself is tests/native/kernel_check.cpp (every weight type, decode and prompt shapes, 1-3 threads,
prepared or not), built as a static AArch64 program and run under qemu-aarch64 with `-cpu max` (NEON
with the dot-product extension) and `-cpu cortex-a53` (no dot product: the scalar path must be chosen).
On an ARM machine the Python tests (tests/test_kernels.py) run the NEON path natively too.
"""
import os
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
CXX = os.environ.get("TINYGPTV_ARM_CXX", "aarch64-linux-gnu-g++")
QEMU = os.environ.get("TINYGPTV_ARM_QEMU", "qemu-aarch64")
NEON_FLAGS = ["-march=armv8.2-a+dotprod"]  # as CMakeLists.txt gives *_neon.cpp
COMMON = ["-std=c++17", "-DTINYGPTV_ARM=1", f"-I{CSRC}", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror"]

if not (shutil.which(CXX) and shutil.which(QEMU)):
    if os.environ.get("TINYGPTV_REQUIRE_ARM_CHECK") == "1":
        pytest.fail(f"TINYGPTV_REQUIRE_ARM_CHECK=1 but {CXX} or {QEMU} is not installed", pytrace=False)
    pytest.skip(f"needs {CXX} and {QEMU} (Debian: g++-aarch64-linux-gnu, qemu-user)", allow_module_level=True)


def _compile(args):
    r = subprocess.run([CXX, *args], capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(args[-1:])}:\n{r.stderr[-3000:]}"


@pytest.fixture(scope="module")
def kernel_check(tmp_path_factory):
    out = tmp_path_factory.mktemp("arm")
    neon_obj = out / "matmul_neon.o"
    _compile([*COMMON, *NEON_FLAGS, "-O2", "-c", str(CSRC / "kernels" / "matmul_neon.cpp"), "-o", str(neon_obj)])
    exe = out / "kernel_check"
    sources = [CSRC / "cpu.cpp", CSRC / "quants.cpp", CSRC / "threadpool.cpp", CSRC / "kernels" / "matmul.cpp",
               ROOT / "tests" / "native" / "kernel_check.cpp"]
    _compile([*COMMON, "-O2", "-static", "-pthread", *map(str, sources), str(neon_obj), "-o", str(exe)])
    return exe


def _run(exe, cpu, **env):
    r = subprocess.run([QEMU, "-cpu", cpu, str(exe)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, **env})
    return r.returncode, r.stdout + r.stderr


def test_neon_kernels_equal_the_scalar_ones(kernel_check):
    rc, out = _run(kernel_check, "max")
    assert rc == 0, out
    assert "best instruction set: neon; checked: scalar neon" in out, out
    assert " 0 mismatches" in out and ", 0 SIMD results" not in out, out


def test_without_the_dot_product_the_scalar_path_runs(kernel_check):
    rc, out = _run(kernel_check, "cortex-a53")  # ARMv8.0: NEON but no sdot
    assert rc == 0, out
    assert "best instruction set: scalar; checked: scalar\n" in out, out
    rc, out = _run(kernel_check, "cortex-a53", TINYGPTV_ISA="neon")
    assert rc == 1 and "TINYGPTV_ISA=neon is not supported by this CPU (best: scalar)" in out, out


def test_the_whole_core_compiles_for_aarch64():
    """Every source of the module (bindings included), warnings as errors: the x86 code compiles away."""
    import pybind11
    includes = [f"-I{sysconfig.get_paths()['include']}", f"-I{pybind11.get_include()}"]
    sources = [p for p in sorted(CSRC.rglob("*.cpp")) if not p.stem.endswith(("_avx2", "_avx512"))]
    assert any(p.stem.endswith("_neon") for p in sources)

    def check(p):
        extra = NEON_FLAGS if p.stem.endswith("_neon") else []
        r = subprocess.run([CXX, *COMMON, *extra, *includes, "-fsyntax-only", str(p)], capture_output=True, text=True)
        return p, r.returncode, r.stderr

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
        failed = [(p.relative_to(ROOT), err[-2000:]) for p, rc, err in ex.map(check, sources) if rc != 0]
    assert not failed, failed
