// actors/redis_health.cpp — see redis_health.hpp.
#include "actors/redis_health.hpp"

#include "adapters/redis_sentinel.hpp"
#include "core/failpoint.hpp"

#include <caf/all.hpp>

#include <optional>

namespace tally {

namespace {

using namespace std::chrono;

struct health_state {
  static inline const char* name = "redis_health";
  uint32_t db = 0;
  adapters::redis_database_spec spec;
  health_settings settings;
  caf::actor failover;
  std::optional<adapters::redis_endpoint> endpoint;  // where the probes go
  std::optional<adapters::redis_client> client;
  std::optional<probe_round> round;
  uint64_t round_id = 0;
  std::string why;  // the round's first failure
  bool first_round_done = false;
};

using health_actor = caf::stateful_actor<health_state, caf::event_based_actor>;

bool same_address(const adapters::redis_endpoint& a, const adapters::redis_endpoint& b) {
  return a.host == b.host && a.port == b.port;
}

/// One PING on the probe connection (connecting first if needed).
bool probe_once(health_state& st, std::string& why) {
  if (!st.endpoint) {
    why = "not resolved";
    return false;
  }
  if (!st.client || !st.client->connected()) {
    st.client.reset();
    auto c = adapters::redis_client::connect(*st.endpoint, st.settings.timeout);
    if (!c) {
      why = c.error().message;
      return false;
    }
    st.client.emplace(std::move(*c));
  }
  auto r = st.client->command({"PING"});
  if (!r) {
    why = r.error().message;
    st.client.reset();
    return false;
  }
  return true;
}

void finish_round(health_actor* self) {
  auto& st = self->state;
  bool healthy = st.round->healthy();
  std::string host = st.endpoint ? st.endpoint->host : std::string();
  int32_t port = st.endpoint ? st.endpoint->port : 0;
  self->send(st.failover, probe_atom::value, st.db, healthy, healthy ? std::string() : st.why, host, port);
  st.round.reset();
  self->delayed_send(self, st.settings.interval, hprobe_atom::value, ++st.round_id, uint32_t{0});
}

void start_round(health_actor* self) {
  auto& st = self->state;
  TALLY_FAILPOINT("health_before_round");  // tests hold back a verdict here (pause mode)
  // The first round judges a database nothing is known about yet: one probe
  // decides, so a starting instance has its active database at once.
  st.round.emplace(st.settings.policy, st.first_round_done ? st.settings.probes : 1);
  st.first_round_done = true;
  st.why.clear();
  if (st.spec.type == adapters::redis_database_spec::kind::sentinel) {
    // Ask the Sentinels every round: a failover moves the primary, and the
    // old address may still answer (as a replica) for a while.
    auto primary = adapters::resolve_sentinel_primary(st.spec, st.settings.timeout);
    if (!primary) {
      st.why = primary.error().message;
      st.endpoint.reset();
      st.client.reset();
      while (!st.round->decided())
        st.round->add(false);
      finish_round(self);
      return;
    }
    if (!st.endpoint || !same_address(*st.endpoint, *primary)) {
      st.endpoint = *primary;
      st.client.reset();
    }
  }
}

caf::behavior health_behavior(health_actor* self, caf::actor failover, uint32_t db,
                              adapters::redis_database_spec spec, health_settings settings) {
  auto& st = self->state;
  st.failover = std::move(failover);
  st.db = db;
  st.spec = std::move(spec);
  st.settings = settings;
  if (st.spec.type == adapters::redis_database_spec::kind::direct)
    st.endpoint = st.spec.endpoint;
  self->send(self, hprobe_atom::value, st.round_id, uint32_t{0});
  return {
    [=](hprobe_atom, uint64_t round, uint32_t probe) {
      auto& s = self->state;
      if (round != s.round_id)
        return;
      if (probe == 0) {
        start_round(self);
        if (!s.round)
          return;  // decided while resolving
      }
      std::string why;
      bool ok = probe_once(s, why);
      if (!ok && s.why.empty())
        s.why = why;
      s.round->add(ok);
      if (s.round->decided())
        finish_round(self);
      else
        self->delayed_send(self, s.settings.probe_delay, hprobe_atom::value, round, probe + 1);
    },
  };
}

} // namespace

caf::actor spawn_redis_health(caf::event_based_actor* failover, uint32_t db, adapters::redis_database_spec spec,
                              health_settings settings) {
  return failover->spawn<caf::linked + caf::detached>(health_behavior, caf::actor_cast<caf::actor>(failover), db,
                                                      std::move(spec), settings);
}

} // namespace tally
