#!/usr/bin/env bash
# Run every benchmark, one after the other, then print one markdown summary of all their tables.
#
#   benchmarks/run_all.sh            # the full set; bench_idle.py watches the daemon for 600 s (~20 min in all)
#   benchmarks/run_all.sh --quick    # bench_idle.py for 60 s instead (~8 min in all)
#
# Exits non-zero if any benchmark missed a target (or failed to run). Not part of the pytest suite.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
IDLE_SECONDS=600
[ "${1:-}" = "--quick" ] && IDLE_SECONDS=60

BENCH_RESULTS_DIR=$(mktemp -d "${TMPDIR:-/tmp}/timeguard-bench.XXXXXX")
export BENCH_RESULTS_DIR
trap 'rm -rf -- "$BENCH_RESULTS_DIR"' EXIT

failed=()
run() {
    local name=$1; shift
    echo "=============================== $name $* ==============================="
    if ! "$PY" -m "benchmarks.$name" "$@"; then
        failed+=("$name")
        [ -f "$BENCH_RESULTS_DIR/$name.md" ] || printf '**%s**: did not complete\n' "$name" > "$BENCH_RESULTS_DIR/$name.md"
    fi
}

run bench_check_latency
run bench_http_accuracy
run bench_ntp_accuracy
run bench_nts
run bench_startup
run bench_detection_latency
run bench_idle --seconds "$IDLE_SECONDS"
run bench_events

echo
echo "# Benchmark summary ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, $(uname -r))"
for name in bench_check_latency bench_http_accuracy bench_ntp_accuracy bench_nts bench_startup bench_detection_latency bench_idle bench_events; do
    echo
    cat "$BENCH_RESULTS_DIR/$name.md" 2>/dev/null || echo "**$name**: no result"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo
    echo "Missed a target or failed: ${failed[*]}"
    exit 1
fi
echo
echo "All targets met."
