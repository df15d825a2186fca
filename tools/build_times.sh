#!/usr/bin/env bash
# Where a clean build of the core spends its time: builds into a fresh folder with every compile and the
# link run under /usr/bin/time, then lists each step's CPU seconds (user + system, children included: the
# link's LTO code generation runs in child processes) with its share of the total, and the build's wall
# time. CPU seconds hardly depend on other load on the machine; wall time does.
# Usage: tools/build_times.sh [build folder (default build/times)] [extra cmake args]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build/times}
shift || true
PY=${PYTHON:-python3}
rm -rf "$BUILD"
mkdir -p "$BUILD"
LOG="$(cd "$BUILD" && pwd)/cpu_times.log"
WRAP="$(cd "$BUILD" && pwd)/timed"
# the launcher: the step's output file (after -o) names the line
cat > "$WRAP" <<WRAPPER
#!/usr/bin/env bash
out=?; prev=
for a in "\$@"; do [ "\$prev" = -o ] && out=\$a; prev=\$a; done
exec /usr/bin/time -a -o "$LOG" -f "%U %S \${out##*/}" "\$@"
WRAPPER
chmod +x "$WRAP"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -Dpybind11_DIR="$($PY -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v $PY)" \
  -DCMAKE_CXX_COMPILER_LAUNCHER="$WRAP" -DCMAKE_CXX_LINKER_LAUNCHER="$WRAP" "$@" > /dev/null
start=$(date +%s.%N)
cmake --build "$BUILD" -j "${JOBS:-2}" > "$BUILD/build.log"
end=$(date +%s.%N)
awk -v wall="$(echo "$end - $start" | bc)" -v jobs="${JOBS:-2}" '
  { t = $1 + $2; name = $3; cpu[name] += t; total += t }
  END {
    for (n in cpu) printf "%8.1f s %5.1f%%  %s\n", cpu[n], 100 * cpu[n] / total, n | "sort -rn"
    close("sort -rn")
    printf "total CPU %.1f s, wall %.1f s at %d jobs\n", total, wall, jobs
  }' "$LOG"
