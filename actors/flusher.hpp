// actors/flusher.hpp — stage 2: applies Redis batches to Postgres, exactly once.
//
// While this instance holds the lease (lead_atom from the supervisor), every
// flush_interval, and back to back while a backlog remains, one flush cycle:
//
//   1. (every lease_ttl/2) return the inflight lists of dead instances
//      (registered id whose heartbeat key expired) to `batches`;
//   2. move a chunk of batches from `batches` to this instance's own
//      `{tally:<ns>}:inflight:<id>` (one Lua script of LMOVEs: atomic, so a
//      batch is always in exactly one list); a leftover inflight list from a
//      failed or crashed cycle is flushed first;
//   3. read the inflight list, decode each batch; one that fails its checksum
//      or does not match this build's rollups moves atomically to
//      `{tally:<ns>}:deadletter` (logged, counted);
//   4. one Postgres transaction (adapters/flush_sql.hpp): fence, dedup, upsert;
//   5. after COMMIT delete the inflight list, then, in the active database,
//      tell the producers which batch ids were applied (their retention
//      forgets them) and PUBLISH a summary on `{tally:<ns>}:invalidate`.
//
// The active database first; when it is drained, every other configured
// database whose circuit is not open gets the same cycles (its batches and
// the inflight lists of instances gone from it), so nothing written before
// a switch is stranded. One with nothing in it is looked at again after
// lease_ttl/2.
//
// Nothing is ever popped and lost: until step 5 every batch sits in a Redis
// list, and re-applying one after a crash is a no-op (tally_applied_batches).
// A failed step (Redis or Postgres down, lock timeout, ...) is retried with
// exponential backoff and jitter; the inflight list stays and is retried.
//
// Not leading (follow_atom, start, fence): the own inflight list is returned
// to `batches` so another leader applies it; flushing stops at once.
//
// Accepts:
//   lead_atom, uint64_t epoch            start flushing under this epoch
//   follow_atom                          stop flushing
//   fcycle_atom, uint64_t generation     timer
//   fstop_atom, int64_t deadline_wall_ms -> bool
//       final drain when leading (until `batches` and inflight are empty or
//       the deadline passes), then no more cycles; true when nothing of ours
//       is left in flight.
// Sends: fenced_atom, uint64_t our_epoch, uint64_t database_epoch to the supervisor.
#pragma once

#include "actors/flush_context.hpp"

#include <caf/fwd.hpp>

namespace tally {

/// Spawns the flusher (detached: its Redis and Postgres calls block), linked
/// to `supervisor`.
caf::actor spawn_flusher(caf::event_based_actor* supervisor, flush_context_ptr ctx);

} // namespace tally
