// tests/tallyd_scale_test.cpp — several tallyd instances on one Redis and one
// Postgres: every total exact at 1 and 8 instances, and the flush of many
// instances' batches upserts each distinct row once.
//
// Real tallyd processes driven through their RESP ports
// (tests/support/fleet_scale.hpp); totals are compared row by row, to the
// nano-unit, with the generated workload's reference rollups. 32 instances
// and the figures at default intervals are bench/scale_bench.sh's: here the
// intervals are short so the binary stays well under a minute on 2 cores.
#include "tests/support/fleet_scale.hpp"

#include <gtest/gtest.h>

using namespace tally::testing;
using namespace std::chrono_literals;

namespace {

class TallydScale : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    redis_ = new redis_server();
    postgres_ = new postgres_server();
  }
  static void TearDownTestSuite() {
    delete postgres_;
    postgres_ = nullptr;
    delete redis_;
    redis_ = nullptr;
  }

  static fleet_scale_options options(const std::string& ns, int instances, const std::string& buffer_interval) {
    fleet_scale_options o;
    o.ns = ns;
    o.instances = instances;
    o.tallyd_args = {"--worker-threads", "2", "--buffer-interval", buffer_interval, "--flush-interval", "100ms",
                     "--lease-ttl", "1s", "--health-check-interval", "200ms"};
    o.deadline = 60s;
    return o;
  }

  static inline redis_server* redis_ = nullptr;
  static inline postgres_server* postgres_ = nullptr;
};

/// Events of `total` that block distribution (100 per block, block b to
/// instance b mod n) gives instance i.
long long share(uint64_t total, int n, int i) {
  long long events = 0;
  for (uint64_t from = 0, b = 0; from < total; from += 100, ++b)
    if (static_cast<int>(b % n) == i)
      events += static_cast<long long>(std::min<uint64_t>(100, total - from));
  return events;
}

} // namespace

// Every instance takes a share of the events while one of them (whichever
// holds the lease) flushes: Postgres ends with exactly the workload, each
// instance counted its own share and wrote batches.
TEST_F(TallydScale, ExactTotalsAtOneAndEightInstances) {
  for (int n : {1, 8}) {
    SCOPED_TRACE(std::to_string(n) + " instances");
    auto o = options("exact" + std::to_string(n), n, "100ms");
    o.seed = 700 + n;
    o.events = 20000;
    o.rate = 10000;
    auto r = run_fleet_scale(*redis_, *postgres_, o);
    EXPECT_EQ(r.totals_diff, "");
    EXPECT_EQ(r.events_accepted, static_cast<long long>(o.events));
    ASSERT_EQ(r.accepted_per_instance.size(), static_cast<size_t>(n));
    for (int i = 0; i < n; ++i)
      EXPECT_EQ(r.accepted_per_instance[i], share(o.events, n, i)) << "instance " << i;
    EXPECT_EQ(r.instances_with_batches, n);
    EXPECT_GE(r.flushes, 1);
    for (int code : r.exit_codes)
      EXPECT_EQ(code, 0);
  }
}

// Eight producers write their batches (each its own partial sums of the same
// keys) and stop; one flusher then applies all of them in one transaction.
// It upserts each distinct row once: the workload's row count, not the
// rows summed over the producers' batches. A transaction takes at most 64
// batches, so the producers buffer for 10 s: each writes one or two
// batches (the rest at its stop), however slowly the box takes the events.
TEST_F(TallydScale, FlushRowsFollowDistinctKeysNotInstances) {
  auto o = options("drain8", 8, "10s");
  o.seed = 801;
  o.events = 8000;
  o.drain = true;
  auto r = run_fleet_scale(*redis_, *postgres_, o);
  EXPECT_EQ(r.stage1_diff, "") << "stage 1 holds exactly the workload";
  EXPECT_EQ(r.totals_diff, "");
  EXPECT_EQ(r.events_accepted, static_cast<long long>(o.events));
  EXPECT_EQ(r.instances_with_batches, 8);
  EXPECT_EQ(static_cast<long long>(r.stage1_batches), r.batches_written);
  for (int code : r.exit_codes)
    EXPECT_EQ(code, 0);
  // The batches overlap in keys, so merging them is what the check is about.
  EXPECT_GT(r.stage1_rows, r.reference_rows + r.reference_rows / 10)
    << "the producers' batches barely overlap: the check below would prove nothing";
  ASSERT_LE(r.stage1_batches, 64u) << "more than one transaction's worth of batches";
  EXPECT_EQ(r.flushes, 1) << r.stage1_batches << " batches";
  EXPECT_EQ(r.rows_upserted, static_cast<long long>(r.reference_rows))
    << r.stage1_rows << " rows in " << r.stage1_batches << " stage-1 batches";
}
