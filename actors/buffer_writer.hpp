// actors/buffer_writer.hpp — stage 1: aggregates to Redis as batches, or to
// the local spill journal while no Redis can take them.
//
// Every buffer_interval (at once while durable records wait: group commit)
// the writer asks every aggregator to swap its map, fans the fine keys out
// into rollup rows, encodes them as one batch (split when large) with the id
// `<instance>:<seq>`, and pushes the encoded bytes to the active database's
// `{tally:<ns>}:batches` (the redis_fleet decides which database that is).
//
// The push is idempotent (redis_keyspace::push_batch): a write whose reply
// was lost (timeout, Redis killed) is retried with the same id and bytes and
// cannot land twice. Every batch written goes to producer retention
// (retention.hpp), which pushes it again if that database loses it.
//
// Where a batch goes when it cannot be written:
//   * it stays in memory, in order, and is retried with backoff and jitter
//     while some database is healthy;
//   * it goes to the spill journal (adapters/spill_journal.hpp: append-only,
//     checksummed, fsynced once per cycle) when no database is healthy, when
//     max_pending_batches are waiting, and at stop when the deadline passes;
//   * the journal is replayed in order, first, as soon as a database is
//     active again, and at the next start (journals of earlier processes of
//     this namespace in state_dir are adopted). Replayed batches keep their
//     ids, so one both journaled and pushed is applied once;
//   * when the journal is full (journal_max_bytes) too, the writer stops
//     collecting, the shards fill and record() pushes back: nothing is dropped.
// A durable record is acknowledged once its batch is in Redis or fsynced in
// the journal.
//
// Accepts:
//   cycle_atom, uint64_t generation      timer; stale generations are dropped
//   retry_atom, uint64_t generation      backoff over; write pending batches
//   collect_now_atom                     durable records wait, or a shard is at
//                                        its key limit: cycle now
//   active_atom, uint64_t generation     the active database changed: write now
//   drain_atom, int64_t deadline_ms -> bool
//       final cycle (after ingest_state::close): collect everything, write
//       until nothing is pending (journaling what Redis does not take by the
//       deadline); true if everything is in Redis or the journal.
// Sends: swap_atom / recycle_atom to the aggregators, retain_atom to retention.
#pragma once

#include "actors/ingest.hpp"
#include "actors/redis_fleet.hpp"
#include "adapters/spill_journal.hpp"

#include <caf/fwd.hpp>

#include <memory>
#include <string>
#include <vector>

namespace tally {

/// The spill journals the writer owns: its own (appended to) and those of
/// earlier processes found at start (replayed, then removed).
struct journal_set {
  std::optional<adapters::spill_journal> own;
  std::vector<adapters::spill_journal> adopted;
};

/// Spawns the writer as a detached actor (its Redis and file calls block).
caf::actor spawn_buffer_writer(caf::actor_system& sys, ingest_state& state, std::vector<caf::actor> aggregators,
                               std::string instance_id, const redis_fleet& fleet, caf::actor retention,
                               std::shared_ptr<journal_set> journals);

} // namespace tally
