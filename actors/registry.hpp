// actors/registry.hpp — heartbeats this instance into Redis.
//
// Runs on every instance, producer-only ones too. Every lease_ttl/3, and at
// once after the active database changed, it writes this instance's record
// `{tally:<ns>}:instance:<id>` (host, pid, version, start time, role,
// active database, events accepted, epoch, heartbeat time) with a TTL of lease_ttl
// and adds the id to `{tally:<ns>}:instances`. A leader treats an id in the
// set whose record expired as dead and returns its inflight list to the
// batches list (flusher.hpp). On stop it deletes its record and leaves the
// set.
//
// Accepts:
//   beat_atom, uint64_t generation       timer
//   active_atom, uint64_t generation     the active database changed: beat there now
//   fstop_atom -> bool                   deregister and stop beating
//   cluster_atom, cluster_reply          every live instance and the lease holder,
//                                        read from the active database at most
//                                        once a second (the cluster view of an
//                                        operator polling many instances must
//                                        not become a Redis load)
#pragma once

#include "actors/flush_context.hpp"

#include "tally/tally.hpp"

#include <caf/atom.hpp>
#include <caf/fwd.hpp>

#include <future>
#include <memory>

namespace tally {

using cluster_atom = caf::atom_constant<caf::atom("cluster")>;
/// Where the registry puts a cluster view. A promise, not a CAF response:
/// the asker may be any thread (an HTTP worker), and a scoped_actor created
/// on a thread CAF does not own keeps ~actor_system from returning.
using cluster_reply = std::shared_ptr<std::promise<cluster_view>>;

/// The version tallyd reports in the registry.
extern const char* const tally_version;

/// Spawns the registry actor (detached: its Redis calls block).
caf::actor spawn_registry(caf::actor_system& sys, flush_context_ptr ctx);

} // namespace tally

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(tally::cluster_reply)
