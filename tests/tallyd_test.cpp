// tests/tallyd_test.cpp — the tallyd daemon as an operator meets it.
//
// Real tallyd processes against real redis-server and postgres (tests/harness),
// driven by real clients: redis-cli for events, httplib::Client for
// /metrics /healthz /readyz /v1/instances, promtool for the exposition
// format, Python's json module for the cluster view. Options are
// checked by behaviour (which port it listens on), not by reading structs;
// shutdown is checked by what reached Redis and Postgres.
#include "runtime/options.hpp"
#include "tests/harness/servers.hpp"
#include "tests/support/shared_servers.hpp"
#include "adapters/redis_client.hpp"
#include "tests/support/batches.hpp"
#include "tests/support/postgres_rows.hpp"
#include "tests/support/tallyd_process.hpp"
#include "tests/support/workload.hpp"

#include <httplib.h>

#include <gtest/gtest.h>

#include <csignal>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

using namespace tally;
using namespace tally::testing;
using namespace std::chrono_literals;

namespace {

/// RESP-encodes commands, for `redis-cli --pipe`.
std::string resp_encode(const std::vector<std::vector<std::string>>& commands) {
  std::string out;
  for (auto& args : commands) {
    out += "*" + std::to_string(args.size()) + "\r\n";
    for (auto& a : args)
      out += "$" + std::to_string(a.size()) + "\r\n" + a + "\r\n";
  }
  return out;
}

/// Sends commands through `redis-cli --pipe` (one connection, pipelined);
/// returns redis-cli's summary ("errors: 0, replies: N").
std::string redis_cli_pipe(int port, const std::vector<std::vector<std::string>>& commands) {
  auto file = temp_path("pipe.resp");
  write_file(file, resp_encode(commands));
  auto [code, out] = run({"sh", "-c", "redis-cli -h 127.0.0.1 -p " + std::to_string(port) + " --pipe < " + file}, 120s);
  EXPECT_EQ(code, 0) << out;
  return out;
}

/// Servers shared by the suite (an initdb per test would dominate the run).
class Tallyd : public shared_servers {
protected:
  /// Flags that every test needs: free ports, the suite's servers, fast intervals.
  static std::vector<std::string> base_args(const std::string& ns, bool stage2) {
    return {"--ns", ns, "--redis-urls", redis_->url(), "--postgres-url", stage2 ? postgres_->url() : "",
            "--resp-port", "0", "--http-port", "0", "--buffer-interval", "100ms", "--flush-interval", "100ms",
            "--worker-threads", "2", "--state-dir", temp_dir("tally-state-")};
  }
};

} // namespace

// --- options -------------------------------------------------------------------

TEST(TallydOptions, HelpListsEveryOption) {
  auto [code, out] = run({TALLYD_PATH, "--help"});
  ASSERT_EQ(code, 0) << out;
  for (auto& spec : option_table()) {
    EXPECT_NE(out.find(spec.flag() + " "), std::string::npos) << spec.flag() << " missing from --help";
    EXPECT_NE(out.find(spec.env()), std::string::npos) << spec.env() << " missing from --help";
  }
  EXPECT_NE(out.find("--print-sample-config"), std::string::npos);
}

TEST(TallydOptions, SampleConfigEqualsCommittedFile) {
  auto [code, out] = run({TALLYD_PATH, "--print-sample-config"});
  ASSERT_EQ(code, 0) << out;
  auto committed = slurp(std::string(TALLY_SOURCE_DIR) + "/scripts/tallyd.sample.toml");
  EXPECT_EQ(out, committed) << "regenerate it: tallyd --print-sample-config > scripts/tallyd.sample.toml";
}

// Every key of the sample, uncommented, is accepted and gives the defaults:
// the sample cannot show a value or a spelling tallyd refuses.
TEST(TallydOptions, UncommentedSampleIsTheDefaults) {
  std::istringstream in(sample_config());
  std::string line, uncommented;
  int keys = 0;
  static const std::regex key_line(R"(^# ([a-z_]+ = .*)$)");
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_match(line, m, key_line)) {
      uncommented += m[1].str() + "\n";
      ++keys;
    }
  }
  int file_keys = 0;
  for (auto& spec : option_table())
    file_keys += spec.file_allowed ? 1 : 0;
  EXPECT_EQ(keys, file_keys);
  auto path = temp_path("uncommented.toml");
  write_file(path, uncommented);
  auto opts = default_options();
  ASSERT_EQ(apply_config_file(opts, path), "");
  EXPECT_EQ(effective_config(opts), effective_config(default_options()));
  EXPECT_EQ(validate(opts), "");
}

// The table's defaults are the embedding API's defaults, except where tallyd
// documents its own (postgres_url: the daemon flushes to a local Postgres by
// default, an embedding program opts in).
TEST(TallydOptions, TableDefaultsMatchConfigStruct) {
  auto d = default_options();
  config c;
  d.runtime.postgres_url = c.postgres_url;
  daemon_options from_struct = d;
  from_struct.runtime = c;
  from_struct.resp = resp_options{};
  EXPECT_EQ(effective_config(d), effective_config(from_struct));
  EXPECT_EQ(default_options().runtime.postgres_url, "postgresql://127.0.0.1:5432/tally");
  EXPECT_EQ(default_options().http_port, 9108);
}

TEST(TallydOptions, BadOptionExitsTwoNamingIt) {
  auto cfg = temp_path("bad.toml");
  write_file(cfg, "buffer_interval = \"5ms\"\n");
  struct bad_case {
    std::vector<std::string> env, args;
    std::string expect;
  };
  std::vector<bad_case> cases = {
    {{}, {"--resp-port", "70000"}, "option resp_port"},
    {{"TALLY_QUEUE_CAPACITY=12"}, {}, "option queue_capacity"},
    {{}, {"--buffer-interval", "1000"}, "option buffer_interval"},
    {{}, {"--config", cfg}, "option buffer_interval"},
    {{}, {"--redis-urls", "http://nope"}, "option redis_urls"},
    {{}, {"--resp-bind", "not-an-ip"}, "option resp_bind"},
    {{}, {"--log-level", "loud"}, "option log_level"},
    {{}, {"--ns", "a:b"}, "option ns"},
    {{}, {"--no-such-flag", "1"}, "--no-such-flag"},
    {{}, {"--resp-port", "7000", "--http-port", "7000"}, "option http_port"},
  };
  for (auto& c : cases) {
    auto [code, out] = run(tallyd_argv(c.env, c.args));
    EXPECT_EQ(code, 2) << out;
    EXPECT_NE(out.find(c.expect), std::string::npos) << "expected '" << c.expect << "' in: " << out;
    EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << "one line on stderr, got: " << out;
  }
}

TEST(TallydOptions, UnknownTomlKeyRefused) {
  auto cfg = temp_path("unknown.toml");
  write_file(cfg, "resp_port = 7001\nno_such_option = 1\n");
  auto [code, out] = run({TALLYD_PATH, "--config", cfg});
  EXPECT_EQ(code, 2) << out;
  EXPECT_NE(out.find("unknown option 'no_such_option'"), std::string::npos) << out;
  EXPECT_NE(out.find(":2"), std::string::npos) << "names the line: " << out;

  write_file(cfg, "[resp]\nport = 7001\n");  // tables are not options either
  std::tie(code, out) = run({TALLYD_PATH, "--config", cfg});
  EXPECT_EQ(code, 2) << out;
  EXPECT_NE(out.find("unknown option 'resp'"), std::string::npos) << out;
}

// Non-ASCII text is refused before toml++ reads it (toml++ 3.3 has
// undefined behaviour on some of it), except on comment lines, where the
// packaged config's help text has it.
TEST(TallydOptions, NonAsciiOnlyOnCommentLines) {
  auto cfg = temp_path("non-ascii.toml");
  write_file(cfg, "# caf\xc3\xa9 \xe2\x80\x94 comments may say anything\n  # indented too \xc3\xa9\n"
                  "resp_port = 7001\nr\xc3\xa9sp_max_args = 1\n");
  auto [code, out] = run({TALLYD_PATH, "--config", cfg, "--print-config"});
  EXPECT_EQ(code, 2) << out;
  EXPECT_NE(out.find(":4: non-ASCII text outside a comment line"), std::string::npos) << out;
  write_file(cfg, "resp_port = 7001\ninstance_id = \"gw-\xc3\xa9\"\n");
  std::tie(code, out) = run({TALLYD_PATH, "--config", cfg, "--print-config"});
  EXPECT_EQ(code, 2) << out;
  EXPECT_NE(out.find(":2: non-ASCII"), std::string::npos) << out;
  write_file(cfg, "# caf\xc3\xa9 \xe2\x80\x94 comments may say anything\nresp_port = 7001\n");
  std::tie(code, out) = run({TALLYD_PATH, "--config", cfg, "--print-config"});
  EXPECT_EQ(out.find("non-ASCII"), std::string::npos) << out;
}

// defaults < file < environment < flags, seen in the ports tallyd listens on.
TEST_F(Tallyd, PrecedenceFileEnvFlag) {
  int file_port = free_port(), env_port = free_port(), flag_port = free_port(), http_file = free_port();
  auto cfg = temp_path("precedence.toml");
  write_file(cfg, "resp_port = " + std::to_string(file_port) + "\nhttp_port = " + std::to_string(http_file)
                    + "\nns = \"prec\"\nredis_urls = [\"" + redis_->url() + "\"]\npostgres_url = \"\"\n");
  auto check = [&](std::vector<std::string> env, std::vector<std::string> args, int want_resp) {
    args.insert(args.begin(), {"--config", cfg});
    tallyd_process d(args, env);
    ASSERT_TRUE(d.wait_ready()) << slurp(d.log);
    EXPECT_EQ(d.resp_port, want_resp) << slurp(d.log);
    EXPECT_EQ(d.http_port, http_file) << "the file's http_port, not overridden";
    EXPECT_TRUE(port_open(want_resp));
    EXPECT_EQ(redis_command(want_resp, {"PING"}).value, "PONG");
    EXPECT_EQ(http_get(http_file, "/healthz").status, 200);
    EXPECT_EQ(d.terminate(), 0) << slurp(d.log);
  };
  check({}, {}, file_port);
  check({"TALLY_RESP_PORT=" + std::to_string(env_port)}, {}, env_port);
  check({"TALLY_RESP_PORT=" + std::to_string(env_port)}, {"--resp-port", std::to_string(flag_port)}, flag_port);
  // TALLY_CONFIG names the file when no --config is given.
  {
    tallyd_process d({}, {"TALLY_CONFIG=" + cfg});
    ASSERT_TRUE(d.wait_ready()) << slurp(d.log);
    EXPECT_EQ(d.resp_port, file_port);
    EXPECT_EQ(d.terminate(), 0) << slurp(d.log);
  }
}

// --- HTTP ----------------------------------------------------------------------

TEST_F(Tallyd, MetricsPassPromtoolAndCount) {
  auto args = base_args("metrics", true);
  args.insert(args.end(), {"--instance-id", "metrics-a"});
  tallyd_process d(args);
  ASSERT_TRUE(d.wait_ready()) << slurp(d.log);

  auto healthz = http_get(d.http_port, "/healthz");
  EXPECT_EQ(healthz.status, 200);
  EXPECT_EQ(healthz.body, "ok\n");

  // Five good events from five redis-cli processes, two bad ones.
  const int good = 5;
  for (int i = 0; i < good; ++i) {
    auto [code, out] = run({"redis-cli", "-h", "127.0.0.1", "-p", std::to_string(d.resp_port), "TALLY.RECORD",
                            "key", "mk", "user", "u" + std::to_string(i), "spend", "0.5", "prompt_tokens", "10"});
    EXPECT_EQ(code, 0);
    EXPECT_EQ(out, "OK\n");
  }
  auto [c1, bad1] = run({"redis-cli", "-h", "127.0.0.1", "-p", std::to_string(d.resp_port), "TALLY.RECORD", "key",
                         "mk", "colour", "red"});
  EXPECT_NE(bad1.find("unknown_field"), std::string::npos) << bad1;
  auto [c2, bad2] = run({"redis-cli", "-h", "127.0.0.1", "-p", std::to_string(d.resp_port), "TALLY.RECORD", "key",
                         "mk", "spend", "-2"});
  EXPECT_NE(bad2.find("negative_value"), std::string::npos) << bad2;

  // Wait for the flush so the stage-2 families have values too.
  std::string text;
  ASSERT_TRUE(wait_for([&] {
    text = http_get(d.http_port, "/metrics").body;
    // pending_batches is 1 for the moment between forming a batch and
    // writing it: the snapshot to check is one taken between cycles.
    return metric(text, "tally_flushes_total") >= 1 && metric(text, "tally_lease_held") == 1
           && metric(text, "tally_pending_batches") == 0;
  }, 30s)) << text << slurp(d.log);

  auto file = temp_path("metrics.txt");
  write_file(file, text);
  auto [pcode, pout] = run({"sh", "-c", "promtool check metrics < " + file});
  EXPECT_EQ(pcode, 0) << pout << "\n" << text;

  EXPECT_EQ(metric(text, "tally_events_accepted_total"), good);
  EXPECT_EQ(metric(text, "tally_resp_events_accepted_total"), good);
  EXPECT_EQ(metric(text, "tally_events_rejected_total{reason=\"unknown_field\"}"), 1);
  EXPECT_EQ(metric(text, "tally_events_rejected_total{reason=\"negative_value\"}"), 1);
  EXPECT_EQ(metric(text, "tally_events_rejected_total{reason=\"bad_number\"}"), 0);
  // TALLY.STATUS counts refusals as the metric does (both were refused
  // while the command was read, before the runtime saw an event).
  auto [scode, status] = run({"redis-cli", "-h", "127.0.0.1", "-p", std::to_string(d.resp_port), "TALLY.STATUS"});
  EXPECT_NE(status.find("events_rejected:2\r"), std::string::npos) << status;
  EXPECT_NE(status.find("validation_failures:0\r"), std::string::npos) << status;
  EXPECT_GE(metric(text, "tally_connections_accepted_total"), good + 2);
  EXPECT_GE(metric(text, "tally_batches_written_total"), 1);
  EXPECT_GE(metric(text, "tally_batch_bytes_written_total"), 1);
  EXPECT_EQ(metric(text, "tally_stage1_failures_total"), 0);
  EXPECT_EQ(metric(text, "tally_pending_batches"), 0);
  EXPECT_GE(metric(text, "tally_rows_upserted_total"), 1);
  EXPECT_EQ(metric(text, "tally_dead_lettered_total"), 0);
  // Every committed flush lands in the duration histogram.
  EXPECT_EQ(metric(text, "tally_flush_duration_seconds_count"), metric(text, "tally_flushes_total"));
  EXPECT_EQ(metric(text, "tally_flush_duration_seconds_bucket{le=\"+Inf\"}"),
            metric(text, "tally_flushes_total"));
  EXPECT_GE(metric(text, "tally_epoch"), 1);
  EXPECT_EQ(metric(text, "tally_ready"), 1);
  const std::string db = "{db=\"" + redis_->url() + "\"}";
  EXPECT_EQ(metric(text, "tally_redis_up" + db), 1);
  EXPECT_EQ(metric(text, "tally_redis_active" + db), 1);
  EXPECT_EQ(metric(text, "tally_redis_circuit{db=\"" + redis_->url() + "\",state=\"closed\"}"), 1);
  EXPECT_EQ(metric(text, "tally_redis_switches_total{reason=\"health_check\"}"), 0);
  EXPECT_EQ(metric(text, "tally_journal_batches"), 0);
  EXPECT_TRUE(wait_for([&] { return metric(http_get(d.http_port, "/metrics").body, "tally_redis_backlog_batches") >= 0; },
                       30s));
  for (auto* family : {"tally_connections", "tally_queue_depth", "tally_duplicate_batches_total",
                       "tally_backpressure_total", "tally_protocol_errors_total"})
    EXPECT_GE(metric(text, family), 0) << family << " missing";

  // The totals behind those counters reached Postgres exactly.
  EXPECT_TRUE(wait_for([&] {
    return postgres_->psql("SELECT spend, prompt_tokens, requests FROM tally_spend WHERE entity_type = 'key' "
                           "AND entity_id = 'mk'") == "2.500000000|50|5\n";
  }, 30s)) << postgres_->psql("SELECT * FROM tally_spend WHERE entity_id = 'mk'");
  EXPECT_EQ(d.terminate(), 0) << slurp(d.log);
}

// Readiness is "can persist" (design §7): with its only Redis down tallyd
// stays ready, says the spill journal takes the batches, and the metrics
// show the database down; once Redis is back (after its grace period) it is
// active again.
TEST_F(Tallyd, ReadyzFollowsRedis) {
  redis_server own;
  auto args = base_args("readyz", false);
  args.insert(args.end(), {"--redis-urls", own.url(), "--redis-timeout", "200ms", "--health-check-interval",
                           "100ms", "--grace-period", "500ms"});
  tallyd_process d(args);
  ASSERT_TRUE(d.wait_ready()) << slurp(d.log);
  EXPECT_TRUE(wait_for([&] { return http_get(d.http_port, "/readyz").body == "ready\n"; }, 10s));
  const std::string active = "tally_redis_active{db=\"" + own.url() + "\"}";

  own.stop();
  http_reply r;
  EXPECT_TRUE(wait_for([&] { return (r = http_get(d.http_port, "/readyz")).body.find("spill journal") != std::string::npos; },
                       10s)) << r.body;
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(http_get(d.http_port, "/healthz").status, 200);
  auto text = http_get(d.http_port, "/metrics").body;
  EXPECT_EQ(metric(text, "tally_ready"), 1);
  EXPECT_EQ(metric(text, active), 0);
  EXPECT_EQ(metric(text, "tally_redis_up{db=\"" + own.url() + "\"}"), 0);

  own.start();
  EXPECT_TRUE(wait_for([&] { return (r = http_get(d.http_port, "/readyz")).body == "ready\n"; }, 10s)) << r.body;
  EXPECT_EQ(metric(http_get(d.http_port, "/metrics").body, active), 1);
  EXPECT_EQ(d.terminate(), 0) << slurp(d.log);
}

// --- shutdown ------------------------------------------------------------------

// Events still in memory at SIGTERM (buffer_interval far away) are all in
// Redis once tallyd exits 0: the drain and the final batch.
TEST_F(Tallyd, SigtermDrainsEveryEventToRedis) {
  const uint64_t seed = 41, n = 3000;
  auto args = base_args("sigterm", false);
  args.insert(args.end(), {"--buffer-interval", "60s", "--instance-id", "sigterm-a"});
  tallyd_process d(args);
  ASSERT_TRUE(d.wait_ready()) << slurp(d.log);
  std::vector<std::vector<std::string>> cmds;
  for (uint64_t i = 0; i < n; ++i)
    cmds.push_back(generate(seed, i).resp_args());
  auto summary = redis_cli_pipe(d.resp_port, cmds);
  EXPECT_NE(summary.find("errors: 0, replies: " + std::to_string(n)), std::string::npos) << summary;
  EXPECT_EQ(read_stage1(redis_->url(), "sigterm").batches, 0u) << "nothing written before the signal";

  EXPECT_EQ(d.terminate(), 0) << slurp(d.log);
  auto got = read_stage1(redis_->url(), "sigterm");
  EXPECT_GE(got.batches, 1u);
  EXPECT_TRUE(got.errors.empty());
  EXPECT_TRUE(got.duplicate_ids.empty());
  EXPECT_EQ(diff_rows(reference(seed, n), got.rows), "");
}

// With stage 2 on: SIGTERM releases the lease (a successor takes it at once,
// not after lease_ttl), and the events of both lives are in Postgres once.
TEST_F(Tallyd, SigtermReleasesLeaseAndTotalsAreExact) {
  const uint64_t seed = 43, n = 2000;
  const std::string lease_key = "{tally:lease2}:lease";
  auto args = base_args("lease2", true);
  args.insert(args.end(), {"--lease-ttl", "60s", "--pg-schema", "lease2"});
  postgres_->psql("CREATE SCHEMA IF NOT EXISTS lease2");
  std::vector<std::vector<std::string>> first, second;
  for (uint64_t i = 0; i < n; ++i)
    (i < n / 2 ? first : second).push_back(generate(seed, i).resp_args());

  auto a_args = args;
  a_args.insert(a_args.end(), {"--instance-id", "lease-a"});
  tallyd_process a(a_args);
  ASSERT_TRUE(a.wait_ready()) << slurp(a.log);
  ASSERT_TRUE(wait_for([&] { return !redis_command(redis_->port(), {"GET", lease_key}).nil; }, 30s))
    << slurp(a.log);
  redis_cli_pipe(a.resp_port, first);
  EXPECT_EQ(a.terminate(), 0) << slurp(a.log);
  EXPECT_TRUE(redis_command(redis_->port(), {"GET", lease_key}).nil) << "lease not released:\n" << slurp(a.log);

  // A successor with a 60 s lease_ttl leads at once only because the lease was released.
  auto b_args = args;
  b_args.insert(b_args.end(), {"--instance-id", "lease-b"});
  tallyd_process b(b_args);
  ASSERT_TRUE(b.wait_ready()) << slurp(b.log);
  redis_cli_pipe(b.resp_port, second);
  std::string sum_sql = "SELECT coalesce(sum(requests), 0) FROM lease2.tally_minute";
  EXPECT_TRUE(wait_for([&] { return postgres_->psql_or_empty(sum_sql) == std::to_string(n) + "\n"; }, 30s))
    << postgres_->psql(sum_sql) << slurp(b.log);
  // Every running total, to the nano-unit, against the independent reference.
  rollup_rows expected, actual;
  expected["tally_spend"] = reference(seed, n)["tally_spend"];
  std::istringstream rows(postgres_->psql(
    "SELECT entity_type, scope, entity_id, (spend * 1000000000)::numeric(38,0), prompt_tokens, "
    "completion_tokens, cache_read_tokens, cache_creation_tokens, requests, successful_requests, "
    "failed_requests FROM lease2.tally_spend"));
  std::string line;
  while (std::getline(rows, line)) {
    std::vector<std::string> cols;
    std::stringstream ls(line);
    std::string col;
    while (std::getline(ls, col, '|'))
      cols.push_back(col);
    ASSERT_EQ(cols.size(), 11u) << line;
    auto& row = actual["tally_spend"][{cols[0], cols[1], cols[2]}];
    for (size_t i = 3; i < cols.size(); ++i)
      row.push_back(static_cast<__int128>(std::stoll(cols[i])));
  }
  EXPECT_EQ(diff_rows(expected, actual), "");
  EXPECT_EQ(b.terminate(), 0) << slurp(b.log);
  EXPECT_TRUE(redis_command(redis_->port(), {"GET", lease_key}).nil);
}

namespace {

/// One instance of a TALLY.INSTANCES reply: field -> value.
using instance_fields = std::map<std::string, std::string>;

std::map<std::string, instance_fields> instances_of(int resp_port) {
  std::map<std::string, instance_fields> out;
  auto r = redis_command(resp_port, {"TALLY.INSTANCES"});
  if (r.type != '*')
    return out;
  for (const auto& inst : r.elements) {
    instance_fields f;
    for (size_t i = 0; i + 1 < inst.elements.size(); i += 2)
      f[inst.elements[i].value] = inst.elements[i + 1].value;
    out[f["id"]] = f;
  }
  return out;
}

} // namespace

// The cluster view: every instance (two with stage 2, one producer-only)
// sees all three in TALLY.INSTANCES, one of them the leader that
// TALLY.LEADER names with the epoch it reports in /metrics; GET
// /v1/instances says the same as JSON (checked with Python's parser). A
// leader stopped with SIGTERM leaves the view and the other flusher takes
// over.
TEST_F(Tallyd, ClusterViewNamesEveryInstanceAndTheLeader) {
  auto with = [&](bool stage2, const std::string& id) {
    auto args = base_args("cluster", stage2);
    args.insert(args.end(), {"--instance-id", id, "--lease-ttl", "1500ms", "--pg-schema", "cluster"});
    return args;
  };
  postgres_->psql("CREATE SCHEMA IF NOT EXISTS cluster");
  tallyd_process a(with(true, "cl-a")), b(with(true, "cl-b")), c(with(false, "cl-c"));
  for (auto* d : {&a, &b, &c})
    ASSERT_TRUE(d->wait_ready()) << slurp(d->log);
  for (int i = 0; i < 5; ++i)
    ASSERT_EQ(redis_command(c.resp_port, {"TALLY.RECORD", "key", "cl", "spend", "1"}).value, "OK");

  // Heartbeats come every lease_ttl / 3; the producer's count shows up in
  // the one after its events.
  std::map<std::string, instance_fields> view;
  ASSERT_TRUE(wait_for([&] {
    view = instances_of(c.resp_port);
    // The lease holder is known from the lease at once; its own record says
    // "leader" and the epoch from its next heartbeat on.
    auto leads = [&](const std::string& id) {
      return view[id]["leader"] == "1" && view[id]["role"] == "leader" && view[id]["epoch"] != "0";
    };
    return view.size() == 3 && view["cl-c"]["events_accepted"] == "5" && leads("cl-a") != leads("cl-b");
  }, 30s)) << "TALLY.INSTANCES: " << view.size() << " instances\n" << slurp(c.log);
  std::string leader = view["cl-a"]["leader"] == "1" ? "cl-a" : "cl-b";
  std::string follower = leader == "cl-a" ? "cl-b" : "cl-a";
  auto& lead = leader == "cl-a" ? a : b;
  EXPECT_EQ(view["cl-c"]["role"], "producer");
  EXPECT_EQ(view["cl-c"]["leader"], "0");
  EXPECT_EQ(view[follower]["role"], "flusher");
  EXPECT_EQ(view[follower]["epoch"], "0");
  for (auto& [id, f] : view) {
    EXPECT_EQ(f["version"], "0.1.0") << id;
    EXPECT_EQ(f["active_db"], redis_->url()) << id;
    EXPECT_LT(std::stoll(f["heartbeat_age_ms"]), 3 * 1500) << id;
    EXPECT_GT(std::stoll(f["pid"]), 0) << id;
  }
  // TALLY.LEADER, from another instance, and the leader's own metric.
  ASSERT_TRUE(wait_for([&] {
    auto r = redis_command(a.resp_port, {"TALLY.LEADER"});
    return r.elements.size() == 4 && r.elements[1].value == leader && r.elements[3].value != "0";
  }, 10s));
  auto lr = redis_command(a.resp_port, {"TALLY.LEADER"});
  long long epoch = std::stoll(lr.elements[3].value);
  EXPECT_EQ(metric(http_get(lead.http_port, "/metrics").body, "tally_epoch"), epoch);
  EXPECT_EQ(std::stoll(view[leader]["epoch"]), epoch);
  EXPECT_EQ(redis_command(a.resp_port, {"TALLY.LEADER", "now"}).type, '-');
  EXPECT_EQ(redis_command(a.resp_port, {"TALLY.INSTANCES", "x"}).type, '-');

  // The same as JSON.
  auto http = http_get(b.http_port, "/v1/instances");
  ASSERT_EQ(http.status, 200) << http.body;
  auto file = temp_path("instances.json");
  write_file(file, http.body);
  auto [pycode, pyout] = run({"python3", "-c",
                              "import json,sys; v = json.load(open(sys.argv[1])); "
                              "print(v['leader']['instance'], v['leader']['epoch'], "
                              "' '.join(sorted(i['id'] + ('*' if i['leader'] else '') for i in v['instances'])))",
                              file});
  ASSERT_EQ(pycode, 0) << pyout << http.body;
  std::string ids = leader == "cl-a" ? "cl-a* cl-b cl-c" : "cl-a cl-b* cl-c";
  EXPECT_EQ(pyout, leader + " " + std::to_string(epoch) + " " + ids + "\n") << http.body;

  // The leader stops: it leaves the registry, and the other flusher leads.
  EXPECT_EQ(lead.terminate(), 0) << slurp(lead.log);
  ASSERT_TRUE(wait_for([&] {
    view = instances_of(c.resp_port);
    return view.size() == 2 && view.count(leader) == 0 && view[follower]["leader"] == "1";
  }, 30s)) << view.size() << " instances";
  auto after = redis_command(c.resp_port, {"TALLY.LEADER"});
  ASSERT_EQ(after.elements.size(), 4u);
  EXPECT_EQ(after.elements[1].value, follower);
  for (auto* d : {&a, &b, &c}) {
    if (d != &lead) {
      EXPECT_EQ(d->terminate(), 0) << slurp(d->log);
    }
  }
}

// A real tallyd with stage 2 driven by the three kinds of real clients a
// fleet uses — a hiredis client pipelining, redis-benchmark, redis-cli —
// and every row of every table in Postgres equals the independent truth.
TEST_F(Tallyd, RealClientsTotalsInPostgresExact) {
  const uint64_t seed = 47, n = 20000, bench_n = 20000;
  postgres_->psql("CREATE SCHEMA IF NOT EXISTS clients");
  auto args = base_args("clients", true);
  args.insert(args.end(), {"--pg-schema", "clients", "--instance-id", "clients-a"});
  tallyd_process d(args);
  ASSERT_TRUE(d.wait_ready()) << slurp(d.log);
  rollup_rows expected;

  // hiredis, pipelined 500 commands per round trip, every reply checked.
  auto ep = adapters::parse_redis_url("redis://127.0.0.1:" + std::to_string(d.resp_port));
  ASSERT_TRUE(ep);
  auto client = adapters::redis_client::connect(*ep, 5000ms);
  ASSERT_TRUE(client) << client.error().message;
  std::vector<std::vector<std::string>> owned;
  for (uint64_t i = 0; i < n; ++i) {
    auto ev = generate(seed, i);
    add_reference(expected, ev);
    owned.push_back(ev.resp_args());
    if (owned.size() == 500 || i + 1 == n) {
      std::vector<std::vector<std::string_view>> cmds;
      for (auto& c : owned)
        cmds.emplace_back(c.begin(), c.end());
      auto replies = client->pipeline(cmds);
      ASSERT_TRUE(replies) << replies.error().message;
      for (auto& r : *replies)
        ASSERT_EQ(r.str, "OK");
      owned.clear();
    }
  }

  // redis-benchmark: one fixed event, bench_n times, 10 connections x 16 deep.
  const std::string ts = "1795391400000";
  auto [bcode, bout] = run({"redis-benchmark", "-h", "127.0.0.1", "-p", std::to_string(d.resp_port), "-n",
                            std::to_string(bench_n), "-c", "10", "-P", "16", "-q", "TALLY.RECORD", "key",
                            "bench-key", "model", "m-bench", "spend", "0.000001", "prompt_tokens", "3",
                            "completion_tokens", "2", "ts", ts}, 120s);
  ASSERT_EQ(bcode, 0) << bout;
  generated_event bench;
  bench.ids[0] = "bench-key";
  bench.ids[6] = "m-bench";
  bench.spend = 1000;
  bench.prompt_tokens = 3;
  bench.completion_tokens = 2;
  bench.ts_ms = std::stoll(ts);
  for (uint64_t i = 0; i < bench_n; ++i)
    add_reference(expected, bench);

  // redis-cli, one event, with a tag list and an error status.
  auto [ccode, cout] = run({"redis-cli", "-h", "127.0.0.1", "-p", std::to_string(d.resp_port), "TALLY.RECORD",
                            "user", "cli-user", "tags", "a,b", "spend", "1.5e-07", "status", "error", "ts", ts});
  ASSERT_EQ(ccode, 0);
  ASSERT_EQ(cout, "OK\n");
  generated_event cli;
  cli.ids[1] = "cli-user";
  cli.ids[5] = "a,b";
  cli.spend = 150;
  cli.ok = false;
  cli.ts_ms = std::stoll(ts);
  add_reference(expected, cli);

  const uint64_t total = n + bench_n + 1;
  std::string sum_sql = "SELECT coalesce(sum(requests), 0) FROM clients.tally_minute";
  ASSERT_TRUE(wait_for([&] { return postgres_->psql_or_empty(sum_sql) == std::to_string(total) + "\n"; }, 60s))
    << postgres_->psql(sum_sql) << slurp(d.log);
  EXPECT_EQ(diff_rows(expected, read_postgres(*postgres_, "clients")), "");
  EXPECT_EQ(d.terminate(), 0) << slurp(d.log);
}
