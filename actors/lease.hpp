// actors/lease.hpp — holds the namespace's Redis lease and its fencing epoch.
//
// Only the lease holder flushes. The lease is `{tally:<ns>}:lease`, taken
// with SET NX PX lease_ttl and the value `<instance>:<nonce>` (a fresh nonce
// per acquisition, so a restarted instance with the same id never mistakes
// an old lease for its own). It is renewed every lease_ttl/3 by a
// compare-and-set script and released by compare-and-delete. Right after
// taking it the actor increments the fencing epoch in tally_lease (one
// committed transaction); only then does it report the lease as held. Every
// flush transaction checks that epoch, so an ex-leader that still believes
// it leads cannot commit.
//
// A renewal answered "not yours" or not answered before the lease would have
// expired (minus a margin) is a loss: lease_valid_until is zeroed first
// (an open flush rolls back at its next step), then the supervisor is told.
//
// The lease lives in the active Redis database (redis_fleet.hpp). After a
// switch it is taken again in the new one, at once: a new epoch, which
// fences whatever the old one still had in flight.
//
// Accepts:
//   renew_atom, uint64_t generation      timer: acquire or renew
//   active_atom, uint64_t generation     the active database changed (or one
//                                        became active): take the lease there
//   acquire_atom -> uint64_t             try once now (stop path); epoch or 0
//   release_atom -> bool                 compare-and-delete; no more attempts
//   drop_atom                            fenced: release, retry after one TTL
// Sends: lease_atom, bool held, uint64_t epoch to the supervisor.
#pragma once

#include "actors/flush_context.hpp"

#include <caf/fwd.hpp>

namespace tally {

/// Spawns the lease actor (detached: its Redis and Postgres calls block),
/// linked to `supervisor`'s caller via `linked_spawn`.
caf::actor spawn_lease(caf::event_based_actor* supervisor, flush_context_ptr ctx);

} // namespace tally
