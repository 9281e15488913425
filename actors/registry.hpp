// actors/registry.hpp — heartbeats this instance into Redis.
//
// Runs on every instance, producer-only ones too. Every lease_ttl/3, and at
// once after the active database changed, it writes this instance's record
// `{tally:<ns>}:instance:<id>` (host, pid, version, start time, role,
// active database, events accepted, heartbeat time) with a TTL of lease_ttl
// and adds the id to `{tally:<ns>}:instances`. A leader treats an id in the
// set whose record expired as dead and returns its inflight list to the
// batches list (flusher.hpp). On stop it deletes its record and leaves the
// set.
//
// Accepts:
//   beat_atom, uint64_t generation       timer
//   active_atom, uint64_t generation     the active database changed: beat there now
//   fstop_atom -> bool                   deregister and stop beating
#pragma once

#include "actors/flush_context.hpp"

#include <caf/fwd.hpp>

namespace tally {

/// The version tallyd reports in the registry.
extern const char* const tally_version;

/// Spawns the registry actor (detached: its Redis calls block).
caf::actor spawn_registry(caf::actor_system& sys, flush_context_ptr ctx);

} // namespace tally
