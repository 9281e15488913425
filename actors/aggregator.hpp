// actors/aggregator.hpp — one shard's aggregator.
//
// Accepts:
//   wake_atom                      a producer found the shard asleep: drain
//   swap_atom -> agg_map_ptr       drain the queue completely, hand over the
//                                  map of sums and continue on a fresh one
//   recycle_atom, agg_map_ptr      a cleared map back from the writer
// Sends: wake_atom to itself while its queue still holds events.
//
// Invariant: every event dequeued is in exactly one map that reaches the
// writer. Draining pauses (and producers see backpressure once the queue is
// full) while the map holds max_keys_per_shard keys; the next swap resumes it.
#pragma once

#include "actors/ingest.hpp"

#include <caf/fwd.hpp>

namespace tally {

caf::actor spawn_aggregator(caf::actor_system& sys, ingest_state& state, shard& s);

} // namespace tally

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(tally::agg_map_ptr)
