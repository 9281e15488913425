// actors/retention.cpp — see retention.hpp.
#include "actors/retention.hpp"

#include "core/log.hpp"
#include "core/read_cache.hpp"

#include <caf/all.hpp>

#include <deque>
#include <map>
#include <optional>
#include <unordered_map>

namespace tally {

namespace {

using namespace std::chrono;

struct retained_batch {
  std::string bytes;
  uint64_t generation = 0;  // the fleet generation it was last pushed under
  int64_t written = 0;  // steady ms of the first write
  int64_t pushed = 0;   // steady ms of the last (re)push
  int64_t copied = 0;   // steady ms of the last unconditional copy, 0 if none
};

struct retention_state {
  static inline const char* name = "retention";
  flush_context_ptr ctx;
  std::unordered_map<std::string, retained_batch> batches;
  std::deque<std::string> order;  // ids, oldest first (may hold forgotten ids)
  size_t bytes = 0;
  uint64_t timer_generation = 0;
  redis_link redis;
  // Other reachable databases, by id: a leader reports applied batches in
  // whatever database was active when it committed, which after a switch
  // away and back need not be ours.
  std::map<uint32_t, std::optional<adapters::redis_client>> others;
};

using retention_actor = caf::stateful_actor<retention_state, caf::event_based_actor>;

void forget(retention_state& st, const std::string& id) {
  auto it = st.batches.find(id);
  if (it == st.batches.end())
    return;
  st.bytes -= it->second.bytes.size();
  st.batches.erase(it);
  st.ctx->counters->retained.store(st.batches.size(), std::memory_order_relaxed);
}

void forget_all(retention_state& st, const std::vector<std::string>& ids) {
  for (const auto& id : ids)
    forget(st, id);
  // Applied means in Postgres: the read cache's ledger lets go of them too
  // (the invalidation message usually said so first).
  if (st.ctx->ingest->cache && !ids.empty())
    st.ctx->ingest->cache->retire(ids);
}

/// Forgets every batch a leader reported applied in the active database.
/// False if it could not ask.
bool forget_applied(retention_state& st) {
  auto applied = st.redis.check(st.ctx->keys.take_applied(*st.redis.client, st.ctx->instance));
  if (!applied) {
    TALLY_WARN("retention", "reading applied batch ids failed: " << applied.error().message);
    return false;
  }
  forget_all(st, *applied);
  return true;
}

/// The same in every other database whose circuit is not open. One that
/// does not answer is skipped this round (its reports wait there).
void forget_applied_elsewhere(retention_state& st) {
  auto view = st.ctx->fleet->view();
  auto active = view->active_db_id();
  for (auto it = st.others.begin(); it != st.others.end();)
    it = view->find(it->first) ? std::next(it) : st.others.erase(it);  // removed databases
  for (const auto& db : view->dbs) {
    if ((active && db.id == *active) || !db.endpoint || db.state == circuit_state::open) {
      st.others.erase(db.id);
      continue;
    }
    auto& client = st.others[db.id];
    if (!client || !client->connected()) {
      auto c = adapters::redis_client::connect(*db.endpoint, st.ctx->cfg.redis_timeout);
      if (!c)
        continue;
      client.emplace(std::move(*c));
    }
    auto applied = st.ctx->keys.take_applied(*client, st.ctx->instance);
    if (!applied) {
      client.reset();
      continue;
    }
    forget_all(st, *applied);
  }
}

/// Pushes `b` again to the active database; true when the push went through
/// (landed or was already there).
bool repush(retention_state& st, const std::string& id, retained_batch& b, bool copy, size_t& landed) {
  status pushed;
  bool landed_now = false;
  if (copy) {
    pushed = st.redis.check(st.ctx->keys.push_batch_copy(*st.redis.client, b.bytes));
    landed_now = pushed.ok();
  } else {
    auto r = st.redis.check(st.ctx->keys.push_batch(*st.redis.client, id, b.bytes));
    if (r)
      landed_now = *r;
    else
      pushed = r.error();
  }
  if (!pushed) {
    TALLY_WARN("retention", "re-push of " << id << " failed: " << pushed.error().message);
    return false;
  }
  b.pushed = steady_ms();
  b.generation = st.redis.generation();
  if (landed_now) {
    ++landed;
    st.ctx->counters->repushed.fetch_add(1, std::memory_order_relaxed);
  }
  return true;
}

void check(retention_actor* self) {
  auto& st = self->state;
  // Compact the age order (ids of forgotten batches linger in it).
  while (!st.order.empty() && st.batches.count(st.order.front()) == 0)
    st.order.pop_front();
  if (st.batches.empty() || !st.redis.ensure() || !forget_applied(st))
    return;
  auto repush_after = st.ctx->cfg.repush_after.count();
  int64_t now = steady_ms();
  size_t landed = 0;
  forget_applied_elsewhere(st);
  for (auto& [id, b] : st.batches) {
    bool moved = b.generation != st.redis.generation();
    if (!moved && now - b.pushed < repush_after)
      continue;
    // The idempotent push after a switch or a restart lands only where the
    // batch's written-marker is missing: a database that lost data, a
    // promoted replica behind its primary, one the batch never reached. An
    // unconditional copy (a duplicate the Postgres dedup table skips) only
    // for a batch long unconfirmed, in case a leader's report was lost, and
    // then once per such period: with no leader running, copies would only
    // pile up.
    int64_t since = std::max(b.written, b.copied);
    bool copy = now - since >= 10 * repush_after;
    if (copy)
      b.copied = now;
    if (!repush(st, id, b, copy, landed))
      break;
  }
  if (landed > 0)
    TALLY_WARN("retention", "pushed " << landed
                                         << " batches again (the active redis lacked them, or no leader reported "
                                            "them applied for 10 x repush_after)");
}

caf::behavior retention_behavior(retention_actor* self, flush_context_ptr ctx) {
  auto& st = self->state;
  st.ctx = std::move(ctx);
  st.redis = redis_link(*st.ctx->fleet, "retention", st.ctx->cfg.redis_timeout);
  auto period = std::min(st.ctx->cfg.repush_after / 3, milliseconds(1000));
  self->send(st.ctx->fleet->failover(), subscribe_atom::value);
  self->send(self, rcheck_atom::value, st.timer_generation);
  return {
    [=](retain_atom, std::string& id, std::string& bytes, uint64_t generation) {
      auto& s = self->state;
      int64_t now = steady_ms();
      auto [it, fresh] = s.batches.try_emplace(id);
      if (!fresh) {
        it->second.generation = generation;  // replayed from the journal again: the newest copy is here
        return;
      }
      s.bytes += bytes.size();
      it->second = {std::move(bytes), generation, now, now};
      s.order.push_back(std::move(id));
      size_t dropped = 0;
      while (s.bytes > retention_max_bytes && !s.order.empty()) {
        forget(s, s.order.front());
        s.order.pop_front();
        ++dropped;
      }
      s.ctx->counters->retained.store(s.batches.size(), std::memory_order_relaxed);
      if (dropped > 0)
        TALLY_WARN("retention", "retention full: forgot the " << dropped
                                << " oldest unconfirmed batches (they are in redis, but a later loss of that "
                                   "redis would not be repaired)");
    },
    [=](rcheck_atom, uint64_t gen) {
      auto& s = self->state;
      if (gen != s.timer_generation)
        return;
      check(self);
      self->delayed_send(self, period, rcheck_atom::value, ++s.timer_generation);
    },
    [=](active_atom, uint64_t) {
      // Re-push now what the new active database may lack; check() does it
      // (idempotently) for every batch pushed under another generation.
      check(self);
    },
  };
}

} // namespace

caf::actor spawn_retention(caf::actor_system& sys, flush_context_ptr ctx) {
  return sys.spawn<caf::detached>(retention_behavior, std::move(ctx));
}

} // namespace tally
