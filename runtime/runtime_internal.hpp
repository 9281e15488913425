// runtime/runtime_internal.hpp — what tallyd needs beyond the public API.
//
// tallyd runs its network layer (CAF brokers) inside the runtime's actor
// system, so it starts the runtime with CAF's I/O module loaded and reaches
// the system. Embedding programs never include this header.
#pragma once

#include "tally/tally.hpp"

#include <caf/fwd.hpp>

namespace tally {

/// Like runtime::start, with caf::io::middleman loaded.
std::string start_with_io(runtime& rt, const config& cfg);

/// The actor system of a started runtime.
caf::actor_system& system_of(runtime& rt);

} // namespace tally
