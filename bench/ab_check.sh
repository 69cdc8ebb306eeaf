#!/usr/bin/env bash
# On the GPU machine: checks a change of the library against a baseline build of an earlier commit, in two
# device calls of under 10 minutes each (the second reuses the first's builds while the machine is warm).
#
#   bench/ab_check.sh tests BASE_SRC   builds this tree (gpu-test's native build) and BASE_SRC (a source tree of
#                                      the earlier commit, e.g. `git archive <commit> | tar -x -C gpu-baseline`),
#                                      runs gpu-test's tests and sanitize parts (ctest, NUnit, demo, samples;
#                                      compute-sanitizer memcheck, racecheck, synccheck and initcheck over small
#                                      calls of every kernel: tools/run_sanitizers.py), and compares the two
#                                      builds' kernel names and ptxas registers/spills
#   bench/ab_check.sh bench BASE_SRC   gpu-test's bench half with --baseline-lib (the earlier build timed beside
#                                      this one in one process on every forward, backward and decode row)
#
# FA_CUDA_ARCHS defaults to 90a here (on a Hopper GPU the sm_80 code of an "80;90a" build never runs, and one
# architecture halves the build). A summary comes last.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode="${1:-}"
base_src="${2:-}"
[[ "$mode" == tests || "$mode" == bench ]] && [[ -n "$base_src" && -f "$base_src/CMakeLists.txt" ]] || {
    echo "usage: bench/ab_check.sh tests|bench BASE_SRC (a source tree with CMakeLists.txt)" >&2
    exit 2
}
export FA_CUDA_ARCHS="${FA_CUDA_ARCHS:-90a}"
# Logs go to build/ab-<mode> (gpu-test's too); with $OUT set (the device tool's folder, which returns at most 8
# files), they come back packed as $OUT/ab-<mode>-logs.tgz, with the bench record and table beside it.
dest="${OUT:-}"
out="build/ab-$mode"
rm -rf "$out"
mkdir -p "$out"
out="$(realpath "$out")"
export OUT="$out"
base_build="${AB_BASE_BUILD:-build/base}"
base_lib="$base_build/libflash_attention.so"

# The baseline library, in the background while gpu-test builds this tree.
build_base() {
    if [[ -f "$base_lib" ]]; then
        echo "    baseline library already built ($base_lib)"
        return 0
    fi
    cmake -S "$base_src" -B "$base_build" -DCMAKE_BUILD_TYPE=Release -DFA_CUDA_ARCHS="$FA_CUDA_ARCHS" \
        -DFA_BUILD_TESTS=OFF -DFA_PTXAS_VERBOSE=ON >"$out/base-build.log" 2>&1 &&
        cmake --build "$base_build" -j8 >>"$out/base-build.log" 2>&1
}
build_base &
base_pid=$!

summary=()
if [[ "$mode" == tests ]]; then
    rc=0
    # gpu-test's sanitize part (AB_SANITIZE=0 leaves it out; FA_SAN_* tune it, see build.sh help).
    parts=tests,sanitize
    [[ "${AB_SANITIZE:-1}" == 0 ]] && parts=tests
    FA_GPU_TEST_ONLY=$parts ./build.sh gpu-test >"$out/gpu-test.log" 2>&1 || rc=$?
    tail -n 25 "$out/gpu-test.log"
    summary+=("gpu-test $parts: exit code $rc; $(tail -n 1 "$out/gpu-test.log" | grep -E 'passed' || echo 'no summary line')")
    if [[ "$parts" == *sanitize* ]]; then
        while IFS= read -r line; do summary+=("$line"); done < <(sed -n '2,$p' "$out/sanitize-summary.txt" 2>/dev/null)
    else
        summary+=("compute-sanitizer: skipped (AB_SANITIZE=0)")
    fi
    wait "$base_pid" || { summary+=("baseline build FAILED (see base-build.log)"); }

    # Kernel names of both builds (the registry must list the same kernels in the same order).
    cat >/tmp/fa_names.c <<'EOF'
#include <stdio.h>
#include "flash_attention.h"
int main(void) {
    int32_t n = 0;
    if (fa_kernel_count(&n) != FA_STATUS_SUCCESS) return 1;
    for (int32_t i = 0; i < n; ++i) {
        const char* s = 0;
        if (fa_kernel_name(i, &s) != FA_STATUS_SUCCESS) return 1;
        printf("%s\n", s);
    }
    return 0;
}
EOF
    for which in new base; do
        lib_dir=$([[ $which == new ]] && echo build/native || echo "$base_build")
        cc -O1 -I native/include /tmp/fa_names.c -L "$lib_dir" -lflash_attention -Wl,-rpath,"$(realpath "$lib_dir")" \
            -o "/tmp/fa_names_$which" && "/tmp/fa_names_$which" >"$out/names-$which.txt"
    done
    if diff "$out/names-base.txt" "$out/names-new.txt" >"$out/names.diff"; then
        summary+=("kernel names: identical ($(wc -l <"$out/names-new.txt") kernels)")
    else
        summary+=("kernel names: DIFFER (names.diff)")
    fi

    # ptxas registers, stack and spills per kernel, both builds.
    python3 - "$out/native-build.log" "$out/base-build.log" >"$out/ptxas-diff.txt" <<'EOF'
import re, sys
def kernels(path):
    out, name = {}, None
    for line in open(path, errors="replace"):
        m = re.search(r"Compiling entry function '([^']+)' for '(sm_\w+)'", line)
        if m:
            name = (m.group(1), m.group(2))
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and name:
            out.setdefault(name, {})["spill"] = tuple(int(x) for x in m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m and name:
            out.setdefault(name, {})["regs"] = int(m.group(1))
    return out
new, base = kernels(sys.argv[1]), kernels(sys.argv[2])
same = diff = 0
for k in sorted(set(new) & set(base)):
    if new[k] == base[k]:
        same += 1
    else:
        diff += 1
        print(f"DIFF {k[1]} {k[0][:110]}: base {base[k]} new {new[k]}")
for k in sorted(set(new) - set(base)):
    print(f"NEW  {k[1]} {k[0][:110]}: {new[k]}")
for k in sorted(set(base) - set(new)):
    print(f"GONE {k[1]} {k[0][:110]}: {base[k]}")
spills = [k for k, v in new.items() if v.get("spill", (0, 0, 0))[1] > 0]
print(f"SUMMARY ptxas: {same} kernels identical, {diff} differ, {len(set(new) - set(base))} new, "
      f"{len(set(base) - set(new))} gone; {len(spills)} kernels of the new build spill")
EOF
    grep -E '^DIFF' "$out/ptxas-diff.txt" | head -n 20
    summary+=("$(grep '^SUMMARY' "$out/ptxas-diff.txt" || echo 'ptxas: no report')")

else
    wait "$base_pid" || { summary+=("baseline build FAILED (see base-build.log)"); }
    rc=0
    FA_GPU_TEST_ONLY=bench FA_BENCH_ARGS="--baseline-lib $base_lib ${FA_BENCH_ARGS:-}" ./build.sh gpu-test \
        >"$out/gpu-test.log" 2>&1 || rc=$?
    summary+=("gpu-test bench: exit code $rc")
    tail -n 70 "$out/gpu-test.log"
fi

printf '%s\n' "${summary[@]}" >"$out/summary.txt"
if [[ -n "$dest" ]]; then
    mkdir -p "$dest"
    tar -czf "$dest/ab-$mode-logs.tgz" -C "$out" .
    for f in bench.json bench-table.txt summary.txt; do [[ -f "$out/$f" ]] && cp "$out/$f" "$dest/$mode-$f"; done
fi
echo "==> ab_check $mode summary (logs in $out${dest:+, packed in $dest/ab-$mode-logs.tgz})"
printf '    %s\n' "${summary[@]}"
