// actors/aggregator.cpp — see aggregator.hpp.
#include "actors/aggregator.hpp"

#include "actors/atoms.hpp"

#include <caf/all.hpp>

namespace tally {

namespace {

constexpr size_t bulk_size = 256;
constexpr size_t events_per_turn = 1 << 15;  // then yield the worker thread

struct aggregator_state {
  static inline const char* name = "aggregator";
  ingest_state* ingest = nullptr;
  shard* home = nullptr;
  std::unique_ptr<moodycamel::ConsumerToken> consumer;
  agg_map_ptr active;
  agg_map_ptr spare;
  uint32_t soft_limit = 0;
  uint32_t hard_limit = 0;
  bool paused = false;  // map at soft_limit: wait for the next swap
  std::vector<std::pair<agg_key, measure_values>> overflow;  // past hard_limit in a swap: never lose
  queued_event buffer[bulk_size];

  agg_map_ptr fresh_map() {
    if (spare) {
      auto m = std::move(spare);
      spare = nullptr;
      return m;
    }
    return std::make_shared<agg_map>(hard_limit);
  }

  void add(const queued_event& q) {
    measure_values m = measures_of(q);
    if (auto* sum = active->find_or_insert(q.key, hash_of(q.key)))
      sum->add(m);
    else
      overflow.emplace_back(q.key, m);
  }

  /// The map at its hard limit plus the overflow, in one map that holds
  /// every key. The queue bound does not cap the overflow: only this actor
  /// raises `full`, so while it gets no CPU time producers keep enqueuing,
  /// and a swap can find any number of distinct keys. All of them belong in
  /// the map the swap hands over: a durable ticket the writer saw before the
  /// swap counts on it, and the next map may not have room either.
  agg_map_ptr merge_overflow(agg_map_ptr full) {
    auto merged = std::make_shared<agg_map>(static_cast<uint32_t>(full->size() + overflow.size()));
    full->for_each([&](const agg_key& key, measure_values& m) { merged->find_or_insert(key, hash_of(key))->add(m); });
    for (auto& [key, m] : overflow)
      merged->find_or_insert(key, hash_of(key))->add(m);
    overflow.clear();
    overflow.shrink_to_fit();
    full->clear();
    if (!spare)
      spare = std::move(full);
    return merged;
  }

  /// Moves up to `budget` events from the queue into the map; returns how
  /// many. With `respect_limit`, stops while the map is at its soft limit.
  size_t drain(size_t budget, bool respect_limit) {
    size_t total = 0;
    while (total < budget) {
      if (respect_limit && active->size() + bulk_size > soft_limit) {
        paused = true;
        break;
      }
      size_t n = home->queue.try_dequeue_bulk(*consumer, buffer, bulk_size);
      if (n == 0)
        break;
      for (size_t i = 0; i < n; ++i)
        add(buffer[i]);
      total += n;
    }
    return total;
  }
};

using aggregator_actor = caf::stateful_actor<aggregator_state>;

/// Tells producers whether to push back: while the map is at its key limit,
/// or the queue holds `capacity` events (cleared again below half of it).
void update_full(aggregator_state& st) {
  bool was = st.home->full.load(std::memory_order_relaxed);
  size_t depth = st.home->queue.size_approx();
  bool now = st.paused || depth >= st.home->capacity || (was && depth > st.home->capacity / 2);
  if (now != was)
    st.home->full.store(now, std::memory_order_relaxed);
}

/// Drains one turn's worth; then either keeps itself awake or goes to sleep
/// with the lost-wake-up check (see ingest_state::wake).
void drain_turn(aggregator_actor* self) {
  auto& st = self->state;
  if (st.paused)
    return;  // the swap will resume us; producers see the shard awake
  size_t n = st.drain(events_per_turn, true);
  update_full(st);
  if (st.paused)
    return;
  if (n >= events_per_turn) {
    self->send(self, wake_atom::value);
    return;
  }
  st.home->sleeping.store(true, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (st.home->queue.size_approx() > 0 && st.home->sleeping.exchange(false))
    self->send(self, wake_atom::value);
}

caf::behavior aggregator(aggregator_actor* self, ingest_state* ingest, shard* home) {
  auto& st = self->state;
  st.ingest = ingest;
  st.home = home;
  st.consumer = std::make_unique<moodycamel::ConsumerToken>(home->queue);
  st.soft_limit = std::max<uint32_t>(ingest->cfg.max_keys_per_shard, 2 * bulk_size);
  st.hard_limit = st.soft_limit + 4 * ingest->cfg.queue_capacity;
  st.active = std::make_shared<agg_map>(st.hard_limit);
  return {
    [=](wake_atom) { drain_turn(self); },
    [=](swap_atom) -> agg_map_ptr {
      auto& s = self->state;
      // Everything enqueued before the swap was asked for is in the queue
      // now: take all of it, past the soft limit if need be, so a durable
      // ticket seen before the swap always finds its event in this map.
      s.drain(SIZE_MAX, false);
      auto full = std::move(s.active);
      if (!s.overflow.empty())
        full = s.merge_overflow(std::move(full));
      s.active = s.fresh_map();
      s.paused = false;
      update_full(s);
      // Awake (or paused) shards get a turn: producers will not wake them.
      if (!s.home->sleeping.load())
        self->send(self, wake_atom::value);
      return full;
    },
    [=](recycle_atom, agg_map_ptr& map) {
      // A merged map (merge_overflow) is not kept: its bound is not ours.
      if (map->max_size() != self->state.hard_limit)
        return;
      map->clear();
      if (!self->state.spare)
        self->state.spare = std::move(map);
    },
  };
}

} // namespace

caf::actor spawn_aggregator(caf::actor_system& sys, ingest_state& state, shard& s) {
  return sys.spawn(aggregator, &state, &s);
}

} // namespace tally
