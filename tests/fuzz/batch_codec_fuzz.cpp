// tests/fuzz/batch_codec_fuzz.cpp — libFuzzer target for the stage-1 batch
// decoder (adapters/batch_codec).
//
// The first input byte picks the mode: even, the rest is taken as a whole
// record (header and all); odd, the rest is a payload that this target
// wraps in a valid header and checksum, as a forger who can write to the
// stage-1 list would, so the fuzzer spends its time past the checksum.
// Properties:
//  * decode → encode → decode gives the same batch (varints may be written
//    in longer forms than the encoder's, so the bytes need not match, but a
//    second encoding does);
//  * peek_batch_id agrees with decode on the id and on whether the record's
//    frame is valid;
//  * a table check that refuses a table makes the whole decode fail as
//    malformed, never succeed with that table;
//  * split_batch keeps every row, in order, in parts that decode again.
// The decoder's memory bound is checked by libFuzzer's -malloc_limit_mb (see
// tests/fuzz/run.sh): no single allocation may exceed it.
#include "adapters/batch_codec.hpp"
#include "tests/fuzz/fuzz_check.hpp"

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#define XXH_INLINE_ALL
#include <xxhash.h>

using namespace tally::adapters;

namespace {

template <class T>
void put(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // little-endian hosts only, as the codec
  out.append(b, sizeof(T));
}

std::string wrap(std::string_view payload) {
  std::string out = "TLYB";
  put<uint8_t>(out, batch_format_version);
  put<uint8_t>(out, 0);
  put<uint16_t>(out, 0);
  put<uint32_t>(out, static_cast<uint32_t>(payload.size()));
  put<uint64_t>(out, XXH3_64bits(payload.data(), payload.size()));
  out.append(payload);
  return out;
}

bool same(const batch& a, const batch& b) {
  if (a.id != b.id || a.created_ms != b.created_ms || a.tables.size() != b.tables.size())
    return false;
  for (size_t t = 0; t < a.tables.size(); ++t) {
    const batch_table& x = a.tables[t];
    const batch_table& y = b.tables[t];
    if (x.name != y.name || x.key_columns != y.key_columns || x.measure_columns != y.measure_columns ||
        x.rows.size() != y.rows.size())
      return false;
    for (size_t r = 0; r < x.rows.size(); ++r)
      if (x.rows[r].keys != y.rows[r].keys || x.rows[r].values != y.rows[r].values)
        return false;
  }
  return true;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* bytes, size_t size) {
  if (size == 0)
    return 0;
  std::string_view rest(reinterpret_cast<const char*>(bytes) + 1, size - 1);
  std::string record = (bytes[0] & 1) ? wrap(rest) : std::string(rest);

  auto decoded = decode_batch(record);
  auto id = peek_batch_id(record);
  if (!decoded.ok()) {
    FUZZ_CHECK(decoded.error().code != static_cast<int>(codec_errc::ok));
    if (id.ok())  // the frame was fine, so the payload's body is what failed
      FUZZ_CHECK(decoded.error().code == static_cast<int>(codec_errc::truncated) ||
                 decoded.error().code == static_cast<int>(codec_errc::malformed));
    return 0;
  }
  const batch& b = decoded.value();
  FUZZ_CHECK(id.ok() && id.value() == b.id);

  std::string encoded = encode_batch(b);
  auto again = decode_batch(encoded);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(same(b, again.value()));
  FUZZ_CHECK(encode_batch(again.value()) == encoded);

  if (!b.tables.empty()) {
    const std::string refused = b.tables.back().name;
    auto vetted = decode_batch(record, [&](const batch_table& t) {
      FUZZ_CHECK(t.rows.empty());
      return t.name == refused ? std::string("refused by the fuzz check") : std::string();
    });
    FUZZ_CHECK(!vetted.ok());
    FUZZ_CHECK(vetted.error().code == static_cast<int>(codec_errc::malformed));
  }

  size_t limit = 64 + (bytes[0] >> 1) * 16;
  std::vector<batch> parts = split_batch(b, limit);
  std::vector<std::pair<std::string, const batch_row*>> before, after;
  for (const batch_table& t : b.tables)
    for (const batch_row& r : t.rows)
      before.emplace_back(t.name, &r);
  for (batch& part : parts) {
    part.id = b.id;
    FUZZ_CHECK(decode_batch(encode_batch(part)).ok());
    for (const batch_table& t : part.tables)
      for (const batch_row& r : t.rows)
        after.emplace_back(t.name, &r);
  }
  FUZZ_CHECK(before.size() == after.size());
  for (size_t i = 0; i < before.size(); ++i) {
    FUZZ_CHECK(before[i].first == after[i].first);
    FUZZ_CHECK(before[i].second->keys == after[i].second->keys);
    FUZZ_CHECK(before[i].second->values == after[i].second->values);
  }
  return 0;
}
