// bench/memory_bench.cpp — bytes of memory per interned id and per live
// aggregation key (a plain program: a size, not a rate).
//
//  * per interned id: an intern_table of the runtime's default capacity
//    interns N distinct ids ("user-<i>"); heap growth / N, once with the
//    table's preallocated slot array counted and once without.
//  * per live aggregation key: an embedded runtime (redis from
//    tests/harness, 2 shards, buffer_interval 60 s so that every key stays
//    live in the aggregators' maps) records N events that differ only in
//    their API key, so each is a new fine aggregation key and a new interned
//    id; heap and RSS growth / N once the shard queues are empty.
//
// Heap is glibc's mallinfo2() (in-use arena bytes plus mmapped blocks), so
// it counts what the process allocated, not what the kernel has touched.
//
//   build/bench/memory_bench [--keys N]          (default 400000)
#include "core/intern_table.hpp"
#include "tally/tally.hpp"
#include "tests/harness/servers.hpp"

#include <malloc.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>

namespace {

size_t heap_bytes() {
  struct mallinfo2 m = mallinfo2();
  return m.uordblks + m.hblkhd;
}

size_t rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  size_t pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

double per(size_t before, size_t after, size_t n) {
  return after > before ? static_cast<double>(after - before) / static_cast<double>(n) : 0.0;
}

} // namespace

int main(int argc, char** argv) {
  size_t n = 400000;
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], "--keys") == 0)
      n = std::strtoull(argv[i + 1], nullptr, 10);
  const tally::config defaults;
  std::printf("memory_bench: %zu distinct ids / keys\n", n);

  {
    size_t before = heap_bytes();
    tally::intern_table table(defaults.intern_capacity);
    size_t empty = heap_bytes();
    std::string id;
    for (size_t i = 0; i < n; ++i) {
      id = "user-" + std::to_string(i);
      if (table.intern(id) == tally::intern_table::npos) {
        std::fprintf(stderr, "memory_bench: intern table full at %zu\n", i);
        return 1;
      }
    }
    size_t after = heap_bytes();
    std::printf("interned id: %.1f B per id (nodes only), %.1f B per id with the %u-slot table (%zu B preallocated)\n",
                per(empty, after, n), per(before, after, n), table.capacity(), empty - before);
  }

  tally::testing::redis_server redis;
  tally::config cfg;
  cfg.ns = "memory";
  cfg.instance_id = "memory";
  cfg.redis_urls = {redis.url()};
  cfg.state_dir = tally::testing::temp_dir("tally-state-");
  cfg.shards = 2;
  cfg.buffer_interval = std::chrono::seconds(60);  // the longest allowed; the run takes seconds
  // One producer thread feeds one shard: every key must fit in it, so that
  // no shard stops draining (backpressure) before the run ends.
  cfg.max_keys_per_shard = static_cast<uint32_t>(n + 1024);
  tally::runtime rt;
  if (auto err = rt.start(cfg); !err.empty()) {
    std::fprintf(stderr, "memory_bench: %s\n", err.c_str());
    return 1;
  }
  // Warm up the producer path (tokens, first allocations) with a key that
  // stays, then measure from there.
  tally::event ev;
  std::string key = "warm";
  ev.id(tally::field::key) = key;
  ev.id(tally::field::user) = "u";
  ev.id(tally::field::model) = "gpt-4o";
  ev.spend = 1;
  (void)rt.record(ev);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  size_t heap_before = heap_bytes(), rss_before = rss_bytes();
  auto started = std::chrono::steady_clock::now();
  for (size_t i = 0; i < n; ++i) {
    key = "sk-" + std::to_string(i);
    ev.id(tally::field::key) = key;
    while (rt.record(ev).code == tally::errc::backpressure)
      std::this_thread::yield();
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (rt.snapshot().queue_depth > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  size_t heap_after = heap_bytes(), rss_after = rss_bytes();
  if (std::chrono::steady_clock::now() - started > cfg.buffer_interval / 2) {
    // A buffer cycle may have swapped the maps mid-run: the figure would mix states.
    std::fprintf(stderr, "memory_bench: recording took longer than half a buffer interval; use fewer keys\n");
    return 1;
  }
  std::printf("live aggregation key (with its new interned id): %.1f B per key heap, %.1f B per key RSS "
              "(heap +%.1f MB, RSS +%.1f MB)\n",
              per(heap_before, heap_after, n), per(rss_before, rss_after, n), (heap_after - heap_before) / 1e6,
              (rss_after - rss_before) / 1e6);
  rt.stop();
  return 0;
}
