// tests/tallyd_flood_test.cpp — a flood of distinct keys against one tallyd
// with small ingest limits: every event is counted, its memory stays under
// the bound README's "Memory" section gives for those limits, and every
// event is in Postgres exactly once.
//
// The limits are small so that the flood reaches them in seconds: 2 shards,
// max_keys_per_shard 16,384, queue_capacity 4,096, intern_capacity 65,536.
// Three rounds of 50,000 events, each with a new API key, go through
// `redis-cli --pipe`: 150,000 keys through an id table that holds 57,344
// texts, so it fills and is emptied (reclaimed) while ingest pushes back
// for a moment; nothing is refused. Memory is read from /proc: VmHWM, the
// peak RSS of the whole run, against the bound (this tallyd flushes, so the
// bound has stage 2's terms), and VmRSS once the flood is over, which must
// fall back toward idle. Every command must get its reply: a
// connection whose reads paused and never resumed showed up here as
// redis-cli's "No replies for 30 seconds".
//
// Not under the sanitizer builds: their shadow memory makes RSS meaningless.
#include "tests/harness/servers.hpp"
#include "tests/support/shared_servers.hpp"
#include "tests/support/tallyd_process.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <regex>
#include <string>
#include <thread>
#include <vector>

using namespace tally::testing;
using namespace std::chrono_literals;

namespace {

/// A field of /proc/<pid>/status in bytes ("VmRSS", "VmHWM"); -1 if absent.
long long status_bytes(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(field + ":", 0) == 0)
      return std::stoll(line.substr(field.size() + 1)) * 1024;
  return -1;
}

/// Sends `commands` pipelined through redis-cli; returns (replies, errors).
std::pair<long long, long long> pipe(int port, const std::string& file_text) {
  auto file = temp_path("flood.resp");
  write_file(file, file_text);
  // redis-cli exits 1 when any reply was an error: the summary is the result.
  auto out = run({"sh", "-c", "redis-cli -h 127.0.0.1 -p " + std::to_string(port) + " --pipe < " + file}, 120s).second;
  std::smatch m;
  static const std::regex summary{R"(errors: (\d+), replies: (\d+))"};
  if (!std::regex_search(out, m, summary)) {
    ADD_FAILURE() << "no summary from redis-cli --pipe: " << out;
    return {0, 0};
  }
  return {std::stoll(m[2]), std::stoll(m[1])};
}

std::string round_commands(int round, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) {
    std::string key = "flood-" + std::to_string(round) + "-" + std::to_string(i);
    out += "*5\r\n$12\r\nTALLY.RECORD\r\n$3\r\nkey\r\n$" + std::to_string(key.size()) + "\r\n" + key +
           "\r\n$5\r\nspend\r\n$1\r\n1\r\n";
  }
  return out;
}

class Flood : public shared_servers {};

} // namespace

TEST_F(Flood, DistinctKeysAllCountedWithinTheMemoryBound) {
  constexpr int rounds = 3, per_round = 50000;
  constexpr long long shards = 2, max_keys = 16384, queue_capacity = 4096, intern_capacity = 65536;
  postgres_->psql("CREATE SCHEMA IF NOT EXISTS flood");
  tallyd_process d({"--ns", "flood", "--redis-urls", redis_->url(), "--postgres-url", postgres_->url(),
                    "--pg-schema", "flood", "--resp-port", "0", "--http-port", "0", "--buffer-interval", "200ms",
                    "--flush-interval", "200ms", "--worker-threads", "2", "--state-dir", temp_dir("tally-state-"),
                    "--shards", std::to_string(shards), "--max-keys-per-shard", std::to_string(max_keys),
                    "--queue-capacity", std::to_string(queue_capacity), "--intern-capacity",
                    std::to_string(intern_capacity)});
  ASSERT_TRUE(d.wait_ready()) << slurp(d.log);
  const long long idle_rss = status_bytes(d.pid, "VmRSS");
  ASSERT_GT(idle_rss, 0);

  long long accepted = 0, refused = 0;
  for (int r = 0; r < rounds; ++r) {
    auto [replies, errors] = pipe(d.resp_port, round_commands(r, per_round));
    EXPECT_EQ(replies, per_round) << "every command gets a reply";
    accepted += replies - errors;
    refused += errors;
    std::printf("flood: after round %d RSS %.1f MB\n", r + 1, status_bytes(d.pid, "VmRSS") / 1e6);
  }
  const long long rss_after_last = status_bytes(d.pid, "VmRSS");
  const long long peak = status_bytes(d.pid, "VmHWM");
  auto metrics = http_get(d.http_port, "/metrics").body;
  const long long reclaims = metric(metrics, "tally_id_reclaims_total");
  const long long interned = metric(metrics, "tally_ids_interned");

  // README, "Memory": idle RSS + shards x (max_keys_per_shard + 4 x
  // queue_capacity) x 1.5 KiB + intern_capacity x 160 B + connections x 2 x
  // resp_max_buffered_bytes (the default 4 MiB, one connection at a time),
  // and with a postgres_url 170 MB for a flush chunk and 70 MB for the read
  // path's ledger of own writes.
  const long long bound = idle_rss + shards * (max_keys + 4 * queue_capacity) * 1536 + intern_capacity * 160 +
                          2 * (4LL << 20) + 170'000'000 + 70'000'000;
  std::printf("flood: idle RSS %.1f MB, after round %d %.1f MB, peak %.1f MB, bound %.1f MB; accepted %lld, "
              "refused %lld; id table reclaimed %lld times, %lld texts in it\n",
              idle_rss / 1e6, rounds, rss_after_last / 1e6, peak / 1e6, bound / 1e6, accepted, refused, reclaims,
              interned);
  EXPECT_EQ(refused, 0) << "events refused: the id table should have been reclaimed instead";
  EXPECT_GE(reclaims, 2) << "150,000 keys through a table of 57,344 texts";
  EXPECT_LE(interned, intern_capacity - intern_capacity / 8);
  EXPECT_LE(peak, bound) << "peak RSS over the documented bound";

  // Every accepted event is in Postgres once, and still once after the stop.
  const std::string sum_sql = "SELECT coalesce(sum(requests), 0) FROM flood.tally_minute";
  const std::string want = std::to_string(accepted) + "\n";
  EXPECT_TRUE(wait_for([&] { return postgres_->psql_or_empty(sum_sql) == want; }, 60s))
    << postgres_->psql(sum_sql) << " requests in Postgres, accepted " << accepted << "\n" << slurp(d.log);
  // What the flood freed goes back to the system once it is over
  // (core/memory_release.hpp): RSS falls to below half of what the flood
  // added. Kept by glibc it stayed above the peak.
  const long long settled_target = idle_rss + (peak - idle_rss) / 2;
  long long settled = 0;
  wait_for([&] { return (settled = status_bytes(d.pid, "VmRSS")) < settled_target; }, 20s);
  std::printf("flood: RSS %.1f MB after the flood (idle %.1f MB, peak %.1f MB)\n", settled / 1e6, idle_rss / 1e6,
              peak / 1e6);
  EXPECT_LT(settled, settled_target) << "the flood's freed memory was not given back";
  EXPECT_EQ(d.terminate(), 0) << slurp(d.log);
  EXPECT_EQ(postgres_->psql(sum_sql), want);
}
