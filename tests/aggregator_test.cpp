// tests/aggregator_test.cpp — one shard's aggregator against its contract:
// every event dequeued is in exactly one map that reaches the writer.
#include "actors/aggregator.hpp"
#include "actors/atoms.hpp"
#include "actors/ingest.hpp"

#include <gtest/gtest.h>

#include <caf/all.hpp>

#include <string>
#include <vector>

using namespace tally;

namespace {

struct swapped {
  int64_t requests = 0;
  int64_t spend = 0;
  uint32_t keys = 0;
};

swapped swap(caf::scoped_actor& self, const caf::actor& aggregator) {
  swapped out;
  self->request(aggregator, caf::infinite, swap_atom::value)
    .receive(
      [&](agg_map_ptr& map) {
        out.keys = map->size();
        map->for_each([&](const agg_key&, measure_values& m) {
          out.requests += m.requests;
          out.spend += static_cast<int64_t>(m.spend);
        });
        self->send(aggregator, recycle_atom::value, std::move(map));
      },
      [&](caf::error& err) { ADD_FAILURE() << "swap failed: " << caf::to_string(err); });
  return out;
}

} // namespace

// The queue bound is advisory: only the aggregator raises `full`, so while
// it gets no CPU time (a loaded machine) producers keep enqueuing, and the
// next swap finds far more distinct keys than its map's hard limit. Every
// one of those events was accepted: the swap must hand all of them over, in
// the map it returns (a durable ticket seen before the swap counts on it).
TEST(Aggregator, SwapHandsOverEveryQueuedEventPastTheHardLimit) {
  config cfg;
  cfg.max_keys_per_shard = 16;  // soft limit 512 (its floor), hard limit 512 + 4 x 16 = 576
  cfg.queue_capacity = 16;
  ingest_state ingest(cfg, 1);  // outlives the actor system, as in the runtime
  caf::actor_system_config sys_cfg;
  caf::actor_system sys{sys_cfg};
  shard& home = *ingest.shards[0];
  home.aggregator = spawn_aggregator(sys, ingest, home);
  // Producers wake the aggregator only when it sleeps: marked awake, it
  // drains nothing until the swap, like an aggregator starved of CPU.
  home.sleeping.store(false);

  const int n = 3000;  // distinct end users: over twice the hard limit
  std::vector<std::string> users;
  users.reserve(n);
  for (int i = 0; i < n; ++i)
    users.push_back("user-" + std::to_string(i));
  for (int i = 0; i < n; ++i) {
    event ev;
    ev.id(field::end_user) = users[static_cast<size_t>(i)];
    ev.spend = i + 1;
    ev.ts_ms = 1'700'000'000'000;
    ASSERT_EQ(ingest.record(ev).code, errc::ok) << "event " << i;
  }

  caf::scoped_actor self{sys};
  auto first = swap(self, home.aggregator);
  EXPECT_EQ(first.requests, n);
  EXPECT_EQ(first.spend, int64_t{n} * (n + 1) / 2);
  EXPECT_EQ(first.keys, static_cast<uint32_t>(n));
  auto second = swap(self, home.aggregator);
  EXPECT_EQ(second.requests, 0) << "events recorded before the first swap ended up in the next one";

  // The maps keep working at their own bound afterwards.
  for (int i = 0; i < 100; ++i) {
    event ev;
    ev.id(field::end_user) = users[static_cast<size_t>(i)];
    ev.spend = 1;
    ev.ts_ms = 1'700'000'000'000;
    ASSERT_EQ(ingest.record(ev).code, errc::ok);
  }
  auto third = swap(self, home.aggregator);
  EXPECT_EQ(third.requests, 100);
  EXPECT_EQ(third.keys, 100u);

  self->send_exit(home.aggregator, caf::exit_reason::user_shutdown);
  home.aggregator = nullptr;
}
