#!/usr/bin/env bash
# Development build: compiles tinygptv_native/_core*.so in place and links convert/ into the package,
# so `PYTHONPATH=. python -m pytest` runs against the working tree without `pip install`.
# Usage: tools/dev_build.sh [extra cmake args, e.g. -DTINYGPTV_SANITIZE=ON]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUILD=${BUILD_DIR:-build/dev}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-Release} \
  -Dpybind11_DIR="$($PY -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v $PY)" "$@" >/dev/null
cmake --build "$BUILD" -j "${JOBS:-2}"
[ -L tinygptv_native/convert ] || ln -s ../convert tinygptv_native/convert
