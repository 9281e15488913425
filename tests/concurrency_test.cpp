// tests/concurrency_test.cpp — the lock-free parts of the hot path under
// many threads at once.
//
// Several threads record through one runtime while its aggregator shards
// swap their maps every few milliseconds and another thread reads the
// counters: the intern table sees the same new ids from every thread at
// once, every ingest shard's queue has several producers, and swaps race
// with enqueues. The totals that reach Redis must still be exact. Written
// for ThreadSanitizer too; tests/sanitizers/README.md says why it does not
// run under TSan yet.
#include "tally/tally.hpp"
#include "tests/harness/servers.hpp"
#include "tests/support/batches.hpp"
#include "tests/support/workload.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

using namespace tally;
using namespace tally::testing;
using namespace std::chrono_literals;

TEST(Concurrency, RecordersInternersAndSwapsRaceExactly) {
  redis_server redis;
  config cfg;
  cfg.ns = "conc";
  cfg.instance_id = "conc";
  cfg.redis_urls = {redis.url()};
  cfg.state_dir = temp_dir("tally-state-");
  cfg.shards = 4;
  cfg.buffer_interval = 10ms;  // the shortest allowed: many swaps while the threads record
  runtime rt;
  ASSERT_EQ(rt.start(cfg), "");

  constexpr int threads = 4;
  constexpr uint64_t per_thread = 10000;
  constexpr uint64_t seed = 23;
  std::atomic<bool> recording{true};
  std::atomic<uint64_t> reads{0};
  std::thread reader([&] {
    while (recording.load()) {
      stats s = rt.snapshot();
      (void)s;
      reads.fetch_add(1);
      std::this_thread::yield();
    }
  });
  std::vector<std::thread> recorders;
  std::atomic<int> refused{0};
  for (int t = 0; t < threads; ++t) {
    recorders.emplace_back([&, t] {
      // Thread t takes events t, t + threads, ...: every thread meets the
      // generator's ids (users, teams, models repeat) for the first time at
      // about the same moment, so interning races on the same text.
      for (uint64_t i = static_cast<uint64_t>(t); i < per_thread * threads; i += threads) {
        generated_event e = generate(seed, i);
        event ev = e.view();
        field_error err;
        while ((err = rt.record(ev)).code == errc::backpressure)
          std::this_thread::yield();
        if (err)
          refused.fetch_add(1);
      }
    });
  }
  for (auto& r : recorders)
    r.join();
  recording = false;
  reader.join();
  rt.stop();

  EXPECT_EQ(refused.load(), 0);
  EXPECT_GT(reads.load(), 0u);
  stats s = rt.snapshot();
  EXPECT_EQ(s.events_accepted, per_thread * threads);
  rollup_rows expected;
  for (uint64_t i = 0; i < per_thread * threads; ++i)
    add_reference(expected, generate(seed, i));
  stage1_contents got = read_stage1(redis.url(), "conc");
  EXPECT_TRUE(got.errors.empty()) << got.errors.front();
  EXPECT_TRUE(got.duplicate_ids.empty()) << "duplicate batch id " << got.duplicate_ids.front();
  EXPECT_EQ(diff_rows(expected, got.rows), "");
  EXPECT_GT(got.batches, 3u) << "too few swaps to have raced with the recorders";
}
