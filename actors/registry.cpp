// actors/registry.cpp — see registry.hpp.
#include "actors/registry.hpp"

#include "core/log.hpp"

#include <caf/all.hpp>

#include <algorithm>

#include <unistd.h>

namespace tally {

const char* const tally_version = "0.1.0";

namespace {

struct registry_state {
  static inline const char* name = "registry";
  flush_context_ptr ctx;
  redis_link redis;
  std::string host;
  uint64_t timer_generation = 0;
  bool stopped = false;
  cluster_view last_view;   // reused for a second
  int64_t last_view_at = 0; // steady ms; 0 = none
};

using registry_actor = caf::stateful_actor<registry_state, caf::event_based_actor>;

std::string host_name() {
  char host[256] = {0};
  if (gethostname(host, sizeof host - 1) != 0)
    return "unknown";
  return host;
}

void beat(registry_actor* self) {
  auto& st = self->state;
  if (!st.redis.ensure())
    return;
  adapters::instance_record rec;
  rec.id = st.ctx->instance;
  rec.host = st.host;
  rec.pid = static_cast<uint64_t>(getpid());
  rec.version = tally_version;
  rec.started_ms = st.ctx->started_ms;
  rec.heartbeat_ms = wall_ms();
  rec.role = st.ctx->counters->lease_held.load() != 0 ? "leader"
             : st.ctx->cfg.postgres_url.empty()      ? "producer"
                                                     : "flusher";
  rec.active_db = st.redis.db_display();
  stats events;
  st.ctx->ingest->add_counters(events);
  rec.events_accepted = events.events_accepted;
  rec.epoch = rec.role == "leader" ? st.ctx->counters->epoch.load() : 0;
  auto r = st.redis.check(st.ctx->keys.heartbeat(*st.redis.client, rec, st.ctx->cfg.lease_ttl));
  if (!r) {
    TALLY_WARN("registry", "heartbeat failed: " << r.error().message);
    return;
  }
  // The stage-1 backlog for /metrics, read here so a scrape never talks to Redis.
  if (auto backlog = st.redis.check(st.ctx->keys.backlog(*st.redis.client))) {
    st.ctx->counters->redis_backlog_batches.store(static_cast<uint64_t>(*backlog));
    st.ctx->counters->redis_backlog_known.store(1);
  }
}

/// The lease value is `<instance>:<nonce>`; the nonce has no colon.
std::string holder_of(const std::string& lease_value) {
  auto colon = lease_value.rfind(':');
  return colon == std::string::npos ? lease_value : lease_value.substr(0, colon);
}

cluster_view read_cluster(registry_actor* self) {
  auto& st = self->state;
  cluster_view v;
  v.read_at_ms = wall_ms();
  if (!st.redis.ensure()) {
    v.error = "no healthy redis database";
    return v;
  }
  auto lease = st.redis.check(st.ctx->keys.lease_holder(*st.redis.client));
  if (!lease) {
    v.error = "reading the lease: " + lease.error().message;
    return v;
  }
  v.leader = holder_of(*lease);
  auto records = st.redis.check(st.ctx->keys.read_instances(*st.redis.client));
  if (!records) {
    v.error = "reading the registry: " + records.error().message;
    return v;
  }
  for (auto& r : *records) {
    instance_info i;
    i.id = std::move(r.id);
    i.host = std::move(r.host);
    i.pid = r.pid;
    i.version = std::move(r.version);
    i.started_ms = r.started_ms;
    i.heartbeat_age_ms = std::max<int64_t>(0, v.read_at_ms - r.heartbeat_ms);
    i.leader = !v.leader.empty() && i.id == v.leader;
    i.role = std::move(r.role);
    i.active_db = std::move(r.active_db);
    i.events_accepted = r.events_accepted;
    i.epoch = r.epoch;
    if (i.leader)
      v.epoch = i.epoch;
    v.instances.push_back(std::move(i));
  }
  return v;
}

caf::behavior registry_behavior(registry_actor* self, flush_context_ptr ctx) {
  auto& st = self->state;
  st.ctx = std::move(ctx);
  st.redis = redis_link(*st.ctx->fleet, "registry", st.ctx->cfg.redis_timeout);
  st.host = host_name();
  self->send(st.ctx->fleet->failover(), subscribe_atom::value);
  // The first heartbeat before any request: a cluster view asked for right
  // after start already lists this instance.
  beat(self);
  self->delayed_send(self, st.ctx->cfg.lease_ttl / 3, beat_atom::value, ++st.timer_generation);
  return {
    [=](beat_atom, uint64_t gen) {
      auto& s = self->state;
      if (gen != s.timer_generation || s.stopped)
        return;
      beat(self);
      self->delayed_send(self, s.ctx->cfg.lease_ttl / 3, beat_atom::value, ++s.timer_generation);
    },
    [=](active_atom, uint64_t) {
      // A leader on the new database must see this instance alive at once,
      // or it would take this instance's inflight list for an orphan's.
      if (!self->state.stopped)
        beat(self);
    },
    [=](cluster_atom, const cluster_reply& reply) {
      auto& s = self->state;
      int64_t now = steady_ms();
      if (s.last_view_at == 0 || now - s.last_view_at >= 1000 || !s.last_view.error.empty()) {
        s.last_view = read_cluster(self);
        s.last_view_at = now;
      }
      reply->set_value(s.last_view);
    },
    [=](fstop_atom) -> bool {
      auto& s = self->state;
      s.stopped = true;
      if (!s.redis.ensure())
        return false;
      return s.redis.check(s.ctx->keys.deregister(*s.redis.client, s.ctx->instance)).ok();
    },
  };
}

} // namespace

caf::actor spawn_registry(caf::actor_system& sys, flush_context_ptr ctx) {
  return sys.spawn<caf::detached>(registry_behavior, std::move(ctx));
}

} // namespace tally
