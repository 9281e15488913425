// core/failpoint.hpp — named points where a test build can crash the process.
//
// Crash tests must hit the moments that matter (after the commit, before the
// inflight list is deleted, ...) instead of hoping a random SIGKILL lands
// there. With TALLY_FAILPOINTS compiled in (the default; -DTALLY_FAILPOINTS=OFF
// removes them), the environment variable TALLY_FAILPOINT=<name>[,<name>...]
// arms points; reaching an armed point kills the process with SIGKILL, as
// `kill -9` would, with a line on stderr first. TALLY_FAILPOINT_SKIP=<n> lets
// the first n hits pass (crash on a later cycle). With
// TALLY_FAILPOINT_PAUSE_MS=<ms> the first armed hit (after the skipped ones)
// instead pauses the thread that reached it that long and later hits pass:
// a test can then act while, say, a flush transaction is held open.
#pragma once

namespace tally {

/// Crashes the process if `name` is armed (see above); otherwise returns.
void failpoint(const char* name) noexcept;

} // namespace tally

#ifdef TALLY_FAILPOINTS
#define TALLY_FAILPOINT(name) ::tally::failpoint(name)
#else
#define TALLY_FAILPOINT(name) ((void)0)
#endif
