// Unit tests of the read cache (core/read_cache) and the invalidation
// message (core/invalidation): values stay exact through own batches,
// retirements and fills that race invalidations; hits never see a torn
// value; the size stays bounded.
#include "core/invalidation.hpp"
#include "core/read_cache.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

using namespace tally;
using namespace std::chrono_literals;

namespace {

measure_values spend(int64_t nanos, int64_t requests = 1) {
  measure_values m;
  m.spend = nanos;
  m.requests = requests;
  m.successful_requests = requests;
  return m;
}

entity_key user(const std::string& id) { return make_entity_key("user", "", id); }

/// One fill round as a reader runs it, against a pretend Postgres.
std::optional<cached_totals> fill(read_cache& c, const entity_key& k, std::optional<measure_values> pg,
                                  const std::vector<std::string>& applied_in_snapshot) {
  auto t = c.begin_fill(k);
  std::vector<std::string> applied;
  for (const auto& id : t.pending_ids)
    for (const auto& a : applied_in_snapshot)
      if (id == a)
        applied.push_back(id);
  return c.finish_fills({t}, {pg}, applied).front();
}

} // namespace

TEST(EntityKey, DistinguishesTypeScopeAndId) {
  EXPECT_EQ(make_entity_key("user", "", "u1"), make_entity_key("user", "", "u1"));
  EXPECT_FALSE(make_entity_key("user", "", "u1") == make_entity_key("team", "", "u1"));
  EXPECT_FALSE(make_entity_key("team_member", "t1", "u1") == make_entity_key("team_member", "t", "1u1"));
  EXPECT_FALSE(make_entity_key("user", "a", "b") == make_entity_key("user", "", "ab"));
}

TEST(ReadCache, MissesUntilEnabledAndInstallsFills) {
  read_cache c(64, 60s, 1000);
  auto k = user("u1");
  EXPECT_FALSE(c.lookup(k));
  auto v = fill(c, k, spend(5), {});
  ASSERT_TRUE(v);  // answered, but not installed while disabled
  EXPECT_EQ(v->values.spend, 5);
  EXPECT_FALSE(c.lookup(k));
  c.set_enabled(true);
  ASSERT_TRUE(fill(c, k, spend(5), {}));
  auto hit = c.lookup(k);
  ASSERT_TRUE(hit);
  EXPECT_EQ(hit->values.spend, 5);
  EXPECT_TRUE(hit->found);
  EXPECT_EQ(c.counters().hits.load(), 1u);
}

TEST(ReadCache, UnknownRowIsZeroAndNotFound) {
  read_cache c(64, 60s, 1000);
  c.set_enabled(true);
  auto v = fill(c, user("nobody"), std::nullopt, {});
  ASSERT_TRUE(v);
  EXPECT_FALSE(v->found);
  EXPECT_EQ(v->values, measure_values{});
}

TEST(ReadCache, OwnBatchesCountOnceBeforeAndAfterTheyAreApplied) {
  read_cache c(64, 60s, 1000);
  c.set_enabled(true);
  auto k = user("u1");
  // Postgres holds 100; our batch b1 (+7) is not flushed yet.
  c.add_batch("me:1", {{k, spend(7)}});
  auto v = fill(c, k, spend(100), {});
  ASSERT_TRUE(v);
  EXPECT_EQ(v->values.spend, 107);
  // Another own batch lands in the cached value at once.
  c.add_batch("me:2", {{k, spend(3)}});
  EXPECT_EQ(c.lookup(k)->values.spend, 110);
  // b1 is applied (Postgres 107): retiring it keeps the cached value exact.
  c.retire({"me:1"});
  EXPECT_EQ(c.lookup(k)->values.spend, 110);
  EXPECT_EQ(c.ledger_batches(), 1u);
  // A later fill whose snapshot holds b2 too (Postgres 110) counts it once.
  c.invalidate({k});
  v = fill(c, k, spend(110), {"me:2"});
  ASSERT_TRUE(v);
  EXPECT_EQ(v->values.spend, 110);
  EXPECT_EQ(c.ledger_batches(), 0u);
  // A snapshot without b2 (Postgres 107) adds it from the ledger instead.
  c.add_batch("me:3", {{k, spend(1)}});
  c.invalidate({k});
  v = fill(c, k, spend(110), {});
  EXPECT_EQ(v->values.spend, 111);
}

TEST(ReadCache, FillRacingAnInvalidationIsNotInstalled) {
  read_cache c(64, 60s, 1000);
  c.set_enabled(true);
  auto k = user("u1");
  auto t = c.begin_fill(k);
  // The query read 100; then a flush (another instance's +50) was announced.
  c.invalidate({k});
  auto v = c.finish_fills({t}, {spend(100)}, {});
  EXPECT_FALSE(v.front());
  EXPECT_FALSE(c.lookup(k));
  EXPECT_EQ(c.counters().stale_fills.load(), 1u);
  // Same for a drop of everything (a gap or a resubscription).
  t = c.begin_fill(k);
  c.invalidate_all();
  EXPECT_FALSE(c.finish_fills({t}, {spend(100)}, {}).front());
  // And for one of our batches retired under it: the snapshot may predate it.
  c.add_batch("me:1", {{k, spend(7)}});
  t = c.begin_fill(k);
  c.retire({"me:1"});
  EXPECT_FALSE(c.finish_fills({t}, {spend(100)}, {}).front());
  // An invalidation of another row leaves the fill alone.
  t = c.begin_fill(k);
  c.invalidate({user("u2")});
  EXPECT_TRUE(c.finish_fills({t}, {spend(157)}, {}).front());
  EXPECT_EQ(c.lookup(k)->values.spend, 157);
}

TEST(ReadCache, RetiringWhatTheSnapshotHoldsKeepsTheRoundsOtherFills) {
  read_cache c(64, 60s, 1000);
  c.set_enabled(true);
  auto a = user("a"), b = user("b");
  c.add_batch("me:1", {{a, spend(1)}, {b, spend(2)}});
  auto ta = c.begin_fill(a), tb = c.begin_fill(b);
  auto v = c.finish_fills({ta, tb}, {spend(11), spend(22)}, {"me:1"});
  ASSERT_TRUE(v[0] && v[1]);
  EXPECT_EQ(v[0]->values.spend, 11);
  EXPECT_EQ(v[1]->values.spend, 22);
}

TEST(ReadCache, DisablingDropsEverything) {
  read_cache c(64, 60s, 1000);
  c.set_enabled(true);
  fill(c, user("u1"), spend(1), {});
  EXPECT_EQ(c.entries(), 1u);
  c.set_enabled(false);
  EXPECT_EQ(c.entries(), 0u);
  EXPECT_FALSE(c.lookup(user("u1")));
}

TEST(ReadCache, SizeIsBoundedAndReferencedEntriesGetASecondChance) {
  read_cache c(8, 60s, 1000);  // one set of 8
  c.set_enabled(true);
  for (int i = 0; i < 8; ++i)
    fill(c, user("u" + std::to_string(i)), spend(i), {});
  EXPECT_EQ(c.entries(), 8u);
  ASSERT_TRUE(c.lookup(user("u0")));  // referenced
  for (int i = 8; i < 40; ++i) {
    fill(c, user("u" + std::to_string(i)), spend(i), {});
    ASSERT_TRUE(c.lookup(user("u0"))) << "hot entry evicted at insert " << i;
    EXPECT_LE(c.entries(), 8u);
  }
  EXPECT_EQ(c.entries(), 8u);
  EXPECT_EQ(c.counters().evictions.load(), 32u);
}

TEST(ReadCache, ExpiredEntriesMiss) {
  read_cache c(64, 1ms, 1000);
  c.set_enabled(true);
  fill(c, user("u1"), spend(1), {});
  std::this_thread::sleep_for(5ms);
  EXPECT_FALSE(c.lookup(user("u1")));
}

TEST(ReadCache, LedgerBoundIsCounted) {
  read_cache c(64, 60s, 2);
  c.add_batch("me:1", {{user("a"), spend(1)}, {user("b"), spend(1)}});
  c.add_batch("me:2", {{user("c"), spend(1)}});
  EXPECT_EQ(c.ledger_batches(), 1u);
  EXPECT_EQ(c.counters().ledger_overflow.load(), 1u);
}

// Hits run on many threads while one writer keeps changing the value: a
// reader must see one of the written values, never a mix of two.
TEST(ReadCache, HitsNeverSeeATornValue) {
  read_cache c(64, 60s, 1u << 20);
  c.set_enabled(true);
  auto k = user("hot");
  fill(c, k, spend(0, 0), {});
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> hits{0}, torn{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t)
    readers.emplace_back([&] {
      while (!stop.load()) {
        if (auto v = c.lookup(k)) {
          hits.fetch_add(1);
          // Every batch adds n nanos of spend and n requests.
          if (v->values.spend != v->values.requests || v->values.requests != v->values.successful_requests)
            torn.fetch_add(1);
        }
      }
    });
  for (int i = 1; i <= 20000; ++i)
    c.add_batch("me:" + std::to_string(i), {{k, spend(i, i)}});
  stop = true;
  for (auto& t : readers)
    t.join();
  EXPECT_GT(hits.load(), 0u);
  EXPECT_EQ(torn.load(), 0u);
  EXPECT_EQ(c.lookup(k)->values.requests, int64_t{20000} * 20001 / 2);
}

TEST(Invalidation, RoundTrips) {
  invalidation_message m;
  m.leader = "host-1";
  m.epoch = 7;
  m.seq = 42;
  m.batch_ids = {"a:1", "b:2"};
  m.entities = {{"user", "", "u 1"}, {"team_member", "t1", "ü"}};
  invalidation_message back;
  std::string why;
  ASSERT_TRUE(decode_invalidation(encode_invalidation(m), back, why)) << why;
  EXPECT_EQ(back.leader, "host-1");
  EXPECT_EQ(back.epoch, 7u);
  EXPECT_EQ(back.seq, 42u);
  EXPECT_FALSE(back.all);
  EXPECT_EQ(back.batch_ids, m.batch_ids);
  ASSERT_EQ(back.entities.size(), 2u);
  EXPECT_EQ(back.entities[0].id, "u 1");
  EXPECT_EQ(back.entities[1].scope, "t1");
}

TEST(Invalidation, RefusesWhatIsNotOne) {
  invalidation_message out;
  std::string why;
  EXPECT_FALSE(decode_invalidation("", out, why));
  EXPECT_FALSE(decode_invalidation("{\"epoch\":1}", out, why));
  EXPECT_FALSE(decode_invalidation("tally-inv/1\tl\tx\t1\t0", out, why));
  EXPECT_FALSE(decode_invalidation("tally-inv/1\tl\t1\t1\t2", out, why));
  EXPECT_FALSE(decode_invalidation("tally-inv/1\tl\t1\t1\t0\nq\tx", out, why));
  EXPECT_FALSE(decode_invalidation("tally-inv/1\tl\t1\t1\t0\ne\tuser\t", out, why));
  EXPECT_TRUE(decode_invalidation("tally-inv/1\tl\t1\t1\t1", out, why));
  EXPECT_TRUE(out.all);
}
