#!/usr/bin/env bash
# bench/fleet_bench.sh — the Redis fleet's figures, measured for real: what
# spilling a batch to the local journal costs against the LPUSH it stands in
# for (journal_bench, same run), and kill -9 of the active Redis database
# (failover_bench). Prints the machine, every command, the medians and the
# ratios; bench/README.md holds the figures.
#
#   bench/fleet_bench.sh [BUILD_DIR] [journal|failover|all]     (default: build all)
#   REPS=5              journal_bench repetitions
#   INTERLEAVE=1        also --benchmark_enable_random_interleaving=true (the
#                       repetitions of all benchmarks in random order, so
#                       that a slow spell of the disk hits every side)
#   ROUNDS=20 EVENTS=2000 FAILOVER_OPTS="--opt flush_interval=100ms"   failover_bench
#
# The runtime's log lines of failover_bench go to $FAILOVER_LOG (default
# failover_bench.log in the current directory): read them for a slow round.
set -euo pipefail
build=${1:-build}
what=${2:-all}
reps=${REPS:-5}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "date:    $(date -u +%Y-%m-%dT%H:%MZ)"

if [[ $what == all || $what == journal ]]; then
  cmd="$build/bench/journal_bench --benchmark_repetitions=$reps --benchmark_report_aggregates_only=true"
  [[ ${INTERLEAVE:-0} == 1 ]] && cmd+=" --benchmark_enable_random_interleaving=true"
  echo "run:     $cmd"
  $cmd --benchmark_format=json --benchmark_out="$out/journal.json" --benchmark_out_format=json >/dev/null
  python3 - "$out/journal.json" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
med = {b["run_name"]: b for b in data["benchmarks"] if b.get("aggregate_name") == "median"}
cv = {b["run_name"]: b for b in data["benchmarks"] if b.get("aggregate_name") == "cv"}
def rate(name): return med[name]["items_per_second"]
def spread(name): return f"cv {100 * cv[name]['items_per_second']:3.0f}%" if name in cv else ""
print("\nspilling one stage-1 batch, batches/s (median; cv over repetitions), ratio to the Redis push of the same size:")
for size, label in ((4096, "4 KiB"), (65536, "64 KiB")):
    n = {k: f"BM_{k}/{size}/real_time" for k in ("JournalAppendSync", "JournalGroupCommit", "RedisLpush", "RedisLpushPipelined")}
    js, gc, lp, pl = (rate(n[k]) for k in ("JournalAppendSync", "JournalGroupCommit", "RedisLpush", "RedisLpushPipelined"))
    print(f"  {label:6} journal append+fdatasync {js:7.0f}/s {spread(n['JournalAppendSync'])} ({js*size/2**20:5.1f} MiB/s)"
          f"   LPUSH {lp:7.0f}/s {spread(n['RedisLpush'])}   ratio {js/lp:5.2f}")
    print(f"  {label:6} journal group commit x16 {gc:7.0f}/s {spread(n['JournalGroupCommit'])} ({gc*size/2**20:5.1f} MiB/s)"
          f"   LPUSH x16 pipelined {pl:7.0f}/s {spread(n['RedisLpushPipelined'])}   ratio {gc/pl:5.2f}   (to single LPUSH {gc/lp:5.2f})")
PY
fi

if [[ $what == all || $what == failover ]]; then
  log=${FAILOVER_LOG:-failover_bench.log}
  # shellcheck disable=SC2086  # FAILOVER_OPTS is a list of options
  cmd="$build/bench/failover_bench --rounds ${ROUNDS:-20} --events ${EVENTS:-2000} ${FAILOVER_OPTS:-}"
  echo
  echo "run:     $cmd 2>$log"
  $cmd 2>"$log"
fi
