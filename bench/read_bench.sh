#!/usr/bin/env bash
# bench/read_bench.sh — the read path: TALLY.GET hits against redis-server GET
# in the same run (rounds interleaved), miss latency, and staleness across
# instances under ingest load.
#
#   bench/read_bench.sh [BUILD_DIR]                 (default: build)
#   ROUNDS=5 REQUESTS=1000000 bench/read_bench.sh build-bench
#   PIPELINES= SKIP_MISSES=1 SAMPLES=30 bench/read_bench.sh      (staleness only)
#
# Starts its own redis-server and Postgres (scripts/servers, in a temp
# state dir), a peer redis-server for the GET comparison, and two tallyd
# instances at default intervals: a writer and a reader. Prints the commands,
# every round, the medians and the ratios.
#  * hits: redis-benchmark TALLY.GET of one cached row vs GET of one key and
#    vs HGETALL of a hash with the same twelve fields (the same reply size),
#    pipelined (-P 32 -c 50) and not (-P 1 -c 50);
#  * misses: TALLY.GET of random ids (-r 100000000: nearly every read misses
#    the 65,536-row cache and reads Postgres), one client, p50/p99 from
#    redis-benchmark's CSV, against GET's on redis-server;
#  * staleness: bench/read_probe.py while redis-benchmark feeds the writer.
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=${1:-build}
rounds=${ROUNDS:-5}
requests=${REQUESTS:-1000000}
tallyd="$build_dir/runtime/tallyd"
[[ -x $tallyd ]] || { echo "read_bench: $tallyd not built" >&2; exit 1; }

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

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

scripts/servers start "$work/servers" >/dev/null
eval "$(scripts/servers env "$work/servers")"
peer_port=$(free_port)
redis-server --port "$peer_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/peer.log" 2>&1 &
pids+=($!)

start_tallyd() {  # name: starts it, waits for its ready line, sets PORTS to "resp_port http_port"
  local name=$1
  "$tallyd" --ns readbench --redis-urls "$REDIS_URL" --postgres-url "$POSTGRES_URL" --instance-id "$name" \
    --resp-port 0 --http-port 0 --state-dir "$work/state-$name" >"$work/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 300); do
    if grep -q 'tallyd ready' "$work/$name.log"; then
      PORTS=$(sed -nE 's/.*tallyd ready: resp [0-9.]+:([0-9]+) http [0-9.]+:([0-9]+).*/\1 \2/p' "$work/$name.log")
      return
    fi
    sleep 0.1
  done
  echo "read_bench: tallyd $name did not start:" >&2
  cat "$work/$name.log" >&2
  exit 1
}
start_tallyd writer
read -r writer_port _ <<<"$PORTS"
start_tallyd reader
read -r reader_port reader_http <<<"$PORTS"
for _ in $(seq 100); do
  curl -s "127.0.0.1:$reader_http/metrics" | grep -q '^tally_read_cache_subscribed 1' && break
  sleep 0.1
done

redis-cli -p "$writer_port" TALLY.RECORD user hot spend 1 >/dev/null
redis-cli -p "$peer_port" SET hot 1.000000000 >/dev/null
# The same reply shape in Redis: a hash of the twelve fields TALLY.GET answers with.
redis-cli -p "$peer_port" HSET hot:h entity_type user scope "" entity_id hot found 1 spend 1.000000000 \
  prompt_tokens 0 completion_tokens 0 cache_read_tokens 0 cache_creation_tokens 0 requests 1 \
  successful_requests 1 failed_requests 0 >/dev/null
sleep 3  # flushed and announced
redis-cli -p "$reader_port" TALLY.GET user hot >/dev/null  # cached

rps() {  # runs redis-benchmark, prints its final requests per second
  "$@" 2>&1 | tr '\r' '\n' | grep "requests per second" | tail -1 | sed -E 's/.*: ([0-9.]+) requests per second.*/\1/'
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "redis:   $(redis-server --version | cut -d' ' -f3)"

for pipeline in ${PIPELINES-32 1}; do
  n=$requests
  (( pipeline == 1 )) && n=$((requests / 5))
  get_cmd=(redis-benchmark -p "$peer_port" -P "$pipeline" -c 50 -n "$n" -q GET hot)
  hash_cmd=(redis-benchmark -p "$peer_port" -P "$pipeline" -c 50 -n "$n" -q HGETALL hot:h)
  tally_cmd=(redis-benchmark -p "$reader_port" -P "$pipeline" -c 50 -n "$n" -q TALLY.GET user hot)
  echo "GET:       ${get_cmd[*]}"
  echo "HGETALL:   ${hash_cmd[*]}"
  echo "TALLY.GET: ${tally_cmd[*]}"
  gets=()
  hashes=()
  tallies=()
  for r in $(seq "$rounds"); do
    g=$(rps "${get_cmd[@]}")
    h=$(rps "${hash_cmd[@]}")
    t=$(rps "${tally_cmd[@]}")
    gets+=("$g")
    hashes+=("$h")
    tallies+=("$t")
    printf 'round %d: GET %10.0f  HGETALL %10.0f  TALLY.GET %10.0f ops/s   ratio to GET %.2f, to HGETALL %.2f\n' \
      "$r" "$g" "$h" "$t" "$(echo "$t / $g" | bc -l)" "$(echo "$t / $h" | bc -l)"
  done
  g=$(printf '%s\n' "${gets[@]}" | median)
  h=$(printf '%s\n' "${hashes[@]}" | median)
  t=$(printf '%s\n' "${tallies[@]}" | median)
  printf 'hits -P %-2d median: GET %10.0f  HGETALL %10.0f  TALLY.GET %10.0f ops/s   ratio to GET %.2f, to HGETALL %.2f\n' \
    "$pipeline" "$g" "$h" "$t" "$(echo "$t / $g" | bc -l)" "$(echo "$t / $h" | bc -l)"
done

csv_latency() {  # redis-benchmark --csv -> "p50 p99" in ms
  "$@" 2>/dev/null | tail -1 | tr -d '"' | awk -F, '{print $5, $7}'
}
metric() { curl -s "127.0.0.1:$reader_http/metrics" | sed -n "s/^$1 //p"; }
if [[ -z ${SKIP_MISSES:-} ]]; then
miss_cmd=(redis-benchmark -p "$reader_port" -c 1 -n 5000 -r 100000000 --csv TALLY.GET user miss-__rand_int__)
peer_cmd=(redis-benchmark -p "$peer_port" -c 1 -n 5000 -r 100000000 --csv GET miss-__rand_int__)
echo "misses:    ${miss_cmd[*]}"
q0=$(metric tally_read_queries_total)
read -r mp50 mp99 < <(csv_latency "${miss_cmd[@]}")
q1=$(metric tally_read_queries_total)
read -r gp50 gp99 < <(csv_latency "${peer_cmd[@]}")
echo "miss latency: TALLY.GET p50 ${mp50} ms p99 ${mp99} ms ($((q1 - q0)) Postgres reads for 5000 GETs);" \
     "redis GET p50 ${gp50} ms p99 ${gp99} ms"
fi

# Ingest at full speed into 1,000 keys: stage 2 keeps up (a few thousand rows
# per flush). Random users too would make every (user, key) pair a
# tally_daily row, hundreds of thousands per second, which is stage 2's
# throughput limit, not the read path's.
load_cmd=(redis-benchmark -p "$writer_port" -c 2 -P 8 -n 1000000000 -r 1000 -q
          TALLY.RECORD key sk-__rand_int__ model gpt-4o spend 0.00042 prompt_tokens 120)
echo "load:      ${load_cmd[*]}"
"${load_cmd[@]}" >/dev/null 2>&1 &
load_pid=$!
pids+=($load_pid)
sleep 2
echo "probe:     /usr/bin/python3 bench/read_probe.py $writer_port $reader_port ${SAMPLES:-60}"
/usr/bin/python3 bench/read_probe.py "$writer_port" "$reader_port" "${SAMPLES:-60}"
kill "$load_pid" 2>/dev/null || true
accepted=$(redis-cli -p "$writer_port" TALLY.STATUS | tr -d '\r' | sed -n 's/^events_accepted://p')
echo "load: ${accepted} events accepted by the writer during the run"
