// bench/scale_bench.cpp — stage 2 against the number of tallyd instances:
// 1, 8, 32 ... real tallyd processes on one redis-server and one Postgres
// (tests/harness), each run checked for exact totals against the workload's
// reference rollups (tests/support/fleet_scale.hpp), and what the flushes
// and Redis did meanwhile.
//
//   scale_bench [--instances 1,8,32] [--events 40000] [--rate 2000] [--block 20] [--mode steady|drain|both]
//               [--seed 1] [-- TALLYD_FLAGS...]   (e.g. -- --flush-interval 100ms; default: tallyd's defaults)
//
// steady: every instance can flush; the events arrive at --rate over all
//   instances, pipelines of --block events round-robin (small enough that
//   every instance gets events in every buffer interval); one lease holder flushes as they
//   come. Shows flushes, batches and rows per flush, flush time, Redis calls.
// drain: the instances only write stage 1 (events sent as in steady) and
//   stop; one more instance then applies everything. Shows one apply of N producers' batches: stage-1 rows
//   (what grows with instances) against rows upserted (distinct keys).
//
// Exit status 1 when any run's totals differ from the reference.
#include "tests/support/fleet_scale.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

using namespace tally::testing;

namespace {

std::vector<int> parse_list(const std::string& text) {
  std::vector<int> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ','))
    out.push_back(std::stoi(item));
  return out;
}

std::string top_calls(const fleet_scale_result& r) {
  std::vector<std::pair<long long, std::string>> calls;
  for (auto& [cmd, n] : r.redis_calls)
    if (cmd != "config" && cmd != "info")  // the bench's own
      calls.emplace_back(n, cmd);
  std::sort(calls.rbegin(), calls.rend());
  std::string out;
  for (size_t i = 0; i < calls.size() && i < 8; ++i) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%s%s %.1f/s", i ? ", " : "", calls[i].second.c_str(),
                  static_cast<double>(calls[i].first) / r.redis_seconds);
    out += buf;
  }
  return out;
}

long long total_calls(const fleet_scale_result& r) {
  long long n = 0;
  for (auto& [cmd, calls] : r.redis_calls)
    if (cmd != "config" && cmd != "info")
      n += calls;
  return n;
}

} // namespace

int main(int argc, char** argv) {
  std::vector<int> sizes{1, 8, 32};
  fleet_scale_options base;
  base.events = 40000;
  base.rate = 2000;
  base.block = 20;
  std::string mode = "both";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << "scale_bench: " << a << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--instances") sizes = parse_list(next());
    else if (a == "--events") base.events = std::stoull(next());
    else if (a == "--rate") base.rate = std::stod(next());
    else if (a == "--mode") mode = next();
    else if (a == "--seed") base.seed = std::stoull(next());
    else if (a == "--block") base.block = std::stoull(next());
    else if (a == "--") {
      base.tallyd_args.assign(argv + i + 1, argv + argc);
      break;
    } else {
      std::cerr << "scale_bench: unknown argument " << a << "\n";
      return 2;
    }
  }
  base.deadline = std::chrono::seconds(600);

  redis_server redis;
  postgres_server postgres;
  bool exact = true;
  for (bool drain : {false, true}) {
    if ((drain && mode == "steady") || (!drain && mode == "drain"))
      continue;
    std::printf("\n%s: %llu events, %s events/s in total, pipelines of %llu\n",
                drain ? "drain (N producers stop, then one flusher applies all their batches)"
                      : "steady (N instances, one lease holder flushes as events arrive)",
                static_cast<unsigned long long>(base.events),
                base.rate > 0 ? std::to_string(static_cast<long long>(base.rate)).c_str() : "as many",
                static_cast<unsigned long long>(base.block));
    for (int n : sizes) {
      auto o = base;
      o.instances = n;
      o.drain = drain;
      o.ns = std::string(drain ? "drain" : "steady") + std::to_string(n);
      fleet_scale_result r;
      try {
        r = run_fleet_scale(redis, postgres, o);
      } catch (const std::exception& e) {
        std::printf("N=%d: failed: %s\n", n, e.what());
        exact = false;
        continue;
      }
      bool ok = r.totals_diff.empty() && r.events_accepted == static_cast<long long>(o.events)
                && (!drain || r.stage1_diff.empty());
      for (int code : r.exit_codes)
        ok &= code == 0;
      exact &= ok;
      double per_flush_rows = r.flushes ? static_cast<double>(r.rows_upserted) / r.flushes : 0;
      double per_flush_batches = r.flushes ? static_cast<double>(r.batches_written) / r.flushes : 0;
      double flush_ms = r.flushes ? 1000 * r.flush_seconds / r.flushes : 0;
      std::printf("N=%-3d totals %s (%zu rows; %lld of %llu events accepted; lease holders %d)\n", n,
                  ok ? "EXACT" : "DIFFER", r.reference_rows, r.events_accepted,
                  static_cast<unsigned long long>(o.events), r.lease_holders);
      if (!r.totals_diff.empty())
        std::printf("      first difference: %s\n", r.totals_diff.substr(0, 400).c_str());
      std::printf("      sent in %.1f s, all in Postgres after %.1f s; %lld batches written", r.send_seconds,
                  r.visible_seconds, r.batches_written);
      if (!drain)  // a stopped producer's byte count is gone with its /metrics
        std::printf(" (%.2f MB)", r.batch_bytes / 1e6);
      std::printf("\n");
      if (drain)
        std::printf("      stage 1 before the flusher: %zu batches, %zu rows (%.2f x the distinct rows)%s\n",
                    r.stage1_batches, r.stage1_rows,
                    static_cast<double>(r.stage1_rows) / static_cast<double>(r.reference_rows),
                    r.stage1_diff.empty() ? "" : " STAGE 1 DIFFERS");
      std::printf("      flushes %lld: %.1f batches, %.0f rows, %.1f ms each on average; %lld rows upserted; "
                  "%lld duplicate batches\n",
                  r.flushes, per_flush_batches, per_flush_rows, flush_ms, r.rows_upserted, r.duplicate_batches);
      std::printf("      redis: %.0f commands/s over %.1f s, %.1f%% of a core, in %.2f MB/s, out %.2f MB/s: %s\n",
                  total_calls(r) / r.redis_seconds, r.redis_seconds, 100 * r.redis_cpu_seconds / r.redis_seconds,
                  r.redis_bytes_in / r.redis_seconds / 1e6, r.redis_bytes_out / r.redis_seconds / 1e6,
                  top_calls(r).c_str());
      if (!drain)
        std::printf("      tallyd processes: %.2f cores in all, %.1f%% of a core each\n",
                    r.fleet_cpu_seconds / r.redis_seconds, 100 * r.fleet_cpu_seconds / r.redis_seconds / n);
      std::fflush(stdout);
    }
  }
  return exact ? 0 : 1;
}
