// tests/node_test.cpp — the Node example (integrations/node/tally.js, with
// ioredis) into a real tallyd, down to the rows in Postgres; the Node twin of
// litellm_test.
//
// ioredis comes from the npm registry at the version integrations/node/
// package-lock.json pins: `npm ci` installs it into the build tree
// (NODE_EXAMPLE_DIR, where CMake copied package.json and the lock), and
// tests/node/feed.js finds it through NODE_PATH. feed.js sends its gateway
// calls through TallyClient and prints the tally_spend rows it derives from
// the calls on its own; every row in Postgres must equal them.
#include "tests/harness/servers.hpp"
#include "tests/support/shared_servers.hpp"
#include "tests/support/postgres_rows.hpp"
#include "tests/support/tallyd_process.hpp"

#include <gtest/gtest.h>

#include <string>

using namespace tally::testing;
using namespace std::chrono_literals;

namespace {

const int repeat = 40;  // times feed.js sends each call
static_assert(repeat % 10 == 0, "k-node-3's expected spend below is a whole number");

/// Returns the first of `names` that runs with `--version`, or "".
std::string find_tool(std::initializer_list<const char*> names) {
  for (const char* name : names)
    if (run({name, "--version"}).first == 0)
      return name;
  return "";
}

class NodeExample : public shared_servers {
protected:
  static void SetUpTestSuite() {
    node_ = find_tool({"node", "/usr/bin/node", "nodejs"});
    npm_ = find_tool({"npm", "/usr/bin/npm"});
    if (!node_.empty() && !npm_.empty()) {
      auto [code, out] = run({npm_, "ci", "--prefix", NODE_EXAMPLE_DIR, "--ignore-scripts", "--no-audit",
                              "--no-fund"}, 300s);
      npm_ci_ = code == 0 ? "" : "npm ci failed (" + std::to_string(code) + "):\n" + out;
    }
    shared_servers::SetUpTestSuite();
  }

  /// Starts a tallyd in namespace and schema `ns`, runs feed.js with `ack`
  /// replies, waits for the flush and checks every tally_spend row.
  static void feed_and_check(const std::string& ns, const std::string& ack) {
    ASSERT_NE(node_, "") << "no node; scripts/setup installs nodejs";
    ASSERT_NE(npm_, "") << "no npm; scripts/setup installs npm";
    ASSERT_EQ(npm_ci_, "");
    postgres_->psql("CREATE SCHEMA IF NOT EXISTS " + ns);
    tallyd_process d({"--ns", ns, "--redis-urls", redis_->url(), "--postgres-url", postgres_->url(),
                      "--pg-schema", ns, "--resp-port", "0", "--http-port", "0", "--buffer-interval", "100ms",
                      "--flush-interval", "100ms", "--worker-threads", "2", "--state-dir", temp_dir("tally-state-")});
    ASSERT_TRUE(d.wait_ready()) << slurp(d.log);

    auto [code, out] = run({"env", std::string("NODE_PATH=") + NODE_EXAMPLE_DIR + "/node_modules", node_,
                            std::string(TALLY_SOURCE_DIR) + "/tests/node/feed.js", "--port",
                            std::to_string(d.resp_port), "--repeat", std::to_string(repeat), "--ack", ack}, 120s);
    ASSERT_EQ(code, 0) << out << slurp(d.log);
    const auto feed = parse_feed_output(out);
    const long long events = feed.events;
    ASSERT_EQ(events, 5 * repeat) << out;
    ASSERT_FALSE(feed.rows.empty()) << out;

    const std::string sum_sql = "SELECT coalesce(sum(requests), 0) FROM " + ns + ".tally_minute";
    ASSERT_TRUE(wait_for([&] { return postgres_->psql_or_empty(sum_sql) == std::to_string(events) + "\n"; }, 60s))
      << postgres_->psql(sum_sql) << slurp(d.log);
    EXPECT_EQ(diff_spend(feed.rows, read_spend(*postgres_, ns)), "") << "feed.js said:\n" << out;
    // 0.1 + 0.2 is 0.30000000000000004 as a double: sent as that text, it is
    // rounded once, half-to-even, to 0.300000000 per call.
    EXPECT_EQ(postgres_->psql("SELECT spend FROM " + ns + ".tally_spend WHERE entity_type = 'key' AND entity_id = "
                              "'k-node-3'"),
              std::to_string(repeat * 3 / 10) + ".000000000\n");
    EXPECT_EQ(postgres_->psql("SELECT DISTINCT to_char(minute AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') FROM " + ns
                              + ".tally_minute"),
              "2026-01-01 12:00\n");
    EXPECT_EQ(d.terminate(), 0) << slurp(d.log);
  }

  static std::string node_, npm_, npm_ci_;
};
std::string NodeExample::node_, NodeExample::npm_, NodeExample::npm_ci_;

} // namespace

TEST_F(NodeExample, BufferedRepliesTotalsExact) {
  feed_and_check("node_buffered", "buffered");
}

// TALLY.ACK durable before every event: +OK means persisted; the totals are the same.
TEST_F(NodeExample, DurableRepliesTotalsExact) {
  feed_and_check("node_durable", "durable");
}
