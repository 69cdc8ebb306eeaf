#!/usr/bin/env bash
# On the GPU machine, one device call: builds of this tree with different compile-time knobs, side by side.
#
#   bench/ab_knobs.sh [options] -- NAME="FLAGS" NAME="FLAGS" ...
#
# Each NAME is built in build/knob-NAME with FLAGS as its CMAKE_CUDA_FLAGS (e.g. M="" Z="-DFA_SM90_FWD_ZIGZAG=1": the
# FA_SM90_* knobs of native/kernels/sm90/*_traits.h and launchers), FA_PTXAS_VERBOSE on, all builds at once (the
# machine's cores split between them). Then, in order: the registers and spills of the kernels matching --kernels in
# every build (bench/ptxas_regs.py, with wgmma serialization warnings); bench/ab.py over all builds (the first is the
# baseline: each build's TFLOP/s over it and over cuDNN); and, for the build --tests names (built with the tests),
# c_abi_test and compute-sanitizer racecheck and memcheck over sanitize_driver's calls matching --san-filter, side by
# side, each under a time limit (--tests-if R: only when the tested build's geometric mean over the baseline across
# the rows is at least R, so that a refuted variant spends no device time on tests).
#
# Options: --dims "128;256" (FA_HEAD_DIMS), --rows BxHxSxD[c],... or --d/--quick (ab.py's rows), --dtype bf16|fp16|e4m3,
# --pass fwd|bwd, --det, --dropout P (ab.py's), --rounds N (3), --kernels REGEX ('fwd_kernel_sm90'), --tests NAME, --tests-if R,
# --san-filter TEXT ('fwd sm90'), --test-timeout S (230).
#
# Logs go to build/ab-knobs/; with $OUT set (the device tool's folder, which returns at most 8 files) they come back
# packed as $OUT/ab-knobs-logs.tgz. A summary (ptxas, the A/B table, test and sanitizer verdicts) comes last.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

dims="128;256" rounds=3 kernels='fwd_kernel_sm90' tests="" tests_if="" san_filter="fwd sm90" test_timeout=230
ab_args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dims) dims="$2"; shift 2 ;;
        --rows|--d|--dtype|--pass|--dropout) ab_args+=("$1" "$2"); shift 2 ;;
        --quick|--det) ab_args+=("$1"); shift ;;
        --rounds) rounds="$2"; shift 2 ;;
        --kernels) kernels="$2"; shift 2 ;;
        --tests) tests="$2"; shift 2 ;;
        --tests-if) tests_if="$2"; shift 2 ;;
        --san-filter) san_filter="$2"; shift 2 ;;
        --test-timeout) test_timeout="$2"; shift 2 ;;
        --) shift; break ;;
        *) echo "ab_knobs.sh: unknown option $1 (see the header)" >&2; exit 2 ;;
    esac
done
[[ $# -ge 1 ]] || { echo "usage: bench/ab_knobs.sh [options] -- NAME=\"FLAGS\" ..." >&2; exit 2; }
names=() flags=()
for spec in "$@"; do
    [[ "$spec" == *=* && "${spec%%=*}" =~ ^[A-Za-z0-9_]+$ ]] || { echo "ab_knobs.sh: '$spec' is not NAME=FLAGS" >&2; exit 2; }
    names+=("${spec%%=*}")
    flags+=("${spec#*=}")
done
[[ -z "$tests" || " ${names[*]} " == *" $tests "* ]] || { echo "ab_knobs.sh: --tests $tests is not a build" >&2; exit 2; }

dest="${OUT:-}"
logs="build/ab-knobs"
rm -rf "$logs"
mkdir -p "$logs"
logs="$(realpath "$logs")"
pack() { [[ -n "$dest" ]] && tar -C "$(dirname "$logs")" -czf "$dest/ab-knobs-logs.tgz" "$(basename "$logs")"; }
trap pack EXIT
t0=$(date +%s)
stamp() { echo "[$(($(date +%s) - t0)) s] $*"; }

cores=$(nproc 2>/dev/null || echo 8)
jobs=$((cores / ${#names[@]}))
((jobs < 2)) && jobs=2
pids=()
for i in "${!names[@]}"; do
    n="${names[$i]}"
    with_tests=OFF
    [[ "$n" == "$tests" ]] && with_tests=ON
    (cmake -S . -B "build/knob-$n" -DCMAKE_BUILD_TYPE=Release -DFA_CUDA_ARCHS="${FA_CUDA_ARCHS:-90a}" \
        "-DFA_HEAD_DIMS=$dims" -DFA_BUILD_TESTS=$with_tests -DFA_PTXAS_VERBOSE=ON "-DCMAKE_CUDA_FLAGS=${flags[$i]}" \
        >"$logs/build-$n.log" 2>&1 && cmake --build "build/knob-$n" -j"$jobs" >>"$logs/build-$n.log" 2>&1) &
    pids+=($!)
done
failed=0
for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
        echo "build ${names[$i]} FAILED:"; grep -E -A4 'error' "$logs/build-${names[$i]}.log" | head -n 30
        failed=1
    fi
done
stamp "builds done"
((failed)) && exit 1

for n in "${names[@]}"; do
    echo "== $n"
    python3 bench/ptxas_regs.py "$logs/build-$n.log" "$kernels" --serialized
done >"$logs/ptxas.txt" 2>&1

libs=()
for n in "${names[@]}"; do libs+=(--lib "$n=build/knob-$n"); done
PYTHONUNBUFFERED=1 python3 bench/ab.py "${libs[@]}" --rounds "$rounds" "${ab_args[@]}" >"$logs/ab.txt" 2>&1
stamp "ab.py done (exit code $?)"

test_lines=()
if [[ -n "$tests" ]]; then
    run_tests=1
    if [[ -n "$tests_if" ]]; then
        gain=$(python3 - "$logs/ab.txt" "$tests" "${names[0]}" <<'PY'
import math, sys
lines = open(sys.argv[1]).read().splitlines()
head = next((l.split() for l in lines if l.startswith("row")), None)
col = f"{sys.argv[2]}/{sys.argv[3]}"
if head is None or col not in head:
    print("nan")
    sys.exit()
at = head.index(col) - len(head)
vals = [float(l.split()[at]) for l in lines if l[:1] == "d" and l.split()[at] not in ("-", "nan")]
print("%.3f" % math.exp(sum(map(math.log, vals)) / len(vals)) if vals else "nan")
PY
)
        test_lines+=("$tests over ${names[0]}, geometric mean over the rows: $gain (tests run from $tests_if)")
        python3 -c "import sys; g = float('$gain'); sys.exit(0 if g == g and g >= float('$tests_if') else 1)" || run_tests=0
    fi
    if ((run_tests)); then
        b="build/knob-$tests"
        (cd "$b" && timeout "$test_timeout" ./c_abi_test >"$logs/c_abi_test.log" 2>&1; echo "exit code $?" >>"$logs/c_abi_test.log") &
        pc=$!
        # Two compute-sanitizer processes side by side need ports of their own (the default one, shared, hung a call
        # until its limit: bench/NOTES.md, sixth session), as tools/run_sanitizers.py gives them; where this
        # compute-sanitizer has no --port, they run one after the other.
        if compute-sanitizer --help 2>/dev/null | grep -q -- '--max-connections'; then
            port() { echo --port $((49152 + 16 * $1)) --max-connections 16; }
            (timeout -k 10 "$test_timeout" compute-sanitizer $(port 1) --tool racecheck "$b/sanitize_driver" \
                --filter "$san_filter" >"$logs/racecheck.log" 2>&1) &
            pr=$!
            (timeout -k 10 "$test_timeout" compute-sanitizer $(port 2) --tool memcheck "$b/sanitize_driver" \
                --filter "$san_filter" >"$logs/memcheck.log" 2>&1) &
            pm=$!
            wait "$pr"; wait "$pm"
        else
            timeout -k 10 "$test_timeout" compute-sanitizer --tool racecheck "$b/sanitize_driver" --filter "$san_filter" \
                >"$logs/racecheck.log" 2>&1
            timeout -k 10 "$test_timeout" compute-sanitizer --tool memcheck "$b/sanitize_driver" --filter "$san_filter" \
                >"$logs/memcheck.log" 2>&1
        fi
        wait "$pc"
        stamp "tests done"
        test_lines+=("c_abi_test ($tests): $(grep -h 'checks passed' "$logs/c_abi_test.log" | tail -n 1), $(tail -n 1 "$logs/c_abi_test.log")")
        for tool in racecheck memcheck; do
            verdict=$(grep -h -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$logs/$tool.log" | tail -n 1)
            test_lines+=("$tool ($tests, '$san_filter'): $(grep -c 'SAN-CALL .* END ok' "$logs/$tool.log") calls ok; ${verdict:-no verdict (killed?)}")
        done
    else
        test_lines+=("tests skipped")
    fi
fi

echo "=== summary ==="
cat "$logs/ptxas.txt"
grep -E '^(row|d[0-9])' "$logs/ab.txt" || tail -n 20 "$logs/ab.txt"
for l in "${test_lines[@]}"; do echo "$l"; done
stamp "end"
