// actors/shard_aggregator.cpp — see shard_aggregator.hpp.
#include "actors/shard_aggregator.hpp"

#include <algorithm>
#include <atomic>

namespace tally {

shard_aggregator::shard_aggregator(const config& cfg, shard& home)
  : home_(home),
    consumer_(home.queue),
    soft_limit_(std::max<uint32_t>(cfg.max_keys_per_shard, 2 * bulk_size)),
    hard_limit_(soft_limit_ + 4 * cfg.queue_capacity),
    active_(std::make_shared<agg_map>(hard_limit_)) {}

agg_map_ptr shard_aggregator::fresh_map() {
  if (spare_)
    return std::exchange(spare_, nullptr);
  return std::make_shared<agg_map>(hard_limit_);
}

void shard_aggregator::add(const queued_event& q) {
  measure_values m = measures_of(q);
  if (auto* sum = active_->find_or_insert(q.key, hash_of(q.key)))
    sum->add(m);
  else
    overflow_.emplace_back(q.key, m);
}

/// The map at its hard limit plus the overflow, in one map that holds every
/// key. The queue bound does not cap the overflow: only this class raises
/// `full`, so while it gets no CPU time producers keep enqueuing, and a swap
/// can find any number of distinct keys. All of them belong in the map the
/// swap hands over: a durable ticket the writer saw before the swap counts on
/// it, and the next map may not have room either.
agg_map_ptr shard_aggregator::merge_overflow(agg_map_ptr full) {
  auto merged = std::make_shared<agg_map>(static_cast<uint32_t>(full->size() + overflow_.size()));
  full->for_each([&](const agg_key& key, measure_values& m) { merged->find_or_insert(key, hash_of(key))->add(m); });
  for (auto& [key, m] : overflow_)
    merged->find_or_insert(key, hash_of(key))->add(m);
  overflow_.clear();
  overflow_.shrink_to_fit();
  full->clear();
  if (!spare_)
    spare_ = std::move(full);
  return merged;
}

/// Moves up to `budget` events from the queue into the map; returns how many.
/// With `respect_limit`, stops while the map is at its soft limit.
size_t shard_aggregator::drain(size_t budget, bool respect_limit) {
  size_t total = 0;
  while (total < budget) {
    if (respect_limit && active_->size() + bulk_size > soft_limit_) {
      paused_ = true;
      break;
    }
    size_t n = home_.queue.try_dequeue_bulk(consumer_, buffer_, bulk_size);
    if (n == 0)
      break;
    for (size_t i = 0; i < n; ++i)
      add(buffer_[i]);
    total += n;
  }
  return total;
}

/// Tells producers whether to push back: while the map is at its key limit,
/// or the queue holds `capacity` events (cleared again below half of it).
void shard_aggregator::update_full() {
  bool was = home_.full.load(std::memory_order_relaxed);
  size_t depth = home_.queue.size_approx();
  bool now = paused_ || depth >= home_.capacity || (was && depth > home_.capacity / 2);
  if (now != was)
    home_.full.store(now, std::memory_order_relaxed);
}

shard_aggregator::turn_result shard_aggregator::turn() {
  if (paused_)
    return turn_result::paused;  // the swap resumes us; producers see the shard awake
  size_t n = drain(events_per_turn, true);
  update_full();
  if (paused_)
    return turn_result::paused;
  if (n >= events_per_turn)
    return turn_result::more;
  if (n > 0)
    return turn_result::linger;
  // Pairs with ingest_state::wake(): either this recheck sees the producer's
  // event, or the producer sees `sleeping` and wakes us.
  home_.sleeping.store(true, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (home_.queue.size_approx() > 0 && home_.sleeping.exchange(false))
    return turn_result::more;
  return turn_result::asleep;
}

agg_map_ptr shard_aggregator::swap() {
  drain(SIZE_MAX, false);
  auto full = std::move(active_);
  if (!overflow_.empty())
    full = merge_overflow(std::move(full));
  active_ = fresh_map();
  paused_ = false;
  update_full();
  return full;
}

void shard_aggregator::recycle(agg_map_ptr map) {
  // A merged map (merge_overflow) is not kept: its bound is not ours.
  if (map->max_size() != hard_limit_)
    return;
  // Sized to the interval it held: after a spike of distinct keys the memory
  // goes back once each map has held a normal interval again.
  map->clear_and_trim(map->size());
  if (!spare_)
    spare_ = std::move(map);
}

} // namespace tally
