#!/usr/bin/env bash
# CMAKE_ARGS for building llama-cpp-python (the peer engine of the interop tests and benchmarks) for this
# machine's CPU without AMX. ggml's native build (-march=native) turns on its AMX matrix kernels where
# the CPU reports AMX, but some virtual machines report AMX without letting a process use the tile
# registers (the first `tilezero` raises SIGILL), which kills the test process. So the instruction sets
# are named one by one from /proc/cpuinfo, AMX left out.
set -euo pipefail
flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
has() { [[ "$flags" == *" $1 "* ]]; }
args="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
on() { args="$args -D$1=$2"; }
if has avx; then on GGML_AVX ON; else on GGML_AVX OFF; fi
if has avx2; then on GGML_AVX2 ON; else on GGML_AVX2 OFF; fi
if has fma; then on GGML_FMA ON; else on GGML_FMA OFF; fi
if has f16c; then on GGML_F16C ON; else on GGML_F16C OFF; fi
if has bmi2; then on GGML_BMI2 ON; else on GGML_BMI2 OFF; fi
if has avx_vnni; then on GGML_AVX_VNNI ON; else on GGML_AVX_VNNI OFF; fi
if has avx512f && has avx512bw && has avx512dq && has avx512vl; then on GGML_AVX512 ON; else on GGML_AVX512 OFF; fi
if has avx512vbmi; then on GGML_AVX512_VBMI ON; else on GGML_AVX512_VBMI OFF; fi
if has avx512_vnni; then on GGML_AVX512_VNNI ON; else on GGML_AVX512_VNNI OFF; fi
if has avx512_bf16; then on GGML_AVX512_BF16 ON; else on GGML_AVX512_BF16 OFF; fi
echo "$args"
