#!/usr/bin/env bash
# tests/layering_test.sh — each folder includes only what its README allows.
#   core/      no CAF, hiredis, libpq; nothing from adapters/, actors/, runtime/
#   adapters/  no CAF; nothing from actors/, runtime/
#   actors/    nothing from runtime/
#   runtime/include/tally/ and core/event.hpp (the public headers)
#              standard library and tally/ only
# The build enforces the folder rules too (each layer's library gets only
# its folders' include directories, CMakeLists.txt); this check also runs
# without a build and names the offending line.
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
check core '#include *[<"](caf/|hiredis/|libpq-fe|concurrentqueue/|adapters/|actors/|runtime/)' \
  "CAF, hiredis, libpq, moodycamel, adapters/, actors/ or runtime/"
check adapters '#include *[<"](caf/|actors/|runtime/)' "CAF, actors/ or runtime/"
check actors '#include *[<"]runtime/' "runtime/"
check runtime/include '#include *[<"](caf/|hiredis|libpq|concurrentqueue|core/|actors/|adapters/)' "anything but the standard library and tally/"
check core/event.hpp '#include *"' "anything but the standard library (it is the public <tally/event.hpp>)"
if [[ $fail -eq 0 ]]; then
  echo "layering: ok"
fi
exit $fail
