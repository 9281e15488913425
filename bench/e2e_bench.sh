#!/usr/bin/env bash
# bench/e2e_bench.sh — end-to-end staleness: from TALLY.RECORD on the RESP
# port until the event's row is in Postgres, p50/p99, at tallyd's default
# settings, idle and under ingest load.
#
#   bench/e2e_bench.sh [BUILD_DIR]                     (default: build)
#   DURATION=30 LOADS="0 1000 20000" GAP_MS=100 bench/e2e_bench.sh build
#
# Starts its own redis-server and Postgres (scripts/servers, in a temp state
# dir) and one tallyd with nothing but its addresses, ports and state dir
# given (buffer_interval 1 s, flush_interval 1 s, 2 shards, ...): it writes
# stage 1 and, holding the lease, flushes. For each entry of LOADS, a phase
# of DURATION seconds: 0 is no load; N is redis-benchmark sending
# TALLY.RECORD at full speed (-c 2 -P 8) with N distinct API keys. During
# each phase bench/e2e_probe.py records an event with a fresh key every
# GAP_MS on average and polls Postgres for its row. Prints the machine, the
# commands, and per phase the staleness percentiles, the load's rate and
# what stage 2 did meanwhile (from /metrics).
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=${1:-build}
duration=${DURATION:-30}
loads=${LOADS:-0 1000 20000}
gap_ms=${GAP_MS:-100}
tallyd="$build_dir/runtime/tallyd"
[[ -x $tallyd ]] || { echo "e2e_bench: $tallyd not built" >&2; exit 1; }

work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/servers purge "$work/servers" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

scripts/servers start "$work/servers" >/dev/null
eval "$(scripts/servers env "$work/servers")"

tallyd_cmd=("$tallyd" --ns e2ebench --redis-urls "$REDIS_URL" --postgres-url "$POSTGRES_URL"
            --resp-port 0 --http-port 0 --state-dir "$work/state")
"${tallyd_cmd[@]}" >"$work/tallyd.log" 2>&1 &
pids+=("$!")
for _ in $(seq 300); do
  grep -q 'tallyd ready' "$work/tallyd.log" && break
  sleep 0.1
done
read -r port http < <(sed -nE 's/.*tallyd ready: resp [0-9.]+:([0-9]+) http [0-9.]+:([0-9]+).*/\1 \2/p' "$work/tallyd.log")
[[ -n ${port:-} ]] || { echo "e2e_bench: tallyd did not start:" >&2; cat "$work/tallyd.log" >&2; exit 1; }
# The tables exist once the lease holder has migrated: wait for the lease.
for _ in $(seq 300); do
  curl -s "127.0.0.1:$http/metrics" | grep -q '^tally_lease_held 1' && break
  sleep 0.1
done

metric() { sed -n "s/^$1 //p" "$2"; }
scrape() { curl -s "127.0.0.1:$http/metrics" >"$1"; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "date:    $(date -u +%Y-%m-%dT%H:%MZ)"
echo "redis:   $(redis-server --version | cut -d' ' -f3 | cut -d= -f2), postgres: $(psql -X -A -t "$POSTGRES_URL" -c 'SHOW server_version' | cut -d' ' -f1)"
echo "tallyd:  ${tallyd_cmd[*]/$work/\$TMP}"
echo "probe:   /usr/bin/python3 bench/e2e_probe.py PORT POSTGRES_URL public $duration $gap_ms"

for keys in $loads; do
  load_pid=
  if ((keys > 0)); then
    load_cmd=(redis-benchmark -p "$port" -c 2 -P 8 -n 1000000000 -r "$keys" -q
              TALLY.RECORD key sk-__rand_int__ model gpt-4o spend 0.00042 prompt_tokens 120)
    echo
    echo "load:    ${load_cmd[*]}"
    "${load_cmd[@]}" >/dev/null 2>&1 &
    load_pid=$!
    pids+=("$load_pid")
    sleep 3  # past the first intervals of the load: stage 2 at its steady pace
  else
    echo
    echo "load:    none"
  fi
  scrape "$work/m0"
  t0=$(date +%s.%N)
  # A probe that gives up (a row not in Postgres within 60 s: stage 2 behind
  # the load) is a result of this phase, not the end of the run.
  result=$(/usr/bin/python3 bench/e2e_probe.py "$port" "$POSTGRES_URL" public "$duration" "$gap_ms" 2>&1) || true
  t1=$(date +%s.%N)
  scrape "$work/m1"
  if [[ -n $load_pid ]]; then kill "$load_pid" 2>/dev/null || true; fi
  d() { echo "$(metric "$1" "$work/m1") - $(metric "$1" "$work/m0")" | bc -l; }
  secs=$(echo "$t1 - $t0" | bc -l)
  events=$(d tally_events_accepted_total)
  flushes=$(d tally_flush_duration_seconds_count)
  rows=$(d tally_rows_upserted_total)
  flush_s=$(d tally_flush_duration_seconds_sum)
  echo "$result"
  printf '  events %.0f/s; stage 2: %d flushes, %.0f rows each, %.0f ms each on average; stage-1 backlog at the end %s batches\n' \
    "$(echo "$events / $secs" | bc -l)" "$flushes" "$(echo "$rows / ($flushes + ($flushes == 0))" | bc -l)" \
    "$(echo "1000 * $flush_s / ($flushes + ($flushes == 0))" | bc -l)" "$(metric tally_redis_backlog_batches "$work/m1")"
  if [[ -n $load_pid ]]; then
    wait "$load_pid" 2>/dev/null || true
    sleep 3  # let stage 2 catch up before the next phase
  fi
done
