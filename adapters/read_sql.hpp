// adapters/read_sql.hpp — the read path's one query (TALLY.GET fills).
#pragma once

#include "adapters/batch_codec.hpp"
#include "adapters/pg_client.hpp"
#include "core/rollup.hpp"

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tally::adapters {

/// A tally_spend row to read.
struct spend_key {
  std::string type;
  std::string scope;
  std::string id;
};

struct read_answer {
  std::vector<std::optional<measure_values>> rows;  // by request index; nullopt: no row
  std::vector<std::string> applied;                 // of the asked batch ids, those Postgres holds
};

/// Reads `want` from tally_spend plus its increments still waiting in
/// tally_spend_deferred and, in the same statement (one snapshot), which of
/// `batch_ids` tally_applied_batches holds.
result<read_answer> read_spend(pg_client& pg, const std::string& schema, const std::vector<spend_key>& want,
                               const std::vector<std::string>& batch_ids);

/// Parses Postgres' text of a numeric(38,9) ("12.5", "-0.000000001") into
/// exact nano-units. False for anything else.
bool parse_numeric_nanos(std::string_view text, __int128& out) noexcept;

/// Calls f(type, scope, id, measures) for every tally_spend row of `b` (the
/// rows TALLY.GET reads); other tables are skipped. The views live as long
/// as `b`.
template <class F>
void for_each_spend_row(const batch& b, F&& f) {
  const auto& spec = rollup_specs().front();  // tally_spend
  for (const auto& t : b.tables) {
    if (t.name != spec.table || t.key_columns.size() != 3 || t.measure_columns.size() != 8)
      continue;
    for (const auto& row : t.rows) {
      if (row.keys.size() != 3 || row.values.size() != 8)
        continue;
      measure_values m;  // tally_spend's measure columns are measure_values' members, in order
      m.spend = row.values[0];
      int64_t* counts = &m.prompt_tokens;
      for (int j = 0; j < 7; ++j)
        counts[j] = static_cast<int64_t>(row.values[1 + j]);
      f(std::string_view(row.keys[0]), std::string_view(row.keys[1]), std::string_view(row.keys[2]), m);
    }
  }
}

} // namespace tally::adapters
