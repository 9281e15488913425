// tests/support/workload.hpp — generated events and their ground truth.
//
// Integration tests need many events whose exact totals are known. The
// generator is a pure function of (seed, index), so a test process and the
// processes it spawns agree on every event without sharing memory. The
// reference rollup is written independently of core/rollup (plain strings
// and std::map), so a bug in fan_out cannot hide in both.
#pragma once

#include "core/event.hpp"

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

namespace tally::testing {

/// One generated event with owned strings.
struct generated_event {
  std::string ids[id_field_count];
  std::string spend_text;       // as a gateway would send it
  nano_units spend = 0;
  int64_t prompt_tokens = 0, completion_tokens = 0, cache_read_tokens = 0, cache_creation_tokens = 0;
  bool ok = true;
  int64_t ts_ms = 0;

  /// A view of this event for runtime::record (valid while *this lives).
  event view() const;
  /// The RESP arguments: "TALLY.RECORD", field, value, ...
  std::vector<std::string> resp_args() const;
};

/// Event number `index` of workload `seed`. Entities come from small pools so
/// that sums really aggregate; timestamps spread over two UTC days.
generated_event generate(uint64_t seed, uint64_t index);

/// Rows of one table: key texts -> measure values (column order of the spec).
using table_rows = std::map<std::vector<std::string>, std::vector<__int128>>;
/// Table name -> rows.
using rollup_rows = std::map<std::string, table_rows>;

/// Adds one event to the reference rollups (tally_spend, tally_daily, tally_minute).
void add_reference(rollup_rows& out, const generated_event& ev);

/// Sums rows in hash maps and sorts them once at the end. For large
/// references: a std::map costs a key-vector comparison per tree level per
/// row, tens of seconds of a test's time for a million events.
class rows_accumulator {
public:
  void add(const std::string& table, const std::vector<std::string>& key, const std::vector<__int128>& values);
  void add(const generated_event& ev);  // as add_reference
  rollup_rows take();

private:
  // Key texts are numbered once; a row key is its numbers (and its width
  // in the last place), so the hash map holds no strings.
  using ids = std::array<uint32_t, 8>;
  struct ids_hash {
    size_t operator()(const ids& key) const noexcept;
  };
  struct table {
    std::unordered_map<ids, size_t, ids_hash> index;
    std::vector<ids> keys;
    std::vector<std::vector<__int128>> values;
  };
  uint32_t number(const std::string& text);
  std::unordered_map<std::string, uint32_t> numbers_;
  std::vector<std::string> texts_;
  std::map<std::string, table> tables_;
};

/// The reference rollups of events [from, to) of workload `seed`.
rollup_rows reference_range(uint64_t seed, uint64_t from, uint64_t to);

/// Adds `b` into `a`, row by row.
void merge_rows(rollup_rows& a, const rollup_rows& b);

/// Describes the first difference, or "" when equal.
std::string diff_rows(const rollup_rows& expected, const rollup_rows& actual);

std::string to_string_i128(__int128 v);

} // namespace tally::testing
