#!/usr/bin/env bash
# Run the `not slow` tests under every CPU capability torch offers on this machine (default, avx2,
# avx512) at one and two threads, and print one line per setting. A test that passes only by how
# one kernel rounds fails in one of these (CONTRIBUTING.md, section 5). About 70 s per setting on
# two idle cores. Usage, from the repository root with the course's environment active:
#     bash tools/cpu_matrix.sh [extra pytest arguments]
set -uo pipefail
cd "$(dirname "$0")/.."
logs=$(mktemp -d)
status=0
for cap in default avx2 avx512; do
    for threads in 1 2; do
        log="$logs/${cap}_${threads}.log"
        ATEN_CPU_CAPABILITY=$cap OMP_NUM_THREADS=$threads python -m pytest -m "not slow" tests -q "$@" >"$log" 2>&1
        rc=$?
        [ $rc -eq 0 ] || status=1
        printf '%-8s %s thread(s): %s\n' "$cap" "$threads" "$(grep -E '(passed|failed|error)' "$log" | tail -1)"
        grep -E '^(FAILED|ERROR) ' "$log" | sed 's/^/    /'
    done
done
echo "logs: $logs"
exit $status
