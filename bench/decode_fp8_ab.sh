#!/usr/bin/env bash
# On the GPU machine (H200): builds the fp8 KV-cache decode tile variants (decode_traits.h's FA_DECODE_FP8_*_128
# overrides) for sm_90a in parallel, times them side by side (bench/decode_fp8_ab.py: fp8 and bf16 cache per build,
# B 16, 32/8 heads, D 128), then builds and runs c_decode_test on the fastest variant's build (tests ON).
#   bench/decode_fp8_ab.sh [lengths (default 4096,32768)]
# Logs and results go to $OUT (the device tool's folder) or build/fp8ab.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
lengths="${1:-4096,32768}"
out="${OUT:-build/fp8ab}"
mkdir -p "$out"
exec > >(tee "$out/fp8ab.log") 2>&1
t0=$SECONDS
jobs_per_build=$(( $(nproc) / 4 ))
(( jobs_per_build < 1 )) && jobs_per_build=1

# name:macros. def is today's tile (WarpKeys 32, 3 stages, MinBlocks 2: 2 CTAs an SM); the others aim at 3-4 CTAs an
# SM (decode_traits.h's comment at DecodeTileFp8<64> says why and predicts).
variants=(
    "def:"
    "k16s3b3:-DFA_DECODE_FP8_WARP_KEYS_128=16 -DFA_DECODE_FP8_MIN_BLOCKS_128=3"
    "k16s4b3:-DFA_DECODE_FP8_WARP_KEYS_128=16 -DFA_DECODE_FP8_STAGES_128=4 -DFA_DECODE_FP8_MIN_BLOCKS_128=3"
    "k16s3b4:-DFA_DECODE_FP8_WARP_KEYS_128=16 -DFA_DECODE_FP8_MIN_BLOCKS_128=4"
)

build_one() {  # name macros
    local name="$1" macros="$2" dir="build/ab_$1"
    cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DFA_CUDA_ARCHS=90a -DFA_HEAD_DIMS=128 -DFA_BUILD_TESTS=OFF \
        -DFA_PTXAS_VERBOSE=ON "-DCMAKE_CUDA_FLAGS=$macros" > "$out/cfg_$name.log" 2>&1 &&
        cmake --build "$dir" -j"$jobs_per_build" --target flash_attention > "$out/build_$name.log" 2>&1
}

declare -A pid
for v in "${variants[@]}"; do
    name="${v%%:*}"
    build_one "$name" "${v#*:}" &
    pid[$name]=$!
done
ok=()
for v in "${variants[@]}"; do
    name="${v%%:*}"
    if wait "${pid[$name]}"; then
        ok+=("$name")
        echo "[$((SECONDS - t0)) s] built $name"
    else
        echo "[$((SECONDS - t0)) s] BUILD FAILED $name"
        grep -E -B2 -A6 "error" "$out/build_$name.log" "$out/cfg_$name.log" | head -40
    fi
done

# Registers and spills of the fp8 decode kernels at D 128 (sm_90a), per variant.
for name in "${ok[@]}"; do
    echo "== $name: fp8 decode kernels (ptxas, sm_90a)"
    grep -A3 -E "Compiling entry function '_ZN2fa4sm8013decode_kernel.*Li128E.*Lb1ELi[0-9]+EEELb[01]EEEv" \
        "$out/build_$name.log" | grep -E "Compiling|registers|spill" |
        sed -E "s/.*DecodeTraitsI([0-9_a-z]+)Li128E(.*)EEEvNS_.*/\1 \2/" | paste - - - |
        sed -E 's/ptxas info *: *//g; s/ +/ /g' || true
done

[[ ${#ok[@]} -eq 0 ]] && { echo "nothing built"; exit 1; }
libs=()
for name in "${ok[@]}"; do libs+=(--lib "$name=build/ab_$name"); done
echo "[$((SECONDS - t0)) s] timing: ${ok[*]} at $lengths"
python3 bench/decode_fp8_ab.py "${libs[@]}" --lengths "$lengths" --rounds 2 --out "$out/fp8ab.json"
echo "[$((SECONDS - t0)) s] timed (rc $?)"

# The fastest variant at the longest length: its build with tests ON, then c_decode_test (GPU part included).
best=$(python3 - "$out/fp8ab.json" <<'EOF'
import json, sys
rows = [r for r in json.load(open(sys.argv[1])) if r.get("fp8_us") and not r.get("errors")]
sk = max(r["sk"] for r in rows)
print(min((r for r in rows if r["sk"] == sk), key=lambda r: r["fp8_us"])["variant"])
EOF
)
[[ -z "$best" ]] && best=def
echo "[$((SECONDS - t0)) s] best variant: $best; c_decode_test on build/ab_$best (FA_BUILD_TESTS=ON)"
cmake -S . -B "build/ab_$best" -DFA_BUILD_TESTS=ON > "$out/cfg_tests.log" 2>&1 &&
    cmake --build "build/ab_$best" -j"$(nproc)" --target c_decode_test > "$out/build_tests.log" 2>&1 ||
    { grep -E -B2 -A6 "error" "$out/build_tests.log" | head -40; exit 1; }
"./build/ab_$best/c_decode_test" > "$out/c_decode_test_$best.log" 2>&1
rc=$?
grep -E "FAIL|c_decode_test:" "$out/c_decode_test_$best.log" | tail -20
echo "[$((SECONDS - t0)) s] c_decode_test on $best: rc $rc"
exit "$rc"
