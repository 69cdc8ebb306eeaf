#!/usr/bin/env bash
# Builds the library (sm_90a, the head dims given) and the backward harness on the GPU machine, then runs
# the harness: reference checks and timings of the kernel paths given. Kernel work only (no managed
# code); the side-by-side benchmark is bench/run.py.
#   bench/bwd_harness.sh [dims (default "64;128")] [harness args (default --paths sm80,sm90)]
set -euo pipefail
dims="${1:-64;128}"
shift || true
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--paths sm80,sm90)
build=/tmp/fa_bwd_build
cmake -S . -B "$build" -DFA_CUDA_ARCHS=90a -DFA_HEAD_DIMS="$dims" -DFA_BUILD_TESTS=OFF -DFA_PTXAS_VERBOSE=ON \
  -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build "$build" -j16 > /tmp/fa_bwd_build.log 2>&1 || { grep -E -B2 -A6 "error" /tmp/fa_bwd_build.log | head -60; exit 1; }
# Registers and spills of the backward main kernels (sm80 and sm90), and any wgmma serialisation note.
grep -A4 -E "Compiling entry function '_ZN2fa4sm(80|90)1[05]bwd_kernel" /tmp/fa_bwd_build.log |
  grep -E "Compiling|registers|spill" | sed -E "s/.*entry function '([^']*).*/\1/" | paste - - - | sort | uniq -c | head -40 || true
grep -E "Performance Loss|wgmma" /tmp/fa_bwd_build.log | sort | uniq -c | head -10 || true
g++ -std=c++17 -O2 -I native/include native/tests/bwd_harness.cpp -L "$build" -lflash_attention \
  -Wl,-rpath,"$build" -o /tmp/fa_bwd_harness
/tmp/fa_bwd_harness "${args[@]}"
