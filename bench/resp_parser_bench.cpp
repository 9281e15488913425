// bench/resp_parser_bench.cpp — our RESP request parser against hiredis's
// reader on the same pipelined input, to justify the choice in
// core/resp_parser.hpp. One iteration parses a read buffer of 32 pipelined
// TALLY.RECORD requests (what redis-benchmark -P 32 sends); items = requests.
#include "core/resp_parser.hpp"
#include "core/event.hpp"

#include <benchmark/benchmark.h>
#include <hiredis/hiredis.h>
#include <hiredis/read.h>

#include <string>
#include <vector>

namespace {

std::string encode(const std::vector<std::string>& args) {
  std::string s = "*" + std::to_string(args.size()) + "\r\n";
  for (auto& a : args)
    s += "$" + std::to_string(a.size()) + "\r\n" + a + "\r\n";
  return s;
}

/// A typical gateway event: 11 arguments.
std::string pipelined(int n) {
  std::string buf;
  for (int i = 0; i < n; ++i)
    buf += encode({"TALLY.RECORD", "key", "sk-" + std::to_string(i % 100), "user", "u" + std::to_string(i % 7),
                   "model", "gpt-4o", "spend", "0.00042", "prompt_tokens", "120", "completion_tokens", "30"});
  return buf;
}

constexpr int per_read = 32;

void BM_own_parser(benchmark::State& state) {
  std::string buf = pipelined(per_read);
  tally::resp::request_parser parser;
  size_t total_args = 0;
  for (auto _ : state) {
    size_t pos = 0;
    while (pos < buf.size()) {
      auto r = parser.parse(buf.data() + pos, buf.size() - pos);
      if (r.status != tally::resp::parse_status::complete)
        state.SkipWithError("parse failed");
      total_args += parser.args().size();
      pos += r.consumed;
    }
  }
  benchmark::DoNotOptimize(total_args);
  state.SetItemsProcessed(state.iterations() * per_read);
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(buf.size()));
}
BENCHMARK(BM_own_parser);

void BM_hiredis_reader(benchmark::State& state) {
  std::string buf = pipelined(per_read);
  redisReader* reader = redisReaderCreate();
  size_t total_args = 0;
  for (auto _ : state) {
    redisReaderFeed(reader, buf.data(), buf.size());
    for (int i = 0; i < per_read; ++i) {
      void* reply = nullptr;
      if (redisReaderGetReply(reader, &reply) != REDIS_OK || reply == nullptr) {
        state.SkipWithError("hiredis parse failed");
        break;
      }
      total_args += static_cast<redisReply*>(reply)->elements;
      freeReplyObject(reply);
    }
  }
  redisReaderFree(reader);
  benchmark::DoNotOptimize(total_args);
  state.SetItemsProcessed(state.iterations() * per_read);
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(buf.size()));
}
BENCHMARK(BM_hiredis_reader);

/// Parse plus building and validating the event: everything the connection
/// does per TALLY.RECORD before runtime::record interns and enqueues.
void BM_own_parser_and_event(benchmark::State& state) {
  std::string buf = pipelined(per_read);
  tally::resp::request_parser parser;
  tally::event_builder builder;
  int64_t spend = 0;
  for (auto _ : state) {
    size_t pos = 0;
    while (pos < buf.size()) {
      auto r = parser.parse(buf.data() + pos, buf.size() - pos);
      auto& args = parser.args();
      builder.reset();
      for (size_t i = 1; i + 1 < args.size(); i += 2)
        builder.set(args[i], args[i + 1]);
      tally::event ev;
      if (builder.finish(ev))
        state.SkipWithError("event refused");
      spend += ev.spend;
      pos += r.consumed;
    }
  }
  benchmark::DoNotOptimize(spend);
  state.SetItemsProcessed(state.iterations() * per_read);
}
BENCHMARK(BM_own_parser_and_event);

} // namespace

BENCHMARK_MAIN();
