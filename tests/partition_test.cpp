// tests/partition_test.cpp — network partitions that hang connections,
// made with network namespaces and veth pairs this test creates itself.
//
// A refused connection fails fast and every client handles it; a partition
// does not answer at all: packets vanish, connections hang until a timeout
// notices. Each tally process here runs in a network namespace of its own
// with two links to the host: one it reaches Redis through, one it reaches
// Postgres through (both servers run on the host, listening on the links'
// host-side addresses). Cutting a link is `ip link set <host side> down`:
// the namespace keeps its route (the link is only NO-CARRIER there), so
// what it sends goes nowhere and nothing answers, as in a real partition.
//
// Cases: the leader cut off from Redis but not from Postgres; the leader
// cut off from Postgres but not from Redis; a producer cut off from
// everything. After each heal the totals in Postgres are exact and one
// leader wrote per epoch (a batch is applied once: tally_applied_batches
// holds each id once, and an exact total means nothing was applied twice).
//
// Needs root and iproute2 (CI runs as root); without them the test fails,
// it does not skip.
#include "tests/harness/servers.hpp"
#include "tests/support/child_process.hpp"
#include "tests/support/netns.hpp"
#include "tests/support/postgres_rows.hpp"
#include "tests/support/workload.hpp"

#include <gtest/gtest.h>

#include <csignal>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

using namespace tally;
using namespace tally::testing;
using namespace std::chrono_literals;

namespace {

constexpr uint64_t seed = 7;
constexpr const char* ns = "t";

bool contains(const std::string& path, const std::string& text) {
  return slurp(path).find(text) != std::string::npos;
}

rollup_rows reference(uint64_t from, uint64_t to) {
  return reference_range(seed, from, to);
}

long long redis_int(const redis_server& redis, std::vector<std::string> args) {
  auto r = redis_command(redis.port(), args);
  return r.type == ':' ? std::stoll(r.value) : -1;
}

std::string key(const std::string& suffix) {
  return std::string("{tally:") + ns + "}:" + suffix;
}

std::string redis_url_at(const std::string& address, const redis_server& redis) {
  return "redis://" + address + ":" + std::to_string(redis.port());
}

std::string postgres_url_at(const std::string& address, const postgres_server& pg) {
  return "postgresql://postgres@" + address + ":" + std::to_string(pg.port()) + "/tally";
}

/// A flushing instance inside `host`'s namespace.
std::vector<std::string> node_args(const netns_host& host, const redis_server& redis, const postgres_server& pg,
                                   const std::string& id) {
  return host.inside({TALLY_FLUSH_NODE_PATH, "--redis", redis_url_at(host.redis_address(), redis), "--ns", ns,
                      "--instance", id, "--postgres", postgres_url_at(host.postgres_address(), pg),
                      "--flush-ms", "100", "--lease-ms", "2000"});
}

std::vector<std::string> producer_args(const std::string& redis_url, const std::string& id, uint64_t from,
                                       uint64_t to) {
  return {TALLY_DRIVER_PATH, "--redis", redis_url, "--ns", ns, "--instance", id, "--seed", std::to_string(seed),
          "--from", std::to_string(from), "--to", std::to_string(to), "--threads", "1", "--buffer-ms", "100"};
}

void expect_exit_ok(const proc& p, std::chrono::milliseconds deadline) {
  int status = wait_process(p.pid, deadline);
  ASSERT_NE(status, -1) << p.name << " did not finish; log:\n" << slurp(p.log);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << p.name << " failed; log:\n" << slurp(p.log);
}

void stop_node(proc& p) {
  p.signal(SIGTERM);
  expect_exit_ok(p, 90s);
  p.pid = -1;
}

bool redis_drained(const redis_server& redis, const std::vector<std::string>& ids) {
  if (redis_int(redis, {"LLEN", key("batches")}) != 0)
    return false;
  for (const auto& id : ids)
    if (redis_int(redis, {"LLEN", key("inflight:" + id)}) != 0)
      return false;
  return true;
}

void expect_exact_and_fenced(const postgres_server& pg, uint64_t events) {
  EXPECT_EQ(diff_rows(reference(0, events), read_postgres(pg)), "");
  EXPECT_EQ(pg.psql("SELECT epoch FROM tally_applied_batches GROUP BY epoch HAVING count(DISTINCT leader) > 1"), "");
}

long long postgres_epoch(const postgres_server& pg) {
  std::string text = pg.psql(std::string("SELECT epoch FROM tally_lease WHERE namespace = '") + ns + "'");
  return text.empty() ? 0 : std::stoll(text);
}

/// The servers every case shares the shape of: Redis and Postgres on the
/// host, reachable from the namespaces' links.
struct cluster {
  redis_server redis{[] {
    redis_options o;
    o.bind = "0.0.0.0";
    return o;
  }()};
  postgres_server pg{[] {
    postgres_options o;
    o.listen = "*";
    o.trust_cidr = "10.0.0.0/8";
    return o;
  }()};
};

proc* leader_of(std::initializer_list<proc*> nodes) {
  for (proc* p : nodes)
    if (p->stat("lease") == 1)
      return p;
  return nullptr;
}

} // namespace

// The leader loses Redis (its lease renewals and batch reads hang) but still
// reaches Postgres. The other instance takes the lease once it expires and
// flushes, fencing anything the cut-off leader still had in flight. Healed,
// the old leader follows; everything is drained exactly once.
TEST(Partition, LeaderCutOffFromRedis) {
  cluster c;
  netns_host host_a(1), host_b(2);
  procs ps("partition");
  constexpr uint64_t slice = 20'000;
  auto& first = ps.start("lr-producer", producer_args(c.redis.url(), "p1", 0, slice));
  auto& a = ps.start("lr-a", node_args(host_a, c.redis, c.pg, "a"));
  auto& b = ps.start("lr-b", node_args(host_b, c.redis, c.pg, "b"));
  proc* leader = nullptr;
  ASSERT_TRUE(wait_for([&] { return (leader = leader_of({&a, &b})) && leader->stat("flushes") > 0; }, 60s))
    << slurp(a.log) << slurp(b.log);
  proc* other = leader == &a ? &b : &a;
  netns_host& cut = leader == &a ? host_a : host_b;
  const long long epoch = postgres_epoch(c.pg);
  cut.cut_redis();
  auto& second = ps.start("lr-producer", producer_args(c.redis.url(), "p2", slice, 2 * slice));
  ASSERT_TRUE(wait_for([&] { return postgres_epoch(c.pg) > epoch && other->stat("lease") == 1; }, 60s))
    << "nobody took over from the cut-off leader:\n" << slurp(other->log);
  const long long before = other->stat("flushes");
  ASSERT_TRUE(wait_for([&] { return other->stat("flushes") > before; }, 60s)) << slurp(other->log);
  expect_exit_ok(second, 120s);
  cut.heal_redis();
  ASSERT_TRUE(wait_for([&] { return redis_drained(c.redis, {"a", "b"}); }, 180s))
    << "--- a:\n" << slurp(a.log) << "\n--- b:\n" << slurp(b.log);
  expect_exit_ok(first, 60s);
  stop_node(a);
  stop_node(b);
  expect_exact_and_fenced(c.pg, 2 * slice);
}

// The leader loses Postgres but keeps Redis: its lease stays valid, its
// flush transaction hangs. Nothing may be lost or applied twice when the
// link comes back, whoever flushes then.
TEST(Partition, LeaderCutOffFromPostgres) {
  cluster c;
  netns_host host_a(1), host_b(2);
  procs ps("partition");
  constexpr uint64_t slice = 20'000;
  auto& first = ps.start("lp-producer", producer_args(c.redis.url(), "p1", 0, slice));
  auto& a = ps.start("lp-a", node_args(host_a, c.redis, c.pg, "a"));
  auto& b = ps.start("lp-b", node_args(host_b, c.redis, c.pg, "b"));
  proc* leader = nullptr;
  ASSERT_TRUE(wait_for([&] { return (leader = leader_of({&a, &b})) && leader->stat("flushes") > 0; }, 60s))
    << slurp(a.log) << slurp(b.log);
  netns_host& cut = leader == &a ? host_a : host_b;
  expect_exit_ok(first, 120s);
  cut.cut_postgres();
  auto& second = ps.start("lp-producer", producer_args(c.redis.url(), "p2", slice, 2 * slice));
  expect_exit_ok(second, 120s);
  // Batches wait in Redis while the leader cannot reach Postgres.
  ASSERT_TRUE(wait_for([&] { return !redis_drained(c.redis, {"a", "b"}); }, 30s));
  std::this_thread::sleep_for(5s);  // the cut lasts a while: not a sync, the length of the outage
  cut.heal_postgres();
  ASSERT_TRUE(wait_for([&] { return redis_drained(c.redis, {"a", "b"}); }, 180s))
    << "--- a:\n" << slurp(a.log) << "\n--- b:\n" << slurp(b.log);
  stop_node(a);
  stop_node(b);
  expect_exact_and_fenced(c.pg, 2 * slice);
}

// A producer cut off from everything keeps taking events: its Redis writes
// hang, health checks time out, batches go to its spill journal. Healed, it
// replays them; a leader elsewhere applies them exactly once.
TEST(Partition, ProducerCutOffFromEverything) {
  cluster c;
  netns_host host_p(1);
  procs ps("partition");
  constexpr uint64_t events = 60'000;
  auto& leader = ps.start("pe-leader", {TALLY_FLUSH_NODE_PATH, "--redis", c.redis.url(), "--ns", ns, "--instance",
                                        "l", "--postgres", c.pg.url(), "--flush-ms", "100", "--lease-ms", "2000"});
  std::string state_dir = temp_dir("tally-state-");
  auto args = host_p.inside(producer_args(redis_url_at(host_p.redis_address(), c.redis), "p", 0, events));
  // 3,000 events a second: it is still recording when the link comes back.
  args.insert(args.end(), {"--state-dir", state_dir, "--rate", "3000"});
  auto& producer = ps.start("pe-producer", args);
  ASSERT_TRUE(wait_for([&] { return producer.stat("batches") > 0; }, 60s)) << slurp(producer.log);
  host_p.cut_redis();
  host_p.cut_postgres();
  ASSERT_TRUE(wait_for([&] { return contains(producer.log, "spill journal"); }, 60s))
    << "the producer never turned to its journal:\n" << slurp(producer.log);
  host_p.heal_redis();
  host_p.heal_postgres();
  expect_exit_ok(producer, 180s);
  ASSERT_TRUE(wait_for([&] { return redis_drained(c.redis, {"l"}); }, 180s)) << slurp(leader.log);
  stop_node(leader);
  expect_exact_and_fenced(c.pg, events);
}
