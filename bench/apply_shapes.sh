#!/usr/bin/env bash
# bench/apply_shapes.sh — what else the server-side half of a flush could
# be: statement shapes and key layouts for the same 20,000-row steady-state
# upsert, against the apply tally runs (INSERT ... SELECT from a staging
# table, ON CONFLICT on the rollup's primary key), all in one run.
#
#   bench/apply_shapes.sh                 (ROUNDS=7 ROWS=200000 STAGED=20000)
#
# Starts its own Postgres (scripts/servers, temp state dir). Builds
# tally_daily-shaped tables (a date and six text key columns, eight
# measures, fillfactor 70 as migration 3 sets) of ROWS rows, stages every
# tenth row (all conflicting: the steady state of a rollup) and upserts them
# ROUNDS times per shape, the shapes interleaved so a burst of load hits all
# alike; each upsert commits. Prints every round, the medians and each
# shape's ratio to today's. Shapes:
#  * today    INSERT ... SELECT ... ORDER BY ord ON CONFLICT (the 7-column key)
#  * text1    the same table plus one text column joining the key texts with
#             a unique index; ON CONFLICT on it (a one-column probe)
#  * hash     a uuid of the key texts as the only key, staged in hash order
#  * update   UPDATE ... FROM the staging table (no ON CONFLICT; rows exist)
#  * merge    MERGE INTO ... USING the staging table
#  * split2   today's statement over two connections at once, each with a
#             disjoint half of the rows; timed from outside with its session
#             start, against `split1` (one connection, all rows, same way)
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-7}
rows=${ROWS:-200000}
staged=${STAGED:-20000}
step=$((rows / staged))

work=$(mktemp -d)
chmod 755 "$work"
cleanup() {
  scripts/servers purge "$work/servers" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
scripts/servers start "$work/servers" >/dev/null
eval "$(scripts/servers env "$work/servers")"
psql_() { psql "$POSTGRES_URL" -X -q -v ON_ERROR_STOP=1; }

K="day, entity_type, entity_id, api_key, model, provider, endpoint"
M="spend, prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens, requests, successful_requests, failed_requests"
SET="" USET="" JOIN=""
for m in ${M//,/}; do SET+="$m = t.$m + EXCLUDED.$m, "; USET+="$m = t.$m + s.$m, "; done
for k in ${K//,/}; do JOIN+="${JOIN:+ AND }t.$k = s.$k"; done
SET+="updated_at = now()"
USET+="updated_at = now()"
KEYTEXT="concat_ws(E'\\x1f', day, entity_type, entity_id, api_key, model, provider, endpoint)"

psql_ <<SQL
CREATE TABLE today (day date NOT NULL, entity_type text NOT NULL DEFAULT '', entity_id text NOT NULL DEFAULT '',
  api_key text NOT NULL DEFAULT '', model text NOT NULL DEFAULT '', provider text NOT NULL DEFAULT '',
  endpoint text NOT NULL DEFAULT '', spend numeric(38,9) NOT NULL DEFAULT 0, prompt_tokens bigint NOT NULL DEFAULT 0,
  completion_tokens bigint NOT NULL DEFAULT 0, cache_read_tokens bigint NOT NULL DEFAULT 0,
  cache_creation_tokens bigint NOT NULL DEFAULT 0, requests bigint NOT NULL DEFAULT 0,
  successful_requests bigint NOT NULL DEFAULT 0, failed_requests bigint NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY ($K)) WITH (fillfactor = 70);
INSERT INTO today ($K) SELECT '2026-11-22', 'user', 'user-' || (i % 1000), 'key-' || i, 'gpt-4o', 'openai',
  '/v1/chat/completions' FROM generate_series(1, $rows) i;
CREATE TABLE text1 (LIKE today INCLUDING ALL, key_text text NOT NULL) WITH (fillfactor = 70);
CREATE UNIQUE INDEX ON text1 (key_text);
INSERT INTO text1 SELECT today.*, $KEYTEXT FROM today;
CREATE TABLE hash (LIKE today INCLUDING DEFAULTS, key_hash uuid PRIMARY KEY) WITH (fillfactor = 70);
INSERT INTO hash SELECT today.*, md5($KEYTEXT)::uuid FROM today;
CREATE TABLE update_t (LIKE today INCLUDING ALL) WITH (fillfactor = 70);
INSERT INTO update_t SELECT * FROM today;
CREATE TABLE merge_t (LIKE today INCLUDING ALL) WITH (fillfactor = 70);
INSERT INTO merge_t SELECT * FROM today;
CREATE TABLE split_t (LIKE today INCLUDING ALL) WITH (fillfactor = 70);
INSERT INTO split_t SELECT * FROM today;
CREATE TABLE src AS SELECT row_number() OVER (ORDER BY $K)::int AS ord, $K,
  1.5::numeric(38,9) AS spend, 10::bigint AS prompt_tokens, 20::bigint AS completion_tokens,
  0::bigint AS cache_read_tokens, 0::bigint AS cache_creation_tokens, 1::bigint AS requests,
  1::bigint AS successful_requests, 0::bigint AS failed_requests,
  $KEYTEXT AS key_text, md5($KEYTEXT)::uuid AS key_hash
  FROM today WHERE substr(api_key, 5)::int % $step = 0;
VACUUM ANALYZE;
SQL

# One session per round: the staging table is built and read once (not
# timed: the first scan sets its hint bits), then the five single-connection
# shapes, each timed by \timing, in an order that rotates every round so no
# shape always runs first.
shape_sql() {
  case $1 in
  today) echo "INSERT INTO today AS t ($K, $M, updated_at) SELECT $K, $M, now() FROM s ORDER BY ord ON CONFLICT ($K) DO UPDATE SET $SET;" ;;
  text1) echo "INSERT INTO text1 AS t ($K, $M, updated_at, key_text) SELECT $K, $M, now(), key_text FROM s ORDER BY ord ON CONFLICT (key_text) DO UPDATE SET $SET;" ;;
  hash) echo "INSERT INTO hash AS t ($K, $M, updated_at, key_hash) SELECT $K, $M, now(), key_hash FROM s ORDER BY key_hash ON CONFLICT (key_hash) DO UPDATE SET $SET;" ;;
  update) echo "UPDATE update_t AS t SET $USET FROM s WHERE $JOIN;" ;;
  merge) echo "MERGE INTO merge_t AS t USING s ON $JOIN WHEN MATCHED THEN UPDATE SET $USET" \
    "WHEN NOT MATCHED THEN INSERT ($K, $M) VALUES (s.day, s.entity_type, s.entity_id, s.api_key, s.model, s.provider," \
    "s.endpoint, s.spend, s.prompt_tokens, s.completion_tokens, s.cache_read_tokens, s.cache_creation_tokens, s.requests," \
    "s.successful_requests, s.failed_requests);" ;;
  esac
}
shapes=(today text1 hash update merge)
round_sql() {  # $1: the round, which rotates the order
  echo "CREATE TEMP TABLE s AS SELECT * FROM src; ANALYZE s; SELECT count(*) FROM s \\g /dev/null"
  printf '%s\n' '\timing on'
  local i n=${#shapes[@]}
  for ((i = 0; i < n; i++)); do
    local shape=${shapes[$(((i + $1) % n))]}
    printf '%s\n' "\echo $shape"
    shape_sql "$shape"
  done
}
split_sql() {  # $1: the rows' filter
  echo "CREATE TEMP TABLE s AS SELECT * FROM src WHERE $1;"
  echo "INSERT INTO split_t AS t ($K, $M, updated_at) SELECT $K, $M, now() FROM s ORDER BY ord ON CONFLICT ($K) DO UPDATE SET $SET;"
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }

results=$work/results
: >"$results"
echo "apply_shapes: $rows-row tables, $staged rows per upsert, $rounds rounds"
for ((r = 1; r <= rounds; r++)); do
  round_sql "$r" | psql_ | awk '/^Time:/ { printf "%s %.1f\n", shape, $2; next } { shape = $1 }' >>"$results"
  t0=$(now_ms)
  split_sql "true" | psql_
  t1=$(now_ms)
  split_sql "ord % 2 = 0" | psql_ &
  split_sql "ord % 2 = 1" | psql_ &
  wait
  t2=$(now_ms)
  echo "split1 $((t1 - t0))" >>"$results"
  echo "split2 $((t2 - t1))" >>"$results"
  echo "round $r: $(tail -n 7 "$results" | awk '{ printf "%s %s ms  ", $1, $2 }')"
done

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
base=$(awk '$1 == "today" { print $2 }' "$results" | median)
split_base=$(awk '$1 == "split1" { print $2 }' "$results" | median)
echo
echo "| shape | median ms | rows/s | vs today |"
echo "|---|---|---|---|"
for shape in today text1 hash update merge split1 split2; do
  med=$(awk -v s="$shape" '$1 == s { print $2 }' "$results" | median)
  ref=$base
  [[ $shape == split* ]] && ref=$split_base
  awk -v s="$shape" -v m="$med" -v b="$ref" -v n="$staged" \
    'BEGIN { printf "| %s | %.0f | %.0fk | %.2f |\n", s, m, n / m, b / m }'
done
echo "(split1 and split2 include their sessions' start and staging; split2 is against split1)"
