// actors/flush_supervisor.hpp — stage 2's root: owns the lease and the
// flusher, and restarts them.
//
// Concept: one flush supervisor per instance with a Postgres URL. Its three
// children each own their blocking connections in a detached actor:
//   lease     (lease.hpp)     takes / renews / releases the Redis lease and
//                             the Postgres fencing epoch;
//   flusher   (flusher.hpp)   moves, decodes and applies batches while leading;
//   pruner    (pruner.hpp)    deletes expired applied batch ids while leading,
//                             on its own connection, so flushes never wait on it.
// (The registry and producer retention run on every instance, flushing or
// not; the runtime spawns them.)
// The supervisor turns lease news into lead/follow orders for the flusher
// and the pruner,
// and a fence refusal into a lease drop. Children are linked; a child that
// dies (anything but a normal exit) is respawned after a backoff (100 ms
// doubling to 5 s, reset after a quiet minute); a dead lease actor first
// stops the flusher, since nobody renews the lease any more.
//
// Stop (runtime::stop, after the stage-1 writer drained):
//   fstop_atom, int64_t deadline_wall_ms -> bool
//     1. not leading: try once to take the lease, so the last instance to
//        stop still flushes what the fleet left in Redis;
//     2. the flusher finishes (drains while leading, or rolls back), returns
//        its inflight list, and stops cycling;
//     3. the lease is released by compare-and-delete; the answer is sent; the
//        supervisor exits.
// Any other exit request ends it (and its linked children) at once.
#pragma once

#include "actors/flush_context.hpp"
#include "actors/ingest.hpp"

#include <caf/fwd.hpp>

#include <string>

namespace tally {

/// Spawns the flush supervisor (ctx->cfg.postgres_url must be set).
caf::actor spawn_flush_supervisor(caf::actor_system& sys, flush_context_ptr ctx);

} // namespace tally
