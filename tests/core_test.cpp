// tests/core_test.cpp — intern_table, flat_map, rollup fan-out, batch codec.
#include "adapters/batch_codec.hpp"
#include "core/flat_map.hpp"
#include "core/intern_table.hpp"
#include "core/rollup.hpp"

#include <gtest/gtest.h>

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
  fan_out(k, ids, [&](const row_key& r) {
    rows[rollup_specs()[r.rollup].table].insert(key_texts(r, ids));
  });
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

namespace {
adapters::batch sample_batch() {
  adapters::batch b;
  b.id = "inst:42";
  b.created_ms = 1795391400123;
  adapters::batch_table t{"tally_spend", {"entity_type", "scope", "entity_id"}, {"spend", "requests"}, {}};
  for (int i = 0; i < 100; ++i) {
    __int128 big = static_cast<__int128>(1) << 100;
    t.rows.push_back({{"user", "", "u\"" + std::to_string(i)}, {big + i, -i}});
  }
  b.tables.push_back(t);
  b.tables.push_back({"tally_minute", {"minute"}, {"requests"}, {{{"2026-11-22 23:50:00+00"}, {7}}}});
  return b;
}
} // namespace

TEST(BatchCodec, RoundTrip) {
  auto b = sample_batch();
  auto bytes = adapters::encode_batch(b);
  auto back = adapters::decode_batch(bytes);
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->id, b.id);
  EXPECT_EQ(back->created_ms, b.created_ms);
  ASSERT_EQ(back->tables.size(), 2u);
  EXPECT_EQ(back->tables[0].rows.size(), 100u);
  EXPECT_EQ(back->tables[0].rows[5].keys[2], "u\"5");
  EXPECT_TRUE(back->tables[0].rows[5].values[0] == (static_cast<__int128>(1) << 100) + 5);
  EXPECT_TRUE(back->tables[0].rows[5].values[1] == -5);
  auto id = adapters::peek_batch_id(bytes);
  ASSERT_TRUE(id);
  EXPECT_EQ(*id, "inst:42");
}

TEST(BatchCodec, RefusesEveryCorruption) {
  auto bytes = adapters::encode_batch(sample_batch());
  auto code = [](std::string_view data) {
    auto r = adapters::decode_batch(data);
    return r ? adapters::codec_errc::ok : static_cast<adapters::codec_errc>(r.error().code);
  };
  EXPECT_EQ(code(bytes.substr(0, 10)), adapters::codec_errc::too_short);
  auto bad_magic = bytes;
  bad_magic[0] = 'X';
  EXPECT_EQ(code(bad_magic), adapters::codec_errc::bad_magic);
  auto bad_version = bytes;
  bad_version[4] = 9;
  EXPECT_EQ(code(bad_version), adapters::codec_errc::unknown_version);
  EXPECT_EQ(code(bytes.substr(0, bytes.size() - 1)), adapters::codec_errc::bad_length);
  // Flip every payload byte in turn: the checksum catches each.
  for (size_t i = 20; i < bytes.size(); i += 7) {
    auto flipped = bytes;
    flipped[i] ^= 0x40;
    EXPECT_EQ(code(flipped), adapters::codec_errc::bad_checksum) << "byte " << i;
  }
  EXPECT_EQ(code(std::string_view{}), adapters::codec_errc::too_short);
}

TEST(BatchCodec, SplitKeepsEveryRowUnderTheLimit) {
  auto b = sample_batch();
  size_t total_rows = b.row_count();
  auto parts = adapters::split_batch(b, 1024);
  ASSERT_GT(parts.size(), 2u);
  size_t rows = 0;
  for (auto& p : parts) {
    p.id = "x:1";
    EXPECT_LE(adapters::encode_batch(p).size(), 1024u + 64);
    rows += p.row_count();
  }
  EXPECT_EQ(rows, total_rows);
  auto one = adapters::split_batch(sample_batch(), 1 << 20);
  EXPECT_EQ(one.size(), 1u);
}
