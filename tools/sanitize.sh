#!/usr/bin/env bash
# Sanitizer builds of the extension, each in its own build tree, and a pytest run against them.
#
#   tools/sanitize.sh asan [pytest args...]   AddressSanitizer + UndefinedBehaviorSanitizer (gcc)
#   tools/sanitize.sh tsan [pytest args...]   ThreadSanitizer (gcc)
#   tools/sanitize.sh fuzz                    clang build with libFuzzer coverage + ASan/UBSan, for
#                                             tests/fuzz/fuzz_gguf.py (prints the variables to export)
#
# Default pytest selection: tests/test_gguf.py tests/test_concurrency.py. Examples:
#   tools/sanitize.sh asan tests/ -q
#   tools/sanitize.sh tsan tests/test_concurrency.py -q
#
# The module is built into build/<variant>/stage/tinygptv_native/ (a staging copy of the package whose
# Python files are symlinks to the working tree), so the in-place development build is untouched.
# The Python interpreter itself is not instrumented: the sanitizer runtime is preloaded.
# Environment: PYTHON (default python3), JOBS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VARIANT=${1:-asan}
shift || true
PY=${PYTHON:-python3}
PYBIN=$(command -v "$PY")

case "$VARIANT" in
  asan) CMAKE_ARGS=(-DTINYGPTV_SANITIZE=ON -DCMAKE_CXX_FLAGS=-fno-sanitize-recover=undefined)
        CXX_BIN=${CXX:-g++} ;;
  tsan) CMAKE_ARGS=(-DTINYGPTV_TSAN=ON); CXX_BIN=${CXX:-g++} ;;
  # Flags given directly rather than through TINYGPTV_SANITIZE so that -fno-sanitize=... comes last:
  # vptr and function checks need UBSan runtime parts that atheris's asan_with_fuzzer.so lacks.
  fuzz) FZ="-fsanitize=address,undefined,fuzzer-no-link -fno-sanitize=vptr,function -fno-sanitize-recover=undefined -fno-omit-frame-pointer -O1 -g"
        CMAKE_ARGS=(-DTINYGPTV_SANITIZE=OFF "-DCMAKE_CXX_FLAGS=$FZ" "-DCMAKE_MODULE_LINKER_FLAGS=-fsanitize=address,undefined")
        CXX_BIN=${CXX:-$(command -v clang++ || command -v clang++-14 || true)}
        [ -n "$CXX_BIN" ] || { echo "sanitize.sh fuzz: clang++ is required (apt-get install clang)" >&2; exit 2; } ;;
  *) echo "usage: tools/sanitize.sh asan|tsan|fuzz [pytest args...]" >&2; exit 2 ;;
esac

BUILD=build/$VARIANT
STAGE=$BUILD/stage
mkdir -p "$STAGE/tinygptv_native"
# Staging source tree: the real sources by symlink; the module lands in $STAGE/tinygptv_native.
for f in CMakeLists.txt cmake csrc convert; do
  [ -e "$f" ] && ln -sfn "$ROOT/$f" "$STAGE/$f"
done
for f in tinygptv_native/*; do  # every package file (stubs, assets, the demo model) but the module itself
  case "$f" in */_core*.so|*/convert|*/__pycache__) ;; *) ln -sfn "$ROOT/$f" "$STAGE/$f" ;; esac
done
[ -e convert ] && ln -sfn "$ROOT/convert" "$STAGE/tinygptv_native/convert"

cmake -S "$STAGE" -B "$BUILD/cmake" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_COMPILER="$CXX_BIN" \
  -Dpybind11_DIR="$($PY -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$PYBIN" "${CMAKE_ARGS[@]}" >/dev/null
cmake --build "$BUILD/cmake" -j "${JOBS:-2}"

export PYTHONPATH="$ROOT/$STAGE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONMALLOC=malloc  # let the sanitizer see every allocation
case "$VARIANT" in
  asan)
    export LD_PRELOAD="$(${CXX_BIN} -print-file-name=libasan.so) $(${CXX_BIN} -print-file-name=libstdc++.so)"
    export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:max_allocation_size_mb=2048:allocator_may_return_null=0
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ;;
  tsan)
    export LD_PRELOAD="$(${CXX_BIN} -print-file-name=libtsan.so)"
    export TSAN_OPTIONS=halt_on_error=1:exitcode=66:second_deadlock_stack=1:suppressions=$ROOT/tools/tsan.supp ;;
  fuzz)
    ATHERIS=$($PY -c 'import atheris; print(atheris.path())' 2>/dev/null || true)
    echo "fuzz build ready. Run, for example:"
    echo "  PYTHONPATH=$PYTHONPATH PYTHONMALLOC=malloc LD_PRELOAD=${ATHERIS:-<atheris dir>}/asan_with_fuzzer.so \\"
    echo "  ASAN_OPTIONS=detect_leaks=0 $PY tests/fuzz/fuzz_gguf.py --seconds 600"
    exit 0 ;;
esac

# Make sure the instrumented module is the one imported (-P: the working directory, which holds the
# development build, is not put on sys.path).
"$PY" -P -c "import tinygptv_native._core as c, sys; p = c.__file__; print('using', p); sys.exit(0 if '/$STAGE/' in p else 1)"
[ $# -gt 0 ] || set -- tests/test_gguf.py tests/test_concurrency.py -q
# --capture=sys: sanitizer reports (written to fd 2 by the runtime) stay visible when a test aborts.
exec "$PY" -P -m pytest -p no:cacheprovider --capture=sys "$@"
