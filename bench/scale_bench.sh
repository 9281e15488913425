#!/usr/bin/env bash
# bench/scale_bench.sh — stage 2 against the number of tallyd instances: 1, 8
# and 32 real tallyd processes on one redis-server and one Postgres (started
# by tests/harness in temp dirs), exact totals checked at every size, and per
# size the flushes, batches and rows per flush, flush time and Redis
# commands per second (bench/scale_bench.cpp). Prints the machine and the
# command; bench/README.md holds the figures and the cost model.
#
#   bench/scale_bench.sh [BUILD_DIR]                       (default: build)
#   INSTANCES=1,8,32 EVENTS=40000 RATE=2000 BLOCK=20 MODE=both bench/scale_bench.sh build
#   TALLYD_FLAGS="--flush-interval 100ms" bench/scale_bench.sh build     (default: tallyd's defaults)
#
# Exit status 1 when a size's totals differ from the reference.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
bin="$build/bench/scale_bench"
[[ -x $bin && -x $build/runtime/tallyd ]] || { echo "scale_bench: build scale_bench and tallyd in $build" >&2; exit 1; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "date:    $(date -u +%Y-%m-%dT%H:%MZ)"
# shellcheck disable=SC2206  # TALLYD_FLAGS is a list of flags
cmd=("$bin" --instances "${INSTANCES:-1,8,32}" --events "${EVENTS:-40000}" --rate "${RATE:-2000}" --block "${BLOCK:-20}"
     --mode "${MODE:-both}" -- ${TALLYD_FLAGS:-})
echo "run:     ${cmd[*]}"
"${cmd[@]}"
