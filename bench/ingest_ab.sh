#!/usr/bin/env bash
# bench/ingest_ab.sh — is the ingest hot path slower than before a change?
# Runs two builds of ingest_bench (OLD and NEW), alternating in one session
# (old new, new old, ...), so that the noise of a shared box hits both, and
# compares each run's tally-vs-mutex ratio (record() against the mutex +
# unordered_map peer measured in the same process, as run_suites.sh does).
# The ratio is what to compare: it cancels most of the box's load; the
# absolute events/s are printed too.
#
#   bench/ingest_ab.sh OLD_BUILD_DIR NEW_BUILD_DIR      (RUNS=5 per side, REPS=5)
#   THREADS="1" RUNS=10 bench/ingest_ab.sh ...          (only these producer thread counts)
#
# An OLD build of an earlier commit, without touching the main checkout:
#   git worktree add /tmp/tally-base <commit>
#   cmake -S /tmp/tally-base -B /tmp/tally-base/build -DTALLY_ENABLE_TESTS=ON -DTALLY_ENABLE_BENCH=ON
#   cmake --build /tmp/tally-base/build -j2 --target ingest_bench
set -euo pipefail
old=${1:?usage: ingest_ab.sh OLD_BUILD_DIR NEW_BUILD_DIR}
new=${2:?usage: ingest_ab.sh OLD_BUILD_DIR NEW_BUILD_DIR}
runs=${RUNS:-5}
reps=${REPS:-5}
threads=${THREADS:-1 2 4}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for b in "$old" "$new"; do
  [[ -x $b/bench/ingest_bench ]] || { echo "ingest_ab: $b/bench/ingest_bench not built" >&2; exit 1; }
done

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "date:    $(date -u +%Y-%m-%dT%H:%MZ)"
filter="Tally|Mutex"
[[ $threads != "1 2 4" ]] && filter="(TallyRecord|MutexBaseline)/real_time/threads:(${threads// /|})\$"
args="--benchmark_repetitions=$reps --benchmark_report_aggregates_only=true --benchmark_min_time=1 --benchmark_filter=$filter"
echo "run:     {OLD,NEW}/bench/ingest_bench $args   ($runs runs each, alternating)"
echo "OLD:     $old    NEW: $new"
for i in $(seq "$runs"); do
  if (( i % 2 )); then order="old new"; else order="new old"; fi
  for side in $order; do
    dir=$old; [[ $side == new ]] && dir=$new
    # shellcheck disable=SC2086  # args is a list of options
    "$dir/bench/ingest_bench" $args --benchmark_format=json --benchmark_out="$out/$side.$i.json" \
      --benchmark_out_format=json >/dev/null 2>"$out/$side.$i.log"
    echo "  run $i $side done (load $(cut -d' ' -f1 /proc/loadavg))"
  done
done

python3 - "$out" "$runs" "$threads" <<'PY'
import json, os, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
threads = [int(t) for t in sys.argv[3].split()]
def medians(path):
    data = json.load(open(path))
    return {b["run_name"]: b["items_per_second"] for b in data["benchmarks"] if b.get("aggregate_name") == "median"}
rows = {}
for side in ("old", "new"):
    for i in range(1, runs + 1):
        m = medians(os.path.join(out, f"{side}.{i}.json"))
        for t in threads:
            tally = m[f"BM_TallyRecord/real_time/threads:{t}"]
            mutex = m[f"BM_MutexBaseline/real_time/threads:{t}"]
            rows.setdefault((side, t), []).append((tally, mutex, tally / mutex))
print("\nper run: tally M events/s / mutex M/s = ratio")
for t in threads:
    for side in ("old", "new"):
        print(f"  {t} thread(s) {side}: " + "  ".join(f"{a/1e6:.2f}/{b/1e6:.2f}={r:.2f}" for a, b, r in rows[(side, t)]))
print("\nmedians over runs (tally events/s, mutex events/s, ratio tally/mutex):")
for t in threads:
    line = f"  {t} thread(s):"
    for side in ("old", "new"):
        v = rows[(side, t)]
        line += (f"  {side} tally {statistics.median(x[0] for x in v)/1e6:5.2f} M/s"
                 f" mutex {statistics.median(x[1] for x in v)/1e6:5.2f} M/s"
                 f" ratio {statistics.median(x[2] for x in v):4.2f} (range {min(x[2] for x in v):.2f}-{max(x[2] for x in v):.2f})")
    old_r = statistics.median(x[2] for x in rows[("old", t)])
    new_r = statistics.median(x[2] for x in rows[("new", t)])
    print(line + f"   new/old ratio {new_r/old_r:4.2f}")
PY
