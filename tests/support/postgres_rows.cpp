// tests/support/postgres_rows.cpp — see postgres_rows.hpp.
#include "tests/support/postgres_rows.hpp"

#include "core/rollup.hpp"

#include <sstream>

namespace tally::testing {

__int128 parse_i128(const std::string& s) {
  __int128 v = 0;
  bool neg = !s.empty() && s[0] == '-';
  for (size_t i = neg ? 1 : 0; i < s.size(); ++i)
    v = v * 10 + (s[i] - '0');
  return neg ? -v : v;
}

std::vector<std::string> split(const std::string& line, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : line) {
    if (c == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  out.push_back(cur);
  return out;
}

/// Every rollup row in Postgres, keys as the reference writes them, spend
/// in nano-units (exact: numeric * 1e9 cast to an integer numeric).
rollup_rows read_postgres(const postgres_server& pg, const std::string& schema) {
  rollup_rows out;
  for (const auto& spec : rollup_specs()) {
    auto keys = spec.key_columns();
    std::string select;
    for (size_t i = 0; i < keys.size(); ++i) {
      std::string col = keys[i];
      if (spec.bucket == time_bucket::day && i == 0)
        col = "day::text";
      else if (spec.bucket == time_bucket::minute && i == 0)
        col = "to_char(minute AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:00') || '+00'";
      select += (i ? ", " : "") + col;
    }
    for (measure m : spec.measures)
      select += m == measure::spend ? std::string(", (spend * 1000000000)::numeric(38,0)")
                                    : std::string(", ") + to_string(m);
    auto text = pg.psql("SELECT " + select + " FROM " + (schema.empty() ? "" : schema + ".") + spec.table);
    auto& table = out[spec.table];
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty())
        continue;
      auto cols = split(line, '|');
      std::vector<std::string> key(cols.begin(), cols.begin() + keys.size());
      std::vector<__int128> values;
      for (size_t i = keys.size(); i < cols.size(); ++i)
        values.push_back(parse_i128(cols[i]));
      table[key] = values;
    }
  }
  return out;
}

std::pair<std::string, std::string> split_spend_key(const std::string& line) {
  size_t tab = std::string::npos;
  for (int i = 0; i < 3; ++i) {
    tab = line.find('\t', tab == std::string::npos ? 0 : tab + 1);
    if (tab == std::string::npos)
      return {line, ""};
  }
  return {line.substr(0, tab), line.substr(tab + 1)};
}

spend_rows read_spend(const postgres_server& pg, const std::string& schema) {
  std::istringstream out(pg.psql(
    "SELECT concat_ws(E'\\t', entity_type, scope, entity_id, spend, prompt_tokens, completion_tokens, "
    "cache_read_tokens, cache_creation_tokens, requests, successful_requests, failed_requests) FROM "
    + schema + ".tally_spend"));
  spend_rows rows;
  std::string line;
  while (std::getline(out, line))
    rows.insert(split_spend_key(line));
  return rows;
}

feed_expectation parse_feed_output(const std::string& out) {
  feed_expectation e;
  std::istringstream lines(out);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("expect\t", 0) == 0)
      e.rows.insert(split_spend_key(line.substr(7)));
    else if (line.rfind("events\t", 0) == 0)
      e.events = std::stoll(line.substr(7));
  }
  return e;
}

std::string diff_spend(const spend_rows& expected, const spend_rows& actual) {
  std::string out;
  for (const auto& [key, want] : expected) {
    auto it = actual.find(key);
    if (it == actual.end())
      out += "missing  " + key + "\t" + want + "\n";
    else if (it->second != want)
      out += "differs  " + key + "\n  expected " + want + "\n  actual   " + it->second + "\n";
  }
  for (const auto& [key, got] : actual)
    if (!expected.count(key))
      out += "extra    " + key + "\t" + got + "\n";
  return out;
}

} // namespace tally::testing
