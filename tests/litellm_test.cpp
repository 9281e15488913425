// tests/litellm_test.cpp — the LiteLLM callback (integrations/litellm) into a
// real tallyd, down to the rows in Postgres.
//
// tests/litellm/feed.py runs the callback module with redis-py's asyncio
// client, as a LiteLLM proxy would, on StandardLoggingPayload fixtures (built
// by hand after LiteLLM's type; see integrations/litellm/README.md), and
// prints the tally_spend rows it derives from the fixtures' JSON text on its
// own. Here a real redis-server, postgres and tallyd (stage 2) take those
// events, and every tally_spend row must equal that expectation: spend to the
// nano-unit, every token count and request counter.
#include "tests/harness/servers.hpp"
#include "tests/support/shared_servers.hpp"
#include "tests/support/postgres_rows.hpp"
#include "tests/support/tallyd_process.hpp"

#include <gtest/gtest.h>

#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

using namespace tally::testing;
using namespace std::chrono_literals;

namespace {

// Keys (user_api_key_hash) of two fixtures in tests/litellm/fixtures/, each used
// by that fixture alone, so their key rows show how one kind of call counts.
const std::string failure_key = "a7a9052a04b562a7b1f146c0b63dc15ff16f5bddecbc17ce54cc83a945ed34db";
const std::string cache_hit_key = "20bd27125441aab06132cf4d40076bb7986bd94f110fe03cb8631a40c0f303a7";
const int repeat = 25;  // times feed.py logs each fixture

/// Returns a python3 that can import redis.asyncio: the first on PATH, else
/// Debian's, where scripts/setup installs python3-redis (a PATH python3 may
/// be another installation, such as a pyenv shim).
std::string python_with_redis() {
  for (std::string python : {"python3", "/usr/bin/python3"})
    if (run({python, "-c", "import redis.asyncio"}).first == 0)
      return python;
  return "";
}

class LiteLLM : public shared_servers {
protected:

  /// Starts a tallyd in namespace and schema `ns`, feeds it every fixture
  /// with `ack` replies, waits for the flush and checks every tally_spend row.
  static void feed_and_check(const std::string& ns, const std::string& ack) {
    const std::string python = python_with_redis();
    ASSERT_NE(python, "") << "no python3 with redis-py; scripts/setup installs python3-redis";
    postgres_->psql("CREATE SCHEMA IF NOT EXISTS " + ns);
    tallyd_process d({"--ns", ns, "--redis-urls", redis_->url(), "--postgres-url", postgres_->url(),
                      "--pg-schema", ns, "--resp-port", "0", "--http-port", "0", "--buffer-interval", "100ms",
                      "--flush-interval", "100ms", "--worker-threads", "2", "--state-dir", temp_dir("tally-state-")});
    ASSERT_TRUE(d.wait_ready()) << slurp(d.log);

    auto [code, out] = run({python, std::string(TALLY_SOURCE_DIR) + "/tests/litellm/feed.py", "--port",
                            std::to_string(d.resp_port), "--repeat", std::to_string(repeat), "--ack", ack}, 120s);
    ASSERT_EQ(code, 0) << out << slurp(d.log);

    const auto feed = parse_feed_output(out);
    const spend_rows& expected = feed.rows;
    const long long events = feed.events;
    ASSERT_GT(events, 0) << out;
    ASSERT_FALSE(expected.empty()) << out;

    // Every event is in tally_minute once its batch is applied.
    const std::string sum_sql = "SELECT coalesce(sum(requests), 0) FROM " + ns + ".tally_minute";
    ASSERT_TRUE(wait_for([&] { return postgres_->psql_or_empty(sum_sql) == std::to_string(events) + "\n"; }, 60s))
      << postgres_->psql(sum_sql) << slurp(d.log);

    const spend_rows actual = read_spend(*postgres_, ns);
    EXPECT_EQ(diff_spend(expected, actual), "") << "feed.py said:\n" << out;

    // Measures: spend, prompt, completion, cache read, cache creation,
    // requests, successful, failed.
    const std::string n = std::to_string(repeat);
    auto measures_of = [&](const std::string& key) {
      auto it = actual.find("key\t\t" + key);
      return it == actual.end() ? std::vector<std::string>{} : split(it->second, '\t');
    };
    // The failed call counts as a failed request, without spend.
    auto failure = measures_of(failure_key);
    ASSERT_EQ(failure.size(), 8u);
    EXPECT_EQ(failure[0], "0.000000000");
    EXPECT_EQ(failure[5], n);
    EXPECT_EQ(failure[6], "0");
    EXPECT_EQ(failure[7], n);
    // The cache hit counts as a successful request with spend 0, though its
    // payload carries a response_cost.
    auto cache_hit = measures_of(cache_hit_key);
    ASSERT_EQ(cache_hit.size(), 8u);
    EXPECT_EQ(cache_hit[0], "0.000000000");
    EXPECT_EQ(cache_hit[5], n);
    EXPECT_EQ(cache_hit[6], n);
    EXPECT_EQ(cache_hit[7], "0");

    // ts is the payload's startTime (epoch seconds; 2026-01-01 12:00:0x UTC).
    EXPECT_EQ(postgres_->psql("SELECT DISTINCT to_char(minute AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') FROM " + ns
                              + ".tally_minute"),
              "2026-01-01 12:00\n");
    EXPECT_EQ(d.terminate(), 0) << slurp(d.log);
  }

};

} // namespace

TEST_F(LiteLLM, BufferedRepliesTotalsExact) {
  feed_and_check("litellm_buffered", "buffered");
}

// TALLY.ACK durable on every pooled connection: replies wait for persistence,
// and the totals are the same.
TEST_F(LiteLLM, DurableRepliesTotalsExact) {
  feed_and_check("litellm_durable", "durable");
}
