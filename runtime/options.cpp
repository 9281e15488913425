// runtime/options.cpp — the options table and everything it drives.
//
// Read option_table() first: it is the whole configuration surface of tallyd.
// The rest of the file turns text from the file, the environment and the
// command line into fields of daemon_options through the rows' setters, and
// turns rows back into --help and the sample config.
#include "runtime/options.hpp"

#include "core/log.hpp"

#include <CLI/CLI.hpp>
#include <toml++/toml.h>

#include <arpa/inet.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>

extern char** environ;

namespace tally {

namespace {

using std::chrono::hours;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr int64_t kSecond = 1000;
constexpr int64_t kMinute = 60 * kSecond;
constexpr int64_t kHour = 60 * kMinute;
constexpr int64_t kDay = 24 * kHour;
constexpr int64_t kMiB = 1 << 20;

// --- Field binding --------------------------------------------------------
//
// A row reaches its field through an accessor lambda `T& (daemon_options&)`;
// the helpers below build the row's setter and getter from it, so the table
// itself stays one call per option.

template <class Access>
using field_t = std::remove_reference_t<decltype(std::declval<Access>()(std::declval<daemon_options&>()))>;

template <class Access>
auto& field_of(Access acc, const daemon_options& o) {
  return acc(const_cast<daemon_options&>(o));
}

bool parse_uint(const std::string& text, uint64_t& out) {
  if (text.empty() || text.size() > 19)
    return false;
  uint64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9')
      return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  out = v;
  return true;
}

std::string toml_quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  if (text.empty())
    return out;
  std::string item;
  std::istringstream in(text);
  while (std::getline(in, item, ',')) {
    auto b = item.find_first_not_of(" \t");
    auto e = item.find_last_not_of(" \t");
    out.push_back(b == std::string::npos ? std::string() : item.substr(b, e - b + 1));
  }
  if (text.back() == ',')
    out.emplace_back();
  return out;
}

std::string join_list(const std::vector<std::string>& items) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i)
    out += (i ? "," : "") + items[i];
  return out;
}

std::string bounds_text(const option_spec& s) {
  if (s.kind == option_kind::duration)
    return format_duration_ms(s.min) + " and " + format_duration_ms(s.max);
  return std::to_string(s.min) + " and " + std::to_string(s.max);
}

struct row {
  option_spec spec;
  row(std::string name, option_kind kind, std::string section, std::string help) {
    spec.name = std::move(name);
    spec.kind = kind;
    spec.section = std::move(section);
    spec.help = std::move(help);
  }
  row& def(std::string text) { spec.default_text = std::move(text); return *this; }
  row& bounds(int64_t lo, int64_t hi) { spec.min = lo; spec.max = hi; return *this; }
  row& unit(std::string u) { spec.unit = std::move(u); return *this; }
  row& changeable() { spec.runtime_changeable = true; return *this; }
  row& env_or_flag_only() { spec.file_allowed = false; return *this; }
  row& secret() { spec.secret = true; return *this; }
  operator option_spec() && { return std::move(spec); }
};

template <class Access>
row text_option(std::string name, std::string section, Access acc, std::string help) {
  row r(std::move(name), option_kind::text, std::move(section), std::move(help));
  r.spec.set = [acc](daemon_options& o, const std::string& text) -> std::string {
    acc(o) = text;
    return {};
  };
  r.spec.get = [acc](const daemon_options& o) { return field_of(acc, o); };
  return r;
}

template <class Access>
row choice_option(std::string name, std::string section, Access acc, std::vector<std::string> choices,
                  std::string help) {
  row r(std::move(name), option_kind::choice, std::move(section), std::move(help));
  r.spec.choices = choices;
  r.spec.set = [acc, choices](daemon_options& o, const std::string& text) -> std::string {
    if (std::find(choices.begin(), choices.end(), text) == choices.end()) {
      std::string all;
      for (auto& c : choices)
        all += (all.empty() ? "" : ", ") + c;
      return "'" + text + "' is not one of " + all;
    }
    acc(o) = text;
    return {};
  };
  r.spec.get = [acc](const daemon_options& o) { return field_of(acc, o); };
  return r;
}

template <class Access>
row list_option(std::string name, std::string section, Access acc, std::string help) {
  row r(std::move(name), option_kind::list, std::move(section), std::move(help));
  r.spec.set = [acc](daemon_options& o, const std::string& text) -> std::string {
    acc(o) = split_list(text);
    return {};
  };
  r.spec.get = [acc](const daemon_options& o) { return join_list(field_of(acc, o)); };
  return r;
}

template <class Access>
row integer_option(std::string name, std::string section, Access acc, std::string help) {
  using T = field_t<Access>;
  row r(std::move(name), option_kind::integer, std::move(section), std::move(help));
  r.spec.max = static_cast<int64_t>(std::numeric_limits<T>::max());
  r.spec.set = [acc](daemon_options& o, const std::string& text) -> std::string {
    uint64_t v = 0;
    if (!parse_uint(text, v))
      return "'" + text + "' is not a non-negative integer";
    if (v > static_cast<uint64_t>(std::numeric_limits<T>::max()))
      return "'" + text + "' is too large";
    acc(o) = static_cast<T>(v);
    return {};
  };
  r.spec.get = [acc](const daemon_options& o) { return std::to_string(field_of(acc, o)); };
  return r;
}

template <class Access>
row duration_option(std::string name, std::string section, Access acc, std::string help) {
  using D = field_t<Access>;
  constexpr int64_t unit_ms = std::chrono::duration_cast<milliseconds>(D(1)).count();
  row r(std::move(name), option_kind::duration, std::move(section), std::move(help));
  r.spec.unit = unit_ms == 1 ? "ms" : unit_ms == kSecond ? "s" : unit_ms == kMinute ? "m" : "h";
  r.spec.set = [acc](daemon_options& o, const std::string& text) -> std::string {
    int64_t ms = 0;
    if (!parse_duration_ms(text, ms))
      return "'" + text + "' is not a duration (a number and a unit: ms, s, m, h or d, e.g. \"1s\")";
    if (ms % unit_ms != 0)
      return "'" + text + "' is not a whole number of "
             + (unit_ms == kSecond ? "seconds" : unit_ms == kMinute ? "minutes" : "hours");
    acc(o) = std::chrono::duration_cast<D>(milliseconds(ms));
    return {};
  };
  r.spec.get = [acc](const daemon_options& o) {
    return format_duration_ms(std::chrono::duration_cast<milliseconds>(field_of(acc, o)).count());
  };
  return r;
}

#define RT(field) [](daemon_options& o) -> auto& { return o.runtime.field; }
#define RESP(field) [](daemon_options& o) -> auto& { return o.resp.field; }
#define OWN(field) [](daemon_options& o) -> auto& { return o.field; }

// Section headings, in the order the sample config and --help show them.
const char* const kProcess = "process";
const char* const kResp = "RESP ingest listener";
const char* const kHttp = "HTTP operations endpoint";
const char* const kRedis = "Redis (stage 1)";
const char* const kHealth = "Redis health checks and failover";
const char* const kJournal = "local spill journal";
const char* const kIngest = "ingest and aggregation";
const char* const kPostgres = "Postgres (stage 2: the flush supervisor)";
const char* const kRead = "read path (TALLY.GET)";

std::vector<option_spec> build_table() {
  std::vector<option_spec> t;
  auto add = [&](row& r) { t.push_back(std::move(r.spec)); };

  // --- process ---------------------------------------------------------------
  add(text_option("config", kProcess, OWN(config_file),
                  "TOML file read after the defaults and before the environment and flags.")
        .def("").env_or_flag_only());
  add(choice_option("log_level", kProcess, OWN(log_level), {"debug", "info", "warn", "error", "off"},
                    "Least severe log level printed (one line per event, to stderr).")
        .def("info").changeable());
  add(text_option("ns", kProcess, RT(ns),
                  "Namespace: every Redis key is {tally:<ns>}:...; instances of one fleet share it "
                  "(one lease, one stage-1 list per namespace). 1-64 characters, no braces, colons or spaces.")
        .def("default"));
  add(text_option("instance_id", kProcess, RT(instance_id),
                  "This instance's id in batch ids and the registry; empty = <hostname>-<pid>. "
                  "Must be unique in the namespace.")
        .def(""));
  add(integer_option("worker_threads", kProcess, RT(worker_threads),
                     "CAF scheduler threads; 0 = one per core.")
        .def("0").bounds(0, 256).unit("threads"));

  // --- RESP ------------------------------------------------------------------
  add(text_option("resp_bind", kResp, RESP(bind),
                  "Address the RESP listener binds to (an IP literal). Loopback by default; "
                  "0.0.0.0 or :: exposes it, set resp_requirepass then.")
        .def("127.0.0.1"));
  add(integer_option("resp_port", kResp, RESP(port),
                     "TCP port gateways send TALLY.RECORD to; 0 = any free port (logged at start).")
        .def("6380").bounds(0, 65535).unit("port"));
  add(text_option("resp_requirepass", kResp, RESP(requirepass),
                  "Password clients must give with AUTH (or HELLO 2 AUTH user pass) before anything "
                  "but PING, HELLO and QUIT is accepted, as Redis's requirepass; empty = no AUTH.")
        .def("").secret());
  add(integer_option("resp_max_connections", kResp, RESP(max_connections),
                     "Open client connections; one more is answered with an error and closed.")
        .def("10000").bounds(1, 1000000).unit("connections"));
  add(integer_option("resp_max_args", kResp, RESP(max_args),
                     "Arguments in one command; more is a protocol error (reply, then close).")
        .def("1024").bounds(3, 1048576).unit("arguments"));
  add(integer_option("resp_max_bulk_bytes", kResp, RESP(max_bulk_bytes),
                     "Bytes in one argument; more is a protocol error (reply, then close).")
        .def("65536").bounds(1024, 512 * kMiB).unit("bytes"));
  add(integer_option("resp_max_buffered_bytes", kResp, RESP(max_buffered_bytes),
                     "Unparsed input plus unsent replies one connection may hold; past it the "
                     "connection is closed. At least resp_max_bulk_bytes.")
        .def(std::to_string(4 * kMiB)).bounds(4096, 1024 * kMiB).unit("bytes"));
  add(duration_option("resp_idle_timeout", kResp, RESP(idle_timeout),
                      "Close a connection that sent nothing for this long; 0s = never.")
        .def("0s").bounds(0, kDay));
  add(integer_option("resp_read_chunk_bytes", kResp, RESP(read_chunk_bytes),
                     "Largest single socket read of a connection.")
        .def("65536").bounds(4096, 16 * kMiB).unit("bytes"));
  add(duration_option("resp_backpressure_retry", kResp, RESP(backpressure_retry),
                      "How often a connection paused by full ingest queues retries (it stops "
                      "reading meanwhile: TCP backpressure, nothing is dropped).")
        .def("2ms").bounds(1, kSecond));

  // --- HTTP ------------------------------------------------------------------
  add(text_option("http_bind", kHttp, OWN(http_bind),
                  "Address of GET /metrics, /healthz and /readyz (an IP literal).")
        .def("127.0.0.1"));
  add(integer_option("http_port", kHttp, OWN(http_port),
                     "TCP port of the operations endpoint; 0 = any free port (logged at start).")
        .def("9108").bounds(0, 65535).unit("port"));

  // --- Redis -----------------------------------------------------------------
  add(list_option("redis_urls", kRedis, RT(redis_urls),
                  "Redis databases, each redis://[[user]:password@]host[:port][/db] or "
                  "redis+sentinel://host[:port][,host[:port]...]/master-name[/db], with an optional "
                  "?weight=N (1-1000000, default 1). Stage-1 batches go to the active database: the "
                  "highest-weight one whose circuit is closed (ties: the first listed). In the file, "
                  "[[redis]] tables (url = ..., weight = N) are the same list. Comma-separated in the "
                  "environment and on the command line. SIGHUP reloads the list.")
        .def("redis://127.0.0.1:6379").changeable());
  add(duration_option("redis_timeout", kRedis, RT(redis_timeout),
                      "Connect and command timeout of every Redis call.")
        .def("1s").bounds(1, 60 * kSecond));
  add(duration_option("retry_backoff_min", kRedis, RT(retry_backoff_min),
                      "First delay before retrying a failed stage-1 write (doubles up to retry_backoff_max).")
        .def("50ms").bounds(1, 10 * kMinute));
  add(duration_option("retry_backoff_max", kRedis, RT(retry_backoff_max),
                      "Largest delay between retries of a failed stage-1 write; not below retry_backoff_min.")
        .def("2s").bounds(1, 10 * kMinute));
  add(duration_option("buffer_interval", kRedis, RT(buffer_interval),
                      "How often the aggregates become one stage-1 batch in Redis (sooner while "
                      "durable acks wait). A hard crash loses at most this much buffered-ack traffic.")
        .def("1s").bounds(10, 60 * kSecond));
  add(integer_option("max_batch_bytes", kRedis, RT(max_batch_bytes),
                     "Largest encoded batch; bigger merges are split.")
        .def(std::to_string(kMiB)).bounds(4096, 256 * kMiB).unit("bytes"));
  add(integer_option("max_pending_batches", kRedis, RT(max_pending_batches),
                     "Encoded batches held in memory while Redis does not take them; past it they go to "
                     "the spill journal.")
        .def("1024").bounds(1, 1 << 24).unit("batches"));

  // --- health checks and failover ---------------------------------------------
  add(duration_option("health_check_interval", kHealth, RT(health_check_interval),
                      "How often each database's health actor runs a round of PING probes (redis-py: 5s).")
        .def("1s").bounds(10, 10 * kMinute));
  add(integer_option("health_check_probes", kHealth, RT(health_check_probes),
                     "PINGs per round at most; the round stops once the policy is decided (redis-py: 3).")
        .def("3").bounds(1, 100).unit("probes"));
  add(duration_option("health_check_probe_delay", kHealth, RT(health_check_probe_delay),
                      "Pause between the probes of one round (redis-py: 500ms).")
        .def("100ms").bounds(0, kMinute));
  add(duration_option("health_check_timeout", kHealth, RT(health_check_timeout),
                      "Bound of one probe, connect included: a hung database is judged within it "
                      "(redis-py: 3s).")
        .def("1s").bounds(1, kMinute));
  add(choice_option("health_check_policy", kHealth, RT(health_check_policy), {"all", "majority", "any"},
                    "How many probes of a round must pass for the database to count as healthy "
                    "(redis-py: all).")
        .def("all"));
  add(duration_option("failure_window", kHealth, RT(failure_window),
                      "Sliding window (5 buckets) of the failure detector over the commands tally sends; "
                      "a logical command counts once however often it is retried (redis-py: 2s).")
        .def("5s").bounds(100, kHour));
  add(integer_option("failure_min_failures", kHealth, RT(failure_min_failures),
                     "Failed commands within failure_window before the circuit may open. redis-py's 1000 "
                     "suits a client sending thousands of commands a second; tally sends a few.")
        .def("3").bounds(1, 1000000).unit("commands"));
  add(integer_option("failure_rate_percent", kHealth, RT(failure_rate_percent),
                     "Share of failed commands within failure_window that opens the circuit, once "
                     "failure_min_failures is reached (redis-py: 10%).")
        .def("10").bounds(1, 100).unit("percent"));
  add(duration_option("grace_period", kHealth, RT(grace_period),
                      "A database that recovered is trusted again only after it stayed healthy this long "
                      "(half-open meanwhile; redis-py does not enforce one).")
        .def("10s").bounds(0, kHour));
  add(duration_option("auto_fallback_interval", kHealth, RT(auto_fallback_interval),
                      "How often (+-10% jitter) the active database moves back to a strictly better healthy "
                      "one; 0s = only by operator (redis-py: 120s).")
        .def("30s").bounds(0, kDay));

  // --- spill journal -------------------------------------------------------------
  add(text_option("state_dir", kJournal, RT(state_dir),
                  "Directory of the local spill journal (<ns>.<instance>.journal), where batches go while "
                  "no Redis database is healthy and that is replayed first when one is, and at the next "
                  "start. Empty = $STATE_DIRECTORY (systemd StateDirectory=), else "
                  "$XDG_STATE_HOME/tally, else ~/.local/state/tally, else /tmp/tally-<uid>.")
        .def(""));
  add(integer_option("journal_max_bytes", kJournal, RT(journal_max_bytes),
                     "Size bound of the spill journal; when it is full and Redis still takes nothing, "
                     "ingest pushes back (nothing is dropped).")
        .def(std::to_string(1024 * kMiB)).bounds(kMiB, int64_t{1} << 50).unit("bytes"));

  // --- ingest ----------------------------------------------------------------
  add(integer_option("shards", kIngest, RT(shards),
                     "Aggregator shards (actors, each with its own lock-free queue); 0 = one per core.")
        .def("0").bounds(0, 256).unit("shards"));
  add(integer_option("queue_capacity", kIngest, RT(queue_capacity),
                     "Events one shard queue holds before ingest pushes back.")
        .def("65536").bounds(1024, 1 << 26).unit("events"));
  add(integer_option("max_keys_per_shard", kIngest, RT(max_keys_per_shard),
                     "Distinct aggregation keys a shard's map holds; a full map is handed to the "
                     "buffer writer at once (an early batch) while ingest waits, so this bounds "
                     "memory, not throughput.")
        .def(std::to_string(1 << 18)).bounds(1024, 1 << 26).unit("keys"));
  add(integer_option("intern_capacity", kIngest, RT(intern_capacity),
                     "Distinct identifiers (keys, users, models, ...) the id table holds at once; "
                     "rounded up to a power of two. Once about two thirds of it are used the table is "
                     "emptied at a collection (ingest waits a moment; nothing is refused).")
        .def(std::to_string(1 << 20)).bounds(1024, 1 << 30).unit("identifiers"));

  // --- Postgres --------------------------------------------------------------
  add(text_option("postgres_url", kPostgres, RT(postgres_url),
                  "libpq connection string (URI or key=value) of the database totals are flushed "
                  "to. Empty (\"\", or --postgres-url '') = this instance only writes stage 1 and "
                  "another instance of the namespace flushes.")
        .def("postgresql://127.0.0.1:5432/tally"));
  add(text_option("pg_schema", kPostgres, RT(pg_schema),
                  "Schema holding tally's tables (created and migrated by tallyd at start).")
        .def("public"));
  add(duration_option("flush_interval", kPostgres, RT(flush_interval),
                      "How often the lease holder applies the stage-1 batches to Postgres.")
        .def("1s").bounds(10, 10 * kMinute));
  add(duration_option("lease_ttl", kPostgres, RT(lease_ttl),
                      "Lifetime of the flush lease in Redis; the holder renews it, a dead holder's "
                      "lease expires after this long.")
        .def("10s").bounds(500, 10 * kMinute));
  add(duration_option("lock_timeout", kPostgres, RT(lock_timeout),
                      "SET LOCAL lock_timeout of a flush transaction.")
        .def("5s").bounds(1, kHour));
  add(duration_option("statement_timeout", kPostgres, RT(statement_timeout),
                      "SET LOCAL statement_timeout of a flush transaction.")
        .def("30s").bounds(1, kHour));
  add(duration_option("applied_retention", kPostgres, RT(applied_retention),
                      "How long applied batch ids are kept in tally_applied_batches (exactly-once "
                      "window); whole hours.")
        .def("7d").bounds(kHour, 3650 * kDay));
  add(duration_option("repush_after", kPostgres, RT(repush_after),
                      "A batch this instance wrote but has not seen applied is pushed to Redis "
                      "again after this long (producer retention; duplicates are skipped).")
        .def("1m").bounds(kSecond, kDay));

  // --- read path ---------------------------------------------------------------
  add(integer_option("read_cache_entries", kRead, RT(read_cache_entries),
                     "Rows each instance caches for TALLY.GET (8-way sets, second-chance eviction).")
        .def("65536").bounds(8, 1 << 26));
  add(duration_option("read_cache_ttl", kRead, RT(read_cache_ttl),
                      "Longest a cached row is served without reading Postgres again; flush "
                      "invalidations keep it true sooner, this is the safety net.")
        .def("1m").bounds(kSecond, kDay));
  add(integer_option("read_connections", kRead, RT(read_connections),
                     "Postgres connections (and reader threads) for cache misses.")
        .def("2").bounds(1, 64));
  add(duration_option("read_timeout", kRead, RT(read_timeout),
                      "How long a TALLY.GET that misses the cache waits for Postgres.")
        .def("2s").bounds(10, 10 * kMinute));
  return t;
}

#undef RT
#undef RESP
#undef OWN

std::string upper_env_name(const std::string& name) {
  std::string out = "TALLY_";
  for (char c : name)
    out += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

bool is_ip_literal(const std::string& s) {
  unsigned char buf[sizeof(struct in6_addr)];
  return inet_pton(AF_INET, s.c_str(), buf) == 1 || inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

/// Wraps `text` at `width` columns, each line prefixed with `prefix`.
std::string wrap(const std::string& text, const std::string& prefix, size_t width = 78) {
  std::string out, line = prefix, word;
  std::istringstream in(text);
  while (in >> word) {
    if (line.size() > prefix.size() && line.size() + 1 + word.size() > width) {
      out += line + "\n";
      line = prefix;
    }
    if (line.size() > prefix.size())
      line += " ";
    line += word;
  }
  if (line.size() > prefix.size())
    out += line + "\n";
  return out;
}

} // namespace

// --- Durations ------------------------------------------------------------

bool parse_duration_ms(const std::string& text, int64_t& out_ms) {
  size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])))
    ++i;
  if (i == 0 || i > 18)
    return false;
  uint64_t n = 0;
  if (!parse_uint(text.substr(0, i), n))
    return false;
  std::string unit = text.substr(i);
  int64_t scale = 0;
  if (unit == "ms")
    scale = 1;
  else if (unit == "s")
    scale = kSecond;
  else if (unit == "m")
    scale = kMinute;
  else if (unit == "h")
    scale = kHour;
  else if (unit == "d")
    scale = kDay;
  else
    return false;
  // Past the largest bound anyway; saturate so the bounds check reports it.
  out_ms = n > static_cast<uint64_t>(INT64_MAX / scale) ? INT64_MAX : static_cast<int64_t>(n) * scale;
  return true;
}

std::string format_duration_ms(int64_t ms) {
  if (ms == 0)
    return "0s";
  if (ms % kDay == 0)
    return std::to_string(ms / kDay) + "d";
  if (ms % kHour == 0)
    return std::to_string(ms / kHour) + "h";
  if (ms % kMinute == 0)
    return std::to_string(ms / kMinute) + "m";
  if (ms % kSecond == 0)
    return std::to_string(ms / kSecond) + "s";
  return std::to_string(ms) + "ms";
}

// --- option_spec -------------------------------------------------------------

std::string option_spec::flag() const {
  std::string out = "--" + name;
  std::replace(out.begin(), out.end(), '_', '-');
  return out;
}

std::string option_spec::env() const {
  return upper_env_name(name);
}

std::string option_spec::toml_value(const daemon_options& o) const {
  auto text = get(o);
  switch (kind) {
    case option_kind::integer:
      return text;
    case option_kind::list: {
      std::string out = "[";
      auto items = split_list(text);
      for (size_t i = 0; i < items.size(); ++i)
        out += (i ? ", " : "") + toml_quote(items[i]);
      return out + "]";
    }
    default:
      return toml_quote(text);
  }
}

std::string option_spec::describe() const {
  std::string out;
  switch (kind) {
    case option_kind::text: out = "text"; break;
    case option_kind::list: out = "comma-separated list"; break;
    case option_kind::integer: out = "integer " + std::to_string(min) + ".." + std::to_string(max) + " " + unit; break;
    case option_kind::duration:
      out = "duration " + format_duration_ms(min) + ".." + format_duration_ms(max) + " (finest unit: " + unit + ")";
      break;
    case option_kind::choice: {
      out = "one of";
      for (auto& c : choices)
        out += " " + c;
      break;
    }
  }
  bool quoted = kind == option_kind::text || kind == option_kind::list;
  out += "; default " + (quoted ? "\"" + default_text + "\"" : default_text);
  out += "; env " + env();
  if (!file_allowed)
    out += "; not in the config file";
  out += runtime_changeable ? "; reloaded on SIGHUP" : "; restart to change";
  return out;
}

const std::vector<option_spec>& option_table() {
  static const std::vector<option_spec> table = build_table();
  return table;
}

const option_spec* find_option(const std::string& name) {
  for (auto& s : option_table())
    if (s.name == name)
      return &s;
  return nullptr;
}

std::string apply_option(daemon_options& o, const option_spec& spec, const std::string& text,
                         const std::string& origin) {
  auto fail = [&](const std::string& what) {
    return "option " + spec.name + ": " + what + " (from " + origin + ")";
  };
  // Bounds live in the table, so --help, the sample and the check agree;
  // they are checked before the field is set (a uint16_t would wrap).
  int64_t value = 0;
  bool bounded = false;
  if (spec.kind == option_kind::integer) {
    uint64_t v = 0;
    if (!parse_uint(text, v))
      return fail("'" + text + "' is not a non-negative integer");
    bounded = true;
    value = v > static_cast<uint64_t>(spec.max) ? spec.max + 1 : static_cast<int64_t>(v);
  } else if (spec.kind == option_kind::duration && parse_duration_ms(text, value)) {
    bounded = true;
  }
  if (bounded && (value < spec.min || value > spec.max))
    return fail("'" + text + "' is not between " + bounds_text(spec));
  if (auto err = spec.set(o, text); !err.empty())
    return fail(err);
  return {};
}

daemon_options default_options() {
  daemon_options o;
  for (auto& spec : option_table()) {
    auto err = apply_option(o, spec, spec.default_text, "the built-in default");
    if (!err.empty())  // a broken table row is a programming error
      throw std::logic_error(err);
  }
  return o;
}

namespace {

struct tables_text {
  bool ok = false;
  std::string list;   // comma-separated URLs with ?weight=
  std::string error;
};

tables_text redis_tables_to_list(const toml::node& node, const std::string& where) {
  tables_text out;
  auto fail = [&](const std::string& what) {
    out.error = "option redis: " + what + " (from " + where + ")";
    return out;
  };
  const auto* arr = node.as_array();
  if (!arr || !arr->is_array_of_tables())
    return fail("must be an array of tables: [[redis]] url = \"redis://host:6379\" weight = 2");
  if (arr->empty())
    return fail("at least one [[redis]] table is needed");
  std::vector<std::string> urls;
  for (auto&& el : *arr) {
    const auto& t = *el.as_table();
    std::string line = std::to_string(t.source().begin.line);
    for (auto&& [k, v] : t)
      if (k.str() != "url" && k.str() != "weight")
        return fail("unknown key '" + std::string(k.str()) + "' in the [[redis]] table at line " + line
                    + " (url and weight are known)");
    auto url = t["url"].value_exact<std::string>();
    if (!url || url->empty())
      return fail("the [[redis]] table at line " + line + " needs url = \"redis://...\"");
    if (url->find(',') != std::string::npos)
      return fail("'" + *url + "' contains a comma; list Sentinels as separate hosts in one url");
    std::string item = *url;
    if (t.contains("weight")) {
      auto w = t["weight"].value_exact<int64_t>();
      if (!w || *w < 1 || *w > 1000000)
        return fail("weight of the [[redis]] table at line " + line + " must be an integer from 1 to 1000000");
      if (item.find("weight=") != std::string::npos)
        return fail("the [[redis]] table at line " + line + " gives a weight twice (in url and weight)");
      item += (item.find('?') == std::string::npos ? "?weight=" : "&weight=") + std::to_string(*w);
    }
    urls.push_back(std::move(item));
  }
  out.ok = true;
  out.list = join_list(urls);
  return out;
}

/// The 1-based line of the first non-ASCII byte outside a comment line (a
/// line whose first non-blank character is '#'), or 0. Deliberately not a
/// TOML lexer: a scanner that tracked strings could disagree with toml++
/// about where one ends (a quote inside a bare value, four closing quotes),
/// and the fuzzer found exactly such inputs reaching toml++'s undefined
/// behaviour.
size_t non_ascii_outside_comment_lines(const std::string& t) {
  size_t line = 1;
  bool comment = false, line_start = true;
  for (char c : t) {
    if (c == '\n') {
      ++line;
      comment = false;
      line_start = true;
      continue;
    }
    if (line_start && (c == ' ' || c == '\t'))
      continue;
    if (line_start)
      comment = c == '#';
    line_start = false;
    if (!comment && static_cast<unsigned char>(c) >= 0x80)
      return line;
  }
  return 0;
}

} // namespace

std::string apply_config_file(daemon_options& o, const std::string& path, bool only_changeable) {
  // toml++ 3.3 (Debian 12) reaches __builtin_unreachable(), undefined
  // behaviour, on some non-ASCII characters in keys and bare values (U+00A1
  // to U+0499, 'é' among them). Every option's name and value is ASCII, so
  // non-ASCII text is refused before toml++ reads the file, except on
  // comment lines (toml++ skips them to the newline), where the packaged
  // config's help text has it.
  {
    std::ifstream in(path, std::ios::binary);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (size_t line = non_ascii_outside_comment_lines(text); line != 0)
      return "config " + path + ":" + std::to_string(line)
             + ": non-ASCII text outside a comment line; write such characters as \\uXXXX escapes inside a string";
  }

  toml::table doc;
  try {
    doc = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    std::ostringstream msg;
    msg << "config " << path;
    if (e.source().begin)
      msg << ":" << e.source().begin.line;
    msg << ": " << e.description();
    return msg.str();
  }
  if (doc.contains("redis") && doc.contains("redis_urls"))
    return "config " + path + ":" + std::to_string(doc["redis"].node()->source().begin.line)
           + ": give the databases either as [[redis]] tables or as redis_urls, not both";
  for (auto&& [key, node] : doc) {
    std::string name(key.str());
    std::string where = path + ":" + std::to_string(node.source().begin.line);
    if (name == "redis") {
      // [[redis]] url = "...", weight = N: the same list as redis_urls, one
      // table per database, so a weight reads as data, not as a URL query.
      auto text = redis_tables_to_list(node, where);
      if (!text.ok)
        return text.error;
      if (only_changeable && !find_option("redis_urls")->runtime_changeable)
        continue;
      if (auto err = apply_option(o, *find_option("redis_urls"), text.list, where); !err.empty())
        return err;
      continue;
    }
    const option_spec* spec = find_option(name);
    if (!spec)
      return "config " + where + ": unknown option '" + name + "'";
    if (!spec->file_allowed)
      return "config " + where + ": option " + name + " is not allowed in the config file (use "
             + spec->flag() + " or " + spec->env() + ")";
    std::string text;
    bool type_ok = true;
    switch (spec->kind) {
      case option_kind::integer:
        if (auto v = node.value_exact<int64_t>()) {
          if (*v < 0)
            return "option " + name + ": '" + std::to_string(*v) + "' is not between "
                   + bounds_text(*spec) + " (from " + where + ")";
          text = std::to_string(*v);
        } else {
          type_ok = false;
        }
        break;
      case option_kind::list:
        if (auto* arr = node.as_array()) {
          std::vector<std::string> items;
          for (auto&& el : *arr) {
            auto s = el.value_exact<std::string>();
            if (!s)
              return "option " + name + ": every element must be a string (from " + where + ")";
            if (s->find(',') != std::string::npos)
              return "option " + name + ": '" + *s + "' contains a comma (from " + where + ")";
            items.push_back(*s);
          }
          text = join_list(items);
        } else {
          type_ok = false;
        }
        break;
      default:
        if (auto v = node.value_exact<std::string>())
          text = *v;
        else
          type_ok = false;
    }
    if (!type_ok) {
      const char* want = spec->kind == option_kind::integer ? "an integer"
                         : spec->kind == option_kind::list  ? "an array of strings"
                         : spec->kind == option_kind::duration
                           ? "a string with a unit, e.g. \"1s\""
                           : "a string";
      return "option " + name + ": must be " + want + " (from " + where + ")";
    }
    if (only_changeable && !spec->runtime_changeable)
      continue;
    if (auto err = apply_option(o, *spec, text, where); !err.empty())
      return err;
  }
  return {};
}

std::map<std::string, std::string> environment_variables() {
  std::map<std::string, std::string> out;
  for (char** e = environ; e && *e; ++e) {
    std::string kv(*e);
    if (kv.rfind("TALLY_", 0) != 0)
      continue;
    auto eq = kv.find('=');
    if (eq != std::string::npos)
      out[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  return out;
}

std::string apply_environment(daemon_options& o, const std::map<std::string, std::string>& env,
                              bool only_changeable) {
  for (auto& spec : option_table()) {
    if (only_changeable && !spec.runtime_changeable)
      continue;
    auto it = env.find(spec.env());
    if (it == env.end())
      continue;
    if (auto err = apply_option(o, spec, it->second, spec.env()); !err.empty())
      return err;
  }
  return {};
}

std::string check_option_bounds(const config& c) {
  daemon_options current = default_options();
  current.runtime = c;
  for (const auto& spec : option_table()) {
    if (spec.kind != option_kind::integer && spec.kind != option_kind::duration)
      continue;
    daemon_options scratch = current;
    if (auto err = spec.set(scratch, spec.get(current)); !err.empty())
      return "option " + spec.name + ": " + err;
  }
  return {};
}

std::string validate(const daemon_options& o) {
  if (auto err = tally::validate(o.runtime); !err.empty())
    return err;
  if (!is_ip_literal(o.resp.bind))
    return "option resp_bind: '" + o.resp.bind + "' is not an IP address (e.g. 127.0.0.1, 0.0.0.0, ::1)";
  if (!is_ip_literal(o.http_bind))
    return "option http_bind: '" + o.http_bind + "' is not an IP address (e.g. 127.0.0.1, 0.0.0.0, ::1)";
  if (o.resp.port != 0 && o.resp.port == o.http_port)
    return "option http_port: " + std::to_string(o.http_port) + " is also resp_port";
  if (o.resp.max_buffered_bytes < o.resp.max_bulk_bytes)
    return "option resp_max_buffered_bytes: must be at least resp_max_bulk_bytes ("
           + std::to_string(o.resp.max_bulk_bytes) + ")";
  tally::log_level lvl;
  if (!parse_log_level(o.log_level, lvl))
    return "option log_level: '" + o.log_level + "' is not a log level";
  return {};
}

// --- Generated text ----------------------------------------------------------

std::string sample_config() {
  auto defaults = default_options();
  std::string out =
    "# tallyd.sample.toml — every tallyd option, commented out, at its default.\n"
    "#\n"
    "# Generated by `tallyd --print-sample-config` from the options table in\n"
    "# runtime/options.cpp; a test checks this file equals that output, so edit\n"
    "# the table, then regenerate:\n"
    "#   tallyd --print-sample-config > scripts/tallyd.sample.toml\n"
    "#\n"
    "# Use: copy it, uncomment what you change, run `tallyd --config FILE`.\n"
    "# Precedence: built-in defaults < this file < TALLY_* environment < flags.\n"
    "# Every option is also an environment variable (TALLY_ + the name in upper\n"
    "# case) and a flag (-- + the name with dashes): resp_port = TALLY_RESP_PORT\n"
    "# = --resp-port. Unknown keys are errors.\n"
    "#\n"
    "# Durations are strings with a unit: \"250ms\", \"1s\", \"5m\", \"2h\", \"7d\".\n"
    "# Lists are TOML arrays here, comma-separated in the environment and flags.\n"
    "# Options marked \"reloaded on SIGHUP\" change without a restart: edit the\n"
    "# file and `kill -HUP` tallyd; the others need a restart.\n";
  std::string section;
  for (auto& spec : option_table()) {
    if (spec.section != section) {
      section = spec.section;
      out += "\n# " + std::string(74, '-') + "\n# " + section + "\n# " + std::string(74, '-') + "\n";
    }
    out += "\n";
    out += wrap(spec.help, "# ");
    out += wrap("Flag " + spec.flag() + ", " + spec.describe() + ".", "# ");
    if (spec.file_allowed)
      out += "# " + spec.name + " = " + spec.toml_value(defaults) + "\n";
  }
  return out;
}

std::string effective_config(const daemon_options& o) {
  std::string out = "# tallyd effective options (defaults < file < environment < flags)\n";
  for (auto& spec : option_table()) {
    auto value = spec.secret && !spec.get(o).empty() ? std::string("\"<set>\"") : spec.toml_value(o);
    out += (spec.file_allowed ? "" : "# ") + spec.name + " = " + value + "\n";
  }
  return out;
}

// --- Command line ------------------------------------------------------------

command_line parse_command_line(int argc, char** argv) {
  command_line cl;
  CLI::App app{"tallyd — counts LLM-gateway usage exactly: RESP ingest, Redis stage 1, "
               "one fenced writer to Postgres.\n"
               "Every option is also a TOML key (--config FILE) and a TALLY_* environment "
               "variable; precedence: defaults < file < environment < flags. Durations take a "
               "unit: 250ms, 1s, 5m, 2h, 7d.",
               "tallyd"};
  app.get_formatter()->column_width(34);
  std::map<std::string, std::string> values;
  std::map<std::string, CLI::Option*> opts;
  for (auto& spec : option_table()) {
    auto* opt = app.add_option(spec.flag(), values[spec.name], spec.help + " [" + spec.describe() + "]");
    opt->group(spec.section);
    // A flag given twice: the last one wins, as in most Unix tools (a
    // wrapper script can append an override).
    opt->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    switch (spec.kind) {
      case option_kind::integer: opt->type_name("INT"); break;
      case option_kind::duration: opt->type_name("DURATION"); break;
      case option_kind::list: opt->type_name("LIST"); break;
      case option_kind::choice: opt->type_name("LEVEL"); break;
      default: opt->type_name(spec.name == "config" ? "FILE" : "TEXT");
    }
    opts[spec.name] = opt;
  }
  bool print_sample = false;
  app.add_flag("--print-sample-config", print_sample,
               "Print the fully commented sample config (every option at its default) and exit.")
    ->group("actions");
  app.add_flag("--print-config", cl.print_config,
               "Print the effective options (after file, environment and flags) as TOML and exit.")
    ->group("actions");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    cl.what = command_line::action::exit_ok;
    cl.output = app.help();
    return cl;
  } catch (const CLI::ParseError& e) {
    cl.what = command_line::action::exit_error;
    cl.output = std::string("tallyd: ") + e.what() + " (see tallyd --help)";
    return cl;
  }
  if (print_sample) {
    cl.what = command_line::action::exit_ok;
    cl.output = sample_config();
    return cl;
  }
  for (auto& [name, opt] : opts)
    if (opt->count() > 0)
      cl.flags[name] = values[name];
  return cl;
}

std::string load_options(daemon_options& out, const command_line& cl,
                         const std::map<std::string, std::string>& env) {
  out = default_options();
  // The file's path is itself an option, so it is found first (flag over
  // environment) and read before the environment and flags override it.
  std::string path;
  if (auto it = cl.flags.find("config"); it != cl.flags.end())
    path = it->second;
  else if (auto e = env.find("TALLY_CONFIG"); e != env.end())
    path = e->second;
  if (!path.empty())
    if (auto err = apply_config_file(out, path); !err.empty())
      return err;
  if (auto err = apply_environment(out, env); !err.empty())
    return err;
  for (auto& spec : option_table()) {
    auto it = cl.flags.find(spec.name);
    if (it == cl.flags.end())
      continue;
    if (auto err = apply_option(out, spec, it->second, "flag " + spec.flag()); !err.empty())
      return err;
  }
  out.config_file = path;
  return validate(out);
}

} // namespace tally
