"""The engine built without Python, on this machine and for 64-bit ARM.

tests/native/kernel_check.cpp checks the SIMD kernels against the scalar ones bit for bit (matrix
products of every weight type and shape kind, 1-3 threads, prepared or not; vector math on special
values; attention's row, blocked and bf16 paths); tests/native/model_check.cpp runs a whole model
(tokenizer, image encoder, decoder, greedy generation).

The AArch64 tests need a cross compiler (Debian: g++-aarch64-linux-gnu) and an emulator (qemu-user);
CI installs both, elsewhere they are skipped unless TINYGPTV_REQUIRE_ARM_CHECK=1 asks for them. Every
source of the core is compiled for AArch64 with warnings as errors, both programs are linked
statically and run under qemu-aarch64 with `-cpu max` (NEON with the dot-product extension: sdot) and
`-cpu cortex-a53` (ARMv8.0, no dot product: the NEON kernels' widening-multiply path), and the model's answers are
compared with the Python module's on this machine; kernel_check also runs under AddressSanitizer +
UndefinedBehaviorSanitizer there. On an ARM machine the Python tests
(tests/test_kernels.py and the others) run the NEON path natively too.
"""
import os
import platform
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import numpy as np

from tinygptv_native import _core
from tinygptv_native._core import _testing

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
NATIVE = ROOT / "tests" / "native"
CXX = os.environ.get("TINYGPTV_ARM_CXX", "aarch64-linux-gnu-g++")
QEMU = os.environ.get("TINYGPTV_ARM_QEMU", "qemu-aarch64")
HOST_CXX = os.environ.get("CXX", "g++")
# the flags CMakeLists.txt gives (C++17 with GNU extensions, CMake's default: on AArch64 GCC then fuses
# a * b + c unless a file says otherwise, as the kernel files do), and its per-file ones
NEON_FLAGS = ["-march=armv8.2-a+dotprod"]
X86_FLAGS = {"avx2": ["-mavx2", "-mfma", "-mf16c"],
             "avx512": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                        "-mavx512vnni", "-mavx512bf16"]}
WARN = ["-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror"]
ARM = ["-std=gnu++17", "-O2", "-DTINYGPTV_ARM=1", f"-I{CSRC}", *WARN]
KERNELS = ["matmul", "vecmath", "attention"]  # each with a file per instruction set
# kernel_check and the instruction-set-neutral sources it needs (the SIMD files come with their flags)
KERNEL_CHECK_SOURCES = [CSRC / "cpu.cpp", CSRC / "quants.cpp", CSRC / "threadpool.cpp", CSRC / "kernels" / "ops.cpp",
                        *(CSRC / "kernels" / f"{k}.cpp" for k in KERNELS), NATIVE / "kernel_check.cpp"]
HAVE_ARM = bool(shutil.which(CXX) and shutil.which(QEMU))
arm = pytest.mark.skipif(not HAVE_ARM and os.environ.get("TINYGPTV_REQUIRE_ARM_CHECK") != "1",
                         reason=f"needs {CXX} and {QEMU} (Debian: g++-aarch64-linux-gnu, qemu-user)")


def _compile(cxx, args):
    r = subprocess.run([cxx, *args], capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(args[-3:])}:\n{r.stderr[-3000:]}"


def _objects(cxx, common, sources, out):
    """sources: (path, extra flags) pairs, compiled in parallel; returns the object paths."""
    def one(a):
        obj = out / (str(a[0].relative_to(ROOT)).replace("/", "_") + ".o")
        _compile(cxx, [*common, *a[1], "-c", str(a[0]), "-o", str(obj)])
        return str(obj)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
        return list(ex.map(one, sources))


def _lines(out, key):
    return [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith(key + ":")]


@pytest.fixture(scope="module")
def arm_build(tmp_path_factory):
    """Every source of the core (bindings and the Vulkan backend aside: neither program uses them) for AArch64,
    and the two programs linked statically."""
    if not HAVE_ARM:
        pytest.fail(f"TINYGPTV_REQUIRE_ARM_CHECK=1 but {CXX} or {QEMU} is not installed", pytrace=False)
    out = tmp_path_factory.mktemp("arm")
    core = [p for p in sorted(CSRC.rglob("*.cpp"))
            if "python" not in p.parts and "vulkan" not in p.parts and not p.stem.endswith(("_avx2", "_avxvnni", "_avx512"))]
    assert sum(p.stem.endswith("_neon") for p in core) == len(KERNELS)
    objs = _objects(CXX, ARM, [(p, NEON_FLAGS if p.stem.endswith("_neon") else []) for p in core], out)
    exes = {}
    for prog in ("kernel_check", "model_check"):
        exes[prog] = out / prog
        _compile(CXX, [*ARM, "-static", "-pthread", str(NATIVE / f"{prog}.cpp"), *objs, "-o", str(exes[prog])])
    return exes


def _qemu(exe, cpu, *args, **env):
    r = subprocess.run([QEMU, "-cpu", cpu, str(exe), *map(str, args)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, **env})
    return r.returncode, r.stdout + r.stderr


def test_kernel_check_on_this_machine(tmp_path):
    """Natively: every path this CPU has against the scalar one (x86: AVX2, AVX-512)."""
    if not shutil.which(HOST_CXX):
        pytest.skip(f"no C++ compiler ({HOST_CXX})")
    if platform.machine() in ("x86_64", "AMD64"):
        # (no -Werror: GCC 12's own AVX-512 headers trip -Wmaybe-uninitialized)
        common = ["-std=gnu++17", "-O2", "-DTINYGPTV_X86=1", f"-I{CSRC}", *WARN[:-1]]
        simd = [(CSRC / "kernels" / f"{k}_{isa}.cpp", X86_FLAGS[isa]) for k in KERNELS for isa in X86_FLAGS]
    elif platform.machine() in ("aarch64", "arm64"):
        common, simd = ARM, [(CSRC / "kernels" / f"{k}_neon.cpp", NEON_FLAGS) for k in KERNELS]
    else:
        pytest.skip(f"no SIMD kernels for {platform.machine()}")
    objs = _objects(HOST_CXX, common, [*simd, *((p, []) for p in KERNEL_CHECK_SOURCES)], tmp_path)
    exe = tmp_path / "kernel_check"
    _compile(HOST_CXX, [*common, "-pthread", *objs, "-o", str(exe)])
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and " 0 mismatches" in r.stdout, r.stdout + r.stderr
    best = r.stdout.split("best instruction set: ")[1].split(";")[0]
    assert best == _testing.isa_best(), (best, _testing.isa_best())  # the same choice as the module's


@arm
@pytest.mark.parametrize("cpu,dot", [("max", "yes (sdot)"), ("cortex-a53", "no (widening multiplies)")])
def test_neon_kernels_equal_the_scalar_ones(arm_build, cpu, dot):
    """-cpu max has the ARMv8.2 dot product (sdot), cortex-a53 (ARMv8.0: Raspberry Pi 3, and as the
    Pi 4's A72) not: its int8 products take widening multiplies; an sdot there would be an illegal
    instruction."""
    rc, out = _qemu(arm_build["kernel_check"], cpu)
    assert rc == 0, out
    assert "best instruction set: neon; checked: scalar neon" in out, out
    assert f"neon dot product: {dot}" in out, out
    assert " 0 mismatches" in out and ", 0 SIMD results" not in out, out


@arm
def test_an_instruction_set_this_cpu_lacks_is_refused(arm_build):
    rc, out = _qemu(arm_build["kernel_check"], "max", TINYGPTV_ISA="avx2")
    assert rc == 1 and "TINYGPTV_ISA=avx2 is not supported by this CPU (best: neon)" in out, out


@arm
def test_neon_kernels_under_sanitizers(tmp_path):
    """kernel_check built with AddressSanitizer + UndefinedBehaviorSanitizer for AArch64 (linked against
    the cross toolchain's runtimes, run with qemu's -L; leak checking does not work under qemu)."""
    san = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
    common = [a for a in ARM if a != "-O2"] + san
    simd = [(CSRC / "kernels" / f"{k}_neon.cpp", NEON_FLAGS) for k in KERNELS]
    objs = _objects(CXX, common, [*simd, *((p, []) for p in KERNEL_CHECK_SOURCES)], tmp_path)
    exe = tmp_path / "kernel_check_san"
    _compile(CXX, [*common, "-pthread", *objs, "-o", str(exe)])
    sysroot = Path(os.environ.get("TINYGPTV_ARM_SYSROOT", "/usr/aarch64-linux-gnu"))  # Debian's cross libraries
    assert (sysroot / "lib" / "ld-linux-aarch64.so.1").exists(), f"no AArch64 loader under {sysroot} (TINYGPTV_ARM_SYSROOT)"
    for cpu in ("max", "cortex-a53"):  # with and without sdot
        r = subprocess.run([QEMU, "-cpu", cpu, "-L", str(sysroot), str(exe)], capture_output=True, text=True,
                           timeout=600, env={**os.environ, "ASAN_OPTIONS": "detect_leaks=0", "UBSAN_OPTIONS": "print_stacktrace=1"})
        out = r.stdout + r.stderr
        assert r.returncode == 0 and " 0 mismatches" in out and "runtime error" not in out, (cpu, out[-4000:])
        assert "checked: scalar neon" in out, out


@arm
def test_the_bindings_compile_for_aarch64():
    """The pybind11 sources too (syntax only: this machine has no AArch64 Python to link against)."""
    pybind11 = pytest.importorskip("pybind11")  # in the test extra
    includes = [f"-I{sysconfig.get_paths()['include']}", f"-I{pybind11.get_include()}"]

    def check(p):
        r = subprocess.run([CXX, *ARM, *includes, "-fsyntax-only", str(p)], capture_output=True, text=True)
        return p, r.returncode, r.stderr

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
        failed = [(p.relative_to(ROOT), err[-2000:]) for p, rc, err in ex.map(check, sorted((CSRC / "python").glob("*.cpp")))
                  if rc != 0]
    assert not failed, failed


def _reference(path, texts, pixels, n_gen):
    """What model_check prints, computed by the Python module on this machine."""
    m = _core.Model(str(path), 2)
    tok = _core.tokenizer_from_model(m)
    ids = [tok.encode(t, False) for t in texts]
    s = _core.Context(m, 512, 1, 2, True)
    image = None
    if m.has_vision:
        emb = s.encode_image(pixels).numpy()
        image = emb
        s.eval_embeddings(0, emb)
    logits = s.eval_tokens(0, np.array(ids[0], dtype=np.int32))
    out, nxt = [], int(np.argmax(logits))
    first = logits.copy()
    for _ in range(n_gen):
        out.append(nxt)
        nxt = int(np.argmax(s.eval_tokens(0, np.array([nxt], dtype=np.int32))))
    return ids, image, first, out


def _check_model(exe, tmp_path, path, texts, pixels, n_gen):
    (tmp_path / "texts.hex").write_text("".join(t.encode().hex() + "\n" for t in texts))
    pixels.astype(np.float32).tofile(tmp_path / "pixels.f32")
    ids, image, logits, greedy = _reference(path, texts, pixels, n_gen)
    for cpu, isa in (("max", "neon"), ("cortex-a53", "neon"), ("max", "scalar")):  # sdot, without, scalar
        rc, out = _qemu(exe, cpu, path, tmp_path / "texts.hex", tmp_path / "pixels.f32", n_gen, TINYGPTV_ISA=isa)
        assert rc == 0, out
        assert [[int(x) for x in line.split()] for line in _lines(out, "tokens")] == ids, (cpu, isa)
        if image is not None:
            n, s, sa, *v = (float(x) for x in _lines(out, "image")[0].split())
            assert n == image.size
            assert abs(s - image.sum(dtype=np.float64)) <= 1e-4 * np.abs(image).sum(), (cpu, isa, s, image.sum())
            assert abs(sa - np.abs(image).sum(dtype=np.float64)) <= 1e-5 * sa, (cpu, isa)
            np.testing.assert_allclose(v, image.ravel()[:4], rtol=1e-4, atol=1e-5 * np.abs(image).max())
        best, mx, total = _lines(out, "logits")[0].split()
        assert int(best) == int(np.argmax(logits)), (cpu, isa)
        assert abs(float(mx) - logits.max()) <= 1e-4 * logits.std(), (cpu, isa)
        assert abs(float(total) - logits.sum(dtype=np.float64)) <= 1e-4 * np.abs(logits).sum(), (cpu, isa)
        assert [int(x) for x in _lines(out, "greedy")[0].split()] == greedy, (cpu, isa)


TEXTS = ["<s>[INST] <Img><ImageHere></Img> What colour is the shape? [/INST]", "hello  world\n\tend",
         "caf\u00e9 \u00fcber \u4e2d\u6587 \U0001F600 don't 12345 ... \r\n   x"]


@arm
def test_the_demo_model_on_aarch64_answers_as_here(arm_build, tmp_path):
    """The embedded demo model (Q8_0 vision tower, Q-Former and decoder, its own tokenizer) under qemu
    against the Python module here: the same tokens, image embeddings, logits and greedy answer."""
    from tinygptv_native.demo import DEMO_MODEL
    S = _core.Model(str(DEMO_MODEL), 1).image_size
    pixels = np.random.default_rng(0).standard_normal((3, S, S)).astype(np.float32)
    _check_model(arm_build["model_check"], tmp_path, DEMO_MODEL, TEXTS, pixels, 12)


@arm
@pytest.mark.parametrize("outtype", ["q4_0", "q4_k_m"])
def test_phi2_with_the_real_tokenizer_on_aarch64(arm_build, tmp_path, outtype):
    """A random Phi-2 with Phi-2's real vocabulary and merges (the GPT-2 byte-level BPE): llama.cpp's
    tokenizer test texts and the decoder's logits under qemu against the Python module here."""
    from fixtures import checkpoints as fx
    from tinygptv_native.quantize import quantize_file
    path, _, _ = fx.make_phi2_gguf(str(tmp_path), outtype="f32", hidden_size=256, num_attention_heads=4,
                                   intermediate_size=512, num_hidden_layers=2, partial_rotary_factor=0.5)
    q = tmp_path / f"{outtype}.gguf"
    quantize_file(path, str(q), outtype, progress=False)
    vectors = ROOT / "tests" / "data" / "llama.cpp-gpt2-vectors" / "ggml-vocab-gpt-2.gguf.inp"
    texts = vectors.read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    assert len(texts) == 46
    _check_model(arm_build["model_check"], tmp_path, q, ["the quick brown fox", *TEXTS, *texts],
                 np.zeros((3, 1, 1), np.float32), 8)
