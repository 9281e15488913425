// actors/aggregator.hpp — one shard's aggregator.
//
// Accepts:
//   wake_atom                      a producer found the shard asleep: drain
//   swap_atom -> agg_map_ptr       drain the queue completely, hand over the
//                                  map of sums and continue on a fresh one
//   recycle_atom, agg_map_ptr      a cleared map back from the writer
// Sends: wake_atom to itself while its queue still holds events.
//
// The work is shard_aggregator's (shard_aggregator.hpp, with the invariant);
// this actor only turns messages into its calls.
#pragma once

#include "actors/ingest.hpp"

#include <caf/fwd.hpp>

namespace tally {

caf::actor spawn_aggregator(caf::actor_system& sys, ingest_state& state, shard& s);

} // namespace tally

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(tally::agg_map_ptr)
