// actors/retention.cpp — see retention.hpp.
#include "actors/retention.hpp"

#include "actors/buffer_writer.hpp"

#include "actors/stage2_io.hpp"
#include "adapters/pg_schema.hpp"
#include "core/log.hpp"

#include <caf/all.hpp>

#include <deque>
#include <unordered_map>

namespace tally {

namespace {

using namespace std::chrono;

constexpr size_t ids_per_query = 5000;

struct retained_batch {
  std::string bytes;
  int64_t written = 0;  // steady ms of the first write
  int64_t pushed = 0;   // steady ms of the last (re)push
};

struct retention_state {
  static inline const char* name = "retention";
  flush_context_ptr ctx;
  std::unordered_map<std::string, retained_batch> batches;
  std::deque<std::string> order;  // ids, oldest first (may hold forgotten ids)
  size_t bytes = 0;
  uint64_t timer_generation = 0;
  redis_link redis;
  pg_link pg;
};

using retention_actor = caf::stateful_actor<retention_state, caf::event_based_actor>;

void forget(retention_state& st, const std::string& id) {
  auto it = st.batches.find(id);
  if (it == st.batches.end())
    return;
  st.bytes -= it->second.bytes.size();
  st.batches.erase(it);
}

/// Forgets every retained batch Postgres has applied. False if it could not ask.
bool forget_applied(retention_actor* self) {
  auto& st = self->state;
  std::string why;
  if (st.batches.empty())
    return true;
  if (!st.pg.ensure(*st.ctx, "retention", why))
    return false;
  std::vector<std::string> ids;
  ids.reserve(std::min(st.batches.size(), ids_per_query));
  auto ask = [&]() -> bool {
    auto r = st.pg.client->exec_params("SELECT batch_id FROM "
                                         + adapters::qualified_table(st.ctx->cfg.pg_schema, "tally_applied_batches")
                                         + " WHERE batch_id = ANY($1::text[])",
                                       {adapters::pg_text_array(ids)});
    ids.clear();
    if (!r)
      return false;
    for (const auto& row : r->rows)
      forget(st, row[0]);
    return true;
  };
  std::vector<std::string> all;
  all.reserve(st.batches.size());
  for (const auto& [id, b] : st.batches)
    all.push_back(id);
  for (const auto& id : all) {
    ids.push_back(id);
    if (ids.size() == ids_per_query && !ask())
      return false;
  }
  return ids.empty() || ask();
}

void repush_lost(retention_actor* self) {
  auto& st = self->state;
  auto repush_after = st.ctx->cfg.repush_after.count();
  int64_t now = steady_ms();
  size_t pushed = 0;
  for (auto& [id, b] : st.batches) {
    if (now - b.pushed < repush_after)
      continue;
    if (!st.redis.ensure(*st.ctx, "retention"))
      return;
    const std::string batches_key = st.ctx->key("batches");
    const std::string marker = st.ctx->key("written:" + id);
    result<adapters::redis_reply> r = error_info{};
    if (now - b.written >= 10 * repush_after) {
      // Long overdue even though Redis claims to know it: push a copy anyway.
      r = st.redis.run({"LPUSH", batches_key, b.bytes});
      if (r)
        r->integer = 1;
    } else {
      r = st.redis.run({"EVAL", stage1_push_script, "2", batches_key, marker, b.bytes, stage1_marker_ttl_ms});
    }
    if (!r) {
      TALLY_WARN("retention", "re-push of " << id << " failed: " << r.error().message);
      return;
    }
    b.pushed = now;
    if (r->integer == 1)
      ++pushed;
  }
  if (pushed > 0)
    TALLY_WARN("retention", "re-pushed " << pushed << " batches that redis lost before they were applied");
}

void check(retention_actor* self) {
  auto& st = self->state;
  // Compact the age order (ids of forgotten batches linger in it).
  while (!st.order.empty() && st.batches.count(st.order.front()) == 0)
    st.order.pop_front();
  if (forget_applied(self))
    repush_lost(self);
}

caf::behavior retention_behavior(retention_actor* self, flush_context_ptr ctx) {
  auto& st = self->state;
  st.ctx = std::move(ctx);
  auto period = std::min(st.ctx->cfg.repush_after / 3, milliseconds(2000));
  self->send(self, rcheck_atom::value, st.timer_generation);
  self->attach_functor([sys = &self->system(), me = self->address()] {
    // Leave the registry only if it still names this actor.
    if (sys->registry().get(retention_registry_name) == caf::actor_cast<caf::strong_actor_ptr>(me))
      sys->registry().erase(retention_registry_name);
  });
  return {
    [=](retain_atom, std::string& id, std::string& bytes) {
      auto& s = self->state;
      int64_t now = steady_ms();
      auto [it, fresh] = s.batches.try_emplace(id);
      if (!fresh)
        return;
      s.bytes += bytes.size();
      it->second = {std::move(bytes), now, now};
      s.order.push_back(std::move(id));
      size_t dropped = 0;
      while (s.bytes > retention_max_bytes && !s.order.empty()) {
        forget(s, s.order.front());
        s.order.pop_front();
        ++dropped;
      }
      if (dropped > 0)
        TALLY_WARN("retention", "retention full: forgot the " << dropped
                                << " oldest unconfirmed batches (no spill journal yet)");
    },
    [=](rcheck_atom, uint64_t gen) {
      auto& s = self->state;
      if (gen != s.timer_generation)
        return;
      check(self);
      self->delayed_send(self, period, rcheck_atom::value, ++s.timer_generation);
    },
  };
}

} // namespace

caf::actor spawn_retention(caf::event_based_actor* supervisor, flush_context_ptr ctx) {
  auto a = supervisor->spawn<caf::linked + caf::detached>(retention_behavior, std::move(ctx));
  supervisor->system().registry().put(retention_registry_name, a);
  return a;
}

} // namespace tally
