// bench/ingest_bench.cpp — record() into aggregation, against a mutex baseline.
//
// Both sides do the same work per event: validate it, intern its ids, and
// add its measures to the sums under the same 44-byte fine key. tally does it
// through per-thread producer tokens, lock-free shard queues and aggregator
// actors; the baseline does it behind one std::mutex into one
// std::unordered_map, as a straightforward in-process aggregator would.
// Throughput includes aggregation: when the aggregators fall behind, record()
// pushes back and the producer retries, so the figure is what really got
// summed, not just enqueued.
//
//   build/bench/ingest_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include "actors/ingest.hpp"
#include "core/intern_table.hpp"
#include "core/rollup.hpp"
#include "tally/tally.hpp"
#include "tests/harness/servers.hpp"
#include "tests/support/workload.hpp"

#include <benchmark/benchmark.h>

#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>

namespace {

constexpr size_t event_pool = 1 << 16;

struct workload {
  std::vector<tally::testing::generated_event> owned;
  std::vector<tally::event> events;
  workload() {
    owned.reserve(event_pool);
    for (size_t i = 0; i < event_pool; ++i)
      owned.push_back(tally::testing::generate(42, i));
    for (auto& e : owned)
      events.push_back(e.view());
  }
};

workload& events() {
  static workload w;
  return w;
}

std::unique_ptr<tally::testing::redis_server> redis;
std::unique_ptr<tally::runtime> rt;

void start_runtime() {
  redis = std::make_unique<tally::testing::redis_server>();
  tally::config cfg;
  cfg.ns = "bench";
  cfg.instance_id = "bench";
  cfg.redis_urls = {redis->url()};
  cfg.state_dir = tally::testing::temp_dir("tally-state-");
  cfg.buffer_interval = std::chrono::milliseconds(1000);
  rt = std::make_unique<tally::runtime>();
  if (auto err = rt->start(cfg); !err.empty()) {
    std::fprintf(stderr, "bench: %s\n", err.c_str());
    std::exit(1);
  }
}

void BM_TallyRecord(benchmark::State& state) {
  auto& evs = events().events;
  size_t i = static_cast<size_t>(state.thread_index()) * 7919;
  uint64_t pushed_back = 0;
  for (auto _ : state) {
    const auto& ev = evs[i++ & (event_pool - 1)];
    while (rt->record(ev).code == tally::errc::backpressure) {
      ++pushed_back;
      std::this_thread::yield();
    }
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["backpressure_retries"] = benchmark::Counter(static_cast<double>(pushed_back), benchmark::Counter::kAvgThreads);
}
BENCHMARK(BM_TallyRecord)->Threads(1)->Threads(2)->Threads(4)->UseRealTime();

struct key_hash {
  size_t operator()(const tally::agg_key& k) const noexcept { return tally::hash_of(k); }
};
struct key_eq {
  bool operator()(const tally::agg_key& a, const tally::agg_key& b) const noexcept {
    return std::memcmp(&a, &b, sizeof a) == 0;
  }
};

/// The baseline: same validation, interning and key; one mutex, one map.
struct mutex_aggregator {
  tally::intern_table ids{1u << 22};
  std::mutex mutex;
  std::unordered_map<tally::agg_key, tally::measure_values, key_hash, key_eq> sums;

  tally::field_error record(const tally::event& ev) {
    if (auto err = tally::validate(ev))
      return err;
    tally::agg_key key;
    for (int f = 0; f < tally::id_field_count; ++f)
      key.ids[f] = ids.intern(ev.ids[f]);
    key.minute = static_cast<uint32_t>(ev.ts_ms / 60000);
    auto m = tally::measures_of(ev);
    std::lock_guard<std::mutex> guard{mutex};
    sums[key].add(m);
    return {};
  }
};

mutex_aggregator baseline;

// The parts of record(), one at a time, single-threaded.
void BM_PartValidate(benchmark::State& state) {
  auto& evs = events().events;
  size_t i = 0;
  for (auto _ : state)
    benchmark::DoNotOptimize(tally::validate(evs[i++ & (event_pool - 1)]));
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PartValidate);

void BM_PartIntern(benchmark::State& state) {
  auto& evs = events().events;
  static tally::intern_table ids{1u << 20};
  size_t i = 0;
  for (auto _ : state) {
    const auto& ev = evs[i++ & (event_pool - 1)];
    for (int f = 0; f < tally::id_field_count; ++f)
      benchmark::DoNotOptimize(ids.intern(ev.ids[f]));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PartIntern);

void BM_MutexBaseline(benchmark::State& state) {
  auto& evs = events().events;
  size_t i = static_cast<size_t>(state.thread_index()) * 7919;
  for (auto _ : state)
    benchmark::DoNotOptimize(baseline.record(evs[i++ & (event_pool - 1)]));
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_MutexBaseline)->Threads(1)->Threads(2)->Threads(4)->UseRealTime();

} // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv))
    return 1;
  events();
  start_runtime();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  rt->stop();
  rt.reset();
  redis.reset();
  return 0;
}
