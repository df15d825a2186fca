#!/usr/bin/env bash
# Builds this checkout's wheel for the running Python and repairs it with auditwheel into a manylinux wheel
# (the libraries it needs beyond the manylinux set copied in, its tag checked against the glibc symbols it
# uses). Prints the repaired wheel's path on the last line.
# Usage: tools/build_wheel.sh [output folder, default dist]      (PYTHON=... to choose the interpreter)
#
# When scikit-build-core, pybind11, cmake and ninja are installed in that interpreter's environment, the
# build runs without pip's build isolation: the compiler command lines then name the same pybind11 headers
# every time, so the build folder (build/<wheel tag>, see pyproject.toml) is reused and only changed files
# are compiled again. In an isolated build each run gets pybind11 from a new temporary folder and every
# file is compiled again.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-dist}
PY=${PYTHON:-python3}
raw=$(mktemp -d)
fixed=$(mktemp -d)
trap 'rm -rf "$raw" "$fixed"' EXIT
isolation=()
if "$PY" -c "import scikit_build_core, pybind11, cmake, ninja" 2> /dev/null; then
  isolation=(--no-build-isolation)
fi
"$PY" -m pip wheel -q --no-deps "${isolation[@]}" -w "$raw" . >&2
"$PY" -m auditwheel repair -w "$fixed" "$raw"/*.whl >&2
mkdir -p "$OUT"
wheel=$(cd "$fixed" && ls tinygptv_native-*.whl)
mv -f "$fixed/$wheel" "$OUT/"
echo "$(cd "$OUT" && pwd)/$wheel"
