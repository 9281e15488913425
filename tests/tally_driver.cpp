// tests/tally_driver.cpp — a process that runs one embedded runtime and
// records a slice of a generated workload, for multi-process tests.
//
//   tally_driver --redis URL [--redis URL2] --ns NS --instance ID --seed S
//                --from A --to B [--stride K --offset J] [--threads T]
//                [--buffer-ms MS] [--postgres URL] [--flush-ms MS]
//                [--lease-ms MS] [--stop-deadline-ms MS] [--durable]
//
// Records events i in [from, to) with i % stride == offset, split over T
// threads, retrying on backpressure (a gateway would). With --postgres it
// also runs the flush supervisor. Prints one line of counters every 200 ms
// and "driver: done" after a clean stop; exits 0 only if stop() wrote
// everything. Tests kill it with SIGKILL at will.
#include "tally/tally.hpp"
#include "tests/support/workload.hpp"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

int main(int argc, char** argv) {
  tally::config cfg;
  cfg.redis_urls.clear();
  uint64_t seed = 1, from = 0, to = 0, stride = 1, offset = 0;
  int threads = 1;
  bool durable = false;
  int64_t stop_deadline_ms = 60000;
  cfg.buffer_interval = std::chrono::milliseconds(200);
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--redis") cfg.redis_urls.push_back(v);
    else if (k == "--ns") cfg.ns = v;
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
    else {
      std::fprintf(stderr, "driver: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  if (std::getenv("TALLY_DRIVER_DURABLE"))
    durable = true;
  cfg.retry_backoff_max = std::chrono::milliseconds(500);
  cfg.redis_timeout = std::chrono::milliseconds(500);
  tally::runtime rt;
  if (auto err = rt.start(cfg); !err.empty()) {
    std::fprintf(stderr, "driver: %s\n", err.c_str());
    return 2;
  }
  std::atomic<uint64_t> recorded{0};
  std::atomic<bool> failed{false};
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
        recorded.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  std::atomic<bool> finished{false};
  std::thread progress([&] {
    while (!finished.load()) {
      auto s = rt.snapshot();
      std::fprintf(stdout, "driver: recorded=%llu batches=%llu stage1_failures=%llu pending=%llu flushes=%llu lease=%llu\n",
                   static_cast<unsigned long long>(recorded.load()),
                   static_cast<unsigned long long>(s.batches_written),
                   static_cast<unsigned long long>(s.stage1_failures),
                   static_cast<unsigned long long>(s.pending_batches),
                   static_cast<unsigned long long>(s.flushes),
                   static_cast<unsigned long long>(s.lease_held));
      std::fflush(stdout);
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  });
  for (auto& w : workers)
    w.join();
  std::fprintf(stdout, "driver: recorded all %llu\n", static_cast<unsigned long long>(recorded.load()));
  std::fflush(stdout);
  rt.stop(std::chrono::milliseconds(stop_deadline_ms));
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
