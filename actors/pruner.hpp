// actors/pruner.hpp — stage 2's maintenance: deletes applied batch ids past
// applied_retention from tally_applied_batches, off the flush cycle.
//
// Concept: the table grows by one row per applied batch and only the
// leader's dedup check reads it, so only the leader prunes. Pruning runs on
// its own detached actor with its own Postgres connection, so a slow prune
// never delays a flush; and it deletes in small transactions (at most
// prune_batch_ids ids, each under prune_statement_timeout, rows locked by
// others skipped; adapters/flush_sql.hpp), resting prune_rest_factor times
// as long as each batch took, so a backlog of millions of ids is a trickle
// of short statements using a fifth of one backend, rather than one long
// DELETE that holds a snapshot and competes with flushes for CPU and I/O.
//
// Order: lead_atom starts a run at once (a new leader may inherit a long
// backlog); a run goes batch by batch until a batch comes back short, then
// sleeps prune_period; follow_atom stops it after the batch in progress. A
// failed batch is logged and the run retried after prune_retry.
//
// Accepts:
//   lead_atom, uint64_t epoch     prune while leading
//   follow_atom                   stop pruning
//   prune_atom, uint64_t gen      timer
#pragma once

#include "actors/flush_context.hpp"

#include <caf/fwd.hpp>

#include <chrono>

namespace tally {

constexpr std::chrono::milliseconds prune_period = std::chrono::hours(1);
constexpr std::chrono::milliseconds prune_retry = std::chrono::minutes(1);

/// Spawns the pruner (detached: its Postgres calls block), linked to
/// `supervisor`.
caf::actor spawn_pruner(caf::event_based_actor* supervisor, flush_context_ptr ctx);

} // namespace tally
