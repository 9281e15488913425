// tests/batch_codec_test.cpp — the stage-1 batch codec: round trip,
// corruption, splitting, and inputs crafted to make the decoder allocate.
//
// The checksum is not keyed, so an attacker who can write to the stage-1
// list forges valid ones: these tests wrap crafted payloads in a correct
// header and checksum. This binary counts every heap allocation (operator
// new below) to check that decoding costs memory in proportion to its input.
#include "adapters/batch_codec.hpp"
#include "adapters/flush_sql.hpp"

#include <gtest/gtest.h>

#include <iostream>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <limits>
#include <map>
#include <random>

#define XXH_INLINE_ALL
#include <xxhash.h>

using namespace tally;

namespace {

// Live and peak bytes on the heap, for the whole process. Each block
// carries its size in front (16 bytes keep the alignment new promises).
std::atomic<size_t> live_bytes{0};
std::atomic<size_t> peak_bytes{0};

void* counted_alloc(size_t n) {
  void* p = std::malloc(n + 16);
  if (p == nullptr)
    return nullptr;
  std::memcpy(p, &n, sizeof n);
  size_t now = live_bytes.fetch_add(n) + n;
  size_t peak = peak_bytes.load();
  while (now > peak && !peak_bytes.compare_exchange_weak(peak, now)) {
  }
  return static_cast<char*>(p) + 16;
}

void counted_free(void* p) noexcept {
  if (p == nullptr)
    return;
  char* block = static_cast<char*>(p) - 16;
  size_t n = 0;
  std::memcpy(&n, block, sizeof n);
  live_bytes.fetch_sub(n);
  std::free(block);
}

} // namespace

void* operator new(size_t n) {
  if (void* p = counted_alloc(n))
    return p;
  throw std::bad_alloc();
}
void* operator new[](size_t n) {
  if (void* p = counted_alloc(n))
    return p;
  throw std::bad_alloc();
}
void* operator new(size_t n, const std::nothrow_t&) noexcept { return counted_alloc(n); }
void* operator new[](size_t n, const std::nothrow_t&) noexcept { return counted_alloc(n); }
void operator delete(void* p) noexcept { counted_free(p); }
void operator delete[](void* p) noexcept { counted_free(p); }
void operator delete(void* p, size_t) noexcept { counted_free(p); }
void operator delete[](void* p, size_t) noexcept { counted_free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { counted_free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { counted_free(p); }

namespace {

/// Heap bytes `f` needed at its peak beyond what was live before it.
template <class F>
size_t peak_allocation(F&& f) {
  size_t before = live_bytes.load();
  peak_bytes.store(before);
  f();
  return peak_bytes.load() - before;
}

/// A payload wrapped in a valid header and checksum, as a forger would.
std::string wrap(const std::string& payload, uint8_t flags = 0, uint16_t reserved = 0) {
  std::string out("TLYB", 4);
  out.push_back(static_cast<char>(adapters::batch_format_version));
  out.push_back(static_cast<char>(flags));
  out.append(reinterpret_cast<const char*>(&reserved), 2);
  auto len = static_cast<uint32_t>(payload.size());
  out.append(reinterpret_cast<const char*>(&len), 4);
  uint64_t sum = XXH3_64bits(payload.data(), payload.size());
  out.append(reinterpret_cast<const char*>(&sum), 8);
  return out + payload;
}

template <class T>
void put(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof v);
}
void put_str(std::string& s, const std::string& v) {
  put<uint16_t>(s, static_cast<uint16_t>(v.size()));
  s += v;
}

/// The batch header part of a payload: id, creation time, table count.
std::string payload_start(uint16_t ntables) {
  std::string p;
  put_str(p, "evil:1");
  put<int64_t>(p, 1795391400000);
  put<uint16_t>(p, ntables);
  return p;
}

adapters::codec_errc code_of(const result<adapters::batch>& r) {
  return r ? adapters::codec_errc::ok : static_cast<adapters::codec_errc>(r.error().code);
}

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

// The input that made decode_batch allocate about 6,000 times its size:
// tables with no columns claiming as many rows as the payload has bytes
// (rows that take no bytes). 64 KB in: refused, under 1 MB allocated.
TEST(BatchCodec, RowsThatTakeNoBytesAllocateNothing) {
  constexpr size_t tables = 8000;  // 8 bytes each: about 64 KB
  std::string p = payload_start(tables);
  uint32_t claimed = static_cast<uint32_t>(8 * tables + 16);
  for (size_t i = 0; i < tables; ++i) {
    put_str(p, "");
    put<uint8_t>(p, 0);
    put<uint8_t>(p, 0);
    put<uint32_t>(p, claimed);
  }
  auto bytes = wrap(p);
  ASSERT_GE(bytes.size(), 64'000u);
  result<adapters::batch> r = adapters::batch{};
  size_t peak = peak_allocation([&] { r = adapters::decode_batch(bytes); });
  EXPECT_EQ(code_of(r), adapters::codec_errc::malformed) << (r ? "decoded" : r.error().message);
  EXPECT_LT(peak, size_t{1} << 20) << "bytes allocated decoding " << bytes.size() << " bytes of input";
  // With the flusher's shape check the first table is refused by its name.
  peak = peak_allocation([&] { r = adapters::decode_batch(bytes, adapters::check_table_shape); });
  EXPECT_EQ(code_of(r), adapters::codec_errc::malformed);
  EXPECT_NE(r.error().message.find("unknown rollup table"), std::string::npos) << r.error().message;
  EXPECT_LT(peak, size_t{64} << 10);
}

// Counts larger than the bytes left are refused before anything is sized
// by them: tables, column names, rows.
TEST(BatchCodec, CountsBeyondTheBytesLeftAreRefused) {
  auto decode_peak = [](const std::string& payload, adapters::codec_errc& code) {
    auto bytes = wrap(payload);
    result<adapters::batch> r = adapters::batch{};
    size_t peak = peak_allocation([&] { r = adapters::decode_batch(bytes); });
    code = code_of(r);
    return peak;
  };
  adapters::codec_errc code{};
  // 65,535 tables announced, 33 bytes follow.
  std::string many_tables = payload_start(65535) + std::string(33, '\0');
  EXPECT_LT(decode_peak(many_tables, code), size_t{4} << 10);
  EXPECT_EQ(code, adapters::codec_errc::malformed);
  // 255 key columns announced, 10 bytes follow.
  std::string many_keys = payload_start(1);
  put_str(many_keys, "t");
  put<uint8_t>(many_keys, 255);
  many_keys += std::string(10, '\0');
  EXPECT_LT(decode_peak(many_keys, code), size_t{4} << 10);
  EXPECT_EQ(code, adapters::codec_errc::truncated);
  // One measure per row (a row takes at least one byte); 4 billion rows
  // announced, 100 bytes follow.
  std::string many_rows = payload_start(1);
  put_str(many_rows, "t");
  put<uint8_t>(many_rows, 0);
  put<uint8_t>(many_rows, 1);
  put_str(many_rows, "m");
  put<uint32_t>(many_rows, 0xFFFFFFFFu);
  many_rows += std::string(100, '\0');
  EXPECT_LT(decode_peak(many_rows, code), size_t{4} << 10);
  EXPECT_EQ(code, adapters::codec_errc::malformed);
}

// Version 1 defines no flags and no reserved bits: set ones are refused.
TEST(BatchCodec, FlagsAndReservedBytesMustBeZero) {
  auto payload = adapters::encode_batch(sample_batch()).substr(20);
  EXPECT_EQ(code_of(adapters::decode_batch(wrap(payload))), adapters::codec_errc::ok);
  EXPECT_EQ(code_of(adapters::decode_batch(wrap(payload, 1))), adapters::codec_errc::malformed);
  EXPECT_EQ(code_of(adapters::decode_batch(wrap(payload, 0, 0x0100))), adapters::codec_errc::malformed);
}

// A measure is a zigzag varint of at most 128 bits: 19 bytes whose last
// carries 2 bits. One more bit, or one more byte, is refused.
TEST(BatchCodec, VarintsLongerThan128BitsAreRefused) {
  auto with_measure = [](const std::string& varint) {
    std::string p = payload_start(1);
    put_str(p, "t");
    put<uint8_t>(p, 0);
    put<uint8_t>(p, 1);
    put_str(p, "m");
    put<uint32_t>(p, 1);
    return wrap(p + varint);
  };
  std::string max(18, '\xFF');
  max.push_back('\x03');
  auto ok = adapters::decode_batch(with_measure(max));
  ASSERT_TRUE(ok) << ok.error().message;
  EXPECT_TRUE(ok->tables[0].rows[0].values[0] == std::numeric_limits<__int128>::min());
  std::string over(18, '\xFF');
  over.push_back('\x04');
  EXPECT_EQ(code_of(adapters::decode_batch(with_measure(over))), adapters::codec_errc::truncated);
  std::string longer(19, '\xFF');
  longer.push_back('\x01');
  EXPECT_EQ(code_of(adapters::decode_batch(with_measure(longer))), adapters::codec_errc::truncated);
}

// The shape check runs before a table's rows are built: a table of this
// build's name with other columns is refused with the reason.
TEST(BatchCodec, ShapeIsCheckedBeforeRows) {
  adapters::batch b;
  b.id = "x:1";
  adapters::batch_table t{"tally_spend", {"entity_type"}, {"spend"}, {}};
  for (int i = 0; i < 1000; ++i)
    t.rows.push_back({{"user"}, {i}});
  b.tables.push_back(t);
  auto bytes = adapters::encode_batch(b);
  ASSERT_TRUE(adapters::decode_batch(bytes));
  result<adapters::batch> r = adapters::batch{};
  size_t peak = peak_allocation([&] { r = adapters::decode_batch(bytes, adapters::check_table_shape); });
  ASSERT_FALSE(r);
  EXPECT_EQ(code_of(r), adapters::codec_errc::malformed);
  EXPECT_NE(r.error().message.find("columns of 'tally_spend' differ"), std::string::npos) << r.error().message;
  EXPECT_LT(peak, size_t{16} << 10) << "rows were built before the shape was checked";
}

// Random damage behind a valid checksum: the decoder never crashes, and
// what it allocates stays within a fixed multiple of the input.
TEST(BatchCodec, ForgedDamageStaysBounded) {
  auto payload = adapters::encode_batch(sample_batch()).substr(20);
  std::mt19937_64 rng(20261202);
  size_t worst = 0;
  for (int round = 0; round < 20000; ++round) {
    std::string p = payload;
    int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      size_t at = rng() % p.size();
      switch (rng() % 3) {
        case 0: p[at] = static_cast<char>(rng()); break;
        case 1: p.erase(at, 1 + rng() % 8); break;
        default: p.insert(at, std::string(1 + rng() % 8, static_cast<char>(rng()))); break;
      }
      if (p.empty())
        p = "x";
    }
    auto bytes = wrap(p);
    result<adapters::batch> r = adapters::batch{};
    size_t peak = peak_allocation([&] { r = adapters::decode_batch(bytes); });
    worst = std::max(worst, peak / bytes.size());
    if (r) {  // whatever decodes, re-encodes to something that decodes the same
      auto again = adapters::decode_batch(adapters::encode_batch(*r));
      ASSERT_TRUE(again) << again.error().message;
      EXPECT_EQ(again->row_count(), r->row_count());
    }
  }
  std::cout << "forged damage: at most " << worst << " bytes allocated per input byte\n";
  EXPECT_LT(worst, 200u) << "bytes allocated per input byte";
}

// The flusher's merge sums every repeated row, whatever batch and place it
// comes from, and returns each table sorted by its key texts in byte order
// (the lock order). Key texts are drawn from small pools that include "",
// prefixes of each other, bytes above 0x7f and the same text in different
// columns, so a merge that confused columns, numbered texts wrongly or
// sorted by anything but the texts would differ from the std::map here.
TEST(MergeBatches, SumsRepeatsAndSortsByKeyTexts) {
  const std::vector<std::string> pool = {"", "a", "ab", "abc", "b", "\xc3\xa9", "2026-11-22", "user", "z"};
  std::mt19937_64 rng(11);
  const auto& specs = rollup_specs();
  std::vector<std::map<std::vector<std::string>, std::vector<__int128>>> want(specs.size());
  std::vector<adapters::batch> batches(12);
  size_t rows_in = 0;
  for (size_t b = 0; b < batches.size(); ++b) {
    batches[b].id = "m:" + std::to_string(b);
    for (size_t s = 0; s < specs.size(); ++s) {
      adapters::batch_table t;
      t.name = specs[s].table;
      t.key_columns = specs[s].key_columns();
      t.measure_columns = specs[s].measure_columns();
      size_t n = rng() % 300;
      for (size_t r = 0; r < n; ++r) {
        adapters::batch_row row;
        for (size_t c = 0; c < t.key_columns.size(); ++c)
          row.keys.push_back(pool[rng() % (c < 2 ? 3 : pool.size())]);
        for (size_t m = 0; m < t.measure_columns.size(); ++m)
          row.values.push_back(static_cast<__int128>(rng() % 1000) - 200);
        auto& sum = want[s][row.keys];
        sum.resize(row.values.size());
        for (size_t m = 0; m < row.values.size(); ++m)
          sum[m] += row.values[m];
        t.rows.push_back(std::move(row));
      }
      rows_in += n;
      if (n > 0 || b % 2 == 0)
        batches[b].tables.push_back(std::move(t));
    }
  }
  std::vector<const adapters::batch*> ptrs;
  for (const auto& b : batches)
    ptrs.push_back(&b);
  auto merged = adapters::merge_batches(ptrs);
  ASSERT_EQ(merged.size(), specs.size());
  size_t rows_out = 0;
  for (size_t s = 0; s < specs.size(); ++s) {
    ASSERT_EQ(merged[s].size(), want[s].size()) << specs[s].table;
    size_t i = 0;
    ASSERT_EQ(merged[s].key_count, specs[s].key_columns().size());
    ASSERT_EQ(merged[s].measure_count, specs[s].measure_columns().size());
    for (const auto& [keys, values] : want[s]) {
      std::vector<std::string> got_keys;
      for (size_t k = 0; k < merged[s].key_count; ++k)
        got_keys.emplace_back(merged[s].key(i, k));
      std::vector<__int128> got_values;
      for (size_t m = 0; m < merged[s].measure_count; ++m)
        got_values.push_back(merged[s].value(i, m));
      EXPECT_EQ(got_keys, keys) << specs[s].table << " row " << i;
      EXPECT_TRUE(got_values == values) << specs[s].table << " row " << i;
      ++i;
    }
    rows_out += merged[s].size();
  }
  EXPECT_LT(rows_out, rows_in) << "the pools are small: rows must repeat";
  EXPECT_TRUE(adapters::merge_batches({})[0].empty());
}
