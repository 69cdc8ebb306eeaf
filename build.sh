#!/usr/bin/env bash
# build.sh - build, test, bundle and benchmark FlashAttention.Interop.
#
# Every step prints "==> <step>: <what>" before it runs and "FAILED: <step>" when it fails, and the
# script then exits non-zero. build.ps1 has the same subcommands for PowerShell 7.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

SLN="FlashAttention.Interop.sln"
NATIVE_BUILD_DIR="${FA_NATIVE_BUILD_DIR:-build/native}"
NATIVE_ARTIFACTS="artifacts/native"
LIB_NAME="libflash_attention.so"
TESTS_PROJECT="tests/FlashAttention.Tests/FlashAttention.Tests.csproj"
TESTS_DLL="tests/FlashAttention.Tests/bin/Release/net10.0/FlashAttention.Tests.dll"
DEMO_PROJECT="managed/FlashAttention.Demo/FlashAttention.Demo.csproj"
TRAINING_PROJECT="managed/FlashAttention.Training/FlashAttention.Training.csproj"
# The decode sample; bundled and run by gpu-test only where its folder exists (its project: the folder's
# .csproj; its executable: that project's name).
GENERATE_DIR="managed/FlashAttention.Generate"
BENCH_PROJECT="bench/FlashAttention.Bench/FlashAttention.Bench.csproj"
GENERATOR_PROJECT="bindings/Generator"
GENERATOR_RSP="@bindings/generate.rsp"
BUNDLE_DIR="bundle/app"
BUNDLE_TAR="bundle/app.tar.xz"
JOBS="$(nproc 2>/dev/null || echo 2)"

export DOTNET_CLI_TELEMETRY_OPTOUT=1
export DOTNET_NOLOGO=1
export DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

usage() {
    cat <<'EOF'
Usage: ./build.sh <command> [options]

Commands:
  deps              Check the .NET SDK (>= 10), install the CUDA toolkit (Debian non-free), CMake and
                    clang-14 where missing, restore NuGet packages and the local dotnet tools.
  build [-DX=Y...]  Build the native library (CMake, build/native), copy it to artifacts/native/,
                    then build the solution (Release). -D options go to CMake, others to dotnet build.
  test              Build, then run ctest, the bindings check, the NUnit tests and the Python package's
                    CPU tests (pytest -m "not gpu"); the last line is "N passed, N failed, N skipped".
                    GPU tests skip themselves where there is no GPU; each distinct skip reason is
                    printed once with its count.
  bindings [--check]
                    Regenerate the P/Invoke layer from the C header (or, with --check, fail when the
                    checked-in bindings are stale).
  demo [args...]    Build if needed and run the demo (the main job): one attention forward through
                    the managed API, on the GPU if there is one, otherwise on the CPU reference.
  bundle            Publish the tests, the demo, the training sample (and the decode sample
                    managed/FlashAttention.Generate where it exists) and the benchmark self-contained
                    (linux-x64) into bundle/app and pack bundle/app.tar.xz for the GPU machine.
  gpu-test          On the GPU machine (nvcc, python3 with torch, no dotnet): build the native
                    library for sm_80 + sm_90a, run ctest, the bundled tests (GPU ones included), the
                    demo, the training sample (and the decode sample where it exists), the Python
                    package's GPU tests (pytest -m gpu), compute-sanitizer (memcheck, racecheck,
                    synccheck, initcheck) over small calls of every kernel, and bench/run.py
                    (forward, backward and decode rows); logs go to $OUT (else build/gpu-test); a
                    table comes last.
  pack              dotnet pack the managed library with runtimes/linux-x64/native/libflash_attention.so,
                    then check each package's description, license, readme and tags (the repository
                    URL comes from git remote origin, or FA_REPOSITORY_URL).
  wheel             Build the Python package (python/, import flash_attn_interop) as a wheel with
                    libflash_attention.so inside -> artifacts/python/ (pip wheel --no-deps
                    --no-build-isolation; builds the native library first if artifacts/native lacks it).
  help              Show this text.

Environment:
  FA_CUDA_ARCHS     CUDA architectures for the native build (default: "80;90a" where nvcc >= 12.3,
                    "80" otherwise).
  FA_NATIVE_BUILD_DIR  CMake build folder (default build/native).
  FA_GPU_TEST_ONLY  gpu-test: "tests" (ctest, NUnit, demo, samples), "sanitize" (compute-sanitizer),
                    "bench" (the benchmark), or a comma list of them (default: all three).
  FA_BENCH_ARGS     gpu-test: extra arguments of bench/run.py (e.g. --baseline-lib DIR, --only fwd,bwd).
  FA_STEP_TIMEOUT   gpu-test: seconds each test program (ctest, NUnit, demo, pytest, samples) may run (240); one
                    that runs longer (a hung kernel) is stopped and its step counts as failed, saying so.
  FA_SAN_TOOLS, FA_SAN_SHARDS, FA_SAN_JOBS, FA_SAN_TIMEOUT, FA_SAN_CONFIRM
                    gpu-test's sanitize part: the tools (default memcheck,racecheck,synccheck,initcheck),
                    shards per tool (e.g. racecheck=4,memcheck=2), runs at once, seconds per run (300),
                    calls with errors re-run alone per tool (3); see tools/run_sanitizers.py.
EOF
}

# ---- step bookkeeping -----------------------------------------------------------------------------

CURRENT_STEP=""
on_exit() {
    local rc=$?
    if [[ $rc -ne 0 && -n "$CURRENT_STEP" ]]; then
        echo "FAILED: $CURRENT_STEP (exit code $rc)" >&2
    fi
}
trap on_exit EXIT

# step NAME WHAT...: announce a step; a failure until the next step is reported under NAME.
step() {
    CURRENT_STEP="$1"
    shift
    echo "==> $CURRENT_STEP: $*"
}

die() {
    echo "error: $*" >&2
    exit 1
}

have() { command -v "$1" >/dev/null 2>&1; }

# The first Python 3 (python3 on PATH, then Debian's /usr/bin/python3) that imports every module named; "" if none.
# A python3 from pyenv or a venv may lack what Debian's packages put into /usr/bin/python3 (pytest, wheel).
python_with() {
    local py mods
    mods="$(IFS=,; echo "$*")"
    for py in python3 /usr/bin/python3; do
        if have "$py" && "$py" -c "import $mods" >/dev/null 2>&1; then
            command -v "$py"
            return 0
        fi
    done
    echo ""
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif have sudo; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# CUDA installed from NVIDIA's packages lives outside PATH.
if ! have nvcc && [[ -x /usr/local/cuda/bin/nvcc ]]; then
    export PATH="/usr/local/cuda/bin:$PATH"
fi

# "major.minor" of nvcc, or "" when there is none.
nvcc_version() {
    have nvcc || { echo ""; return 0; }
    nvcc --version | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1
}

# 0 when version $1 >= $2 (both "major.minor").
version_ge() {
    [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" == "$2" ]]
}

dotnet_major() {
    have dotnet || { echo 0; return 0; }
    local v
    v="$(dotnet --version 2>/dev/null || true)"
    echo "${v%%.*}" | grep -E '^[0-9]+$' || echo 0
}

# ---- deps -----------------------------------------------------------------------------------------

# Adds Debian's contrib/non-free component (for nvidia-cuda-toolkit), with the mirror the system
# already uses: the URIs: line of the first stanza of its debian.sources.
add_debian_nonfree_sources() {
    local list="/etc/apt/sources.list.d/fa-nonfree.sources"
    if [[ -f "$list" ]]; then
        echo "    $list already present"
        return 0
    fi
    local codename uris signed
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
    local system="/etc/apt/sources.list.d/debian.sources"
    if [[ -f "$system" ]]; then
        # First stanza = the lines before the first blank line.
        uris="$(awk 'NF == 0 { exit } /^URIs:/ { print; exit }' "$system")"
        signed="$(awk 'NF == 0 { exit } /^Signed-By:/ { print; exit }' "$system")"
    elif [[ -f /etc/apt/sources.list ]]; then
        uris="URIs: $(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list)"
        signed=""
    fi
    [[ -n "${uris:-}" && "$uris" != "URIs: " ]] || die "cannot find the Debian mirror (no URIs: line in $system)"
    echo "    writing $list ($uris, $codename contrib non-free)"
    {
        echo "Types: deb"
        echo "$uris"
        echo "Suites: $codename"
        echo "Components: contrib non-free"
        [[ -n "${signed:-}" ]] && echo "$signed"
    } | as_root tee "$list" >/dev/null
}

cmd_deps() {
    step deps-dotnet "check the .NET SDK (>= 10)"
    local major
    major="$(dotnet_major)"
    if [[ "$major" -lt 10 ]]; then
        cat >&2 <<'EOF'
The .NET 10 SDK is required (found: none or older). Install it, for example:
  curl -sSL https://dot.net/v1/dotnet-install.sh | bash -s -- --channel 10.0
  export PATH="$HOME/.dotnet:$PATH"
or follow https://learn.microsoft.com/dotnet/core/install/linux-debian
EOF
        exit 1
    fi
    echo "    dotnet $(dotnet --version)"

    local is_debian=0
    [[ -f /etc/debian_version ]] && have apt-get && is_debian=1
    local apt_packages=()

    step deps-cuda "check the CUDA toolkit (nvcc)"
    if have nvcc; then
        echo "    nvcc $(nvcc_version) at $(command -v nvcc)"
    elif [[ $is_debian -eq 1 ]]; then
        add_debian_nonfree_sources
        apt_packages+=(nvidia-cuda-toolkit)
    else
        die "nvcc not found; install the CUDA toolkit (>= 11.8) and put nvcc on PATH"
    fi

    step deps-tools "check cmake, make, python3 and clang-14"
    have cmake || apt_packages+=(cmake)
    have make || apt_packages+=(make)
    # ctest's ABI-boundary check (tools/check_abi_boundary.py) runs under Python 3.
    have python3 || apt_packages+=(python3)
    # The Python package's tests (pytest) and its wheel (setuptools, wheel, pip).
    [[ -n "$(python_with pytest)" ]] || apt_packages+=(python3-pytest)
    [[ -n "$(python_with setuptools wheel pip)" ]] || apt_packages+=(python3-setuptools python3-wheel python3-pip)
    # CUDA 11.x rejects g++ 12 as host compiler; clang-14 is the one it accepts on Debian 12.
    have clang-14 || apt_packages+=(clang-14)
    if [[ ${#apt_packages[@]} -gt 0 ]]; then
        [[ $is_debian -eq 1 ]] || die "missing: ${apt_packages[*]}; install them with your package manager"
        step deps-apt "apt-get install ${apt_packages[*]}"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${apt_packages[@]}"
    fi
    have nvcc || die "nvcc is still missing after installing the toolkit"
    echo "    nvcc $(nvcc_version), $(cmake --version | head -n 1), $(clang-14 --version 2>/dev/null | head -n 1 || echo 'no clang-14')"

    step deps-restore "dotnet restore $SLN and dotnet tool restore"
    dotnet restore "$SLN"
    dotnet tool restore
}

# Runs deps when something the build needs is missing (so demo/test work on a fresh machine).
ensure_deps() {
    if [[ "$(dotnet_major)" -lt 10 ]] || ! have nvcc || ! have cmake || ! have make; then
        echo "==> deps: tools missing, running './build.sh deps' first"
        cmd_deps
    fi
}

# ---- native ---------------------------------------------------------------------------------------

# Configures and builds the native library in $NATIVE_BUILD_DIR. Arguments: extra CMake options.
# NATIVE_LOG, when set, receives the compiler output (ptxas reports are long) instead of stdout.
build_native() {
    local nv archs
    nv="$(nvcc_version)"
    [[ -n "$nv" ]] || die "nvcc not found (run ./build.sh deps)"
    local cmake_args=(-S . -B "$NATIVE_BUILD_DIR" -DCMAKE_BUILD_TYPE=Release)
    if version_ge "$nv" 12.3; then
        archs="${FA_CUDA_ARCHS:-80;90a}"
    else
        archs="${FA_CUDA_ARCHS:-80}"
        # nvcc < 12 does not accept the distribution's g++ 12; clang-14 it does.
        if ! version_ge "$nv" 12.0 && have clang++-14; then
            cmake_args+=(-DCMAKE_CUDA_HOST_COMPILER=clang++-14 -DCMAKE_CXX_COMPILER=clang++-14
                -DCMAKE_C_COMPILER=clang-14)
        fi
    fi
    cmake_args+=("-DFA_CUDA_ARCHS=$archs")
    # CI builds treat compiler warnings of our own sources as errors.
    if [[ "${CI:-}" == "true" ]]; then cmake_args+=(-DFA_WARNINGS_AS_ERRORS=ON); fi
    cmake_args+=("$@")

    step native-configure "cmake (nvcc $nv, archs $archs) -> $NATIVE_BUILD_DIR"
    if [[ -n "${NATIVE_LOG:-}" ]]; then
        cmake "${cmake_args[@]}" >"$NATIVE_LOG" 2>&1 || { tail -n 40 "$NATIVE_LOG"; return 1; }
    else
        cmake "${cmake_args[@]}"
    fi

    step native-build "cmake --build $NATIVE_BUILD_DIR -j$JOBS"
    if [[ -n "${NATIVE_LOG:-}" ]]; then
        cmake --build "$NATIVE_BUILD_DIR" -j"$JOBS" >>"$NATIVE_LOG" 2>&1 || { grep -E -B2 -A6 'error' "$NATIVE_LOG" | tail -n 60; return 1; }
    else
        cmake --build "$NATIVE_BUILD_DIR" -j"$JOBS"
    fi

    step native-copy "copy $LIB_NAME to $NATIVE_ARTIFACTS/"
    local lib
    lib="$(find_native_lib)"
    [[ -n "$lib" ]] || die "$LIB_NAME not found under $NATIVE_BUILD_DIR"
    mkdir -p "$NATIVE_ARTIFACTS"
    cp -fL "$lib" "$NATIVE_ARTIFACTS/$LIB_NAME"
    echo "    $lib -> $NATIVE_ARTIFACTS/$LIB_NAME"
}

find_native_lib() {
    find "$NATIVE_BUILD_DIR" -name "$LIB_NAME" \( -type f -o -type l \) -not -path '*/CMakeFiles/*' 2>/dev/null | head -n 1
}

cmd_build() {
    local cmake_extra=() dotnet_extra=()
    local a
    for a in "$@"; do
        case "$a" in
            -D*) cmake_extra+=("$a") ;;
            *) dotnet_extra+=("$a") ;;
        esac
    done
    ensure_deps
    build_native ${cmake_extra[@]+"${cmake_extra[@]}"}
    step dotnet-build "dotnet build $SLN -c Release"
    dotnet build "$SLN" -c Release -nologo ${dotnet_extra[@]+"${dotnet_extra[@]}"}
}

# ---- test -----------------------------------------------------------------------------------------

# Sets T_PASSED/T_FAILED/T_SKIPPED from a ctest JUnit file ($1) and ctest's exit code ($2).
count_ctest() {
    local xml="$1" rc="$2" tests failures skipped
    if [[ -f "$xml" ]]; then
        # The <testsuite ...> start tag (ctest spreads its attributes over several lines).
        local head
        head="$(tr '\n\t' '  ' <"$xml" | sed -n 's/.*<testsuite\([^>]*\)>.*/\1/p' | head -n 1)"
        tests="$(sed -n 's/.* tests="\([0-9]*\)".*/\1/p' <<<"$head")"
        failures="$(sed -n 's/.* failures="\([0-9]*\)".*/\1/p' <<<"$head")"
        skipped="$(sed -n 's/.* skipped="\([0-9]*\)".*/\1/p' <<<"$head")"
    fi
    tests="${tests:-0}"
    failures="${failures:-0}"
    skipped="${skipped:-0}"
    T_PASSED=$((tests - failures - skipped))
    T_FAILED=$failures
    T_SKIPPED=$skipped
    # ctest failed without a failing test (configuration error, no tests): count it as one failure.
    if [[ "$rc" -ne 0 && "$failures" -eq 0 ]]; then T_FAILED=1; fi
    if [[ "$tests" -eq 0 && "$rc" -eq 0 ]]; then
        echo "    warning: ctest found no tests" >&2
    fi
}

# Sets T_PASSED/T_FAILED/T_SKIPPED from Microsoft.Testing.Platform output ($1) and exit code ($2).
count_mtp() {
    local log="$1" rc="$2" succeeded failed skipped
    succeeded="$(sed -n 's/^ *succeeded: *\([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)"
    failed="$(sed -n 's/^ *failed: *\([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)"
    skipped="$(sed -n 's/^ *skipped: *\([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)"
    T_PASSED="${succeeded:-0}"
    T_FAILED="${failed:-0}"
    T_SKIPPED="${skipped:-0}"
    # The runner failed without a failing test (crash, no tests found, bad option): one failure.
    if [[ "$rc" -ne 0 && "$T_FAILED" -eq 0 ]]; then T_FAILED=1; fi
}

SUM_PASSED=0
SUM_FAILED=0
SUM_SKIPPED=0
# gpu-test runs each test program under a time limit (FA_STEP_TIMEOUT seconds): a hung kernel then costs one step,
# counted as failed and named, instead of the whole device call. Empty (no limit) for the CPU test command.
STEP_LIMIT=()
# Says so in $2 (a log) when exit code $1 is timeout's.
note_timeout() {
    if [[ "$1" -eq 124 || "$1" -eq 137 ]]; then
        echo "    TIMED OUT after ${FA_STEP_TIMEOUT:-?} s (FA_STEP_TIMEOUT): a hung kernel or test; the step counts as failed" |
            tee -a "$2" >&2
    fi
}
add_counts() {
    echo "    $1: $T_PASSED passed, $T_FAILED failed, $T_SKIPPED skipped"
    SUM_PASSED=$((SUM_PASSED + T_PASSED))
    SUM_FAILED=$((SUM_FAILED + T_FAILED))
    SUM_SKIPPED=$((SUM_SKIPPED + T_SKIPPED))
}

# Runs ctest in $NATIVE_BUILD_DIR, the log going to $1 as well as stdout.
run_ctest() {
    local log="$1" junit="$2" rc=0
    rm -f "$junit"
    ${STEP_LIMIT[@]+"${STEP_LIMIT[@]}"} ctest --test-dir "$NATIVE_BUILD_DIR" --output-on-failure \
        --output-junit "$(realpath -m "$junit")" 2>&1 | tee "$log" || rc=$?
    note_timeout "$rc" "$log"
    count_ctest "$junit" "$rc"
    add_counts ctest
    print_ctest_skip_reasons "$junit"
}

# Prints each distinct skip reason of a ctest JUnit file once, with its count and the tests: a skipped test's reason is
# the last line it printed, without a "skipped:" or "SAN-SKIP" prefix.
print_ctest_skip_reasons() {
    [[ -f "$1" ]] || return 0
    python3 - "$1" <<'PYEOF' || true
import re, sys, xml.etree.ElementTree as ET
reasons = {}
for tc in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    if tc.get("status") != "notrun" and tc.find("skipped") is None:
        continue
    out = tc.find("system-out")
    lines = [l.strip() for l in ((out.text or "") if out is not None else "").splitlines() if l.strip()]
    reason = re.sub(r"^(SAN-SKIP|skipped:|SKIP:?)\s*", "", lines[-1]) if lines else "(no reason printed)"
    reasons.setdefault(reason, []).append(tc.get("name"))
for reason, names in sorted(reasons.items(), key=lambda r: -len(r[1])):
    print(f"    {len(names)} test{'' if len(names) == 1 else 's'} skipped ({', '.join(names)}): {reason}")
PYEOF
}

# Prints each distinct skip reason of a pytest -rs log ("SKIPPED [N] FILE:LINE: REASON") once, with its count.
print_pytest_skip_reasons() {
    awk '
        match($0, /^SKIPPED \[[0-9]+\] [^ ]+: /) {
            n = substr($0, 10) + 0; r = substr($0, RLENGTH + 1); c[r] += n
        }
        END { for (r in c) printf "    %d test%s skipped: %s\n", c[r], c[r] == 1 ? "" : "s", r }
    ' "$1" | sort -k1,1nr
}

# Runs the NUnit test executable ($@ = command to start it), the log going to $LOG as well.
# The skipped tests of an NUnit log written with --show-test-results failed,skipped, grouped by reason: one line
# "COUNT<TAB>REASON" per reason, the most frequent first. A skipped test's block is "skipped NAME (TIME)", then its
# reason indented by two spaces (NUnit's "OneTimeSetUp: SetUp : " prefix dropped), then its output indented further.
skip_reasons() {
    awk '
        function none() { if (want) n["(no reason given)"]++; want = 0 }
        /^skipped / { none(); want = 1; next }
        want && /^  [^ ]/ && $0 !~ /^  Standard (output|error)$/ {
            r = substr($0, 3); sub(/^OneTimeSetUp: /, "", r); sub(/^SetUp : /, "", r); n[r]++; want = 0; next
        }
        /^[^ ]/ { none() }
        END { none(); for (r in n) printf "%d\t%s\n", n[r], r }
    ' "$1" | sort -t $'\t' -k1,1nr -k2
}

# Prints each distinct skip reason of an NUnit log once, with its count.
print_skip_reasons() {
    local count reason
    while IFS=$'\t' read -r count reason; do
        echo "    $count test$([[ $count -eq 1 ]] || echo s) skipped: $reason"
    done < <(skip_reasons "$1")
}

# Runs the test executable; the log gets every failed and skipped test's result block (the skip reasons), the
# console the same without the skipped blocks, then one line per distinct skip reason.
run_mtp() {
    local log="$1" rc=0
    shift
    ${STEP_LIMIT[@]+"${STEP_LIMIT[@]}"} "$@" --show-test-results failed,skipped --no-ansi --progress off 2>&1 | tee "$log" |
        awk '/^skipped / { s = 1; next } s && /^ / { next } { s = 0; print; fflush() }' || rc=$?
    note_timeout "$rc" "$log"
    count_mtp "$log" "$rc"
    add_counts nunit
    print_skip_reasons "$log"
}

# Runs the Python package's tests (python/tests) with pytest; $1 the log, $2 the marker expression, $3 the library.
# Counts from pytest's -q summary line ("3 passed, 1 failed, 2 skipped, 1 error in 0.4s"; errors count as failed).
# pytest missing is one failure naming the fix.
run_pytest() {
    local log="$1" marker="$2" lib="$3" py rc=0
    py="$(python_with pytest)"
    if [[ -z "$py" ]]; then
        echo "    pytest not found for python3 or /usr/bin/python3 (./build.sh deps installs python3-pytest)" | tee "$log" >&2
        T_PASSED=0 T_FAILED=1 T_SKIPPED=0
        add_counts pytest
        return 0
    fi
    FLASH_ATTENTION_NATIVE_PATH="$lib" PYTHONDONTWRITEBYTECODE=1 ${STEP_LIMIT[@]+"${STEP_LIMIT[@]}"} "$py" -m pytest python/tests -q -rs -m "$marker" \
        -p no:cacheprovider 2>&1 | tee "$log" || rc=$?
    note_timeout "$rc" "$log"
    local summary
    summary="$(grep -E '^=*[ ]*[0-9]+ (passed|failed|skipped|error|errors|deselected)' "$log" | tail -n 1 || true)"
    local passed failed skipped errors
    passed="$(sed -n 's/.*\b\([0-9][0-9]*\) passed.*/\1/p' <<<"$summary")"
    failed="$(sed -n 's/.*\b\([0-9][0-9]*\) failed.*/\1/p' <<<"$summary")"
    skipped="$(sed -n 's/.*\b\([0-9][0-9]*\) skipped.*/\1/p' <<<"$summary")"
    errors="$(sed -n 's/.*\b\([0-9][0-9]*\) errors\{0,1\}\b.*/\1/p' <<<"$summary")"
    T_PASSED="${passed:-0}"
    T_FAILED=$(( ${failed:-0} + ${errors:-0} ))
    T_SKIPPED="${skipped:-0}"
    # pytest failed without a failing test (usage error, collection crash; 5 = nothing collected is not a failure).
    if [[ "$rc" -ne 0 && "$rc" -ne 5 && "$T_FAILED" -eq 0 ]]; then T_FAILED=1; fi
    add_counts pytest
    print_pytest_skip_reasons "$log"
}

print_summary() {
    CURRENT_STEP=""
    echo "$SUM_PASSED passed, $SUM_FAILED failed, $SUM_SKIPPED skipped"
}

cmd_test() {
    local logdir="build/test"
    mkdir -p "$logdir"
    # The build runs as a child so that a failed build still ends with the summary line.
    local build_rc=0
    "$ROOT/build.sh" build "$@" || build_rc=$?
    if [[ $build_rc -ne 0 ]]; then
        CURRENT_STEP=""
        echo "FAILED: test (the build failed, exit code $build_rc; nothing was tested)" >&2
        echo "0 passed, 1 failed, 0 skipped"
        exit 1
    fi

    step ctest "ctest --test-dir $NATIVE_BUILD_DIR"
    run_ctest "$logdir/ctest.log" "$logdir/ctest-junit.xml"

    step bindings-check "dotnet run --project $GENERATOR_PROJECT -- $GENERATOR_RSP --check"
    local rc=0
    dotnet run --project "$GENERATOR_PROJECT" -c Release --no-launch-profile -- "$GENERATOR_RSP" --check || rc=$?
    if [[ $rc -eq 0 ]]; then T_PASSED=1 T_FAILED=0; else T_PASSED=0 T_FAILED=1; fi
    T_SKIPPED=0
    add_counts bindings-check

    step nunit "dotnet $TESTS_DLL"
    [[ -f "$TESTS_DLL" ]] || die "$TESTS_DLL not found (did the build produce it?)"
    # Minimal: failures in full; skips counted, and each distinct skip reason printed once with its count.
    run_mtp "$logdir/nunit.log" dotnet "$TESTS_DLL" --output Minimal --settings "$(dirname "$TESTS_DLL")/FlashAttention.Tests.runsettings"

    step pytest "python3 -m pytest python/tests -m 'not gpu' (the Python package's CPU tests)"
    run_pytest "$logdir/pytest.log" "not gpu" "$ROOT/$NATIVE_ARTIFACTS/$LIB_NAME"

    if [[ $SUM_FAILED -ne 0 ]]; then
        echo "FAILED: test ($SUM_FAILED failed; logs in $logdir/)" >&2
    fi
    print_summary
    [[ $SUM_FAILED -eq 0 ]]
}

# ---- bindings, demo -------------------------------------------------------------------------------

cmd_bindings() {
    local check=()
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --check) check=(--check) ;;
            *) die "bindings: unknown option '$1' (expected --check)" ;;
        esac
        shift
    done
    step bindings "dotnet run --project $GENERATOR_PROJECT -- $GENERATOR_RSP ${check[*]:-}"
    dotnet run --project "$GENERATOR_PROJECT" -c Release --no-launch-profile -- "$GENERATOR_RSP" ${check[@]+"${check[@]}"}
}

cmd_demo() {
    ensure_deps
    # Incremental: cheap when nothing changed. dotnet run builds the demo and what it references.
    build_native
    step demo "dotnet run --project $DEMO_PROJECT -c Release"
    dotnet run --project "$DEMO_PROJECT" -c Release --no-launch-profile -- "$@"
}

# ---- bundle, gpu-test ------------------------------------------------------------------------------

cmd_bundle() {
    ensure_deps
    build_native
    rm -rf "$BUNDLE_DIR" "$BUNDLE_TAR"
    mkdir -p "$BUNDLE_DIR"
    local p projects=("$TESTS_PROJECT" "$DEMO_PROJECT" "$TRAINING_PROJECT" "$BENCH_PROJECT")
    if [[ -d "$GENERATE_DIR" ]]; then projects+=("$(generate_project)"); fi
    for p in "${projects[@]}"; do
        step bundle-publish "dotnet publish $p (self-contained linux-x64) -> $BUNDLE_DIR"
        dotnet publish "$p" -c Release -r linux-x64 --self-contained true -p:InvariantGlobalization=true \
            -p:UseAppHost=true -p:SatelliteResourceLanguages=en -o "$BUNDLE_DIR" -nologo "$@"
    done
    step bundle-info "write $BUNDLE_DIR/BUILD_INFO"
    {
        echo "commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)"
        echo "describe=$(git describe --always --dirty 2>/dev/null || echo unknown)"
        echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    } >"$BUNDLE_DIR/BUILD_INFO"
    step bundle-pack "tar -cJf $BUNDLE_TAR"
    tar -C "$(dirname "$BUNDLE_DIR")" -cJf "$BUNDLE_TAR" "$(basename "$BUNDLE_DIR")"
    echo "    $(du -sh "$BUNDLE_DIR" | cut -f1) unpacked, $(du -h "$BUNDLE_TAR" | cut -f1) packed ($BUNDLE_TAR)"
    echo "    carry it to the GPU machine (device tool: carry [\"$BUNDLE_TAR\"]) and run ./build.sh gpu-test there"
}

# The decode sample's project file (the first .csproj in $GENERATE_DIR; the expected name if there is none).
generate_project() {
    local f
    f="$(find "$GENERATE_DIR" -maxdepth 1 -name '*.csproj' 2>/dev/null | sort | head -n 1)"
    echo "${f:-$GENERATE_DIR/FlashAttention.Generate.csproj}"
}

# run_bundled_sample STEP EXE WHAT: runs $BUNDLE_DIR/EXE (log in $logdir/STEP.log, its tail shown); a
# non-zero exit code, or a missing executable, counts as one failure. Uses cmd_gpu_test's locals.
run_bundled_sample() {
    local name="$1" exe="$BUNDLE_DIR/$2" what="$3" rc=0
    step "$name" "bundled $2: $what"
    if [[ -x "$exe" ]]; then
        ${STEP_LIMIT[@]+"${STEP_LIMIT[@]}"} "$exe" >"$logdir/$name.log" 2>&1 || rc=$?
        note_timeout "$rc" "$logdir/$name.log"
        tail -n 12 "$logdir/$name.log"
    else
        echo "    $exe not found: the bundle predates it (run ./build.sh bundle again)" | tee "$logdir/$name.log"
        rc=127
    fi
    status_lines+=("$name: exit code $rc")
    [[ $rc -eq 0 ]] || SUM_FAILED=$((SUM_FAILED + 1))
}

# Runs tools/run_sanitizers.py over $NATIVE_BUILD_DIR/sanitize_driver: every sanitizer tool over small calls of
# every kernel, each run under a time limit. Its counts go into SUM_*, its status lines into status_lines, the
# per-run logs into $logdir/sanitize-logs.tgz. Uses cmd_gpu_test's locals.
run_sanitize_step() {
    local rc=0 san_dir="build/sanitize" summary="$logdir/sanitize-summary.txt" args=()
    [[ -n "${FA_SAN_TOOLS:-}" ]] && args+=(--tools "$FA_SAN_TOOLS")
    [[ -n "${FA_SAN_SHARDS:-}" ]] && args+=(--shards "$FA_SAN_SHARDS")
    [[ -n "${FA_SAN_JOBS:-}" ]] && args+=(--jobs "$FA_SAN_JOBS")
    [[ -n "${FA_SAN_TIMEOUT:-}" ]] && args+=(--timeout "$FA_SAN_TIMEOUT")
    [[ -n "${FA_SAN_CONFIRM:-}" ]] && args+=(--confirm "$FA_SAN_CONFIRM")
    step sanitize "compute-sanitizer memcheck, racecheck, synccheck, initcheck over $NATIVE_BUILD_DIR/sanitize_driver"
    rm -rf "$san_dir" "$summary"
    PYTHONUNBUFFERED=1 python3 tools/run_sanitizers.py --driver "$NATIVE_BUILD_DIR/sanitize_driver" --logdir "$san_dir" \
        --handover "$NATIVE_BUILD_DIR/racecheck_handover" \
        --summary "$summary" --json "$logdir/sanitize.json" ${args[@]+"${args[@]}"} >"$logdir/sanitize.log" 2>&1 || rc=$?
    sed -n '/^==> sanitize summary/,$p' "$logdir/sanitize.log" | tail -n 40
    [[ -d "$san_dir" ]] && tar -czf "$logdir/sanitize-logs.tgz" -C "$san_dir" . 2>/dev/null || true
    local counts passed failed skipped line
    counts="$(head -n 1 "$summary" 2>/dev/null || true)"
    if [[ "$counts" =~ ^passed=([0-9]+)\ failed=([0-9]+)\ skipped=([0-9]+)$ ]]; then
        passed="${BASH_REMATCH[1]}" failed="${BASH_REMATCH[2]}" skipped="${BASH_REMATCH[3]}"
        while IFS= read -r line; do status_lines+=("$line"); done < <(tail -n +2 "$summary")
    else
        tail -n 20 "$logdir/sanitize.log"
        passed=0 failed=1 skipped=0
        status_lines+=("sanitize: tools/run_sanitizers.py wrote no summary (exit code $rc; see $logdir/sanitize.log)")
    fi
    SUM_PASSED=$((SUM_PASSED + passed))
    SUM_FAILED=$((SUM_FAILED + failed))
    SUM_SKIPPED=$((SUM_SKIPPED + skipped))
}

cmd_gpu_test() {
    local logdir="${OUT:-build/gpu-test}"
    mkdir -p "$logdir"
    logdir="$(realpath "$logdir")"
    local status_lines=()

    # FA_GPU_TEST_ONLY: "tests" (ctest, NUnit, demo, samples), "sanitize" (compute-sanitizer over every kernel
    # family), "bench" (the benchmark only), or a comma list of them; empty: all three. A device call is limited
    # to 10 minutes, and each part fits one (with the native build).
    local part want_tests=0 want_sanitize=0 want_bench=0
    command -v timeout >/dev/null && STEP_LIMIT=(timeout -k 15 "${FA_STEP_TIMEOUT:=240}")
    for part in $(tr ',' ' ' <<<"${FA_GPU_TEST_ONLY:-tests,sanitize,bench}"); do
        case "$part" in
            tests) want_tests=1 ;;
            sanitize) want_sanitize=1 ;;
            bench) want_bench=1 ;;
            *) die "FA_GPU_TEST_ONLY: unknown part '$part' (expected tests, sanitize, bench, or a comma list of them)" ;;
        esac
    done

    # The bundle (the published .NET programs) is needed by the tests and the benchmark, not by the sanitizers.
    if [[ $want_tests -eq 1 || $want_bench -eq 1 ]]; then
    step gpu-unpack "unpack $BUNDLE_TAR"
    if [[ ! -x "$BUNDLE_DIR/FlashAttention.Tests" ]] || [[ -f "$BUNDLE_TAR" && "$BUNDLE_TAR" -nt "$BUNDLE_DIR/BUILD_INFO" ]]; then
        [[ -f "$BUNDLE_TAR" ]] || die "$BUNDLE_TAR not found: run ./build.sh bundle on the development machine and carry it"
        rm -rf "$BUNDLE_DIR"
        tar -C "$(dirname "$BUNDLE_DIR")" -xJf "$BUNDLE_TAR"
    fi
    fi
    cat "$BUNDLE_DIR/BUILD_INFO" 2>/dev/null | sed 's/^/    /' || true
    local commit
    commit="$(sed -n 's/^describe=//p' "$BUNDLE_DIR/BUILD_INFO" 2>/dev/null || true)"
    [[ -n "$commit" ]] || commit="$(git describe --always --dirty 2>/dev/null || echo unknown)"

    step gpu-info "nvidia-smi, nvcc"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    echo "    nvcc $(nvcc_version)"

    # Native build for sm_80 + sm_90a; the (long) compiler output goes to a log file.
    NATIVE_LOG="$logdir/native-build.log" build_native -DFA_PTXAS_VERBOSE=ON
    echo "    ptxas report (registers, smem, spills per kernel) in $logdir/native-build.log"
    local lib
    lib="$(realpath "$NATIVE_ARTIFACTS/$LIB_NAME")"
    export FLASH_ATTENTION_NATIVE_PATH="$lib"

    local rc
    if [[ $want_tests -eq 1 ]]; then
    step ctest "ctest --test-dir $NATIVE_BUILD_DIR (GPU)"
    run_ctest "$logdir/ctest.log" "$NATIVE_BUILD_DIR/ctest-junit.xml" >/dev/null
    tail -n 5 "$logdir/ctest.log"
    status_lines+=("ctest: $T_PASSED passed, $T_FAILED failed, $T_SKIPPED skipped")

    step nunit "bundled tests (all categories, GPU included) with FLASH_ATTENTION_NATIVE_PATH=$lib"
    run_mtp "$logdir/tests.log" "$BUNDLE_DIR/FlashAttention.Tests" --output Minimal --settings "$BUNDLE_DIR/FlashAttention.Tests.runsettings" >/dev/null
    grep -E '^(failed|skipped) ' "$logdir/tests.log" | head -n 40 || true
    print_skip_reasons "$logdir/tests.log"
    status_lines+=("nunit: $T_PASSED passed, $T_FAILED failed, $T_SKIPPED skipped")
    # Only "no device" lets the Gpu tests skip (GpuTestBase: "no CUDA device: ..."); the by-design skips (a head
    # dim or path this build does not serve, no SDK in the bundle, ...) give other reasons. Where the driver lists
    # a GPU, a no-device skip means the tests did not see it: a failure.
    local no_device
    no_device="$(skip_reasons "$logdir/tests.log" | awk -F '\t' 'index($2, "no CUDA device") { n += $1 } END { print n + 0 }')"
    if [[ "$no_device" -gt 0 ]] && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
        echo "    FAILED: $no_device Gpu tests skipped for 'no CUDA device' but nvidia-smi -L lists a GPU (see $logdir/tests.log)" >&2
        SUM_FAILED=$((SUM_FAILED + 1))
        status_lines+=("nunit: $no_device Gpu tests skipped for no device on a machine with a GPU: 1 failure")
    fi

    step demo "bundled demo"
    rc=0
    ${STEP_LIMIT[@]+"${STEP_LIMIT[@]}"} "$BUNDLE_DIR/FlashAttention.Demo" >"$logdir/demo.log" 2>&1 || rc=$?
    note_timeout "$rc" "$logdir/demo.log"
    tail -n 15 "$logdir/demo.log"
    status_lines+=("demo: exit code $rc")
    [[ $rc -eq 0 ]] || SUM_FAILED=$((SUM_FAILED + 1))

    step pytest-gpu "python3 -m pytest python/tests -m gpu (the Python package on the GPU) with $lib"
    run_pytest "$logdir/pytest-gpu.log" gpu "$lib" >/dev/null
    grep -E '^(FAILED|ERROR|SKIPPED)' "$logdir/pytest-gpu.log" | head -n 20 || true
    tail -n 1 "$logdir/pytest-gpu.log"
    status_lines+=("pytest-gpu: $T_PASSED passed, $T_FAILED failed, $T_SKIPPED skipped")

    run_bundled_sample training FlashAttention.Training "trains one attention layer (Forward + Backward); the loss must fall"
    if [[ -d "$GENERATE_DIR" ]]; then
        run_bundled_sample generate "$(basename "$(generate_project)" .csproj)" "decodes over a KV cache"
    fi
    fi

    if [[ $want_sanitize -eq 1 ]]; then
        run_sanitize_step
    fi

    if [[ $want_bench -eq 1 ]]; then
    step bench "python3 bench/run.py (ours via C ABI and via the bench exe, beside PyTorch SDPA; fwd, bwd, decode)"
    rc=0
    # FA_BENCH_ARGS: extra arguments of bench/run.py (e.g. "--baseline-lib build/base/libflash_attention.so").
    local bench_extra=()
    read -r -a bench_extra <<<"${FA_BENCH_ARGS:-}"
    PYTHONUNBUFFERED=1 python3 bench/run.py --lib "$lib" --bench-exe "$BUNDLE_DIR/FlashAttention.Bench" \
        --out "$logdir/bench.json" --table "$logdir/bench-table.txt" --png "$logdir/bench.png" \
        --commit "$commit" ${bench_extra[@]+"${bench_extra[@]}"} >"$logdir/bench.log" 2>&1 || rc=$?
    [[ $rc -eq 0 ]] || { tail -n 30 "$logdir/bench.log"; SUM_FAILED=$((SUM_FAILED + 1)); }
    status_lines+=("bench: exit code $rc (json: $logdir/bench.json)")
    fi

    CURRENT_STEP=""
    echo "==> gpu-test summary (logs in $logdir)"
    printf '    %s\n' "${status_lines[@]}"
    echo "$SUM_PASSED passed, $SUM_FAILED failed, $SUM_SKIPPED skipped"
    if [[ -f "$logdir/bench-table.txt" ]]; then
        cat "$logdir/bench-table.txt"
    fi
    [[ $SUM_FAILED -eq 0 ]]
}

# ---- pack -----------------------------------------------------------------------------------------

cmd_pack() {
    ensure_deps
    build_native
    local out="artifacts/packages" p version
    # The package version is the C ABI's version (FA_VERSION_* in the header).
    version="$(awk '/#define FA_VERSION_(MAJOR|MINOR|PATCH) / { v = v (v == "" ? "" : ".") $3 } END { print v }' native/include/flash_attention.h)"
    # dotnet pack skips a package that is newer than its inputs, whatever the properties given (Version,
    # FA_REPOSITORY_URL): remove this version's packages so that both are written again.
    rm -f "$out/FlashAttention.Native.$version.nupkg" "$out/FlashAttention.$version.nupkg"
    # The bindings package carries the native library (runtimes/linux-x64/native/), the API package
    # depends on it.
    for p in bindings/FlashAttention.Native/FlashAttention.Native.csproj managed/FlashAttention/FlashAttention.csproj; do
        step pack "dotnet pack $p (version $version) -> $out"
        dotnet pack "$p" -c Release -o "$out" -nologo "-p:Version=$version" "$@"
    done
    step pack-native "add $LIB_NAME to the FlashAttention.Native package"
    local nupkg
    nupkg="$out/FlashAttention.Native.$version.nupkg"
    [[ -f "$nupkg" ]] || nupkg=""
    [[ -n "$nupkg" ]] || die "no FlashAttention.Native package in $out"
    python3 tools/add_native_to_nupkg.py "$nupkg" "$NATIVE_ARTIFACTS/$LIB_NAME" --rid linux-x64
    step pack-check "each package's description, license, readme, tags and repository URL"
    python3 - "$out/FlashAttention.Native.$version.nupkg" "$out/FlashAttention.$version.nupkg" <<'PYEOF'
import re, sys, zipfile
bad = False
for path in sys.argv[1:]:
    z = zipfile.ZipFile(path)
    spec = z.read(next(n for n in z.namelist() if n.endswith(".nuspec"))).decode("utf-8-sig")
    get = lambda tag: (re.search(rf"<{tag}[^>]*>([^<]*)</{tag}>", spec) or [None, ""])[1].strip()
    repo = re.search(r'<repository [^>]*url="([^"]+)"', spec)
    missing = [t for t in ("description", "license", "readme", "tags") if not get(t)]
    if get("readme") and get("readme") not in z.namelist():
        missing.append(f"the readme file {get('readme')}")
    print(f"    {path}: license {get('license') or '-'}, readme {get('readme') or '-'}, repository "
          + (repo[1] if repo else "none (no git remote 'origin'; set FA_REPOSITORY_URL=https://...)"))
    if missing:
        print(f"    {path} lacks: {', '.join(missing)}", file=sys.stderr)
        bad = True
sys.exit(1 if bad else 0)
PYEOF
    ls -la "$out"
}

# ---- wheel ----------------------------------------------------------------------------------------

cmd_wheel() {
    local out="artifacts/python" pkg="python/src/flash_attn_interop" py
    if [[ ! -f "$NATIVE_ARTIFACTS/$LIB_NAME" ]]; then
        ensure_deps
        build_native
    fi
    step wheel-tools "find a python3 with setuptools, wheel and pip"
    py="$(python_with setuptools wheel pip)"
    [[ -n "$py" ]] || die "no python3 with setuptools, wheel and pip (./build.sh deps installs python3-setuptools python3-wheel python3-pip)"
    echo "    $py ($("$py" --version 2>&1))"
    step wheel "pip wheel python/ with $LIB_NAME inside -> $out"
    cp -fL "$NATIVE_ARTIFACTS/$LIB_NAME" "$pkg/$LIB_NAME"
    mkdir -p "$out"
    local rc=0
    rm -rf python/build "$pkg.egg-info" python/src/*.egg-info
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$py" -m pip wheel --no-deps --no-build-isolation --no-cache-dir -w "$out" ./python || rc=$?
    rm -f "$pkg/$LIB_NAME"
    rm -rf python/build python/src/*.egg-info
    [[ $rc -eq 0 ]] || die "pip wheel failed (exit code $rc)"
    step wheel-check "the wheel holds the package and $LIB_NAME"
    local whl
    whl="$(ls -t "$out"/flash_attn_interop-*.whl | head -n 1)"
    "$py" - "$whl" "$LIB_NAME" <<'PYEOF'
import sys, zipfile
whl, lib = sys.argv[1], sys.argv[2]
names = zipfile.ZipFile(whl).namelist()
need = ["flash_attn_interop/__init__.py", "flash_attn_interop/_abi.py", "flash_attn_interop/" + lib]
missing = [n for n in need if n not in names]
if missing:
    sys.exit(f"{whl} lacks {', '.join(missing)}")
print(f"    {whl}: {len(names)} files, {lib} inside")
PYEOF
}

# ---- main -----------------------------------------------------------------------------------------

if [[ $# -lt 1 ]]; then
    usage >&2
    exit 2
fi
command="$1"
shift
case "$command" in
    deps) cmd_deps "$@" ;;
    build) cmd_build "$@" ;;
    test) cmd_test "$@" ;;
    bindings) cmd_bindings "$@" ;;
    demo) cmd_demo "$@" ;;
    bundle) cmd_bundle "$@" ;;
    gpu-test) cmd_gpu_test "$@" ;;
    pack) cmd_pack "$@" ;;
    wheel) cmd_wheel "$@" ;;
    help | -h | --help) usage ;;
    *)
        echo "error: unknown command '$command'" >&2
        usage >&2
        exit 2
        ;;
esac
