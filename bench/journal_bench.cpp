// bench/journal_bench.cpp — what spilling a stage-1 batch costs: the local
// journal against the Redis push it stands in for, same bytes, same run.
//
//  * BM_JournalAppendSync/<bytes>: one append + one fdatasync per batch (a
//    writer that spills each batch durably on its own).
//  * BM_JournalGroupCommit/<bytes>: 16 appends, then one fdatasync (group
//    commit: what a writer draining a backlog does).
//  * BM_RedisLpush/<bytes>: one LPUSH per batch to a real redis-server with
//    appendonly yes + appendfsync always (the harness default), so each
//    reply means the batch is on disk, as after sync().
//  * BM_RedisLpushPipelined/<bytes>: 16 LPUSH in one round trip; Redis then
//    fsyncs its AOF once for all of them, its form of group commit.
//
// Counters: items = batches/s, bytes = payload bytes/s. The journal lives in
// a temp dir under $TMPDIR (or /tmp), where the harness also puts Redis's
// AOF, so both sides fsync to the same filesystem. Run:
//   build/bench/journal_bench --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
#include "adapters/redis_client.hpp"
#include "adapters/spill_journal.hpp"
#include "tests/harness/servers.hpp"

#include <benchmark/benchmark.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <unistd.h>

using namespace tally;
using namespace std::chrono_literals;

namespace {

constexpr int64_t group_size = 16;
// Bounds the journal file and the Redis list between resets, so a long run
// measures appends, not a filling disk or a growing Redis.
constexpr uint64_t reset_after_bytes = 256ull << 20;

/// A temp directory removed at exit, on the filesystem Redis's AOF uses.
class temp_dir {
public:
  temp_dir() {
    const char* env = std::getenv("TMPDIR");
    std::string path = std::string(env && *env ? env : "/tmp") + "/tally-journal-bench-XXXXXX";
    if (::mkdtemp(path.data()) == nullptr)
      throw std::runtime_error("journal_bench: mkdtemp " + path + ": " + std::strerror(errno));
    path_ = path;
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const noexcept { return path_; }

private:
  std::string path_;
};

temp_dir& journal_dir() {
  static temp_dir dir;
  return dir;
}

testing::redis_server& redis() {
  static testing::redis_server server;  // appendonly yes, appendfsync always
  return server;
}

std::string batch_bytes(size_t n) {
  std::string b(n, '\0');
  for (size_t i = 0; i < n; ++i)
    b[i] = static_cast<char>((i * 2654435761u) >> 13);
  return b;
}

adapters::spill_journal open_journal(const char* name) {
  auto j = adapters::spill_journal::open(journal_dir().path() + "/" + name + ".journal", reset_after_bytes * 2);
  if (!j)
    throw std::runtime_error("journal_bench: " + j.error().message);
  (void)j->clear();  // a repetition starts from an empty file
  return std::move(*j);
}

void report(benchmark::State& state, int64_t batches, size_t bytes) {
  state.SetItemsProcessed(batches);
  state.SetBytesProcessed(batches * static_cast<int64_t>(bytes));
}

void BM_JournalAppendSync(benchmark::State& state) {
  const auto payload = batch_bytes(static_cast<size_t>(state.range(0)));
  auto journal = open_journal("append_sync");
  for (auto _ : state) {
    if (journal.size_bytes() + payload.size() > reset_after_bytes) {
      state.PauseTiming();
      (void)journal.clear();
      state.ResumeTiming();
    }
    auto appended = journal.append(payload);
    auto synced = journal.sync();
    if (!appended || !synced) {
      state.SkipWithError((!appended ? appended : synced).error().message.c_str());
      break;
    }
  }
  report(state, state.iterations(), payload.size());
}
BENCHMARK(BM_JournalAppendSync)->Arg(4 << 10)->Arg(64 << 10)->UseRealTime();

void BM_JournalGroupCommit(benchmark::State& state) {
  const auto payload = batch_bytes(static_cast<size_t>(state.range(0)));
  auto journal = open_journal("group_commit");
  for (auto _ : state) {
    if (journal.size_bytes() + group_size * payload.size() > reset_after_bytes) {
      state.PauseTiming();
      (void)journal.clear();
      state.ResumeTiming();
    }
    for (int64_t i = 0; i < group_size; ++i)
      if (auto st = journal.append(payload); !st) {
        state.SkipWithError(st.error().message.c_str());
        break;
      }
    if (auto st = journal.sync(); !st) {
      state.SkipWithError(st.error().message.c_str());
      break;
    }
  }
  report(state, state.iterations() * group_size, payload.size());
}
BENCHMARK(BM_JournalGroupCommit)->Arg(4 << 10)->Arg(64 << 10)->UseRealTime();

adapters::redis_client connect_redis(const std::string& key) {
  auto ep = adapters::parse_redis_url(redis().url());
  auto c = adapters::redis_client::connect(*ep, 5000ms);
  if (!c)
    throw std::runtime_error("journal_bench: " + c.error().message);
  (void)c->command({"DEL", key});
  return std::move(*c);
}

void BM_RedisLpush(benchmark::State& state) {
  const auto payload = batch_bytes(static_cast<size_t>(state.range(0)));
  const std::string key = "bench:journal:lpush";
  auto client = connect_redis(key);
  uint64_t pushed = 0;
  for (auto _ : state) {
    if (pushed > reset_after_bytes) {
      state.PauseTiming();
      (void)client.command({"DEL", key});
      pushed = 0;
      state.ResumeTiming();
    }
    auto r = client.command({"LPUSH", key, payload});
    if (!r) {
      state.SkipWithError(r.error().message.c_str());
      break;
    }
    pushed += payload.size();
  }
  (void)client.command({"DEL", key});
  report(state, state.iterations(), payload.size());
}
BENCHMARK(BM_RedisLpush)->Arg(4 << 10)->Arg(64 << 10)->UseRealTime();

void BM_RedisLpushPipelined(benchmark::State& state) {
  const auto payload = batch_bytes(static_cast<size_t>(state.range(0)));
  const std::string key = "bench:journal:pipelined";
  auto client = connect_redis(key);
  const std::vector<std::vector<std::string_view>> commands(group_size, {"LPUSH", key, payload});
  uint64_t pushed = 0;
  for (auto _ : state) {
    if (pushed > reset_after_bytes) {
      state.PauseTiming();
      (void)client.command({"DEL", key});
      pushed = 0;
      state.ResumeTiming();
    }
    auto r = client.pipeline(commands);
    if (!r) {
      state.SkipWithError(r.error().message.c_str());
      break;
    }
    if (r->back().type == adapters::redis_reply::kind::error) {
      state.SkipWithError(r->back().str.c_str());
      break;
    }
    pushed += group_size * payload.size();
  }
  (void)client.command({"DEL", key});
  report(state, state.iterations() * group_size, payload.size());
}
BENCHMARK(BM_RedisLpushPipelined)->Arg(4 << 10)->Arg(64 << 10)->UseRealTime();

} // namespace

BENCHMARK_MAIN();
