#!/usr/bin/env bash
# tests/layering_test.sh — each folder includes only what its README allows.
#   core/      no CAF, hiredis, libpq
#   adapters/  no CAF
#   runtime/include/tally/  standard library and tally/ only
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
fail=0
check() {  # check DIR REGEX WHAT
  local hits
  hits=$(grep -rnE "$2" "$root/$1" --include='*.hpp' --include='*.cpp' --include='*.h' || true)
  if [[ -n "$hits" ]]; then
    echo "layering: $1 must not include $3:"
    echo "$hits"
    fail=1
  fi
}
check core '#include *[<"](caf/|hiredis/|libpq-fe|concurrentqueue/)' "CAF, hiredis, libpq or moodycamel"
check adapters '#include *[<"]caf/' "CAF"
check runtime/include '#include *[<"](caf/|hiredis|libpq|concurrentqueue|core/|actors/|adapters/)' "anything but the standard library and tally/"
if [[ $fail -eq 0 ]]; then
  echo "layering: ok"
fi
exit $fail
