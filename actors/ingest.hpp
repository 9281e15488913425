// actors/ingest.hpp — the memory the hot path shares with the actors.
//
// Producers (embedding threads, connection actors) validate an event, intern
// its ids and push one fixed-size queued_event onto a shard's lock-free queue
// with their own producer token. Each shard is drained by one aggregator
// actor. A producer wakes the aggregator only when it finds it asleep (one
// CAF message per empty -> non-empty transition, never per event); under
// load it is not asleep: it lingers (shard_aggregator::linger_interval).
//
// Order of use: ingest_state is built by the runtime, aggregators and the
// buffer writer are spawned with a pointer to it, producers call
// ingest_state::record; the runtime destroys it after every actor is gone.
#pragma once

#include "core/flat_map.hpp"
#include "core/intern_table.hpp"
#include "core/rollup.hpp"
#include "tally/tally.hpp"

#include <caf/fwd.hpp>
#include <caf/actor.hpp>
#include <concurrentqueue/concurrentqueue.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

namespace tally {

class read_cache;

/// One event as it travels from producer to aggregator: 96 bytes, no pointers.
struct queued_event {
  agg_key key;
  uint8_t ok;
  int64_t spend;
  int64_t prompt_tokens;
  int64_t completion_tokens;
  int64_t cache_read_tokens;
  int64_t cache_creation_tokens;
};

using agg_map = flat_map<agg_key, measure_values>;
using agg_map_ptr = std::shared_ptr<agg_map>;

struct shard {
  // The bound is kept by the aggregator, not by the queue: moodycamel's
  // explicit producers keep the blocks they once took, so a fixed block pool
  // (try_enqueue) lets one bursty thread starve every other producer for
  // good. Producers enqueue (blocks are reused, so no allocation once warm)
  // unless `full` is set; the aggregator sets it when the queue holds
  // `capacity` events or its map is at its key limit, and clears it when it
  // has caught up.
  explicit shard(size_t cap) : queue(cap), capacity(cap) {}
  moodycamel::ConcurrentQueue<queued_event> queue;
  const size_t capacity;
  alignas(64) std::atomic<bool> sleeping{true};  // aggregator waits for a wake message
  alignas(64) std::atomic<bool> full{false};     // producers push back while set
  caf::actor aggregator;
};

/// A durable record waiting for its batch to reach Redis.
struct durable_ticket {
  std::function<void(field_error)> done;
};

/// Per producer thread: its token and its counters (written by that thread
/// only, read by snapshots), on their own cache lines.
struct alignas(64) producer_slot {
  producer_slot(shard& s, uint32_t index) : home(&s), token(s.queue), shard_index(index) {}
  shard* home;
  moodycamel::ProducerToken token;
  uint32_t shard_index;
  std::atomic<bool> active{false};  // inside record(); stop() waits for false
  std::atomic<uint64_t> accepted{0};
  std::atomic<uint64_t> rejected{0};
  std::atomic<uint64_t> backpressured{0};
};

/// Counters written by actors (few writes per interval).
struct pipeline_counters {
  std::atomic<uint64_t> wakeups{0};  // one per wake of a sleeping aggregator, never per event
  std::atomic<uint64_t> batches_written{0};
  std::atomic<uint64_t> batch_bytes_written{0};
  std::atomic<uint64_t> stage1_failures{0};
  std::atomic<uint64_t> pending_batches{0};
  std::atomic<uint64_t> flushes{0};
  std::atomic<uint64_t> rows_upserted{0};
  std::atomic<uint64_t> duplicate_batches{0};
  std::atomic<uint64_t> rows_deferred{0};
  std::atomic<uint64_t> deferred_applied{0};
  std::atomic<uint64_t> deferred_waiting{0};         // as the leader last read it; 0 when not leading
  std::atomic<uint64_t> deferred_oldest_seconds{0};
  std::atomic<uint64_t> dead_lettered{0};
  std::atomic<uint64_t> id_reclaims{0};
  std::atomic<uint64_t> lease_held{0};
  std::atomic<uint64_t> epoch{0};
  std::atomic<uint64_t> redis_switches[5] = {};  // by reason, as stats::redis_switches
  std::atomic<uint64_t> journal_batches{0};
  std::atomic<uint64_t> journal_bytes{0};
  std::atomic<uint64_t> journaled{0};
  std::atomic<uint64_t> replayed{0};
  std::atomic<uint64_t> journal_truncated{0};
  std::atomic<uint64_t> journal_full{0};
  std::atomic<uint64_t> redis_backlog_batches{0};
  std::atomic<uint64_t> redis_backlog_known{0};
  std::atomic<uint64_t> retained{0};
  std::atomic<uint64_t> repushed{0};
  std::atomic<uint64_t> flush_duration_count[stats::flush_buckets + 1] = {};
  std::atomic<uint64_t> flush_duration_ms_sum{0};

  /// Records one committed flush's duration into the histogram.
  void observe_flush(std::chrono::milliseconds took) noexcept {
    int i = 0;
    while (i < stats::flush_buckets && took.count() > stats::flush_bucket_ms[i])
      ++i;
    flush_duration_count[i].fetch_add(1, std::memory_order_relaxed);
    flush_duration_ms_sum.fetch_add(static_cast<uint64_t>(took.count()), std::memory_order_relaxed);
  }
};

class ingest_state {
public:
  ingest_state(const config& cfg, uint32_t shard_count);
  ~ingest_state();

  /// The hot path: validate, intern, enqueue. Never blocks. With
  /// `wake_now` false the aggregator is not woken here: the caller records
  /// a burst, then calls wake_mine() once (one fence per burst instead of
  /// one per event). A forgotten wake costs latency, never events: the
  /// writer's swap drains every queue.
  field_error record(const event& ev, bool wake_now = true) noexcept;

  /// Wakes the aggregator of this thread's shard if it sleeps.
  void wake_mine() noexcept;

  /// All or nothing: every event enqueued (one bulk enqueue), or none. On
  /// refusal `failed` is the refused event's index, or n for the whole batch.
  field_error record_all(const event* evs, size_t n, size_t& failed) noexcept;

  /// record() plus a ticket completed when the event is in Redis.
  field_error record_durable(const event& ev, std::function<void(field_error)> done);

  /// A ticket completed once every event this thread recorded before the
  /// call is in Redis (or failed with the reason).
  void durable_fence(std::function<void(field_error)> done);

  /// A shard is at its key limit: asks the writer for a cycle now rather
  /// than at the end of the buffer interval, so a flood of distinct keys is
  /// paced by how fast batches form, not held for a whole interval.
  void request_swap() noexcept;

  /// Refuses new events and waits until no producer is inside record().
  void close() noexcept;
  bool closed() const noexcept { return closed_.load(std::memory_order_acquire); }

  /// Reclaiming the id table (the writer's, at a collection cycle). The
  /// table is bounded and a text's id lives as long as the table, so texts
  /// seen once (a scan of keys, per-request end users) would fill it for
  /// good. Instead, once it holds `reclaim_at()` texts a producer asks for
  /// a reclaim (`reclaim_wanted`, and a cycle now). The writer then
  /// begin_reclaim()s: record() pushes back (backpressure, nothing refused)
  /// and it waits until no producer is inside record(), so every id handed
  /// out is in a shard queue; the cycle's swaps take all of them and turn
  /// them into texts, and end_reclaim() empties the table and lets
  /// producers in. Texts still in use are interned again at their next
  /// sight. A producer meeting a table at `producer_limit()` pushes back
  /// instead of refusing the event (the room above it is for the tag
  /// parts the writer interns).
  void begin_reclaim() noexcept;
  void end_reclaim() noexcept;
  uint32_t reclaim_at() const noexcept { return reclaim_at_; }
  uint32_t producer_limit() const noexcept { return producer_limit_; }
  std::atomic<bool> reclaim_wanted{false};

  /// Sum of all producer counters and queue depths into `out`.
  void add_counters(stats& out) const noexcept;

  std::vector<std::unique_ptr<shard>> shards;
  intern_table ids;
  moodycamel::ConcurrentQueue<durable_ticket> tickets;
  alignas(64) std::atomic<bool> writer_sleeping{true};  // coalesces ticket and swap wake-ups
  std::atomic<bool> swap_wanted{false};                 // a shard waits at its key limit
  caf::actor writer;
  /// The read path's cache, when this instance reads (a Postgres is
  /// configured): the writer adds every batch it forms to its ledger.
  read_cache* cache = nullptr;
  pipeline_counters counters;
  const config cfg;

private:
  /// Wakes the writer for a cycle now if it sleeps out its interval.
  void wake_writer() noexcept;
  producer_slot& my_slot();
  /// Interns and validates `ev` into `q` (no enqueue).
  field_error prepare(const event& ev, producer_slot& slot, queued_event& q) noexcept;
  void wake(shard& s) noexcept;
  /// Asks the writer for a reclaim once (see begin_reclaim).
  void request_reclaim() noexcept;
  /// Waits until every producer seen inside record() has left it.
  void wait_for_producers() noexcept;

  const uint64_t generation_;
  const uint32_t reclaim_at_;
  const uint32_t producer_limit_;
  std::atomic<bool> closed_{false};
  std::atomic<bool> reclaiming_{false};
  std::mutex slots_mutex_;  // only when a thread records for the first time
  std::vector<std::unique_ptr<producer_slot>> slots_;
  std::atomic<uint32_t> next_shard_{0};
};

} // namespace tally
