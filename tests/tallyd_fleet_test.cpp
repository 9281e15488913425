// tests/tallyd_fleet_test.cpp — tallyd with several Redis databases and its
// spill journal, as an operator meets them (design §6).
//
// Real tallyd processes against real redis-server and postgres processes
// (tests/harness), driven from the outside only: hiredis pipelines of
// TALLY.RECORD, TALLY.DB and TALLY.STATUS on the RESP port, signals, config
// files, /metrics with promtool. Every test ends with the totals in Postgres
// compared, row by row and to the nano-unit, with an independent reference:
// the generated workload's rollups (tests/support/workload.hpp), or, where a
// damaged journal lost events on purpose, the batches a separate reader
// (adapters::spill_journal on a copy of the file) finds in the good prefix.
//
// Intervals are short (health checks every 200 ms, 1 s grace period, 100 ms
// buffer and flush intervals, 1 s lease) so the whole binary stays within a
// few minutes; every wait is on a condition with a generous deadline.
#include "adapters/batch_codec.hpp"
#include "adapters/redis_client.hpp"
#include "adapters/spill_journal.hpp"
#include "core/rollup.hpp"
#include "tests/harness/servers.hpp"
#include "tests/support/batches.hpp"
#include "tests/support/postgres_rows.hpp"
#include "tests/support/tallyd_process.hpp"
#include "tests/support/workload.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

using namespace tally;
using namespace tally::testing;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

// --- RESP helpers ----------------------------------------------------------------

/// One TALLY.DB LIST entry: field -> value (integers as their text).
using db_entry = std::map<std::string, std::string>;

/// Sends one command to tallyd on a fresh connection; AUTH first with `password`.
resp_reply command(int port, const std::vector<std::string>& args, const std::string& password = "") {
  return redis_command(port, args, password, 10s);
}

/// Returns the reply as one line for assertions: "+OK", "-ERR ...", ":1", ...
std::string reply_text(const resp_reply& r) {
  if (r.type == '*')
    return "*" + std::to_string(r.elements.size());
  return std::string(1, r.type) + r.value;
}

/// TALLY.DB LIST, parsed.
std::vector<db_entry> db_list(int port, const std::string& password = "") {
  auto r = command(port, {"TALLY.DB", "LIST"}, password);
  std::vector<db_entry> out;
  if (r.type != '*')
    throw std::runtime_error("TALLY.DB LIST answered " + reply_text(r));
  for (auto& item : r.elements) {
    db_entry e;
    for (size_t i = 0; i + 1 < item.elements.size(); i += 2)
      e[item.elements[i].value] = item.elements[i + 1].value;
    out.push_back(std::move(e));
  }
  return out;
}

/// "url weight=N state=S active=A" per database, for readable failures and
/// exact comparisons.
std::string describe(const std::vector<db_entry>& dbs) {
  std::string out;
  for (auto& d : dbs) {
    auto at = [&](const char* k) {
      auto it = d.find(k);
      return it == d.end() ? std::string("?") : it->second;
    };
    out += at("url") + " weight=" + at("weight") + " state=" + at("state") + " active=" + at("active");
    if (!at("last_error").empty())
      out += " last_error=" + at("last_error");
    out += "\n";
  }
  return out;
}

/// The list without state and errors: what an operator changed.
std::string shape(const std::vector<db_entry>& dbs) {
  std::string out;
  for (auto& d : dbs)
    out += d.at("url") + " weight=" + d.at("weight") + " active=" + d.at("active") + "\n";
  return out;
}

/// One counter of TALLY.STATUS, or -1.
long long status_value(int port, const std::string& name, const std::string& password = "") {
  auto r = command(port, {"TALLY.STATUS"}, password);
  std::istringstream in(r.value);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r')
      line.pop_back();
    if (line.compare(0, name.size() + 1, name + ":") == 0)
      return std::stoll(line.substr(name.size() + 1));
  }
  return -1;
}

/// A hiredis connection to tallyd's RESP port (AUTH with `password`).
adapters::redis_client connect_client(int port, const std::string& password = "") {
  auto ep = adapters::parse_redis_url("redis://127.0.0.1:" + std::to_string(port));
  if (!ep)
    throw std::runtime_error(ep.error().message);
  ep->password = password;
  auto client = adapters::redis_client::connect(*ep, 5000ms);
  if (!client)
    throw std::runtime_error("connect to tallyd: " + client.error().message);
  return std::move(*client);
}

/// Sends events [from, to) of workload `seed` as TALLY.RECORD pipelines of
/// `per_pipeline`; returns how many were answered +OK before the first
/// other answer or a lost connection (`error` says which).
uint64_t send_events(adapters::redis_client& client, uint64_t seed, uint64_t from, uint64_t to,
                     std::string& error, size_t per_pipeline = 500) {
  uint64_t ok = 0;
  std::vector<std::vector<std::string>> owned;
  for (uint64_t i = from; i < to; ++i) {
    owned.push_back(generate(seed, i).resp_args());
    if (owned.size() < per_pipeline && i + 1 < to)
      continue;
    std::vector<std::vector<std::string_view>> cmds;
    for (auto& c : owned)
      cmds.emplace_back(c.begin(), c.end());
    auto replies = client.pipeline(cmds);
    if (!replies) {
      error = replies.error().message;
      return ok;
    }
    for (auto& r : *replies) {
      if (r.str != "OK") {
        error = "reply '" + r.str + "' to event " + std::to_string(from + ok);
        return ok;
      }
      ++ok;
    }
    owned.clear();
  }
  return ok;
}

/// Sends events [from, to) and expects every one answered +OK.
void send_all(int port, uint64_t seed, uint64_t from, uint64_t to, const std::string& password = "") {
  auto client = connect_client(port, password);
  std::string error;
  uint64_t ok = send_events(client, seed, from, to, error);
  ASSERT_EQ(ok, to - from) << error;
}

// --- journal helpers ---------------------------------------------------------------

/// Where one record sits in a journal file (design §6 file format).
struct record_at {
  uint64_t offset;   // of its length field
  uint32_t length;   // payload bytes
};

/// Walks a journal file's records by their length fields (no checks: for
/// placing damage in a file known to be whole).
std::vector<record_at> record_layout(const std::string& path) {
  auto bytes = slurp(path);
  std::vector<record_at> out;
  uint64_t off = adapters::journal_header_bytes;
  while (off + adapters::journal_record_overhead <= bytes.size()) {
    uint32_t len = 0;
    std::memcpy(&len, bytes.data() + off, 4);  // little-endian, as the host
    if (off + adapters::journal_record_overhead + len > bytes.size())
      break;
    out.push_back({off, len});
    off += adapters::journal_record_overhead + len;
  }
  return out;
}

/// What an independent reader finds in a journal: a COPY of it is opened
/// (which cuts the copy's bad tail, never the original's) and every record is
/// decoded and summed.
struct journal_contents {
  rollup_rows rows;
  size_t records = 0;
  adapters::journal_recovery recovery;
  std::vector<std::string> errors;
};

journal_contents read_journal_copy(const std::string& path) {
  journal_contents out;
  auto copy = temp_path("journal-copy");
  fs::copy_file(path, copy, fs::copy_options::overwrite_existing);
  auto j = adapters::spill_journal::open(copy, UINT64_MAX);
  if (!j) {
    out.errors.push_back("open: " + j.error().message);
    return out;
  }
  out.recovery = j->recovery();
  auto st = j->for_each([&](std::string_view record) {
    ++out.records;
    auto b = adapters::decode_batch(record);
    if (!b) {
      out.errors.push_back(b.error().message);
      return true;
    }
    add_batch_rows(out.rows, *b);
    return true;
  });
  if (!st)
    out.errors.push_back("for_each: " + st.error().message);
  fs::remove(copy);
  return out;
}

/// Size of a file, or -1 when it does not exist.
long long file_size(const std::string& path) {
  std::error_code ec;
  auto n = fs::file_size(path, ec);
  return ec ? -1 : static_cast<long long>(n);
}

/// How many stage-1 batches of namespace `ns` were pushed to the Redis on
/// `port` (their written-markers, design §6).
size_t written_markers(int port, const std::string& ns) {
  return redis_command(port, {"KEYS", "{tally:" + ns + "}:written:*"}).elements.size();
}

size_t count_of(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size()))
    ++n;
  return n;
}

// --- the suite -----------------------------------------------------------------------

/// One Postgres for the whole binary (an initdb per test would dominate the
/// run); every test has its own namespace, schema, state dir and Redis servers.
class TallydFleet : public ::testing::Test {
protected:
  static void SetUpTestSuite() { postgres_ = new postgres_server(); }
  static void TearDownTestSuite() {
    delete postgres_;
    postgres_ = nullptr;
  }

  /// Flags every tallyd here gets: its namespace, schema and state dir, free
  /// ports and the short intervals. No Redis: each test says how it gives
  /// the databases (flag, environment, config file).
  static std::vector<std::string> fleet_args(const std::string& ns, const std::string& state_dir,
                                             const std::string& instance, bool stage2 = true) {
    if (stage2)
      postgres_->psql("CREATE SCHEMA IF NOT EXISTS " + ns);
    return {"--ns", ns, "--postgres-url", stage2 ? postgres_->url() : "", "--pg-schema", ns,
            "--instance-id", instance, "--state-dir", state_dir, "--resp-port", "0", "--http-port", "0",
            "--worker-threads", "2", "--buffer-interval", "100ms", "--flush-interval", "100ms",
            "--lease-ttl", "1s", "--health-check-interval", "200ms", "--grace-period", "1s"};
  }

  static std::vector<std::string> with(std::vector<std::string> args, const std::vector<std::string>& more) {
    args.insert(args.end(), more.begin(), more.end());
    return args;
  }

  /// Waits until every row of every table in schema `ns` equals `expected`;
  /// returns the last difference ("" when equal). Polls the cheap total of
  /// requests first (a flush commits whole batches, so once it matches
  /// everything is in) and compares every row only then.
  static std::string wait_postgres_equals(const std::string& ns, const rollup_rows& expected,
                                          std::chrono::milliseconds deadline = 120s) {
    const std::string want = to_string_i128(total_requests(expected)) + "\n";
    const std::string sql = "SELECT coalesce(sum(requests), 0) FROM " + ns + ".tally_minute";
    std::string got;
    // psql fails while tallyd has not created the tables yet.
    auto attempt = [](auto&& f) -> std::string {
      try {
        return f();
      } catch (const std::exception& e) {
        return e.what();
      }
    };
    wait_for([&] { return (got = attempt([&] { return postgres_->psql(sql); })) == want; }, deadline, 200ms);
    std::string diff;
    wait_for([&] {
      return (diff = attempt([&] { return diff_rows(expected, read_postgres(*postgres_, ns)); })).empty();
    }, 5s, 500ms);
    if (!diff.empty() && got != want)
      diff = "requests in " + ns + ".tally_minute: " + got + " of " + want + diff;
    return diff;
  }

  /// The sum of the requests column of tally_minute in `rows`.
  static __int128 total_requests(const rollup_rows& rows) {
    auto table = rows.find("tally_minute");
    if (table == rows.end())
      return 0;
    size_t column = 0;
    for (const auto& spec : rollup_specs())
      if (spec.table == "tally_minute") {
        auto names = spec.measure_columns();
        column = static_cast<size_t>(std::find(names.begin(), names.end(), "requests") - names.begin());
      }
    __int128 sum = 0;
    for (const auto& [key, values] : table->second)
      sum += values.at(column);
    return sum;
  }

  static postgres_server* postgres_;
};
postgres_server* TallydFleet::postgres_ = nullptr;

bool wait_active(int port, const std::string& url, const std::string& password = "",
                 std::chrono::milliseconds deadline = 30s) {
  return wait_for([&] {
    for (auto& d : db_list(port, password))
      if (d["url"] == url)
        return d["active"] == "1" && d["state"] == "closed";
    return false;
  }, deadline, 50ms);
}

bool wait_state(int port, const std::string& url, const std::string& state, const std::string& password = "",
                std::chrono::milliseconds deadline = 30s) {
  return wait_for([&] {
    for (auto& d : db_list(port, password))
      if (d["url"] == url)
        return d["state"] == state;
    return false;
  }, deadline, 50ms);
}

} // namespace

// --- 1. every database down: the journal keeps the events across a restart ------------

// Redis dies before the events arrive: all of them (50,000) are still
// answered +OK, go to the spill journal, SIGTERM exits 0, and the next tallyd
// (same instance id; then, with 10,000 events, another id adopting the
// journal) replays them once Redis is back: Postgres holds exactly the
// workload, and the journal is emptied (own) or removed (adopted).
TEST_F(TallydFleet, AllDatabasesDownJournalThenRestart) {
  auto scenario = [&](const std::string& ns, uint64_t seed, uint64_t n, bool same_id) {
    SCOPED_TRACE(ns);
    redis_server redis;
    auto state_dir = temp_dir("tally-fleet-state-");
    const std::string first_id = ns + "-a", second_id = same_id ? first_id : ns + "-b";
    auto journal = adapters::journal_path(state_dir, ns, first_id);
    auto args = [&](const std::string& id) {
      return with(fleet_args(ns, state_dir, id),
                  {"--redis-urls", redis.url(), "--redis-timeout", "300ms", "--health-check-timeout", "300ms",
                   "--retry-backoff-max", "200ms"});
    };

    tallyd_process a(args(first_id));
    ASSERT_TRUE(a.wait_ready()) << slurp(a.log);
    ASSERT_TRUE(wait_active(a.resp_port, redis.url())) << describe(db_list(a.resp_port)) << slurp(a.log);
    redis.kill();
    http_reply ready;
    ASSERT_TRUE(wait_for([&] {
      return (ready = http_get(a.http_port, "/readyz")).body.find("spill journal") != std::string::npos;
    }, 30s)) << ready.body << slurp(a.log);
    EXPECT_EQ(ready.status, 200);

    send_all(a.resp_port, seed, 0, n);
    EXPECT_EQ(status_value(a.resp_port, "events_accepted"), static_cast<long long>(n));
    EXPECT_EQ(status_value(a.resp_port, "batches_written"), 0) << "Redis is down: nothing reached it";
    ASSERT_EQ(a.terminate(), 0) << slurp(a.log);
    auto a_log = slurp(a.log);
    EXPECT_NE(a_log.find("writing batches to the spill journal " + journal), std::string::npos) << a_log;
    EXPECT_EQ(a_log.find("SOME BATCHES NOT WRITTEN"), std::string::npos) << a_log;

    // The journal alone holds every event, read independently of tallyd.
    auto held = read_journal_copy(journal);
    EXPECT_TRUE(held.errors.empty()) << ::testing::PrintToString(held.errors);
    EXPECT_FALSE(held.recovery.tail_truncated) << held.recovery.tail_reason;
    EXPECT_GE(held.records, 1u);
    EXPECT_EQ(diff_rows(reference(seed, n), held.rows), "");

    redis.start();
    tallyd_process b(args(second_id));
    ASSERT_TRUE(b.wait_ready()) << slurp(b.log);
    EXPECT_EQ(wait_postgres_equals(ns, reference(seed, n)), "") << slurp(b.log);
    EXPECT_NE(slurp(b.log).find("from the spill journal " + journal), std::string::npos) << slurp(b.log);
    if (same_id) {
      // The own journal is kept, emptied to its header.
      EXPECT_TRUE(wait_for([&] { return file_size(journal) == adapters::journal_header_bytes; }, 30s))
        << file_size(journal);
    } else {
      // An adopted journal is removed; the new instance's own one is empty.
      EXPECT_TRUE(wait_for([&] { return file_size(journal) == -1; }, 30s)) << file_size(journal);
      EXPECT_LE(file_size(adapters::journal_path(state_dir, ns, second_id)),
                static_cast<long long>(adapters::journal_header_bytes));
    }
    EXPECT_TRUE(wait_for([&] { return status_value(b.resp_port, "journal_batches") == 0; }, 30s));
    // At least once each: a replay cut short (a probe timing out while the
    // restarted Redis warms up) starts over, and the pushes are idempotent.
    EXPECT_GE(status_value(b.resp_port, "replayed"), static_cast<long long>(held.records));
    ASSERT_EQ(b.terminate(), 0) << slurp(b.log);
    EXPECT_EQ(diff_rows(reference(seed, n), read_postgres(*postgres_, ns)), "") << "after the stop";
    fs::remove_all(state_dir);
  };
  scenario("alldown_same", 101, 50000, true);
  // Adoption needs no volume: fewer events keep the flush short.
  scenario("alldown_adopt", 102, 10000, false);
}

// --- 2. a damaged journal: the bad tail is cut and reported, the prefix replayed ----------

namespace {

/// Sends chunks of events to a tallyd whose databases are all down, each
/// chunk once the previous one reached the journal (the monotonic journaled
/// counter grew), so the journal gets about a record per chunk, until
/// `chunks` chunks went or the process died. Returns the events sent.
uint64_t send_in_batches(tallyd_process& d, uint64_t seed, int chunks, uint64_t per_chunk) {
  auto batches = [&] { return status_value(d.resp_port, "journaled"); };
  uint64_t sent = 0;
  try {
    auto client = connect_client(d.resp_port);
    for (int c = 0; c < chunks && process_exists(d.pid); ++c) {
      long long before = batches();
      std::string error;
      sent += send_events(client, seed, sent, sent + per_chunk, error);
      if (!error.empty())
        break;  // the process died under us (the failpoint)
      bool ok = wait_for([&] {
        if (!process_exists(d.pid))
          return true;
        try {
          return batches() > before;
        } catch (const std::exception&) {
          return !process_exists(d.pid);
        }
      }, 30s, 20ms);
      if (!ok) {
        ADD_FAILURE() << "no new batch after chunk " << c << "\n" << slurp(d.log);
        break;
      }
    }
  } catch (const std::exception& e) {
    // Talking to a process that the failpoint killed; anything else fails.
    if (process_exists(d.pid))
      ADD_FAILURE() << e.what();
  }
  return sent;
}

} // namespace

TEST_F(TallydFleet, JournalDamage) {
  redis_server redis;
  redis.stop();  // every tallyd below starts with its only database down

  // (a) kill -9 in the middle of a journal write: three records written, the
  // fourth torn after its header.
  {
    const std::string ns = "jkill", id = "jkill-a";
    auto state_dir = temp_dir("tally-fleet-state-");
    auto journal = adapters::journal_path(state_dir, ns, id);
    auto args = with(fleet_args(ns, state_dir, id),
                     {"--redis-urls", redis.url(), "--redis-timeout", "300ms", "--health-check-timeout", "300ms",
                      "--retry-backoff-max", "200ms"});
    {
      tallyd_process a(args, {"TALLY_FAILPOINT=journal_mid_write", "TALLY_FAILPOINT_SKIP=3"});
      ASSERT_TRUE(a.wait_ready()) << slurp(a.log);
      send_in_batches(a, 201, 40, 300);
      int code = a.wait_exit(60s);
      EXPECT_EQ(code, 128 + SIGKILL) << slurp(a.log);
      EXPECT_NE(slurp(a.log).find("failpoint journal_mid_write: SIGKILL"), std::string::npos) << slurp(a.log);
    }
    auto good = read_journal_copy(journal);
    EXPECT_TRUE(good.errors.empty()) << ::testing::PrintToString(good.errors);
    EXPECT_TRUE(good.recovery.tail_truncated);
    EXPECT_EQ(good.recovery.truncated_bytes, adapters::journal_record_overhead) << good.recovery.tail_reason;
    ASSERT_EQ(good.records, 3u) << good.recovery.tail_reason;

    redis.start();
    tallyd_process b(with(args, {}));
    ASSERT_TRUE(b.wait_ready()) << slurp(b.log);
    EXPECT_EQ(wait_postgres_equals(ns, good.rows), "") << slurp(b.log);
    auto log = slurp(b.log);
    EXPECT_NE(log.find("spill journal " + journal + ": "), std::string::npos) << log;
    EXPECT_NE(log.find("cut " + std::to_string(adapters::journal_record_overhead) + " bytes, kept the 3 records "
                       "before it"), std::string::npos) << log;
    EXPECT_GE(status_value(b.resp_port, "replayed"), 3);  // a cut-short replay starts over
    ASSERT_EQ(b.terminate(), 0) << slurp(b.log);
    EXPECT_EQ(diff_rows(good.rows, read_postgres(*postgres_, ns)), "") << "after the stop";
    EXPECT_EQ(file_size(journal), -1) << "a clean stop removes an empty journal";
    redis.stop();
    fs::remove_all(state_dir);
  }

  // A whole journal of several records, written by a tallyd that stopped
  // while its database was down; (b) and (c) damage copies of it.
  const std::string src_id = "jsrc-a";
  auto src_dir = temp_dir("tally-fleet-state-");
  auto src_journal = adapters::journal_path(src_dir, "jsrc", src_id);
  uint64_t src_events = 0;
  {
    tallyd_process s(with(fleet_args("jsrc", src_dir, src_id, false),
                          {"--redis-urls", redis.url(), "--redis-timeout", "300ms", "--health-check-timeout",
                           "300ms", "--retry-backoff-max", "200ms"}));
    ASSERT_TRUE(s.wait_ready()) << slurp(s.log);
    src_events = send_in_batches(s, 202, 8, 300);
    ASSERT_EQ(src_events, 8u * 300) << slurp(s.log);
    ASSERT_EQ(s.terminate(), 0) << slurp(s.log);
  }
  auto whole = read_journal_copy(src_journal);
  ASSERT_TRUE(whole.errors.empty()) << ::testing::PrintToString(whole.errors);
  ASSERT_FALSE(whole.recovery.tail_truncated);
  ASSERT_EQ(diff_rows(reference(202, src_events), whole.rows), "") << "the source journal holds every event";
  auto layout = record_layout(src_journal);
  ASSERT_EQ(layout.size(), whole.records);
  ASSERT_GE(layout.size(), 5u) << "need records after the damaged one";
  const auto& third = layout[2];

  struct damage_case {
    std::string ns;
    bool adopt;     // a tallyd with another instance id adopts the file
    bool truncate;  // (b) cut mid-record; else (c) flip a byte in a middle record
  };
  redis.start();
  for (const damage_case& c : {damage_case{"jtrunc", true, true}, damage_case{"jflip", false, false}}) {
    SCOPED_TRACE(c.ns);
    auto state_dir = temp_dir("tally-fleet-state-");
    auto journal = adapters::journal_path(state_dir, c.ns, src_id);
    fs::copy_file(src_journal, journal);
    if (c.truncate) {
      fs::resize_file(journal, third.offset + adapters::journal_record_overhead + third.length / 2);
    } else {
      std::fstream f(journal, std::ios::in | std::ios::out | std::ios::binary);
      auto at = static_cast<std::streamoff>(third.offset + adapters::journal_record_overhead + third.length / 2);
      f.seekg(at);
      char byte = 0;
      f.read(&byte, 1);
      byte = static_cast<char>(byte ^ 0x5a);
      f.seekp(at);
      f.write(&byte, 1);
    }
    auto good = read_journal_copy(journal);
    EXPECT_TRUE(good.errors.empty()) << ::testing::PrintToString(good.errors);
    EXPECT_TRUE(good.recovery.tail_truncated);
    ASSERT_EQ(good.records, 2u) << good.recovery.tail_reason;
    EXPECT_NE(diff_rows(whole.rows, good.rows), "") << "the damage cost events";

    auto id = c.adopt ? c.ns + "-new" : src_id;
    tallyd_process d(with(fleet_args(c.ns, state_dir, id),
                          {"--redis-urls", redis.url(), "--redis-timeout", "300ms", "--health-check-timeout",
                           "300ms"}));
    ASSERT_TRUE(d.wait_ready()) << slurp(d.log);
    EXPECT_EQ(wait_postgres_equals(c.ns, good.rows), "") << slurp(d.log);
    auto log = slurp(d.log);
    EXPECT_NE(log.find("spill journal " + journal + ": " + good.recovery.tail_reason), std::string::npos) << log;
    EXPECT_NE(log.find("kept the 2 records before it"), std::string::npos) << log;
    EXPECT_GE(status_value(d.resp_port, "replayed"), 2);  // a cut-short replay starts over
    ASSERT_EQ(d.terminate(), 0) << slurp(d.log);
    EXPECT_EQ(diff_rows(good.rows, read_postgres(*postgres_, c.ns)), "") << "after the stop";
    // An adopted journal is removed once replayed, the own one at a clean stop.
    EXPECT_EQ(file_size(journal), -1);
    fs::remove_all(state_dir);
  }
  fs::remove_all(src_dir);
}

// --- 3. TALLY.DB under load ----------------------------------------------------------------

namespace {

/// A client thread that records events continuously, in pipelines of 100,
/// until stopped.
class producer {
public:
  producer(int port, std::string password, uint64_t seed) : seed_(seed) {
    thread_ = std::thread([this, port, password] {
      try {
        auto client = connect_client(port, password);
        while (!stop_.load()) {
          std::string error;
          uint64_t from = sent_.load();
          uint64_t ok = send_events(client, seed_, from, from + 100, error, 100);
          sent_.store(from + ok);
          if (!error.empty()) {
            error_ = error;
            return;
          }
          // Pacing (a few thousand events a second), not waiting for a
          // condition: every event fans out to many rows, and Postgres must
          // absorb them within the test's budget.
          std::this_thread::sleep_for(20ms);
        }
      } catch (const std::exception& e) {
        error_ = e.what();
      }
    });
  }
  ~producer() { stop(); }
  /// Stops after the pipeline in flight; returns the events answered +OK.
  uint64_t stop() {
    stop_.store(true);
    if (thread_.joinable())
      thread_.join();
    return sent_.load();
  }
  uint64_t sent() const { return sent_.load(); }
  const std::string& error() const { return error_; }  // read after stop()

private:
  uint64_t seed_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> sent_{0};
  std::string error_;
  std::thread thread_;
};

} // namespace

TEST_F(TallydFleet, DbCommandsUnderLoad) {
  const std::string ns = "dbcmd", pw = "fleet-secret";
  const uint64_t seed = 301;
  redis_server a, b, down;
  down.stop();
  const std::string A = a.url(), B = b.url(), C = down.url();
  auto state_dir = temp_dir("tally-fleet-state-");
  tallyd_process d(with(fleet_args(ns, state_dir, "dbcmd-a"),
                        {"--redis-urls", A, "--resp-requirepass", pw, "--auto-fallback-interval", "0s"}));
  ASSERT_TRUE(d.wait_ready()) << slurp(d.log);
  const int port = d.resp_port;
  ASSERT_TRUE(wait_active(port, A, pw)) << describe(db_list(port, pw));

  // Behind AUTH: every form is refused before it, and nothing changes.
  for (auto& args : std::vector<std::vector<std::string>>{{"TALLY.DB", "LIST"},
                                                          {"TALLY.DB", "ADD", B, "5"},
                                                          {"TALLY.DB", "REMOVE", A},
                                                          {"TALLY.DB", "WEIGHT", A, "3"},
                                                          {"TALLY.DB", "PROMOTE", A},
                                                          {"TALLY.DB", "NOPE"}}) {
    auto r = command(port, args);
    EXPECT_EQ(r.type, '-') << ::testing::PrintToString(args);
    EXPECT_EQ(r.value.rfind("NOAUTH", 0), 0u) << ::testing::PrintToString(args) << ": " << r.value;
  }
  EXPECT_EQ(shape(db_list(port, pw)), A + " weight=1 active=1\n");

  // An added database never takes over on its own, not even during the
  // failover actor's startup window (DbAddedDuringStartupWaitsForOperator).
  producer load(port, pw, seed);
  ASSERT_TRUE(wait_for([&] { return load.sent() >= 1000; }, 30s)) << load.sent();
  auto ok = [&](std::vector<std::string> args) { return reply_text(command(port, args, pw)); };

  EXPECT_EQ(ok({"TALLY.DB", "ADD", B, "5"}), "+OK");
  ASSERT_TRUE(wait_state(port, B, "closed", pw)) << describe(db_list(port, pw));
  EXPECT_EQ(shape(db_list(port, pw)), A + " weight=1 active=1\n" + B + " weight=5 active=0\n")
    << "an added database, however heavy, waits for the operator or the fail-back timer";
  uint64_t mark = load.sent();
  ASSERT_TRUE(wait_for([&] { return load.sent() >= mark + 1000; }, 30s));

  EXPECT_EQ(ok({"TALLY.DB", "PROMOTE", B}), "+OK");
  EXPECT_EQ(shape(db_list(port, pw)), A + " weight=1 active=0\n" + B + " weight=5 active=1\n");
  EXPECT_EQ(status_value(port, "redis_switches_operator", pw), 1);
  EXPECT_NE(slurp(d.log).find("active redis database switched from " + A + " to " + B + " (operator: promote " + B
                              + ")"), std::string::npos) << slurp(d.log);
  mark = load.sent();
  ASSERT_TRUE(wait_for([&] { return load.sent() >= mark + 1000; }, 30s));
  EXPECT_TRUE(wait_for([&] { return written_markers(b.port(), ns) > 0; }, 30s)) << "B took batches while active";

  EXPECT_EQ(ok({"TALLY.DB", "WEIGHT", A, "10"}), "+OK");
  EXPECT_EQ(shape(db_list(port, pw)), A + " weight=10 active=1\n" + B + " weight=5 active=0\n");
  EXPECT_EQ(status_value(port, "redis_switches_operator", pw), 2);
  EXPECT_NE(slurp(d.log).find("active redis database switched from " + B + " to " + A + " (operator: weight of "
                              + A + " set to 10)"), std::string::npos) << slurp(d.log);
  mark = load.sent();
  ASSERT_TRUE(wait_for([&] { return load.sent() >= mark + 1000; }, 30s));

  EXPECT_EQ(ok({"TALLY.DB", "REMOVE", B}), "+OK");
  EXPECT_EQ(shape(db_list(port, pw)), A + " weight=10 active=1\n");
  EXPECT_EQ(ok({"TALLY.DB", "REMOVE", A}), "-ERR cannot remove the last redis database");

  // Bad arguments: clear -ERR replies, nothing changes.
  const std::string weight_err = "-ERR weight must be an integer from 1 to 1000000";
  const std::string syntax_err =
    "-ERR syntax: TALLY.DB LIST | ADD url [weight] | REMOVE url | WEIGHT url weight | PROMOTE url";
  EXPECT_EQ(ok({"TALLY.DB", "FROB", A}), syntax_err);
  EXPECT_EQ(ok({"TALLY.DB"}), syntax_err);
  EXPECT_EQ(ok({"TALLY.DB", "ADD"}), syntax_err);
  EXPECT_EQ(ok({"TALLY.DB", "REMOVE"}), syntax_err);
  EXPECT_EQ(ok({"TALLY.DB", "PROMOTE"}), syntax_err);
  EXPECT_EQ(ok({"TALLY.DB", "WEIGHT", A}), syntax_err);
  EXPECT_EQ(ok({"TALLY.DB", "WEIGHT", A, "0"}), weight_err);
  EXPECT_EQ(ok({"TALLY.DB", "WEIGHT", A, "abc"}), weight_err);
  EXPECT_EQ(ok({"TALLY.DB", "WEIGHT", A, "2000000"}), weight_err);
  EXPECT_EQ(ok({"TALLY.DB", "WEIGHT", A, "-3"}), weight_err);
  EXPECT_EQ(ok({"TALLY.DB", "ADD", B, "0"}), weight_err);
  EXPECT_EQ(ok({"TALLY.DB", "ADD", "http://nope:1"}),
            "-ERR bad Redis URL 'http://nope:1': scheme must be redis:// or redis+sentinel://, not 'http://'");
  EXPECT_EQ(ok({"TALLY.DB", "ADD", "redis://127.0.0.1:1?weight=x"}).rfind("-ERR bad Redis URL", 0), 0u);
  EXPECT_EQ(ok({"TALLY.DB", "ADD", A}), "-ERR database already configured: " + A);
  EXPECT_EQ(ok({"TALLY.DB", "ADD", A + "?weight=3"}), "-ERR database already configured: " + A);
  EXPECT_EQ(ok({"TALLY.DB", "REMOVE", B}), "-ERR no such database: " + B);
  EXPECT_EQ(ok({"TALLY.DB", "PROMOTE", B}), "-ERR no such database: " + B);
  EXPECT_EQ(ok({"TALLY.DB", "WEIGHT", B, "2"}), "-ERR no such database: " + B);
  EXPECT_EQ(shape(db_list(port, pw)), A + " weight=10 active=1\n");

  // A database whose Redis is down cannot be promoted.
  EXPECT_EQ(ok({"TALLY.DB", "ADD", C}), "+OK");
  ASSERT_TRUE(wait_state(port, C, "open", pw)) << describe(db_list(port, pw));
  auto refused = ok({"TALLY.DB", "PROMOTE", C});
  EXPECT_EQ(refused.rfind("-ERR cannot promote " + C + ": its circuit is open", 0), 0u) << refused;
  EXPECT_EQ(shape(db_list(port, pw)), A + " weight=10 active=1\n" + C + " weight=1 active=0\n");
  EXPECT_EQ(ok({"TALLY.DB", "REMOVE", C}), "+OK");
  EXPECT_EQ(shape(db_list(port, pw)), A + " weight=10 active=1\n");
  EXPECT_EQ(status_value(port, "redis_switches_operator", pw), 2) << "refused commands switch nothing";

  mark = load.sent();
  ASSERT_TRUE(wait_for([&] { return load.sent() >= mark + 1000; }, 30s));
  uint64_t n = load.stop();
  EXPECT_EQ(load.error(), "");
  EXPECT_EQ(status_value(port, "events_accepted", pw), static_cast<long long>(n));
  // Batches written to B while it was active reach Postgres although B is gone.
  EXPECT_EQ(wait_postgres_equals(ns, reference(seed, n)), "") << slurp(d.log);
  ASSERT_EQ(d.terminate(), 0) << slurp(d.log);
  EXPECT_EQ(diff_rows(reference(seed, n), read_postgres(*postgres_, ns)), "") << "after the stop";
  fs::remove_all(state_dir);
}

// A database added while the first health verdicts still come in (the
// startup window, 15.8 s here) is not a startup choice: like any added
// database it becomes active only by the operator or the fail-back timer
// (design §6), and never without a logged, counted switch.
TEST_F(TallydFleet, DbAddedDuringStartupWaitsForOperator) {
  const std::string ns = "dbearly";
  const uint64_t seed = 302;
  redis_server a, b;
  const std::string A = a.url(), B = b.url();
  auto state_dir = temp_dir("tally-fleet-state-");
  tallyd_process d(with(fleet_args(ns, state_dir, "dbearly-a"),
                        {"--redis-urls", A, "--health-check-timeout", "5s", "--auto-fallback-interval", "0s"}));
  ASSERT_TRUE(d.wait_ready()) << slurp(d.log);
  const int port = d.resp_port;
  ASSERT_TRUE(wait_active(port, A)) << describe(db_list(port));
  send_all(port, seed, 0, 2000);

  EXPECT_EQ(reply_text(command(port, {"TALLY.DB", "ADD", B, "5"})), "+OK");
  ASSERT_TRUE(wait_state(port, B, "closed")) << describe(db_list(port));
  send_all(port, seed, 2000, 4000);
  EXPECT_EQ(shape(db_list(port)), A + " weight=1 active=1\n" + B + " weight=5 active=0\n") << slurp(d.log);
  auto log = slurp(d.log);
  if (log.find("active redis database: " + B) != std::string::npos) {
    EXPECT_NE(log.find("active redis database switched from " + A + " to " + B), std::string::npos)
      << "the active database changed without a switch being logged or counted:\n" << log;
  }

  EXPECT_EQ(wait_postgres_equals(ns, reference(seed, 4000)), "") << slurp(d.log);
  ASSERT_EQ(d.terminate(), 0) << slurp(d.log);
  fs::remove_all(state_dir);
}

// Design §6: the active database is the highest-weight healthy one, "ties:
// the first listed". With equal weights the first listed must win even when
// the other one answers its first health probe earlier: here the first
// listed Redis is paused (SIGSTOP) until tallyd has chosen the second, then
// resumed, so its first PING is answered late but well within the probe
// timeout and the startup window.
TEST_F(TallydFleet, EqualWeightsFirstListedIsActive) {
  const std::string ns = "ties";
  const uint64_t seed = 303;
  redis_server a, b;
  const std::string A = a.url(), B = b.url();
  auto state_dir = temp_dir("tally-fleet-state-");
  ::kill(a.pid(), SIGSTOP);
  struct resume {
    pid_t pid;
    ~resume() { ::kill(pid, SIGCONT); }
  } resume_a{a.pid()};
  tallyd_process d(with(fleet_args(ns, state_dir, "ties-a"),
                        {"--redis-urls", A + "," + B, "--health-check-timeout", "3s", "--auto-fallback-interval",
                         "0s"}));
  ASSERT_TRUE(d.wait_ready()) << slurp(d.log);
  const int port = d.resp_port;
  bool b_first = wait_active(port, B, "", 5s);
  ::kill(a.pid(), SIGCONT);
  ASSERT_TRUE(b_first) << describe(db_list(port)) << slurp(d.log);
  ASSERT_TRUE(wait_state(port, A, "closed")) << describe(db_list(port)) << slurp(d.log);
  EXPECT_TRUE(wait_active(port, A, "", 5s)) << "ties: the first listed\n" << describe(db_list(port)) << slurp(d.log);

  send_all(port, seed, 0, 2000);
  EXPECT_EQ(wait_postgres_equals(ns, reference(seed, 2000)), "") << slurp(d.log);
  ASSERT_EQ(d.terminate(), 0) << slurp(d.log);
  fs::remove_all(state_dir);
}

// --- 4. SIGHUP reloads the database list ----------------------------------------------------

namespace {

std::string redis_tables(const std::vector<std::pair<std::string, int>>& dbs) {
  std::string text = "# tallyd_fleet_test\n";
  for (auto& [url, weight] : dbs)
    text += "\n[[redis]]\nurl = \"" + url + "\"\nweight = " + std::to_string(weight) + "\n";
  return text;
}

} // namespace

TEST_F(TallydFleet, SighupReloadsDatabases) {
  const std::string ns = "sighup";
  const uint64_t seed = 401;
  redis_server a, b;
  const std::string A = a.url(), B = b.url();
  auto state_dir = temp_dir("tally-fleet-state-");
  auto cfg = temp_path("sighup.toml");
  write_file(cfg, redis_tables({{A, 1}}));
  tallyd_process d(with(fleet_args(ns, state_dir, "sighup-a"), {"--config", cfg}));
  ASSERT_TRUE(d.wait_ready()) << slurp(d.log);
  const int port = d.resp_port;
  ASSERT_TRUE(wait_active(port, A)) << describe(db_list(port));
  EXPECT_EQ(shape(db_list(port)), A + " weight=1 active=1\n");
  send_all(port, seed, 0, 2000);

  // A database added and a weight changed.
  write_file(cfg, redis_tables({{A, 3}, {B, 2}}));
  ::kill(d.pid, SIGHUP);
  EXPECT_TRUE(wait_for([&] { return shape(db_list(port)) == A + " weight=3 active=1\n" + B + " weight=2 active=0\n"; },
                       30s)) << describe(db_list(port)) << slurp(d.log);
  EXPECT_TRUE(wait_state(port, B, "closed")) << describe(db_list(port));
  EXPECT_NE(slurp(d.log).find("SIGHUP: option redis_urls = "), std::string::npos) << slurp(d.log);
  send_all(port, seed, 2000, 4000);
  const std::string kept = A + " weight=3 active=1\n" + B + " weight=2 active=0\n";

  // A TOML error keeps the old list; the log says where.
  write_file(cfg, "[[redis]]\nurl = \"" + A + "\nweight = 3\n");
  ::kill(d.pid, SIGHUP);
  EXPECT_TRUE(wait_for([&] { return count_of(slurp(d.log), "SIGHUP: config not reloaded: config " + cfg + ":") == 1; },
                       30s)) << slurp(d.log);
  EXPECT_EQ(shape(db_list(port)), kept);

  // An empty list is refused.
  write_file(cfg, "redis_urls = []\n");
  ::kill(d.pid, SIGHUP);
  EXPECT_TRUE(wait_for([&] { return count_of(slurp(d.log), "SIGHUP: config not reloaded: option redis_urls") == 1; },
                       30s)) << slurp(d.log);
  EXPECT_EQ(shape(db_list(port)), kept);

  send_all(port, seed, 4000, 6000);
  EXPECT_EQ(wait_postgres_equals(ns, reference(seed, 6000)), "") << slurp(d.log);
  ASSERT_EQ(d.terminate(), 0) << slurp(d.log);
  EXPECT_EQ(diff_rows(reference(seed, 6000), read_postgres(*postgres_, ns)), "") << "after the stop";
  fs::remove_all(state_dir);
}

// A reload whose list replaces every current database by one that is down
// is refused as a whole: no database is removed, none added, no switch.
TEST_F(TallydFleet, SighupReplacingEveryDatabaseIsRefusedWhole) {
  const std::string ns = "sighupall";
  const uint64_t seed = 402;
  redis_server a, b, down;
  down.stop();
  const std::string A = a.url(), B = b.url(), C = down.url();
  auto state_dir = temp_dir("tally-fleet-state-");
  auto cfg = temp_path("sighupall.toml");
  write_file(cfg, redis_tables({{A, 3}, {B, 2}}));
  tallyd_process d(with(fleet_args(ns, state_dir, "sighupall-a"), {"--config", cfg, "--auto-fallback-interval", "0s"}));
  ASSERT_TRUE(d.wait_ready()) << slurp(d.log);
  const int port = d.resp_port;
  ASSERT_TRUE(wait_active(port, A)) << describe(db_list(port));
  ASSERT_TRUE(wait_state(port, B, "closed")) << describe(db_list(port));
  const std::string kept = A + " weight=3 active=1\n" + B + " weight=2 active=0\n";
  ASSERT_EQ(shape(db_list(port)), kept);
  send_all(port, seed, 0, 2000);

  write_file(cfg, redis_tables({{C, 1}}));
  ::kill(d.pid, SIGHUP);
  EXPECT_TRUE(wait_for([&] { return count_of(slurp(d.log), "SIGHUP: redis databases not reloaded") == 1; }, 30s))
    << slurp(d.log);
  EXPECT_EQ(shape(db_list(port)), kept) << slurp(d.log);
  EXPECT_EQ(status_value(port, "redis_switches_operator"), 0) << slurp(d.log);

  send_all(port, seed, 2000, 4000);
  EXPECT_EQ(wait_postgres_equals(ns, reference(seed, 4000)), "") << slurp(d.log);
  ASSERT_EQ(d.terminate(), 0) << slurp(d.log);
  fs::remove_all(state_dir);
}

// --- 5. the option forms of the database list ------------------------------------------------

TEST_F(TallydFleet, RedisOptionForms) {
  // [[redis]] tables with errors: exit 2, one line naming the option and the line.
  struct bad_file {
    std::string text;
    std::vector<std::string> expect;
  };
  const std::string head = "ns = \"forms\"\n\n";  // the [[redis]] table starts at line 3
  std::vector<bad_file> cases = {
    {head + "[[redis]]\nurl = \"redis://127.0.0.1:6379\"\nhost = \"x\"\n",
     {"option redis:", "unknown key 'host'", "line 3"}},
    {head + "[[redis]]\nweight = 2\n", {"option redis:", "needs url", "line 3"}},
    {head + "[[redis]]\nurl = \"redis://127.0.0.1:6379\"\nweight = 0\n",
     {"option redis:", "weight", "line 3", "from 1 to 1000000"}},
    {head + "[[redis]]\nurl = \"redis://127.0.0.1:6379\"\nweight = \"2\"\n",
     {"option redis:", "weight", "line 3", "from 1 to 1000000"}},
    {head + "[[redis]]\nurl = \"redis://127.0.0.1:6379?weight=2\"\nweight = 2\n",
     {"option redis:", "weight twice", "line 3"}},
    {head + "redis_urls = [\"redis://127.0.0.1:6380\"]\n\n[[redis]]\nurl = \"redis://127.0.0.1:6379\"\n",
     {"redis_urls", "[[redis]]", ":5:"}},
  };
  for (auto& c : cases) {
    auto cfg = temp_path("forms.toml");
    write_file(cfg, c.text);
    auto [code, out] = run(tallyd_argv({}, {"--config", cfg, "--resp-port", "0", "--http-port", "0"}));
    EXPECT_EQ(code, 2) << c.text << out;
    for (auto& e : c.expect)
      EXPECT_NE(out.find(e), std::string::npos) << "expected '" << e << "' in: " << out << "for:\n" << c.text;
    EXPECT_NE(out.find(cfg), std::string::npos) << "names the file: " << out;
    EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << "one line on stderr, got: " << out;
  }

  // A bad weight parameter in redis_urls, as a flag and in the environment.
  for (auto& [env, args] : std::vector<std::pair<std::vector<std::string>, std::vector<std::string>>>{
         {{}, {"--redis-urls", "redis://127.0.0.1:6379?weight=abc"}},
         {{"TALLY_REDIS_URLS=redis://127.0.0.1:6379?weight=0,redis://127.0.0.1:6380"}, {}},
         {{"TALLY_REDIS_URLS=redis://127.0.0.1:6379?weight=1000001"}, {}}}) {
    auto [code, out] = run(tallyd_argv(env, args));
    EXPECT_EQ(code, 2) << out;
    EXPECT_NE(out.find("option redis_urls"), std::string::npos) << out;
    EXPECT_NE(out.find("weight must be a whole number from 1 to 1000000"), std::string::npos) << out;
  }

  // TALLY_REDIS_URLS with weights: the heavier, first one is active.
  const std::string ns = "forms";
  const uint64_t seed = 501;
  redis_server p1, p2;
  auto state_dir = temp_dir("tally-fleet-state-");
  tallyd_process d(fleet_args(ns, state_dir, "forms-a"),
                   {"TALLY_REDIS_URLS=" + p1.url() + "?weight=2," + p2.url()});
  ASSERT_TRUE(d.wait_ready()) << slurp(d.log);
  ASSERT_TRUE(wait_active(d.resp_port, p1.url())) << describe(db_list(d.resp_port));
  ASSERT_TRUE(wait_state(d.resp_port, p2.url(), "closed")) << describe(db_list(d.resp_port));
  EXPECT_EQ(shape(db_list(d.resp_port)), p1.url() + " weight=2 active=1\n" + p2.url() + " weight=1 active=0\n");
  send_all(d.resp_port, seed, 0, 3000);
  EXPECT_EQ(wait_postgres_equals(ns, reference(seed, 3000)), "") << slurp(d.log);
  EXPECT_GT(written_markers(p1.port(), ns), 0u) << "the active database took the batches";
  EXPECT_EQ(written_markers(p2.port(), ns), 0u) << "the lighter one took none";
  EXPECT_EQ(status_value(d.resp_port, "redis_switches_operator"), 0);
  ASSERT_EQ(d.terminate(), 0) << slurp(d.log);
  EXPECT_EQ(diff_rows(reference(seed, 3000), read_postgres(*postgres_, ns)), "") << "after the stop";
  fs::remove_all(state_dir);
}

// --- 6. /metrics after a switch ---------------------------------------------------------------

TEST_F(TallydFleet, Metrics) {
  const std::string ns = "fleetmetrics";
  const uint64_t seed = 601;
  redis_server a, b;
  const std::string A = a.url(), B = b.url();
  auto state_dir = temp_dir("tally-fleet-state-");
  // A heavier: it is active whichever database answers its first probe
  // first (EqualWeightsFirstListedIsActive is about ties).
  tallyd_process d(with(fleet_args(ns, state_dir, "fleetmetrics-a"),
                        {"--redis-urls", A + "?weight=2," + B, "--auto-fallback-interval", "0s"}));
  ASSERT_TRUE(d.wait_ready()) << slurp(d.log);
  ASSERT_TRUE(wait_active(d.resp_port, A)) << describe(db_list(d.resp_port));
  ASSERT_TRUE(wait_state(d.resp_port, B, "closed")) << describe(db_list(d.resp_port));
  auto active = [](const std::string& url) { return "tally_redis_active{db=\"" + url + "\"}"; };
  auto up = [](const std::string& url) { return "tally_redis_up{db=\"" + url + "\"}"; };
  const std::string operator_switches = "tally_redis_switches_total{reason=\"operator\"}";

  auto text = http_get(d.http_port, "/metrics").body;
  EXPECT_EQ(metric(text, active(A)), 1) << text;
  EXPECT_EQ(metric(text, active(B)), 0) << text;
  EXPECT_EQ(metric(text, up(A)), 1);
  EXPECT_EQ(metric(text, up(B)), 1);
  EXPECT_EQ(metric(text, operator_switches), 0);
  send_all(d.resp_port, seed, 0, 3000);

  EXPECT_EQ(reply_text(command(d.resp_port, {"TALLY.DB", "PROMOTE", B})), "+OK");
  ASSERT_TRUE(wait_for([&] {
    text = http_get(d.http_port, "/metrics").body;
    return metric(text, active(B)) == 1;
  }, 30s)) << text;
  EXPECT_EQ(metric(text, active(A)), 0) << text;
  EXPECT_GE(metric(text, operator_switches), 1) << text;
  EXPECT_EQ(metric(text, "tally_redis_circuit{db=\"" + B + "\",state=\"closed\"}"), 1) << text;
  auto file = temp_path("fleet-metrics.txt");
  write_file(file, text);
  auto [pcode, pout] = run({"sh", "-c", "promtool check metrics < " + file});
  EXPECT_EQ(pcode, 0) << pout << "\n" << text;

  send_all(d.resp_port, seed, 3000, 6000);
  EXPECT_EQ(wait_postgres_equals(ns, reference(seed, 6000)), "") << slurp(d.log);
  ASSERT_EQ(d.terminate(), 0) << slurp(d.log);
  EXPECT_EQ(diff_rows(reference(seed, 6000), read_postgres(*postgres_, ns)), "") << "after the stop";
  fs::remove_all(state_dir);
}
