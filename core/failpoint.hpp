// core/failpoint.hpp — named points where a test build can crash the process,
// hold a thread, or kill the actor that reached them.
//
// Crash tests must hit the moments that matter (after the commit, before the
// inflight list is deleted, ...) instead of hoping a random SIGKILL lands
// there. With TALLY_FAILPOINTS compiled in (the default; -DTALLY_FAILPOINTS=OFF
// removes them), the environment variable TALLY_FAILPOINT=<name>[,<name>...]
// arms points; reaching an armed point kills the process with SIGKILL, as
// `kill -9` would, with a line on stderr first. TALLY_FAILPOINT_SKIP=<n> lets
// the first n hits pass (crash on a later cycle). The variables below replace
// the SIGKILL, each for the first armed hit after the skipped ones only
// (later hits pass), and each writes a line on stderr first:
//
//   TALLY_FAILPOINT_PAUSE_MS=<ms>   pauses the thread that reached it that
//       long: a test can act while, say, a flush transaction is held open.
//   TALLY_FAILPOINT_WAIT_DIR=<dir>  a stoppoint: creates <dir>/<name>.reached
//       and holds the thread until <dir>/<name>.release exists. Races are
//       then forced, not timed: the test waits for .reached, makes the other
//       side of the race happen (the rest of the process runs on), and
//       creates .release.
//   TALLY_FAILPOINT_THROW=1         throws failpoint_crash, as an unexpected
//       exception would: an actor that reaches it dies (CAF ends it with
//       sec::runtime_error) and its supervisor's restart path runs. Only arm
//       points on actor code paths that are not noexcept.
#pragma once

#include <stdexcept>

namespace tally {

/// What TALLY_FAILPOINT_THROW throws.
struct failpoint_crash : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Crashes the process if `name` is armed (see above); otherwise returns.
void failpoint(const char* name);

} // namespace tally

#ifdef TALLY_FAILPOINTS
#define TALLY_FAILPOINT(name) ::tally::failpoint(name)
#else
#define TALLY_FAILPOINT(name) ((void)0)
#endif
