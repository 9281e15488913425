#!/usr/bin/env bash
# bench/run_suites.sh — run the Google Benchmark suites for real and print
# the machine, the commands, the medians and the ratios against each peer
# measured in the same run.
#
#   bench/run_suites.sh [BUILD_DIR]      (default: build; REPS=5)
set -euo pipefail
build=${1:-build}
reps=${REPS:-5}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
for suite in ingest_bench queue_bench; do
  cmd="$build/bench/$suite --benchmark_repetitions=$reps --benchmark_report_aggregates_only=true"
  [[ $suite == ingest_bench ]] && cmd+=" --benchmark_min_time=1 --benchmark_filter=Tally|Mutex"
  echo "run: $cmd"
  $cmd --benchmark_format=json --benchmark_out="$out/$suite.json" --benchmark_out_format=json >/dev/null
done

python3 - "$out" <<'PY'
import json, sys, os
out = sys.argv[1]
def medians(name):
    data = json.load(open(os.path.join(out, name + ".json")))
    return {b["run_name"]: b["items_per_second"] for b in data["benchmarks"] if b.get("aggregate_name") == "median"}
ingest, queue = medians("ingest_bench"), medians("queue_bench")
print("\nrecord() into aggregation, events/s (median):")
for t in (1, 2, 4):
    a = ingest[f"BM_TallyRecord/real_time/threads:{t}"]
    b = ingest[f"BM_MutexBaseline/real_time/threads:{t}"]
    print(f"  {t} thread(s): tally {a/1e6:6.2f} M/s   mutex+unordered_map {b/1e6:6.2f} M/s   ratio {a/b:5.2f}")
print("\nqueue alone, producer -> bulk consumer, items/s (median):")
for p in (1, 2, 4):
    a = queue[f"BM_MoodycamelBulk/{p}/manual_time"]
    b = queue[f"BM_MutexDeque/{p}/manual_time"]
    print(f"  {p} producer(s): moodycamel {a/1e6:6.2f} M/s   mutex deque {b/1e6:6.2f} M/s   ratio {a/b:5.2f}")
PY
