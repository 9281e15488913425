// actors/lease.cpp — see lease.hpp.
#include "actors/lease.hpp"

#include "actors/stage2_io.hpp"
#include "adapters/flush_sql.hpp"
#include "core/failpoint.hpp"
#include "core/log.hpp"

#include <caf/all.hpp>

#include <cstdio>
#include <random>
#include <thread>

namespace tally {

namespace {

using namespace std::chrono;

struct lease_state {
  static inline const char* name = "lease";
  flush_context_ptr ctx;
  caf::actor supervisor;
  std::string value;  // <instance>:<nonce> while held or being taken
  bool held = false;
  bool released = false;  // stop path: no more attempts
  uint64_t epoch = 0;
  uint64_t timer_generation = 0;
  int64_t cooldown_until = 0;  // steady ms; after a fence, let others lead
  redis_link redis;
  pg_link pg;
  std::mt19937_64 rng{std::random_device{}()};
};

using lease_actor = caf::stateful_actor<lease_state, caf::event_based_actor>;

void schedule(lease_actor* self, milliseconds delay) {
  self->delayed_send(self, delay, renew_atom::value, ++self->state.timer_generation);
}

void report(lease_actor* self) {
  auto& st = self->state;
  st.ctx->counters->lease_held.store(st.held ? 1 : 0);
  if (st.held)
    st.ctx->counters->epoch.store(st.epoch);
  self->send(st.supervisor, lease_atom::value, st.held, st.epoch);
}

void lose(lease_actor* self, const std::string& why) {
  auto& st = self->state;
  // First stop the flusher's transactions (shared deadline), then tell it.
  st.ctx->lease_valid_until.store(0, std::memory_order_release);
  if (!st.held)
    return;
  st.held = false;
  TALLY_WARN("lease", "lease lost (epoch " << st.epoch << "): " << why);
  report(self);
}

/// Compare-and-delete; true when it was ours and is gone (or not ours).
bool release(lease_actor* self) {
  auto& st = self->state;
  bool was_held = st.held;
  st.ctx->lease_valid_until.store(0, std::memory_order_release);
  st.held = false;
  bool done = false;
  if (!st.value.empty() && st.redis.ensure()) {
    auto r = st.redis.check(st.ctx->keys.release_lease(*st.redis.client, st.value));
    done = r.ok();
    if (!r.ok())
      TALLY_WARN("lease", "release failed (" << r.error().message << "); it expires after lease_ttl");
  }
  if (was_held) {
    TALLY_INFO("lease", "lease released (epoch " << st.epoch << ")");
    report(self);
  }
  return done;
}

/// One attempt to take the lease and a new epoch. True when held after it.
bool try_acquire(lease_actor* self) {
  auto& st = self->state;
  auto& cfg = st.ctx->cfg;
  if (!st.redis.ensure())
    return false;
  char nonce[17];
  std::snprintf(nonce, sizeof nonce, "%016llx", static_cast<unsigned long long>(st.rng()));
  std::string value = st.ctx->instance + ":" + nonce;
  int64_t sent = steady_ms();
  auto r = st.redis.check(st.ctx->keys.acquire_lease(*st.redis.client, value, cfg.lease_ttl));
  if (!r) {
    TALLY_WARN("lease", "lease attempt failed: " << r.error().message);
    return false;
  }
  if (!*r)
    return false;  // someone else leads
  st.value = value;
  TALLY_FAILPOINT("lease_after_acquire");
  std::string why;
  if (!st.pg.ensure(*st.ctx, "lease", why)) {
    TALLY_WARN("lease", "took the redis lease but cannot reach postgres for an epoch; releasing it");
    release(self);
    return false;
  }
  auto epoch = adapters::take_epoch(*st.pg.client, cfg.pg_schema, cfg.ns, value, cfg.lock_timeout);
  if (!epoch) {
    TALLY_WARN("lease", "cannot take a fencing epoch (" << epoch.error().message << " [" << epoch.error().sqlstate
                                                       << "]); releasing the lease");
    if (epoch.error().code == static_cast<int>(adapters::pg_errc::connection_lost))
      st.pg.client.reset();
    release(self);
    return false;
  }
  // The epoch is committed; renew at once so the whole TTL is ahead of us.
  sent = steady_ms();
  auto renewed = st.redis.check(st.ctx->keys.renew_lease(*st.redis.client, st.value, cfg.lease_ttl));
  if (!renewed || !*renewed) {
    TALLY_WARN("lease", "lease expired while taking epoch " << *epoch << "; trying again later");
    release(self);
    return false;
  }
  st.epoch = *epoch;
  st.held = true;
  st.ctx->lease_valid_until.store(sent + cfg.lease_ttl.count(), std::memory_order_release);
  TALLY_INFO("lease", "lease acquired by " << st.ctx->instance << ", epoch " << st.epoch);
  report(self);
  return true;
}

void renew(lease_actor* self) {
  auto& st = self->state;
  int64_t sent = steady_ms();
  std::string failure;
  if (st.redis.ensure()) {
    auto r = st.redis.check(st.ctx->keys.renew_lease(*st.redis.client, st.value, st.ctx->cfg.lease_ttl));
    if (r && *r) {
      st.ctx->lease_valid_until.store(sent + st.ctx->cfg.lease_ttl.count(), std::memory_order_release);
      return;
    }
    if (r) {
      lose(self, "the lease key is gone or belongs to another instance");
      return;
    }
    failure = r.error().message;
  } else {
    failure = "redis unreachable";
  }
  // Not answered: still ours until the last renewal's deadline (minus margin).
  if (!st.ctx->lease_valid())
    lose(self, "could not renew before expiry (" + failure + ")");
  else
    TALLY_WARN("lease", "renewal failed (" << failure << "); retrying");
}

void tick(lease_actor* self) {
  auto& st = self->state;
  if (st.released)
    return;
  auto third = st.ctx->cfg.lease_ttl / 3;
  if (st.held) {
    renew(self);
    // After a failed renewal retry sooner: the deadline is closer.
    schedule(self, st.held && st.ctx->lease_valid() ? third : milliseconds(50));
    return;
  }
  if (steady_ms() >= st.cooldown_until)
    try_acquire(self);
  schedule(self, third);
}

caf::behavior lease_behavior(lease_actor* self, flush_context_ptr ctx, caf::actor supervisor) {
  auto& st = self->state;
  st.ctx = std::move(ctx);
  st.supervisor = std::move(supervisor);
  st.redis = redis_link(*st.ctx->fleet, "lease", st.ctx->cfg.redis_timeout);
  self->send(st.ctx->fleet->failover(), subscribe_atom::value);
  self->send(self, renew_atom::value, st.timer_generation);
  return {
    [=](renew_atom, uint64_t gen) {
      if (gen == self->state.timer_generation)
        tick(self);
    },
    [=](acquire_atom) -> uint64_t {
      auto& s = self->state;
      // A stop right after the start (the last instance stopping drains
      // what is left) must not find "no healthy database" only because the
      // first health checks have not answered yet: wait for their verdict,
      // bounded by one probe timeout and a margin.
      s.ctx->fleet->await_first_verdicts(std::chrono::steady_clock::now() + s.ctx->cfg.health_check_timeout
                                         + milliseconds(1000));  // detached actor: its own thread
      if (!s.held && !s.released)
        try_acquire(self);
      return s.held ? s.epoch : 0;
    },
    [=](release_atom) -> bool {
      auto& s = self->state;
      s.released = true;
      ++s.timer_generation;
      return release(self);
    },
    [=](active_atom, uint64_t) {
      // The lease lives in the active database: after a switch it must be
      // taken there (a new epoch; Postgres fences the old one). Until then
      // nobody flushes from this instance.
      auto& s = self->state;
      if (s.released)
        return;
      if (s.held) {
        if (s.redis.db() == s.ctx->fleet->view()->active_db_id())
          return;
        lose(self, "the active redis database changed");
      } else if (steady_ms() < s.cooldown_until) {
        return;
      }
      // A database became active (at start, or after a switch): try at once
      // rather than at the next tick, a third of lease_ttl away.
      try_acquire(self);
    },
    [=](drop_atom) {
      auto& s = self->state;
      if (!s.held)
        return;
      release(self);
      // Another instance has a newer epoch: let it lead for a while.
      s.cooldown_until = steady_ms() + s.ctx->cfg.lease_ttl.count();
    },
  };
}

} // namespace

caf::actor spawn_lease(caf::event_based_actor* supervisor, flush_context_ptr ctx) {
  return supervisor->spawn<caf::linked + caf::detached>(lease_behavior, std::move(ctx),
                                                        caf::actor_cast<caf::actor>(supervisor));
}

} // namespace tally
