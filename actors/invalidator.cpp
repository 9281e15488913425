// actors/invalidator.cpp — see invalidator.hpp.
#include "actors/invalidator.hpp"

#include "core/invalidation.hpp"
#include "core/log.hpp"

#include <caf/all.hpp>

namespace tally {

namespace {

using namespace std::chrono;
using poll_atom = caf::atom_constant<caf::atom("poll")>;

constexpr milliseconds read_slice{100};
constexpr milliseconds retry_delay{200};

struct invalidator_state {
  static inline const char* name = "invalidator";
  flush_context_ptr ctx;
  read_cache* cache = nullptr;
  redis_link link;
  bool subscribed = false;
  std::string channel;
  std::string own_prefix;  // "<instance>:": our batch ids
  // The last message applied: (leader, epoch, seq); empty leader: none yet.
  std::string leader;
  uint64_t epoch = 0;
  uint64_t seq = 0;
};

using invalidator_actor = caf::stateful_actor<invalidator_state>;

void unsubscribed(invalidator_state& st, const std::string& why) {
  if (st.subscribed)
    TALLY_WARN("invalidator", "read cache off until subscribed again: " << why);
  st.subscribed = false;
  if (st.cache->enabled())
    st.cache->set_enabled(false);
}

void apply(invalidator_state& st, const adapters::redis_reply& r) {
  // ["message", channel, payload]
  if (r.type != adapters::redis_reply::kind::array || r.elements.size() != 3 || r.elements[0].str != "message")
    return;
  invalidation_message m;
  std::string why;
  auto& counters = st.cache->counters();
  counters.last_invalidation_ms.store(wall_ms(), std::memory_order_relaxed);
  if (!decode_invalidation(r.elements[2].str, m, why)) {
    TALLY_WARN("invalidator", "unreadable invalidation (" << why << "): dropping the whole read cache");
    st.cache->invalidate_all();
    st.leader.clear();
    return;
  }
  bool next = !st.leader.empty() && m.leader == st.leader && m.epoch == st.epoch && m.seq == st.seq + 1;
  bool first = st.leader.empty();
  // The first message after subscribing: the subscription already dropped
  // everything, and nothing before it could be missed since then.
  if (!next && !first) {
    TALLY_INFO("invalidator", "invalidation gap (" << st.leader << " epoch " << st.epoch << " #" << st.seq
                              << ", then " << m.leader << " epoch " << m.epoch << " #" << m.seq
                              << "): dropping the whole read cache");
    st.cache->invalidate_all();
  }
  st.leader = m.leader;
  st.epoch = m.epoch;
  st.seq = m.seq;
  std::vector<std::string> own;
  for (auto& id : m.batch_ids)
    if (id.compare(0, st.own_prefix.size(), st.own_prefix) == 0)
      own.push_back(std::move(id));
  // Retire first: a cached value keeps its own part either way (see
  // read_cache.hpp), and the rows below are dropped next.
  if (!own.empty())
    st.cache->retire(own);
  if (m.all) {
    st.cache->invalidate_all();
    return;
  }
  std::vector<entity_key> keys;
  keys.reserve(m.entities.size());
  for (const auto& e : m.entities)
    keys.push_back(make_entity_key(e.type, e.scope, e.id));
  st.cache->invalidate(keys);
}

void poll(invalidator_actor* self) {
  auto& st = self->state;
  bool had = st.link.client && st.link.client->connected();
  uint64_t generation = st.link.generation();
  if (!st.link.ensure()) {
    unsubscribed(st, "no redis database is active");
    self->delayed_send(self, retry_delay, poll_atom::value);
    return;
  }
  if (!had || generation != st.link.generation() || !st.subscribed) {
    st.subscribed = false;
    auto r = st.link.check(st.link.client->command({"SUBSCRIBE", st.channel}));
    if (!r) {
      unsubscribed(st, r.error().message);
      self->delayed_send(self, retry_delay, poll_atom::value);
      return;
    }
    st.subscribed = true;
    st.leader.clear();
    st.cache->set_enabled(true);  // drops everything first
    TALLY_INFO("invalidator", "subscribed to " << st.channel << " on " << st.link.db_display());
  }
  auto deadline = steady_clock::now() + read_slice;
  for (;;) {
    auto left = duration_cast<milliseconds>(deadline - steady_clock::now());
    auto got = st.link.client->receive(std::max(left, milliseconds(0)));
    if (!got) {
      std::string why = got.error().message;
      st.link.check(std::move(got));
      unsubscribed(st, why);
      break;
    }
    if (!*got)
      break;
    apply(st, **got);
    if (steady_clock::now() >= deadline)
      break;
  }
  self->send(self, poll_atom::value);
}

caf::behavior invalidator(invalidator_actor* self, flush_context_ptr ctx, read_cache* cache) {
  auto& st = self->state;
  st.ctx = std::move(ctx);
  st.cache = cache;
  st.link = redis_link(*st.ctx->fleet, "invalidator", st.ctx->cfg.redis_timeout);
  st.channel = st.ctx->keys.invalidate();
  st.own_prefix = st.ctx->instance + ":";
  self->send(self, poll_atom::value);
  return {
    [=](poll_atom) { poll(self); },
  };
}

} // namespace

caf::actor spawn_invalidator(caf::actor_system& sys, flush_context_ptr ctx, read_cache& cache) {
  return sys.spawn<caf::detached>(invalidator, std::move(ctx), &cache);
}

} // namespace tally
