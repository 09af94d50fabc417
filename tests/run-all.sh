#!/bin/bash
# run-all.sh: install the packages, build and run the whole duplex test
# suite.  This is what CI runs (.ci/run) and the README's second command.
#
#   1. build/       -DDUPLEX_WERROR=ON, every ctest test (unit + integration)
#   2. build-asan/  -DDUPLEX_SANITIZE=ON (ASan + UBSan), unit + integration
#   3. build-fuzz/  clang, -DDUPLEX_FUZZ=ON: each libFuzzer target runs for
#                   $DUPLEX_FUZZ_SECONDS seconds
#
# Environment:
#   DUPLEX_SKIP_DEPS=1    do not run deploy/install-deps.sh
#   DUPLEX_ASAN=0|1       sanitizer stage (default 1)
#   DUPLEX_FUZZ=0|1       fuzz stage (default 1; skipped without clang)
#   DUPLEX_FUZZ_SECONDS   per fuzz target (default 30)
#   DUPLEX_JOBS           parallel build and test jobs (default: nproc)
#   DUPLEX_CTEST_ARGS     extra ctest arguments, e.g. "-R nbdcopy"
# Exits non-zero if any stage fails; every stage runs regardless.
set -uo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
cd "$src"
jobs=${DUPLEX_JOBS:-$(nproc)}
asan=${DUPLEX_ASAN:-1}
fuzz=${DUPLEX_FUZZ:-1}
fuzz_secs=${DUPLEX_FUZZ_SECONDS:-30}
read -r -a ctest_extra <<<"${DUPLEX_CTEST_ARGS:-}"
start=$SECONDS

failed_stages=()
skipped_tests=()
total_pass=0
total_fail=0

stage() { printf '\n===== %s =====\n' "$*"; }

# ctest_stage NAME BUILDDIR CTEST-ARGS...: run ctest, add its counts.  A
# test that skipped (exit 77: something it needs is missing here) is
# counted apart and named in the summary; with CI=true it fails the stage,
# since CI must run every test (the suite installs and sets up what they
# need).
ctest_stage() {
    local name=$1 dir=$2 rc out pass fail skipped
    shift 2
    out=$(mktemp)
    (cd "$dir" && ctest --output-on-failure --no-tests=error -j "$jobs" \
        "$@" "${ctest_extra[@]}") 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    # "	 70 - integration/test-tail-ext4 (Skipped)"
    mapfile -t skipped < <(sed -nE 's/^[[:space:]]+[0-9]+ - ([^ ]+) \(Skipped\)$/\1/p' "$out")
    # "100% tests passed, 0 tests failed out of 12" (skipped ones count as
    # passed there)
    if read -r pass fail < <(sed -nE \
        's/^[0-9]+% tests passed, ([0-9]+) tests? failed out of ([0-9]+).*/\2 \1/p' "$out" |
        awk '{print $1 - $2, $2}'); then
        total_pass=$((total_pass + pass - ${#skipped[@]}))
        total_fail=$((total_fail + fail))
    fi
    rm -f "$out"
    if [ ${#skipped[@]} -gt 0 ]; then
        skipped_tests+=("${skipped[@]/#/$name:}")
        [ "${CI:-}" = true ] && rc=1
    fi
    if [ "$rc" -ne 0 ]; then
        failed_stages+=("$name")
        return 1
    fi
}

build() {
    local dir=$1
    shift
    cmake -S "$src" -B "$dir" "$@" && cmake --build "$dir" -j "$jobs"
}

if [ -z "${DUPLEX_SKIP_DEPS:-}" ]; then
    stage "packages"
    "$src/deploy/install-deps.sh" || { echo "run-all: installing packages failed" >&2; exit 1; }
fi

stage "build (warnings are errors) in build/"
if build "$src/build" -DDUPLEX_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo; then
    stage "tests: build/"
    ctest_stage tests "$src/build"
else
    failed_stages+=("build")
fi

if [ "$asan" = 1 ]; then
    stage "sanitizer build (ASan + UBSan) in build-asan/"
    if build "$src/build-asan" -DDUPLEX_SANITIZE=ON -DDUPLEX_WERROR=ON \
        -DCMAKE_BUILD_TYPE=Debug; then
        stage "tests under ASan + UBSan: build-asan/"
        ctest_stage asan-tests "$src/build-asan" -L 'unit|integration'
    else
        failed_stages+=("asan-build")
    fi
fi

fuzz_targets=()
for f in "$src"/tests/fuzz/fuzz-*.c; do
    [ -e "$f" ] && fuzz_targets+=("$(basename "$f" .c)")
done
if [ "$fuzz" = 1 ] && [ ${#fuzz_targets[@]} -gt 0 ]; then
    if ! command -v clang >/dev/null; then
        stage "fuzz: skipped, clang not installed"
    else
        stage "fuzz build (clang, libFuzzer) in build-fuzz/"
        # Coverage instrumentation for the parsers in the agent libraries too.
        if CC=clang cmake -S "$src" -B "$src/build-fuzz" -DDUPLEX_FUZZ=ON \
            -DDUPLEX_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug \
            -DCMAKE_C_FLAGS="-fsanitize=fuzzer-no-link" &&
            cmake --build "$src/build-fuzz" -j "$jobs" --target "${fuzz_targets[@]}"; then
            for t in "${fuzz_targets[@]}"; do
                stage "fuzz: $t for $fuzz_secs s"
                corpus=$src/build-fuzz/corpus/$t
                mkdir -p "$corpus"
                seeds=()
                [ -d "$src/tests/fuzz/corpus/$t" ] && seeds=("$src/tests/fuzz/corpus/$t")
                exe=$(find "$src/build-fuzz" -type f -name "$t" -perm -u+x | head -n 1)
                if [ -z "$exe" ]; then
                    echo "fuzz: $t: binary not found in build-fuzz/"
                    total_fail=$((total_fail + 1))
                    failed_stages+=("fuzz:$t")
                    continue
                fi
                if (cd "$src/build-fuzz" && "$exe" -max_total_time="$fuzz_secs" \
                    -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
                    "$corpus" "${seeds[@]}" 2>&1 | tail -n 25); then
                    echo "fuzz: $t: no crash in $fuzz_secs s"
                    total_pass=$((total_pass + 1))
                else
                    echo "fuzz: $t: FAILED (crash reproducer in build-fuzz/)"
                    total_fail=$((total_fail + 1))
                    failed_stages+=("fuzz:$t")
                fi
            done
        else
            failed_stages+=("fuzz-build")
        fi
    fi
fi

stage "summary"
echo "run-all: $((SECONDS - start)) s"
if [ ${#failed_stages[@]} -gt 0 ]; then
    echo "run-all: FAILED: ${failed_stages[*]}"
fi
if [ ${#skipped_tests[@]} -gt 0 ]; then
    echo "run-all: skipped (a tool or kernel feature missing here; the test says which):"
    printf '  %s\n' "${skipped_tests[@]}"
    [ "${CI:-}" = true ] && echo "run-all: CI runs every test: a skipped one fails its stage"
fi
echo "total: $total_pass passed, $total_fail failed, ${#skipped_tests[@]} skipped"
[ ${#failed_stages[@]} -eq 0 ]
