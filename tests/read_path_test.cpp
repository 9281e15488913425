// tests/read_path_test.cpp — TALLY.GET as gateways use it (design §7, the
// read path): several real tallyd processes on real redis-server and
// postgres, driven from the outside over RESP and HTTP.
//
// What must hold:
//  * an instance reads its own writes at once (durable acks) and every
//    instance sees every flush within the staleness bound, not only the
//    leader: the caches here live 60 s, so only invalidations can do that;
//  * after a failover the instances listen on the new database;
//  * a fill that raced an invalidation never installs (a failpoint holds
//    the fill between its query and its install);
//  * 1,000 concurrent GETs of a cold row cost one Postgres query;
//  * bad input gets clear errors.
#include "adapters/pg_client.hpp"
#include "adapters/redis_client.hpp"
#include "tests/harness/servers.hpp"
#include "tests/support/child_process.hpp"
#include "tests/support/tallyd_process.hpp"

#include "tally/tally.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <thread>

using namespace tally;
using namespace tally::testing;
using namespace std::chrono_literals;

namespace {

/// A GET reply as field -> value; "error" holds an error reply's text.
using totals = std::map<std::string, std::string>;

totals fields_of(const resp_reply& r) {
  totals out;
  if (r.type != '*') {
    out["error"] = std::string(1, r.type) + r.value;
    return out;
  }
  for (size_t i = 0; i + 1 < r.elements.size(); i += 2)
    out[r.elements[i].value] = r.elements[i + 1].value;
  return out;
}

totals get(int port, const std::vector<std::string>& args) {
  std::vector<std::string> cmd{"TALLY.GET"};
  cmd.insert(cmd.end(), args.begin(), args.end());
  return fields_of(redis_command(port, cmd, "", 10s));
}

std::string error_of(int port, const std::vector<std::string>& cmd) {
  auto r = redis_command(port, cmd, "", 10s);
  return r.type == '-' ? r.value : "not an error: " + std::string(1, r.type) + r.value;
}

/// Records `n` events of `spend` each for user `user`, durable: every reply
/// waits until the batch is in Redis.
void record(int port, const std::string& user, const std::string& spend, int n = 1) {
  auto ep = adapters::parse_redis_url("127.0.0.1:" + std::to_string(port));
  auto c = adapters::redis_client::connect(*ep, 10000ms);
  ASSERT_TRUE(c) << c.error().message;
  ASSERT_TRUE(c->command({"TALLY.ACK", "durable"}));
  std::vector<std::vector<std::string_view>> cmds;
  for (int i = 0; i < n; ++i)
    cmds.push_back({"TALLY.RECORD", "user", user, "model", "m", "spend", spend, "prompt_tokens", "10"});
  auto replies = c->pipeline(cmds);
  ASSERT_TRUE(replies) << replies.error().message;
  for (auto& r : *replies)
    ASSERT_EQ(r.str, "OK");
}

long long metric_of(int http_port, const std::string& name) {
  return metric(http_get(http_port, "/metrics").body, name);
}

class ReadPath : public ::testing::Test {
protected:
  static void SetUpTestSuite() { postgres_ = new postgres_server(); }
  static void TearDownTestSuite() {
    delete postgres_;
    postgres_ = nullptr;
  }

  /// Short intervals; a cache that would serve a value for a minute
  /// without invalidations.
  static std::vector<std::string> args(const std::string& ns, const std::string& instance,
                                       const std::vector<std::string>& redis_urls) {
    postgres_->psql("CREATE SCHEMA IF NOT EXISTS " + ns);
    std::vector<std::string> a{"--ns", ns, "--postgres-url", postgres_->url(), "--pg-schema", ns,
                               "--instance-id", instance, "--state-dir", temp_path("state-" + instance),
                               "--resp-port", "0", "--http-port", "0", "--worker-threads", "2",
                               "--buffer-interval", "100ms", "--flush-interval", "100ms", "--lease-ttl", "1s",
                               "--health-check-interval", "200ms", "--grace-period", "1s",
                               "--read-cache-ttl", "60s"};
    std::string list;
    for (const auto& u : redis_urls)
      list += (list.empty() ? "" : ",") + u;
    a.push_back("--redis-urls");
    a.push_back(list);
    return a;
  }

  /// An embedded runtime's config with the same short intervals.
  static config embedded(const std::string& ns, const std::string& instance, const std::string& redis_url,
                         const std::string& postgres_url) {
    config cfg;
    cfg.ns = ns;
    cfg.redis_urls = {redis_url};
    cfg.postgres_url = postgres_url;
    cfg.pg_schema = ns;
    cfg.instance_id = instance;
    cfg.state_dir = temp_path("state-" + instance);
    cfg.buffer_interval = 100ms;
    cfg.flush_interval = 100ms;
    cfg.lease_ttl = 1000ms;
    cfg.health_check_interval = 200ms;
    return cfg;
  }

  static std::vector<std::string> with(std::vector<std::string> a, const std::vector<std::string>& more) {
    a.insert(a.end(), more.begin(), more.end());
    return a;
  }

  /// Postgres' spend of a user, as text ("" when no row, or no table yet:
  /// tallyd creates its tables when it first connects).
  static std::string pg_spend(const std::string& ns, const std::string& user) {
    try {
      return postgres_->psql("SELECT spend FROM " + ns + ".tally_spend WHERE entity_type = 'user' AND entity_id = '"
                             + user + "'");
    } catch (const std::exception&) {
      return "";
    }
  }

  /// Waits until the instance's cache is on (subscribed to invalidations).
  static bool subscribed(const tallyd_process& d) {
    return wait_for([&] { return metric_of(d.http_port, "tally_read_cache_subscribed") == 1; }, 30s, 50ms);
  }

  static postgres_server* postgres_;
};
postgres_server* ReadPath::postgres_ = nullptr;

TEST_F(ReadPath, EveryInstanceSeesEveryFlushWithinTheBound) {
  redis_server redis;
  std::vector<std::unique_ptr<tallyd_process>> ds;
  for (const char* id : {"r1", "r2", "r3"}) {
    ds.push_back(std::make_unique<tallyd_process>(args("rp_all", id, {redis.url()})));
    ASSERT_TRUE(ds.back()->wait_ready()) << ds.back()->log;
  }
  for (auto& d : ds)
    ASSERT_TRUE(subscribed(*d)) << d->log;

  // Unknown: zeros, and the reply says so.
  auto none = get(ds[1]->resp_port, {"user", "nobody"});
  EXPECT_EQ(none["found"], "0");
  EXPECT_EQ(none["spend"], "0.000000000");
  EXPECT_EQ(none["requests"], "0");

  // Every instance caches the row before the writes below, so each later
  // value can only come from an invalidation (or the writer's own ledger).
  for (auto& d : ds)
    EXPECT_EQ(get(d->resp_port, {"user", "alice"})["found"], "0");

  // The writer reads its own durable writes at once, before any flush.
  record(ds[0]->resp_port, "alice", "0.25", 4);
  auto own = get(ds[0]->resp_port, {"user", "alice"});
  EXPECT_EQ(own["spend"], "1.000000000");
  EXPECT_EQ(own["requests"], "4");
  EXPECT_EQ(own["prompt_tokens"], "40");
  EXPECT_EQ(own["found"], "1");

  // Every other instance within the bound: buffer + flush interval plus
  // propagation, well under 5 s even on a loaded CI machine.
  auto others_see = [&](const std::string& spend, const char* what) {
    for (size_t i = 0; i < ds.size(); ++i) {
      auto start = std::chrono::steady_clock::now();
      bool ok = wait_for([&] { return get(ds[i]->resp_port, {"user", "alice"})["spend"] == spend; }, 5s, 10ms);
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
      EXPECT_TRUE(ok) << what << ": instance " << i << " shows "
                      << get(ds[i]->resp_port, {"user", "alice"})["spend"] << ", want " << spend;
      std::printf("%s: instance %zu saw %s after %lld ms\n", what, i, spend.c_str(),
                  static_cast<long long>(ms.count()));
    }
  };
  others_see("1.000000000", "first flush");
  ASSERT_TRUE(wait_for([&] { return pg_spend("rp_all", "alice") == "1.000000000\n"; }, 10s));

  // A second writer: everyone, the first writer included, sees both.
  record(ds[2]->resp_port, "alice", "0.5", 2);
  EXPECT_EQ(get(ds[2]->resp_port, {"user", "alice"})["spend"], "2.000000000");
  others_see("2.000000000", "second flush");
  ASSERT_TRUE(wait_for([&] { return pg_spend("rp_all", "alice") == "2.000000000\n"; }, 10s));
  for (auto& d : ds) {
    auto t = get(d->resp_port, {"user", "alice"});
    EXPECT_EQ(t["requests"], "6");
    EXPECT_EQ(t["successful_requests"], "6");
  }

  // MGET: several rows in one round trip, in order.
  auto r = redis_command(ds[1]->resp_port, {"TALLY.MGET", "user", "alice", "nobody"}, "", 10s);
  ASSERT_EQ(r.type, '*');
  ASSERT_EQ(r.elements.size(), 2u);
  EXPECT_EQ(fields_of(r.elements[0])["spend"], "2.000000000");
  EXPECT_EQ(fields_of(r.elements[1])["found"], "0");

  auto metrics = http_get(ds[1]->http_port, "/metrics").body;
  EXPECT_GT(metric(metrics, "tally_read_cache_hits_total"), 0);
  EXPECT_GT(metric(metrics, "tally_read_cache_invalidations_total"), 0);
  EXPECT_GE(metric(metrics, "tally_read_last_invalidation_age_seconds"), 0);
  for (auto& d : ds)
    EXPECT_EQ(d->terminate(), 0) << d->log;
}

TEST_F(ReadPath, AfterAFailoverInstancesListenOnTheNewDatabase) {
  redis_server main_db, spare_db;
  std::string main_url = main_db.url() + "?weight=2", spare_url = spare_db.url();
  tallyd_process a(args("rp_failover", "fa", {main_url, spare_url}));
  tallyd_process b(args("rp_failover", "fb", {main_url, spare_url}));
  ASSERT_TRUE(a.wait_ready()) << a.log;
  ASSERT_TRUE(b.wait_ready()) << b.log;
  ASSERT_TRUE(subscribed(a) && subscribed(b));
  record(a.resp_port, "bob", "1");
  ASSERT_TRUE(wait_for([&] { return get(b.resp_port, {"user", "bob"})["spend"] == "1.000000000"; }, 10s));

  long long drops = metric_of(b.http_port, "tally_read_cache_invalidate_all_total");
  main_db.kill();
  // b moves to the spare and subscribes there: its cache is dropped once
  // more and comes back on.
  ASSERT_TRUE(wait_for([&] {
    return metric_of(b.http_port, "tally_read_cache_invalidate_all_total") > drops
           && metric_of(b.http_port, "tally_read_cache_subscribed") == 1
           && slurp(b.log).find("subscribed to {tally:rp_failover}:invalidate on " + spare_db.url())
                != std::string::npos;
  }, 30s, 50ms)) << slurp(b.log);
  // b caches the value again; only a message on the spare can change it now.
  ASSERT_TRUE(wait_for([&] { return get(b.resp_port, {"user", "bob"})["spend"] == "1.000000000"; }, 10s));
  record(a.resp_port, "bob", "2");
  EXPECT_TRUE(wait_for([&] { return get(b.resp_port, {"user", "bob"})["spend"] == "3.000000000"; }, 10s))
    << "b shows " << get(b.resp_port, {"user", "bob"})["spend"];
  EXPECT_EQ(pg_spend("rp_failover", "bob"), "3.000000000\n");
  EXPECT_EQ(a.terminate(), 0) << a.log;
  EXPECT_EQ(b.terminate(), 0) << b.log;
}

TEST_F(ReadPath, AFillThatRacedAnInvalidationIsNeverServed) {
  redis_server redis;
  tallyd_process writer(args("rp_race", "w", {redis.url()}));
  ASSERT_TRUE(writer.wait_ready()) << writer.log;
  record(writer.resp_port, "carol", "1");
  ASSERT_TRUE(wait_for([&] { return pg_spend("rp_race", "carol") == "1.000000000\n"; }, 10s));
  // The reader's first fill stops for 5 s between its query and its install.
  tallyd_process reader(with(args("rp_race", "r", {redis.url()}), {"--read-timeout", "20s"}),
                        {"TALLY_FAILPOINT=read_before_install", "TALLY_FAILPOINT_PAUSE_MS=5000"});
  ASSERT_TRUE(reader.wait_ready()) << reader.log;
  ASSERT_TRUE(subscribed(reader));
  totals first;
  std::thread slow([&] { first = get(reader.resp_port, {"user", "carol"}); });
  // While the fill holds 1.0, the writer adds 2.0 and the flush is announced.
  bool paused = wait_for([&] {
    return slurp(reader.log).find("failpoint read_before_install: pausing") != std::string::npos;
  }, 10s);
  EXPECT_TRUE(paused) << slurp(reader.log);
  record(writer.resp_port, "carol", "2");
  bool flushed = wait_for([&] { return pg_spend("rp_race", "carol") == "3.000000000\n"; }, 10s);
  slow.join();
  ASSERT_TRUE(paused && flushed);
  // The stale fill was read again: the answer and the cache hold 3.0.
  EXPECT_EQ(first["spend"], "3.000000000") << first["error"];
  EXPECT_EQ(get(reader.resp_port, {"user", "carol"})["spend"], "3.000000000");
  EXPECT_GE(metric_of(reader.http_port, "tally_read_cache_stale_fills_total"), 1);
  EXPECT_EQ(writer.terminate(), 0) << writer.log;
  EXPECT_EQ(reader.terminate(), 0) << reader.log;
}

TEST_F(ReadPath, AThousandConcurrentColdReadsCostOneQuery) {
  redis_server redis;
  tallyd_process writer(args("rp_flight", "w", {redis.url()}));
  ASSERT_TRUE(writer.wait_ready()) << writer.log;
  record(writer.resp_port, "dave", "0.001", 10);
  ASSERT_TRUE(wait_for([&] { return pg_spend("rp_flight", "dave") == "0.010000000\n"; }, 10s));
  tallyd_process reader(args("rp_flight", "r", {redis.url()}));
  ASSERT_TRUE(reader.wait_ready()) << reader.log;
  ASSERT_TRUE(subscribed(reader));
  long long before = metric_of(reader.http_port, "tally_read_queries_total");

  constexpr int clients = 100, per_client = 10;
  std::vector<std::thread> threads;
  std::atomic<int> ready{0}, right{0};
  std::atomic<bool> go{false};
  std::vector<std::string> errors(clients);
  for (int t = 0; t < clients; ++t)
    threads.emplace_back([&, t] {
      auto ep = adapters::parse_redis_url("127.0.0.1:" + std::to_string(reader.resp_port));
      auto c = adapters::redis_client::connect(*ep, 30000ms);
      ++ready;
      if (!c) {
        errors[t] = c.error().message;
        return;
      }
      while (!go.load())
        std::this_thread::yield();
      std::vector<std::vector<std::string_view>> cmds(per_client, {"TALLY.GET", "user", "dave"});
      auto replies = c->pipeline(cmds);
      if (!replies) {
        errors[t] = replies.error().message;
        return;
      }
      for (auto& r : *replies)
        if (r.elements.size() == 24 && r.elements[9].str == "0.010000000")
          ++right;
    });
  while (ready.load() < clients)
    std::this_thread::sleep_for(1ms);
  go = true;
  for (auto& t : threads)
    t.join();
  for (auto& e : errors)
    EXPECT_EQ(e, "");
  EXPECT_EQ(right.load(), clients * per_client);
  EXPECT_EQ(metric_of(reader.http_port, "tally_read_queries_total") - before, 1);
  EXPECT_EQ(writer.terminate(), 0) << writer.log;
  EXPECT_EQ(reader.terminate(), 0) << reader.log;
}

TEST_F(ReadPath, BadInputGetsClearErrors) {
  redis_server redis;
  tallyd_process d(args("rp_bad", "b", {redis.url()}));
  ASSERT_TRUE(d.wait_ready()) << d.log;
  int p = d.resp_port;
  EXPECT_EQ(error_of(p, {"TALLY.GET", "wallet", "x"}),
            "ERR unknown entity type 'wallet': one of key, user, team, team_member, org, end_user, tag");
  EXPECT_EQ(error_of(p, {"TALLY.GET", "user"}), "ERR wrong number of arguments for 'tally.get' command");
  EXPECT_EQ(error_of(p, {"TALLY.GET", "user", "a", "b", "c"}),
            "ERR wrong number of arguments for 'tally.get' command");
  EXPECT_EQ(error_of(p, {"TALLY.GET", "user", std::string(257, 'x')}), "ERR id is longer than 256 bytes");
  EXPECT_EQ(error_of(p, {"TALLY.GET", "user", ""}),
            "ERR id must be 1-256 bytes of UTF-8 without control characters");
  EXPECT_EQ(error_of(p, {"TALLY.GET", "user", "u", "t"}), "ERR a scope is only for team_member rows");
  EXPECT_EQ(error_of(p, {"TALLY.GET", "team_member", "u"}), "ERR team_member rows need the team id as scope");
  EXPECT_EQ(error_of(p, {"TALLY.MGET", "user"}), "ERR wrong number of arguments for 'tally.mget' command");
  std::vector<std::string> many{"TALLY.MGET", "user"};
  for (int i = 0; i < 1001; ++i)
    many.push_back("u" + std::to_string(i));
  EXPECT_EQ(error_of(p, many), "ERR between 1 and 1000 ids per read");
  // The connection and the instance go on.
  EXPECT_EQ(get(p, {"team_member", "u", "t"})["found"], "0");
  EXPECT_EQ(d.terminate(), 0) << d.log;

  // An instance without Postgres cannot read, and says why.
  tallyd_process producer({"--ns", "rp_bad", "--postgres-url", "", "--redis-urls", redis.url(), "--resp-port", "0", "--http-port", "0",
                           "--state-dir", temp_path("state-p")});
  ASSERT_TRUE(producer.wait_ready()) << producer.log;
  EXPECT_EQ(error_of(producer.resp_port, {"TALLY.GET", "user", "u"}),
            "TRYAGAIN reads need a postgres_url: this instance has no Postgres to read totals from");
  EXPECT_EQ(producer.terminate(), 0) << producer.log;
}

// The embedding API reads the same way: a durable record is read back at
// once, before any flush; another process's flush arrives by invalidation.
TEST_F(ReadPath, EmbeddedReadsSeeOwnDurableWritesAtOnce) {
  redis_server redis;
  postgres_->psql("CREATE SCHEMA IF NOT EXISTS rp_embed");
  runtime rt;
  ASSERT_EQ(rt.start(embedded("rp_embed", "embedded", redis.url(), postgres_->url())), "");
  ASSERT_TRUE(wait_for([&] { return rt.snapshot().read_subscribed == 1; }, 30s));
  auto r = rt.get("team_member", "erin", "t1");
  ASSERT_EQ(r.code, read_result::status::ok) << r.error;
  EXPECT_FALSE(r.entities[0].found);
  event ev;
  ev.id(field::user) = "erin";
  ev.id(field::team) = "t1";
  ev.spend = 1'500'000'000;  // 1.5 in nano-units
  ev.completion_tokens = 7;
  ASSERT_EQ(rt.record_durable(ev).get().code, errc::ok);
  r = rt.mget("team_member", {"erin"}, "t1");
  ASSERT_EQ(r.code, read_result::status::ok) << r.error;
  EXPECT_TRUE(r.entities[0].found);
  EXPECT_EQ(r.entities[0].spend, "1.500000000");
  EXPECT_EQ(r.entities[0].completion_tokens, 7);
  EXPECT_EQ(r.entities[0].scope, "t1");
  // Flushed and retired from the ledger, the value stays the same.
  ASSERT_TRUE(wait_for([&] { return rt.snapshot().read_ledger_batches == 0; }, 10s));
  EXPECT_EQ(rt.get("team", "t1").entities[0].spend, "1.500000000");
  EXPECT_EQ(rt.get("team_member", "erin", "t1").entities[0].spend, "1.500000000");
  EXPECT_EQ(rt.get("wallet", "x").code, read_result::status::bad_request);
  rt.stop();
  EXPECT_EQ(rt.get("user", "erin").code, read_result::status::unavailable);
}

// An ordinary role (no deadlock priority) never waits for an entity-total
// row another transaction holds: the increment goes to tally_spend_deferred.
// While it waits there, reads count it, and the leader's gauges say how
// many wait and for how long, so an alert can name a foreign transaction
// that holds a row for long; once the row is free it is applied once and
// the gauges fall to 0.
TEST_F(ReadPath, DeferredIncrementsAreCountedAndReportedUntilApplied) {
  redis_server redis;
  postgres_->psql("DO $$ BEGIN CREATE ROLE rp_deferrer LOGIN NOSUPERUSER; "
                  "EXCEPTION WHEN duplicate_object THEN NULL; END $$");
  postgres_->psql("GRANT CREATE ON DATABASE tally TO rp_deferrer");
  postgres_->psql("CREATE SCHEMA IF NOT EXISTS rp_defer AUTHORIZATION rp_deferrer");
  runtime rt;
  ASSERT_EQ(rt.start(embedded("rp_defer", "deferrer", redis.url(),
                              "postgresql://rp_deferrer@127.0.0.1:" + std::to_string(postgres_->port()) + "/tally")),
            "");
  event ev;
  ev.id(field::user) = "dora";
  ev.spend = 1'000'000'000;
  ASSERT_EQ(rt.record_durable(ev).get().code, errc::ok);
  ASSERT_TRUE(wait_for([&] { return pg_spend("rp_defer", "dora") == "1.000000000\n"; }, 30s)) << pg_spend("rp_defer", "dora");

  auto holder = adapters::pg_client::connect(postgres_->url(), 5000ms);
  ASSERT_TRUE(holder) << holder.error().message;
  ASSERT_TRUE(holder->exec("BEGIN"));
  ASSERT_TRUE(holder->exec("SELECT 1 FROM rp_defer.tally_spend WHERE entity_type = 'user' AND entity_id = 'dora' "
                           "FOR UPDATE"));
  ev.spend = 2'000'000'000;
  ASSERT_EQ(rt.record_durable(ev).get().code, errc::ok);
  ASSERT_TRUE(wait_for([&] { return rt.snapshot().rows_deferred >= 1; }, 30s));
  EXPECT_EQ(pg_spend("rp_defer", "dora"), "1.000000000\n");  // the held row is untouched
  auto r = rt.get("user", "dora");
  ASSERT_EQ(r.code, read_result::status::ok) << r.error;
  EXPECT_EQ(r.entities[0].spend, "3.000000000");  // ... and the read counts what waits
  ASSERT_TRUE(wait_for([&] {
    auto s = rt.snapshot();
    return s.deferred_waiting == 1 && s.deferred_oldest_seconds >= 2;
  }, 30s)) << "waiting " << rt.snapshot().deferred_waiting << ", oldest " << rt.snapshot().deferred_oldest_seconds
           << " s";

  ASSERT_TRUE(holder->exec("ROLLBACK"));
  ASSERT_TRUE(wait_for([&] {
    auto s = rt.snapshot();
    return s.deferred_applied >= 1 && s.deferred_waiting == 0 && s.deferred_oldest_seconds == 0;
  }, 30s)) << "applied " << rt.snapshot().deferred_applied << ", waiting " << rt.snapshot().deferred_waiting;
  EXPECT_EQ(pg_spend("rp_defer", "dora"), "3.000000000\n");
  EXPECT_EQ(postgres_->psql("SELECT count(*) FROM rp_defer.tally_spend_deferred"), "0\n");
  EXPECT_EQ(rt.snapshot().deferred_applied, 1u);
  rt.stop();
}

} // namespace
