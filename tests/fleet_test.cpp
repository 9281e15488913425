// tests/fleet_test.cpp — the Redis fleet (design §6, "Databases, health and
// failover") against real redis-server, redis-sentinel and postgres
// processes: the active database killed for good, hung (SIGSTOP), flapping,
// a Redis losing its data under a producer-only instance, a Sentinel
// failover under load, the embedding API's switch callback, and a Redis
// stalling writes under a leader.
//
// Every test ends by comparing every row of tally_spend, tally_daily and
// tally_minute, read back with psql, with the reference computed
// independently from the generated events (tests/support/workload.hpp):
// spend to the nano-unit, every count.
//
// Processes. Producers are tally_driver processes WITHOUT --postgres
// (producer-only instances, as behind gateways), paced with --rate so that
// their stream spans the failure, and run with --wait-applied-ms so that a
// producer does not exit while its retention may still have to re-push a
// batch a database lost. Flushing is done by separate flush_node leaders,
// which run until SIGTERM: a leader keeps flushing after the producers
// exited, so the test can poll Postgres until the totals are exact and time
// that, and a killed or hung database never takes a producer's flushing
// role with it.
//
// Failover is watched from the outside: each process prints a progress line
// (every 100 ms for flush_node, 200 ms for tally_driver) ending with
// tests/support/fleet_status ("active=<url> switches=N health_check=N ...").
// A watcher thread tails every log and timestamps each change it sees, so
// the times below are "seen by the test", at most one progress interval
// plus one poll (20 ms) after the fact.
//
// Intervals are short (--opt): health checks every 200-300 ms, grace periods
// of 3-4 s, a 1 s lease, 100 ms flushes and buffers, so the whole binary
// stays within a few minutes on a 2-core machine.
#include "tally/tally.hpp"
#include "tests/harness/servers.hpp"
#include "tests/support/child_process.hpp"
#include "tests/support/postgres_rows.hpp"
#include "tests/support/workload.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <sys/wait.h>
#include <thread>

using namespace tally;
using namespace tally::testing;
using namespace std::chrono_literals;

namespace {

using steady = std::chrono::steady_clock;

constexpr uint64_t seed = 11;
constexpr const char* ns = "fleet";

/// The end of a log, for failure messages (progress lines make logs long).
std::string tail(const std::string& path, size_t chars = 6000) {
  auto text = slurp(path);
  return text.size() <= chars ? text : "..." + text.substr(text.size() - chars);
}

long long ms_between(steady::time_point from, steady::time_point to) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(to - from).count();
}

rollup_rows reference(uint64_t from, uint64_t to) {
  return reference_range(seed, from, to);
}

std::string key(const std::string& suffix) {
  return std::string("{tally:") + ns + "}:" + suffix;
}


/// Failover settings every process of a test shares (--opt NAME=VALUE).
struct fleet_options {
  std::string health_check_interval = "200ms";
  std::string health_check_timeout = "1s";
  std::string grace_period = "3s";
  std::string auto_fallback_interval = "8s";
  std::string repush_after = "2s";
  // Commands of the data path (the drivers default to 500 ms): a stall of a
  // healthy server on this loaded machine should not trip the failure
  // detector.
  std::vector<std::string> more = {"redis_timeout=1s"};  // further NAME=VALUE

  std::vector<std::string> args() const {
    std::vector<std::string> kv = {"health_check_interval=" + health_check_interval,
                                   "health_check_timeout=" + health_check_timeout,
                                   "grace_period=" + grace_period,
                                   "auto_fallback_interval=" + auto_fallback_interval,
                                   "repush_after=" + repush_after};
    kv.insert(kv.end(), more.begin(), more.end());
    std::vector<std::string> out;
    for (auto& x : kv) {
      out.push_back("--opt");
      out.push_back(x);
    }
    return out;
  }
};

/// A producer-only instance recording events i in [0, n) with
/// i % stride == offset at `rate` events/s; it waits (up to 60 s) until a
/// leader confirmed all its batches before it stops.
std::vector<std::string> producer_args(const std::vector<std::string>& urls, const std::string& id, uint64_t n,
                                       uint64_t stride, uint64_t offset, double rate, const fleet_options& o) {
  std::vector<std::string> args = {TALLY_DRIVER_PATH};
  for (const auto& url : urls)
    args.insert(args.end(), {"--redis", url});
  args.insert(args.end(), {"--ns", ns, "--instance", id, "--seed", std::to_string(seed), "--from", "0", "--to",
                           std::to_string(n), "--stride", std::to_string(stride), "--offset", std::to_string(offset),
                           "--threads", "1", "--buffer-ms", "100", "--rate", std::to_string(rate),
                           "--wait-applied-ms", "60000"});
  auto opts = o.args();
  args.insert(args.end(), opts.begin(), opts.end());
  return args;
}

/// A flushing instance (no events of its own) until SIGTERM.
std::vector<std::string> leader_args(const std::vector<std::string>& urls, const std::string& id,
                                     const std::string& pg_url, const fleet_options& o) {
  std::vector<std::string> args = {TALLY_FLUSH_NODE_PATH};
  for (const auto& url : urls)
    args.insert(args.end(), {"--redis", url});
  args.insert(args.end(), {"--ns", ns, "--instance", id, "--postgres", pg_url, "--flush-ms", "100", "--lease-ms",
                           "1000"});
  auto opts = o.args();
  args.insert(args.end(), opts.begin(), opts.end());
  return args;
}

void expect_exit_ok(proc& p, std::chrono::milliseconds deadline) {
  int status = wait_process(p.pid, deadline);
  ASSERT_NE(status, -1) << p.name << " did not finish; log tail:\n" << tail(p.log);
  p.pid = -1;
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << p.name << " failed; log tail:\n" << tail(p.log);
}

/// SIGTERM and a clean exit (final flush, lease released).
void stop_node(proc& p) {
  // A SIGTERM before main() blocked it would kill the node outright.
  ASSERT_TRUE(wait_for([&] { return p.stat("flushes") >= 0; }, 30s)) << p.name << " never came up";
  p.signal(SIGTERM);
  expect_exit_ok(p, 90s);
}

/// Polls Postgres until every row equals `expected`; returns when that was
/// seen, or nullopt after `deadline` or once `give_up()` holds, with the
/// last difference in `diff`.
std::optional<steady::time_point> wait_exact(const postgres_server& pg, const rollup_rows& expected,
                                             std::chrono::milliseconds deadline, std::string& diff,
                                             const std::function<bool()>& give_up = [] { return false; }) {
  auto until = steady::now() + deadline;
  for (;;) {
    if (give_up())
      return std::nullopt;
    try {
      diff = diff_rows(expected, read_postgres(pg));
    } catch (const std::exception& e) {  // tables not created yet
      diff = e.what();
    }
    auto now = steady::now();
    if (diff.empty())
      return now;
    if (now >= until)
      return std::nullopt;
    std::this_thread::sleep_for(100ms);  // poll period
  }
}

void expect_postgres_equals(const postgres_server& pg, const rollup_rows& expected) {
  EXPECT_EQ(diff_rows(expected, read_postgres(pg)), "");
}

/// One writer per epoch, as recorded with every applied batch: the lease is
/// taken again in each new active database, and Postgres fencing keeps it
/// to one leader per epoch.
void expect_one_leader_per_epoch(const postgres_server& pg) {
  EXPECT_EQ(pg.psql("SELECT epoch FROM tally_applied_batches GROUP BY epoch HAVING count(DISTINCT leader) > 1"), "");
}

/// The fleet part of one progress line (tests/support/fleet_status.hpp).
struct fleet_line {
  std::string active;  // display URL, or "none"
  long long switches = 0;
  long long by_reason[5] = {};  // order of tally::redis_switch_reasons
  long long journaled = 0, replayed = 0, repushed = 0;

  long long health_check() const { return by_reason[0]; }
  long long failure_detector() const { return by_reason[1]; }
  long long fail_back() const { return by_reason[2]; }
  long long sentinel() const { return by_reason[4]; }
  /// Switches a detector made (health_check or failure_detector): away from
  /// a failed database, or from none to a recovered one.
  long long detected() const { return by_reason[0] + by_reason[1]; }

  bool operator==(const fleet_line& o) const {
    return active == o.active && switches == o.switches && std::equal(by_reason, by_reason + 5, o.by_reason)
           && journaled == o.journaled && replayed == o.replayed && repushed == o.repushed;
  }
  std::string describe() const {
    std::string s = "active=" + active + " switches=" + std::to_string(switches);
    for (int i = 0; i < 5; ++i)
      s += std::string(" ") + redis_switch_reasons[i] + "=" + std::to_string(by_reason[i]);
    return s + " repushed=" + std::to_string(repushed);
  }
};

long long field_of(const std::string& line, const std::string& name) {
  auto at = line.find(" " + name + "=");
  return at == std::string::npos ? -1 : std::atoll(line.c_str() + at + name.size() + 2);
}

std::optional<fleet_line> parse_fleet_line(const std::string& line) {
  auto at = line.find(" active=");
  if (at == std::string::npos || line.find(" switches=") == std::string::npos)
    return std::nullopt;
  fleet_line f;
  auto start = at + 8;
  f.active = line.substr(start, line.find(' ', start) - start);
  f.switches = field_of(line, "switches");
  for (int i = 0; i < 5; ++i)
    f.by_reason[i] = field_of(line, redis_switch_reasons[i]);
  f.journaled = field_of(line, "journaled");
  f.replayed = field_of(line, "replayed");
  f.repushed = field_of(line, "repushed");
  return f;
}

/// Tails the logs of the processes it watches (every 20 ms) and keeps every
/// change of each one's fleet line with the time the test saw it.
class watcher {
public:
  struct change {
    steady::time_point at;
    std::string who;
    fleet_line line;
  };

  watcher() : thread_([this] { run(); }) {}
  ~watcher() {
    done_ = true;
    thread_.join();
  }
  watcher(const watcher&) = delete;
  watcher& operator=(const watcher&) = delete;

  void watch(const proc& p) {
    std::lock_guard<std::mutex> lock(mu_);
    sources_.push_back({p.name, p.log, 0, {}, std::nullopt});
  }

  std::optional<fleet_line> latest(const std::string& who) {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& s : sources_)
      if (s.who == who)
        return s.last;
    return std::nullopt;
  }

  /// The first change of `who` seen at or after `since` whose line
  /// satisfies `pred`.
  template <class Pred>
  std::optional<change> first(const std::string& who, steady::time_point since, Pred pred) {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& c : changes_)
      if (c.who == who && c.at >= since && pred(c.line))
        return c;
    return std::nullopt;
  }

  /// Like first(), with the change of `who` just before it (what the line
  /// said before), so a test can tell which counter the switch moved.
  template <class Pred>
  std::optional<std::pair<change, change>> first_with_previous(const std::string& who, steady::time_point since,
                                                               Pred pred) {
    std::lock_guard<std::mutex> lock(mu_);
    std::optional<change> previous;
    for (const auto& c : changes_) {
      if (c.who != who)
        continue;
      if (c.at >= since && pred(c.line))
        return previous ? std::make_optional(std::make_pair(*previous, c)) : std::nullopt;
      previous = c;
    }
    return std::nullopt;
  }

  /// Every change of `who` seen within [from, to).
  std::vector<change> between(const std::string& who, steady::time_point from, steady::time_point to) {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<change> out;
    for (const auto& c : changes_)
      if (c.who == who && c.at >= from && c.at < to)
        out.push_back(c);
    return out;
  }

  /// Whether the latest line of every process in `who` satisfies `pred`.
  template <class Pred>
  bool all(const std::vector<proc*>& who, Pred pred) {
    for (auto* p : who) {
      auto l = latest(p->name);
      if (!l || !pred(*l))
        return false;
    }
    return true;
  }

private:
  struct source {
    std::string who, path;
    std::streamoff offset = 0;
    std::string partial;
    std::optional<fleet_line> last;
  };

  void run() {
    while (!done_) {
      poll();
      std::this_thread::sleep_for(20ms);  // tail cadence
    }
  }

  void poll() {
    std::lock_guard<std::mutex> lock(mu_);
    auto now = steady::now();
    for (auto& s : sources_) {
      std::ifstream in(s.path, std::ios::binary);
      if (!in)
        continue;
      in.seekg(s.offset);
      std::string chunk((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      s.offset += static_cast<std::streamoff>(chunk.size());
      s.partial += chunk;
      size_t begin = 0;
      for (size_t nl = s.partial.find('\n'); nl != std::string::npos; nl = s.partial.find('\n', begin)) {
        auto parsed = parse_fleet_line(s.partial.substr(begin, nl - begin));
        begin = nl + 1;
        if (!parsed || (s.last && *s.last == *parsed))
          continue;
        s.last = parsed;
        changes_.push_back({now, s.who, *parsed});
      }
      s.partial.erase(0, begin);
    }
  }

  std::mutex mu_;
  std::vector<source> sources_;
  std::vector<change> changes_;
  std::atomic<bool> done_{false};
  std::thread thread_;  // last: starts once the members above exist
};

/// Starts `count` producers over [0, n) (stride count) and one or more
/// leaders; every one is watched.
struct fleet_run {
  procs ps{"fleet"};
  watcher w;
  std::vector<proc*> producers, leaders, everyone;  // into ps.all

  void producers_of(const std::string& prefix, const std::vector<std::string>& urls, uint64_t n, int count,
                    double rate_each, const fleet_options& o) {
    for (int k = 0; k < count; ++k) {
      auto& p = ps.start(prefix + "-producer-" + std::to_string(k),
                         producer_args(urls, "p" + std::to_string(k), n, static_cast<uint64_t>(count),
                                       static_cast<uint64_t>(k), rate_each, o));
      producers.push_back(&p);
      everyone.push_back(&p);
      w.watch(p);
    }
  }
  void leaders_of(const std::string& prefix, const std::vector<std::string>& urls, const std::string& pg_url,
                  int count, const fleet_options& o) {
    for (int k = 0; k < count; ++k) {
      auto& l = ps.start(prefix + "-leader-" + std::to_string(k),
                         leader_args(urls, "l" + std::to_string(k), pg_url, o));
      leaders.push_back(&l);
      everyone.push_back(&l);
      w.watch(l);
    }
  }

  long long flushes() const {
    long long n = 0;
    for (auto* l : leaders)
      n += std::max(0LL, l->stat("flushes"));
    return n;
  }

  /// Mid-stream: everyone uses `active`, a leader has flushed, and each
  /// producer has recorded at least `recorded` events.
  bool mid_stream(const std::string& active, long long recorded) {
    if (!w.all(everyone, [&](const fleet_line& l) { return l.active == active; }) || flushes() == 0)
      return false;
    for (auto* p : producers)
      if (p->stat("recorded") < recorded)
        return false;
    return true;
  }

  /// The end of every log, and how each process ended if it did (a crash
  /// shows here as a signal).
  std::string logs() const {
    std::string out;
    for (auto* p : everyone) {
      std::string how = "running";
      int status = 0;
      if (p->pid <= 0)
        how = "reaped";
      else if (::waitpid(p->pid, &status, WNOHANG) == p->pid) {
        how = WIFSIGNALED(status) ? "killed by signal " + std::to_string(WTERMSIG(status))
                                  : "exited with " + std::to_string(WEXITSTATUS(status));
        p->pid = -1;  // reaped: nothing left to kill
      }
      out += "\n--- " + p->name + " (" + how + "):\n" + tail(p->log, 3000);
    }
    return out;
  }

  /// The first leader that died while it should run (a crash), or "".
  std::string dead_leader() const {
    for (auto* l : leaders)
      if (l->pid > 0 && !process_exists(l->pid))
        return l->name;
    return "";
  }

  /// Waits until every producer exited 0; gives up at once when a leader
  /// died (the producers would wait for it in vain).
  void producers_exit_ok(std::chrono::milliseconds deadline) {
    ASSERT_TRUE(wait_for([&] {
      if (!dead_leader().empty())
        return true;
      return std::none_of(producers.begin(), producers.end(),
                          [](const proc* p) { return p->pid > 0 && process_exists(p->pid); });
    }, deadline, 50ms)) << "producers still running" << logs();
    ASSERT_EQ(dead_leader(), "") << "a leader died" << logs();
    for (auto* p : producers)
      expect_exit_ok(*p, 10s);
  }

  /// Every producer saw all its batches reported applied before it stopped
  /// (its retention was empty: tally_driver --wait-applied-ms).
  void expect_all_applied() {
    for (auto* p : producers)
      EXPECT_NE(slurp(p->log).find("driver: all applied"), std::string::npos)
        << p->name << " still held unconfirmed batches when it stopped:\n" << tail(p->log);
  }

  /// Polls Postgres until the totals equal `expected` (see wait_exact);
  /// gives up at once when a leader died.
  std::optional<steady::time_point> exact(const postgres_server& pg, const rollup_rows& expected, std::string& diff) {
    return wait_exact(pg, expected, 90s, diff, [&] { return !dead_leader().empty(); });
  }

  void stop_leaders() {
    for (auto* l : leaders)
      stop_node(*l);
  }
};

} // namespace

// start() returns with the active database chosen: the first thing an
// operator or the first heartbeat asks of Redis must not meet "no healthy
// redis database" only because the process is a millisecond old. A
// database that refuses connections gets its verdict just as fast, so it
// does not hold start() for the probe timeout.
TEST(Fleet, StartReturnsWithTheActiveDatabaseChosen) {
  redis_server up, down;
  down.stop();
  for (int round = 0; round < 5; ++round) {
    config cfg;
    cfg.ns = ns;
    cfg.instance_id = "starter-" + std::to_string(round);
    cfg.redis_urls = {down.url() + "?weight=2", up.url() + "?weight=1"};
    cfg.shards = 1;
    cfg.redis_timeout = 5000ms;
    cfg.health_check_timeout = 5000ms;
    cfg.state_dir = temp_dir("tally-state-");
    runtime rt;
    auto t0 = steady::now();
    ASSERT_EQ(rt.start(cfg), "");
    EXPECT_LT(steady::now() - t0, 4000ms) << "a refused connect held start() for the probe timeout";
    auto dbs = rt.redis_databases();
    ASSERT_EQ(dbs.size(), 2u);
    EXPECT_EQ(dbs[0].state, "open");
    EXPECT_FALSE(dbs[0].active);
    EXPECT_EQ(dbs[1].state, "closed");
    EXPECT_TRUE(dbs[1].active);
    auto view = rt.cluster();
    EXPECT_EQ(view.error, "");
    EXPECT_TRUE(std::any_of(view.instances.begin(), view.instances.end(),
                            [&](const instance_info& i) { return i.id == cfg.instance_id; }))
      << "the first heartbeat did not reach the active database";
    rt.stop();
  }
}

// The active database (A, weight 2) is killed with SIGKILL in the middle of
// the stream and never comes back. Every process switches to B (weight 1)
// at once; what A held (batches, inflight lists, applied sets) is gone, and
// producer retention re-pushes every unconfirmed batch to B right after the
// switch. Totals end exact. Prints the time from the kill to the switch
// (seen in progress lines) and to exact totals in Postgres.
TEST(Fleet, ActiveDatabaseKilledForGood) {
  redis_server a, b;
  postgres_server pg;
  fleet_run run;
  fleet_options o;  // health checks every 200 ms, probes bounded by 1 s
  const std::vector<std::string> urls = {a.url() + "?weight=2", b.url() + "?weight=1"};
  constexpr uint64_t n = 20'000;
  run.leaders_of("kill", urls, pg.url(), 2, o);  // two: the lease must be re-taken in B by one of them
  run.producers_of("kill", urls, n, 2, 2000, o);  // 10,000 each at 2,000/s: about 5 s
  auto expected = reference(0, n);
  ASSERT_TRUE(wait_for([&] { return run.mid_stream(a.url(), 2000); }, 60s, 50ms)) << run.logs();

  const auto killed = steady::now();
  a.kill();
  ASSERT_TRUE(wait_for([&] { return run.w.all(run.everyone, [&](const fleet_line& l) { return l.active == b.url(); }); },
                       30s))
    << run.logs();
  long long slowest_switch = 0;
  std::string per_process;
  for (auto* p : run.everyone) {
    auto seen = run.w.first(p->name, killed, [&](const fleet_line& l) { return l.active == b.url(); });
    ASSERT_TRUE(seen.has_value()) << p->name;
    long long ms = ms_between(killed, seen->at);
    slowest_switch = std::max(slowest_switch, ms);
    per_process += " " + p->name + "=" + std::to_string(ms) + "ms("
                   + (seen->line.failure_detector() > 0 ? "failure_detector" : "health_check") + ")";
  }
  std::cout << "fleet: kill-to-switch " << slowest_switch << " ms (slowest process; per process:" << per_process
            << ")\n";

  ASSERT_NO_FATAL_FAILURE(run.producers_exit_ok(120s));
  const auto producers_done = steady::now();
  std::string diff;
  auto exact = run.exact(pg, expected, diff);
  ASSERT_TRUE(exact.has_value()) << diff << run.logs();
  std::cout << "fleet: kill-to-exact " << ms_between(killed, *exact) << " ms (producers finished "
            << ms_between(killed, producers_done) << " ms after the kill, exact "
            << ms_between(producers_done, *exact) << " ms later)\n";

  // Each left A because a detector saw it fail, and nothing moved back to
  // the dead A. (The exact count is not asserted: on a loaded machine a
  // stall of B longer than a probe timeout adds a B -> none -> B pair.)
  for (auto* p : run.everyone) {
    auto l = run.w.latest(p->name);
    ASSERT_TRUE(l.has_value());
    EXPECT_EQ(l->active, b.url()) << p->name;
    EXPECT_GE(l->detected(), 1) << p->name << ": " << l->describe();
    EXPECT_EQ(l->fail_back(), 0) << p->name << ": " << l->describe();
  }
  ASSERT_NO_FATAL_FAILURE(run.stop_leaders());
  EXPECT_EQ(redis_command(b.port(), {"LLEN", key("batches")}).value, "0");
  expect_postgres_equals(pg, expected);
  expect_one_leader_per_epoch(pg);
}

// The active database (A, weight 2) hangs: SIGSTOP, so connections are
// accepted by the kernel and nothing answers. Each process switches to B
// within about one health_check_interval plus one health_check_timeout. A is
// resumed (SIGCONT) once every process is on B; it answers again at once,
// but must not become active during the grace period counted from that
// recovery; afterwards the move back to A is made by the fail-back timer
// (reason fail_back), never by a health check. Totals end exact.
//
// The fail-back timer (2 s) is shorter than the grace period (4 s) on
// purpose: were A trusted early, the next fail-back tick would move to it
// well inside the grace window, where this test looks.
TEST(Fleet, ActiveDatabaseHung) {
  redis_server a, b;
  postgres_server pg;
  fleet_run run;
  fleet_options o;
  o.health_check_interval = "300ms";
  o.health_check_timeout = "500ms";
  o.grace_period = "4s";
  o.auto_fallback_interval = "2s";
  // Nothing is lost here, so nothing may need re-pushing after a delay. A
  // long repush_after (the unconditional copy would come only after 10 x
  // that) shows that retention learns of batches applied while B was
  // active, reported in B, after the move back to A.
  o.repush_after = "60s";
  constexpr auto interval = 300ms, timeout = 500ms, grace = 4000ms;
  const std::vector<std::string> urls = {a.url() + "?weight=2", b.url() + "?weight=1"};
  constexpr uint64_t n = 24'000;
  run.leaders_of("hung", urls, pg.url(), 1, o);
  run.producers_of("hung", urls, n, 2, 600, o);  // 12,000 each at 600/s: about 20 s, past the fail-back
  auto expected = reference(0, n);
  ASSERT_TRUE(wait_for([&] { return run.mid_stream(a.url(), 900); }, 60s, 50ms)) << run.logs();

  struct resume_guard {  // an ASSERT returning early must not leave A stopped
    pid_t pid;
    ~resume_guard() {
      if (pid > 0)
        ::kill(pid, SIGCONT);
    }
  } guard{a.pid()};
  const auto stopped = steady::now();
  ASSERT_EQ(::kill(a.pid(), SIGSTOP), 0);
  ASSERT_TRUE(wait_for([&] { return run.w.all(run.everyone, [&](const fleet_line& l) { return l.active == b.url(); }); },
                       30s))
    << run.logs();
  // The bound: the next round starts within one interval, its probe hangs
  // for one timeout; 2 s of margin cover the progress lines' period and a
  // noisy machine.
  const long long bound = (timeout + interval + 2000ms).count();
  for (auto* p : run.everyone) {
    auto seen = run.w.first_with_previous(p->name, stopped, [&](const fleet_line& l) { return l.active == b.url(); });
    ASSERT_TRUE(seen.has_value()) << p->name;
    const auto& [before, after] = *seen;
    long long ms = ms_between(stopped, after.at);
    std::cout << "fleet: hung " << p->name << " stop-to-switch " << ms << " ms (" << after.line.describe() << ")\n";
    EXPECT_LE(ms, bound) << p->name;
    // A detector made that switch (a health check, or the failure detector
    // when commands timed out first).
    EXPECT_EQ(after.line.detected(), before.line.detected() + 1)
      << p->name << ": " << before.line.describe() << " -> " << after.line.describe();
  }

  const auto resumed = steady::now();
  ASSERT_EQ(::kill(a.pid(), SIGCONT), 0);
  guard.pid = -1;
  ASSERT_TRUE(wait_for([&] { return run.w.all(run.everyone, [&](const fleet_line& l) { return l.active == a.url(); }); },
                       grace + 30s))
    << run.logs();
  for (auto* p : run.everyone) {
    // Within the grace window no line this process printed showed A.
    for (const auto& c : run.w.between(p->name, resumed, resumed + grace))
      EXPECT_NE(c.line.active, a.url()) << p->name << " used A " << ms_between(resumed, c.at)
                                        << " ms after it recovered, inside the grace period: " << c.line.describe();
    auto back = run.w.first_with_previous(p->name, resumed, [&](const fleet_line& l) { return l.active == a.url(); });
    ASSERT_TRUE(back.has_value()) << p->name;
    const auto& [before, after] = *back;
    long long ms = ms_between(resumed, after.at);
    std::cout << "fleet: hung " << p->name << " resume-to-fail-back " << ms << " ms (" << after.line.describe()
              << ")\n";
    EXPECT_GE(ms, grace.count()) << p->name;
    // The way back was the fail-back timer: the switch into A moved the
    // fail_back counter, not a detector's. Unless B itself failed a check
    // meanwhile (a loaded machine stalls it past the 500 ms probe timeout):
    // then leaving B for the healthy A is a detector's switch, also right.
    if (after.line.detected() == before.line.detected()) {
      EXPECT_EQ(after.line.fail_back(), before.line.fail_back() + 1)
        << p->name << ": " << before.line.describe() << " -> " << after.line.describe();
    } else {
      std::cout << "fleet: hung " << p->name << " left B by a detector (B failed a check): "
                << before.line.describe() << " -> " << after.line.describe() << "\n";
      EXPECT_EQ(after.line.fail_back(), before.line.fail_back()) << p->name;
    }
  }

  ASSERT_NO_FATAL_FAILURE(run.producers_exit_ok(120s));
  run.expect_all_applied();
  std::string diff;
  ASSERT_TRUE(run.exact(pg, expected, diff).has_value()) << diff << run.logs();
  ASSERT_NO_FATAL_FAILURE(run.stop_leaders());
  expect_postgres_equals(pg, expected);
  expect_one_leader_per_epoch(pg);
}

// The active database (A, weight 2, appendonly) is killed and restarted
// every second for 15 s while producers write (B stays up). Each cycle keeps
// A down for 400 ms, so that the health checks (a probe at least every
// 200 ms) see every outage, and up for 600 ms. Totals end exact, and the
// switches stay bounded:
//
//   A is left only when its circuit opens, and A is used again only once
//   its circuit closed, which takes a whole grace period G of health after
//   a recovery. So two switches away from A are at least G apart: during a
//   flapping phase of T seconds a process switches away at most
//   1 + floor(T / G) times, and back (always after a switch away) at most as
//   often. Per process: switches <= 2 * (1 + floor(T / G)).
//
// With T = 15 s and G = 3 s that is 12; a client trusting every recovery
// at once would switch about twice per cycle (~30). The fail-back timer is
// short (1 s) so the grace period, not the timer, is what holds it back.
TEST(Fleet, FlappingDatabase) {
  redis_server a, b;  // appendonly yes, appendfsync always: a restart keeps every write
  postgres_server pg;
  fleet_run run;
  fleet_options o;
  o.health_check_interval = "200ms";
  o.grace_period = "3s";
  o.auto_fallback_interval = "1s";
  constexpr auto grace = 3000ms;
  const std::vector<std::string> urls = {a.url() + "?weight=2", b.url() + "?weight=1"};
  constexpr uint64_t n = 24'000;
  run.leaders_of("flap", urls, pg.url(), 1, o);
  run.producers_of("flap", urls, n, 2, 600, o);  // about 20 s: flapping starts after 1.5 s and lasts 15 s
  auto expected = reference(0, n);
  ASSERT_TRUE(wait_for([&] { return run.mid_stream(a.url(), 900); }, 60s, 50ms)) << run.logs();

  // The flapping is the workload itself, paced by the clock (not a wait for
  // a condition): kill, 400 ms down, restart, until the next second.
  constexpr int cycles = 15;
  const auto flap_start = steady::now();
  long long slowest_restart = 0;  // a.start() waits for PING (AOF loaded)
  for (int cycle = 0; cycle < cycles; ++cycle) {
    const auto at = flap_start + cycle * 1000ms;
    std::this_thread::sleep_until(at);
    a.kill();
    std::this_thread::sleep_until(at + 400ms);
    const auto restarting = steady::now();
    a.start();
    slowest_restart = std::max(slowest_restart, ms_between(restarting, steady::now()));
  }
  const auto flap_end = steady::now();
  const long long flap_ms = ms_between(flap_start, flap_end);
  const long long bound = 2 * (1 + flap_ms / grace.count());
  std::cout << "fleet: flapping " << cycles << " kills over " << flap_ms << " ms, slowest restart "
            << slowest_restart << " ms\n";

  ASSERT_NO_FATAL_FAILURE(run.producers_exit_ok(120s));
  std::string diff;
  ASSERT_TRUE(run.exact(pg, expected, diff).has_value()) << diff << run.logs();
  for (auto* p : run.everyone) {
    auto l = run.w.latest(p->name);
    ASSERT_TRUE(l.has_value()) << p->name;
    std::cout << "fleet: flapping " << p->name << " over " << flap_ms << " ms: " << l->describe() << " (bound "
              << bound << ")\n";
    EXPECT_GE(l->detected(), 1) << p->name << " never left the flapping database";
    EXPECT_LE(l->switches, bound) << p->name << ": " << l->describe();
  }
  ASSERT_NO_FATAL_FAILURE(run.stop_leaders());
  expect_postgres_equals(pg, expected);
  expect_one_leader_per_epoch(pg);
}

// A producer-only instance (no Postgres; it can learn what was applied only
// from Redis) writes to one Redis WITHOUT persistence, which is killed and
// restarted empty mid-run while the leader is stopped (SIGSTOP): batches,
// the leader's inflight list, the applied sets and the lease are gone. The producer's retention pushes the
// lost batches again after repush_after (2 s) and the separate leader
// applies them; totals end exact.
TEST(Fleet, ProducerOnlyInstanceWhileRedisLosesData) {
  redis_options volatile_redis;
  volatile_redis.appendonly = false;
  redis_server redis(volatile_redis);
  postgres_server pg;
  fleet_run run;
  fleet_options o;
  o.repush_after = "2s";
  constexpr uint64_t n = 16'000;
  run.leaders_of("lose", {redis.url()}, pg.url(), 1, o);
  run.producers_of("lose", {redis.url()}, n, 1, 2000, o);  // about 8 s
  auto expected = reference(0, n);
  ASSERT_TRUE(wait_for([&] { return run.mid_stream(redis.url(), 4000); }, 60s, 50ms)) << run.logs();
  ASSERT_GT(run.producers[0]->stat("batches"), 0);

  // The leader is stopped first, so that batches wait in Redis when it
  // dies: the restart certainly loses some, and only retention can bring
  // them back. Left running, the leader may hold every outstanding batch in
  // flight at that moment, apply it after the restart, and nothing is lost.
  const pid_t leader = run.leaders[0]->pid;
  ASSERT_EQ(::kill(leader, SIGSTOP), 0);
  bool waiting = wait_for(
    [&] { return std::atol(redis_command(redis.port(), {"LLEN", key("batches")}).value.c_str()) > 0; }, 10s, 20ms);
  const auto restarted = steady::now();
  redis.kill();
  redis.start();  // empty: no AOF, no RDB
  ASSERT_EQ(::kill(leader, SIGCONT), 0);
  ASSERT_TRUE(waiting) << "no batch waited in Redis with the leader stopped" << run.logs();

  ASSERT_NO_FATAL_FAILURE(run.producers_exit_ok(120s));
  std::string diff;
  auto exact = run.exact(pg, expected, diff);
  ASSERT_TRUE(exact.has_value()) << diff << run.logs();
  std::cout << "fleet: redis-loss restart-to-exact " << ms_between(restarted, *exact) << " ms, re-pushed "
            << run.producers[0]->stat("repushed") << " batches\n";
  EXPECT_GT(run.producers[0]->stat("repushed"), 0) << "nothing was re-pushed: the restart lost nothing?"
                                                   << tail(run.producers[0]->log);
  ASSERT_NO_FATAL_FAILURE(run.stop_leaders());
  EXPECT_EQ(redis_command(redis.port(), {"LLEN", key("batches")}).value, "0");
  expect_postgres_equals(pg, expected);
  expect_one_leader_per_epoch(pg);
}

// One Sentinel database (primary + replica + redis-sentinel) under load:
// SENTINEL FAILOVER promotes the replica mid-stream. Every process follows
// the primary to its new address, counted as a switch with reason
// "sentinel". Asynchronous replication may lose acknowledged writes of the
// old primary (writes made between the promotion and the switch land on a
// server that then resyncs from the new one); retention re-pushes to the
// new address at once after the switch. Totals end exact.
//
// "At once" is what is checked: repush_after is 2 minutes here, so a batch
// the new primary lacks could otherwise come back only after 2 minutes;
// the producers (waiting at most 60 s for their batches to be confirmed)
// must see everything applied, and the totals must be exact well within
// repush_after of the failover.
TEST(Fleet, SentinelFailoverUnderLoad) {
  redis_server primary;
  redis_options replica_opts;
  replica_opts.replica_of_port = primary.port();
  redis_server replica(replica_opts);
  ASSERT_TRUE(wait_for([&] { return replica.replica_link_up(); }, 30s));
  redis_sentinel_server sentinel("fleet-primary", primary.port());
  ASSERT_TRUE(sentinel.wait_for_replicas(1, 30s));
  postgres_server pg;
  fleet_run run;
  fleet_options o;
  o.repush_after = "2m";
  constexpr auto repush_after = 120s;
  const std::string url = sentinel.url();
  constexpr uint64_t n = 20'000;
  run.leaders_of("sentinel", {url}, pg.url(), 1, o);
  run.producers_of("sentinel", {url}, n, 2, 1500, o);  // 10,000 each at 1,500/s: about 7 s
  auto expected = reference(0, n);
  ASSERT_TRUE(wait_for([&] { return run.mid_stream(url, 2500); }, 60s, 50ms)) << run.logs();

  const auto failed_over = steady::now();
  sentinel.failover();
  ASSERT_TRUE(wait_for([&] { return run.w.all(run.everyone, [](const fleet_line& l) { return l.sentinel() >= 1; }); },
                       30s))
    << run.logs();
  EXPECT_EQ(sentinel.master_address().second, replica.port());
  for (auto* p : run.everyone) {
    auto seen = run.w.first(p->name, failed_over, [](const fleet_line& l) { return l.sentinel() >= 1; });
    ASSERT_TRUE(seen.has_value()) << p->name;
    std::cout << "fleet: sentinel " << p->name << " failover-to-switch " << ms_between(failed_over, seen->at)
              << " ms (" << seen->line.describe() << ")\n";
    EXPECT_EQ(seen->line.active, url) << p->name;
  }

  ASSERT_NO_FATAL_FAILURE(run.producers_exit_ok(120s));
  run.expect_all_applied();
  std::string diff;
  auto exact = run.exact(pg, expected, diff);
  ASSERT_TRUE(exact.has_value()) << diff << run.logs();
  const long long to_exact = ms_between(failed_over, *exact);
  std::cout << "fleet: sentinel failover-to-exact " << to_exact << " ms; re-pushed:";
  for (auto* p : run.producers)
    std::cout << " " << p->name << "=" << p->stat("repushed");
  std::cout << "\n";
  EXPECT_LT(to_exact, std::chrono::duration_cast<std::chrono::milliseconds>(repush_after).count() / 2)
    << "exact only after retention's repush_after timer: the switch of address did not re-push";
  ASSERT_NO_FATAL_FAILURE(run.stop_leaders());
  expect_postgres_equals(pg, expected);
  expect_one_leader_per_epoch(pg);
}

// The embedding API: a tally::runtime in this process with two databases
// and a config::on_redis_switch callback. The active one (A) is killed: the
// callback hears from=A to=B reason=health_check, redis_databases() shows
// B active and A's circuit open, stop() completes, and the totals (events
// recorded before and after the kill) end exact. The failure detector is
// switched off (failure_min_failures very high) so that the health check,
// the path under test, is what notices.
TEST(Fleet, EmbeddedSwitchCallback) {
  redis_server a, b;
  postgres_server pg;
  struct seen_switch {
    redis_switch ev;
    steady::time_point at;
  };
  std::mutex mu;
  std::vector<seen_switch> switches;
  auto switches_seen = [&] {
    std::lock_guard<std::mutex> lock(mu);
    return switches;
  };

  config cfg;
  cfg.ns = ns;
  cfg.instance_id = "embedded";
  cfg.redis_urls = {a.url() + "?weight=2", b.url() + "?weight=1"};
  cfg.postgres_url = pg.url();
  cfg.shards = 1;
  cfg.worker_threads = 2;
  cfg.buffer_interval = 100ms;
  cfg.flush_interval = 100ms;
  cfg.lease_ttl = 1000ms;
  cfg.redis_timeout = 500ms;
  cfg.retry_backoff_max = 500ms;
  cfg.health_check_interval = 200ms;
  cfg.health_check_timeout = 500ms;
  cfg.grace_period = 3000ms;
  cfg.auto_fallback_interval = 8000ms;
  cfg.repush_after = 2000ms;
  cfg.failure_min_failures = 1000000;
  cfg.state_dir = temp_dir("tally-state-");
  cfg.on_redis_switch = [&](const redis_switch& s) {
    std::lock_guard<std::mutex> lock(mu);
    switches.push_back({s, steady::now()});
  };
  runtime rt;
  ASSERT_EQ(rt.start(cfg), "");
  auto active_url = [&] {
    for (const auto& db : rt.redis_databases())
      if (db.active)
        return db.url;
    return std::string("none");
  };
  ASSERT_TRUE(wait_for([&] { return active_url() == a.url(); }, 30s)) << active_url();

  constexpr uint64_t n = 12'000;
  auto record_range = [&](uint64_t from, uint64_t to) {
    for (uint64_t i = from; i < to; ++i) {
      auto ev = generate(seed, i);
      for (;;) {
        auto err = rt.record(ev.view());
        if (!err)
          break;
        ASSERT_EQ(err.code, errc::backpressure) << "event " << i << ": " << to_string(err.code);
        std::this_thread::sleep_for(200us);
      }
    }
  };
  record_range(0, n / 2);
  ASSERT_TRUE(wait_for([&] { return rt.snapshot().flushes > 0 && rt.snapshot().pending_batches == 0; }, 60s));

  const auto killed = steady::now();
  a.kill();
  ASSERT_TRUE(wait_for([&] { return !switches_seen().empty(); }, 30s)) << active_url();
  auto first = switches_seen().front();
  std::cout << "fleet: embedded kill-to-callback " << ms_between(killed, first.at) << " ms (" << first.ev.from
            << " -> " << first.ev.to << ", " << first.ev.reason << ": " << first.ev.detail << ")\n";
  EXPECT_EQ(first.ev.from, a.url());
  EXPECT_EQ(first.ev.to, b.url());
  EXPECT_EQ(first.ev.reason, "health_check");
  EXPECT_FALSE(first.ev.detail.empty());

  auto dbs = rt.redis_databases();
  ASSERT_EQ(dbs.size(), 2u);
  EXPECT_EQ(dbs[0].url, a.url());
  EXPECT_EQ(dbs[0].weight, 2u);
  EXPECT_FALSE(dbs[0].active);
  EXPECT_EQ(dbs[0].state, "open");
  EXPECT_GE(dbs[0].opens, 1u);
  EXPECT_FALSE(dbs[0].last_error.empty());
  EXPECT_EQ(dbs[1].url, b.url());
  EXPECT_TRUE(dbs[1].active);
  EXPECT_EQ(dbs[1].state, "closed");
  EXPECT_EQ(dbs[1].address, "127.0.0.1:" + std::to_string(b.port()));
  EXPECT_EQ(rt.snapshot().redis_switches[0], 1u);

  record_range(n / 2, n);
  auto expected = reference(0, n);
  std::string diff;
  ASSERT_TRUE(wait_exact(pg, expected, 90s, diff).has_value()) << diff;

  const auto stopping = steady::now();
  rt.stop(30s);
  const long long stop_ms = ms_between(stopping, steady::now());
  std::cout << "fleet: embedded stop " << stop_ms << " ms\n";
  EXPECT_LT(stop_ms, 30000);
  EXPECT_EQ(rt.snapshot().pending_batches, 0u);
  EXPECT_EQ(switches_seen().size(), 1u);
  expect_postgres_equals(pg, expected);
  expect_one_leader_per_epoch(pg);
}

// Redis stalls every write (CLIENT PAUSE WRITE: what a slow fsync or a
// failover pause looks like to a client) while a leader flushes, three
// times. Commands time out; whichever the flusher was sending fails,
// among them, sooner or later, its periodic scan for orphaned inflight
// lists. After any failed command the leader must carry on (retry with a
// fresh connection) and never use the connection a failed command dropped.
// Totals end exact.
//
// The lease (2 s) stays valid through most of a pause, so the flusher keeps
// cycling, and its orphan scan (every lease_ttl / 2) falls due inside the
// pause; the failure detector is kept out (the flusher's own error paths are
// under test, not a switch: there is one database).
TEST(Fleet, LeaderSurvivesRedisWriteStalls) {
  redis_server redis;
  postgres_server pg;
  fleet_run run;
  fleet_options o;
  o.more = {"redis_timeout=500ms", "failure_min_failures=1000000", "lease_ttl=2s"};
  constexpr uint64_t n = 12'000;
  run.leaders_of("stall", {redis.url()}, pg.url(), 1, o);
  run.producers_of("stall", {redis.url()}, n, 1, 1000, o);  // about 12 s: the producer registers, so the
                                                            // leader's orphan scan has a script to run
  auto expected = reference(0, n);
  ASSERT_TRUE(wait_for([&] { return run.mid_stream(redis.url(), 1000); }, 60s, 50ms)) << run.logs();

  for (int pause = 0; pause < 3; ++pause) {
    const long long flushes = run.flushes();
    ASSERT_EQ(redis_command(redis.port(), {"CLIENT", "PAUSE", "2000", "WRITE"}).type, '+');
    // A write of our own returns when the pause is over.
    ASSERT_EQ(redis_command(redis.port(), {"SET", "fleet-test:pause", std::to_string(pause)}, "", 10s).type, '+');
    ASSERT_EQ(run.dead_leader(), "") << "a leader died during pause " << pause << run.logs();
    // The leader is back at work before the next pause.
    ASSERT_TRUE(wait_for([&] { return run.flushes() > flushes || !run.dead_leader().empty(); }, 30s)) << run.logs();
  }
  EXPECT_NE(slurp(run.leaders[0]->log).find("timed out"), std::string::npos)
    << "no command of the leader timed out: the pauses missed it" << tail(run.leaders[0]->log);

  ASSERT_NO_FATAL_FAILURE(run.producers_exit_ok(120s));
  std::string diff;
  ASSERT_TRUE(run.exact(pg, expected, diff).has_value()) << diff << run.logs();
  ASSERT_NO_FATAL_FAILURE(run.stop_leaders());
  expect_postgres_equals(pg, expected);
  expect_one_leader_per_epoch(pg);
}
