// tests/flush_node.cpp — a process running one embedded runtime with the
// flush supervisor, for the stage-2 crash and fencing tests.
//
//   flush_node --redis URL --ns NS --instance ID --postgres URL
//              [--flush-ms MS] [--lease-ms MS] [--lock-timeout-ms MS]
//              [--seed S --from A --to B --stride K --offset J]
//              [--state-dir DIR] [--opt NAME=VALUE ...]
//
// --opt sets any tallyd option by its name in the options table. Without
// --state-dir the process gets a fresh spill-journal directory of its own.
// Records its slice of the generated workload (none by default), then runs
// until SIGTERM/SIGINT, when it stops the runtime (stage-1 drain, final
// flush while leading, lease release) and exits 0. Prints one line of
// counters every 100 ms ("node: flushes=.. lease=.. epoch=.. ...") so tests
// can wait on them. Environment TALLY_FAILPOINT / TALLY_STOPPOINT pass
// through. Tests kill it with SIGKILL or SIGSTOP at will.
#include "tally/tally.hpp"
#include "tests/support/driver_config.hpp"
#include "tests/support/fleet_status.hpp"
#include "tests/support/workload.hpp"

#include <atomic>
#include <csignal>
#include <cstdio>
#include <string>
#include <thread>
#include <unistd.h>

int main(int argc, char** argv) {
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);  // before any runtime thread exists

  tally::config cfg;
  cfg.redis_urls.clear();
  cfg.buffer_interval = std::chrono::milliseconds(100);
  cfg.retry_backoff_max = std::chrono::milliseconds(500);
  cfg.redis_timeout = std::chrono::milliseconds(500);
  cfg.worker_threads = 2;
  cfg.shards = 1;
  uint64_t seed = 1, from = 0, to = 0, stride = 1, offset = 0;
  std::vector<std::pair<std::string, std::string>> opts;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--redis") cfg.redis_urls.push_back(v);
    else if (k == "--ns") cfg.ns = v;
    else if (k == "--state-dir") cfg.state_dir = v;
    else if (k == "--opt") opts.push_back(tally::testing::split_opt(v));
    else if (k == "--instance") cfg.instance_id = v;
    else if (k == "--postgres") cfg.postgres_url = v;
    else if (k == "--flush-ms") cfg.flush_interval = std::chrono::milliseconds(std::stoll(v));
    else if (k == "--lease-ms") cfg.lease_ttl = std::chrono::milliseconds(std::stoll(v));
    else if (k == "--lock-timeout-ms") cfg.lock_timeout = std::chrono::milliseconds(std::stoll(v));
    else if (k == "--repush-ms") cfg.repush_after = std::chrono::milliseconds(std::stoll(v));
    else if (k == "--seed") seed = std::stoull(v);
    else if (k == "--from") from = std::stoull(v);
    else if (k == "--to") to = std::stoull(v);
    else if (k == "--stride") stride = std::stoull(v);
    else if (k == "--offset") offset = std::stoull(v);
    else {
      std::fprintf(stderr, "node: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  if (auto err = tally::testing::finish_driver_config(cfg, opts); !err.empty()) {
    std::fprintf(stderr, "node: %s\n", err.c_str());
    return 2;
  }
  tally::runtime rt;
  if (auto err = rt.start(cfg); !err.empty()) {
    std::fprintf(stderr, "node: %s\n", err.c_str());
    return 2;
  }
  for (uint64_t i = from; i < to; ++i) {
    if (i % stride != offset)
      continue;
    auto ev = tally::testing::generate(seed, i);
    while (rt.record(ev.view()).code == tally::errc::backpressure)
      std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  std::atomic<bool> finished{false};
  std::thread progress([&] {
    while (!finished.load()) {
      auto s = rt.snapshot();
      std::fprintf(stdout, "node: written=%llu pending=%llu flushes=%llu rows=%llu duplicates=%llu dead=%llu "
                   "lease=%llu epoch=%llu deferred=%llu deferred_applied=%llu%s\n",
                   static_cast<unsigned long long>(s.batches_written), static_cast<unsigned long long>(s.pending_batches),
                   static_cast<unsigned long long>(s.flushes), static_cast<unsigned long long>(s.rows_upserted),
                   static_cast<unsigned long long>(s.duplicate_batches),
                   static_cast<unsigned long long>(s.dead_lettered), static_cast<unsigned long long>(s.lease_held),
                   static_cast<unsigned long long>(s.epoch), static_cast<unsigned long long>(s.rows_deferred),
                   static_cast<unsigned long long>(s.deferred_applied), tally::testing::fleet_status(rt).c_str());
      std::fflush(stdout);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  int sig = 0;
  sigwait(&sigs, &sig);
  rt.stop(std::chrono::seconds(60));
  // An empty state_dir is not left behind in $TMPDIR (a journal keeps it).
  ::rmdir(cfg.state_dir.c_str());
  finished = true;
  progress.join();
  auto s = rt.snapshot();
  std::fprintf(stdout, "node: stopped flushes=%llu dead=%llu\n", static_cast<unsigned long long>(s.flushes),
               static_cast<unsigned long long>(s.dead_lettered));
  std::fflush(stdout);
  return s.pending_batches == 0 ? 0 : 1;
}
