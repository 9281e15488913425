// tests/soak.cpp — tally_soak: a long run under steady load with random
// faults, then an exact check of every total. Run by scripts/soak (not part
// of CTest: it runs for minutes).
//
//   tally_soak --minutes N [--seed S] [--producers P] [--instances I] [--rate EVENTS_PER_S]
//
// Redis and Postgres run on the host; I tallyd instances (flushing, with
// postgres_url) and P producer lanes (tally_driver processes recording
// consecutive slices of the generated workload at a steady rate, each lane
// with one spill-journal directory) each run in a network namespace of
// their own (tests/support/netns.hpp). Every few seconds one fault, chosen
// at random:
//   kill -9 of a tallyd, restarted after up to 2 s;
//   SIGSTOP of the leader (the lease holder) for 1..5 s (lease_ttl is 2 s),
//   then SIGCONT;
//   Redis stopped or kill -9'd and restarted (append-only, fsync always);
//   Postgres stopped or kill -9'd and restarted;
//   a partition: a tallyd cut off from Redis, from Postgres or from both,
//   or a producer cut off from everything, for 2..8 s.
// Producers are not killed: a killed producer loses the events of its
// last buffer interval by design (a gateway's buffered acks), which a
// totals check cannot tell from a bug. Everything else is fair game.
//
// At the end the faults stop, every link heals, each lane replays what its
// journal still holds, every tallyd drains Redis and stops with SIGTERM,
// and the rows in Postgres must equal the ground truth of every slice the
// producers recorded, with one writer per fencing epoch. Prints every
// fault as it is injected, then the check; exits 0 only if it passed.
#include "tests/harness/servers.hpp"
#include "tests/support/child_process.hpp"
#include "tests/support/netns.hpp"
#include "tests/support/postgres_rows.hpp"
#include "tests/support/tallyd_process.hpp"
#include "tests/support/workload.hpp"

#include <chrono>
#include <csignal>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <vector>

using namespace tally;
using namespace tally::testing;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

namespace {

constexpr const char* ns = "t";

struct options {
  double minutes = 5;
  uint64_t seed = 1;
  int producers = 2;
  int instances = 3;
  int rate = 1000;           // events per second per producer lane
  uint64_t slice = 20'000;   // events per producer process
};

steady::time_point started;

std::string clock_text() {
  auto s = std::chrono::duration_cast<std::chrono::seconds>(steady::now() - started).count();
  char buf[32];
  std::snprintf(buf, sizeof buf, "%02lld:%02lld", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  return buf;
}

std::map<std::string, int> fault_counts;

void say(const std::string& line) {
  std::printf("[%s] %s\n", clock_text().c_str(), line.c_str());
  std::fflush(stdout);
}

void fault(const std::string& kind, const std::string& line) {
  ++fault_counts[kind];
  say("fault: " + line);
}

std::string key(const std::string& suffix) {
  return std::string("{tally:") + ns + "}:" + suffix;
}

long long redis_int(const redis_server& redis, const std::vector<std::string>& args) {
  try {
    auto r = redis_command(redis.port(), args);
    return r.type == ':' ? std::stoll(r.value) : -1;
  } catch (const std::exception&) {
    return -1;
  }
}

/// The instance id that holds the lease, or "".
std::string lease_holder(const redis_server& redis) {
  try {
    auto r = redis_command(redis.port(), {"GET", key("lease")});
    if (r.type != '$' || r.nil)
      return "";
    return r.value.substr(0, r.value.rfind(':'));
  } catch (const std::exception&) {
    return "";
  }
}

struct instance {
  std::string id;
  std::unique_ptr<netns_host> host;
  std::string state_dir;
  proc* p = nullptr;
};

struct lane {
  int index = 0;
  std::unique_ptr<netns_host> host;
  std::string state_dir;
  proc* p = nullptr;
  uint64_t from = 0, to = 0;  // the slice p records
  int runs = 0;
};

} // namespace

int main(int argc, char** argv) {
  options opt;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--minutes") opt.minutes = std::stod(v);
    else if (k == "--seed") opt.seed = std::stoull(v);
    else if (k == "--producers") opt.producers = std::stoi(v);
    else if (k == "--instances") opt.instances = std::stoi(v);
    else if (k == "--rate") opt.rate = std::stoi(v);
    else {
      std::fprintf(stderr, "tally_soak: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  std::signal(SIGPIPE, SIG_IGN);
  started = steady::now();
  std::mt19937_64 rng(opt.seed);
  auto uniform = [&](int lo, int hi) { return lo + static_cast<int>(rng() % static_cast<uint64_t>(hi - lo + 1)); };

  redis_options ro;
  ro.bind = "0.0.0.0";
  redis_server redis(ro);
  postgres_options po;
  po.listen = "*";
  po.trust_cidr = "10.0.0.0/8";
  postgres_server pg(po);
  procs ps("soak");
  say("soak: " + std::to_string(opt.minutes) + " min, seed " + std::to_string(opt.seed) + ", "
      + std::to_string(opt.instances) + " tallyd, " + std::to_string(opt.producers) + " producers at "
      + std::to_string(opt.rate) + " events/s each; redis :" + std::to_string(redis.port()) + ", postgres :"
      + std::to_string(pg.port()));

  std::vector<instance> nodes(static_cast<size_t>(opt.instances));
  auto start_node = [&](instance& n) {
    std::vector<std::string> args = {
      "--ns", ns, "--instance-id", n.id,
      "--redis-urls", "redis://" + n.host->redis_address() + ":" + std::to_string(redis.port()),
      "--postgres-url", "postgresql://postgres@" + n.host->postgres_address() + ":" + std::to_string(pg.port()) + "/tally",
      "--resp-port", "0", "--http-port", "0", "--state-dir", n.state_dir,
      "--lease-ttl", "2s", "--flush-interval", "100ms"};
    n.p = &ps.start(n.id, n.host->inside(tallyd_argv({}, args)));
  };
  for (int i = 0; i < opt.instances; ++i) {
    auto& n = nodes[static_cast<size_t>(i)];
    n.id = "t" + std::to_string(i + 1);
    n.host = std::make_unique<netns_host>(i + 1);
    n.state_dir = temp_dir("tally-soak-state-");
    start_node(n);
  }

  uint64_t next_event = 0;
  std::vector<std::pair<uint64_t, uint64_t>> recorded;  // slices whose producer exited 0
  bool producer_failed = false;
  std::vector<lane> lanes(static_cast<size_t>(opt.producers));
  auto start_slice = [&](lane& l) {
    l.from = next_event;
    l.to = next_event + opt.slice;
    next_event = l.to;
    ++l.runs;
    std::string id = "p" + std::to_string(l.index) + "-" + std::to_string(l.runs);
    l.p = &ps.start(id, l.host->inside({TALLY_DRIVER_PATH, "--redis",
                                        "redis://" + l.host->redis_address() + ":" + std::to_string(redis.port()),
                                        "--ns", ns, "--instance", id, "--seed", "7", "--from", std::to_string(l.from),
                                        "--to", std::to_string(l.to), "--threads", "1", "--buffer-ms", "100",
                                        "--state-dir", l.state_dir, "--rate", std::to_string(opt.rate)}));
  };
  auto reap_lane = [&](lane& l, bool start_next) {
    if (l.p == nullptr || l.p->alive())
      return;
    int status = wait_process(l.p->pid, 5s);
    l.p->pid = -1;
    if (status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
      recorded.emplace_back(l.from, l.to);
    } else {
      producer_failed = true;
      say("producer " + l.p->name + " FAILED (" + std::to_string(status) + "); log " + l.p->log);
    }
    l.p = nullptr;
    if (start_next)
      start_slice(l);
  };
  for (int i = 0; i < opt.producers; ++i) {
    auto& l = lanes[static_cast<size_t>(i)];
    l.index = i + 1;
    l.host = std::make_unique<netns_host>(opt.instances + i + 1);
    l.state_dir = temp_dir("tally-soak-lane-");
    start_slice(l);
  }

  // --- faults -----------------------------------------------------------------
  const auto end = started + std::chrono::milliseconds(static_cast<int64_t>(opt.minutes * 60000));
  auto sleep_reaping = [&](std::chrono::milliseconds d) {
    auto until = steady::now() + d;
    while (steady::now() < until) {
      for (auto& l : lanes)
        reap_lane(l, true);
      std::this_thread::sleep_for(100ms);
    }
  };
  sleep_reaping(5s);
  while (steady::now() < end) {
    switch (uniform(0, 5)) {
      case 0: {
        auto& n = nodes[static_cast<size_t>(uniform(0, opt.instances - 1))];
        int pause_ms = uniform(0, 2000);
        fault("kill9_tallyd", "kill -9 " + n.id + ", restart in " + std::to_string(pause_ms) + " ms");
        n.p->signal(SIGKILL);
        wait_process(n.p->pid, 10s);
        n.p->pid = -1;
        sleep_reaping(std::chrono::milliseconds(pause_ms));
        start_node(n);
        break;
      }
      case 1: {
        std::string holder = lease_holder(redis);
        instance* leader = nullptr;
        for (auto& n : nodes)
          if (n.id == holder)
            leader = &n;
        if (leader == nullptr)
          continue;  // no leader right now: pick another fault
        int ms = uniform(1000, 5000);
        fault("sigstop_leader", "SIGSTOP leader " + leader->id + " for " + std::to_string(ms) + " ms");
        leader->p->signal(SIGSTOP);
        sleep_reaping(std::chrono::milliseconds(ms));
        leader->p->signal(SIGCONT);
        break;
      }
      case 2: {
        bool hard = uniform(0, 1) == 1;
        fault("redis_restart", std::string("redis ") + (hard ? "kill -9" : "stop") + " and restart");
        if (hard) redis.kill(); else redis.stop();
        sleep_reaping(std::chrono::milliseconds(uniform(0, 3000)));
        redis.start();
        break;
      }
      case 3: {
        bool hard = uniform(0, 1) == 1;
        fault("postgres_restart", std::string("postgres ") + (hard ? "kill -9" : "stop") + " and restart");
        if (hard) pg.kill(); else pg.stop();
        sleep_reaping(std::chrono::milliseconds(uniform(0, 3000)));
        pg.start();
        break;
      }
      case 4: {
        auto& n = nodes[static_cast<size_t>(uniform(0, opt.instances - 1))];
        int what = uniform(0, 2);
        int ms = uniform(2000, 8000);
        const char* names[] = {"redis", "postgres", "redis and postgres"};
        fault("partition_tallyd", "partition: " + n.id + " cut off from " + names[what] + " for "
                                    + std::to_string(ms) + " ms");
        if (what != 1) n.host->cut_redis();
        if (what != 0) n.host->cut_postgres();
        sleep_reaping(std::chrono::milliseconds(ms));
        if (what != 1) n.host->heal_redis();
        if (what != 0) n.host->heal_postgres();
        break;
      }
      case 5: {
        auto& l = lanes[static_cast<size_t>(uniform(0, opt.producers - 1))];
        int ms = uniform(2000, 8000);
        fault("partition_producer", "partition: producer lane " + std::to_string(l.index) + " cut off from everything for "
                                      + std::to_string(ms) + " ms");
        l.host->cut_redis();
        l.host->cut_postgres();
        sleep_reaping(std::chrono::milliseconds(ms));
        l.host->heal_redis();
        l.host->heal_postgres();
        break;
      }
    }
    sleep_reaping(std::chrono::milliseconds(uniform(2000, 8000)));
  }

  // --- the end: no more faults, everything drains ----------------------------
  say("faults stop; waiting for the producers' last slices");
  bool ok = true;
  for (auto& l : lanes) {
    if (l.p != nullptr && !wait_for([&] { return !l.p->alive(); }, 300s)) {
      say("producer " + l.p->name + " did not finish");
      ok = false;
    }
    reap_lane(l, false);
  }
  // A slice that ended while its lane was cut off left batches in the lane's
  // journal; a run that records nothing adopts and replays them.
  for (auto& l : lanes) {
    std::string id = "p" + std::to_string(l.index) + "-replay";
    auto& r = ps.start(id, l.host->inside({TALLY_DRIVER_PATH, "--redis",
                                           "redis://" + l.host->redis_address() + ":" + std::to_string(redis.port()),
                                           "--ns", ns, "--instance", id, "--seed", "7", "--from", "0", "--to", "0",
                                           "--state-dir", l.state_dir}));
    int status = wait_process(r.pid, 120s);
    r.pid = -1;
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      say("journal replay of lane " + std::to_string(l.index) + " failed; log " + r.log);
      ok = false;
    }
  }
  auto drained = [&] {
    if (redis_int(redis, {"LLEN", key("batches")}) != 0)
      return false;
    for (auto& n : nodes)
      if (redis_int(redis, {"LLEN", key("inflight:" + n.id)}) != 0)
        return false;
    return true;
  };
  if (!wait_for(drained, 300s)) {
    say("Redis did not drain: " + std::to_string(redis_int(redis, {"LLEN", key("batches")})) + " batches left");
    ok = false;
  }
  for (auto& n : nodes) {
    n.p->signal(SIGTERM);
    int status = wait_process(n.p->pid, 90s);
    n.p->pid = -1;
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      say(n.id + " did not stop cleanly (" + std::to_string(status) + "); log " + n.p->log);
      ok = false;
    }
  }

  uint64_t events = 0;
  rollup_rows expected;
  for (auto& [from, to] : recorded) {
    events += to - from;
    for (uint64_t i = from; i < to; ++i)
      add_reference(expected, generate(7, i));
  }
  std::string diff = diff_rows(expected, read_postgres(pg));
  std::string shared_epochs =
    pg.psql("SELECT epoch FROM tally_applied_batches GROUP BY epoch HAVING count(DISTINCT leader) > 1");
  std::string epochs = pg.psql("SELECT count(DISTINCT epoch) FROM tally_applied_batches");
  std::string batches = pg.psql("SELECT count(*) FROM tally_applied_batches");

  std::string summary;
  int total = 0;
  for (auto& [kind, count] : fault_counts) {
    summary += " " + kind + "=" + std::to_string(count);
    total += count;
  }
  say("faults injected: " + std::to_string(total) + " (" + summary.substr(summary.empty() ? 0 : 1) + ")");
  say("check: " + std::to_string(events) + " events in " + std::to_string(recorded.size()) + " slices, "
      + batches.substr(0, batches.find('\n')) + " batches applied over " + epochs.substr(0, epochs.find('\n'))
      + " epochs");
  say(std::string("check: totals in Postgres ") + (diff.empty() ? "exact" : "WRONG:\n" + diff.substr(0, 4000)));
  say(std::string("check: one writer per epoch ") + (shared_epochs.empty() ? "yes" : "NO: " + shared_epochs));
  ok = ok && !producer_failed && diff.empty() && shared_epochs.empty() && !recorded.empty();
  say(ok ? "soak PASSED" : "soak FAILED");
  return ok ? 0 : 1;
}
