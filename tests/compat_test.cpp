// tests/compat_test.cpp — real Redis client libraries against a real tallyd,
// down to the rows in Postgres.
//
// The clients, at pinned versions: redis-py from Debian's python3-redis
// (sync and asyncio), ioredis and node-redis from the npm registry (tests/
// compat/package-lock.json; `npm ci` installs them into the build tree), and
// redis-cli --pipe. Each runs the same scenarios (tests/compat/clients.js,
// redis_py.py): AUTH, one record, a pipeline, MULTI/EXEC and one with a
// refused event inside, durable acks, an error reply, reconnect. Each
// prints the events it was told succeeded, per key; the counts in Postgres
// must equal them exactly: nothing a client was told failed is counted,
// nothing it was told succeeded is lost.
#include "tests/harness/servers.hpp"
#include "tests/support/shared_servers.hpp"
#include "tests/support/tallyd_process.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <sstream>
#include <string>

using namespace tally::testing;
using namespace std::chrono_literals;

namespace {

const std::string password = "compat-secret";

std::string find_tool(std::initializer_list<const char*> names) {
  for (const char* name : names)
    if (run({name, "--version"}).first == 0)
      return name;
  return "";
}

/// The `told <TAB> key <TAB> n` lines of a client script.
std::map<std::string, long long> told_counts(const std::string& out) {
  std::map<std::string, long long> told;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("told\t", 0) != 0)
      continue;
    auto tab = line.find('\t', 5);
    told[line.substr(5, tab - 5)] += std::stoll(line.substr(tab + 1));
  }
  return told;
}

class ClientCompat : public shared_servers {
protected:
  static void SetUpTestSuite() {
    node_ = find_tool({"node", "/usr/bin/node", "nodejs"});
    npm_ = find_tool({"npm", "/usr/bin/npm"});
    if (!node_.empty() && !npm_.empty()) {
      auto [code, out] = run({npm_, "ci", "--prefix", COMPAT_NODE_DIR, "--ignore-scripts", "--no-audit",
                              "--no-fund"}, 300s);
      npm_ci_ = code == 0 ? "" : "npm ci failed (" + std::to_string(code) + "):\n" + out;
    }
    shared_servers::SetUpTestSuite();
  }

  /// Starts a tallyd with a password in schema `ns`, runs `client`, waits
  /// for the flush and compares the per-key request counts in Postgres
  /// with what the client was told.
  static void run_and_check(const std::string& ns, const std::vector<std::string>& client,
                            const std::vector<std::string>& keys) {
    postgres_->psql("CREATE SCHEMA IF NOT EXISTS " + ns);
    tallyd_process d({"--ns", ns, "--redis-urls", redis_->url(), "--postgres-url", postgres_->url(),
                      "--pg-schema", ns, "--resp-port", "0", "--http-port", "0", "--resp-requirepass", password,
                      "--buffer-interval", "100ms", "--flush-interval", "100ms", "--worker-threads", "2",
                      "--state-dir", temp_dir("tally-state-")});
    ASSERT_TRUE(d.wait_ready()) << slurp(d.log);
    std::vector<std::string> argv = client;
    argv.insert(argv.end(), {"--port", std::to_string(d.resp_port), "--password", password});
    auto [code, out] = run(argv, 180s);
    EXPECT_EQ(code, 0) << out;
    auto told = told_counts(out);
    for (const auto& key : keys)
      EXPECT_GT(told[key], 0) << key << " was never told OK:\n" << out;
    long long total = 0;
    std::string want;
    for (auto& [key, n] : told) {
      total += n;
      want += key + "|" + std::to_string(n) + "\n";
    }
    const std::string sum_sql = "SELECT coalesce(sum(requests), 0) FROM " + ns + ".tally_spend WHERE entity_type = 'key'";
    EXPECT_TRUE(wait_for([&] { return postgres_->psql_or_empty(sum_sql) == std::to_string(total) + "\n"; }, 60s))
      << postgres_->psql_or_empty(sum_sql) << " requests in Postgres, " << total << " told OK\n" << out << slurp(d.log);
    EXPECT_EQ(postgres_->psql("SELECT entity_id || '|' || requests FROM " + ns
                              + ".tally_spend WHERE entity_type = 'key' ORDER BY entity_id COLLATE \"C\""),
              want);
    EXPECT_EQ(d.terminate(), 0) << slurp(d.log);
  }

  void node_client(const std::string& ns, const std::string& lib) {
    ASSERT_NE(node_, "") << "no node; scripts/setup installs nodejs";
    ASSERT_NE(npm_, "") << "no npm; scripts/setup installs npm";
    ASSERT_EQ(npm_ci_, "");
    run_and_check(ns,
                  {"env", std::string("NODE_PATH=") + COMPAT_NODE_DIR + "/node_modules", node_,
                   std::string(TALLY_SOURCE_DIR) + "/tests/compat/clients.js", "--client", lib},
                  {lib + "-single", lib + "-pipeline", lib + "-multi", lib + "-durable", lib + "-reconnect"});
  }

  static std::string node_, npm_, npm_ci_;
};
std::string ClientCompat::node_, ClientCompat::npm_, ClientCompat::npm_ci_;

} // namespace

TEST_F(ClientCompat, RedisPy) {
  run_and_check("compat_py", {"/usr/bin/python3", std::string(TALLY_SOURCE_DIR) + "/tests/compat/redis_py.py"},
                {"redis-py-single", "redis-py-pipeline", "redis-py-multi", "redis-py-durable", "redis-py-reconnect",
                 "redis-py-asyncio"});
}

TEST_F(ClientCompat, Ioredis) {
  node_client("compat_ioredis", "ioredis");
}

// node-redis 6 with default options: HELLO 3 (RESP3) with AUTH on connect.
TEST_F(ClientCompat, NodeRedis) {
  node_client("compat_node_redis", "node-redis");
}

// redis-cli --pipe: 10,000 records and one refused, in the raw protocol;
// redis-cli's own summary counts the replies and errors.
TEST_F(ClientCompat, RedisCliPipe) {
  const std::string ns = "compat_cli";
  postgres_->psql("CREATE SCHEMA IF NOT EXISTS " + ns);
  tallyd_process d({"--ns", ns, "--redis-urls", redis_->url(), "--postgres-url", postgres_->url(), "--pg-schema",
                    ns, "--resp-port", "0", "--http-port", "0", "--resp-requirepass", password, "--buffer-interval",
                    "100ms", "--flush-interval", "100ms", "--state-dir", temp_dir("tally-state-")});
  ASSERT_TRUE(d.wait_ready()) << slurp(d.log);
  auto file = temp_dir("tally-pipe-") + "/in.resp";
  {
    std::ofstream f(file, std::ios::binary);
    auto cmd = [&](std::initializer_list<std::string> args) {
      f << "*" << args.size() << "\r\n";
      for (auto& a : args)
        f << "$" << a.size() << "\r\n" << a << "\r\n";
    };
    for (int i = 0; i < 10000; ++i)
      cmd({"TALLY.RECORD", "key", "cli-" + std::to_string(i % 7), "spend", "1", "ts", "1767268800000"});
    cmd({"TALLY.RECORD", "key", "cli-bad", "spend", "-1"});
  }
  auto [code, out] = run({"sh", "-c", "redis-cli -p " + std::to_string(d.resp_port) + " -a " + password
                                        + " --no-auth-warning --pipe < " + file}, 120s);
  EXPECT_NE(out.find("errors: 1, replies: 10001"), std::string::npos) << out;
  const std::string sum_sql = "SELECT coalesce(sum(requests), 0) FROM " + ns + ".tally_spend WHERE entity_type = 'key'";
  EXPECT_TRUE(wait_for([&] { return postgres_->psql_or_empty(sum_sql) == "10000\n"; }, 60s)) << postgres_->psql_or_empty(sum_sql);
  EXPECT_EQ(d.terminate(), 0) << slurp(d.log);
}
