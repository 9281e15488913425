// actors/flusher.cpp — see flusher.hpp.
#include "actors/flusher.hpp"

#include "actors/stage2_io.hpp"
#include "adapters/batch_codec.hpp"
#include "adapters/flush_sql.hpp"
#include "core/failpoint.hpp"
#include "core/log.hpp"

#include <caf/all.hpp>

#include <thread>
#include <unordered_set>

namespace tally {

namespace {

using namespace std::chrono;

// One cycle takes at most this much from `batches`; a longer backlog is
// drained by the cycles that follow at once (no waiting out the interval),
// so the chunk bounds one transaction's size, never what gets flushed. A
// flush that times out halves the chunk (down to one batch); successes grow
// it back.
constexpr int max_chunk_batches = 64;
constexpr const char* chunk_bytes = "33554432";

// KEYS[1] batches, KEYS[2] own inflight; ARGV[1] max batches in flight,
// ARGV[2] max bytes to move. Oldest first (writers LPUSH, we take the right
// end, and push onto our list's left: its right end stays the oldest).
// Returns {moved, batches left}.
constexpr const char* move_script =
  "local have = redis.call('LLEN', KEYS[2]) local moved, bytes = 0, 0 "
  "while have + moved < tonumber(ARGV[1]) and bytes < tonumber(ARGV[2]) do "
  "local v = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') "
  "if not v then break end moved = moved + 1 bytes = bytes + string.len(v) end "
  "return {moved, redis.call('LLEN', KEYS[1])}";
// KEYS[1] own inflight, KEYS[2] deadletter; ARGV[1] the encoded batch.
constexpr const char* deadletter_script =
  "if redis.call('LREM', KEYS[1], 1, ARGV[1]) > 0 then redis.call('LPUSH', KEYS[2], ARGV[1]) return 1 end return 0";
// KEYS[1] an inflight list, KEYS[2] batches: move everything back, oldest
// ending up where the next cycle takes first. Returns how many.
constexpr const char* return_script =
  "local n = 0 while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do n = n + 1 end return n";
// KEYS[1] instance heartbeat key, KEYS[2] its inflight, KEYS[3] batches,
// KEYS[4] instances set; ARGV[1] its id. -1 when it is alive; else returns
// its inflight to batches, forgets it, and says how many batches moved.
constexpr const char* orphan_script =
  "if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end local n = 0 "
  "while redis.call('LMOVE', KEYS[2], KEYS[3], 'LEFT', 'RIGHT') do n = n + 1 end "
  "redis.call('SREM', KEYS[4], ARGV[1]) return n";

enum class cycle_result {
  drained,  // nothing left in `batches` or in flight
  more,     // committed a chunk; more is waiting
  failed,   // retry after a backoff
  not_leading,
};

struct flusher_state {
  static inline const char* name = "flusher";
  flush_context_ptr ctx;
  caf::actor supervisor;
  redis_link redis;
  pg_link pg;
  std::string batches_key, inflight_key, deadletter_key, channel;

  bool leading = false;
  uint64_t epoch = 0;
  bool stopped = false;
  bool return_pending = true;  // own inflight may hold batches to hand back
  bool registered = false;     // own id is in the instances set
  int64_t next_orphan_scan = 0;
  int64_t next_prune = 0;
  uint64_t timer_generation = 0;
  int chunk = max_chunk_batches;  // batches per transaction, adaptive
  bool priority_known = false;    // deadlock priority checked on this Postgres
  bool deadlock_priority = false;
  backoff retry{milliseconds(50), milliseconds(2000)};
};

using flusher_actor = caf::stateful_actor<flusher_state, caf::event_based_actor>;

void schedule(flusher_actor* self, milliseconds delay) {
  self->delayed_send(self, delay, fcycle_atom::value, ++self->state.timer_generation);
}

/// Hands the own inflight list back to `batches` (not leading: another
/// leader must be able to apply it). Safe at any time: an item is either
/// already applied (then skipped as duplicate) or not.
bool return_own_inflight(flusher_actor* self) {
  auto& st = self->state;
  if (!st.redis.ensure(*st.ctx, "flusher"))
    return false;
  auto r = st.redis.run({"EVAL", return_script, "2", st.inflight_key, st.batches_key});
  if (!r) {
    TALLY_WARN("flusher", "cannot return the inflight list to batches: " << r.error().message);
    return false;
  }
  if (r->integer > 0)
    TALLY_INFO("flusher", "returned " << r->integer << " inflight batches to the batches list");
  st.return_pending = false;
  return true;
}

void recover_orphans(flusher_actor* self) {
  auto& st = self->state;
  auto members = st.redis.run({"SMEMBERS", st.ctx->key("instances")});
  if (!members)
    return;
  for (const auto& m : members->elements) {
    if (m.str == st.ctx->instance)
      continue;
    auto r = st.redis.run({"EVAL", orphan_script, "4", st.ctx->key("instance:" + m.str),
                           st.ctx->inflight_key(m.str), st.batches_key, st.ctx->key("instances"), m.str});
    if (!r)
      return;
    if (r->integer > 0)
      TALLY_INFO("flusher", "instance " << m.str << " is gone: returned its " << r->integer
                                        << " inflight batches to the batches list");
  }
}

void prune(flusher_actor* self) {
  auto& st = self->state;
  auto r = adapters::prune_applied_batches(*st.pg.client, st.ctx->cfg.pg_schema, st.ctx->cfg.applied_retention);
  if (!r)
    TALLY_WARN("flusher", "pruning applied batch ids failed: " << r.error().message);
  else if (*r > 0)
    TALLY_INFO("flusher", "pruned " << *r << " applied batch ids older than "
                                    << st.ctx->cfg.applied_retention.count() << "h");
}

std::string summary(const adapters::flush_outcome& out, uint64_t epoch) {
  std::string s = "{\"epoch\":" + std::to_string(epoch) + ",\"batches\":" + std::to_string(out.batches_new)
                  + ",\"rows\":" + std::to_string(out.rows) + ",\"tables\":{";
  for (size_t i = 0; i < out.tables.size(); ++i)
    s += (i ? ",\"" : "\"") + out.tables[i].table + "\":" + std::to_string(out.tables[i].rows);
  return s + "}}";
}

void stop_leading(flusher_actor* self) {
  auto& st = self->state;
  st.leading = false;
  st.return_pending = true;
  return_own_inflight(self);
}

cycle_result run_cycle(flusher_actor* self) {
  auto& st = self->state;
  auto& cfg = st.ctx->cfg;
  auto* counters = st.ctx->counters;
  if (!st.leading)
    return cycle_result::not_leading;
  if (!st.ctx->lease_valid())
    return cycle_result::failed;  // the lease actor is about to report
  if (!st.redis.ensure(*st.ctx, "flusher"))
    return cycle_result::failed;
  std::string why;
  if (!st.pg.ensure(*st.ctx, "flusher", why))
    return cycle_result::failed;
  if (!st.registered) {
    // Before anything is in our inflight list, make it findable if we die.
    if (!st.redis.run({"SADD", st.ctx->key("instances"), st.ctx->instance}))
      return cycle_result::failed;
    st.registered = true;
  }
  int64_t now = steady_ms();
  if (now >= st.next_orphan_scan) {
    recover_orphans(self);
    st.next_orphan_scan = now + cfg.lease_ttl.count() / 2;
  }
  if (now >= st.next_prune) {
    prune(self);
    st.next_prune = now + duration_cast<milliseconds>(hours(1)).count();
  }

  auto moved = st.redis.run(
    {"EVAL", move_script, "2", st.batches_key, st.inflight_key, std::to_string(st.chunk), chunk_bytes});
  if (!moved || moved->elements.size() != 2) {
    TALLY_WARN("flusher", "moving batches to inflight failed: " << (moved ? "bad reply" : moved.error().message));
    return cycle_result::failed;
  }
  long long left = moved->elements[1].integer;
  // The oldest `chunk` of the inflight list (only we push to it, at the left).
  const long long window = st.chunk;
  auto items = st.redis.run({"LRANGE", st.inflight_key, std::to_string(-window), "-1"});
  if (!items) {
    TALLY_WARN("flusher", "reading the inflight list failed: " << items.error().message);
    return cycle_result::failed;
  }
  if (items->elements.empty())
    return left > 0 ? cycle_result::more : cycle_result::drained;
  TALLY_FAILPOINT("flush_after_move");  // batches in flight, no transaction yet

  std::vector<adapters::batch> decoded;
  decoded.reserve(items->elements.size());
  std::unordered_set<std::string> seen;
  size_t dead = 0;
  for (const auto& item : items->elements) {
    auto b = adapters::decode_batch(item.str);
    std::string bad = !b ? std::string("decode: ") + adapters::to_string(static_cast<adapters::codec_errc>(b.error().code))
                             + " (" + b.error().message + ")"
                         : adapters::check_batch_shape(*b);
    if (!bad.empty()) {
      auto r = st.redis.run({"EVAL", deadletter_script, "2", st.inflight_key, st.deadletter_key, item.str});
      if (!r) {
        TALLY_WARN("flusher", "moving a bad batch to the dead-letter list failed: " << r.error().message);
        return cycle_result::failed;
      }
      counters->dead_lettered.fetch_add(1);
      ++dead;
      TALLY_ERROR("flusher", "batch of " << item.str.size() << " bytes" << (b ? " (id " + b->id + ")" : std::string())
                                         << " moved to " << st.deadletter_key << ": " << bad);
      continue;
    }
    if (seen.insert(b->id).second)
      decoded.push_back(std::move(*b));
  }
  // What this transaction covers: the rightmost `taken` items of the list.
  const size_t taken = items->elements.size() - dead;
  if (decoded.empty())
    return cycle_result::more;  // all dead-lettered: look again at once

  std::vector<const adapters::batch*> ptrs;
  ptrs.reserve(decoded.size());
  for (const auto& b : decoded)
    ptrs.push_back(&b);
  adapters::flush_settings settings;
  settings.schema = cfg.pg_schema;
  settings.ns = cfg.ns;
  settings.leader = st.ctx->instance;
  settings.epoch = st.epoch;
  settings.lock_timeout = cfg.lock_timeout;
  settings.statement_timeout = cfg.statement_timeout;
  settings.idle_in_transaction_timeout = std::clamp(cfg.lease_ttl * 2, milliseconds(5000), milliseconds(60000));
  if (!st.priority_known) {
    auto priority = adapters::can_take_deadlock_priority(*st.pg.client);
    if (!priority) {
      TALLY_WARN("flusher", priority.error().message);
      return cycle_result::failed;
    }
    st.deadlock_priority = *priority;
    st.priority_known = true;
    TALLY_INFO("flusher", (st.deadlock_priority ? "flushes take deadlock priority over other writers"
                                                : "no privilege to SET deadlock_timeout: flushes yield to other "
                                                  "writers in lock cycles and retry"));
  }
  settings.deadlock_priority = st.deadlock_priority;
  auto ctx = st.ctx;
  auto out = adapters::flush_batches(*st.pg.client, settings, ptrs, [ctx] { return ctx->lease_valid(); });
  if (!out) {
    const auto& e = out.error();
    bool transient = adapters::is_transient(e.sqlstate);
    if (!transient)
      st.pg.migrated = false;  // e.g. a table dropped under us: migrate again first
    // A statement timeout, or a session ended under a long transaction:
    // smaller transactions next time.
    if (e.sqlstate == "57014" || e.code == static_cast<int>(adapters::pg_errc::connection_lost))
      st.chunk = std::max(1, st.chunk / 2);
    TALLY_WARN("flusher", "flush of " << decoded.size() << " batches failed [" << e.sqlstate << "] "
                                     << (transient ? "(transient)" : "(not transient)") << ": " << e.message
                                     << "; the batches stay in flight and are retried");
    return cycle_result::failed;
  }
  switch (out->what) {
    case adapters::flush_outcome::kind::fenced:
      TALLY_WARN("flusher", "flush refused by fence: epoch in postgres is " << out->database_epoch << ", ours "
                            << st.epoch << "; transaction rolled back, giving up the lease");
      self->send(st.supervisor, fenced_atom::value, st.epoch, out->database_epoch);
      stop_leading(self);
      return cycle_result::not_leading;
    case adapters::flush_outcome::kind::lease_lost:
      // The lease actor decides whether it is really gone (it reports that
      // with follow_atom); until then this is a retry, not an abdication.
      TALLY_WARN("flusher", "lease not confirmed during a flush: transaction rolled back, retrying");
      return cycle_result::failed;
    case adapters::flush_outcome::kind::committed:
      break;
  }
  TALLY_FAILPOINT("flush_after_commit");
  counters->flushes.fetch_add(1);
  counters->observe_flush(std::chrono::duration_cast<milliseconds>(out->prepare_time + out->transaction_time));
  counters->rows_upserted.fetch_add(out->rows);
  counters->duplicate_batches.fetch_add(out->batches_duplicate);
  bool notable = out->prepare_time + out->transaction_time > milliseconds(1000) || out->lock_retries > 0;
  TALLY_LOG(notable ? log_level::info : log_level::debug,
            "flusher", "flushed " << out->batches_new << " batches (" << out->batches_duplicate
                                  << " duplicates), " << out->rows << " rows, epoch " << st.epoch << " in "
                                  << out->prepare_time.count() << " ms preparing + "
                                  << out->transaction_time.count() << " ms in the transaction"
                                  << (out->lock_retries ? ", " + std::to_string(out->lock_retries)
                                                            + " upserts retried after a lock timeout"
                                                        : std::string()));
  st.chunk = std::min(max_chunk_batches, st.chunk * 2);
  // Committed: drop exactly the items this transaction covered (the right
  // end; LTRIM of everything deletes the key). If this fails the next cycle
  // finds the same batches already applied and skips them.
  auto del = st.redis.run({"LTRIM", st.inflight_key, "0", std::to_string(-static_cast<long long>(taken) - 1)});
  if (!del) {
    TALLY_WARN("flusher", "deleting the applied inflight list failed: " << del.error().message);
    return cycle_result::failed;
  }
  if (out->batches_new > 0)
    (void)st.redis.run({"PUBLISH", st.channel, summary(*out, st.epoch)});
  bool inflight_left = static_cast<long long>(items->elements.size()) == window;  // may hold more
  return left > 0 || inflight_left ? cycle_result::more : cycle_result::drained;
}

/// Runs a cycle and arms the timer for the next one.
void cycle(flusher_actor* self) {
  auto& st = self->state;
  if (st.stopped)
    return;
  if (!st.leading) {
    if (st.return_pending && !return_own_inflight(self))
      schedule(self, st.retry.next());
    return;
  }
  switch (run_cycle(self)) {
    case cycle_result::more:
      st.retry.reset();
      schedule(self, milliseconds(0));
      break;
    case cycle_result::drained:
      st.retry.reset();
      schedule(self, st.ctx->cfg.flush_interval);
      break;
    case cycle_result::failed:
      schedule(self, st.retry.next());
      break;
    case cycle_result::not_leading:
      if (st.return_pending)
        schedule(self, st.retry.next());
      break;
  }
}

/// Stop path: drain while leading, bounded by the deadline (wall ms).
bool final_drain(flusher_actor* self, int64_t deadline) {
  auto& st = self->state;
  while (st.leading && wall_ms() < deadline) {
    if (st.ctx->lease_valid_until.load(std::memory_order_acquire) == 0)
      break;  // the lease is gone: another instance drains
    auto r = run_cycle(self);
    if (r == cycle_result::drained)
      break;
    if (r == cycle_result::failed) {
      auto delay = st.retry.next();
      if (wall_ms() + delay.count() >= deadline)
        break;
      std::this_thread::sleep_for(delay);  // detached actor: its own thread
    }
  }
  if (st.leading && wall_ms() >= deadline)
    TALLY_WARN("flusher", "stop deadline passed before every batch was flushed; the rest waits in redis");
  st.leading = false;
  return return_own_inflight(self);
}

caf::behavior flusher_behavior(flusher_actor* self, flush_context_ptr ctx, caf::actor supervisor) {
  auto& st = self->state;
  st.ctx = std::move(ctx);
  st.supervisor = std::move(supervisor);
  st.batches_key = st.ctx->key("batches");
  st.inflight_key = st.ctx->inflight_key(st.ctx->instance);
  st.deadletter_key = st.ctx->key("deadletter");
  st.channel = st.ctx->key("invalidate");
  st.retry = backoff(milliseconds(50), std::max(milliseconds(200), st.ctx->cfg.retry_backoff_max));
  // A leftover inflight list of an earlier run with this id goes back first.
  self->send(self, fcycle_atom::value, st.timer_generation);
  return {
    [=](lead_atom, uint64_t epoch) {
      auto& s = self->state;
      s.leading = true;
      s.epoch = epoch;
      s.registered = false;
      s.next_orphan_scan = 0;
      s.next_prune = 0;
      s.retry.reset();
      TALLY_INFO("flusher", "flushing as leader, epoch " << epoch);
      if (!s.stopped)
        schedule(self, milliseconds(0));
    },
    [=](follow_atom) {
      auto& s = self->state;
      if (!s.leading)
        return;
      TALLY_INFO("flusher", "not the leader any more (epoch " << s.epoch << "): flushing stops");
      stop_leading(self);
      if (s.return_pending && !s.stopped)
        schedule(self, s.retry.next());
    },
    [=](fcycle_atom, uint64_t gen) {
      if (gen == self->state.timer_generation)
        cycle(self);
    },
    [=](fstop_atom, int64_t deadline) -> bool {
      auto& s = self->state;
      s.stopped = true;
      ++s.timer_generation;
      return final_drain(self, deadline);
    },
  };
}

} // namespace

caf::actor spawn_flusher(caf::event_based_actor* supervisor, flush_context_ptr ctx) {
  return supervisor->spawn<caf::linked + caf::detached>(flusher_behavior, std::move(ctx),
                                                        caf::actor_cast<caf::actor>(supervisor));
}

} // namespace tally
