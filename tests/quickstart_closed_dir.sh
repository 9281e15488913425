#!/usr/bin/env bash
# tests/quickstart_closed_dir.sh TALLYD — the README's quickstart from a
# checkout inside a directory other users cannot enter (mode 0700, as /root
# is), with the tallyd built here:
#   1. it runs to exact totals (it checks Postgres against what the
#      instances accepted, and fails otherwise) and stops every server;
#   2. a quickstart whose tallyd fails to start stops the servers it started.
# As root, Postgres (run as the postgres user) cannot reach the checkout, so
# its data must go where it can, and the output must say where.
set -euo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tallyd=${1:?usage: quickstart_closed_dir.sh TALLYD}

closed=$(mktemp -d "${TMPDIR:-/tmp}/tally-closed-XXXXXX")
chmod 0700 "$closed"
checkout=$closed/tally
mkdir -p "$checkout"
cp -r "$src/scripts" "$checkout/"
state=$checkout/.state
cleanup() {
  "$checkout/scripts/servers" purge "$state" >/dev/null 2>&1 || true
  rm -rf "$closed"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
port_closed() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
servers_stopped() {  # every server the env file names is gone
  local REDIS_PORT PG_PORT
  # shellcheck disable=SC1091
  source "$state/servers.env"
  port_closed "$REDIS_PORT" || fail "redis-server on port $REDIS_PORT still runs after: $1"
  port_closed "$PG_PORT" || fail "postgres on port $PG_PORT still runs after: $1"
}

echo "--- quickstart --once from $checkout (parent mode $(stat -c %a "$closed"))"
if ! out=$(QUICKSTART_TALLYD=$tallyd QUICKSTART_EVENTS=2000 "$checkout/scripts/quickstart" --once 2>&1); then
  echo "$out"
  fail "quickstart --once failed"
fi
echo "$out" | tail -25
grep -q "demo-key" <<<"$out" || fail "no totals for demo-key printed"
# bob's one event (spend 0.25) read back through TALLY.GET from the other instance.
grep -q "entity_id bob found 1 spend 0.250000000" <<<"$out" || fail "TALLY.GET user bob did not show bob's spend"
if [[ $(id -u) -eq 0 ]]; then
  grep -q "Postgres keeps its data in /var/tmp/tally-postgres-" <<<"$out" ||
    fail "as root under a closed directory, the output does not say where Postgres keeps its data"
fi
servers_stopped "quickstart --once"

echo "--- quickstart with a tallyd that fails to start"
fake=$closed/failing-tallyd
printf '#!/bin/sh\necho "tallyd: refusing to start (test)" >&2\nexit 1\n' >"$fake"
chmod +x "$fake"
if out=$(QUICKSTART_TALLYD=$fake "$checkout/scripts/quickstart" --once 2>&1); then
  echo "$out"
  fail "quickstart succeeded with a tallyd that exits at once"
fi
grep -q "tallyd exited" <<<"$out" || { echo "$out"; fail "the failure is not reported"; }
servers_stopped "a failed quickstart"
echo "PASS"
