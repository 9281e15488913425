// actors/invalidator.hpp — keeps the read cache true to Postgres.
//
// Subscribes to `{tally:<ns>}:invalidate` on the active Redis database (a
// connection of its own: a subscribed connection can do nothing else) and
// applies each leader's flush message (core/invalidation.hpp): the rows it
// names are dropped, and this instance's batches it names leave the ledger.
//
// Whenever it cannot be sure it saw every message, it drops everything:
//  * on every (re)subscription: a new active database after a failover, a
//    lost connection, the start;
//  * on a gap: a sequence number that is not the next one of the same
//    leader's epoch (a flush whose publish failed, a message lost in a
//    switch), or a new epoch;
//  * on a message that lists too many rows to name them.
// While it is not subscribed (no active database) the cache is off: reads
// go to Postgres and install nothing, because nothing could invalidate them.
//
// A detached actor: it waits for messages in a blocking read of at most
// 100 ms, then looks at the fleet again (a switch means: subscribe there).
//
// Accepts:
//   poll_atom                  its own loop
#pragma once

#include "actors/flush_context.hpp"
#include "core/read_cache.hpp"

#include <caf/fwd.hpp>

namespace tally {

caf::actor spawn_invalidator(caf::actor_system& sys, flush_context_ptr ctx, read_cache& cache);

} // namespace tally
