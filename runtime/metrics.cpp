// runtime/metrics.cpp — Prometheus text rendering (see metrics.hpp).
//
// The families are listed in pipeline order: RESP ingest, runtime ingest,
// stage 1 (Redis), stage 2 (Postgres), process. A family is printed even
// when zero, so dashboards and alerts see a stable set of series.
#include "runtime/metrics.hpp"

#include <algorithm>
#include <chrono>

#include <cstdio>

namespace tally {

namespace {

class writer {
public:
  explicit writer(std::string& out) : out_(out) {}

  void family(const char* name, const char* type, const char* help) {
    out_ += "# HELP ";
    out_ += name;
    out_ += ' ';
    out_ += help;
    out_ += "\n# TYPE ";
    out_ += name;
    out_ += ' ';
    out_ += type;
    out_ += '\n';
  }

  void sample(const char* name, uint64_t value, const std::string& labels = {}) {
    out_ += name;
    if (!labels.empty())
      out_ += "{" + labels + "}";
    out_ += ' ';
    out_ += std::to_string(value);
    out_ += '\n';
  }

  void sample(const char* name, double value, const std::string& labels = {}) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.3f", value);
    out_ += name;
    if (!labels.empty())
      out_ += "{" + labels + "}";
    out_ += ' ';
    out_ += buf;
    out_ += '\n';
  }

  void counter(const char* name, const char* help, uint64_t value) {
    family(name, "counter", help);
    sample(name, value);
  }

  void gauge(const char* name, const char* help, uint64_t value) {
    family(name, "gauge", help);
    sample(name, value);
  }

private:
  std::string& out_;
};

/// Escapes a label value (backslash, quote, newline).
std::string label_value(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"')
      out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

} // namespace

std::string render_metrics(const metrics_snapshot& m) {
  std::string out;
  out.reserve(8192);
  writer w(out);
  const auto& r = m.resp;
  const auto& s = m.runtime;

  // --- process ---
  w.family("tally_info", "gauge", "Constant 1, labelled with this instance's id and namespace.");
  w.sample("tally_info", uint64_t{1},
           "instance=\"" + label_value(m.instance) + "\",namespace=\"" + label_value(m.ns) + "\"");
  w.gauge("tally_ready", "1 while /readyz answers 200 (this instance can persist events).", m.ready ? 1 : 0);
  w.gauge("tally_stopping", "1 after SIGTERM/SIGINT while tallyd drains.", m.stopping ? 1 : 0);
  w.family("tally_uptime_seconds", "gauge", "Seconds since tallyd started.");
  w.sample("tally_uptime_seconds", m.uptime_seconds);

  // --- RESP ingest ---
#define TALLY_RESP_METRIC(member, kind, metric, help) w.kind(metric, help, r.member);
  TALLY_RESP_COUNTERS(TALLY_RESP_METRIC)
#undef TALLY_RESP_METRIC
  w.family("tally_events_rejected_total", "counter",
           "TALLY.RECORD events refused with an error reply, by reason (the field error code).");
  // Reasons 1..errc_slots-1: ok is not a rejection; backpressure pauses the
  // connection instead of refusing, but is listed so the set is complete.
  for (size_t i = 1; i < resp_metrics::errc_slots; ++i) {
    const char* reason = to_string(static_cast<errc>(i));
    if (reason == nullptr || *reason == '\0' || std::string(reason) == "unknown_errc")
      continue;
    w.sample("tally_events_rejected_total", r.rejections[i], "reason=\"" + std::string(reason) + "\"");
  }

  // --- runtime ingest ---
  w.counter("tally_events_accepted_total", "Events accepted by the runtime (RESP and embedded callers).",
            s.events_accepted);
  w.counter("tally_validation_failures_total",
            "Events the runtime refused as invalid (RESP refusals are also in "
            "tally_events_rejected_total by reason).",
            s.events_rejected);
  w.counter("tally_backpressure_total", "record() calls refused because ingest memory was full.",
            s.events_backpressured);
  w.gauge("tally_queue_depth", "Events waiting in the aggregator shard queues (approximate).", s.queue_depth);
  w.counter("tally_aggregator_wakeups_total",
            "Messages sent to wake a sleeping aggregator (one when its queue gets an event after a turn found it empty; none while it lingers under load).",
            s.wakeups);

  // --- stage 1 ---
  w.counter("tally_batches_written_total", "Stage-1 batches written to Redis.", s.batches_written);
  w.counter("tally_batch_bytes_written_total", "Bytes of stage-1 batches written to Redis.",
            s.batch_bytes_written);
  w.counter("tally_stage1_failures_total", "Failed stage-1 write attempts (each retried).", s.stage1_failures);
  w.gauge("tally_pending_batches", "Encoded batches not yet in Redis.", s.pending_batches);
  w.family("tally_redis_up", "gauge",
           "1 while the database's circuit is closed (its health checks pass and its grace period is over).");
  for (const auto& d : m.databases)
    w.sample("tally_redis_up", uint64_t{d.state == "closed" ? 1u : 0u}, "db=\"" + label_value(d.url) + "\"");
  w.family("tally_redis_active", "gauge", "1 for the database stage 1 writes to (highest-weight healthy one).");
  for (const auto& d : m.databases)
    w.sample("tally_redis_active", uint64_t{d.active ? 1u : 0u}, "db=\"" + label_value(d.url) + "\"");
  w.family("tally_redis_circuit", "gauge", "1 for the state the database's circuit breaker is in.");
  for (const auto& d : m.databases)
    for (const char* state : {"unknown", "closed", "open", "half_open"})
      w.sample("tally_redis_circuit", uint64_t{d.state == state ? 1u : 0u},
               "db=\"" + label_value(d.url) + "\",state=\"" + state + "\"");
  w.family("tally_redis_weight", "gauge", "Configured weight of the database.");
  for (const auto& d : m.databases)
    w.sample("tally_redis_weight", uint64_t{d.weight}, "db=\"" + label_value(d.url) + "\"");
  w.family("tally_redis_circuit_opens_total", "counter", "Times the database's circuit opened.");
  for (const auto& d : m.databases)
    w.sample("tally_redis_circuit_opens_total", d.opens, "db=\"" + label_value(d.url) + "\"");
  w.family("tally_redis_switches_total", "counter", "Switches of the active database, by reason.");
  for (int i = 0; i < 5; ++i)
    w.sample("tally_redis_switches_total", s.redis_switches[i],
             std::string("reason=\"") + redis_switch_reasons[i] + "\"");
  w.family("tally_redis_backlog_batches", "gauge",
           "Stage-1 batches waiting in the active database for the flush (LLEN of the batches list, read at "
           "every registry heartbeat).");
  if (s.redis_backlog_known)
    w.sample("tally_redis_backlog_batches", s.redis_backlog_batches);
  w.gauge("tally_journal_batches", "Batches in the local spill journal, waiting for a healthy Redis.",
          s.journal_batches);
  w.gauge("tally_journal_bytes", "Size of the local spill journal.", s.journal_bytes);
  w.gauge("tally_journal_full", "1 while the spill journal refuses batches (journal_max_bytes).", s.journal_full);
  w.counter("tally_journaled_batches_total", "Batches written to the spill journal.", s.journaled);
  w.counter("tally_replayed_batches_total", "Journal records pushed to Redis.", s.replayed);
  w.counter("tally_journal_truncations_total", "Torn or corrupt journal tails cut off at start.",
            s.journal_truncated);
  w.gauge("tally_retained_batches", "Batches kept until a leader reports them applied (producer retention).",
          s.retained);
  w.counter("tally_repushed_batches_total", "Batches retention pushed again (Redis lost them, or a switch).",
            s.repushed);

  // --- stage 2 ---
  w.counter("tally_flushes_total", "Flush transactions committed to Postgres by this instance.", s.flushes);
  w.counter("tally_rows_upserted_total", "Rows upserted into the tally tables.", s.rows_upserted);
  w.counter("tally_rows_deferred_total",
            "Entity-total increments committed to tally_spend_deferred (their row was locked by another writer).",
            s.rows_deferred);
  w.counter("tally_deferred_applied_total", "Deferred increments this instance added to tally_spend.",
            s.deferred_applied);
  w.gauge("tally_deferred_waiting",
          "Increments waiting in tally_spend_deferred, as this instance last saw them while leading (else 0).",
          s.deferred_waiting);
  w.gauge("tally_deferred_oldest_seconds",
          "Age of the oldest increment waiting in tally_spend_deferred (leader only, else 0).",
          s.deferred_oldest_seconds);
  w.counter("tally_duplicate_batches_total", "Batches skipped because their id was already applied.",
            s.duplicate_batches);
  w.counter("tally_dead_lettered_total", "Batches that failed to decode, moved to the dead-letter list.",
            s.dead_lettered);
  w.gauge("tally_ids_interned", "Distinct id texts (keys, users, models, ...) in the id table now.",
          s.ids_interned);
  w.counter("tally_id_reclaims_total",
            "Times the id table was emptied to make room for new texts (it holds intern_capacity x 7/8).",
            s.id_reclaims);
  w.family("tally_flush_duration_seconds", "histogram",
           "Committed flushes by time spent preparing and in the transaction.");
  uint64_t cumulative = 0;
  for (int i = 0; i < stats::flush_buckets; ++i) {
    cumulative += s.flush_duration_count[i];
    char le[32];
    std::snprintf(le, sizeof le, "le=\"%g\"", stats::flush_bucket_ms[i] / 1000.0);
    w.sample("tally_flush_duration_seconds_bucket", cumulative, le);
  }
  cumulative += s.flush_duration_count[stats::flush_buckets];
  w.sample("tally_flush_duration_seconds_bucket", cumulative, "le=\"+Inf\"");
  w.sample("tally_flush_duration_seconds_sum", s.flush_duration_ms_sum / 1000.0);
  w.sample("tally_flush_duration_seconds_count", cumulative);
  w.gauge("tally_lease_held", "1 while this instance holds the flush lease (is the writer).", s.lease_held);
  w.gauge("tally_epoch", "Fencing epoch of the last lease this instance took.", s.epoch);

  // --- read path ---
  w.counter("tally_read_cache_hits_total", "TALLY.GET rows answered from the cache.", s.read_hits);
  w.counter("tally_read_cache_misses_total", "TALLY.GET rows not in the cache (read from Postgres).",
            s.read_misses);
  w.counter("tally_read_queries_total", "Postgres reads for cache misses (one per round, any number of rows).",
            s.read_queries);
  w.counter("tally_read_cache_fills_total", "Values read from Postgres and installed in the cache.", s.read_fills);
  w.counter("tally_read_cache_stale_fills_total",
            "Fills thrown away because an invalidation arrived while they read.", s.read_stale_fills);
  w.counter("tally_read_cache_invalidations_total", "Cached rows dropped because a flush touched them.",
            s.read_invalidated);
  w.counter("tally_read_cache_invalidate_all_total",
            "Whole-cache drops: a gap in the flush messages, a resubscription, a flush too large to list.",
            s.read_invalidate_all);
  w.counter("tally_read_cache_evictions_total", "Cached rows evicted to make room.", s.read_evictions);
  w.gauge("tally_read_cache_entries", "Rows in the read cache.", s.read_entries);
  w.gauge("tally_read_ledger_batches", "Own batches the read path adds to Postgres' totals until they are applied.",
          s.read_ledger_batches);
  w.counter("tally_read_ledger_overflow_total",
            "Own batches not kept for reads because the ledger was full (reads see them once flushed).",
            s.read_ledger_overflow);
  w.gauge("tally_read_cache_subscribed", "1 while invalidations arrive, so the cache serves hits.",
          s.read_subscribed);
  if (s.last_invalidation_ms > 0) {
    int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::system_clock::now().time_since_epoch()).count();
    w.family("tally_read_last_invalidation_age_seconds", "gauge",
             "Seconds since the newest invalidation message arrived.");
    w.sample("tally_read_last_invalidation_age_seconds", std::max<int64_t>(0, now_ms - s.last_invalidation_ms) / 1000.0);
  }
  return out;
}

} // namespace tally
