// actors/pruner.cpp — see pruner.hpp.
#include "actors/pruner.hpp"

#include "actors/stage2_io.hpp"
#include "adapters/flush_sql.hpp"
#include "core/log.hpp"

#include <caf/all.hpp>

namespace tally {

namespace {

using namespace std::chrono;

struct pruner_state {
  static inline const char* name = "pruner";
  flush_context_ptr ctx;
  pg_link pg;
  bool leading = false;
  bool running = false;       // a run is between its first and its last batch
  long pruned_this_run = 0;
  uint64_t timer_generation = 0;
};

using pruner_actor = caf::stateful_actor<pruner_state, caf::event_based_actor>;

void schedule(pruner_actor* self, milliseconds delay) {
  self->delayed_send(self, delay, prune_atom::value, ++self->state.timer_generation);
}

/// One batch; arms the timer for the next batch or the next run.
void prune_batch(pruner_actor* self) {
  auto& st = self->state;
  if (!st.leading) {
    st.running = false;
    return;  // the next lead_atom starts again
  }
  if (!st.ctx->lease_valid()) {
    schedule(self, seconds(1));  // a renewal is late; the lease actor decides
    return;
  }
  std::string why;
  if (!st.pg.ensure(*st.ctx, "pruner", why)) {
    schedule(self, prune_retry);
    return;
  }
  auto started = steady_clock::now();
  auto deleted = adapters::prune_applied_batches(*st.pg.client, st.ctx->cfg.pg_schema,
                                                 st.ctx->cfg.applied_retention, adapters::prune_batch_ids,
                                                 adapters::prune_statement_timeout);
  if (!deleted) {
    TALLY_WARN("pruner", "pruning applied batch ids failed (retrying in "
                           << duration_cast<seconds>(prune_retry).count() << " s): " << deleted.error().message);
    schedule(self, prune_retry);
    return;
  }
  st.pruned_this_run += *deleted;
  if (*deleted >= adapters::prune_batch_ids) {
    st.running = true;
    schedule(self, adapters::prune_rest(duration_cast<milliseconds>(steady_clock::now() - started)));
    return;
  }
  if (st.pruned_this_run > 0)
    TALLY_INFO("pruner", "pruned " << st.pruned_this_run << " applied batch ids older than "
                                   << st.ctx->cfg.applied_retention.count() << "h");
  st.pruned_this_run = 0;
  st.running = false;
  schedule(self, prune_period);
}

caf::behavior pruner_behavior(pruner_actor* self, flush_context_ptr ctx) {
  self->state.ctx = std::move(ctx);
  return {
    [=](lead_atom, uint64_t) {
      auto& st = self->state;
      st.leading = true;
      if (!st.running) {
        st.running = true;
        schedule(self, milliseconds(0));
      }
    },
    [=](follow_atom) { self->state.leading = false; },
    [=](prune_atom, uint64_t gen) {
      if (gen == self->state.timer_generation)
        prune_batch(self);
    },
  };
}

} // namespace

caf::actor spawn_pruner(caf::event_based_actor* supervisor, flush_context_ptr ctx) {
  return supervisor->spawn<caf::linked + caf::detached>(pruner_behavior, std::move(ctx));
}

} // namespace tally
