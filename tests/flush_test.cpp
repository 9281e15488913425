// tests/flush_test.cpp — stage 2 against real redis-server and postgres:
// exactly-once flushing under crashes, fencing, restarts, corrupt input and
// a foreign writer.
//
// Every test ends by comparing every row of tally_spend, tally_daily and
// tally_minute, read back with psql, with the ground truth computed
// independently from the generated events (tests/support/workload.hpp):
// spend to the nano-unit, every count.
//
// Processes: tally_driver records a slice of the workload (with --postgres it
// also flushes); flush_node (tests/flush_node.cpp) runs a flushing instance
// until SIGTERM and is what the crash tests kill, so that only the flush path
// is under test (a killed *producer* may lose its last buffer interval by
// design, §2).
#include "adapters/flush_sql.hpp"
#include "adapters/pg_client.hpp"
#include "adapters/pg_schema.hpp"
#include "core/rollup.hpp"
#include "tests/harness/servers.hpp"
#include "tests/support/child_process.hpp"
#include "tests/support/postgres_rows.hpp"
#include "tests/support/workload.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <deque>
#include <mutex>
#include <csignal>
#include <fstream>
#include <map>
#include <random>
#include <regex>
#include <sstream>
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


std::vector<std::string> node_args(const std::string& redis_url, const std::string& pg_url, const std::string& id,
                                   int lease_ms = 1000, int flush_ms = 100) {
  return {TALLY_FLUSH_NODE_PATH, "--redis", redis_url, "--ns", ns, "--instance", id, "--postgres", pg_url,
          "--flush-ms", std::to_string(flush_ms), "--lease-ms", std::to_string(lease_ms)};
}

std::vector<std::string> producer_args(const std::string& redis_url, const std::string& id, uint64_t from,
                                       uint64_t to) {
  return {TALLY_DRIVER_PATH, "--redis", redis_url, "--ns", ns, "--instance", id, "--seed", std::to_string(seed),
          "--from", std::to_string(from), "--to", std::to_string(to), "--threads", "1", "--buffer-ms", "100"};
}

void expect_exit_ok(const proc& p, std::chrono::milliseconds deadline) {
  int status = wait_process(p.pid, deadline);
  ASSERT_NE(status, -1) << p.name << " did not finish; log tail:\n" << slurp(p.log).substr(0, 4000);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << p.name << " failed; log:\n" << slurp(p.log);
}

/// Waits until `p` died of SIGKILL (a failpoint fired).
void expect_killed(const proc& p, std::chrono::milliseconds deadline) {
  int status = wait_process(p.pid, deadline);
  ASSERT_NE(status, -1) << p.name << " never reached its failpoint; log:\n" << slurp(p.log);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << p.name << " exited otherwise; log:\n"
                                                                   << slurp(p.log);
}

/// SIGTERM and a clean exit (final flush, lease released).
void stop_node(proc& p) {
  // A SIGTERM before main() blocked it would kill the node outright.
  ASSERT_TRUE(wait_for([&] { return p.stat("flushes") >= 0; }, 30s)) << p.name << " never came up";
  p.signal(SIGTERM);
  expect_exit_ok(p, 90s);
  p.pid = -1;
}

/// Nothing waits in Redis: batches empty and the given inflight lists gone.
bool redis_drained(const redis_server& redis, const std::vector<std::string>& ids) {
  if (redis_int(redis, {"LLEN", key("batches")}) != 0)
    return false;
  for (const auto& id : ids)
    if (redis_int(redis, {"LLEN", key("inflight:" + id)}) != 0)
      return false;
  return true;
}

/// Runs one more node until nothing waits in Redis, then stops it. A node
/// stopped at once would have to drain the others' whole backlog within its
/// stop deadline, which a loaded machine does not always meet (the stop
/// drain itself has tests of its own: StoppingLeader*, StopBefore*).
void finish_with_fresh_node(procs& ps, const redis_server& redis, const postgres_server& pg,
                            const std::vector<std::string>& ids) {
  auto& f = ps.start("finisher", node_args(redis.url(), pg.url(), "finisher"));
  auto all = ids;
  all.push_back("finisher");
  EXPECT_TRUE(wait_for([&] { return redis_drained(redis, all); }, 300s))
    << redis_int(redis, {"LLEN", key("batches")}) << " batches left\n" << slurp(f.log).substr(0, 4000);
  stop_node(f);
}

void expect_postgres_equals(const postgres_server& pg, const rollup_rows& expected) {
  auto got = read_postgres(pg);
  EXPECT_EQ(diff_rows(expected, got), "");
}

/// One writer per epoch, as recorded with every applied batch.
void expect_one_leader_per_epoch(const postgres_server& pg) {
  EXPECT_EQ(pg.psql("SELECT epoch FROM tally_applied_batches GROUP BY epoch HAVING count(DISTINCT leader) > 1"), "");
}

} // namespace

// Three instances in separate processes share Redis and Postgres and record
// 1,000,000 events between them while flushing; afterwards every row equals
// the truth and each epoch had one writer.
TEST(Flush, ThreeInstancesMillionEventsExact) {
  redis_server redis;
  postgres_server pg;
  procs ps("flush");
  constexpr uint64_t n = 1'000'000;
  std::vector<proc*> drivers;
  std::vector<std::string> state_dirs;
  for (int k = 0; k < 3; ++k) {
    state_dirs.push_back(temp_dir("tally-state-"));
    auto args = producer_args(redis.url(), "i" + std::to_string(k), 0, n);
    args.insert(args.end(), {"--stride", "3", "--offset", std::to_string(k), "--postgres", pg.url(), "--flush-ms",
                             "200", "--lease-ms", "2000", "--buffer-ms", "200", "--state-dir", state_dirs.back()});
    drivers.push_back(&ps.start("three-" + std::to_string(k), args));
  }
  auto expected = reference(0, n);
  for (auto* d : drivers)
    expect_exit_ok(*d, 300s);
  // On this loaded box Redis can stall past the drivers' timeouts; a driver
  // that stops while no database is healthy leaves its last batches in its
  // spill journal, for its next start (as designed). That next start:
  for (int k = 0; k < 3; ++k) {
    auto args = producer_args(redis.url(), "i" + std::to_string(k), 0, 0);
    args.insert(args.end(), {"--state-dir", state_dirs[static_cast<size_t>(k)]});
    expect_exit_ok(ps.start("three-replay-" + std::to_string(k), args), 120s);
  }
  long long flushes = 0;
  for (auto* d : drivers)
    flushes += std::max(0LL, d->stat("flushes"));
  EXPECT_GT(flushes, 0) << "the drivers themselves flushed nothing";
  finish_with_fresh_node(ps, redis, pg, {"i0", "i1", "i2"});
  EXPECT_TRUE(redis_drained(redis, {"i0", "i1", "i2", "finisher"}));
  expect_postgres_equals(pg, expected);
  expect_one_leader_per_epoch(pg);
}

// The leader is killed (SIGKILL) at every failpoint, twice each in a row, sometimes
// restarted under the same id (own leftover inflight list), sometimes
// replaced by a new id (orphaned inflight list of a dead instance), while
// producers keep writing. Totals end exact.
TEST(Flush, LeaderKilledAtEveryFailpoint) {
  redis_server redis;
  postgres_server pg;
  procs ps("flush");
  const std::vector<std::string> points = {"flush_after_move", "flush_before_commit", "flush_after_commit",
                                           "lease_after_acquire"};
  constexpr uint64_t slice = 12'500;
  uint64_t next = 0;
  std::vector<std::string> ids;
  int round = 0;
  for (const auto& point : points) {
    for (int repeat = 0; repeat < 2; ++repeat, ++round) {
      auto& producer = ps.start("producer", producer_args(redis.url(), "p" + std::to_string(round), next, next + slice));
      next += slice;
      std::string id = (round % 2 == 0) ? "leader" : "leader-" + std::to_string(round);
      ids.push_back(id);
      auto& node = ps.start("fp-" + point, node_args(redis.url(), pg.url(), id),
                            {"TALLY_FAILPOINT=" + point});
      expect_exit_ok(producer, 120s);
      expect_killed(node, 60s);
      EXPECT_TRUE(contains(node.log, "failpoint " + point)) << slurp(node.log);
      node.pid = -1;
    }
  }
  auto& a = ps.start("after-a", node_args(redis.url(), pg.url(), "leader"));
  auto& b = ps.start("after-b", node_args(redis.url(), pg.url(), "b"));
  ids.push_back("b");
  ASSERT_TRUE(wait_for([&] { return redis_drained(redis, ids); }, 120s)) << slurp(a.log) << slurp(b.log);
  stop_node(a);
  stop_node(b);
  expect_postgres_equals(pg, reference(0, next));
  expect_one_leader_per_epoch(pg);
}

// A stopping leader takes the lease again mid-drain (a Redis stall made a
// renewal miss and nobody else wanted the lease): a new epoch of its own.
// The stop drains on under it instead of giving up with batches left in
// Redis, whether its drain meets the fence of the old epoch or finds the
// lease lost and, shortly after, taken again.
//
// Forced, not hoped for: the node's first flush pauses 4 s before its commit
// (a pausing failpoint), with the lease row locked; the test sends SIGTERM
// (the stop waits behind that cycle) and stalls Redis for longer than
// lease_ttl, so the renewal misses; once Redis is back the lease actor takes
// the lease again, its epoch bump waiting in Postgres for the paused
// transaction, which then commits under the old epoch.
TEST(Flush, StoppingLeaderRetakingTheLeaseDrainsOn) {
  redis_server redis;
  postgres_server pg;
  procs ps("flush");
  constexpr uint64_t n = 30'000;
  // A backlog of many small batches (more than one flush takes), written
  // while nobody flushes.
  auto args = producer_args(redis.url(), "p", 0, n);
  args.insert(args.end(), {"--opt", "max_batch_bytes=4096"});
  auto& producer = ps.start("backlog", args);
  expect_exit_ok(producer, 120s);
  ASSERT_GT(redis_int(redis, {"LLEN", key("batches")}), 200);

  // The stall opens Redis's circuit; a short grace period lets the lease
  // actor use Redis again soon after it is back.
  auto node_argv = node_args(redis.url(), pg.url(), "retake", 1000, 100);
  node_argv.insert(node_argv.end(), {"--opt", "grace_period=100ms", "--opt", "health_check_interval=100ms"});
  auto& node = ps.start("retake", node_argv,
                        {"TALLY_FAILPOINT=flush_before_commit", "TALLY_FAILPOINT_PAUSE_MS=4000"});
  ASSERT_TRUE(wait_for([&] { return contains(node.log, "failpoint flush_before_commit: pausing"); }, 60s))
    << slurp(node.log);
  node.signal(SIGTERM);
  ASSERT_EQ(::kill(redis.pid(), SIGSTOP), 0);
  std::this_thread::sleep_for(1800ms);
  ASSERT_EQ(::kill(redis.pid(), SIGCONT), 0);
  expect_exit_ok(node, 120s);
  node.pid = -1;
  EXPECT_TRUE(contains(node.log, "took the lease again")) << slurp(node.log);
  EXPECT_TRUE(redis_drained(redis, {"retake"})) << redis_int(redis, {"LLEN", key("batches")})
                                                << " batches left\n" << slurp(node.log);
  expect_postgres_equals(pg, reference(0, n));
  expect_one_leader_per_epoch(pg);
}

// The last instance to stop drains what is left in Redis, even when the
// stop comes before its first health check judged Redis (a stop right after
// a start): it waits for that verdict instead of finding "no healthy
// database" and leaving. Forced: the first health round pauses 2.5 s
// (pausing failpoint), longer than start() waits for it (flush_node: 0.5 s
// redis_timeout + 1 s health_check_timeout) and shorter than the stop's
// own wait, and SIGTERM is already queued when start() returns.
TEST(Flush, StopBeforeTheFirstHealthVerdictStillDrains) {
  redis_server redis;
  postgres_server pg;
  procs ps("flush");
  constexpr uint64_t n = 20'000;
  auto& producer = ps.start("backlog", producer_args(redis.url(), "p", 0, n));
  expect_exit_ok(producer, 120s);
  ASSERT_GT(redis_int(redis, {"LLEN", key("batches")}), 0);

  auto& node = ps.start("early-stop", node_args(redis.url(), pg.url(), "early-stop"),
                        {"TALLY_FAILPOINT=health_before_round", "TALLY_FAILPOINT_PAUSE_MS=2500"});
  ASSERT_TRUE(wait_for([&] { return contains(node.log, "failpoint health_before_round: pausing"); }, 30s))
    << slurp(node.log);
  node.signal(SIGTERM);
  expect_exit_ok(node, 60s);
  node.pid = -1;
  EXPECT_TRUE(redis_drained(redis, {"early-stop"})) << redis_int(redis, {"LLEN", key("batches")})
                                                    << " batches left\n" << slurp(node.log);
  expect_postgres_equals(pg, reference(0, n));
}

// Whoever leads is SIGKILLed at a random moment of a producer's run, five
// times, while two instances compete; killed ones come back.
TEST(Flush, LeaderKilledAtRandomMoments) {
  redis_server redis;
  postgres_server pg;
  procs ps("flush");
  constexpr uint64_t slice = 20'000;
  std::vector<proc*> nodes = {&ps.start("rand-a", node_args(redis.url(), pg.url(), "a")),
                              &ps.start("rand-b", node_args(redis.url(), pg.url(), "b"))};
  std::mt19937 rng(42);
  uint64_t next = 0;
  for (int kill = 0; kill < 5; ++kill) {
    proc* leader = nullptr;
    ASSERT_TRUE(wait_for([&] {
      for (auto* p : nodes)
        if (p->stat("lease") == 1)
          leader = p;
      return leader != nullptr;
    }, 60s));
    auto& producer = ps.start("rand-producer", producer_args(redis.url(), "p" + std::to_string(kill), next, next + slice));
    next += slice;
    std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 1500));  // the random moment, not a sync
    leader->signal(SIGKILL);
    wait_process(leader->pid, 10s);
    leader->pid = -1;
    std::string id = leader->name == "rand-a" ? "a" : "b";
    proc& fresh = ps.start(leader->name, node_args(redis.url(), pg.url(), id));
    for (auto*& p : nodes)
      if (p == leader)
        p = &fresh;
    expect_exit_ok(producer, 120s);
  }
  ASSERT_TRUE(wait_for([&] { return redis_drained(redis, {"a", "b"}); }, 120s));
  for (auto* p : nodes)
    stop_node(*p);
  expect_postgres_equals(pg, reference(0, next));
  expect_one_leader_per_epoch(pg);
}

// The leader freezes (SIGSTOP) just before its flush transaction, holding
// batches it moved; its lease expires and another instance takes over,
// recovers the frozen one's inflight list and applies it. Resumed, the old
// leader's transaction is refused by the fence. Totals exact.
TEST(Flush, PausedLeaderIsFenced) {
  redis_server redis;
  postgres_server pg;
  procs ps("flush");
  constexpr uint64_t n = 50'000;
  auto& producer = ps.start("stop-producer", producer_args(redis.url(), "p", 0, n));
  auto& a = ps.start("stop-a", node_args(redis.url(), pg.url(), "a"), {"TALLY_STOPPOINT=flush_before_begin"});
  ASSERT_TRUE(wait_for([&] { return contains(a.log, "stoppoint flush_before_begin"); }, 60s)) << slurp(a.log);
  auto& b = ps.start("stop-b", node_args(redis.url(), pg.url(), "b"));
  ASSERT_TRUE(wait_for([&] { return b.stat("lease") == 1 && b.stat("flushes") > 0; }, 60s)) << slurp(b.log);
  a.signal(SIGCONT);
  // Resumed, its transaction is refused by the fence; or, without deadlock
  // priority, its epoch check can first time out on the lease row the new
  // leader's flush holds, and its lease actor has meanwhile seen the lease
  // gone: it stops leading without a fence. Either way nothing of it
  // commits (the totals and one leader per epoch below check that).
  ASSERT_TRUE(wait_for([&] {
    return contains(a.log, "flush refused by fence")
           || (contains(a.log, "epoch check: ") && contains(a.log, "lease lost (epoch 1)"));
  }, 30s)) << slurp(a.log);
  expect_exit_ok(producer, 120s);
  ASSERT_TRUE(wait_for([&] { return redis_drained(redis, {"a", "b"}); }, 120s))
    << "--- a:\n" << slurp(a.log) << "\n--- b:\n" << slurp(b.log);
  stop_node(a);
  stop_node(b);
  expect_postgres_equals(pg, reference(0, n));
  expect_one_leader_per_epoch(pg);
}

// Postgres is restarted while the leader is inside its flush transaction
// (frozen just before COMMIT), then killed and restarted while batches flow.
TEST(Flush, PostgresRestartedMidFlush) {
  redis_server redis;
  postgres_server pg;
  procs ps("flush");
  constexpr uint64_t slice = 50'000;
  auto& first = ps.start("pgr-producer", producer_args(redis.url(), "p1", 0, slice));
  auto& a = ps.start("pgr-a", node_args(redis.url(), pg.url(), "a"), {"TALLY_STOPPOINT=flush_before_commit"});
  ASSERT_TRUE(wait_for([&] { return contains(a.log, "stoppoint flush_before_commit"); }, 60s)) << slurp(a.log);
  pg.restart();
  a.signal(SIGCONT);
  expect_exit_ok(first, 120s);
  ASSERT_TRUE(wait_for([&] { return a.stat("flushes") > 0; }, 60s)) << slurp(a.log);
  auto& second = ps.start("pgr-producer", producer_args(redis.url(), "p2", slice, 2 * slice));
  pg.kill();
  pg.start();
  expect_exit_ok(second, 120s);
  ASSERT_TRUE(wait_for([&] { return redis_drained(redis, {"a"}); }, 120s)) << slurp(a.log);
  stop_node(a);
  EXPECT_TRUE(contains(a.log, "flush of ")) << "no flush failed: the restart missed the transaction";
  expect_postgres_equals(pg, reference(0, 2 * slice));
}

// Redis is killed mid-run and restarted from its append-only file, while a
// producer writes and two instances flush.
TEST(Flush, RedisRestartedMidRun) {
  redis_server redis;  // appendonly yes, appendfsync always
  postgres_server pg;
  procs ps("flush");
  constexpr uint64_t slice = 50'000;
  const std::string dirs[2] = {temp_dir("tally-state-"), temp_dir("tally-state-")};
  auto producer = [&](int k, uint64_t from, uint64_t to) {
    auto args = producer_args(redis.url(), "p" + std::to_string(k + 1), from, to);
    args.insert(args.end(), {"--state-dir", dirs[k]});
    return args;
  };
  auto& first = ps.start("rr-producer", producer(0, 0, slice));
  auto& a = ps.start("rr-a", node_args(redis.url(), pg.url(), "a"));
  auto& b = ps.start("rr-b", node_args(redis.url(), pg.url(), "b"));
  ASSERT_TRUE(wait_for([&] { return a.stat("flushes") + b.stat("flushes") > 0; }, 60s));
  auto& second = ps.start("rr-producer", producer(1, slice, 2 * slice));
  redis.kill();
  // Its writes fail, or go to its spill journal (Redis seen down).
  ASSERT_TRUE(wait_for([&] { return contains(second.log, "failed") || contains(second.log, "spill journal"); }, 30s))
    << slurp(second.log);
  redis.start();
  expect_exit_ok(first, 120s);
  expect_exit_ok(second, 120s);
  // A producer that stopped while Redis was still judged down left its last
  // batches in its journal (the first one too, when it was still writing at
  // the kill): its next start (nothing more to record) replays them.
  for (int k = 0; k < 2; ++k)
    expect_exit_ok(ps.start("rr-replay", producer(k, 0, 0)), 120s);
  ASSERT_TRUE(wait_for([&] { return redis_drained(redis, {"a", "b"}); }, 120s))
    << "--- a:\n" << slurp(a.log) << "\n--- b:\n" << slurp(b.log);
  stop_node(a);
  stop_node(b);
  expect_postgres_equals(pg, reference(0, 2 * slice));
  expect_one_leader_per_epoch(pg);
}

// A corrupt batch in the batches list lands in the dead-letter list (logged,
// counted) and every other batch is applied.
TEST(Flush, CorruptBatchIsDeadLettered) {
  redis_server redis;
  postgres_server pg;
  procs ps("flush");
  constexpr uint64_t n = 20'000;
  const std::string garbage = "TLYB this is not a batch";
  ASSERT_EQ(redis_command(redis.port(), {"LPUSH", key("batches"), garbage}).type, ':');
  auto& producer = ps.start("dl-producer", producer_args(redis.url(), "p", 0, n));
  auto& a = ps.start("dl-a", node_args(redis.url(), pg.url(), "a"));
  expect_exit_ok(producer, 120s);
  ASSERT_TRUE(wait_for([&] { return redis_drained(redis, {"a"}) && a.stat("dead") == 1; }, 60s)) << slurp(a.log);
  EXPECT_EQ(redis_int(redis, {"LLEN", key("deadletter")}), 1);
  EXPECT_EQ(redis_command(redis.port(), {"LINDEX", key("deadletter"), "0"}).value, garbage);
  EXPECT_TRUE(contains(a.log, "moved to " + key("deadletter")));
  stop_node(a);
  expect_postgres_equals(pg, reference(0, n));
}

// Foreign writers (as gateways do today) update the same tally_spend rows
// in random order, several rows per transaction, while tally flushes. No
// increment is lost or doubled, and tally's flushes never fail with a
// deadlock; without deadlock priority they defer what is held and never
// fail on a lock at all.
TEST(Flush, ForeignWriterNoLostIncrementsNoDeadlock) {
  redis_server redis;
  postgres_server pg;
  procs ps("flush");
  constexpr uint64_t n = 50'000;
  auto& producer = ps.start("fw-producer", producer_args(redis.url(), "p", 0, n));
  auto& a = ps.start("fw-a", node_args(redis.url(), pg.url(), "a"));
  // The hot rows: the per-key totals every flush touches, once they exist.
  ASSERT_TRUE(wait_for([&] {
    try {  // the table appears with the node's migration
      return std::stoll("0" + pg.psql("SELECT count(*) FROM tally_spend WHERE entity_type = 'key'")) >= 10;
    } catch (const std::exception&) {
      return false;
    }
  }, 60s, 200ms)) << slurp(a.log);
  std::vector<std::string> hot;
  const std::string hot_text =
    pg.psql("SELECT entity_id FROM tally_spend WHERE entity_type = 'key' ORDER BY 1 LIMIT 40");
  for (auto& line : split(hot_text, '\n'))
    if (!line.empty())
      hot.push_back(line);
  ASSERT_GE(hot.size(), 10u) << "psql said: [" << hot_text << "] " << pg.psql("SELECT count(*), min(entity_type) FROM tally_spend");
  std::mutex mu;
  std::map<std::string, __int128> foreign;  // committed foreign nano-units per key
  std::atomic<bool> done{false};
  std::atomic<long> commits{0}, foreign_deadlocks{0};
  std::vector<std::thread> writers;
  struct join_guard {  // an ASSERT returning early must not leave threads joinable
    std::atomic<bool>& done;
    std::vector<std::thread>& threads;
    ~join_guard() {
      done = true;
      for (auto& t : threads)
        if (t.joinable())
          t.join();
    }
  } guard{done, writers};
  for (int w = 0; w < 4; ++w) {
    writers.emplace_back([&, w] {
      auto conn = adapters::pg_client::connect(pg.url(), 5000ms);
      if (!conn) {
        ADD_FAILURE() << "foreign writer cannot connect: " << conn.error().message;
        return;
      }
      std::mt19937_64 rng(w);
      while (!done.load()) {
        std::vector<std::pair<std::string, __int128>> txn;
        for (int i = 0; i < 4; ++i)
          txn.emplace_back(hot[rng() % hot.size()], static_cast<__int128>(1 + rng() % 1000000));
        bool ok = conn->exec("BEGIN").ok();
        for (auto& [id, nanos] : txn)
          ok = ok && conn->exec_params("UPDATE tally_spend SET spend = spend + $2::numeric WHERE entity_type = 'key'"
                                       " AND scope = '' AND entity_id = $1",
                                       {id, adapters::format_nano_units(nanos)}).ok();
        if (ok && conn->exec("COMMIT").ok()) {
          std::lock_guard<std::mutex> lock(mu);
          for (auto& [id, nanos] : txn)
            foreign[id] += nanos;
          ++commits;
        } else {
          ++foreign_deadlocks;  // deadlock victim or other failure: rolled back, not counted
          (void)conn->exec("ROLLBACK");
        }
      }
    });
  }
  expect_exit_ok(producer, 180s);
  // More slices, so that several flushes run while the foreign writers do.
  for (uint64_t from = n; from < 3 * n; from += n) {
    auto& more = ps.start("fw-producer", producer_args(redis.url(), "p" + std::to_string(from), from, from + n));
    expect_exit_ok(more, 180s);
  }
  ASSERT_TRUE(wait_for([&] { return redis_drained(redis, {"a"}); }, 120s)) << slurp(a.log);
  done = true;
  for (auto& t : writers)
    t.join();
  stop_node(a);
  EXPECT_GT(commits.load(), 0);
  auto expected = reference(0, 3 * n);
  for (auto& [id, nanos] : foreign)
    expected["tally_spend"][{"key", "", id}][0] += nanos;
  expect_postgres_equals(pg, expected);
  EXPECT_FALSE(contains(a.log, "40P01")) << "a tally flush failed with a deadlock:\n" << slurp(a.log);
  auto log = slurp(a.log);
  auto count = [&](const std::string& what) {
    size_t n = 0;
    for (size_t at = log.find(what); at != std::string::npos; at = log.find(what, at + 1))
      ++n;
    return n;
  };
  // The deadlock handling that ran is the one the role allows: a superuser
  // raises its own deadlock_timeout and waits; an ordinary role cannot, so
  // it never waits for a row a foreign writer holds: it defers that
  // increment, and no flush fails on a lock.
  if (pg.superuser()) {
    EXPECT_TRUE(contains(a.log, "flushes take deadlock priority")) << log;
  } else {
    EXPECT_TRUE(contains(a.log, "no privilege to SET deadlock_timeout")) << log;
    EXPECT_GT(a.stat("deferred"), 0) << log;
    EXPECT_EQ(count("55P03"), 0u) << log;
  }
  // Every deferred increment was applied (the totals above are exact either way).
  EXPECT_EQ(std::stoll("0" + pg.psql("SELECT count(*) FROM tally_spend_deferred")), 0);
  std::cout << "foreign commits " << commits.load() << ", foreign rollbacks " << foreign_deadlocks.load()
            << ", tally flushes that gave up on a lock timeout " << count("55P03")
            << ", tally flushes with upserts retried under a savepoint " << count("retried after a lock timeout")
            << ", flushes that deferred entity totals " << count("entity totals deferred") << "\n";
}

// Producer retention (design §6): Redis without persistence is restarted and
// loses every batch before anything was flushed (Postgres is down meanwhile).
// The producing instance still holds its batches, sees they were never
// applied, pushes them again, and the totals end exact.
TEST(Flush, RedisLosingBatchesIsRepairedByRetention) {
  redis_options volatile_redis;
  volatile_redis.appendonly = false;
  redis_server redis(volatile_redis);
  postgres_server pg;
  procs ps("flush");
  constexpr uint64_t n = 30'000;
  pg.stop();  // nobody can flush: the batches stay in Redis
  auto args = node_args(redis.url(), pg.url(), "p");
  args.insert(args.end(), {"--seed", std::to_string(seed), "--from", "0", "--to", std::to_string(n), "--repush-ms",
                           "1000"});
  auto& p = ps.start("ret-p", args);
  ASSERT_TRUE(wait_for([&] { return p.stat("written") > 0 && p.stat("pending") == 0; }, 60s)) << slurp(p.log);
  ASSERT_GT(redis_int(redis, {"LLEN", key("batches")}), 0);
  redis.kill();
  redis.start();  // empty: the batches are gone
  ASSERT_EQ(redis_int(redis, {"LLEN", key("batches")}), 0);
  pg.start();
  ASSERT_TRUE(wait_for([&] { return p.stat("repushed") > 0; }, 60s)) << slurp(p.log);
  ASSERT_TRUE(wait_for([&] { return redis_drained(redis, {"p"}) && p.stat("flushes") > 0; }, 60s)) << slurp(p.log);
  stop_node(p);
  expect_postgres_equals(pg, reference(0, n));
}

namespace {

// The report tests' producer "p": its applied set is blocked by a key of the
// wrong type, and repush_after is long enough that only a report can
// confirm its batches before it gives up waiting.
proc& start_producer_with_blocked_reports(procs& ps, const redis_server& redis, const std::string& name, uint64_t n,
                                          int wait_applied_ms) {
  EXPECT_EQ(redis_command(redis.port(), {"SET", key("applied:p"), "not a set"}).value, "OK");
  auto args = producer_args(redis.url(), "p", 0, n);
  args.insert(args.end(), {"--opt", "repush_after=300s", "--wait-applied-ms", std::to_string(wait_applied_ms)});
  return ps.start(name, args);
}

// Waits until `leader` failed to report applied batches and every batch of
// `producer` has been written and taken out of Redis by `instances`. The
// failure is logged after the batches leave Redis: wait for both.
void wait_applied_unreported(const redis_server& redis, proc& producer, const proc& leader,
                             const std::vector<std::string>& instances) {
  ASSERT_TRUE(wait_for([&] { return contains(producer.log, "driver: recorded all"); }, 60s)) << slurp(producer.log);
  ASSERT_TRUE(wait_for([&] { return contains(leader.log, "telling producers what was applied failed"); }, 60s))
    << slurp(leader.log);
  ASSERT_TRUE(wait_for([&] {
    return producer.stat("batches") > 0 && producer.stat("pending") == 0 && redis_drained(redis, instances);
  }, 60s)) << slurp(leader.log);
}

// The producer saw every batch applied, told by a report (nothing re-pushed),
// and `leader` logged delivering what an earlier report missed.
void expect_confirmed_by_late_report(const proc& producer, const proc& leader) {
  expect_exit_ok(producer, 90s);
  EXPECT_TRUE(contains(producer.log, "driver: all applied")) << slurp(producer.log);
  EXPECT_TRUE(contains(producer.log, " repushed=0")) << slurp(producer.log);
  EXPECT_FALSE(std::regex_search(slurp(producer.log), std::regex(" repushed=[1-9]"))) << slurp(producer.log);
  EXPECT_TRUE(wait_for([&] { return contains(leader.log, "an earlier report missed"); }, 10s)) << slurp(leader.log);
}

} // namespace

// The leader's report of applied batch ids fails (the producer's applied
// set is, for a while, a key of the wrong type). The leader keeps the ids
// and delivers them with a later report once the key is usable again, so
// the producer's retention lets its batches go within seconds, long before
// repush_after would have re-pushed them all.
TEST(Flush, FailedApplyReportIsDeliveredLater) {
  redis_server redis;
  postgres_server pg;
  procs ps("flush");
  constexpr uint64_t n = 20'000;
  auto& producer = start_producer_with_blocked_reports(ps, redis, "report-p", n, 60000);
  auto& a = ps.start("report-a", node_args(redis.url(), pg.url(), "a"));
  ASSERT_NO_FATAL_FAILURE(wait_applied_unreported(redis, producer, a, {"a"}));
  EXPECT_FALSE(contains(producer.log, "driver: all applied")) << "the report was blocked; nothing can be confirmed yet";
  ASSERT_EQ(redis_int(redis, {"DEL", key("applied:p")}), 1);
  expect_confirmed_by_late_report(producer, a);
  stop_node(a);
  expect_postgres_equals(pg, reference(0, n));
}

// The same report, missed by a leader that then loses the lease (stopped
// past lease_ttl while another instance takes over): only it knows which
// ids it applied, so it tells the producers once it is running again, as a
// follower, rather than leaving them to re-push after repush_after.
TEST(Flush, ApplyReportMissedBeforeLosingTheLeaseIsDeliveredByTheFollower) {
  redis_server redis;
  postgres_server pg;
  procs ps("flush");
  constexpr uint64_t n = 20'000;
  auto& a = ps.start("lost-a", node_args(redis.url(), pg.url(), "a"));
  ASSERT_TRUE(wait_for([&] { return contains(a.log, "flushing as leader"); }, 60s)) << slurp(a.log);
  auto& b = ps.start("lost-b", node_args(redis.url(), pg.url(), "b"));
  auto& producer = start_producer_with_blocked_reports(ps, redis, "lost-p", n, 90000);
  // Whatever b may have applied after taking over early on a loaded
  // machine, the ids a applied reach the producer only through a.
  ASSERT_NO_FATAL_FAILURE(wait_applied_unreported(redis, producer, a, {"a", "b"}));

  ASSERT_EQ(::kill(a.pid, SIGSTOP), 0);
  bool b_leads = wait_for([&] { return contains(b.log, "flushing as leader"); }, 60s);
  ASSERT_EQ(redis_int(redis, {"DEL", key("applied:p")}), 1);
  ASSERT_EQ(::kill(a.pid, SIGCONT), 0);
  ASSERT_TRUE(b_leads) << slurp(b.log);
  expect_confirmed_by_late_report(producer, a);
  EXPECT_TRUE(contains(a.log, "not the leader any more")) << slurp(a.log);
  stop_node(a);
  stop_node(b);
  expect_postgres_equals(pg, reference(0, n));
  expect_one_leader_per_epoch(pg);
}

// A leader inherits a large backlog of expired applied batch ids, and a
// foreign session holds a lock on one of them. The flusher applies the
// fleet's events exactly once without waiting for any of it (a prune on the
// flush path that waited on that row would stall flushing for as long as
// the lock is held); the pruner deletes the rest in small batches, going
// around the locked row; ids inside the retention stay.
TEST(Flush, ExpiredAppliedBatchIdsArePrunedWithoutStallingFlushes) {
  redis_server redis;
  postgres_server pg;
  procs ps("flush");
  constexpr uint64_t n = 20'000;
  auto holder = adapters::pg_client::connect(pg.url(), 5000ms);
  ASSERT_TRUE(holder.ok());
  ASSERT_TRUE(adapters::migrate_schema(*holder, "public").ok());
  ASSERT_TRUE(holder->exec("INSERT INTO tally_applied_batches (batch_id, epoch, applied_at) SELECT 'expired:' || g, "
                           "0, now() - interval '30 days' FROM generate_series(1, 50000) g")
                .ok());
  ASSERT_TRUE(holder->exec("BEGIN; SELECT 1 FROM tally_applied_batches WHERE batch_id = 'expired:1' FOR UPDATE").ok());
  auto& producer = ps.start("prune-producer", producer_args(redis.url(), "p", 0, n));
  auto& a = ps.start("prune-a", node_args(redis.url(), pg.url(), "a"));
  expect_exit_ok(producer, 120s);
  ASSERT_TRUE(wait_for([&] { return redis_drained(redis, {"a"}); }, 120s)) << slurp(a.log);
  auto expired = [&] { return pg.psql("SELECT count(*) FROM tally_applied_batches WHERE batch_id LIKE 'expired:%'"); };
  ASSERT_TRUE(wait_for([&] { return expired() == "1\n"; }, 120s)) << expired() << slurp(a.log);
  EXPECT_TRUE(wait_for([&] { return contains(a.log, "pruned 49999 applied batch ids"); }, 30s)) << slurp(a.log);
  EXPECT_NE(pg.psql("SELECT count(*) FROM tally_applied_batches WHERE batch_id NOT LIKE 'expired:%'"), "0\n");
  ASSERT_TRUE(holder->exec("ROLLBACK").ok());
  stop_node(a);
  expect_postgres_equals(pg, reference(0, n));
  expect_one_leader_per_epoch(pg);
}

// --- Races forced with stoppoints (core/failpoint.hpp) -----------------------

namespace {

bool file_exists(const std::string& path) {
  return ::access(path.c_str(), F_OK) == 0;
}

void touch(const std::string& path) {
  std::ofstream(path).put('\n');
}

long long postgres_epoch(const postgres_server& pg) {
  std::string text = pg.psql(std::string("SELECT epoch FROM tally_lease WHERE namespace = '") + ns + "'");
  return text.empty() ? 0 : std::stoll(text);
}

} // namespace

// The fence race: the leader's flusher has moved batches in flight under
// epoch E and is held there; meanwhile the lease vanishes from Redis (as in
// a restart that lost it) and the same instance's lease actor takes it
// again, epoch E+1 in Postgres. Released, the flusher's transaction of E is
// refused by the fence; the supervisor must see that fence as stale (this
// instance holds E+1) and keep the new lease, and the flusher must drain on
// under E+1. Totals exact, one writer per epoch.
TEST(Flush, NewEpochTakenWhileTheFlusherHoldsTheOldOne) {
  redis_server redis;
  postgres_server pg;
  procs ps("flush");
  constexpr uint64_t n = 20'000;
  const std::string gate = temp_dir("tally-stoppoint-");
  auto& producer = ps.start("fr-producer", producer_args(redis.url(), "p", 0, n));
  auto& a = ps.start("fr-a", node_args(redis.url(), pg.url(), "a"),
                     {"TALLY_FAILPOINT=flush_after_move", "TALLY_FAILPOINT_WAIT_DIR=" + gate});
  ASSERT_TRUE(wait_for([&] { return file_exists(gate + "/flush_after_move.reached"); }, 60s)) << slurp(a.log);
  const long long old_epoch = postgres_epoch(pg);
  ASSERT_GT(old_epoch, 0);
  ASSERT_GT(redis_int(redis, {"LLEN", key("inflight:a")}), 0) << "the flusher holds no batches";

  ASSERT_EQ(redis_int(redis, {"DEL", key("lease")}), 1);
  ASSERT_TRUE(wait_for([&] { return postgres_epoch(pg) > old_epoch && a.stat("lease") == 1; }, 30s))
    << "no new epoch while the flusher was held:\n" << slurp(a.log);
  const long long new_epoch = postgres_epoch(pg);
  EXPECT_FALSE(contains(a.log, "flush refused by fence")) << "the race was not held open";

  touch(gate + "/flush_after_move.release");
  ASSERT_TRUE(wait_for([&] { return contains(a.log, "flush refused by fence"); }, 30s)) << slurp(a.log);
  ASSERT_TRUE(wait_for([&] {
    return contains(a.log, "stale fence of epoch " + std::to_string(old_epoch) + " ignored");
  }, 30s)) << slurp(a.log);
  expect_exit_ok(producer, 120s);
  ASSERT_TRUE(wait_for([&] { return redis_drained(redis, {"a"}); }, 120s)) << slurp(a.log);
  EXPECT_EQ(a.stat("lease"), 1) << "the new lease was given up for the old epoch's fence";
  EXPECT_EQ(postgres_epoch(pg), new_epoch) << "the lease was taken yet again";
  EXPECT_EQ(std::stoll(pg.psql("SELECT count(*) FROM tally_applied_batches WHERE epoch = " + std::to_string(old_epoch))), 0)
    << "a batch committed under the fenced epoch";
  stop_node(a);
  expect_postgres_equals(pg, reference(0, n));
  expect_one_leader_per_epoch(pg);
}

// The supervisor's restart path while leading: the flusher actor dies (an
// exception, as from any bug) with batches in flight. The supervisor
// restarts it under the epoch it holds, without a new lease, and the new
// flusher applies the batches the dead one left in flight. Totals exact.
TEST(Flush, FlusherCrashWhileLeadingIsRestarted) {
  redis_server redis;
  postgres_server pg;
  procs ps("flush");
  constexpr uint64_t n = 20'000;
  auto& producer = ps.start("fc-producer", producer_args(redis.url(), "p", 0, n));
  // The first cycle that moves batches: the flusher leads and holds them.
  auto& a = ps.start("fc-a", node_args(redis.url(), pg.url(), "a"),
                     {"TALLY_FAILPOINT=flush_after_move", "TALLY_FAILPOINT_THROW=1"});
  ASSERT_TRUE(wait_for([&] { return contains(a.log, "failpoint flush_after_move: throwing"); }, 60s))
    << slurp(a.log);
  const long long epoch = postgres_epoch(pg);
  ASSERT_TRUE(wait_for([&] { return contains(a.log, "flusher actor died"); }, 30s)) << slurp(a.log);
  ASSERT_TRUE(wait_for([&] { return contains(a.log, "restarting the flusher actor"); }, 30s)) << slurp(a.log);
  // flush_after_move fires only with the read inflight window non-empty,
  // so the dead flusher left batches in flight; the restarted one (about
  // 100 ms later, too soon to poll the list on a loaded box) returns or
  // applies them, and the totals below show each exactly once.
  expect_exit_ok(producer, 120s);
  ASSERT_TRUE(wait_for([&] { return redis_drained(redis, {"a"}); }, 120s)) << slurp(a.log);
  EXPECT_EQ(postgres_epoch(pg), epoch) << "the restart took a new lease instead of keeping its own";
  EXPECT_EQ(a.stat("lease"), 1);
  stop_node(a);
  expect_postgres_equals(pg, reference(0, n));
  expect_one_leader_per_epoch(pg);
}

// The other child: the lease actor dies right after taking the lease in
// Redis, before it has an epoch. The supervisor stops flushing and restarts
// it; the new lease actor (a new nonce) cannot renew the dead one's lease,
// so it takes the lease once that expires. Flushing resumes; totals exact.
TEST(Flush, LeaseActorCrashIsRestarted) {
  redis_server redis;
  postgres_server pg;
  procs ps("flush");
  constexpr uint64_t n = 20'000;
  auto& producer = ps.start("lc-producer", producer_args(redis.url(), "p", 0, n));
  auto& a = ps.start("lc-a", node_args(redis.url(), pg.url(), "a"),
                     {"TALLY_FAILPOINT=lease_after_acquire", "TALLY_FAILPOINT_THROW=1"});
  ASSERT_TRUE(wait_for([&] { return contains(a.log, "lease actor died"); }, 60s)) << slurp(a.log);
  ASSERT_TRUE(wait_for([&] { return contains(a.log, "restarting the lease actor"); }, 30s)) << slurp(a.log);
  ASSERT_TRUE(wait_for([&] { return a.stat("lease") == 1 && a.stat("flushes") > 0; }, 60s)) << slurp(a.log);
  expect_exit_ok(producer, 120s);
  ASSERT_TRUE(wait_for([&] { return redis_drained(redis, {"a"}); }, 120s)) << slurp(a.log);
  stop_node(a);
  expect_postgres_equals(pg, reference(0, n));
  expect_one_leader_per_epoch(pg);
}
