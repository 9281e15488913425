// core/rollup.hpp — what tally sums, and into which tables (design §5).
//
// Two levels:
//  * agg_key: the fine key the aggregators sum events under, one map update
//    per event: every interned id of the event plus its UTC minute.
//  * rollups: the tables in Postgres. Each rollup is a table entry below
//    (entity types, extra dimensions, time bucket, measures); the buffer
//    writer fans every fine key out into rows of every rollup once per
//    interval, not per event. A new rollup is a new entry in rollup_specs()
//    plus its migration, not a new code path.
#pragma once

#include "core/event.hpp"
#include "core/intern_table.hpp"

#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace tally {

class intern_table;

/// The fine aggregation key: ids by field (key..endpoint) and the UTC minute
/// (unix minutes) of the event. Trivially copyable; hashed bytewise.
struct agg_key {
  uint32_t ids[id_field_count];
  uint32_t minute;
};
static_assert(sizeof(agg_key) == 44, "agg_key is packed into 44 bytes");

uint64_t hash_key(const void* data, size_t size) noexcept;
inline uint64_t hash_of(const agg_key& k) noexcept { return hash_key(&k, sizeof k); }

/// The measures every rollup draws from. spend is 128-bit so no realistic
/// sum overflows (numeric(38,9) in Postgres holds the same range).
struct measure_values {
  __int128 spend = 0;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cache_read_tokens = 0;
  int64_t cache_creation_tokens = 0;
  int64_t requests = 0;
  int64_t successful_requests = 0;
  int64_t failed_requests = 0;

  void add(const measure_values& o) noexcept {
    spend += o.spend;
    prompt_tokens += o.prompt_tokens;
    completion_tokens += o.completion_tokens;
    cache_read_tokens += o.cache_read_tokens;
    cache_creation_tokens += o.cache_creation_tokens;
    requests += o.requests;
    successful_requests += o.successful_requests;
    failed_requests += o.failed_requests;
  }
  bool operator==(const measure_values& o) const noexcept;
};

/// Measures of one event: of a tally::event, or of anything with the same
/// measure members (the hot path's queued_event), one request.
template <class Event>
measure_values measures_of(const Event& ev) noexcept {
  measure_values m;
  m.spend = ev.spend;
  m.prompt_tokens = ev.prompt_tokens;
  m.completion_tokens = ev.completion_tokens;
  m.cache_read_tokens = ev.cache_read_tokens;
  m.cache_creation_tokens = ev.cache_creation_tokens;
  m.requests = 1;
  m.successful_requests = ev.ok ? 1 : 0;
  m.failed_requests = ev.ok ? 0 : 1;
  return m;
}

enum class measure : uint8_t {
  spend, prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens,
  total_tokens, requests, successful_requests, failed_requests,
};
const char* to_string(measure m) noexcept;
__int128 value_of(const measure_values& v, measure m) noexcept;

/// Entity types of tally_spend / tally_daily.
enum class entity : uint8_t { key, user, team, team_member, org, end_user, tag };
inline constexpr int entity_count = 7;
const char* to_string(entity e) noexcept;

enum class time_bucket : uint8_t { none, day, minute };

/// One rollup table, as data.
struct rollup_spec {
  std::string table;                 // "tally_spend"
  time_bucket bucket;                // bucket column first when not none
  std::vector<entity> entities;      // empty: not per entity
  bool has_scope;                    // entity rows carry a scope column
  std::vector<field> dims;           // extra dimension columns
  std::vector<std::string> dim_columns;  // their column names
  std::vector<measure> measures;

  /// Key column names in order: bucket, entity_type, scope, entity_id, dims.
  std::vector<std::string> key_columns() const;
  std::vector<std::string> measure_columns() const;
};

/// The rollups tally maintains, in flush order (design §5: table order).
const std::vector<rollup_spec>& rollup_specs();

/// A row key of one rollup, as interned ids. Trivially copyable.
struct row_key {
  uint16_t rollup;     // index into rollup_specs()
  uint8_t entity;      // entity type, when the rollup has entities
  uint8_t reserved = 0;
  uint32_t bucket;     // unix day or unix minute; 0 when none
  uint32_t scope;      // team id for team_member rows
  uint32_t entity_id;
  uint32_t dims[4];
};
static_assert(sizeof(row_key) == 32, "row_key is packed into 32 bytes");
inline uint64_t hash_of(const row_key& k) noexcept { return hash_key(&k, sizeof k); }

/// Texts a collection cycle needs ids for when the id table has no room
/// left (tag parts, split from lists producers interned whole). Their ids
/// start at `first_id`, above every intern_table id (slot indexes, below
/// 2^31), and mean something only within the cycle that made them.
class overflow_ids {
public:
  static constexpr uint32_t first_id = 0x80000000u;
  static bool owns(uint32_t id) noexcept { return id >= first_id && id != intern_table::npos; }

  /// The id of `text`, adding it if new. Allocates: a path for floods only.
  uint32_t intern(std::string_view text);
  std::string_view text(uint32_t id) const noexcept;
  size_t size() const noexcept { return texts_.size(); }

private:
  std::deque<std::string> texts_;  // a deque: the index's views stay valid as it grows
  std::unordered_map<std::string_view, uint32_t> index_;
};

/// Calls emit(const row_key&) for every rollup row the fine key feeds.
/// Tags are split on ',' and each tag interned (a tag id); a tag the table
/// has no room for gets an id from `overflow`, so every tag has its rows.
template <class Emit>
void fan_out(const agg_key& key, intern_table& ids, overflow_ids& overflow, Emit&& emit);

/// The text key columns of a row, in rollup_spec::key_columns() order. The
/// bucket is "YYYY-MM-DD" for days and "YYYY-MM-DD HH:MM:00+00" for minutes.
/// `overflow`: the one fan_out gave the row's ids from.
std::vector<std::string> key_texts(const row_key& key, const intern_table& ids, const overflow_ids& overflow);

/// Formats unix days / unix minutes as above.
std::string format_day(uint32_t unix_day);
std::string format_minute(uint32_t unix_minute);

} // namespace tally

#include "core/rollup_inl.hpp"
