// actors/atoms.hpp — the atoms tally's actors exchange (CAF 0.17: at most
// 10 characters). Each actor's header says which of them it accepts.
#pragma once

#include <caf/atom.hpp>

namespace tally {

using wake_atom = caf::atom_constant<caf::atom("wake")>;          // queue went non-empty
using swap_atom = caf::atom_constant<caf::atom("swap")>;          // hand over the shard map
using recycle_atom = caf::atom_constant<caf::atom("recycle")>;    // take a cleared map back
using cycle_atom = caf::atom_constant<caf::atom("cycle")>;        // writer: time to collect
using retry_atom = caf::atom_constant<caf::atom("retry")>;        // writer: retry stage 1
using drain_atom = caf::atom_constant<caf::atom("drain")>;        // write everything, then answer
using collect_now_atom = caf::atom_constant<caf::atom("collectnow")>;  // writer: cycle now (durable records wait, or a shard is at its key limit)

} // namespace tally
