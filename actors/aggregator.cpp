// actors/aggregator.cpp — see aggregator.hpp.
#include "actors/aggregator.hpp"

#include "actors/atoms.hpp"
#include "actors/shard_aggregator.hpp"

#include <caf/all.hpp>

namespace tally {

namespace {

struct aggregator_state {
  static inline const char* name = "aggregator";
  std::unique_ptr<shard_aggregator> core;
};

using aggregator_actor = caf::stateful_actor<aggregator_state>;

caf::behavior aggregator(aggregator_actor* self, ingest_state* ingest, shard* home) {
  self->state.core = std::make_unique<shard_aggregator>(ingest->cfg, *home);
  return {
    [=](wake_atom) {
      // Another turn is a message to itself, so swaps and other actors on
      // this worker get their turn in between.
      auto r = self->state.core->turn();
      if (r == shard_aggregator::turn_result::more)
        self->send(self, wake_atom::value);
      else if (r == shard_aggregator::turn_result::paused)
        ingest->request_swap();
    },
    [=](swap_atom) -> agg_map_ptr {
      auto& core = *self->state.core;
      auto full = core.swap();
      if (core.needs_turn())
        self->send(self, wake_atom::value);
      return full;
    },
    [=](recycle_atom, agg_map_ptr& map) { self->state.core->recycle(std::move(map)); },
  };
}

} // namespace

caf::actor spawn_aggregator(caf::actor_system& sys, ingest_state& state, shard& s) {
  return sys.spawn(aggregator, &state, &s);
}

} // namespace tally
