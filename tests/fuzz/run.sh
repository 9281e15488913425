#!/usr/bin/env bash
# tests/fuzz/run.sh — run libFuzzer targets for a bounded time from their
# committed corpora.
#
#   tests/fuzz/run.sh BUILD_DIR TARGET...      (BUILD_DIR configured with TALLY_FUZZ=ON)
#
# Each target starts from tests/fuzz/corpus/<target>/ (read only: what the
# run finds goes to BUILD_DIR/fuzz/<target>/corpus, so the tree does not
# change under CI) and runs for TALLY_FUZZ_SECONDS (default 60). A crash, a
# sanitizer finding, a failed property, a timeout (one input over 10 s) or
# an allocation over 256 MiB fails the run; the input that did it is kept
# as BUILD_DIR/fuzz/<target>/crash-* (or timeout-*, oom-*) and named on the
# last line, so it can be replayed: BUILD_DIR/tests/fuzz/<target> <file>.
# A target that is not built is a failure, never a skip. Fuzzers run at a
# lower priority (nice 10): their time is bounded, not their work, so they
# can share the machine with the integration suites that run beside them.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build_dir="$(cd "${1:?usage: run.sh BUILD_DIR TARGET...}" && pwd)"
shift
seconds="${TALLY_FUZZ_SECONDS:-60}"
status=0
for target in "$@"; do
  binary="$build_dir/tests/fuzz/$target"
  seeds="$here/corpus/$target"
  work="$build_dir/fuzz/$target"
  if [[ ! -x "$binary" ]]; then
    echo "fuzz $target: FAIL, $binary is not built" >&2
    status=1
    continue
  fi
  if [[ ! -d "$seeds" ]] || [[ -z "$(ls -A "$seeds")" ]]; then
    echo "fuzz $target: FAIL, no seed corpus in $seeds" >&2
    status=1
    continue
  fi
  mkdir -p "$work/corpus" "$work/tmp"
  rm -f "$work"/crash-* "$work"/timeout-* "$work"/oom-* "$work"/leak-*
  # Scratch files of the journal and options targets go to a private
  # directory, on tmpfs when there is one (they fsync per input).
  tmp="$work/tmp"
  [[ -d /dev/shm && -w /dev/shm ]] && tmp="$(mktemp -d /dev/shm/tally-fuzz-XXXXXX)"
  set +e
  TMPDIR="$tmp" \
  ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:symbolize=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}" \
    nice -n 10 "$binary" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=256 \
      -print_final_stats=1 -artifact_prefix="$work/" "$work/corpus" "$seeds" >"$work/log" 2>&1
  rc=$?
  set -e
  [[ "$tmp" == /dev/shm/* ]] && rm -rf "$tmp"
  runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/log" | grep -o '[0-9]*$' || true)"
  if ((rc != 0)); then
    tail -n 60 "$work/log" >&2
    echo "fuzz $target: FAIL (exit $rc); reproducer: $(ls "$work"/crash-* "$work"/timeout-* "$work"/oom-* "$work"/leak-* 2>/dev/null | head -1)" >&2
    status=1
  elif [[ -z "$runs" || "$runs" -eq 0 ]]; then
    tail -n 20 "$work/log" >&2
    echo "fuzz $target: FAIL, no input was run" >&2
    status=1
  else
    echo "fuzz $target: ok, $runs inputs in ${seconds}s, corpus $(ls "$work/corpus" | wc -l) + $(ls "$seeds" | wc -l) seeds"
  fi
done
exit "$status"
