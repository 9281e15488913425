// actors/shard_aggregator.hpp — one shard's aggregation, without the actor.
//
// The aggregator actor (aggregator.hpp) is this class driven by CAF
// messages: a wake runs turn(), a swap request runs swap(), a recycled map
// goes to recycle(). Nothing here touches CAF, so tests can drive the same
// code from plain threads, where ThreadSanitizer sees every hand-off (it
// cannot see CAF's own synchronisation: tests/sanitizers/README.md).
//
// One thread at a time calls the members (the actor's, or a test's); the
// shard's queue and flags are shared with the producers.
//
// Invariant: every event dequeued is in exactly one map that swap() hands
// over. Draining pauses (and producers see backpressure once the queue is
// full) while the map holds max_keys_per_shard keys; the next swap resumes
// it.
#pragma once

#include "actors/ingest.hpp"

#include <chrono>
#include <utility>
#include <vector>

namespace tally {

class shard_aggregator {
public:
  shard_aggregator(const config& cfg, shard& home);

  enum class turn_result {
    more,    // the queue still holds events: take another turn soon
    asleep,  // the queue is empty and `sleeping` is set: a producer wakes us
    paused,  // the map is at its key limit: only a swap resumes draining
    linger,  // events came and the queue is empty now: look again after
             // linger_interval, staying awake so that producers send no
             // wake-up meanwhile
  };

  /// Under load a wake-up per producer burst (a RESP read) costs more than
  /// the aggregation it triggers: a CAF message, and a worker thread woken
  /// or polling for it. Awake, the aggregator instead looks at the queue
  /// this often; a turn that finds nothing goes to sleep, so an idle shard
  /// costs nothing. Events wait at most this long, well inside
  /// buffer_interval, and a swap drains whatever waits.
  static constexpr std::chrono::microseconds linger_interval{1000};

  /// Drains up to one turn's worth of events (then the thread is yielded to
  /// others), updates the producers' `full` flag, lingers when it found
  /// events, and goes to sleep with the lost-wake-up check when it found
  /// none (see ingest_state::wake).
  turn_result turn();

  /// Takes everything enqueued so far, past the key limit if need be (a
  /// durable ticket the writer saw before asking must find its event in
  /// this map), and hands over the map; draining resumes on a fresh one.
  agg_map_ptr swap();

  /// After swap(): whether the shard is awake (or paused) and must be given
  /// a turn, since producers only wake a sleeping shard.
  bool needs_turn() const noexcept { return !home_.sleeping.load(); }

  /// A map the writer is done with, cleared and kept for the next swap.
  void recycle(agg_map_ptr map);

private:
  agg_map_ptr fresh_map();
  void add(const queued_event& q);
  agg_map_ptr merge_overflow(agg_map_ptr full);
  size_t drain(size_t budget, bool respect_limit);
  void update_full();

  static constexpr size_t bulk_size = 256;
  static constexpr size_t events_per_turn = 1 << 15;

  shard& home_;
  moodycamel::ConsumerToken consumer_;
  const uint32_t soft_limit_;
  const uint32_t hard_limit_;
  agg_map_ptr active_;
  agg_map_ptr spare_;
  bool paused_ = false;
  std::vector<std::pair<agg_key, measure_values>> overflow_;  // past hard_limit in a swap: never lost
  queued_event buffer_[bulk_size];
};

} // namespace tally
