// actors/buffer_writer.cpp — see buffer_writer.hpp.
#include "actors/buffer_writer.hpp"

#include "actors/aggregator.hpp"
#include "actors/atoms.hpp"
#include "actors/retention.hpp"
#include "adapters/batch_codec.hpp"
#include "adapters/read_sql.hpp"
#include "adapters/redis_keyspace.hpp"
#include "core/backoff.hpp"
#include "core/log.hpp"
#include "core/memory_release.hpp"
#include "core/read_cache.hpp"

#include <caf/all.hpp>

#include <chrono>
#include <deque>
#include <optional>

namespace tally {

namespace {

using namespace std::chrono;

int64_t now_ms() {
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

struct pending_batch {
  uint64_t seq;
  std::string id;
  std::string bytes;
  bool attempted = false;  // the failure detector counts a batch's first failed write only
};

struct writer_state {
  static inline const char* name = "buffer_writer";
  ingest_state* ingest = nullptr;
  std::vector<caf::actor> aggregators;
  std::string instance;
  std::optional<adapters::redis_keyspace> keys;
  const redis_fleet* fleet = nullptr;
  redis_link redis;
  caf::actor retention;
  std::shared_ptr<journal_set> journals;
  bool journal_full = false;      // the own journal refused an append; cleared when it empties
  bool spilling = false;          // batches went to the journal since it was last replayed
  std::string failure;            // the last write failure logged (once per streak)

  uint64_t next_seq = 0;
  std::deque<pending_batch> pending;
  std::deque<std::pair<uint64_t, durable_ticket>> waiting;  // (seq watermark, ticket)
  std::vector<durable_ticket> cycle_tickets;

  bool collecting = false;
  bool reclaiming = false;        // this cycle empties the id table (ingest_state::begin_reclaim)
  uint64_t reclaims_unlogged = 0;
  uint64_t tags_overflowed_unlogged = 0;  // tag parts given overflow_ids since that line
  int64_t reclaim_logged_ms = 0;
  size_t replies_missing = 0;
  std::vector<agg_map_ptr> maps;
  std::vector<caf::actor> map_owners;

  uint64_t timer_generation = 0;  // cycle timers; a newer one voids older ones
  uint64_t retry_generation = 0;  // backoff timers, counted apart so a cycle
                                  // scheduled meanwhile cannot void a retry
  bool in_backoff = false;
  backoff retry{milliseconds(50), milliseconds(2000)};

  bool draining = false;
  bool need_final_cycle = false;
  int64_t drain_deadline_ms = 0;
  caf::response_promise drain_promise;
};

using writer_actor = caf::stateful_actor<writer_state, caf::event_based_actor>;

void start_cycle(writer_actor* self);

void schedule(writer_actor* self, milliseconds delay) {
  auto gen = ++self->state.timer_generation;
  if (delay.count() <= 0)
    self->send(self, cycle_atom::value, gen);
  else
    self->delayed_send(self, delay, cycle_atom::value, gen);
}

void complete_tickets(writer_state& st, uint64_t written_up_to, bool all) {
  while (!st.waiting.empty() && (all || st.waiting.front().first <= written_up_to)) {
    st.waiting.front().second.done(field_error{});
    st.waiting.pop_front();
  }
}

/// What the health checks say about the databases, from the writer's side.
enum class outlook {
  active,      // a database takes writes
  judging,     // none active, but some database has not been judged yet (starting)
  recovering,  // none active; some recovered and wait out their grace period
  down,        // every database is down (circuit open)
};

outlook fleet_outlook(const writer_state& st) {
  auto view = st.fleet->view();
  if (view->active >= 0)
    return outlook::active;
  bool recovering = false;
  for (const auto& db : view->dbs) {
    if (db.state == circuit_state::unknown)
      return outlook::judging;
    recovering |= db.state != circuit_state::open;
  }
  return recovering ? outlook::recovering : outlook::down;
}

/// Whether pending batches should go to the journal now. While running:
/// whenever no database is active (writes have nowhere to go) or too many
/// wait. While stopping: only when every database is down or the deadline
/// passed; a database in its grace period will take them before the
/// deadline, and Redis beats a local file the next start may never read.
bool should_spill(const writer_state& st, int64_t now) {
  auto o = fleet_outlook(st);
  if (st.draining)
    return o == outlook::down || now >= st.drain_deadline_ms;
  return o == outlook::down || o == outlook::recovering
         || st.pending.size() >= st.ingest->cfg.max_pending_batches;
}

bool journals_empty(const writer_state& st) {
  if (!st.journals)
    return true;
  if (st.journals->own && !st.journals->own->empty())
    return false;
  for (const auto& j : st.journals->adopted)
    if (!j.empty())
      return false;
  return true;
}

void update_journal_counters(writer_state& st) {
  uint64_t batches = 0, bytes = 0;
  if (st.journals) {
    if (st.journals->own) {
      batches += st.journals->own->records();
      bytes += st.journals->own->size_bytes();
    }
    for (const auto& j : st.journals->adopted) {
      batches += j.records();
      bytes += j.size_bytes();
    }
  }
  st.ingest->counters.journal_batches.store(batches);
  st.ingest->counters.journal_bytes.store(bytes);
}

/// Moves pending batches, oldest first, into the own journal and fsyncs once
/// (group commit); their durable records are then acknowledged. Stops at
/// the journal's size bound. Returns how many moved.
size_t spill(writer_actor* self, const std::string& why) {
  auto& st = self->state;
  if (st.pending.empty() || !st.journals || !st.journals->own)
    return 0;
  auto& journal = *st.journals->own;
  size_t appended = 0;
  for (const auto& b : st.pending) {
    auto appended_ok = journal.append(b.bytes);
    if (!appended_ok) {
      if (appended_ok.error().code == static_cast<int>(adapters::journal_errc::full)) {
        if (!st.journal_full)
          TALLY_ERROR("buffer_writer", "spill journal " << journal.path() << " is full (" << journal.size_bytes()
                                       << " bytes, journal_max_bytes): ingest pushes back until redis takes batches");
        st.journal_full = true;
        st.ingest->counters.journal_full.store(1);
      } else {
        TALLY_ERROR("buffer_writer", "spill journal append failed: " << appended_ok.error().message);
      }
      break;
    }
    ++appended;
  }
  if (appended == 0)
    return 0;
  if (auto synced = journal.sync(); !synced) {
    // Not durable: keep them pending (a copy in the file is harmless: a
    // replay pushes it idempotently).
    TALLY_ERROR("buffer_writer", "spill journal fsync failed: " << synced.error().message);
    return 0;
  }
  if (!st.spilling)
    TALLY_WARN("buffer_writer", "writing batches to the spill journal " << journal.path() << " (" << why << ")");
  st.spilling = true;
  uint64_t last_seq = st.pending[appended - 1].seq;
  st.pending.erase(st.pending.begin(), st.pending.begin() + static_cast<long>(appended));
  st.ingest->counters.pending_batches.store(st.pending.size());
  st.ingest->counters.journaled.fetch_add(appended);
  update_journal_counters(st);
  complete_tickets(st, last_seq, false);
  return appended;
}

/// Pushes one journal's records, in order, to the active database. False
/// (the journal kept whole) when a push failed.
bool replay(writer_actor* self, adapters::spill_journal& journal, std::string& why) {
  auto& st = self->state;
  size_t pushed = 0;
  bool ok = true;
  auto read = journal.for_each([&](std::string_view record) {
    auto id = adapters::peek_batch_id(record);
    status pushed_ok;
    if (id) {
      auto r = st.redis.check(st.keys->push_batch(*st.redis.client, *id, record));
      if (!r)
        pushed_ok = r.error();
    } else {
      // Not readable as a batch: push it anyway, the leader dead-letters it
      // with the reason (never dropped silently).
      pushed_ok = st.redis.check(st.keys->push_batch_copy(*st.redis.client, record));
    }
    if (!pushed_ok) {
      why = pushed_ok.error().message;
      ok = false;
      return false;
    }
    ++pushed;
    st.ingest->counters.replayed.fetch_add(1);
    if (id)
      self->send(st.retention, retain_atom::value, *id, std::string(record), st.redis.generation());
    return true;
  });
  if (!read) {
    why = "reading " + journal.path() + ": " + read.error().message;
    return false;
  }
  if (ok && pushed > 0)
    TALLY_INFO("buffer_writer", "replayed " << pushed << " batches from the spill journal " << journal.path()
                                            << " to redis " << st.redis.db_display());
  return ok;
}

/// Replays every journal (earlier processes' first, then the own one) and
/// empties it. False when a push failed.
bool replay_journals(writer_actor* self, std::string& why) {
  auto& st = self->state;
  if (!st.journals)
    return true;
  auto& adopted = st.journals->adopted;
  while (!adopted.empty()) {
    if (!adopted.front().empty() && !replay(self, adopted.front(), why))
      return false;
    if (auto removed = adopted.front().remove(); !removed)
      TALLY_WARN("buffer_writer", "removing a replayed journal failed: " << removed.error().message);
    adopted.erase(adopted.begin());
    update_journal_counters(st);
  }
  if (st.journals->own && !st.journals->own->empty()) {
    if (!replay(self, *st.journals->own, why))
      return false;
    if (auto cleared = st.journals->own->clear(); !cleared) {
      why = "clearing the spill journal: " + cleared.error().message;
      return false;
    }
    st.journal_full = false;
    st.ingest->counters.journal_full.store(0);
    st.spilling = false;
    update_journal_counters(st);
  }
  return true;
}

/// Writes what waits (journals first, then pending batches, in order); on
/// failure journals them when no database is healthy or too many wait, and
/// arms the backoff. True when nothing is left to write.
bool write_pending(writer_actor* self) {
  auto& st = self->state;
  std::string why;
  bool ok = false;
  if (fleet_outlook(st) == outlook::judging) {
    // Starting: the health checks have not judged every database yet. Not
    // a failure; look again shortly.
    st.in_backoff = true;
    self->delayed_send(self, milliseconds(20), retry_atom::value, ++st.retry_generation);
    return false;
  }
  if (st.redis.ensure()) {
    ok = replay_journals(self, why);
    while (ok && !st.pending.empty()) {
      auto& b = st.pending.front();
      auto r = st.redis.check(st.keys->push_batch(*st.redis.client, b.id, b.bytes), !b.attempted);
      b.attempted = true;
      if (!r) {
        why = "stage-1 write failed: " + r.error().message;
        ok = false;
        break;
      }
      st.ingest->counters.batches_written.fetch_add(1);
      st.ingest->counters.batch_bytes_written.fetch_add(b.bytes.size());
      self->send(st.retention, retain_atom::value, b.id, std::move(b.bytes), st.redis.generation());
      uint64_t seq = b.seq;
      st.pending.pop_front();
      st.ingest->counters.pending_batches.store(st.pending.size());
      complete_tickets(st, seq, false);
    }
  } else {
    why = "no healthy redis database";
  }
  if (ok) {
    if (!st.failure.empty())
      TALLY_INFO("buffer_writer", "stage-1 writes go through again, to redis " << st.redis.db_display());
    st.failure.clear();
    st.retry.reset();
    st.in_backoff = false;
    complete_tickets(st, 0, true);
    return true;
  }
  st.ingest->counters.stage1_failures.fetch_add(1);
  if (should_spill(st, now_ms()))
    spill(self, why);
  auto delay = st.retry.next();
  if (why != st.failure)
    TALLY_WARN("buffer_writer", why << "; " << st.pending.size() << " batches pending; retrying with backoff");
  st.failure = why;
  st.in_backoff = true;
  self->delayed_send(self, delay, retry_atom::value, ++st.retry_generation);
  return false;
}

bool tickets_waiting(writer_state& st) {
  return !st.waiting.empty() || st.ingest->tickets.size_approx() > 0;
}

/// After a cycle or a write: decide when the next cycle runs.
void after_cycle(writer_actor* self) {
  auto& st = self->state;
  if (st.draining) {
    // Done once a cycle that began after close() has swapped every shard
    // (it holds every accepted event) and its batches are in Redis, and the
    // journals are replayed too, unless every database is down (then they
    // wait for the next start).
    if (!st.need_final_cycle && !st.collecting && st.pending.empty()
        && (journals_empty(st) || fleet_outlook(st) == outlook::down)) {
      // An empty journal is not left behind for the next start to adopt.
      if (journals_empty(st) && st.journals && st.journals->own) {
        if (auto removed = st.journals->own->remove(); !removed)
          TALLY_WARN("buffer_writer", "removing the empty spill journal failed: " << removed.error().message);
        st.journals->own.reset();
      }
      complete_tickets(st, 0, true);
      st.drain_promise.deliver(true);
      st.draining = false;
      return;
    }
    bool past_deadline = now_ms() >= st.drain_deadline_ms;
    if (!st.need_final_cycle && !st.collecting && should_spill(st, now_ms())) {
      // Redis will not take them in time: the journal keeps them for the
      // next start, which replays it first.
      spill(self, past_deadline ? "stop deadline passed" : "stopping while every redis database is down");
      if (st.pending.empty()) {
        complete_tickets(st, 0, true);
        st.drain_promise.deliver(true);
        st.draining = false;
        return;
      }
    }
    if (past_deadline) {
      TALLY_ERROR("buffer_writer", "stop deadline passed with " << st.pending.size()
                                   << " batches neither in redis nor in the spill journal; their events are lost");
      while (!st.waiting.empty()) {
        st.waiting.front().second.done(field_error{errc::stopped, field::none});
        st.waiting.pop_front();
      }
      st.drain_promise.deliver(false);
      st.draining = false;
      return;
    }
    if (!st.in_backoff || st.need_final_cycle)
      schedule(self, milliseconds{0});
    return;
  }
  if (st.in_backoff) {
    // Keep collecting while Redis is away: shard maps become compact
    // pending batches (bounded by max_pending_batches); the retry timer
    // writes them when Redis is back.
    schedule(self, st.ingest->cfg.buffer_interval);
    return;
  }
  // Group commit: durable records waiting means no sleeping out the
  // interval; nor does a shard at its key limit, unless the batches formed
  // already wait for Redis (then ingest is paced by Redis, as it should be).
  st.ingest->writer_sleeping.store(true, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  bool swap_now = st.ingest->swap_wanted.load(std::memory_order_relaxed)
                  && st.pending.size() < st.ingest->cfg.max_pending_batches;
  if ((tickets_waiting(st) || swap_now) && st.ingest->writer_sleeping.exchange(false))
    schedule(self, milliseconds{0});
  else
    schedule(self, st.ingest->cfg.buffer_interval);
}

/// Own writes are read back at once: the batch joins the read cache's
/// ledger before any durable reply for it can go out.
void remember_for_reads(read_cache& cache, const adapters::batch& part) {
  std::vector<std::pair<entity_key, measure_values>> deltas;
  adapters::for_each_spend_row(part, [&](std::string_view type, std::string_view scope, std::string_view id,
                                         const measure_values& m) {
    deltas.emplace_back(make_entity_key(type, scope, id), m);
  });
  cache.add_batch(part.id, std::move(deltas));
}

/// Turns the swapped maps into rows of every rollup and those into pending
/// batches; hands the maps back. Returns how many rows.
size_t form_batches(writer_actor* self) {
  auto& st = self->state;
  auto& ids = st.ingest->ids;
  const auto& specs = rollup_specs();
  flat_map<row_key, measure_values> rows(UINT32_MAX / 4);
  // Tag parts get ids here, at the cycle; when a flood of distinct tags
  // leaves the table no room, the rest are kept aside for this cycle's rows.
  overflow_ids overflow;
  for (size_t i = 0; i < st.maps.size(); ++i) {
    st.maps[i]->for_each([&](const agg_key& key, measure_values& m) {
      fan_out(key, ids, overflow, [&](const row_key& r) { rows.find_or_insert(r, hash_of(r))->add(m); });
    });
    self->send(st.map_owners[i], recycle_atom::value, st.maps[i]);
  }
  st.tags_overflowed_unlogged += overflow.size();
  st.maps.clear();
  st.map_owners.clear();

  if (rows.size() > 0) {
    // Each batch is encoded as soon as it is full: the rows as strings and
    // vectors (several hundred bytes each) exist for one batch at a time,
    // not for a whole interval of a flood of keys.
    adapters::batch_splitter splitter(st.ingest->cfg.max_batch_bytes, now_ms(), [&](adapters::batch&& part) {
      uint64_t seq = st.next_seq++;
      part.id = st.instance + ":" + std::to_string(seq);
      if (st.ingest->cache)
        remember_for_reads(*st.ingest->cache, part);
      st.pending.push_back({seq, part.id, adapters::encode_batch(part)});
    });
    for (size_t rollup = 0; rollup < specs.size(); ++rollup) {
      const rollup_spec& spec = specs[rollup];
      splitter.begin_table(spec.table, spec.key_columns(), spec.measure_columns());
      rows.for_each([&](const row_key& r, measure_values& m) {
        if (r.rollup != rollup)
          return;
        adapters::batch_row row;
        row.keys = key_texts(r, ids, overflow);
        row.values.reserve(spec.measures.size());
        for (measure ms : spec.measures)
          row.values.push_back(value_of(m, ms));
        splitter.add_row(std::move(row));
      });
    }
    splitter.finish();
    st.ingest->counters.pending_batches.store(st.pending.size());
  }
  return rows.size();
}

void finish_cycle(writer_actor* self) {
  auto& st = self->state;
  auto& ids = st.ingest->ids;
  // Rows, their texts and the encoded batches: about 256 bytes a row. Every
  // cycle reports, the quiet ones too, so a flood's memory goes back soon
  // after it ends.
  release_memory_after(form_batches(self) * 256);
  if (st.reclaiming) {
    // Every id handed out before begin_reclaim() was in the maps just
    // turned into texts: nothing refers to the table any more.
    uint32_t forgotten = ids.size();
    st.ingest->end_reclaim();
    st.reclaiming = false;
    ++st.reclaims_unlogged;
    // A flood of distinct texts reclaims every cycle: one line a minute.
    if (now_ms() - st.reclaim_logged_ms >= 60'000) {
      TALLY_INFO("buffer_writer", "id table emptied to make room (" << forgotten << " of at most "
                                  << ids.limit() << " texts; " << st.reclaims_unlogged
                                  << " time(s) since the last such line, " << st.tags_overflowed_unlogged
                                  << " tag part(s) kept outside it; intern_capacity sets the room)");
      st.reclaims_unlogged = 0;
      st.tags_overflowed_unlogged = 0;
      st.reclaim_logged_ms = now_ms();
    }
  }
  // Tickets of this cycle are done once every batch up to now is written.
  uint64_t watermark = st.pending.empty() ? 0 : st.pending.back().seq;
  for (auto& t : st.cycle_tickets)
    st.waiting.emplace_back(watermark, std::move(t));
  st.cycle_tickets.clear();
  st.collecting = false;
  if (!st.in_backoff)
    write_pending(self);
  after_cycle(self);
}

void start_cycle(writer_actor* self) {
  auto& st = self->state;
  if (st.collecting)
    return;
  if (st.pending.size() >= st.ingest->cfg.max_pending_batches) {
    // Redis is behind: the journal takes the excess; when it is full too,
    // stop collecting so memory stays bounded (the shards fill and ingest
    // pushes back).
    if (!st.in_backoff)
      write_pending(self);
    else
      spill(self, std::to_string(st.pending.size()) + " batches wait for redis (max_pending_batches)");
    if (st.pending.size() >= st.ingest->cfg.max_pending_batches) {
      after_cycle(self);
      return;
    }
  }
  st.collecting = true;
  st.need_final_cycle = false;
  // Cleared before the swaps are asked for: a shard that reaches its limit
  // again after its swap sets it anew.
  st.ingest->swap_wanted.store(false, std::memory_order_relaxed);
  // The id table is near its bound: producers are held back until the
  // maps this cycle swaps out are texts (finish_cycle empties the table).
  if (st.ingest->reclaim_wanted.load(std::memory_order_relaxed)
      || st.ingest->ids.size() >= st.ingest->reclaim_at()) {
    st.reclaiming = true;
    st.ingest->begin_reclaim();
  }
  durable_ticket t;
  while (st.ingest->tickets.try_dequeue(t))
    st.cycle_tickets.push_back(std::move(t));
  st.replies_missing = st.aggregators.size();
  for (auto& agg : st.aggregators) {
    self->request(agg, caf::infinite, swap_atom::value)
      .then(
        [=](agg_map_ptr& map) {
          auto& s = self->state;
          s.maps.push_back(std::move(map));
          s.map_owners.push_back(agg);
          if (--s.replies_missing == 0)
            finish_cycle(self);
        },
        [=](caf::error& err) {
          TALLY_ERROR("buffer_writer", "aggregator did not answer a swap: " << caf::to_string(err));
          if (--self->state.replies_missing == 0)
            finish_cycle(self);
        });
  }
}

caf::behavior buffer_writer(writer_actor* self, ingest_state* ingest, std::vector<caf::actor> aggs,
                            std::string instance, const redis_fleet* fleet, caf::actor retention,
                            std::shared_ptr<journal_set> journals) {
  auto& st = self->state;
  st.ingest = ingest;
  st.aggregators = std::move(aggs);
  st.instance = std::move(instance);
  st.keys.emplace(ingest->cfg.ns);
  st.fleet = fleet;
  st.redis = redis_link(*fleet, "buffer_writer", ingest->cfg.redis_timeout);
  st.retention = std::move(retention);
  st.journals = std::move(journals);
  st.retry = backoff(ingest->cfg.retry_backoff_min, ingest->cfg.retry_backoff_max);
  update_journal_counters(st);
  self->send(fleet->failover(), subscribe_atom::value);
  // Sequence numbers start at boot time << 20 so that a restarted instance
  // with the same id never reuses an id the dedup table already holds.
  st.next_seq = static_cast<uint64_t>(now_ms()) << 20;
  schedule(self, ingest->cfg.buffer_interval);
  return {
    [=](cycle_atom, uint64_t gen) {
      if (gen == self->state.timer_generation)
        start_cycle(self);
    },
    [=](retry_atom, uint64_t gen) {
      auto& s = self->state;
      if (gen != s.retry_generation || !s.in_backoff)
        return;
      s.in_backoff = false;
      write_pending(self);
      if (!s.in_backoff) {
        if (s.draining)
          schedule(self, milliseconds{0});
        else
          after_cycle(self);
      } else if (s.draining) {
        after_cycle(self);
      }
    },
    [=](collect_now_atom) {
      if (!self->state.collecting && !self->state.in_backoff)
        schedule(self, milliseconds{0});
    },
    [=](active_atom, uint64_t) {
      // A database became active (again, or another one): write what waits
      // now instead of sleeping out the backoff.
      auto& s = self->state;
      if (s.in_backoff && s.fleet->view()->active >= 0)
        self->send(self, retry_atom::value, ++s.retry_generation);
    },
    [=](drain_atom, int64_t deadline_ms) -> caf::result<bool> {
      auto& s = self->state;
      s.draining = true;
      s.need_final_cycle = true;
      s.drain_deadline_ms = deadline_ms;
      s.drain_promise = self->make_response_promise();
      if (!s.collecting)
        schedule(self, milliseconds{0});
      return s.drain_promise;
    },
  };
}

} // namespace

caf::actor spawn_buffer_writer(caf::actor_system& sys, ingest_state& state, std::vector<caf::actor> aggregators,
                               std::string instance_id, const redis_fleet& fleet, caf::actor retention,
                               std::shared_ptr<journal_set> journals) {
  return sys.spawn<caf::detached>(buffer_writer, &state, std::move(aggregators), std::move(instance_id), &fleet,
                                  std::move(retention), std::move(journals));
}

} // namespace tally
