// adapters/read_sql.cpp — see read_sql.hpp.
#include "adapters/read_sql.hpp"

#include "adapters/pg_schema.hpp"

#include <charconv>

namespace tally::adapters {

namespace {

std::string read_sql(const std::string& schema) {
  // One statement, so every part reads the same snapshot: a batch is either
  // in the totals (the row, or its deferred increments) and in the applied
  // list, or in neither; a deferred increment is in exactly one of its two
  // tables. Rows of one key are summed by the caller.
  auto part = [&](const std::string& table) {
    return "SELECT 0, w.i, s.spend::text, s.prompt_tokens, s.completion_tokens, s.cache_read_tokens, "
           "s.cache_creation_tokens, s.requests, s.successful_requests, s.failed_requests "
           "FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS w(t, sc, e, i) "
           "JOIN " + qualified_table(schema, table) + " s "
           "ON s.entity_type = w.t AND s.scope = w.sc AND s.entity_id = w.e ";
  };
  return part("tally_spend") + "UNION ALL " + part("tally_spend_deferred") + "UNION ALL "
         "SELECT 1, 0, a.batch_id, 0, 0, 0, 0, 0, 0, 0 FROM " + qualified_table(schema, "tally_applied_batches")
         + " a WHERE a.batch_id = ANY($4::text[])";
}

bool parse_i64(const std::string& s, int64_t& out) {
  auto r = std::from_chars(s.data(), s.data() + s.size(), out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
}

} // namespace

bool parse_numeric_nanos(std::string_view text, __int128& out) noexcept {
  size_t i = 0;
  bool negative = false;
  if (i < text.size() && (text[i] == '-' || text[i] == '+'))
    negative = text[i++] == '-';
  __int128 v = 0;
  int digits = 0, fraction = -1;
  constexpr __int128 limit = static_cast<__int128>(1) << 120;
  for (; i < text.size(); ++i) {
    char c = text[i];
    if (c == '.' && fraction < 0) {
      fraction = 0;
      continue;
    }
    if (c < '0' || c > '9')
      return false;
    if (fraction >= 0 && ++fraction > 9)
      return false;  // numeric(38,9) never has more
    v = v * 10 + (c - '0');
    if (v > limit)
      return false;
    ++digits;
  }
  if (digits == 0)
    return false;
  for (int f = fraction < 0 ? 0 : fraction; f < 9; ++f)
    v *= 10;
  out = negative ? -v : v;
  return true;
}

result<read_answer> read_spend(pg_client& pg, const std::string& schema, const std::vector<spend_key>& want,
                               const std::vector<std::string>& batch_ids) {
  std::vector<std::string> types, scopes, ids;
  types.reserve(want.size());
  for (const auto& k : want) {
    types.push_back(k.type);
    scopes.push_back(k.scope);
    ids.push_back(k.id);
  }
  auto rows = pg.exec_prepared("tally_read_spend", read_sql(schema),
                               {pg_text_array(types), pg_text_array(scopes), pg_text_array(ids),
                                pg_text_array(batch_ids)});
  if (!rows)
    return rows.error();
  read_answer out;
  out.rows.resize(want.size());
  for (const auto& r : rows->rows) {
    if (r.size() != 10)
      return error_info{static_cast<int>(pg_errc::query_failed), "read: unexpected column count", {}};
    if (r[0] == "1") {
      out.applied.push_back(r[2]);
      continue;
    }
    int64_t index = 0;
    measure_values m;
    if (!parse_i64(r[1], index) || index < 1 || static_cast<size_t>(index) > want.size()
        || !parse_numeric_nanos(r[2], m.spend) || !parse_i64(r[3], m.prompt_tokens)
        || !parse_i64(r[4], m.completion_tokens) || !parse_i64(r[5], m.cache_read_tokens)
        || !parse_i64(r[6], m.cache_creation_tokens) || !parse_i64(r[7], m.requests)
        || !parse_i64(r[8], m.successful_requests) || !parse_i64(r[9], m.failed_requests))
      return error_info{static_cast<int>(pg_errc::query_failed), "read: a row Postgres returned does not parse", {}};
    auto& row = out.rows[static_cast<size_t>(index - 1)];
    if (row)
      row->add(m);
    else
      row = m;
  }
  return out;
}

} // namespace tally::adapters
