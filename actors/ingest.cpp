// actors/ingest.cpp — the hot path. See ingest.hpp for the protocol.
#include "actors/ingest.hpp"

#include "actors/atoms.hpp"

#include <caf/all.hpp>

#include <chrono>
#include <thread>

namespace tally {

namespace {

std::atomic<uint64_t> next_generation{1};

int64_t now_ms() noexcept {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

/// A thread's cached slot per live ingest_state. A thread that records into
/// several runtimes (tests do) keeps a few entries; generations never repeat,
/// so a stale entry of a destroyed runtime is never matched.
struct slot_cache_entry {
  uint64_t generation = 0;
  producer_slot* slot = nullptr;
};
thread_local slot_cache_entry slot_cache[4];
thread_local unsigned slot_cache_next = 0;

} // namespace

ingest_state::ingest_state(const config& c, uint32_t shard_count)
  : ids(c.intern_capacity),
    cfg(c),
    generation_(next_generation.fetch_add(1)),
    reclaim_at_(ids.limit() / 4 * 3),
    producer_limit_(ids.limit() - ids.limit() / 16) {
  for (uint32_t i = 0; i < shard_count; ++i)
    shards.push_back(std::make_unique<shard>(c.queue_capacity));
}

ingest_state::~ingest_state() {
  // Tokens point into their queues: they go first.
  slots_.clear();
}

producer_slot& ingest_state::my_slot() {
  for (auto& e : slot_cache)
    if (e.generation == generation_)
      return *e.slot;
  std::lock_guard<std::mutex> guard{slots_mutex_};
  uint32_t index = next_shard_.fetch_add(1) % shards.size();
  slots_.push_back(std::make_unique<producer_slot>(*shards[index], index));
  auto& entry = slot_cache[slot_cache_next++ % 4];
  entry = {generation_, slots_.back().get()};
  return *slots_.back();
}

void ingest_state::wake(shard& s) noexcept {
  // Pairs with the aggregator's "sleeping = true; fence; recheck queue": one
  // of the two always sees the other, so no event is stranded asleep.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (s.sleeping.load(std::memory_order_relaxed) && s.sleeping.exchange(false)) {
    counters.wakeups.fetch_add(1, std::memory_order_relaxed);
    caf::anon_send(s.aggregator, wake_atom::value);
  }
}

field_error ingest_state::prepare(const event& ev, producer_slot& slot, queued_event& q) noexcept {
  // Only valid ids ever enter the table, so an id found there needs no
  // check: each distinct text is validated once, at first sight.
  for (int i = 0; i < id_field_count; ++i) {
    std::string_view text = ev.ids[i];
    uint32_t id = ids.find(text);
    if (id == intern_table::npos) {
      if (errc code = check_id_field(static_cast<field>(i), text); code != errc::ok) {
        slot.rejected.fetch_add(1, std::memory_order_relaxed);
        return {code, static_cast<field>(i)};
      }
      // Only a first sight gets here, so these checks cost the steady
      // state nothing.
      if (ids.size() >= producer_limit_) {
        request_reclaim();
        return {errc::backpressure, field::none};  // counted by the caller, per event refused
      }
      id = ids.intern(text);
      if (id == intern_table::npos)
        return {errc::intern_full, static_cast<field>(i)};  // out of memory for the text
      if (ids.size() >= reclaim_at_)
        request_reclaim();
    }
    q.key.ids[i] = id;
  }
  if (auto err = validate_values(ev)) {
    slot.rejected.fetch_add(1, std::memory_order_relaxed);
    return err;
  }
  int64_t ts = ev.ts_ms != 0 ? ev.ts_ms : now_ms();
  q.key.minute = static_cast<uint32_t>(ts / 60000);
  q.ok = ev.ok ? 1 : 0;
  q.spend = ev.spend;
  q.prompt_tokens = ev.prompt_tokens;
  q.completion_tokens = ev.completion_tokens;
  q.cache_read_tokens = ev.cache_read_tokens;
  q.cache_creation_tokens = ev.cache_creation_tokens;
  return {};
}

namespace {

/// Marks the producer as inside record() for close() to wait on.
struct producer_scope {
  explicit producer_scope(producer_slot* s) : slot(s) {
    slot->active.store(true, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with close()
  }
  ~producer_scope() { slot->active.store(false, std::memory_order_release); }
  producer_slot* slot;
};

} // namespace

field_error ingest_state::record(const event& ev, bool wake_now) noexcept {
  producer_slot* slot;
  try {
    slot = &my_slot();
  } catch (...) {
    return {errc::backpressure, field::none};  // out of memory for a first-time thread
  }
  producer_scope scope{slot};
  if (closed_.load(std::memory_order_relaxed))
    return {errc::stopped, field::none};
  if (reclaiming_.load(std::memory_order_acquire)) {  // pairs with end_reclaim: the emptied table
    slot->backpressured.fetch_add(1, std::memory_order_relaxed);
    return {errc::backpressure, field::none};
  }
  queued_event q;
  if (auto err = prepare(ev, *slot, q)) {
    if (err.code == errc::backpressure)
      slot->backpressured.fetch_add(1, std::memory_order_relaxed);
    return err;
  }
  if (slot->home->full.load(std::memory_order_relaxed) || !slot->home->queue.enqueue(slot->token, q)) {
    slot->backpressured.fetch_add(1, std::memory_order_relaxed);
    return {errc::backpressure, field::none};
  }
  slot->accepted.store(slot->accepted.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  if (wake_now)
    wake(*slot->home);
  return {};
}

void ingest_state::wake_mine() noexcept {
  try {
    wake(*my_slot().home);
  } catch (...) {
    // No slot yet (out of memory on a first call): nothing of ours to wake.
  }
}

field_error ingest_state::record_all(const event* evs, size_t n, size_t& failed) noexcept {
  failed = n;
  producer_slot* slot;
  // Reused per thread: a transaction costs no allocation once warm.
  thread_local std::vector<queued_event> scratch;
  try {
    slot = &my_slot();
    if (scratch.size() < n)
      scratch.resize(n);
  } catch (...) {
    return {errc::backpressure, field::none};
  }
  producer_scope scope{slot};
  if (closed_.load(std::memory_order_relaxed))
    return {errc::stopped, field::none};
  if (reclaiming_.load(std::memory_order_acquire)) {  // pairs with end_reclaim: the emptied table
    slot->backpressured.fetch_add(n, std::memory_order_relaxed);
    return {errc::backpressure, field::none};
  }
  for (size_t i = 0; i < n; ++i) {
    if (auto err = prepare(evs[i], *slot, scratch[i])) {
      failed = i;
      if (err.code == errc::backpressure) {
        failed = n;  // as for a full queue: the whole transaction waits
        slot->backpressured.fetch_add(n, std::memory_order_relaxed);
      }
      return err;
    }
  }
  // One bulk enqueue with the producer's token: moodycamel places all of it
  // or none, so a transaction is never half counted.
  if (n > 0
      && (slot->home->full.load(std::memory_order_relaxed)
          || !slot->home->queue.enqueue_bulk(slot->token, scratch.data(), n))) {
    slot->backpressured.fetch_add(n, std::memory_order_relaxed);
    return {errc::backpressure, field::none};
  }
  slot->accepted.store(slot->accepted.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  if (n > 0)
    wake(*slot->home);
  return {};
}

field_error ingest_state::record_durable(const event& ev, std::function<void(field_error)> done) {
  auto err = record(ev);
  if (err) {
    done(err);
    return err;
  }
  durable_fence(std::move(done));
  return {};
}

void ingest_state::durable_fence(std::function<void(field_error)> done) {
  // The ticket goes in after the events this thread recorded: when the
  // writer sees the ticket, they are already in a shard queue, and the
  // writer's next swap drains them.
  tickets.enqueue(durable_ticket{std::move(done)});
  wake_writer();
}

void ingest_state::request_swap() noexcept {
  swap_wanted.store(true, std::memory_order_relaxed);
  wake_writer();
}

void ingest_state::wake_writer() noexcept {
  // Pairs with the writer's after_cycle: either it sees what was just
  // published (a ticket, swap_wanted), or we see it sleeping and wake it.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (writer_sleeping.load(std::memory_order_relaxed) && writer_sleeping.exchange(false))
    caf::anon_send(writer, collect_now_atom::value);
}

void ingest_state::request_reclaim() noexcept {
  if (!reclaim_wanted.load(std::memory_order_relaxed) && !reclaim_wanted.exchange(true))
    request_swap();
}

void ingest_state::begin_reclaim() noexcept {
  reclaim_wanted.store(false, std::memory_order_relaxed);
  reclaiming_.store(true, std::memory_order_relaxed);
  wait_for_producers();
}

void ingest_state::end_reclaim() noexcept {
  ids.clear();
  counters.id_reclaims.fetch_add(1, std::memory_order_relaxed);
  reclaiming_.store(false, std::memory_order_release);
}

void ingest_state::close() noexcept {
  closed_.store(true, std::memory_order_relaxed);
  wait_for_producers();
}

void ingest_state::wait_for_producers() noexcept {
  // Pairs with producer_scope: a producer either sees the flag just set
  // (closed_ or reclaiming_) or is seen here as active and waited for.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  std::vector<producer_slot*> snapshot;
  {
    std::lock_guard<std::mutex> guard{slots_mutex_};
    for (auto& s : slots_)
      snapshot.push_back(s.get());
  }
  for (auto* s : snapshot)
    while (s->active.load(std::memory_order_acquire))
      std::this_thread::yield();
}

void ingest_state::add_counters(stats& out) const noexcept {
  {
    std::lock_guard<std::mutex> guard{const_cast<std::mutex&>(slots_mutex_)};
    for (auto& s : slots_) {
      out.events_accepted += s->accepted.load(std::memory_order_relaxed);
      out.events_rejected += s->rejected.load(std::memory_order_relaxed);
      out.events_backpressured += s->backpressured.load(std::memory_order_relaxed);
    }
  }
  for (auto& s : shards)
    out.queue_depth += s->queue.size_approx();
  out.wakeups += counters.wakeups.load();
  out.batches_written += counters.batches_written.load();
  out.batch_bytes_written += counters.batch_bytes_written.load();
  out.stage1_failures += counters.stage1_failures.load();
  out.pending_batches += counters.pending_batches.load();
  out.flushes += counters.flushes.load();
  out.rows_upserted += counters.rows_upserted.load();
  out.duplicate_batches += counters.duplicate_batches.load();
  out.rows_deferred += counters.rows_deferred.load();
  out.deferred_applied += counters.deferred_applied.load();
  out.deferred_waiting += counters.deferred_waiting.load();
  out.deferred_oldest_seconds += counters.deferred_oldest_seconds.load();
  out.dead_lettered += counters.dead_lettered.load();
  out.ids_interned += ids.size();
  out.id_reclaims += counters.id_reclaims.load();
  out.lease_held += counters.lease_held.load();
  out.epoch += counters.epoch.load();
  for (int i = 0; i < 5; ++i)
    out.redis_switches[i] += counters.redis_switches[i].load();
  out.journal_batches += counters.journal_batches.load();
  out.journal_bytes += counters.journal_bytes.load();
  out.journaled += counters.journaled.load();
  out.replayed += counters.replayed.load();
  out.journal_truncated += counters.journal_truncated.load();
  out.journal_full += counters.journal_full.load();
  out.redis_backlog_batches += counters.redis_backlog_batches.load();
  out.redis_backlog_known += counters.redis_backlog_known.load();
  out.retained += counters.retained.load();
  out.repushed += counters.repushed.load();
  for (int i = 0; i <= stats::flush_buckets; ++i)
    out.flush_duration_count[i] += counters.flush_duration_count[i].load();
  out.flush_duration_ms_sum += counters.flush_duration_ms_sum.load();
}

} // namespace tally
