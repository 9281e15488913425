// runtime/runtime_internal.hpp — what tallyd needs beyond the public API.
//
// tallyd runs its network layer (CAF brokers) inside the runtime's actor
// system, so it starts the runtime with CAF's I/O module loaded and reaches
// the system. Embedding programs never include this header.
#pragma once

#include "tally/tally.hpp"

#include <caf/fwd.hpp>

#include <memory>

namespace tally {

/// Like runtime::start, with caf::io::middleman loaded.
std::string start_with_io(runtime& rt, const config& cfg);

class resp_backend;

/// The RESP layer's view of a started runtime (actors/resp_backend.hpp).
/// Keeps a reference to `rt`: stop the listener before the runtime.
std::shared_ptr<resp_backend> make_resp_backend(runtime& rt);

/// The actor system of a started runtime.
caf::actor_system& system_of(runtime& rt);

} // namespace tally
