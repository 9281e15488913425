// actors/failover.cpp — see failover.hpp.
#include "actors/failover.hpp"

#include "actors/redis_health.hpp"
#include "core/backoff.hpp"
#include "core/log.hpp"

#include <caf/all.hpp>

#include <random>

namespace tally {

namespace {

using namespace std::chrono;

enum reason_index : int { by_health_check = 0, by_failure_detector, by_fail_back, by_operator, by_sentinel };

struct db_entry {
  fleet_db info;
  circuit_breaker breaker;
  caf::actor health;
  bool configured_at_start = false;  // may still take over during the startup window
};

struct failover_state {
  static inline const char* name = "failover";
  redis_fleet* fleet = nullptr;
  pipeline_counters* counters = nullptr;
  config cfg;
  health_settings health;
  breaker_settings breaker;
  std::vector<db_entry> dbs;
  int active = -1;
  uint64_t generation = 0;
  uint32_t next_id = 0;
  bool ever_switched = false;  // a real switch happened: startup choices are over
  bool had_active = false;     // some database was active once
  int64_t startup_until = 0;  // steady ms: first verdicts may still pick a better database
  std::vector<caf::actor> subscribers;
  uint64_t fallback_generation = 0;
  std::mt19937_64 rng{std::random_device{}()};
};

using failover_actor = caf::stateful_actor<failover_state, caf::event_based_actor>;

int64_t now_ms() {
  return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

/// The best closed database (ties: the first listed); with `better_than` >=
/// 0 only one whose weight is strictly above that database's; with
/// `startup_only` only one configured at start. -1 when there is none.
int best_closed(const std::vector<db_entry>& dbs, int better_than, bool startup_only = false) {
  int best = -1;
  for (size_t i = 0; i < dbs.size(); ++i) {
    const auto& d = dbs[i];
    if (d.breaker.state() != circuit_state::closed || (startup_only && !d.configured_at_start))
      continue;
    if (better_than >= 0 && d.info.spec.weight <= dbs[static_cast<size_t>(better_than)].info.spec.weight)
      continue;
    if (best < 0 || d.info.spec.weight > dbs[static_cast<size_t>(best)].info.spec.weight)
      best = static_cast<int>(i);
  }
  return best;
}

const char* display_of(const failover_state& st, int index) {
  return index >= 0 ? st.dbs[static_cast<size_t>(index)].info.spec.display.c_str() : "";
}

void publish(failover_actor* self) {
  auto& st = self->state;
  auto v = std::make_shared<fleet_view>();
  v->generation = st.generation;
  v->active = st.active;
  v->dbs.reserve(st.dbs.size());
  for (auto& d : st.dbs) {
    d.info.state = d.breaker.state();
    d.info.opens = d.breaker.opens();
    v->dbs.push_back(d.info);
  }
  st.fleet->publish(std::move(v));
}

/// Makes `to` active (index or -1) for `reason`; logs, counts, calls back,
/// tells the subscribers. `initial`: the first choice at startup, not a
/// switch anyone must hear about.
void switch_to(failover_actor* self, int to, int reason, const std::string& detail, bool initial = false) {
  auto& st = self->state;
  std::string from = display_of(st, st.active), target = display_of(st, to);
  // Counted before it is published: whoever sees the new active database
  // (status lines, TALLY.STATUS) sees the switch counted too.
  if (!initial)
    st.counters->redis_switches[reason].fetch_add(1, std::memory_order_relaxed);
  st.active = to;
  ++st.generation;
  publish(self);
  for (auto& s : st.subscribers)
    self->send(s, active_atom::value, st.generation);
  if (initial) {
    TALLY_INFO("failover", "active redis database: " << (to >= 0 ? target : std::string("none")));
    return;
  }
  const char* why = redis_switch_reasons[reason];
  if (to >= 0)
    TALLY_WARN("failover", "active redis database switched from " << (from.empty() ? "none" : from) << " to "
                                                                 << target << " (" << why << ": " << detail << ")");
  else
    TALLY_ERROR("failover", "no redis database is healthy (was " << from << "; " << why << ": " << detail
                                                                 << "): batches go to the local spill journal");
  if (st.cfg.on_redis_switch) {
    redis_switch ev{from, target, why, detail};
    st.cfg.on_redis_switch(ev);
  }
}

/// Re-evaluates the active database after circuit states changed. `cause`
/// is the reason a lost active database is reported under.
void reselect(failover_actor* self, int cause, const std::string& detail) {
  auto& st = self->state;
  bool starting = !st.ever_switched && now_ms() < st.startup_until;
  bool active_ok = st.active >= 0 && st.dbs[static_cast<size_t>(st.active)].breaker.state() == circuit_state::closed;
  if (active_ok) {
    // While the first verdicts come in, the best configured database (ties:
    // the first listed) may still take over: it merely answered its first
    // probe later. After that, and for databases an operator adds, only the
    // fail-back timer or an operator moves to a better one, with a counted
    // switch.
    int better = starting ? best_closed(st.dbs, -1, true) : -1;
    if (better >= 0 && better != st.active)
      switch_to(self, better, cause, detail, true);
    else
      publish(self);
    return;
  }
  int next = best_closed(st.dbs, -1);
  if (next == st.active) {
    publish(self);
    return;
  }
  bool initial = !st.had_active;  // nothing was active yet: the first choice, not a switch
  if (!initial)
    st.ever_switched = true;
  if (next >= 0)
    st.had_active = true;
  switch_to(self, next, cause, detail, initial);
}

int find_db(const failover_state& st, const std::string& url) {
  auto spec = adapters::parse_redis_database(url);
  for (size_t i = 0; i < st.dbs.size(); ++i) {
    const auto& d = st.dbs[i].info.spec;
    if (d.url == url || d.display == url || (spec && d.url == spec->url))
      return static_cast<int>(i);
  }
  return -1;
}

void add_db(failover_actor* self, adapters::redis_database_spec spec, bool at_start = false) {
  auto& st = self->state;
  db_entry e{fleet_db{}, circuit_breaker(st.breaker), caf::actor{}, at_start};
  e.info.id = st.next_id++;
  if (spec.type == adapters::redis_database_spec::kind::direct)
    e.info.endpoint = spec.endpoint;
  e.info.spec = spec;
  e.health = spawn_redis_health(self, e.info.id, std::move(spec), st.health);
  st.dbs.push_back(std::move(e));
}

void remove_at(failover_actor* self, size_t index) {
  auto& st = self->state;
  self->unlink_from(st.dbs[index].health);
  self->send_exit(st.dbs[index].health, caf::exit_reason::user_shutdown);
  int removed = static_cast<int>(index);
  st.dbs.erase(st.dbs.begin() + static_cast<long>(index));
  if (st.active > removed)
    --st.active;  // same database, new index: no switch
}

/// Operator rule: move to a strictly better closed database now.
void operator_reselect(failover_actor* self, const std::string& detail) {
  auto& st = self->state;
  int better = st.active >= 0 ? best_closed(st.dbs, st.active) : best_closed(st.dbs, -1);
  if (better >= 0 && better != st.active) {
    st.ever_switched = true;
    st.had_active = true;
    switch_to(self, better, by_operator, detail);
  } else {
    publish(self);
  }
}

std::string remove_db(failover_actor* self, const std::string& url) {
  auto& st = self->state;
  int at = find_db(st, url);
  if (at < 0)
    return "no such database: " + url;
  if (st.dbs.size() == 1)
    return "cannot remove the last redis database";
  if (at == st.active) {
    // Switch away first, so no write is aimed at a database being removed.
    int next = -1;
    for (size_t i = 0; i < st.dbs.size(); ++i) {
      if (static_cast<int>(i) == at || st.dbs[i].breaker.state() != circuit_state::closed)
        continue;
      if (next < 0 || st.dbs[i].info.spec.weight > st.dbs[static_cast<size_t>(next)].info.spec.weight)
        next = static_cast<int>(i);
    }
    if (next < 0)
      return "cannot remove the active database " + st.dbs[static_cast<size_t>(at)].info.spec.display
             + ": no other database is healthy to switch to";
    st.ever_switched = true;
    switch_to(self, next, by_operator, "removing " + st.dbs[static_cast<size_t>(at)].info.spec.display);
  }
  TALLY_INFO("failover", "redis database removed: " << st.dbs[static_cast<size_t>(at)].info.spec.display);
  remove_at(self, static_cast<size_t>(at));
  publish(self);
  return {};
}

std::string add_db_checked(failover_actor* self, const std::string& url, uint32_t weight) {
  auto& st = self->state;
  auto spec = adapters::parse_redis_database(url);
  if (!spec)
    return spec.error().message;
  if (weight != 0)
    spec->weight = weight;
  if (weight > 1000000)
    return "weight must be between 1 and 1000000";
  if (find_db(st, spec->url) >= 0)
    return "database already configured: " + spec->display;
  TALLY_INFO("failover", "redis database added: " << spec->display << " (weight " << spec->weight << ")");
  add_db(self, std::move(*spec));
  publish(self);
  return {};
}

void arm_fallback(failover_actor* self) {
  auto& st = self->state;
  if (st.cfg.auto_fallback_interval.count() <= 0)
    return;
  auto delay = jittered(st.cfg.auto_fallback_interval, 0.1, st.rng());
  self->delayed_send(self, delay, fallback_atom::value, ++st.fallback_generation);
}

caf::behavior failover_behavior(failover_actor* self, config cfg, redis_fleet* fleet, pipeline_counters* counters) {
  auto& st = self->state;
  st.fleet = fleet;
  st.counters = counters;
  st.cfg = std::move(cfg);
  st.health.interval = st.cfg.health_check_interval;
  st.health.probes = st.cfg.health_check_probes;
  st.health.probe_delay = st.cfg.health_check_probe_delay;
  st.health.timeout = st.cfg.health_check_timeout;
  parse_probe_policy(st.cfg.health_check_policy, st.health.policy);  // validated at start
  st.breaker.grace_period = st.cfg.grace_period;
  st.breaker.failure_window = st.cfg.failure_window;
  st.breaker.min_failures = st.cfg.failure_min_failures;
  st.breaker.failure_rate = st.cfg.failure_rate_percent / 100.0;
  st.startup_until = now_ms()
                     + (st.health.timeout + st.health.probe_delay).count() * st.health.probes + 500;
  for (const auto& url : st.cfg.redis_urls)
    if (auto spec = adapters::parse_redis_database(url))
      add_db(self, std::move(*spec), true);
  publish(self);
  arm_fallback(self);
  self->set_down_handler([=](caf::down_msg& dm) {
    auto& subs = self->state.subscribers;
    subs.erase(std::remove_if(subs.begin(), subs.end(), [&](const caf::actor& a) { return a.address() == dm.source; }),
               subs.end());
  });
  return {
    [=](probe_atom, uint32_t db, bool healthy, std::string& why, std::string& host, int32_t port) {
      auto& s = self->state;
      auto it = std::find_if(s.dbs.begin(), s.dbs.end(), [&](const db_entry& d) { return d.info.id == db; });
      if (it == s.dbs.end())
        return;  // removed meanwhile
      int index = static_cast<int>(it - s.dbs.begin());
      auto& d = *it;
      d.info.last_error = healthy ? std::string() : why;
      bool moved = false;
      if (!host.empty() && (!d.info.endpoint || d.info.endpoint->host != host || d.info.endpoint->port != port)) {
        bool had = d.info.endpoint.has_value();
        adapters::redis_endpoint ep = d.info.spec.endpoint;
        ep.host = host;
        ep.port = port;
        d.info.endpoint = ep;
        moved = had;
        if (had)
          TALLY_WARN("failover", "redis database " << d.info.spec.display << " moved to " << host << ":" << port
                                                  << " (sentinel failover)");
      }
      auto before = d.breaker.state();
      d.breaker.on_health_check(now_ms(), healthy);
      if (before != d.breaker.state() && d.breaker.state() != circuit_state::closed)
        TALLY_WARN("failover", "redis database " << d.info.spec.display << " is " << to_string(d.breaker.state())
                                                << (healthy ? std::string() : ": " + why));
      else if (before != d.breaker.state())
        TALLY_INFO("failover", "redis database " << d.info.spec.display << " is closed (healthy)");
      if (moved && index == s.active && d.breaker.state() == circuit_state::closed) {
        s.ever_switched = true;
        switch_to(self, index, by_sentinel, d.info.spec.display + " now at " + host + ":" + std::to_string(port));
        return;
      }
      reselect(self, by_health_check, healthy ? "health check passed" : why);
    },
    [=](cmd_atom, uint32_t db, bool ok) {
      auto& s = self->state;
      auto it = std::find_if(s.dbs.begin(), s.dbs.end(), [&](const db_entry& d) { return d.info.id == db; });
      if (it == s.dbs.end())
        return;
      if (it->breaker.on_command(now_ms(), ok)) {
        TALLY_WARN("failover", "redis database " << it->info.spec.display << " is " << to_string(it->breaker.state())
                                                << ": failure detector tripped");
        reselect(self, by_failure_detector, "commands failing on " + it->info.spec.display);
      }
    },
    [=](subscribe_atom) {
      auto who = caf::actor_cast<caf::actor>(self->current_sender());
      if (!who)
        return;
      self->monitor(who);
      self->state.subscribers.push_back(who);
      self->send(who, active_atom::value, self->state.generation);
    },
    [=](fallback_atom, uint64_t gen) {
      auto& s = self->state;
      if (gen != s.fallback_generation)
        return;
      int better = s.active >= 0 ? best_closed(s.dbs, s.active) : -1;
      if (better >= 0) {
        s.ever_switched = true;
        switch_to(self, better, by_fail_back,
                  "weight " + std::to_string(s.dbs[static_cast<size_t>(better)].info.spec.weight) + " > "
                    + std::to_string(s.dbs[static_cast<size_t>(s.active)].info.spec.weight));
      }
      arm_fallback(self);
    },
    [=](dbadd_atom, std::string& url, uint32_t weight) -> std::string { return add_db_checked(self, url, weight); },
    [=](dbremove_atom, std::string& url) -> std::string { return remove_db(self, url); },
    [=](dbweight_atom, std::string& url, uint32_t weight) -> std::string {
      auto& s = self->state;
      if (weight < 1 || weight > 1000000)
        return "weight must be between 1 and 1000000";
      int at = find_db(s, url);
      if (at < 0)
        return "no such database: " + url;
      s.dbs[static_cast<size_t>(at)].info.spec.weight = weight;
      TALLY_INFO("failover", "redis database " << s.dbs[static_cast<size_t>(at)].info.spec.display << " weight "
                                               << weight);
      operator_reselect(self, "weight of " + s.dbs[static_cast<size_t>(at)].info.spec.display + " set to "
                                + std::to_string(weight));
      // A lower weight of the active database: the next fail-back moves on.
      return std::string();
    },
    [=](dbpromote_atom, std::string& url) -> std::string {
      auto& s = self->state;
      int at = find_db(s, url);
      if (at < 0)
        return "no such database: " + url;
      auto& d = s.dbs[static_cast<size_t>(at)];
      if (d.breaker.state() != circuit_state::closed)
        return "cannot promote " + d.info.spec.display + ": its circuit is " + to_string(d.breaker.state())
               + (d.info.last_error.empty() ? std::string() : " (" + d.info.last_error + ")");
      uint32_t top = 0;
      for (size_t i = 0; i < s.dbs.size(); ++i)
        if (static_cast<int>(i) != at)
          top = std::max(top, s.dbs[i].info.spec.weight);
      if (d.info.spec.weight <= top)
        d.info.spec.weight = std::min<uint32_t>(top + 1, 1000000);
      if (at != s.active) {
        s.ever_switched = true;
        s.had_active = true;
        switch_to(self, at, by_operator, "promote " + d.info.spec.display);
      } else {
        publish(self);
      }
      return std::string();
    },
    [=](dbset_atom, std::vector<std::string>& urls) -> std::string {
      auto& s = self->state;
      std::vector<adapters::redis_database_spec> wanted;
      for (const auto& url : urls) {
        auto spec = adapters::parse_redis_database(url);
        if (!spec)
          return spec.error().message;
        wanted.push_back(std::move(*spec));
      }
      if (wanted.empty())
        return "at least one redis database is needed";
      // All or nothing: the one removal that can be refused (the active
      // database, with no database the new list keeps healthy to switch
      // to) is checked before anything changes, and done last, so its
      // switch goes to a database the new list keeps. Then additions and
      // weights.
      std::vector<std::string> gone;
      for (const auto& d : s.dbs)
        if (std::none_of(wanted.begin(), wanted.end(), [&](const auto& w) { return w.url == d.info.spec.url; }))
          gone.push_back(d.info.spec.url);
      auto is_gone = [&](const std::string& url) { return std::find(gone.begin(), gone.end(), url) != gone.end(); };
      if (s.active >= 0 && is_gone(s.dbs[static_cast<size_t>(s.active)].info.spec.url)) {
        const auto& active = s.dbs[static_cast<size_t>(s.active)].info.spec;
        if (std::none_of(s.dbs.begin(), s.dbs.end(), [&](const db_entry& d) {
              return d.breaker.state() == circuit_state::closed && !is_gone(d.info.spec.url);
            }))
          return "cannot remove the active database " + active.display
                 + ": no database the new list keeps is healthy to switch to";
        std::stable_partition(gone.begin(), gone.end(), [&](const std::string& url) { return url != active.url; });
      }
      for (const auto& w : wanted)
        if (find_db(s, w.url) < 0)
          add_db(self, w);
      for (const auto& url : gone)
        if (auto err = remove_db(self, url); !err.empty())
          return err;
      bool reweighted = false;
      for (const auto& w : wanted) {
        int at = find_db(s, w.url);
        if (at >= 0 && s.dbs[static_cast<size_t>(at)].info.spec.weight != w.weight) {
          s.dbs[static_cast<size_t>(at)].info.spec.weight = w.weight;
          reweighted = true;
        }
      }
      if (reweighted)
        operator_reselect(self, "configuration reloaded");
      else
        publish(self);
      return std::string();
    },
  };
}

} // namespace

caf::actor spawn_failover(caf::actor_system& sys, const config& cfg, redis_fleet& fleet, pipeline_counters& counters) {
  auto a = sys.spawn(failover_behavior, cfg, &fleet, &counters);
  fleet.set_failover(a);
  return a;
}

} // namespace tally
