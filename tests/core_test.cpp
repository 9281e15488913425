// tests/core_test.cpp — intern_table, flat_map, rollup fan-out.
#include "core/flat_map.hpp"
#include "core/intern_table.hpp"
#include "core/rollup.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <thread>

using namespace tally;

TEST(InternTable, SameTextSameIdAcrossThreads) {
  intern_table ids(1 << 16);
  EXPECT_EQ(ids.intern(""), 0u);
  std::vector<std::vector<uint32_t>> seen(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 5000; ++i)
        seen[t].push_back(ids.intern("id-" + std::to_string(i)));
    });
  for (auto& th : threads)
    th.join();
  for (int t = 1; t < 4; ++t)
    EXPECT_EQ(seen[t], seen[0]);
  EXPECT_EQ(ids.size(), 5000u);
  std::set<uint32_t> distinct(seen[0].begin(), seen[0].end());
  EXPECT_EQ(distinct.size(), 5000u);
  for (int i = 0; i < 5000; ++i)
    EXPECT_EQ(ids.text(seen[0][i]), "id-" + std::to_string(i));
  EXPECT_EQ(ids.find("id-17"), seen[0][17]);
  EXPECT_EQ(ids.find("absent"), intern_table::npos);
}

TEST(InternTable, FullTableSaysNpos) {
  intern_table ids(1024);
  uint32_t last = 0;
  int added = 0;
  for (int i = 0; i < 2000; ++i) {
    last = ids.intern("x" + std::to_string(i));
    if (last == intern_table::npos)
      break;
    ++added;
  }
  EXPECT_EQ(last, intern_table::npos);
  EXPECT_EQ(added, 1024 - 1024 / 8);
  EXPECT_NE(ids.intern("x5"), intern_table::npos);  // known ids still resolve
}

TEST(InternTable, ClearForgetsEverythingAndTheFullBoundStartsOver) {
  intern_table ids(1024);
  for (int round = 0; round < 3; ++round) {
    for (uint32_t i = 0; i < ids.limit(); ++i)
      ASSERT_NE(ids.intern("r" + std::to_string(round) + "-" + std::to_string(i)), intern_table::npos);
    EXPECT_EQ(ids.intern("one more"), intern_table::npos);
    ids.clear();
    EXPECT_EQ(ids.size(), 0u);
    EXPECT_EQ(ids.find("r" + std::to_string(round) + "-7"), intern_table::npos);
    uint32_t id = ids.intern("one more");
    ASSERT_NE(id, intern_table::npos);
    EXPECT_EQ(ids.text(id), "one more");
    EXPECT_EQ(ids.find("one more"), id);
    ids.clear();
  }
  EXPECT_EQ(ids.intern(""), 0u);  // the empty string keeps id 0
}

TEST(FlatMap, SumsKeepCapacityAndBound) {
  struct key { uint32_t a, b; };
  flat_map<key, int64_t> m(5000, 16);
  for (int round = 0; round < 3; ++round) {
    for (uint32_t i = 0; i < 4000; ++i)
      for (int rep = 0; rep < 3; ++rep) {
        key k{i, i * 7};
        *m.find_or_insert(k, i * 2654435761u) += i;
      }
    EXPECT_EQ(m.size(), 4000u);
    int64_t total = 0;
    m.for_each([&](const key& k, int64_t& v) {
      EXPECT_EQ(v, 3 * static_cast<int64_t>(k.a));
      total += v;
    });
    EXPECT_EQ(total, 3LL * (3999LL * 4000 / 2));
    m.clear();
    EXPECT_TRUE(m.empty());
  }
  for (uint32_t i = 0; i < 5000; ++i)
    ASSERT_NE(m.find_or_insert(key{i, 0}, i), nullptr);
  EXPECT_EQ(m.find_or_insert(key{99999, 0}, 99999), nullptr);  // bound reached
  EXPECT_NE(m.find_or_insert(key{42, 0}, 42), nullptr);       // existing keys still found
}

// The aggregators' map at the sizes a flood reaches: its heap per live key
// stays within 150 bytes at every fill, and after a spike clear_and_trim
// gives the memory back while the map keeps working.
TEST(FlatMap, BytesPerLiveKeyAndTrimAfterSpike) {
  using map_t = flat_map<agg_key, measure_values>;
  map_t m(1u << 20);
  double worst = 0;
  for (uint32_t i = 0; i < 300000; ++i) {
    agg_key k{};
    k.ids[0] = i;
    k.minute = 7;
    m.find_or_insert(k, hash_of(k))->requests += 1;
    // Measured past the first chunks, where the fixed part still dominates.
    if (m.size() >= 20000 && m.size() % 997 == 0)
      worst = std::max(worst, static_cast<double>(m.memory_bytes()) / m.size());
  }
  EXPECT_LE(worst, 150.0) << "bytes per live aggregation key";
  size_t spike_bytes = m.memory_bytes();

  m.clear_and_trim(1000);
  EXPECT_TRUE(m.empty());
  EXPECT_LT(m.memory_bytes(), spike_bytes / 50) << "a spike's memory is kept after the trim";
  for (uint32_t round = 0; round < 2; ++round) {
    for (uint32_t i = 0; i < 5000; ++i) {
      agg_key k{};
      k.ids[1] = i;
      m.find_or_insert(k, hash_of(k))->requests += i;
    }
    EXPECT_EQ(m.size(), 5000u);
    int64_t total = 0;
    m.for_each([&](const agg_key& k, measure_values& v) {
      EXPECT_EQ(v.requests, static_cast<int64_t>(k.ids[1]) * (round + 1));
      total += v.requests;
    });
    EXPECT_EQ(total, static_cast<int64_t>(round + 1) * (4999LL * 5000 / 2));
  }
  // Within twice the need nothing is given back: steady intervals reuse it.
  size_t steady = m.memory_bytes();
  m.clear_and_trim(5000);
  EXPECT_EQ(m.memory_bytes(), steady);
}

TEST(Rollup, FanOutRowsOfOneEvent) {
  intern_table ids(4096);
  agg_key k{};
  auto set = [&](field f, const char* text) { k.ids[static_cast<int>(f)] = ids.intern(text); };
  set(field::key, "k1");
  set(field::user, "u1");
  set(field::team, "t1");
  set(field::tags, "a,b,a");
  set(field::model, "gpt");
  set(field::endpoint, "/chat");
  k.minute = 29'923'190;  // 2026-11-22 23:50
  std::map<std::string, std::set<std::vector<std::string>>> rows;
  overflow_ids overflow;
  fan_out(k, ids, overflow, [&](const row_key& r) {
    rows[rollup_specs()[r.rollup].table].insert(key_texts(r, ids, overflow));
  });
  EXPECT_EQ(overflow.size(), 0u) << "the table had room";
  std::set<std::vector<std::string>> spend = {
    {"key", "", "k1"}, {"user", "", "u1"}, {"team", "", "t1"}, {"team_member", "t1", "u1"},
    {"tag", "", "a"}, {"tag", "", "b"}};
  EXPECT_EQ(rows["tally_spend"], spend);
  std::set<std::vector<std::string>> daily = {
    {"2026-11-22", "user", "u1", "k1", "gpt", "", "/chat"},
    {"2026-11-22", "team", "t1", "k1", "gpt", "", "/chat"},
    {"2026-11-22", "tag", "a", "k1", "gpt", "", "/chat"},
    {"2026-11-22", "tag", "b", "k1", "gpt", "", "/chat"}};
  EXPECT_EQ(rows["tally_daily"], daily);
  std::set<std::vector<std::string>> minute = {{"2026-11-22 23:50:00+00", "/chat", "gpt"}};
  EXPECT_EQ(rows["tally_minute"], minute);
}

// With the id table full, a tag part that is not in it gets an id from
// overflow_ids, outside the table's range, and its rows read back as its
// text; a part the table holds keeps its table id.
TEST(Rollup, FanOutKeepsTagsTheFullTableHasNoRoomFor) {
  intern_table ids(1024);
  agg_key k{};
  k.ids[static_cast<int>(field::key)] = ids.intern("k1");
  k.ids[static_cast<int>(field::tags)] = ids.intern("known,new-1,new-2,new-1");
  const uint32_t known = ids.intern("known");
  ASSERT_NE(known, intern_table::npos);
  for (int i = 0; ids.size() < ids.limit(); ++i)
    ASSERT_NE(ids.intern("filler-" + std::to_string(i)), intern_table::npos);
  ASSERT_EQ(ids.intern("new-1"), intern_table::npos);

  overflow_ids overflow;
  std::set<std::vector<std::string>> tag_rows;
  std::set<uint32_t> tag_ids;
  fan_out(k, ids, overflow, [&](const row_key& r) {
    if (r.rollup == 0 && r.entity == static_cast<uint8_t>(entity::tag)) {
      tag_rows.insert(key_texts(r, ids, overflow));
      tag_ids.insert(r.entity_id);
    }
  });
  EXPECT_EQ(tag_rows,
            (std::set<std::vector<std::string>>{{"tag", "", "known"}, {"tag", "", "new-1"}, {"tag", "", "new-2"}}));
  EXPECT_EQ(overflow.size(), 2u) << "a repeated part is one text";
  EXPECT_EQ(tag_ids, (std::set<uint32_t>{known, overflow_ids::first_id, overflow_ids::first_id + 1}));
  EXPECT_FALSE(overflow_ids::owns(known));
  EXPECT_FALSE(overflow_ids::owns(intern_table::npos));
}

TEST(Rollup, SpecsDescribeTheTables) {
  auto& specs = rollup_specs();
  ASSERT_EQ(specs.size(), 3u);
  EXPECT_EQ(specs[0].key_columns(), (std::vector<std::string>{"entity_type", "scope", "entity_id"}));
  EXPECT_EQ(specs[1].key_columns(), (std::vector<std::string>{"day", "entity_type", "entity_id", "api_key",
                                                              "model", "provider", "endpoint"}));
  EXPECT_EQ(specs[2].key_columns(), (std::vector<std::string>{"minute", "endpoint", "model"}));
  EXPECT_EQ(specs[2].measure_columns(),
            (std::vector<std::string>{"prompt_tokens", "completion_tokens", "total_tokens", "requests"}));
}

