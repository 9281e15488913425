// tests/ingest_threads_test.cpp — the hot path and the aggregator swap on
// plain threads, for ThreadSanitizer.
//
// The runtime's actors hand messages over inside libcaf_core, which Debian
// does not build with TSan, so TSan cannot run them (tests/sanitizers/
// README.md). Here the same code runs with the actors replaced by threads:
// producers call ingest_state::record() and durable_fence() as embedding
// threads and RESP connections do; one thread per shard runs
// shard_aggregator as its actor would (a producer's wake becomes the
// cleared `sleeping` flag, a swap request a task posted under a mutex); a
// writer thread swaps every shard as the buffer writer does, sums the maps
// and completes the durable tickets it saw before swapping; another reads
// the counters. Small key and queue limits keep the shards pausing and the
// producers meeting backpressure, and the producers share id texts, so the
// intern table races on the same new text from several threads.
//
// The checks are the pipeline's promises: totals exact per key, every
// event accepted counted once, and a durable ticket completed only when its
// thread's earlier events are in the maps the writer holds. The test also
// runs in the normal build (label unit).
#include "actors/ingest.hpp"
#include "actors/shard_aggregator.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

using namespace tally;

namespace {

constexpr int64_t fixed_ts = 1'700'000'000'000;  // one minute for every event

/// One shard's aggregator on its own thread, driven the way the actor is.
class aggregator_thread {
public:
  aggregator_thread(ingest_state& ingest, shard& home)
    : home_(home), core_(ingest.cfg, home), thread_([this] { run(); }) {}

  ~aggregator_thread() {
    {
      std::lock_guard<std::mutex> guard{mutex_};
      stopping_ = true;
    }
    thread_.join();
  }

  /// Runs `task` on the aggregator's thread, between two turns, as the
  /// actor runs a message, and waits for it.
  template <class T>
  T call(std::function<T(shard_aggregator&)> task) {
    std::packaged_task<T()> job{[this, task] { return task(core_); }};
    auto result = job.get_future();
    {
      std::lock_guard<std::mutex> guard{mutex_};
      tasks_.emplace_back([&job] { job(); });
    }
    return result.get();
  }

private:
  void run() {
    // A new shard sleeps until a producer wakes it.
    bool awake = false;
    bool paused = false;
    for (;;) {
      std::function<void()> task;
      {
        std::lock_guard<std::mutex> guard{mutex_};
        if (stopping_)
          return;
        if (!tasks_.empty()) {
          task = std::move(tasks_.front());
          tasks_.pop_front();
        }
      }
      if (task) {
        task();
        // As after the actor's swap: a shard that is not asleep gets a turn.
        paused = false;
        awake = core_.needs_turn();
        continue;
      }
      if (!awake && !paused && !home_.sleeping.load())
        awake = true;  // a producer's wake-up
      if (awake) {
        auto r = core_.turn();
        // Lingering, the actor looks again after a pause; here at once.
        awake = r == shard_aggregator::turn_result::more || r == shard_aggregator::turn_result::linger;
        paused = r == shard_aggregator::turn_result::paused;
      } else {
        std::this_thread::yield();
      }
    }
  }

  shard& home_;
  shard_aggregator core_;
  std::mutex mutex_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  std::thread thread_;  // last: starts once the members above exist
};

/// What the writer has summed, keyed by (key text, model text).
struct totals {
  std::map<std::pair<std::string, std::string>, measure_values> by_key;
  std::vector<int64_t> requests_by_thread;
};

/// Swaps every shard, sums its map into `out` and gives the map back.
void swap_all(ingest_state& ingest, std::vector<std::unique_ptr<aggregator_thread>>& aggs, totals& out) {
  for (auto& agg : aggs) {
    agg_map_ptr map = agg->call<agg_map_ptr>([](shard_aggregator& core) { return core.swap(); });
    map->for_each([&](const agg_key& key, measure_values& m) {
      std::string key_text{ingest.ids.text(key.ids[static_cast<int>(field::key)])};
      std::string model_text{ingest.ids.text(key.ids[static_cast<int>(field::model)])};
      out.by_key[{key_text, model_text}].add(m);
      size_t thread = std::stoul(key_text.substr(1, key_text.find('-') - 1));
      out.requests_by_thread[thread] += m.requests;
    });
    agg->call<bool>([map](shard_aggregator& core) {
      core.recycle(map);
      return true;
    });
  }
}

config small_limits() {
  config cfg;
  cfg.max_keys_per_shard = 512;  // the floor: shards pause and resume often
  cfg.queue_capacity = 1024;     // producers meet backpressure
  cfg.intern_capacity = 1u << 14;
  return cfg;
}

std::string key_text(int thread, uint64_t i) { return "t" + std::to_string(thread) + "-k" + std::to_string(i % 97); }
std::string model_text(uint64_t i) { return "m" + std::to_string(i % 50); }

} // namespace

// The wake-up contract, on one thread: a producer wakes a sleeping
// aggregator; one that found events lingers awake, so producers send
// nothing more; the first turn that finds the queue empty goes to sleep,
// so an idle shard is never polled. Every event lands in the map.
TEST(IngestThreads, AggregatorLingersWhileEventsComeAndSleepsWhenIdle) {
  ingest_state ingest(small_limits(), 1);
  shard& home = *ingest.shards[0];
  shard_aggregator core(ingest.cfg, home);
  using turn = shard_aggregator::turn_result;
  auto record_one = [&] {
    event ev;
    ev.id(field::key) = "k";
    ev.spend = 1;
    ev.ts_ms = fixed_ts;
    ASSERT_EQ(ingest.record(ev).code, errc::ok);
  };
  auto wakeups = [&] { return ingest.counters.wakeups.load(); };
  ASSERT_TRUE(home.sleeping.load());
  record_one();
  EXPECT_EQ(wakeups(), 1u);
  EXPECT_EQ(core.turn(), turn::linger);
  EXPECT_FALSE(home.sleeping.load());
  record_one();
  record_one();
  EXPECT_EQ(wakeups(), 1u) << "a lingering aggregator was sent a wake-up";
  EXPECT_EQ(core.turn(), turn::linger);
  EXPECT_EQ(core.turn(), turn::asleep);
  EXPECT_TRUE(home.sleeping.load());
  record_one();
  EXPECT_EQ(wakeups(), 2u);
  EXPECT_EQ(core.turn(), turn::linger);
  int64_t spend = 0;
  core.swap()->for_each([&](const agg_key&, measure_values& m) { spend += m.spend; });
  EXPECT_EQ(spend, 4);
}

TEST(IngestThreads, RecordSwapAndDurableTicketsExactAcrossThreads) {
  constexpr int producers = 4;
  constexpr uint64_t per_producer = 12000;
  constexpr uint64_t fence_every = 500;
  ingest_state ingest(small_limits(), 2);
  std::vector<std::unique_ptr<aggregator_thread>> aggs;
  for (auto& s : ingest.shards)
    aggs.push_back(std::make_unique<aggregator_thread>(ingest, *s));

  totals sums;
  sums.requests_by_thread.assign(producers, 0);
  std::atomic<int> producers_left{producers};
  std::atomic<uint64_t> tickets_checked{0};
  std::atomic<uint64_t> tickets_early{0};  // completed before their events were summed
  std::atomic<uint64_t> backpressured{0};

  // The writer: tickets first, then the swap, then the tickets' answers.
  std::thread writer([&] {
    // The first swap waits for backpressure: until then the shards fill to
    // their key limit and pause, so the pause, the full queue and the
    // producers' retries are certain to happen, whatever the scheduling.
    while (backpressured.load() == 0 && producers_left.load() > 0)
      std::this_thread::yield();
    for (;;) {
      bool last = producers_left.load() == 0;
      std::vector<durable_ticket> seen;
      durable_ticket t;
      while (ingest.tickets.try_dequeue(t))
        seen.push_back(std::move(t));
      swap_all(ingest, aggs, sums);
      for (auto& ticket : seen)
        ticket.done({});
      if (last)
        return;
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
  });
  std::atomic<bool> reading{true};
  std::thread reader([&] {
    while (reading.load()) {
      stats s;
      ingest.add_counters(s);
      std::this_thread::yield();
    }
  });

  std::vector<std::thread> threads;
  for (int p = 0; p < producers; ++p) {
    threads.emplace_back([&, p] {
      for (uint64_t i = 0; i < per_producer; ++i) {
        if (i == per_producer / 2) {
          // Halfway, wait for a shard to pause at its key limit (the writer
          // does not swap before backpressure): only the aggregators raise
          // `full`, so on a busy box producers could otherwise finish
          // before an aggregator ever ran, and meet no backpressure at all.
          while (backpressured.load() == 0
                 && std::none_of(ingest.shards.begin(), ingest.shards.end(),
                                 [](const auto& s) { return s->full.load(); })) {
            ingest.wake_mine();
            std::this_thread::yield();
          }
        }
        std::string k = key_text(p, i);
        std::string m = model_text(i);
        event ev;
        ev.id(field::key) = k;
        ev.id(field::model) = m;
        ev.spend = static_cast<nano_units>(i + 1);
        ev.prompt_tokens = 1;
        ev.ts_ms = fixed_ts;
        field_error err;
        while ((err = ingest.record(ev, i % 8 == 7)).code == errc::backpressure) {
          backpressured.fetch_add(1, std::memory_order_relaxed);
          ingest.wake_mine();
          std::this_thread::yield();
        }
        if (err.code != errc::ok) {
          ADD_FAILURE() << "record refused: " << to_string(err.code);
          break;
        }
        if ((i + 1) % fence_every == 0) {
          // Runs on the writer's thread, after a swap: every event this
          // thread recorded so far must be in the sums by then.
          ingest.durable_fence([&, p, recorded = static_cast<int64_t>(i + 1)](field_error e) {
            EXPECT_FALSE(e);
            tickets_checked.fetch_add(1);
            if (sums.requests_by_thread[p] < recorded)
              tickets_early.fetch_add(1);
          });
        }
      }
      ingest.wake_mine();
      producers_left.fetch_sub(1);
    });
  }
  for (auto& t : threads)
    t.join();
  writer.join();
  reading.store(false);
  reader.join();
  ingest.close();

  EXPECT_EQ(tickets_checked.load(), producers * per_producer / fence_every);
  EXPECT_EQ(tickets_early.load(), 0u) << "a durable ticket completed before its events reached a swapped map";
  // Expected sums per (key, model): thread p's event i has key i % 97,
  // model i % 50, spend i + 1.
  std::map<std::pair<std::string, std::string>, std::pair<int64_t, int64_t>> expected;
  for (int p = 0; p < producers; ++p)
    for (uint64_t i = 0; i < per_producer; ++i) {
      auto& e = expected[{key_text(p, i), model_text(i)}];
      e.first += 1;
      e.second += static_cast<int64_t>(i + 1);
    }
  ASSERT_EQ(sums.by_key.size(), expected.size());
  for (auto& [key, want] : expected) {
    auto it = sums.by_key.find(key);
    ASSERT_NE(it, sums.by_key.end()) << key.first << " " << key.second;
    EXPECT_EQ(it->second.requests, want.first) << key.first << " " << key.second;
    EXPECT_EQ(it->second.prompt_tokens, want.first) << key.first << " " << key.second;
    EXPECT_EQ(static_cast<int64_t>(it->second.spend), want.second) << key.first << " " << key.second;
  }
  stats s;
  ingest.add_counters(s);
  EXPECT_EQ(s.events_accepted, producers * per_producer);
  EXPECT_EQ(s.events_backpressured, backpressured.load());
  EXPECT_EQ(s.queue_depth, 0u);
  // The limits are meant to be met: otherwise the pause and backpressure
  // paths went untested.
  EXPECT_GT(backpressured.load(), 0u) << "no producer met backpressure: the limits are not exercised";
  aggs.clear();
}

// close() races with producers: once it returns, nobody is inside record(),
// every event it accepted is in a swapped map, and later ones are refused.
TEST(IngestThreads, CloseWhileRecordingLosesNothingAccepted) {
  constexpr int producers = 3;
  ingest_state ingest(small_limits(), 2);
  std::vector<std::unique_ptr<aggregator_thread>> aggs;
  for (auto& s : ingest.shards)
    aggs.push_back(std::make_unique<aggregator_thread>(ingest, *s));
  std::vector<int64_t> accepted(producers, 0);
  std::atomic<uint64_t> recorded_total{0};
  std::vector<std::thread> threads;
  for (int p = 0; p < producers; ++p) {
    threads.emplace_back([&, p] {
      for (uint64_t i = 0;; ++i) {
        std::string k = key_text(p, i);
        std::string m = model_text(i);
        event ev;
        ev.id(field::key) = k;
        ev.id(field::model) = m;
        ev.spend = 1;
        ev.ts_ms = fixed_ts;
        auto err = ingest.record(ev);
        if (err.code == errc::stopped)
          return;
        if (err.code == errc::ok) {
          ++accepted[p];
          recorded_total.fetch_add(1, std::memory_order_relaxed);
        } else if (err.code == errc::backpressure) {
          std::this_thread::yield();
        } else {
          ADD_FAILURE() << "record refused: " << to_string(err.code);
          return;
        }
      }
    });
  }
  // Fewer than one shard holds before it pauses: nobody swaps until close,
  // so a larger count could wait on a full shard for ever.
  while (recorded_total.load() < 500)
    std::this_thread::yield();
  ingest.close();
  totals sums;
  sums.requests_by_thread.assign(producers, 0);
  swap_all(ingest, aggs, sums);  // after close(): nothing more can arrive
  for (auto& t : threads)
    t.join();
  for (int p = 0; p < producers; ++p)
    EXPECT_EQ(sums.requests_by_thread[p], accepted[p]) << "producer " << p;
  stats s;
  ingest.add_counters(s);
  EXPECT_EQ(s.events_accepted, recorded_total.load());
  aggs.clear();
}

// The id table is emptied while producers record texts it has never seen
// (every key is new): the writer holds producers back, swaps every shard,
// turns the maps into texts and only then empties the table, as the buffer
// writer does. No id may be read after its text was forgotten or reused
// for another text: each key's sum must come back under its own text.
TEST(IngestThreads, ReclaimWhileRecordingKeepsEveryTextWithItsSums) {
  constexpr int producers = 3;
  constexpr uint64_t per_producer = 6000;
  config cfg = small_limits();
  cfg.intern_capacity = 1024;  // 896 texts; 18,000 keys and 50 models go through
  ingest_state ingest(cfg, 2);
  std::vector<std::unique_ptr<aggregator_thread>> aggs;
  for (auto& s : ingest.shards)
    aggs.push_back(std::make_unique<aggregator_thread>(ingest, *s));
  auto unique_key = [](int p, uint64_t i) { return "t" + std::to_string(p) + "-u" + std::to_string(i); };

  totals sums;
  sums.requests_by_thread.assign(producers, 0);
  std::atomic<int> producers_left{producers};
  uint64_t reclaims = 0;
  std::thread writer([&] {
    for (;;) {
      bool last = producers_left.load() == 0;
      bool reclaim = ingest.reclaim_wanted.load() || ingest.ids.size() >= ingest.reclaim_at();
      if (reclaim)
        ingest.begin_reclaim();
      swap_all(ingest, aggs, sums);
      if (reclaim) {
        ingest.end_reclaim();
        ++reclaims;
      }
      if (last)
        return;
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
  });
  std::vector<std::thread> threads;
  for (int p = 0; p < producers; ++p) {
    threads.emplace_back([&, p] {
      for (uint64_t i = 0; i < per_producer; ++i) {
        std::string k = unique_key(p, i);
        std::string m = model_text(i);
        event ev;
        ev.id(field::key) = k;
        ev.id(field::model) = m;
        ev.spend = static_cast<nano_units>(i + 1);
        ev.ts_ms = fixed_ts;
        field_error err;
        while ((err = ingest.record(ev)).code == errc::backpressure) {
          ingest.wake_mine();
          std::this_thread::yield();
        }
        if (err.code != errc::ok) {
          ADD_FAILURE() << "record refused: " << to_string(err.code);
          break;
        }
      }
      ingest.wake_mine();
      producers_left.fetch_sub(1);
    });
  }
  for (auto& t : threads)
    t.join();
  writer.join();
  ingest.close();

  EXPECT_GE(reclaims, 15u);
  stats s;
  ingest.add_counters(s);
  EXPECT_EQ(s.id_reclaims, reclaims);
  EXPECT_EQ(s.events_accepted, producers * per_producer);
  EXPECT_EQ(s.events_rejected, 0u);
  ASSERT_EQ(sums.by_key.size(), producers * per_producer);
  for (int p = 0; p < producers; ++p)
    for (uint64_t i = 0; i < per_producer; ++i) {
      auto it = sums.by_key.find({unique_key(p, i), model_text(i)});
      ASSERT_NE(it, sums.by_key.end()) << unique_key(p, i);
      EXPECT_EQ(it->second.requests, 1);
      EXPECT_EQ(static_cast<uint64_t>(it->second.spend), i + 1) << unique_key(p, i);
    }
  aggs.clear();
}
