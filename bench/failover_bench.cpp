// bench/failover_bench.cpp — how long a kill -9 of the active Redis database
// costs: time to the switch, and time until Postgres holds exact totals.
//
// Setup (all real processes from tests/harness): two redis-servers A and B
// (appendonly yes, appendfsync always) with equal weights, one postgres, and
// one embedded tally::runtime in this process with a Postgres URL (so it
// takes the lease and flushes) and config::on_redis_switch stamping every
// switch with the steady clock. Equal weights make the active database
// alternate: after A is killed B is active, and a recovered A is never
// preferred to B (fail-back only moves to a strictly higher weight).
//
// One round:
//   1. record a slice of generated events (tests/support/workload.hpp) with
//      record_durable and wait for every ack: the whole slice is in the
//      active database's stage-1 list (or already flushed) before the kill;
//   2. wait a random 0..--phase-ms (default: one probe period, i.e.
//      health_check_interval + (health_check_probes - 1) x probe delay;
//      uniform, fixed seed), so that the kill lands at a random phase of
//      the health checks rather than at a fixed offset after the previous
//      round's recovery verdict; then SIGKILL the active redis-server (t0);
//   3. (a) kill -> switch: the on_redis_switch callback moving away from it;
//   4. (b) kill -> exact, watched at the same time as (a) (a flush under way
//      at the kill may commit before the switch): poll Postgres every
//      --poll-ms until the sum of `requests` in tally_minute and the sum of
//      `spend` of the `key` rows of tally_spend equal the independent
//      reference of everything recorded so far; then every row of every
//      table is compared (untimed), and a total above the reference (a
//      double count) is a failure;
//   5. restart the killed server on the same port and dir, and wait until
//      runtime::redis_databases() shows its circuit closed again (after the
//      grace period) before the next round (not after the last one).
//
// Nothing is recorded between the kill and the exact totals, so the failure
// is noticed by the health checks and by the failure detector over the
// commands the runtime sends on its own (lease renewal, flusher, retention,
// registry), not by a stream of writes.
//
// Prints the command, the machine, the non-default options, one line per
// round, and p50/p99/min/max of (a) and (b) (nearest rank: with 20 kills p99
// is the slowest one). Exit status 1 when there is no switch or no exact
// totals within --deadline-s, or a double count is seen; timing goals never
// fail the run.
// Runtime log lines go to stderr, with a "failover_bench: round N: kill"
// marker line before each kill, to explain a slow round.
//
//   failover_bench [--rounds 20] [--events 2000] [--poll-ms 10] [--deadline-s 60] [--phase-ms MS]
//                  [--log-level debug|info|warn|error|off]   (runtime log lines on stderr; default info)
//                  [--opt NAME=VALUE ...]      (any tallyd option, e.g. flush_interval=100ms)
#include "adapters/pg_client.hpp"
#include "core/log.hpp"
#include "runtime/options.hpp"
#include "tally/tally.hpp"
#include "tests/harness/servers.hpp"
#include "tests/support/postgres_rows.hpp"
#include "tests/support/workload.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <ctime>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <sys/utsname.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace tally;
using namespace tally::testing;
using namespace std::chrono_literals;

namespace {

using steady = std::chrono::steady_clock;

constexpr uint64_t seed = 29;
constexpr const char* ns = "failover";

struct bench_args {
  int rounds = 20;
  uint64_t events = 2000;
  int poll_ms = 10;
  int deadline_s = 60;
  int phase_ms = -1;  // -1: one probe period
  std::vector<std::pair<std::string, std::string>> opts;
};

long long ms_between(steady::time_point from, steady::time_point to) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(to - from).count();
}

std::string first_line_of(const std::string& path, const std::string& prefix) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(prefix, 0) == 0)
      return line.substr(line.find(':') + 1);
  return "?";
}

std::string command_output(const std::string& cmd) {
  std::string out;
  if (FILE* p = ::popen(cmd.c_str(), "r")) {
    char buf[256];
    while (std::fgets(buf, sizeof buf, p))
      out += buf;
    ::pclose(p);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == ' '))
    out.pop_back();
  return out;
}

std::string trim(std::string s) {
  auto b = s.find_first_not_of(" \t");
  return b == std::string::npos ? std::string() : s.substr(b);
}

std::string utc_now() {
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03lldZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<long long>(ms));
  return buf;
}

void print_machine(int argc, char** argv) {
  std::string cmd;
  for (int i = 0; i < argc; ++i)
    cmd += (i ? " " : "") + std::string(argv[i]);
  utsname u{};
  ::uname(&u);
  std::printf("command: %s\n", cmd.c_str());
  std::printf("machine: %ld cores, %s, kernel %s, load %s\n", ::sysconf(_SC_NPROCESSORS_ONLN),
              trim(first_line_of("/proc/cpuinfo", "model name")).c_str(), u.release,
              command_output("cut -d' ' -f1-3 /proc/loadavg").c_str());
  std::printf("servers: %s; %s\n", command_output("redis-server --version | cut -d' ' -f1-3").c_str(),
              command_output("postgres --version 2>/dev/null || pg_ctl --version").c_str());
  std::printf("date:    %s\n", utc_now().c_str());
}

/// The options that differ from tallyd's defaults (the URLs, namespace and
/// state dir are the bench's own and not printed).
void print_options(const config& cfg) {
  daemon_options now = default_options(), defaults = default_options();
  now.runtime = cfg;
  std::string line;
  for (const auto& spec : option_table()) {
    if (spec.name == "redis_urls" || spec.name == "postgres_url" || spec.name == "state_dir" || spec.name == "ns" ||
        spec.name == "instance_id" || !spec.get)
      continue;
    auto v = spec.get(now);
    if (v != spec.get(defaults) || spec.name == "health_check_interval")
      line += " " + spec.name + "=" + v;
  }
  std::printf("options (non-default, plus the probe interval):%s\n", line.c_str());
}

/// Cumulative reference: every row, plus the two sums the poll compares.
struct reference {
  rollup_rows rows;
  __int128 minute_requests = 0;
  __int128 key_spend = 0;

  void add(const generated_event& ev) {
    rollup_rows one;
    add_reference(one, ev);
    for (auto& [key, values] : one["tally_minute"])
      minute_requests += values[3];  // prompt, completion, total tokens, requests
    for (auto& [key, values] : one["tally_spend"])
      if (key[0] == "key")
        key_spend += values[0];
    merge_rows(rows, one);
  }
};

/// Reads the two sums; nullopt while the tables do not exist yet or Postgres
/// does not answer.
std::optional<std::pair<std::string, std::string>> read_sums(adapters::pg_client& pg) {
  auto r = pg.exec(
      "SELECT (SELECT coalesce(sum(requests), 0) FROM tally_minute)::text, "
      "(SELECT coalesce(sum(spend) * 1000000000, 0)::numeric(38,0) FROM tally_spend WHERE entity_type = 'key')::text");
  if (!r || r->rows.empty() || r->rows[0].size() != 2)
    return std::nullopt;
  return std::make_pair(r->rows[0][0], r->rows[0][1]);
}

/// A directory removed when this goes out of scope.
struct removed_at_exit {
  std::string path;
  ~removed_at_exit() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

struct seen_switch {
  redis_switch ev;
  steady::time_point at;
};

struct round_result {
  int round = 0;
  std::string killed;
  long long batches_at_kill = 0;
  long long switch_ms = -1;
  std::string switch_reason, switch_detail;
  long long exact_ms = -1;
  long long recovered_ms = -1;  // restart -> circuit closed
};

/// Nearest-rank percentile of a sorted sample.
long long percentile(const std::vector<long long>& sorted, double p) {
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
  return sorted[std::max<size_t>(rank, 1) - 1];
}

void print_summary(const char* what, std::vector<long long> v) {
  std::sort(v.begin(), v.end());
  double mean = 0;
  for (auto x : v)
    mean += static_cast<double>(x);
  mean /= static_cast<double>(v.size());
  std::printf("%-22s p50 %5lld ms   p99 %5lld ms   min %5lld ms   max %5lld ms   mean %6.0f ms   (n=%zu)\n", what,
              percentile(v, 50), percentile(v, 99), v.front(), v.back(), mean, v.size());
}

bool parse_args(int argc, char** argv, bench_args& a) {
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "failover_bench: %s needs a value\n", k.c_str());
      return false;
    }
    std::string v = argv[++i];
    if (k == "--rounds")
      a.rounds = std::max(1, std::atoi(v.c_str()));
    else if (k == "--events")
      a.events = std::max<uint64_t>(1, std::strtoull(v.c_str(), nullptr, 10));
    else if (k == "--poll-ms")
      a.poll_ms = std::max(1, std::atoi(v.c_str()));
    else if (k == "--deadline-s")
      a.deadline_s = std::max(1, std::atoi(v.c_str()));
    else if (k == "--log-level") {
      log_level level;
      if (!parse_log_level(v, level)) {
        std::fprintf(stderr, "failover_bench: bad --log-level %s\n", v.c_str());
        return false;
      }
      set_log_level(level);
    } else if (k == "--phase-ms")
      a.phase_ms = std::max(0, std::atoi(v.c_str()));
    else if (k == "--opt") {
      auto eq = v.find('=');
      a.opts.emplace_back(v.substr(0, eq), eq == std::string::npos ? std::string() : v.substr(eq + 1));
    } else {
      std::fprintf(stderr, "failover_bench: unknown option %s\n", k.c_str());
      return false;
    }
  }
  return true;
}

int run(int argc, char** argv) {
  bench_args args;
  if (!parse_args(argc, argv, args))
    return 2;
  print_machine(argc, argv);

  redis_server a, b;  // appendonly yes + appendfsync always
  postgres_server pg;
  redis_server* servers[2] = {&a, &b};

  std::mutex mu;
  std::vector<seen_switch> switches;
  auto switches_seen = [&] {
    std::lock_guard<std::mutex> lock(mu);
    return switches;
  };

  config cfg;
  cfg.ns = ns;
  cfg.instance_id = "bench";
  cfg.redis_urls = {a.url(), b.url()};  // equal weights
  cfg.postgres_url = pg.url();
  cfg.health_check_interval = 1000ms;
  const removed_at_exit state_dir{temp_dir("tally-state-")};  // outlives the runtime (declared later)
  cfg.state_dir = state_dir.path;
  cfg.on_redis_switch = [&](const redis_switch& s) {
    auto at = steady::now();
    std::lock_guard<std::mutex> lock(mu);
    switches.push_back({s, at});
  };
  if (!args.opts.empty()) {
    daemon_options d = default_options();
    d.runtime = cfg;
    for (auto& [name, value] : args.opts) {
      const auto* spec = find_option(name);
      std::string err = spec ? apply_option(d, *spec, value, "--opt") : "unknown option " + name;
      if (!err.empty()) {
        std::fprintf(stderr, "failover_bench: %s\n", err.c_str());
        return 2;
      }
    }
    auto callback = cfg.on_redis_switch;
    cfg = d.runtime;
    cfg.on_redis_switch = callback;
  }
  print_options(cfg);
  if (args.phase_ms < 0)
    args.phase_ms = static_cast<int>((cfg.health_check_interval +
                                      cfg.health_check_probe_delay * (std::max(cfg.health_check_probes, 1u) - 1))
                                         .count());
  std::printf("workload: %d rounds x %llu events (record_durable, all acked), then a random 0-%d ms wait, then kill; "
              "Postgres polled every %d ms\n",
              args.rounds, static_cast<unsigned long long>(args.events), args.phase_ms, args.poll_ms);
  std::fflush(stdout);

  runtime rt;
  if (auto err = rt.start(cfg); !err.empty()) {
    std::fprintf(stderr, "failover_bench: %s\n", err.c_str());
    return 2;
  }
  const auto deadline = std::chrono::seconds(args.deadline_s);
  // Empty until the failover actor published its first view.
  auto db_state = [&](size_t i) {
    auto dbs = rt.redis_databases();
    return i < dbs.size() ? dbs[i] : redis_database_status{};
  };
  auto active_index = [&]() -> int {
    auto dbs = rt.redis_databases();
    for (size_t i = 0; i < dbs.size(); ++i)
      if (dbs[i].active)
        return static_cast<int>(i);
    return -1;
  };
  // Both databases healthy, one active, this instance leading.
  if (!wait_for([&] { return db_state(0).state == "closed" && db_state(1).state == "closed" && active_index() >= 0 &&
                             rt.snapshot().lease_held == 1; },
                deadline)) {
    std::fprintf(stderr, "failover_bench: databases not healthy or no lease within %d s\n", args.deadline_s);
    return 1;
  }

  auto pgc = adapters::pg_client::connect(pg.url(), 5000ms);
  if (!pgc) {
    std::fprintf(stderr, "failover_bench: postgres: %s\n", pgc.error().message.c_str());
    return 1;
  }

  reference expected;
  std::mt19937 phase_rng(seed);
  std::vector<round_result> results;
  uint64_t next_event = 0;
  for (int round = 1; round <= args.rounds; ++round) {
    round_result res;
    res.round = round;
    const int victim = active_index();
    if (victim < 0) {
      std::fprintf(stderr, "failover_bench: round %d: no active database\n", round);
      return 1;
    }
    redis_server& dead = *servers[victim];
    res.killed = victim == 0 ? "A" : "B";

    // 1. The slice, every event acked by the runtime (in Redis).
    // The acks may outlive this round on an early return: shared counters.
    auto acked = std::make_shared<std::atomic<uint64_t>>(0), refused = std::make_shared<std::atomic<uint64_t>>(0);
    for (uint64_t i = 0; i < args.events; ++i, ++next_event) {
      auto ev = generate(seed, next_event);
      expected.add(ev);
      rt.record_durable(ev.view(), [acked, refused](field_error err) { (err ? *refused : *acked).fetch_add(1); });
    }
    if (!wait_for([&] { return *acked + *refused == args.events; }, deadline) || *refused > 0) {
      std::fprintf(stderr, "failover_bench: round %d: %llu of %llu durable records acked, %llu refused\n", round,
                   static_cast<unsigned long long>(acked->load()), static_cast<unsigned long long>(args.events),
                   static_cast<unsigned long long>(refused->load()));
      return 1;
    }
    if (args.phase_ms > 0)
      std::this_thread::sleep_for(
          std::chrono::milliseconds(std::uniform_int_distribution<int>(0, args.phase_ms)(phase_rng)));
    res.batches_at_kill = std::atoll(
        redis_command(dead.port(), {"LLEN", std::string("{tally:") + ns + "}:batches"}).value.c_str());
    const size_t switches_before = switches_seen().size();

    // 2. kill -9.
    log_line(log_level::info, "failover_bench",
             "round " + std::to_string(round) + ": kill -9 " + res.killed + " (" + dead.url() + ")");
    const auto killed = steady::now();
    dead.kill();

    // 3 and 4, watched together (either may come first: a flush already
    // under way when the database died commits without it): the switch, as
    // stamped by the callback, and exact totals, stamped when the query
    // that saw them was sent.
    const std::string want_requests = to_string_i128(expected.minute_requests);
    const std::string want_spend = to_string_i128(expected.key_spend);
    std::optional<seen_switch> sw;
    std::optional<steady::time_point> exact_at;
    std::string last = "no answer";
    bool over = false;
    wait_for(
        [&] {
          if (!sw) {
            auto all = switches_seen();
            for (size_t i = switches_before; i < all.size() && !sw; ++i)
              if (all[i].ev.from == dead.url())
                sw = all[i];
          }
          if (!exact_at) {
            const auto asked = steady::now();
            if (auto sums = read_sums(*pgc)) {
              last = "requests " + sums->first + " of " + want_requests + ", key spend " + sums->second + " of " +
                     want_spend + " nano";
              over = parse_i128(sums->first) > expected.minute_requests ||
                     parse_i128(sums->second) > expected.key_spend;
              if (over)
                return true;
              if (sums->first == want_requests && sums->second == want_spend)
                exact_at = asked;
            }
          }
          return sw && exact_at;
        },
        deadline, std::chrono::milliseconds(args.poll_ms));
    if (!sw) {
      std::printf("round %2d: kill %s: no switch away from it within %d s\n", round, res.killed.c_str(),
                  args.deadline_s);
      return 1;
    }
    res.switch_ms = ms_between(killed, sw->at);
    res.switch_reason = sw->ev.reason;
    res.switch_detail = sw->ev.detail;
    if (!exact_at || over) {
      std::printf("round %2d: kill %s: %s within %d s: %s\n", round, res.killed.c_str(),
                  over ? "DOUBLE COUNT" : "totals NOT exact", args.deadline_s, last.c_str());
      return 1;
    }
    res.exact_ms = ms_between(killed, *exact_at);
    if (auto diff = diff_rows(expected.rows, read_postgres(pg)); !diff.empty()) {
      std::printf("round %2d: sums exact but rows differ: %s\n", round, diff.c_str());
      return 1;
    }

    // 5. Restart, wait until its circuit is closed again (not after the last round).
    if (round < args.rounds) {
      const auto restarting = steady::now();
      dead.start();
      if (!wait_for([&] { return db_state(static_cast<size_t>(victim)).state == "closed"; }, deadline, 10ms)) {
        std::fprintf(stderr, "failover_bench: round %d: %s not closed again within %d s (state %s)\n", round,
                     res.killed.c_str(), args.deadline_s, db_state(static_cast<size_t>(victim)).state.c_str());
        return 1;
      }
      res.recovered_ms = ms_between(restarting, steady::now());
    }

    std::printf("round %2d: kill -9 %s (%lld batches in its list): switch +%5lld ms (%s: %s), exact +%5lld ms%s\n",
                round, res.killed.c_str(), res.batches_at_kill, res.switch_ms,
                res.switch_reason.c_str(), res.switch_detail.c_str(), res.exact_ms,
                res.recovered_ms >= 0 ? (", restarted and closed again after " + std::to_string(res.recovered_ms) + " ms").c_str()
                                      : "");
    std::fflush(stdout);
    results.push_back(res);
  }

  rt.stop(30s);
  if (auto diff = diff_rows(expected.rows, read_postgres(pg)); !diff.empty()) {
    std::printf("after stop: rows differ: %s\n", diff.c_str());
    return 1;
  }

  std::vector<long long> switch_ms, exact_ms;
  std::map<std::string, int> reasons;
  for (auto& r : results) {
    if (r.switch_ms >= 0)
      switch_ms.push_back(r.switch_ms);
    exact_ms.push_back(r.exact_ms);
    ++reasons[r.switch_reason.empty() ? "none" : r.switch_reason];
  }
  std::printf("\n%zu kills, %llu events, Postgres exact after each (all rows of all tables)\n", results.size(),
              static_cast<unsigned long long>(next_event));
  if (!switch_ms.empty())
    print_summary("kill -> switch:", switch_ms);
  print_summary("kill -> exact totals:", exact_ms);
  std::string why;
  for (auto& [reason, n] : reasons)
    why += " " + reason + "=" + std::to_string(n);
  std::printf("switch reasons:%s\n", why.c_str());
  long long worst = *std::max_element(exact_ms.begin(), exact_ms.end());
  std::printf("goal (exact totals within 5 s of the kill, with a 1 s probe interval; here %lld ms): %s (slowest %lld ms)\n",
              static_cast<long long>(cfg.health_check_interval.count()), worst <= 5000 ? "met" : "NOT met", worst);
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "failover_bench: %s\n", e.what());
    return 1;
  }
}
