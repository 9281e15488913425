// tests/tally_driver.cpp — a process that runs one embedded runtime and
// records a slice of a generated workload, for multi-process tests.
//
//   tally_driver --redis URL [--redis URL2] --ns NS --instance ID --seed S
//                --from A --to B [--stride K --offset J] [--threads T]
//                [--buffer-ms MS] [--postgres URL] [--flush-ms MS]
//                [--lease-ms MS] [--stop-deadline-ms MS] [--durable]
//                [--state-dir DIR] [--opt NAME=VALUE ...] [--rate EVENTS_PER_S]
//                [--wait-applied-ms MS]
//
// --opt sets any tallyd option by its name in the options table (e.g.
// --opt health_check_interval=200ms). Without --state-dir the process gets
// a fresh spill-journal directory of its own.
// Records events i in [from, to) with i % stride == offset, split over T
// threads, retrying on backpressure (a gateway would). With --postgres it
// also runs the flush supervisor. Prints one line of counters every 200 ms
// and "driver: done" after a clean stop; exits 0 only if stop() wrote
// everything. Tests kill it with SIGKILL at will.
// --wait-applied-ms MS: after recording everything, wait (at most MS) until
// a leader confirmed every batch this process wrote (producer retention
// holds none and none is pending) before stopping, so that a producer does
// not exit while its retention may still have to re-push batches a Redis
// lost (fleet tests); prints "driver: all applied" or "driver: N batches
// unconfirmed after MS ms" (not a failure by itself).
#include "tally/tally.hpp"
#include "tests/support/driver_config.hpp"
#include "tests/support/fleet_status.hpp"
#include "tests/support/workload.hpp"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

int main(int argc, char** argv) {
  tally::config cfg;
  cfg.redis_urls.clear();
  uint64_t seed = 1, from = 0, to = 0, stride = 1, offset = 0;
  std::vector<std::pair<std::string, std::string>> opts;
  int threads = 1;
  bool durable = false;
  double rate = 0;  // events per second over all threads; 0 = as fast as possible
  int64_t stop_deadline_ms = 60000;
  int64_t wait_applied_ms = 0;
  cfg.buffer_interval = std::chrono::milliseconds(200);
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--redis") cfg.redis_urls.push_back(v);
    else if (k == "--ns") cfg.ns = v;
    else if (k == "--state-dir") cfg.state_dir = v;
    else if (k == "--opt") opts.push_back(tally::testing::split_opt(v));
    else if (k == "--instance") cfg.instance_id = v;
    else if (k == "--seed") seed = std::stoull(v);
    else if (k == "--from") from = std::stoull(v);
    else if (k == "--to") to = std::stoull(v);
    else if (k == "--stride") stride = std::stoull(v);
    else if (k == "--offset") offset = std::stoull(v);
    else if (k == "--threads") threads = std::stoi(v);
    else if (k == "--buffer-ms") cfg.buffer_interval = std::chrono::milliseconds(std::stoll(v));
    else if (k == "--postgres") cfg.postgres_url = v;
    else if (k == "--flush-ms") cfg.flush_interval = std::chrono::milliseconds(std::stoll(v));
    else if (k == "--lease-ms") cfg.lease_ttl = std::chrono::milliseconds(std::stoll(v));
    else if (k == "--stop-deadline-ms") stop_deadline_ms = std::stoll(v);
    else if (k == "--durable") durable = v == "1";
    else if (k == "--rate") rate = std::stod(v);
    else if (k == "--wait-applied-ms") wait_applied_ms = std::stoll(v);
    else {
      std::fprintf(stderr, "driver: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  if (std::getenv("TALLY_DRIVER_DURABLE"))
    durable = true;
  cfg.retry_backoff_max = std::chrono::milliseconds(500);
  cfg.redis_timeout = std::chrono::milliseconds(500);
  if (auto err = tally::testing::finish_driver_config(cfg, opts); !err.empty()) {
    std::fprintf(stderr, "driver: %s\n", err.c_str());
    return 2;
  }
  tally::runtime rt;
  if (auto err = rt.start(cfg); !err.empty()) {
    std::fprintf(stderr, "driver: %s\n", err.c_str());
    return 2;
  }
  std::atomic<uint64_t> recorded{0};
  std::atomic<bool> failed{false};
  const auto started = std::chrono::steady_clock::now();
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      uint64_t n = 0;
      for (uint64_t i = from; i < to; ++i) {
        if (i % stride != offset || (n++ % threads) != static_cast<uint64_t>(t))
          continue;
        auto ev = tally::testing::generate(seed, i);
        for (;;) {
          tally::field_error err = durable ? rt.record_durable(ev.view()).get() : rt.record(ev.view());
          if (!err)
            break;
          if (err.code != tally::errc::backpressure) {
            std::fprintf(stderr, "driver: event %llu refused: %s\n", static_cast<unsigned long long>(i),
                         tally::to_string(err.code));
            failed = true;
            return;
          }
          std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
        uint64_t done = recorded.fetch_add(1, std::memory_order_relaxed) + 1;
        if (rate > 0) {
          // Paced: event k is due k/rate seconds after the start, so a slow
          // stretch is caught up and the run spans a predictable time.
          auto due = started + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                 std::chrono::duration<double>(static_cast<double>(done) / rate));
          std::this_thread::sleep_until(due);
        }
      }
    });
  }
  std::atomic<bool> finished{false};
  std::thread progress([&] {
    while (!finished.load()) {
      auto s = rt.snapshot();
      std::fprintf(stdout, "driver: recorded=%llu batches=%llu stage1_failures=%llu pending=%llu flushes=%llu lease=%llu "
                   "retained=%llu repushed=%llu%s\n",
                   static_cast<unsigned long long>(recorded.load()),
                   static_cast<unsigned long long>(s.batches_written),
                   static_cast<unsigned long long>(s.stage1_failures),
                   static_cast<unsigned long long>(s.pending_batches),
                   static_cast<unsigned long long>(s.flushes),
                   static_cast<unsigned long long>(s.lease_held), static_cast<unsigned long long>(s.retained),
                   static_cast<unsigned long long>(s.repushed), tally::testing::fleet_status(rt).c_str());
      std::fflush(stdout);
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  });
  for (auto& w : workers)
    w.join();
  std::fprintf(stdout, "driver: recorded all %llu\n", static_cast<unsigned long long>(recorded.load()));
  std::fflush(stdout);
  if (wait_applied_ms > 0) {
    // The last events become a batch within a buffer interval or two; after
    // that "nothing retained, nothing pending" twice in a row (retention
    // hears of a written batch by message, a moment after the write) means
    // every batch was seen applied.
    auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_applied_ms);
    std::this_thread::sleep_for(3 * cfg.buffer_interval);
    int quiet = 0;
    while (quiet < 2 && std::chrono::steady_clock::now() < until) {
      auto s = rt.snapshot();
      quiet = s.retained == 0 && s.pending_batches == 0 && s.queue_depth == 0 ? quiet + 1 : 0;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    auto s = rt.snapshot();
    if (quiet >= 2)
      std::fprintf(stdout, "driver: all applied\n");
    else
      std::fprintf(stdout, "driver: %llu batches unconfirmed after %lld ms\n",
                   static_cast<unsigned long long>(s.retained + s.pending_batches),
                   static_cast<long long>(wait_applied_ms));
    std::fflush(stdout);
  }
  rt.stop(std::chrono::milliseconds(stop_deadline_ms));
  // An empty state_dir is not left behind in $TMPDIR (a journal keeps it).
  ::rmdir(cfg.state_dir.c_str());
  auto s = rt.snapshot();
  finished = true;
  progress.join();
  bool complete = s.pending_batches == 0 && !failed;
  std::fprintf(stdout, "driver: %s accepted=%llu batches=%llu\n", complete ? "done" : "INCOMPLETE",
               static_cast<unsigned long long>(s.events_accepted),
               static_cast<unsigned long long>(s.batches_written));
  std::fflush(stdout);
  return complete ? 0 : 1;
}
