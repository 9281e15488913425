#!/usr/bin/env bash
# tests/install_test.sh BUILD_DIR — tally as an operator and an embedder get
# it from `cmake --install`: tallyd, libtally.so with its public headers,
# tallyConfig.cmake (tally::tally) and tally.pc. examples/embed is built
# against the install twice, with find_package(tally) and with pkg-config,
# and each build runs against a real redis-server: its events must reach
# Redis as stage-1 batches.
set -euo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:?usage: install_test.sh BUILD_DIR}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tally-install-XXXXXX")
redis_pid=""
cleanup() {
  [[ -n $redis_pid ]] && kill "$redis_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

prefix=$tmp/prefix
cmake --install "$build" --prefix "$prefix" >"$tmp/install.log" || { cat "$tmp/install.log"; fail "cmake --install"; }
lib=$(dirname "$(find "$prefix" -name 'libtally.so' | head -1)")
[[ -n $lib && -d $lib ]] || fail "no libtally.so installed"
for f in bin/tallyd include/tally/tally.hpp include/tally/event.hpp; do
  [[ -e $prefix/$f ]] || fail "$f not installed"
done
for f in cmake/tally/tallyConfig.cmake cmake/tally/tallyConfigVersion.cmake cmake/tally/tallyTargets.cmake \
         pkgconfig/tally.pc; do
  [[ -e $lib/$f ]] || fail "$lib/$f not installed"
done
"$prefix/bin/tallyd" --help >/dev/null || fail "installed tallyd --help"
# The public headers include nothing but each other and the standard library.
if grep -h '^#include' "$prefix"/include/tally/*.hpp | grep -v -e '"tally/' -e '<[a-z_]*>'; then
  fail "a public header includes something other than tally/ and the standard library"
fi

echo "--- consumers: find_package(tally) and pkg-config"
cmake -S "$src/examples/embed" -B "$tmp/embed-cmake" -DCMAKE_PREFIX_PATH="$prefix" >"$tmp/embed.log" 2>&1 &&
  cmake --build "$tmp/embed-cmake" >>"$tmp/embed.log" 2>&1 || { cat "$tmp/embed.log"; fail "examples/embed with find_package"; }
# shellcheck disable=SC2046
g++ -o "$tmp/embed-pc" "$src/examples/embed/main.cpp" $(PKG_CONFIG_PATH="$lib/pkgconfig" pkg-config --cflags --libs tally) ||
  fail "examples/embed with pkg-config"

echo "--- each against a real redis-server"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$tmp" >"$tmp/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 1 100); do
  redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break
  sleep 0.1
done
batches() { redis-cli -p "$port" llen '{tally:embed}:batches'; }
for bin in "$tmp/embed-cmake/embed" "$tmp/embed-pc"; do
  before=$(batches)
  out=$(LD_LIBRARY_PATH=$lib "$bin" "redis://127.0.0.1:$port" 5000 2>&1) || { echo "$out"; fail "$bin"; }
  echo "$out" | tail -1
  grep -q "embed: 5000 events accepted" <<<"$out" || fail "$bin did not report its 5000 events"
  (($(batches) > before)) || fail "$bin wrote no batch to Redis"
done
echo "PASS"
