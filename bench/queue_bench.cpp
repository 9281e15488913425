// bench/queue_bench.cpp — the queue alone: moodycamel bulk vs a mutex deque.
//
// P producer threads enqueue 96-byte events (tally's queued_event) one at a
// time, as record() does; one consumer thread drains in bulk of 256, as an
// aggregator does. Timed end to end: from the start until the consumer has
// taken every event, so a consumer that falls behind counts against the
// queue. Each side uses its natural API: moodycamel with a producer token per
// thread and a consumer token, the deque behind one std::mutex.
//
//   build/bench/queue_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include "actors/ingest.hpp"

#include <benchmark/benchmark.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

namespace {

constexpr size_t bulk = 256;
constexpr size_t per_producer = 1 << 20;

template <class Produce, class Consume>
double run(int producers, Produce produce, Consume consume) {
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int p = 0; p < producers; ++p)
    threads.emplace_back([&] {
      while (!go.load())
        std::this_thread::yield();
      produce();
    });
  size_t expected = per_producer * static_cast<size_t>(producers), taken = 0;
  auto start = std::chrono::steady_clock::now();
  go = true;
  while (taken < expected) {
    size_t n = consume();
    if (n == 0)
      std::this_thread::yield();
    taken += n;
  }
  auto seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (auto& t : threads)
    t.join();
  return seconds;
}

void BM_MoodycamelBulk(benchmark::State& state) {
  int producers = static_cast<int>(state.range(0));
  for (auto _ : state) {
    moodycamel::ConcurrentQueue<tally::queued_event> queue(1 << 16);
    moodycamel::ConsumerToken consumer(queue);
    tally::queued_event buf[bulk];
    double s = run(
      producers,
      [&] {
        moodycamel::ProducerToken token(queue);
        tally::queued_event ev{};
        for (size_t i = 0; i < per_producer; ++i) {
          ev.spend = static_cast<int64_t>(i);
          queue.enqueue(token, ev);
        }
      },
      [&] { return queue.try_dequeue_bulk(consumer, buf, bulk); });
    state.SetIterationTime(s);
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(per_producer) * producers);
}
BENCHMARK(BM_MoodycamelBulk)->Arg(1)->Arg(2)->Arg(4)->UseManualTime()->Unit(benchmark::kMillisecond);

void BM_MutexDeque(benchmark::State& state) {
  int producers = static_cast<int>(state.range(0));
  for (auto _ : state) {
    std::mutex mutex;
    std::deque<tally::queued_event> items;
    tally::queued_event buf[bulk];
    double s = run(
      producers,
      [&] {
        tally::queued_event ev{};
        for (size_t i = 0; i < per_producer; ++i) {
          ev.spend = static_cast<int64_t>(i);
          std::lock_guard<std::mutex> guard{mutex};
          items.push_back(ev);
        }
      },
      [&] {
        size_t n = 0;
        std::lock_guard<std::mutex> guard{mutex};
        while (n < bulk && !items.empty()) {
          buf[n++] = items.front();
          items.pop_front();
        }
        benchmark::DoNotOptimize(buf);
        return n;
      });
    state.SetIterationTime(s);
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(per_producer) * producers);
}
BENCHMARK(BM_MutexDeque)->Arg(1)->Arg(2)->Arg(4)->UseManualTime()->Unit(benchmark::kMillisecond);

} // namespace

BENCHMARK_MAIN();
