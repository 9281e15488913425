// actors/buffer_writer.cpp — see buffer_writer.hpp.
#include "actors/buffer_writer.hpp"

#include "actors/aggregator.hpp"
#include "actors/atoms.hpp"
#include "actors/retention.hpp"  // stage 2 (issue 3)
#include "adapters/batch_codec.hpp"
#include "adapters/redis_client.hpp"
#include "core/log.hpp"

#include <caf/all.hpp>

#include <chrono>
#include <deque>
#include <optional>
#include <random>

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
};

struct writer_state {
  static inline const char* name = "buffer_writer";
  ingest_state* ingest = nullptr;
  std::vector<caf::actor> aggregators;
  std::string instance;
  std::string batches_key;
  std::string marker_prefix;

  std::vector<adapters::redis_endpoint> endpoints;
  std::optional<adapters::redis_client> redis;
  size_t endpoint_index = 0;

  uint64_t next_seq = 0;
  std::deque<pending_batch> pending;
  std::deque<std::pair<uint64_t, durable_ticket>> waiting;  // (seq watermark, ticket)
  std::vector<durable_ticket> cycle_tickets;

  bool collecting = false;
  size_t replies_missing = 0;
  std::vector<agg_map_ptr> maps;
  std::vector<caf::actor> map_owners;

  uint64_t timer_generation = 0;  // cycle timers; a newer one voids older ones
  uint64_t retry_generation = 0;  // backoff timers, counted apart so a cycle
                                  // scheduled meanwhile cannot void a retry
  bool in_backoff = false;
  milliseconds backoff{0};
  std::mt19937_64 rng{std::random_device{}()};

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

bool ensure_connected(writer_state& st) {
  if (st.redis && st.redis->connected())
    return true;
  // The first database that answers, starting with the one that last worked.
  for (size_t i = 0; i < st.endpoints.size(); ++i) {
    size_t at = (st.endpoint_index + i) % st.endpoints.size();
    auto client = adapters::redis_client::connect(st.endpoints[at], st.ingest->cfg.redis_timeout);
    if (client) {
      if (at != st.endpoint_index || !st.redis)
        TALLY_INFO("buffer_writer", "stage 1 writes to redis " << st.endpoints[at].host << ":"
                                                               << st.endpoints[at].port);
      st.redis.emplace(std::move(*client));
      st.endpoint_index = at;
      return true;
    }
    TALLY_WARN("buffer_writer", "redis " << st.endpoints[at].host << ":" << st.endpoints[at].port
                                         << " unreachable: " << client.error().message);
  }
  st.redis.reset();
  return false;
}

/// Writes pending batches in order; false (and backoff armed) on failure.
bool write_pending(writer_actor* self) {
  auto& st = self->state;
  while (!st.pending.empty()) {
    auto& b = st.pending.front();
    std::string marker = st.marker_prefix + b.id;
    bool ok = false;
    std::string why;
    if (ensure_connected(st)) {
      auto reply = st.redis->command({"EVAL", stage1_push_script, "2", st.batches_key, marker, b.bytes, stage1_marker_ttl_ms});
      ok = reply.ok();
      if (!ok)
        why = reply.error().message;
    } else {
      why = "no redis database reachable";
    }
    if (!ok) {
      st.ingest->counters.stage1_failures.fetch_add(1);
      auto& cfg = st.ingest->cfg;
      st.backoff = st.backoff.count() == 0 ? cfg.retry_backoff_min
                                            : std::min(cfg.retry_backoff_max, st.backoff * 2);
      // Jitter spreads the retries of a fleet that lost Redis at once.
      auto jitter = milliseconds(st.rng() % (st.backoff.count() / 4 + 1));
      TALLY_WARN("buffer_writer", "stage-1 write of " << b.id << " failed (" << why << "); "
                                  << st.pending.size() << " batches pending, retry in "
                                  << (st.backoff + jitter).count() << " ms");
      st.in_backoff = true;
      self->delayed_send(self, st.backoff + jitter, retry_atom::value, ++st.retry_generation);
      return false;
    }
    st.ingest->counters.batches_written.fetch_add(1);
    st.ingest->counters.batch_bytes_written.fetch_add(b.bytes.size());
    // --- stage 2 (issue 3): producer retention keeps the batch until it is applied.
    if (auto retention = self->system().registry().get<caf::actor>(retention_registry_name))
      self->send(retention, retain_atom::value, b.id, std::move(b.bytes));
    // --- end stage 2
    uint64_t seq = b.seq;
    st.pending.pop_front();
    st.ingest->counters.pending_batches.store(st.pending.size());
    complete_tickets(st, seq, false);
  }
  st.backoff = milliseconds{0};
  st.in_backoff = false;
  complete_tickets(st, 0, true);
  return true;
}

bool tickets_waiting(writer_state& st) {
  return !st.waiting.empty() || st.ingest->tickets.size_approx() > 0;
}

/// After a cycle or a write: decide when the next cycle runs.
void after_cycle(writer_actor* self) {
  auto& st = self->state;
  if (st.draining) {
    // Done once a cycle that began after close() has swapped every shard
    // (it holds every accepted event) and its batches are in Redis.
    if (!st.need_final_cycle && !st.collecting && st.pending.empty()) {
      complete_tickets(st, 0, true);
      st.drain_promise.deliver(true);
      st.draining = false;
      return;
    }
    if (now_ms() >= st.drain_deadline_ms) {
      TALLY_ERROR("buffer_writer", "stop deadline passed with " << st.pending.size()
                                   << " batches not written to redis; their events are lost");
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
  // Group commit: durable records waiting means no sleeping out the interval.
  st.ingest->writer_sleeping.store(true, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (tickets_waiting(st) && st.ingest->writer_sleeping.exchange(false))
    schedule(self, milliseconds{0});
  else
    schedule(self, st.ingest->cfg.buffer_interval);
}

void finish_cycle(writer_actor* self) {
  auto& st = self->state;
  auto& ids = st.ingest->ids;
  const auto& specs = rollup_specs();
  flat_map<row_key, measure_values> rows(UINT32_MAX / 4);
  bool interned_all = true;
  for (size_t i = 0; i < st.maps.size(); ++i) {
    st.maps[i]->for_each([&](const agg_key& key, measure_values& m) {
      interned_all &= fan_out(key, ids, [&](const row_key& r) { rows.find_or_insert(r, hash_of(r))->add(m); });
    });
    self->send(st.map_owners[i], recycle_atom::value, st.maps[i]);
  }
  if (!interned_all)
    TALLY_ERROR("buffer_writer", "identifier table full while splitting tags: some tag rows are missing; "
                                 "raise intern_capacity");
  st.maps.clear();
  st.map_owners.clear();

  if (rows.size() > 0) {
    adapters::batch b;
    b.created_ms = now_ms();
    std::vector<int> table_of(specs.size(), -1);
    rows.for_each([&](const row_key& r, measure_values& m) {
      int& t = table_of[r.rollup];
      const rollup_spec& spec = specs[r.rollup];
      if (t < 0) {
        t = static_cast<int>(b.tables.size());
        b.tables.push_back({spec.table, spec.key_columns(), spec.measure_columns(), {}});
      }
      adapters::batch_row row;
      row.keys = key_texts(r, ids);
      row.values.reserve(spec.measures.size());
      for (measure ms : spec.measures)
        row.values.push_back(value_of(m, ms));
      b.tables[t].rows.push_back(std::move(row));
    });
    for (auto& part : adapters::split_batch(std::move(b), st.ingest->cfg.max_batch_bytes)) {
      uint64_t seq = st.next_seq++;
      part.id = st.instance + ":" + std::to_string(seq);
      st.pending.push_back({seq, part.id, adapters::encode_batch(part)});
    }
    st.ingest->counters.pending_batches.store(st.pending.size());
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
    // Redis is behind: stop collecting so memory stays bounded.
    if (!st.in_backoff)
      write_pending(self);
    after_cycle(self);
    return;
  }
  st.collecting = true;
  st.need_final_cycle = false;
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
                            std::string instance) {
  auto& st = self->state;
  st.ingest = ingest;
  st.aggregators = std::move(aggs);
  st.instance = std::move(instance);
  st.batches_key = key_prefix(ingest->cfg.ns) + ":batches";
  st.marker_prefix = key_prefix(ingest->cfg.ns) + ":written:";
  // Sequence numbers start at boot time << 20 so that a restarted instance
  // with the same id never reuses an id the dedup table already holds.
  st.next_seq = static_cast<uint64_t>(now_ms()) << 20;
  for (auto& url : ingest->cfg.redis_urls)
    if (auto ep = adapters::parse_redis_url(url))
      st.endpoints.push_back(*ep);
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
    [=](tickets_atom) {
      if (!self->state.collecting && !self->state.in_backoff)
        schedule(self, milliseconds{0});
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

const char* const stage1_push_script =
  "if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then "
  "redis.call('LPUSH', KEYS[1], ARGV[1]) return 1 end return 0";
const char* const stage1_marker_ttl_ms = "86400000";

std::string key_prefix(const std::string& ns) {
  return "{tally:" + ns + "}";
}

caf::actor spawn_buffer_writer(caf::actor_system& sys, ingest_state& state,
                               std::vector<caf::actor> aggregators, std::string instance_id) {
  return sys.spawn<caf::detached>(buffer_writer, &state, std::move(aggregators), std::move(instance_id));
}

} // namespace tally
