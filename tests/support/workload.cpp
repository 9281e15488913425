// tests/support/workload.cpp — see workload.hpp.
#include "tests/support/workload.hpp"

#include <cstdio>
#include <ctime>
#include <set>
#include <sstream>
#include <stdexcept>

namespace tally::testing {

namespace {

uint64_t mix(uint64_t x) {  // splitmix64
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

std::string pick(const char* prefix, uint64_t r, uint64_t pool) {
  return std::string(prefix) + std::to_string(r % pool);
}

std::string day_text(int64_t ts_ms) {
  std::time_t t = ts_ms / 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
  return buf;
}

std::string minute_text(int64_t ts_ms) {
  std::time_t t = ts_ms / 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[40];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02d %02d:%02d:00+00", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min);
  return buf;
}

constexpr const char* field_names[] = {"key", "user", "team", "org", "end_user", "tags",
                                       "model", "model_group", "provider", "endpoint"};

} // namespace

std::string to_string_i128(__int128 v) {
  if (v == 0)
    return "0";
  bool neg = v < 0;
  unsigned __int128 u = neg ? -static_cast<unsigned __int128>(v) : static_cast<unsigned __int128>(v);
  std::string s;
  while (u > 0) {
    s.insert(s.begin(), static_cast<char>('0' + static_cast<int>(u % 10)));
    u /= 10;
  }
  return neg ? "-" + s : s;
}

event generated_event::view() const {
  event ev;
  for (int i = 0; i < id_field_count; ++i)
    ev.ids[i] = ids[i];
  ev.spend = spend;
  ev.prompt_tokens = prompt_tokens;
  ev.completion_tokens = completion_tokens;
  ev.cache_read_tokens = cache_read_tokens;
  ev.cache_creation_tokens = cache_creation_tokens;
  ev.ok = ok;
  ev.ts_ms = ts_ms;
  return ev;
}

std::vector<std::string> generated_event::resp_args() const {
  std::vector<std::string> args{"TALLY.RECORD"};
  for (int i = 0; i < id_field_count; ++i)
    if (!ids[i].empty()) {
      args.emplace_back(field_names[i]);
      args.push_back(ids[i]);
    }
  args.insert(args.end(), {"spend", spend_text, "prompt_tokens", std::to_string(prompt_tokens),
                           "completion_tokens", std::to_string(completion_tokens)});
  if (cache_read_tokens != 0)
    args.insert(args.end(), {"cache_read_tokens", std::to_string(cache_read_tokens)});
  if (cache_creation_tokens != 0)
    args.insert(args.end(), {"cache_creation_tokens", std::to_string(cache_creation_tokens)});
  if (!ok)
    args.insert(args.end(), {"status", "error"});
  args.insert(args.end(), {"ts", std::to_string(ts_ms)});
  return args;
}

generated_event generate(uint64_t seed, uint64_t index) {
  uint64_t r = mix(seed * 0x100000001B3ull ^ index);
  auto next = [&] { return r = mix(r); };
  generated_event e;
  e.ids[0] = pick("key-", next(), 200);
  if (next() % 10 != 0)
    e.ids[1] = pick("user-", next(), 100);
  if (next() % 4 != 0)
    e.ids[2] = pick("team-", next(), 12);
  if (next() % 3 != 0)
    e.ids[3] = pick("org-", next(), 4);
  if (next() % 2 == 0)
    e.ids[4] = pick("end-user-", next(), 500);
  switch (next() % 5) {
    case 0: e.ids[5] = "prod"; break;
    case 1: e.ids[5] = "prod,eu"; break;
    case 2: e.ids[5] = "batch,eu,tier-" + std::to_string(next() % 3); break;
    default: break;
  }
  static const char* models[] = {"gpt-4o", "gpt-4o-mini", "claude-sonnet", "llama-3-70b", "mistral-large"};
  e.ids[6] = models[next() % 5];
  if (next() % 2 == 0)
    e.ids[7] = "group-" + std::to_string(next() % 2);
  static const char* providers[] = {"openai", "anthropic", "bedrock"};
  e.ids[8] = providers[next() % 3];
  static const char* endpoints[] = {"/v1/chat/completions", "/v1/embeddings", "/v1/messages"};
  e.ids[9] = endpoints[next() % 3];
  // Spend: 0 .. 0.099999999 with all nine decimals in play.
  uint64_t nanos = next() % 100000000ull;
  e.spend = static_cast<nano_units>(nanos);
  char buf[32];
  std::snprintf(buf, sizeof buf, "0.%09llu", static_cast<unsigned long long>(nanos));
  e.spend_text = buf;
  e.prompt_tokens = static_cast<int64_t>(next() % 4000);
  e.completion_tokens = static_cast<int64_t>(next() % 1000);
  if (next() % 4 == 0)
    e.cache_read_tokens = static_cast<int64_t>(next() % 2000);
  if (next() % 8 == 0)
    e.cache_creation_tokens = static_cast<int64_t>(next() % 500);
  e.ok = next() % 20 != 0;
  // 2026-11-22T23:50:00Z plus up to 20 minutes: crosses midnight UTC.
  e.ts_ms = 1795391400000LL + static_cast<int64_t>(next() % (20 * 60 * 1000));
  return e;
}

namespace {

/// Every reference row of one event, through `add(table, key, values)`.
template <class Add>
void fan_out_reference(const generated_event& ev, Add&& add) {
  std::vector<__int128> all = {ev.spend, ev.prompt_tokens, ev.completion_tokens, ev.cache_read_tokens,
                               ev.cache_creation_tokens, 1, ev.ok ? 1 : 0, ev.ok ? 0 : 1};
  const std::string& key = ev.ids[0];
  const std::string& user = ev.ids[1];
  const std::string& team = ev.ids[2];
  const std::string& org = ev.ids[3];
  const std::string& end_user = ev.ids[4];
  std::set<std::string> tags;
  {
    std::stringstream ss(ev.ids[5]);
    std::string t;
    while (std::getline(ss, t, ','))
      if (!t.empty())
        tags.insert(t);
  }
  const std::string& model = ev.ids[6];
  const std::string& provider = ev.ids[8];
  const std::string& endpoint = ev.ids[9];

  const std::string spend = "tally_spend";
  if (!key.empty()) add(spend, {"key", "", key}, all);
  if (!user.empty()) add(spend, {"user", "", user}, all);
  if (!team.empty()) add(spend, {"team", "", team}, all);
  if (!team.empty() && !user.empty()) add(spend, {"team_member", team, user}, all);
  if (!org.empty()) add(spend, {"org", "", org}, all);
  if (!end_user.empty()) add(spend, {"end_user", "", end_user}, all);
  for (auto& t : tags) add(spend, {"tag", "", t}, all);

  const std::string daily = "tally_daily";
  std::string day = day_text(ev.ts_ms);
  auto daily_row = [&](const char* type, const std::string& id) {
    if (!id.empty())
      add(daily, {day, type, id, key, model, provider, endpoint}, all);
  };
  daily_row("user", user);
  daily_row("team", team);
  daily_row("org", org);
  daily_row("end_user", end_user);
  for (auto& t : tags) daily_row("tag", t);

  add("tally_minute", {minute_text(ev.ts_ms), endpoint, model},
      {ev.prompt_tokens, ev.completion_tokens, ev.prompt_tokens + ev.completion_tokens, 1});
}

void add_into(std::vector<__int128>& row, const std::vector<__int128>& v) {
  if (row.empty())
    row.assign(v.size(), 0);
  for (size_t i = 0; i < v.size() && i < row.size(); ++i)
    row[i] += v[i];
}

} // namespace

void add_reference(rollup_rows& out, const generated_event& ev) {
  fan_out_reference(ev, [&](const std::string& table, std::vector<std::string> key, const std::vector<__int128>& v) {
    add_into(out[table][std::move(key)], v);
  });
}

size_t rows_accumulator::ids_hash::operator()(const ids& key) const noexcept {
  uint64_t h = 0;
  for (uint32_t id : key)
    h = (h ^ id) * 0x100000001b3ull;
  return static_cast<size_t>(h ^ (h >> 29));
}

uint32_t rows_accumulator::number(const std::string& text) {
  auto [it, fresh] = numbers_.try_emplace(text, static_cast<uint32_t>(texts_.size()));
  if (fresh)
    texts_.push_back(text);
  return it->second;
}

void rows_accumulator::add(const std::string& table_name, const std::vector<std::string>& key,
                           const std::vector<__int128>& values) {
  ids k{};
  if (key.size() >= k.size())
    throw std::invalid_argument("rows_accumulator: more than 7 key columns");
  for (size_t c = 0; c < key.size(); ++c)
    k[c] = number(key[c]);
  k.back() = static_cast<uint32_t>(key.size());
  auto& t = tables_[table_name];
  auto [it, fresh] = t.index.try_emplace(k, t.keys.size());
  if (fresh) {
    t.keys.push_back(k);
    t.values.emplace_back();
  }
  add_into(t.values[it->second], values);
}

void rows_accumulator::add(const generated_event& ev) {
  fan_out_reference(ev, [&](const std::string& table, std::vector<std::string> key, const std::vector<__int128>& v) {
    add(table, key, v);
  });
}

rollup_rows rows_accumulator::take() {
  rollup_rows out;
  for (auto& [name, t] : tables_) {
    auto& dst = out[name];
    for (size_t r = 0; r < t.keys.size(); ++r) {
      std::vector<std::string> key;
      key.reserve(t.keys[r].back());
      for (uint32_t c = 0; c < t.keys[r].back(); ++c)
        key.push_back(texts_[t.keys[r][c]]);
      dst.emplace(std::move(key), std::move(t.values[r]));
    }
  }
  tables_.clear();
  return out;
}

rollup_rows reference_range(uint64_t seed, uint64_t from, uint64_t to) {
  rows_accumulator acc;
  for (uint64_t i = from; i < to; ++i)
    acc.add(generate(seed, i));
  return acc.take();
}

void merge_rows(rollup_rows& a, const rollup_rows& b) {
  for (auto& [table, rows] : b) {
    auto& dst = a[table];
    for (auto& [key, values] : rows)
      add_into(dst[key], values);
  }
}

std::string diff_rows(const rollup_rows& expected, const rollup_rows& actual) {
  auto key_text = [](const std::vector<std::string>& k) {
    std::string s;
    for (auto& p : k) s += "[" + p + "]";
    return s;
  };
  for (auto& [table, rows] : expected) {
    auto it = actual.find(table);
    if (it == actual.end())
      return "table " + table + " missing";
    for (auto& [key, values] : rows) {
      auto row = it->second.find(key);
      if (row == it->second.end())
        return table + " row " + key_text(key) + " missing";
      if (row->second != values) {
        std::string s = table + " row " + key_text(key) + " differs:";
        for (size_t i = 0; i < values.size(); ++i)
          s += " " + to_string_i128(values[i]) + "/" +
               (i < row->second.size() ? to_string_i128(row->second[i]) : std::string("?"));
        return s;
      }
    }
    if (it->second.size() != rows.size())
      return table + ": " + std::to_string(it->second.size()) + " rows, expected " + std::to_string(rows.size());
  }
  for (auto& [table, rows] : actual)
    if (!expected.count(table) && !rows.empty())
      return "unexpected table " + table;
  return {};
}

} // namespace tally::testing
