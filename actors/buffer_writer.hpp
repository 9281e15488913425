// actors/buffer_writer.hpp — stage 1: aggregates to Redis as batches.
//
// Every buffer_interval (at once while durable records wait: group commit)
// the writer asks every aggregator to swap its map, fans the fine keys out
// into rollup rows, encodes them as one batch (split when large) with the id
// `<instance>:<seq>`, and pushes the encoded bytes to `{tally:<ns>}:batches`.
//
// The push is idempotent: a Lua script sets `{tally:<ns>}:written:<id>` with
// NX and only then LPUSHes, in one atomic step. A write whose reply was lost
// (timeout, Redis killed) is retried with the same id and bytes, and cannot
// land twice. A batch that cannot be written stays in memory, in order, and
// is retried with exponential backoff; when max_pending_batches are waiting
// the writer stops collecting, the shards fill, and record() pushes back.
//
// Accepts:
//   cycle_atom, uint64_t generation      timer; stale generations are dropped
//   retry_atom, uint64_t generation      backoff over; write pending batches
//   tickets_atom                         durable records wait: cycle now
//   drain_atom, int64_t deadline_ms -> bool
//       final cycle (after ingest_state::close): collect everything, write
//       until nothing is pending or the deadline passes; true if all written.
// Sends: swap_atom / recycle_atom to the aggregators.
#pragma once

#include "actors/ingest.hpp"

#include <caf/fwd.hpp>

#include <string>
#include <vector>

namespace tally {

/// Spawns the writer as a detached actor (its Redis calls block).
caf::actor spawn_buffer_writer(caf::actor_system& sys, ingest_state& state,
                               std::vector<caf::actor> aggregators, std::string instance_id);

/// The idempotent stage-1 push (used again by producer retention):
/// KEYS[1] the batches list, KEYS[2] the batch's written-marker; ARGV[1]
/// the encoded batch, ARGV[2] the marker TTL in ms. Returns 1 when pushed,
/// 0 when the marker already existed (Redis still knows the batch).
extern const char* const stage1_push_script;
extern const char* const stage1_marker_ttl_ms;

/// The Redis key prefix `{tally:<ns>}` of a namespace.
std::string key_prefix(const std::string& ns);

} // namespace tally
