// actors/flusher.cpp — see flusher.hpp.
#include "actors/flusher.hpp"

#include "actors/stage2_io.hpp"
#include "adapters/batch_codec.hpp"
#include "core/backoff.hpp"
#include "adapters/flush_sql.hpp"
#include "adapters/read_sql.hpp"
#include "core/invalidation.hpp"
#include "core/read_cache.hpp"
#include "core/failpoint.hpp"
#include "core/log.hpp"
#include "core/memory_release.hpp"

#include <caf/all.hpp>

#include <map>
#include <thread>
#include <unordered_set>

namespace tally {

namespace {

using namespace std::chrono;

// One cycle takes at most this much from `batches`; a longer backlog is
// drained by the cycles that follow at once (no waiting out the interval),
// so the chunk bounds one transaction's size, never what gets flushed. A
// flush that times out halves the chunk (down to one batch); successes grow
// it back. Decoded and merged, a chunk takes about 20 times its encoded
// size in memory (README, "Memory"), hence 8 MiB: about 170,000 rows, whose
// transaction's fixed cost is already negligible.
constexpr int max_chunk_batches = 64;
constexpr uint64_t chunk_bytes = 8u << 20;
/// Deferred increments applied per cycle (one short transaction each).
constexpr long deferred_per_cycle = 1000;
// Producers learn from these sets that their batches were applied; a day
// outlives any producer's retention window.
constexpr milliseconds applied_marker_ttl = hours(24);
// Applied ids a failed report did not deliver are sent with the next one,
// up to this many (about 3 MB); past it the oldest go, and their producers
// re-push them after repush_after, a copy the dedup table skips.
constexpr size_t max_unreported_ids = size_t{1} << 16;

enum class cycle_result {
  drained,  // nothing left in `batches` or in flight
  more,     // committed a chunk; more is waiting
  failed,   // retry after a backoff
  not_leading,
};

/// A database the flusher takes batches from: the active one (through the
/// link, which follows switches) or another configured one, drained so that
/// nothing written before a switch is stranded there.
struct source {
  uint32_t db = 0;
  std::string display;
  std::optional<adapters::redis_client> client;  // other databases only
  bool registered = false;      // our id is in that database's instances set
  int64_t next_orphan_scan = 0;
  int64_t next_visit = 0;       // other databases: when to look again
};

struct flusher_state {
  static inline const char* name = "flusher";
  flush_context_ptr ctx;
  caf::actor supervisor;
  redis_link redis;  // the active database
  pg_link pg;
  std::map<uint32_t, source> sources;  // by database id; the active one has no own client

  bool leading = false;
  size_t cycle_bytes = 0;  // what this cycle's batches took in memory, about (release_memory_after)
  uint64_t epoch = 0;
  uint64_t publish_seq = 0;  // invalidations published under `epoch`
  bool stopped = false;
  bool return_pending = true;  // own inflight may hold batches to hand back
  uint64_t timer_generation = 0;
  int chunk = max_chunk_batches;  // batches per transaction, adaptive
  bool priority_known = false;    // deadlock priority checked on this Postgres
  bool deadlock_priority = false;
  bool deferred_left = true;      // tally_spend_deferred may hold increments to apply
  std::vector<std::string> unreported;  // applied batch ids no report has delivered yet
  backoff retry{milliseconds(50), milliseconds(2000)};
};

/// The client of `src` and a way to pass results through it: the active
/// database goes through the link (reconnects, failure detector), another
/// one through its own client.
struct source_io {
  flusher_state& st;
  source& src;
  bool active;

  adapters::redis_client& client() { return active ? *st.redis.client : *src.client; }
  template <class R>
  R check(R r) {
    if (active)
      return st.redis.check(std::move(r));
    bool transport_ok = r.ok() || r.error().code == static_cast<int>(adapters::redis_errc::reply_error);
    if (!transport_ok)
      src.client.reset();
    st.ctx->fleet->report(src.db, transport_ok);
    return r;
  }
};

using flusher_actor = caf::stateful_actor<flusher_state, caf::event_based_actor>;

/// The deferred-backlog gauges: the leader's last reading, 0 elsewhere (so
/// that a fleet's max is the leader's figure).
void set_deferred_backlog(flusher_state& st, adapters::deferred_backlog b) {
  st.ctx->counters->deferred_waiting.store(b.rows);
  st.ctx->counters->deferred_oldest_seconds.store(b.oldest_seconds);
}

void report_deferred_backlog(flusher_state& st) {
  if (auto b = adapters::read_deferred_backlog(*st.pg.client, st.ctx->cfg.pg_schema))
    set_deferred_backlog(st, *b);
  else
    TALLY_DEBUG("flusher", b.error().message);
}

void schedule(flusher_actor* self, milliseconds delay) {
  self->delayed_send(self, delay, fcycle_atom::value, ++self->state.timer_generation);
}

/// Hands the own inflight lists back to `batches` (not leading: another
/// leader must be able to apply them). Safe at any time: an item is either
/// already applied (then skipped as duplicate) or not. The active
/// database's list must go back; those in other databases are returned on a
/// best-effort basis (a leader's orphan scan finds them otherwise).
bool return_own_inflight(flusher_actor* self) {
  auto& st = self->state;
  for (auto& [db, src] : st.sources) {
    if (!src.client)
      continue;
    auto r = st.ctx->keys.return_inflight(*src.client, st.ctx->instance);
    if (!r)
      src.client.reset();
    else if (*r > 0)
      TALLY_INFO("flusher", "returned " << *r << " inflight batches to the batches list of " << src.display);
  }
  if (!st.redis.ensure())
    return false;
  auto r = st.redis.check(st.ctx->keys.return_inflight(*st.redis.client, st.ctx->instance));
  if (!r) {
    TALLY_WARN("flusher", "cannot return the inflight list to batches: " << r.error().message);
    return false;
  }
  if (*r > 0)
    TALLY_INFO("flusher", "returned " << *r << " inflight batches to the batches list");
  st.return_pending = false;
  return true;
}

/// False when the scan lost the connection: io.check() then dropped the
/// client, and nothing more may be sent through `io` this cycle.
bool recover_orphans(source_io& io) {
  auto orphans = io.check(io.st.ctx->keys.return_orphans(io.client(), io.st.ctx->instance));
  if (!orphans) {
    TALLY_WARN("flusher", "scanning " << io.src.display << " for orphaned inflight lists failed: "
                                      << orphans.error().message);
    return orphans.error().code == static_cast<int>(adapters::redis_errc::reply_error);
  }
  for (const auto& o : *orphans)
    if (o.batches > 0)
      TALLY_INFO("flusher", "instance " << o.instance << " is gone: returned its " << o.batches
                                        << " inflight batches to the batches list of " << io.src.display);
  return true;
}

/// The message readers invalidate their caches by (core/invalidation.hpp):
/// every batch the transaction covered and every tally_spend row it touched.
std::string invalidation_of(const std::vector<adapters::batch>& batches, const std::string& leader, uint64_t epoch,
                            uint64_t seq) {
  invalidation_message m;
  m.leader = leader;
  m.epoch = epoch;
  m.seq = seq;
  std::unordered_set<entity_key, entity_key_hash> seen;
  for (const auto& b : batches) {
    if (m.batch_ids.size() < invalidation_max_batch_ids)
      m.batch_ids.push_back(b.id);
    adapters::for_each_spend_row(b, [&](std::string_view type, std::string_view scope, std::string_view id,
                                        const measure_values&) {
      if (m.all || !seen.insert(make_entity_key(type, scope, id)).second)
        return;
      if (m.entities.size() == invalidation_max_entities) {
        m.all = true;  // too many to name: readers drop everything
        m.entities.clear();
        return;
      }
      m.entities.push_back({std::string(type), std::string(scope), std::string(id)});
    });
  }
  return encode_invalidation(m);
}

/// Tells producers which batches were applied, in the active database
/// (where their retention looks first), with whatever an earlier report
/// failed to deliver. Best effort: what still fails waits for the next
/// report or cycle rather than for a producer's repush_after.
void report_applied(flusher_state& st, std::vector<std::string> ids) {
  const size_t carried = st.unreported.size();
  // New ids first: past the bound the oldest are dropped.
  ids.insert(ids.end(), std::make_move_iterator(st.unreported.begin()), std::make_move_iterator(st.unreported.end()));
  st.unreported.clear();
  if (ids.empty())
    return;
  if (st.redis.ensure()) {
    auto marked = st.redis.check(st.ctx->keys.mark_applied(*st.redis.client, ids, applied_marker_ttl));
    if (marked) {
      if (carried > 0)
        TALLY_INFO("flusher", "told producers of " << carried << " applied batches an earlier report missed");
      return;
    }
    if (carried == 0)  // once per failing stretch, not once per cycle
      TALLY_WARN("flusher", "telling producers what was applied failed, kept for the next report: "
                              << marked.error().message);
  }
  if (ids.size() > max_unreported_ids)
    ids.resize(max_unreported_ids);
  st.unreported = std::move(ids);
}

void stop_leading(flusher_actor* self) {
  auto& st = self->state;
  st.leading = false;
  set_deferred_backlog(st, {});
  st.return_pending = true;
  return_own_inflight(self);
}

/// One flush cycle on one source database: orphans, claim, decode, one
/// Postgres transaction, ack.
cycle_result run_cycle(flusher_actor* self, source_io& io) {
  auto& st = self->state;
  auto& cfg = st.ctx->cfg;
  auto* counters = st.ctx->counters;
  if (!st.leading)
    return cycle_result::not_leading;
  if (!st.ctx->lease_valid())
    return cycle_result::failed;  // the lease actor is about to report
  std::string why;
  if (!st.pg.ensure(*st.ctx, "flusher", why))
    return cycle_result::failed;
  if (!io.src.registered) {
    // Before anything is in our inflight list, make it findable if we die.
    if (!io.check(st.ctx->keys.register_instance(io.client(), st.ctx->instance)))
      return cycle_result::failed;
    io.src.registered = true;
  }
  int64_t now = steady_ms();
  if (now >= io.src.next_orphan_scan) {
    if (!recover_orphans(io))
      return cycle_result::failed;
    io.src.next_orphan_scan = now + cfg.lease_ttl.count() / 2;
  }

  auto moved = io.check(st.ctx->keys.claim_chunk(io.client(), st.ctx->instance, st.chunk, chunk_bytes));
  if (!moved) {
    TALLY_WARN("flusher", "moving batches to inflight failed: " << moved.error().message);
    return cycle_result::failed;
  }
  long long left = moved->left;
  // The oldest `chunk` of the inflight list (only we push to it, at the left).
  const long long window = st.chunk;
  auto items = io.check(st.ctx->keys.read_inflight(io.client(), st.ctx->instance, window));
  if (!items) {
    TALLY_WARN("flusher", "reading the inflight list failed: " << items.error().message);
    return cycle_result::failed;
  }
  if (items->empty())
    return left > 0 ? cycle_result::more : cycle_result::drained;
  TALLY_FAILPOINT("flush_after_move");  // batches in flight, no transaction yet

  for (const auto& item : *items)
    st.cycle_bytes += item.size() * 8;  // decoded, merged and staged: about 8x the batch bytes
  std::vector<adapters::batch> decoded;
  decoded.reserve(items->size());
  std::unordered_set<std::string> seen;
  size_t dead = 0;
  for (const auto& item : *items) {
    auto b = adapters::decode_batch(item, adapters::check_table_shape);
    std::string bad = !b ? std::string("decode: ") + adapters::to_string(static_cast<adapters::codec_errc>(b.error().code))
                             + " (" + b.error().message + ")"
                         : adapters::check_batch_shape(*b);
    if (!bad.empty()) {
      auto r = io.check(st.ctx->keys.dead_letter(io.client(), st.ctx->instance, item));
      if (!r) {
        TALLY_WARN("flusher", "moving a bad batch to the dead-letter list failed: " << r.error().message);
        return cycle_result::failed;
      }
      counters->dead_lettered.fetch_add(1);
      ++dead;
      TALLY_ERROR("flusher", "batch of " << item.size() << " bytes" << (b ? " (id " + b->id + ")" : std::string())
                                         << " moved to " << st.ctx->keys.deadletter() << ": " << bad);
      continue;
    }
    if (seen.insert(b->id).second)
      decoded.push_back(std::move(*b));
  }
  // What this transaction covers: the rightmost `taken` items of the list.
  const size_t taken = items->size() - dead;
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
  if (out->deferred > 0) {
    counters->rows_deferred.fetch_add(out->deferred);
    st.deferred_left = true;
  }
  bool notable = out->prepare_time + out->transaction_time > milliseconds(1000) || out->lock_retries > 0
                 || out->deferred > 0;
  TALLY_LOG(notable ? log_level::info : log_level::debug,
            "flusher", "flushed " << out->batches_new << " batches (" << out->batches_duplicate
                                  << " duplicates), " << out->rows << " rows, epoch " << st.epoch << " in "
                                  << out->prepare_time.count() << " ms preparing + "
                                  << out->transaction_time.count() << " ms in the transaction"
                                  << (out->lock_retries ? ", " + std::to_string(out->lock_retries)
                                                            + " upserts retried after a lock timeout"
                                                        : std::string())
                                  << (out->deferred ? ", " + std::to_string(out->deferred)
                                                        + " entity totals deferred (held by another writer)"
                                                    : std::string()));
  st.chunk = std::min(max_chunk_batches, st.chunk * 2);
  // Committed: drop exactly the items this transaction covered (the right
  // end; LTRIM of everything deletes the key). If this fails the next cycle
  // finds the same batches already applied and skips them.
  auto del = io.check(st.ctx->keys.ack_chunk(io.client(), st.ctx->instance, taken));
  if (!del) {
    TALLY_WARN("flusher", "deleting the applied inflight list failed: " << del.error().message);
    return cycle_result::failed;
  }
  // Readers count the messages: a number skipped (this publish failing
  // below) tells them to drop their caches.
  uint64_t publish_seq = out->batches_new > 0 ? ++st.publish_seq : 0;
  // Producers look for their applied ids and for invalidations in the
  // active database, whichever database the batches came from. Both are
  // best effort: a marker that cannot be delivered within
  // max_unreported_ids costs a re-push the dedup table skips, a lost
  // invalidation a gap every reader sees.
  std::vector<std::string> ids;
  ids.reserve(decoded.size());
  for (const auto& b : decoded)
    ids.push_back(b.id);
  report_applied(st, std::move(ids));
  // A failed command may have dropped the connection: look before using it.
  if (out->batches_new > 0 && st.redis.client)
    (void)st.redis.check(st.ctx->keys.publish_invalidation(
      *st.redis.client, invalidation_of(decoded, st.ctx->instance, st.epoch, publish_seq)));
  bool inflight_left = static_cast<long long>(items->size()) == window;  // may hold more
  return left > 0 || inflight_left ? cycle_result::more : cycle_result::drained;
}

/// A cycle on the active database.
cycle_result active_cycle(flusher_actor* self) {
  auto& st = self->state;
  if (!st.leading)
    return cycle_result::not_leading;
  if (!st.redis.ensure())
    return cycle_result::failed;
  auto& src = st.sources[*st.redis.db()];
  src.db = *st.redis.db();
  src.display = st.redis.db_display();
  src.client.reset();  // the link is its connection now
  source_io io{st, src, true};
  auto r = run_cycle(self, io);
  if (r == cycle_result::drained && !st.unreported.empty())
    report_applied(st, {});  // nothing was applied this cycle to carry them
  return r;
}

/// Cycles on every other configured database that may be reachable (its
/// circuit is not open), so batches and inflight lists written there before
/// a switch are applied. A database that held nothing is looked at again
/// after lease_ttl/2; one that held batches at once. Returns more when any
/// had batches.
cycle_result drain_others(flusher_actor* self) {
  auto& st = self->state;
  auto view = st.ctx->fleet->view();
  auto active = view->active_db_id();
  int64_t now = steady_ms();
  bool more = false;
  for (auto it = st.sources.begin(); it != st.sources.end();)
    it = view->find(it->first) ? std::next(it) : st.sources.erase(it);  // removed databases
  for (const auto& db : view->dbs) {
    if (active && db.id == *active)
      continue;
    auto& src = st.sources[db.id];
    src.db = db.id;
    src.display = db.spec.display;
    if (db.state == circuit_state::open || !db.endpoint || now < src.next_visit) {
      if (db.state == circuit_state::open)
        src.client.reset();
      continue;
    }
    if (!src.client || !src.client->connected()) {
      auto c = adapters::redis_client::connect(*db.endpoint, st.ctx->cfg.redis_timeout);
      if (!c) {
        src.next_visit = now + st.ctx->cfg.lease_ttl.count() / 2;
        continue;
      }
      src.client.emplace(std::move(*c));
      src.registered = false;
    }
    source_io io{st, src, false};
    auto r = run_cycle(self, io);
    if (r == cycle_result::not_leading)
      return r;
    if (r == cycle_result::more) {
      more = true;
    } else {
      src.next_visit = now + st.ctx->cfg.lease_ttl.count() / 2;
    }
  }
  return more ? cycle_result::more : cycle_result::drained;
}

/// Adds deferred entity-total increments to their rows, a bounded number
/// per cycle. Failing here fails no flush and holds up no stop: they are
/// committed already, reads count them where they are, and a later cycle
/// (of this leader or the next) applies them.
cycle_result deferred_cycle(flusher_actor* self) {
  auto& st = self->state;
  if (!st.deferred_left || !st.leading)
    return cycle_result::drained;
  std::string why;
  if (!st.pg.ensure(*st.ctx, "flusher", why))
    return cycle_result::drained;
  // Every increment whose row is free goes without waiting; then it waits
  // briefly for the oldest held one (never in a cycle). A gateway's own
  // transactions end in milliseconds; a row held longer is tried again next
  // cycle, so a long holder costs each flush cycle only this wait.
  auto wait = std::min(st.ctx->cfg.lock_timeout, milliseconds(100));
  auto n = adapters::apply_deferred(*st.pg.client, st.ctx->cfg.pg_schema, deferred_per_cycle, wait);
  if (!n) {
    TALLY_WARN("flusher", n.error().message << "; the rest is applied in a later cycle");
    return cycle_result::drained;
  }
  st.ctx->counters->deferred_applied.fetch_add(static_cast<uint64_t>(n->applied));
  if (n->held) {
    // Reads count what waits, so nothing is wrong yet; but a foreign
    // transaction holding a row for long makes tally_spend lag for whoever
    // reads it directly: the gauges let an alert say so.
    report_deferred_backlog(st);
    return cycle_result::drained;
  }
  if (n->applied < deferred_per_cycle) {
    st.deferred_left = false;
    set_deferred_backlog(st, {});  // none left that another applier was not already applying
    return cycle_result::drained;
  }
  return cycle_result::more;
}

/// The active database first; when it is drained, the others; then the
/// deferred increments.
cycle_result full_cycle(flusher_actor* self) {
  auto r = active_cycle(self);
  if (r != cycle_result::drained)
    return r;
  r = drain_others(self);
  if (r != cycle_result::drained)
    return r;
  return deferred_cycle(self);
}

/// Runs a cycle and arms the timer for the next one.
void cycle(flusher_actor* self) {
  auto& st = self->state;
  if (st.stopped)
    return;
  if (!st.leading) {
    bool returning = st.return_pending && !return_own_inflight(self);
    // Batches committed under a lease this instance lost are applied
    // whoever leads now; their producers keep them until told (or until
    // repush_after), and nobody else knows these ids.
    if (!st.unreported.empty())
      report_applied(st, {});
    if (returning || !st.unreported.empty())
      schedule(self, st.retry.next());
    return;
  }
  auto r = full_cycle(self);
  release_memory_after(std::exchange(st.cycle_bytes, 0));
  switch (r) {
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

/// Resets what a new epoch of leadership starts from.
void start_leading(flusher_state& st, uint64_t epoch) {
  st.leading = true;
  if (epoch != st.epoch)
    st.publish_seq = 0;  // readers see a new epoch as a gap anyway
  st.epoch = epoch;
  st.deferred_left = true;  // an earlier leader may have left some
  for (auto& [db, src] : st.sources) {
    src.registered = false;
    src.next_orphan_scan = 0;
    src.next_visit = 0;
  }
  st.retry.reset();
}

/// Stop path: drain while leading, bounded by the deadline (wall ms).
///
/// The lease actor may take the lease again while the drain runs (a Redis
/// stall made a renewal miss; nobody else took it): a new epoch of this
/// instance. A transaction of the old epoch is then fenced, and nothing
/// would deliver the new epoch to this loop (the lead_atom waits behind the
/// stop). So the loop waits up to lease_ttl for a lost lease to come back,
/// and after a fence adopts the instance's own newer epoch, and drains on.
bool final_drain(flusher_actor* self, int64_t deadline) {
  auto& st = self->state;
  auto* counters = st.ctx->counters;
  // True when this instance holds a newer epoch than the flusher's, now
  // the flusher's.
  auto adopt_own_newer_epoch = [&] {
    uint64_t held = counters->epoch.load();
    if (counters->lease_held.load() == 0 || held <= st.epoch || !st.ctx->lease_valid())
      return false;
    TALLY_INFO("flusher", "stopping: this instance took the lease again, epoch " << held << "; draining on");
    start_leading(st, held);
    return true;
  };
  while (wall_ms() < deadline) {
    if (!st.leading && !adopt_own_newer_epoch())
      break;
    if (st.ctx->lease_valid_until.load(std::memory_order_acquire) == 0) {
      // Lost: wait for the lease actor to take it again, or for another
      // instance to (then that one drains).
      int64_t give_up = std::min(deadline, wall_ms() + st.ctx->cfg.lease_ttl.count());
      while (wall_ms() < give_up && st.ctx->lease_valid_until.load(std::memory_order_acquire) == 0)
        std::this_thread::sleep_for(milliseconds(20));  // detached actor: its own thread
      if (st.ctx->lease_valid_until.load(std::memory_order_acquire) == 0)
        break;  // the lease is gone: another instance drains
      adopt_own_newer_epoch();
    }
    auto r = full_cycle(self);
    if (r == cycle_result::drained)
      break;
    if (r == cycle_result::failed) {
      auto delay = st.retry.next();
      if (wall_ms() + delay.count() >= deadline)
        break;
      std::this_thread::sleep_for(delay);
    }
  }
  if (st.leading && wall_ms() >= deadline)
    TALLY_WARN("flusher", "stop deadline passed before every batch was flushed; the rest waits in redis");
  st.leading = false;
  set_deferred_backlog(st, {});
  if (!st.unreported.empty() && wall_ms() < deadline)
    report_applied(st, {});  // a last try: after exit only repush_after tells the producers
  return return_own_inflight(self);
}

caf::behavior flusher_behavior(flusher_actor* self, flush_context_ptr ctx, caf::actor supervisor) {
  auto& st = self->state;
  st.ctx = std::move(ctx);
  st.supervisor = std::move(supervisor);
  st.redis = redis_link(*st.ctx->fleet, "flusher", st.ctx->cfg.redis_timeout);
  st.retry = backoff(milliseconds(50), std::max(milliseconds(200), st.ctx->cfg.retry_backoff_max));
  // A leftover inflight list of an earlier run with this id goes back first.
  self->send(self, fcycle_atom::value, st.timer_generation);
  return {
    [=](lead_atom, uint64_t epoch) {
      auto& s = self->state;
      start_leading(s, epoch);
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
      if ((s.return_pending || !s.unreported.empty()) && !s.stopped)
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
