// tally/tally.hpp — the embedding API: one object runs tally inside a program.
//
// Public header: standard library only (no CAF, hiredis or libpq types), so an
// embedding program builds against it alone.
//
//   tally::config cfg;                       // defaults: local Redis, 2 shards
//   cfg.redis_urls = {"redis://127.0.0.1:6379"};
//   tally::runtime rt;
//   if (auto err = rt.start(cfg)) { ... }    // error names the bad option
//   tally::event ev;  ev.id(tally::field::key) = "k1";  ev.spend = 420;
//   rt.record(ev);                           // never blocks; errc::backpressure when full
//   rt.record_durable(ev).get();             // waits until the batch is persisted
//   rt.stop();                               // drains queues, writes the last batch
#pragma once

#include "tally/event.hpp"

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace tally {

/// One change of the active Redis database (design §6), as the embedding
/// program's callback sees it. Databases are named by their URL with any
/// password masked; "" means none (no database healthy: batches go to the
/// local spill journal).
struct redis_switch {
  std::string from;
  std::string to;
  /// health_check | failure_detector | fail_back | operator | sentinel
  std::string reason;
  std::string detail;  // what failed, or which operator command
};

/// One configured Redis database as the failover actor sees it.
struct redis_database_status {
  std::string url;       // as configured, password masked
  uint32_t weight = 1;
  std::string state;     // circuit: unknown | closed | open | half_open
  bool active = false;
  std::string address;   // host:port in use (a Sentinel database: the primary it resolved)
  std::string last_error;
  uint64_t opens = 0;    // how often its circuit opened
};

/// One live instance of the namespace, as its registry heartbeat in the
/// active Redis database shows it.
struct instance_info {
  std::string id;
  std::string host;
  uint64_t pid = 0;
  std::string version;
  int64_t started_ms = 0;        // wall clock, unix ms
  int64_t heartbeat_age_ms = 0;  // since its last heartbeat (by this host's clock)
  bool leader = false;           // holds the flush lease now
  std::string role;              // leader | flusher | producer, as of its last heartbeat
  std::string active_db;         // the Redis database it writes to (password masked)
  uint64_t events_accepted = 0;
  uint64_t epoch = 0;            // its fencing epoch while it leads, else 0
};

/// Calls f(name, value) for every field of `i`, in one fixed order; value is
/// a const std::string&, an int64_t or a bool. Every rendering of an
/// instance (RESP, JSON) goes through this one list.
template <class F>
void for_each_field(const instance_info& i, F&& f) {
  f("id", i.id);
  f("host", i.host);
  f("pid", static_cast<int64_t>(i.pid));
  f("version", i.version);
  f("started_ms", i.started_ms);
  f("heartbeat_age_ms", i.heartbeat_age_ms);
  f("leader", i.leader);
  f("role", i.role);
  f("active_db", i.active_db);
  f("events_accepted", static_cast<int64_t>(i.events_accepted));
  f("epoch", static_cast<int64_t>(i.epoch));
}

/// The namespace as the registry sees it (TALLY.INSTANCES, TALLY.LEADER,
/// GET /v1/instances).
struct cluster_view {
  std::string error;                     // "" or why it could not be read
  std::vector<instance_info> instances;  // sorted by id
  std::string leader;                    // the lease holder's id, "" when nobody holds the lease
  uint64_t epoch = 0;                    // the leader's epoch (0 until its first heartbeat as leader)
  int64_t read_at_ms = 0;                // wall clock of the read (views are reused for up to 1 s)
};

/// Everything the runtime needs, validated by runtime::start.
struct config {
  /// Namespace: every Redis key is `{tally:<ns>}:...`; one lease per namespace.
  std::string ns = "default";
  /// This instance's id in batch ids and the registry; empty = "<host>-<pid>".
  std::string instance_id;
  /// Redis databases, each `redis://[[user]:password@]host[:port][/db]` or
  /// `redis+sentinel://host[:port][,host:port...]/master-name[/db]`, with an
  /// optional `?weight=N` (1-1000000, default 1). The active database is the
  /// highest-weight one whose circuit is closed (ties: the first listed).
  std::vector<std::string> redis_urls = {"redis://127.0.0.1:6379"};
  /// libpq connection string (URI or keywords); empty = no flushing here.
  std::string postgres_url;
  /// Schema holding tally's tables.
  std::string pg_schema = "public";

  /// Aggregator shards (actors); 0 = one per core.
  uint32_t shards = 0;
  /// Events each shard queue holds before record() pushes back.
  uint32_t queue_capacity = 1u << 16;
  /// Distinct aggregation keys a shard's map holds. A full map is handed to
  /// the buffer writer at once (an early batch) while record() returns
  /// backpressure: it bounds memory, not throughput.
  uint32_t max_keys_per_shard = 1u << 18;
  /// Distinct identifiers the process can hold (power of two is used).
  uint32_t intern_capacity = 1u << 20;
  /// CAF scheduler threads; 0 = number of cores.
  uint32_t worker_threads = 0;

  /// How often aggregates become a stage-1 batch.
  std::chrono::milliseconds buffer_interval{1000};
  /// Largest encoded batch; bigger merges are split.
  uint32_t max_batch_bytes = 1u << 20;
  /// Encoded batches kept in memory while Redis is unreachable; past it the
  /// shards stop draining and record() pushes back.
  uint32_t max_pending_batches = 1024;
  /// Connect and command timeout of every Redis call.
  std::chrono::milliseconds redis_timeout{1000};
  /// First and largest delay between retries of a failed stage-1 write.
  std::chrono::milliseconds retry_backoff_min{50};
  std::chrono::milliseconds retry_backoff_max{2000};

  /// Health checks of every Redis database (one health actor each): a round
  /// of `health_check_probes` PINGs every `health_check_interval`, each
  /// bounded by `health_check_timeout`, `health_check_probe_delay` apart,
  /// judged by `health_check_policy` (all | majority | any must pass).
  std::chrono::milliseconds health_check_interval{1000};
  uint32_t health_check_probes = 3;
  std::chrono::milliseconds health_check_probe_delay{100};
  std::chrono::milliseconds health_check_timeout{1000};
  std::string health_check_policy = "all";
  /// Failure detector over the commands tally really sends: the circuit
  /// opens when, within `failure_window`, at least `failure_min_failures`
  /// commands failed and they were at least `failure_rate_percent` % of all.
  std::chrono::milliseconds failure_window{5000};
  uint32_t failure_min_failures = 3;
  uint32_t failure_rate_percent = 10;
  /// A database that recovered is trusted again only after it stayed
  /// healthy this long.
  std::chrono::milliseconds grace_period{10000};
  /// How often (with jitter) the failover actor moves back to a strictly
  /// better (higher-weight) healthy database; 0 = never on its own.
  std::chrono::milliseconds auto_fallback_interval{30000};
  /// Called on a tally thread after every switch of the active database;
  /// it must return quickly (it runs on the failover actor's turn).
  std::function<void(const redis_switch&)> on_redis_switch;

  /// Directory of the local spill journal; empty = $STATE_DIRECTORY (set by
  /// systemd's StateDirectory=), else $XDG_STATE_HOME/tally, else
  /// ~/.local/state/tally, else /tmp/tally-<uid>.
  std::string state_dir;
  /// Size bound of the spill journal; past it ingest pushes back.
  uint64_t journal_max_bytes = uint64_t{1} << 30;

  /// Stage 2 (flush supervisor); used when postgres_url is set.
  std::chrono::milliseconds flush_interval{1000};
  std::chrono::milliseconds lease_ttl{10000};
  std::chrono::milliseconds lock_timeout{5000};
  std::chrono::milliseconds statement_timeout{30000};
  std::chrono::hours applied_retention{24 * 7};
  /// A batch this instance wrote but has not seen applied is pushed again
  /// after this long (producer retention, design §6).
  std::chrono::milliseconds repush_after{60000};

  /// Read path (get/mget, TALLY.GET), used when postgres_url is set: rows
  /// cached per instance, the longest a cached value is served without a
  /// fresh read (a safety net: invalidations keep it true), Postgres
  /// connections for cache misses, and the bound of one read.
  uint32_t read_cache_entries = 65536;
  std::chrono::milliseconds read_cache_ttl{60000};
  uint32_t read_connections = 2;
  std::chrono::milliseconds read_timeout{2000};
};

/// One tally_spend row as get() answers it: what Postgres holds plus this
/// instance's own events not yet flushed.
struct entity_totals {
  std::string entity_type;
  std::string scope;      // the team of a team_member row, else ""
  std::string entity_id;
  std::string spend = "0.000000000";  // exact decimal, nine fractional digits
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cache_read_tokens = 0;
  int64_t cache_creation_tokens = 0;
  int64_t requests = 0;
  int64_t successful_requests = 0;
  int64_t failed_requests = 0;
  /// False: no row in Postgres and no unflushed event of this instance
  /// (every measure is zero).
  bool found = false;
};

struct read_result {
  enum class status { ok, bad_request, unavailable };
  status code = status::ok;
  std::string error;  // why, when not ok
  std::vector<entity_totals> entities;  // in request order, when ok
};

/// Entity types get() accepts (the entity_type column of tally_spend).
inline constexpr const char* entity_types[] = {"key", "user", "team", "team_member", "org", "end_user", "tag"};
/// Most ids one mget() reads.
inline constexpr size_t max_mget_ids = 1000;

/// Checks bounds and cross-field rules; the message names the option.
/// Returns an empty string when `cfg` is valid.
std::string validate(const config& cfg);

/// Counters for metrics and tests; each is a snapshot read without locks.
struct stats {
  uint64_t events_accepted = 0;
  uint64_t events_rejected = 0;       // validation errors (all reasons)
  uint64_t events_backpressured = 0;  // record() calls refused with backpressure
  uint64_t batches_written = 0;       // stage-1 LPUSHes that succeeded
  uint64_t batch_bytes_written = 0;
  uint64_t stage1_failures = 0;       // failed stage-1 write attempts
  uint64_t pending_batches = 0;       // encoded, neither in Redis nor in the spill journal yet
  uint64_t queue_depth = 0;           // events in shard queues (approximate)
  uint64_t wakeups = 0;               // CAF messages sent to wake an idle aggregator
  uint64_t flushes = 0;               // committed flush transactions
  uint64_t rows_upserted = 0;
  uint64_t duplicate_batches = 0;     // batch ids already applied, skipped
  uint64_t rows_deferred = 0;         // entity-total increments committed to tally_spend_deferred
  uint64_t deferred_applied = 0;      // deferred increments this instance added to tally_spend
  uint64_t deferred_waiting = 0;      // increments in tally_spend_deferred as this leader last saw them (0 when not leading)
  uint64_t deferred_oldest_seconds = 0;  // age of the oldest of them
  uint64_t dead_lettered = 0;
  uint64_t ids_interned = 0;          // distinct id texts in the id table now
  uint64_t id_reclaims = 0;           // times the id table was emptied to make room (intern_capacity)
  uint64_t lease_held = 0;            // 1 while this instance is the leader
  uint64_t epoch = 0;                 // fencing epoch of the last lease taken
  uint64_t redis_switches[5] = {};    // switches of the active database by reason (redis_switch_reasons)
  uint64_t journal_batches = 0;       // batches waiting in the local spill journal
  uint64_t journal_bytes = 0;         // its size
  uint64_t journaled = 0;             // batches ever written to the journal
  uint64_t replayed = 0;              // journal records pushed to Redis
  uint64_t journal_truncated = 0;     // torn or corrupt journal tails cut off at open
  uint64_t journal_full = 0;          // 1 while the journal refuses batches (journal_max_bytes)
  uint64_t redis_backlog_batches = 0; // LLEN of the active database's batches list (registry heartbeat)
  uint64_t redis_backlog_known = 0;   // 1 once the registry read it
  uint64_t retained = 0;              // batches kept until seen applied (producer retention)
  uint64_t repushed = 0;              // batches retention pushed again
  // Read path (zero without a postgres_url).
  uint64_t read_hits = 0;             // get() rows answered from the cache
  uint64_t read_misses = 0;
  uint64_t read_queries = 0;          // Postgres reads for misses
  uint64_t read_fills = 0;            // values installed in the cache
  uint64_t read_stale_fills = 0;      // fills thrown away: they raced an invalidation
  uint64_t read_invalidated = 0;      // cached rows dropped by flush messages
  uint64_t read_invalidate_all = 0;   // whole-cache drops (gap, resubscription)
  uint64_t read_evictions = 0;
  uint64_t read_entries = 0;          // rows cached now
  uint64_t read_ledger_batches = 0;   // own batches read back but not yet applied
  uint64_t read_ledger_overflow = 0;  // own batches not kept for reads (ledger full)
  uint64_t read_subscribed = 0;       // 1 while invalidations arrive (cache on)
  int64_t last_invalidation_ms = 0;   // wall ms of the newest invalidation, 0 = none yet

  /// Committed flushes by duration (preparing + transaction): count[i] is
  /// the flushes that took at most flush_bucket_ms[i] and more than the bound
  /// before it; the last count is those above every bound.
  static constexpr int flush_buckets = 11;
  static constexpr uint32_t flush_bucket_ms[flush_buckets] = {5,   10,   25,   50,   100, 250,
                                                              500, 1000, 2500, 5000, 10000};
  uint64_t flush_duration_count[flush_buckets + 1] = {};
  uint64_t flush_duration_ms_sum = 0;
};

/// The reasons of redis_switch, in the order of stats::redis_switches.
inline constexpr const char* redis_switch_reasons[5] = {"health_check", "failure_detector", "fail_back",
                                                        "operator", "sentinel"};

/// The embedded tally: aggregator shards, stage-1 writer, and (with a
/// Postgres URL) the flush supervisor. Thread-safe: record() may be called
/// from any number of threads at once; start() and stop() from one.
class runtime {
public:
  runtime();
  ~runtime();  // calls stop()
  runtime(const runtime&) = delete;
  runtime& operator=(const runtime&) = delete;

  /// Validates `cfg`, starts the actor system and every actor. Returns an
  /// empty string on success, else a message naming the problem. Returns
  /// once every Redis database had its first health check (one PING, at
  /// most `redis_timeout` + `health_check_timeout`), so a reachable Redis is
  /// already the active database; an unreachable one does not fail start:
  /// batches go to the spill journal until one answers.
  std::string start(const config& cfg);

  /// Validates and enqueues one event. Never blocks. errc::ok when taken;
  /// a validation error (with its field), errc::backpressure when memory is
  /// full, errc::stopped after stop(). A refused event is not counted.
  field_error record(const event& ev) noexcept;

  /// Like record(), but the future completes once the event's batch is in
  /// Redis, or fsynced in the spill journal while no Redis is healthy
  /// (errc::ok), or with the reason it was refused. While durable records
  /// wait, the writer writes back to back (group commit).
  std::future<field_error> record_durable(const event& ev);

  /// Callback form of record_durable; `done` runs on a tally thread, or at
  /// once on this one when the event is refused. Returns that refusal (the
  /// same error `done` gets), or errc::ok when the event was taken and
  /// `done` will report whether it became durable.
  field_error record_durable(const event& ev, std::function<void(field_error)> done);

  /// Refuses new events, drains every queue, writes the final batch, stops
  /// the flush supervisor (releasing the lease) and joins all threads.
  /// Returns after everything accepted is in Redis, or in the spill journal
  /// (every Redis down, or `deadline` passed: the next start replays it);
  /// what could go to neither is reported in the log and stats.
  void stop(std::chrono::milliseconds deadline = std::chrono::seconds(30));

  /// The instance id in use (config or generated).
  const std::string& instance_id() const noexcept;

  /// The configured Redis databases, in configuration order.
  std::vector<redis_database_status> redis_databases() const;
  /// Runtime management of the databases (TALLY.DB on the RESP port). Each
  /// returns "" on success, else why it was refused. Removing the active
  /// database switches away first; removing the last one is refused.
  /// Promoting gives a healthy database a weight above every other one and
  /// switches to it.
  /// `weight` 0 = the URL's ?weight= or 1.
  std::string add_redis_database(const std::string& url, uint32_t weight = 0);
  std::string remove_redis_database(const std::string& url);
  std::string set_redis_weight(const std::string& url, uint32_t weight);
  std::string promote_redis_database(const std::string& url);
  /// Makes the database list `urls` (as config::redis_urls): adds, removes and
  /// re-weights what differs (tallyd's SIGHUP).
  std::string set_redis_databases(const std::vector<std::string>& urls);

  /// Every live instance of the namespace and the lease holder, read from
  /// the active Redis database (at most once a second; later calls within
  /// that second get the same view). Blocks for that read.
  cluster_view cluster() const;

  /// The totals of one tally_spend row: `scope` is the team id of a
  /// team_member row and empty otherwise. A cached value answers without a
  /// lock; a miss reads Postgres (blocking, at most read_timeout). Needs a
  /// postgres_url. Other instances' events show up once flushed and
  /// announced (about buffer_interval + flush_interval); this instance's
  /// own as soon as they are in a batch (at once for durable records).
  read_result get(std::string_view entity_type, std::string_view id, std::string_view scope = {}) const;
  /// Several rows of one type in one round trip (at most max_mget_ids).
  read_result mget(std::string_view entity_type, const std::vector<std::string>& ids,
                   std::string_view scope = {}) const;

  stats snapshot() const noexcept;

  /// Internal: the implementation, for tallyd's network layer.
  struct impl;
  impl* internals() noexcept { return impl_.get(); }

private:
  std::unique_ptr<impl> impl_;
};

} // namespace tally
