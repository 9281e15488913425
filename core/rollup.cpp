// core/rollup.cpp — the rollup table entries and their text forms.
#include "core/rollup.hpp"

#include <cstdio>
#include <ctime>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace tally {

uint64_t hash_key(const void* data, size_t size) noexcept {
  return XXH3_64bits(data, size);
}

bool measure_values::operator==(const measure_values& o) const noexcept {
  return spend == o.spend && prompt_tokens == o.prompt_tokens
         && completion_tokens == o.completion_tokens && cache_read_tokens == o.cache_read_tokens
         && cache_creation_tokens == o.cache_creation_tokens && requests == o.requests
         && successful_requests == o.successful_requests && failed_requests == o.failed_requests;
}

const char* to_string(measure m) noexcept {
  switch (m) {
    case measure::spend: return "spend";
    case measure::prompt_tokens: return "prompt_tokens";
    case measure::completion_tokens: return "completion_tokens";
    case measure::cache_read_tokens: return "cache_read_tokens";
    case measure::cache_creation_tokens: return "cache_creation_tokens";
    case measure::total_tokens: return "total_tokens";
    case measure::requests: return "requests";
    case measure::successful_requests: return "successful_requests";
    case measure::failed_requests: return "failed_requests";
  }
  return "?";
}

__int128 value_of(const measure_values& v, measure m) noexcept {
  switch (m) {
    case measure::spend: return v.spend;
    case measure::prompt_tokens: return v.prompt_tokens;
    case measure::completion_tokens: return v.completion_tokens;
    case measure::cache_read_tokens: return v.cache_read_tokens;
    case measure::cache_creation_tokens: return v.cache_creation_tokens;
    case measure::total_tokens: return static_cast<__int128>(v.prompt_tokens) + v.completion_tokens;
    case measure::requests: return v.requests;
    case measure::successful_requests: return v.successful_requests;
    case measure::failed_requests: return v.failed_requests;
  }
  return 0;
}

const char* to_string(entity e) noexcept {
  switch (e) {
    case entity::key: return "key";
    case entity::user: return "user";
    case entity::team: return "team";
    case entity::team_member: return "team_member";
    case entity::org: return "org";
    case entity::end_user: return "end_user";
    case entity::tag: return "tag";
  }
  return "?";
}

std::vector<std::string> rollup_spec::key_columns() const {
  std::vector<std::string> cols;
  if (bucket == time_bucket::day)
    cols.emplace_back("day");
  else if (bucket == time_bucket::minute)
    cols.emplace_back("minute");
  if (!entities.empty()) {
    cols.emplace_back("entity_type");
    if (has_scope)
      cols.emplace_back("scope");
    cols.emplace_back("entity_id");
  }
  cols.insert(cols.end(), dim_columns.begin(), dim_columns.end());
  return cols;
}

std::vector<std::string> rollup_spec::measure_columns() const {
  std::vector<std::string> cols;
  for (measure m : measures)
    cols.emplace_back(to_string(m));
  return cols;
}

const std::vector<rollup_spec>& rollup_specs() {
  static const std::vector<measure> all_measures = {
    measure::spend, measure::prompt_tokens, measure::completion_tokens,
    measure::cache_read_tokens, measure::cache_creation_tokens, measure::requests,
    measure::successful_requests, measure::failed_requests};
  static const std::vector<rollup_spec> specs = {
    {"tally_spend", time_bucket::none,
     {entity::key, entity::user, entity::team, entity::team_member, entity::org, entity::end_user, entity::tag},
     true, {}, {}, all_measures},
    {"tally_daily", time_bucket::day,
     {entity::user, entity::team, entity::org, entity::end_user, entity::tag},
     false, {field::key, field::model, field::provider, field::endpoint},
     {"api_key", "model", "provider", "endpoint"}, all_measures},
    {"tally_minute", time_bucket::minute, {}, false, {field::endpoint, field::model},
     {"endpoint", "model"},
     {measure::prompt_tokens, measure::completion_tokens, measure::total_tokens, measure::requests}},
  };
  return specs;
}

std::string format_day(uint32_t unix_day) {
  std::time_t t = static_cast<std::time_t>(unix_day) * 86400;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
  return buf;
}

std::string format_minute(uint32_t unix_minute) {
  std::time_t t = static_cast<std::time_t>(unix_minute) * 60;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[40];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02d %02d:%02d:00+00", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min);
  return buf;
}

uint32_t overflow_ids::intern(std::string_view text) {
  if (auto it = index_.find(text); it != index_.end())
    return it->second;
  auto id = static_cast<uint32_t>(first_id + texts_.size());
  index_.emplace(texts_.emplace_back(text), id);
  return id;
}

std::string_view overflow_ids::text(uint32_t id) const noexcept {
  return owns(id) && id - first_id < texts_.size() ? std::string_view{texts_[id - first_id]} : std::string_view{};
}

std::vector<std::string> key_texts(const row_key& key, const intern_table& table, const overflow_ids& overflow) {
  auto text = [&](uint32_t id) { return overflow_ids::owns(id) ? overflow.text(id) : table.text(id); };
  const rollup_spec& spec = rollup_specs()[key.rollup];
  std::vector<std::string> out;
  out.reserve(8);
  if (spec.bucket == time_bucket::day)
    out.push_back(format_day(key.bucket));
  else if (spec.bucket == time_bucket::minute)
    out.push_back(format_minute(key.bucket));
  if (!spec.entities.empty()) {
    out.emplace_back(to_string(static_cast<entity>(key.entity)));
    if (spec.has_scope)
      out.emplace_back(text(key.scope));
    out.emplace_back(text(key.entity_id));
  }
  for (size_t d = 0; d < spec.dims.size() && d < 4; ++d)
    out.emplace_back(text(key.dims[d]));
  return out;
}

} // namespace tally
