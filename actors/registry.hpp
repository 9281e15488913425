// actors/registry.hpp — heartbeats this instance into Redis.
//
// Every lease_ttl/3 it sets `{tally:<ns>}:instance:<id>` (value: wall-clock
// ms) with PX lease_ttl and adds the id to the set `{tally:<ns>}:instances`.
// A leader treats an id in the set whose instance key has expired as dead
// and returns its inflight list to the batches list (flusher.hpp). On stop
// it deletes its key and leaves the set.
//
// Accepts:
//   beat_atom, uint64_t generation       timer
//   fstop_atom -> bool                   deregister and stop beating
#pragma once

#include "actors/flush_context.hpp"

#include <caf/fwd.hpp>

namespace tally {

/// Spawns the registry actor (detached: its Redis calls block), linked to
/// `supervisor`.
caf::actor spawn_registry(caf::event_based_actor* supervisor, flush_context_ptr ctx);

} // namespace tally
