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
  bool turn_due = false;  // a wake_atom to ourselves is on its way: send no second one
};

using aggregator_actor = caf::stateful_actor<aggregator_state>;

/// Schedules the next turn unless one is due already (one chain of turns,
/// however a swap and a turn interleave).
void schedule_turn(aggregator_actor* self, caf::timespan delay) {
  if (self->state.turn_due)
    return;
  self->state.turn_due = true;
  if (delay.count() == 0)
    self->send(self, wake_atom::value);
  else
    self->delayed_send(self, delay, wake_atom::value);
}

caf::behavior aggregator(aggregator_actor* self, ingest_state* ingest, shard* home) {
  self->state.core = std::make_unique<shard_aggregator>(ingest->cfg, *home);
  return {
    [=](wake_atom) {
      // From a producer (we were asleep: nothing was due) or from ourselves.
      self->state.turn_due = false;
      // Another turn is a message to itself, so swaps and other actors on
      // this worker get their turn in between.
      switch (self->state.core->turn()) {
        case shard_aggregator::turn_result::more:
          schedule_turn(self, caf::timespan{0});
          break;
        case shard_aggregator::turn_result::linger:
          schedule_turn(self, shard_aggregator::linger_interval);
          break;
        case shard_aggregator::turn_result::paused:
          ingest->request_swap();
          break;
        case shard_aggregator::turn_result::asleep:
          break;
      }
    },
    [=](swap_atom) -> agg_map_ptr {
      auto& core = *self->state.core;
      auto full = core.swap();
      if (core.needs_turn())
        schedule_turn(self, caf::timespan{0});
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
