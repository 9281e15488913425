#!/usr/bin/env bash
# bench/resp_bench.sh — RESP ingest throughput: redis-benchmark sending
# TALLY.RECORD to tally's RESP server against the same tool sending SET to
# redis-server, on the same machine, in the same run, rounds interleaved
# (SET, TALLY, SET, TALLY, ...) so that the noise of a shared box hits both.
#
#   bench/resp_bench.sh [BUILD_DIR]            (default: build)
#   ROUNDS=5 REQUESTS=2000000 PIPELINE=32 CLIENTS=50 bench/resp_bench.sh build-resp
#   LISTENER_ARGS="--read-chunk 16384 --shards 1" bench/resp_bench.sh   (listener options)
#
# Needs: redis-server, redis-benchmark, and BUILD_DIR/bench/resp_listener
# (cmake --build BUILD_DIR --target resp_listener). Prints the commands, the
# machine, ops/s of every round, the medians and the ratio TALLY / SET.
set -euo pipefail

build_dir=${1:-build}
rounds=${ROUNDS:-5}
requests=${REQUESTS:-2000000}
pipeline=${PIPELINE:-32}
clients=${CLIENTS:-50}
listener="$build_dir/bench/resp_listener"
[[ -x $listener ]] || { echo "resp_bench: $listener not built" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
  >"$work/redis.log" 2>&1 &
redis_pid=$!
pids+=($!)
tally_port=$(free_port)
# shellcheck disable=SC2086  # LISTENER_ARGS is a list of options
"$listener" --redis "redis://127.0.0.1:$redis_port" --port "$tally_port" --ns bench --state-dir "$work/state" ${LISTENER_ARGS:-} \
  >"$work/listener.out" 2>"$work/listener.log" &
tally_pid=$!
pids+=($!)
for _ in $(seq 100); do
  redis-cli -p "$redis_port" PING >/dev/null 2>&1 && redis-cli -p "$tally_port" PING >/dev/null 2>&1 && break
  sleep 0.1
done

common=(-P "$pipeline" -c "$clients" -n "$requests" -r 1000 -q)
set_cmd=(redis-benchmark -p "$redis_port" "${common[@]}" -t set)
tally_cmd=(redis-benchmark -p "$tally_port" "${common[@]}"
           TALLY.RECORD key sk-__rand_int__ model gpt-4o spend 0.00042 prompt_tokens 120 completion_tokens 30)

rps() {  # runs redis-benchmark, prints its final requests per second
  "$@" 2>&1 | tr '\r' '\n' | grep "requests per second" | tail -1 | sed -E 's/.*: ([0-9.]+) requests per second.*/\1/'
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "redis:   $(redis-server --version | cut -d' ' -f3)"
echo "SET:     ${set_cmd[*]}"
echo "TALLY:   ${tally_cmd[*]}   (listener ${LISTENER_ARGS:-defaults})"
# CPU seconds (user + system, all threads) a server spent per million
# requests in a round: steadier than ops/s on a shared box, and it counts
# what a server takes from the client sharing its cores.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
cpu_per_m() { echo "($2 - $1) / $(getconf CLK_TCK) / ($requests / 1000000)" | bc -l; }
sets=()
tallies=()
set_cpus=()
tally_cpus=()
for r in $(seq "$rounds"); do
  c0=$(ticks "$redis_pid")
  s=$(rps "${set_cmd[@]}")
  c1=$(ticks "$redis_pid")
  c2=$(ticks "$tally_pid")
  t=$(rps "${tally_cmd[@]}")
  c3=$(ticks "$tally_pid")
  sets+=("$s")
  tallies+=("$t")
  set_cpus+=("$(cpu_per_m "$c0" "$c1")")
  tally_cpus+=("$(cpu_per_m "$c2" "$c3")")
  printf 'round %d: SET %12.0f ops/s   TALLY.RECORD %12.0f ops/s   ratio %.2f   CPU s per 1M: SET %.2f TALLY %.2f\n' \
    "$r" "$s" "$t" "$(echo "$t / $s" | bc -l)" "${set_cpus[-1]}" "${tally_cpus[-1]}"
done
printf 'median CPU s per 1M requests: redis-server SET %.2f   tally TALLY.RECORD %.2f\n' \
  "$(printf '%s\n' "${set_cpus[@]}" | median)" "$(printf '%s\n' "${tally_cpus[@]}" | median)"
set_med=$(printf '%s\n' "${sets[@]}" | median)
tally_med=$(printf '%s\n' "${tallies[@]}" | median)
printf 'median:  SET %12.0f ops/s   TALLY.RECORD %12.0f ops/s   ratio %.2f\n' "$set_med" "$tally_med" \
  "$(echo "$tally_med / $set_med" | bc -l)"
accepted=$(redis-cli -p "$tally_port" TALLY.STATUS | tr -d '\r' | grep '^events_accepted:' | cut -d: -f2)
echo "tally events_accepted: $accepted (expected $((rounds * requests)))"
