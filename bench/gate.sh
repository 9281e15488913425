#!/usr/bin/env bash
# bench/gate.sh — the CI performance gate: each contention path against its
# peer, measured in the same run, as a ratio with a floor set well under the
# quiet medians (bench/gate.py holds the floors). Ratios, never absolute
# times: the box is 2-core, shared and noisy, and a ratio cancels most of it.
# Repetitions of a suite run in random interleaved order, so a burst of load
# hits tally and its peer alike instead of one of them.
#
#   bench/gate.sh [BUILD_DIR]                 (default: build; ~2-3 min)
#   bench/gate.sh build --update-readme       (also rewrites the generated
#                                              section of bench/README.md)
#
# Writes BUILD_DIR/bench-gate/: the Google Benchmark JSON of every suite,
# resp.txt (bench/resp_bench.sh's output), results.json (every figure, ratio
# and floor), gate.md (the table bench/README.md shows) and gate.png (the
# plot). Exit status 1 when a ratio is under its floor; the failing line
# names the figure and its floor. Needs the benchmarks and resp_listener
# built, redis-server, redis-benchmark, postgres and python3-matplotlib.
set -euo pipefail
cd "$(dirname "$0")/.."

build=${1:-build}
shift || true
out="$build/bench-gate"
rm -rf "$out"
mkdir -p "$out"

echo "gate: machine $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
run() {  # name, binary, args...: one suite to JSON
  local name=$1
  shift
  echo "gate: run $*"
  "$@" --benchmark_format=json --benchmark_out="$out/$name.json" --benchmark_out_format=json >/dev/null
}
measure() {
  run ingest "$build/bench/ingest_bench" --benchmark_filter='BM_(TallyRecord|MutexBaseline)/real_time/threads:2$' \
    --benchmark_repetitions=5 --benchmark_enable_random_interleaving=true --benchmark_min_time=0.3 \
    --benchmark_report_aggregates_only=true
  run queue "$build/bench/queue_bench" --benchmark_filter='BM_(MoodycamelBulk|MutexDeque)/2/' \
    --benchmark_repetitions=5 --benchmark_enable_random_interleaving=true --benchmark_report_aggregates_only=true
  run upsert "$build/bench/flush_bench" --benchmark_filter='BM_Upsert/[012]/20000' \
    --benchmark_repetitions=3 --benchmark_enable_random_interleaving=true --benchmark_min_time=0.3 \
    --benchmark_report_aggregates_only=true
  # One round each: direct writers take ~20 s a round (deadlocks cost 1 s each).
  run contention "$build/bench/flush_bench" --benchmark_filter='BM_(DirectWriters|ThroughTally)' \
    --benchmark_min_time=0.001
  # Rounds of a second or so: in a 0.2 s round one buffer cycle or one
  # burst of load on the shared box swings the ratio by a third.
  echo "gate: run ROUNDS=7 REQUESTS=1000000 bench/resp_bench.sh $build"
  ROUNDS=7 REQUESTS=1000000 bench/resp_bench.sh "$build" > "$out/resp.txt"
  cat "$out/resp.txt"
}

# Debian's interpreter: python3-matplotlib is a Debian package, and a python3
# earlier on PATH (pyenv, a venv) would not see it.
python=/usr/bin/python3
[[ -x $python ]] || python=python3

# A shared 2-core box has bursts that no ratio cancels completely (another
# job taking a core halves a two-thread benchmark and not its peer): a run
# that misses a floor is measured once more, and the second run decides.
# Both runs print their figures.
measure
if ! "$python" bench/gate.py "$out" "$@"; then
  echo "gate: a ratio missed its floor; measuring everything once more"
  measure
  "$python" bench/gate.py "$out" "$@"
fi
