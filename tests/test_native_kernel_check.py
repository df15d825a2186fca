"""The SIMD kernels checked from C++ (tests/native/kernel_check.cpp: matrix products of every weight
type and shape kind, 1-3 threads, prepared or not; vector math on special values; attention's row,
blocked and bf16 paths), on this machine and for 64-bit ARM.

The AArch64 tests need a cross compiler (Debian: g++-aarch64-linux-gnu) and an emulator (qemu-user);
CI installs both, elsewhere they are skipped unless TINYGPTV_REQUIRE_ARM_CHECK=1 asks for them. The
check is built as a static AArch64 program and run under qemu-aarch64 with `-cpu max` (NEON with the
dot-product extension) and `-cpu cortex-a53` (no dot product: the scalar path must be chosen), and
every source of the core is compiled for AArch64 with warnings as errors. On an ARM machine the
Python tests (tests/test_kernels.py and the others) run the NEON path natively too.
"""
import os
import platform
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tinygptv_native import _core

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
CXX = os.environ.get("TINYGPTV_ARM_CXX", "aarch64-linux-gnu-g++")
QEMU = os.environ.get("TINYGPTV_ARM_QEMU", "qemu-aarch64")
HOST_CXX = os.environ.get("CXX", "g++")
NEON_FLAGS = ["-march=armv8.2-a+dotprod"]  # as CMakeLists.txt gives *_neon.cpp
# and *_avx2.cpp / *_avx512.cpp
X86_FLAGS = {"avx2": ["-mavx2", "-mfma", "-mf16c"],
             "avx512": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                        "-mavx512vnni", "-mavx512bf16"]}
WARN = ["-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror"]
ARM = ["-std=c++17", "-DTINYGPTV_ARM=1", f"-I{CSRC}", *WARN]
KERNELS = ["matmul", "vecmath", "attention"]  # each with a file per instruction set
PLAIN = [CSRC / "cpu.cpp", CSRC / "quants.cpp", CSRC / "threadpool.cpp", CSRC / "kernels" / "ops.cpp",
         *(CSRC / "kernels" / f"{k}.cpp" for k in KERNELS), ROOT / "tests" / "native" / "kernel_check.cpp"]
HAVE_ARM = bool(shutil.which(CXX) and shutil.which(QEMU))
arm = pytest.mark.skipif(not HAVE_ARM and os.environ.get("TINYGPTV_REQUIRE_ARM_CHECK") != "1",
                         reason=f"needs {CXX} and {QEMU} (Debian: g++-aarch64-linux-gnu, qemu-user)")


def _compile(cxx, args):
    r = subprocess.run([cxx, *args], capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(args[-3:])}:\n{r.stderr[-3000:]}"


def _build(cxx, common, simd_files, out, link):
    """Objects of the per-instruction-set files (in parallel), then the program."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
        list(ex.map(lambda a: _compile(cxx, [*common, *a[1], "-O2", "-c", str(a[0]), "-o", str(out / (a[0].stem + ".o"))]),
                    simd_files))
    exe = out / "kernel_check"
    _compile(cxx, [*common, "-O2", "-pthread", *link, *map(str, PLAIN), *(str(out / (f.stem + ".o")) for f, _ in simd_files),
                   "-o", str(exe)])
    return exe


@pytest.fixture(scope="module")
def kernel_check(tmp_path_factory):
    if not HAVE_ARM:
        pytest.fail(f"TINYGPTV_REQUIRE_ARM_CHECK=1 but {CXX} or {QEMU} is not installed", pytrace=False)
    files = [(CSRC / "kernels" / f"{k}_neon.cpp", NEON_FLAGS) for k in KERNELS]
    return _build(CXX, ARM, files, tmp_path_factory.mktemp("arm"), ["-static"])


def test_kernel_check_on_this_machine(tmp_path):
    """Natively: every path this CPU has against the scalar one (x86: AVX2, AVX-512)."""
    if not shutil.which(HOST_CXX):
        pytest.skip(f"no C++ compiler ({HOST_CXX})")
    if platform.machine() in ("x86_64", "AMD64"):
        # (no -Werror: GCC 12's own AVX-512 headers trip -Wmaybe-uninitialized)
        common = ["-std=c++17", "-DTINYGPTV_X86=1", f"-I{CSRC}", *WARN[:-1]]
        files = [(CSRC / "kernels" / f"{k}_{isa}.cpp", X86_FLAGS[isa]) for k in KERNELS for isa in X86_FLAGS]
    elif platform.machine() in ("aarch64", "arm64"):
        common, files = ARM, [(CSRC / "kernels" / f"{k}_neon.cpp", NEON_FLAGS) for k in KERNELS]
    else:
        pytest.skip(f"no SIMD kernels for {platform.machine()}")
    exe = _build(HOST_CXX, common, files, tmp_path, [])
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and " 0 mismatches" in r.stdout, r.stdout + r.stderr
    best = r.stdout.split("best instruction set: ")[1].split(";")[0]
    assert best == _core.isa_best(), (best, _core.isa_best())  # the same choice as the module's


def _run(exe, cpu, **env):
    r = subprocess.run([QEMU, "-cpu", cpu, str(exe)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, **env})
    return r.returncode, r.stdout + r.stderr


@arm
def test_neon_kernels_equal_the_scalar_ones(kernel_check):
    rc, out = _run(kernel_check, "max")
    assert rc == 0, out
    assert "best instruction set: neon; checked: scalar neon" in out, out
    assert " 0 mismatches" in out and ", 0 SIMD results" not in out, out


@arm
def test_without_the_dot_product_the_scalar_path_runs(kernel_check):
    rc, out = _run(kernel_check, "cortex-a53")  # ARMv8.0: NEON but no sdot
    assert rc == 0, out
    assert "best instruction set: scalar; checked: scalar\n" in out, out
    rc, out = _run(kernel_check, "cortex-a53", TINYGPTV_ISA="neon")
    assert rc == 1 and "TINYGPTV_ISA=neon is not supported by this CPU (best: scalar)" in out, out


@arm
def test_the_whole_core_compiles_for_aarch64():
    """Every source of the module (bindings included), warnings as errors: the x86 code compiles away."""
    import pybind11
    includes = [f"-I{sysconfig.get_paths()['include']}", f"-I{pybind11.get_include()}"]
    sources = [p for p in sorted(CSRC.rglob("*.cpp")) if not p.stem.endswith(("_avx2", "_avx512"))]
    assert any(p.stem.endswith("_neon") for p in sources)

    def check(p):
        extra = NEON_FLAGS if p.stem.endswith("_neon") else []
        r = subprocess.run([CXX, *ARM, *extra, *includes, "-fsyntax-only", str(p)], capture_output=True, text=True)
        return p, r.returncode, r.stderr

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
        failed = [(p.relative_to(ROOT), err[-2000:]) for p, rc, err in ex.map(check, sources) if rc != 0]
    assert not failed, failed
