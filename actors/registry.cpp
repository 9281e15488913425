// actors/registry.cpp — see registry.hpp.
#include "actors/registry.hpp"

#include "actors/stage2_io.hpp"
#include "core/log.hpp"

#include <caf/all.hpp>

namespace tally {

namespace {

struct registry_state {
  static inline const char* name = "registry";
  flush_context_ptr ctx;
  redis_link redis;
  uint64_t timer_generation = 0;
  bool stopped = false;
};

using registry_actor = caf::stateful_actor<registry_state, caf::event_based_actor>;

void beat(registry_actor* self) {
  auto& st = self->state;
  if (!st.redis.ensure(*st.ctx, "registry"))
    return;
  auto r = st.redis.client->pipeline(
    {{"SET", st.ctx->key("instance:" + st.ctx->instance), std::to_string(wall_ms()), "PX",
      std::to_string(st.ctx->cfg.lease_ttl.count())},
     {"SADD", st.ctx->key("instances"), st.ctx->instance}});
  if (!r) {
    st.redis.client.reset();
    TALLY_WARN("registry", "heartbeat failed: " << r.error().message);
  }
}

caf::behavior registry_behavior(registry_actor* self, flush_context_ptr ctx) {
  self->state.ctx = std::move(ctx);
  self->send(self, beat_atom::value, uint64_t{0});
  return {
    [=](beat_atom, uint64_t gen) {
      auto& st = self->state;
      if (gen != st.timer_generation || st.stopped)
        return;
      beat(self);
      self->delayed_send(self, st.ctx->cfg.lease_ttl / 3, beat_atom::value, ++st.timer_generation);
    },
    [=](fstop_atom) -> bool {
      auto& st = self->state;
      st.stopped = true;
      if (!st.redis.ensure(*st.ctx, "registry"))
        return false;
      auto r = st.redis.client->pipeline({{"DEL", st.ctx->key("instance:" + st.ctx->instance)},
                                          {"SREM", st.ctx->key("instances"), st.ctx->instance}});
      return r.ok();
    },
  };
}

} // namespace

caf::actor spawn_registry(caf::event_based_actor* supervisor, flush_context_ptr ctx) {
  return supervisor->spawn<caf::linked + caf::detached>(registry_behavior, std::move(ctx));
}

} // namespace tally
