// adapters/read_sql.hpp — the read path's one query (TALLY.GET fills).
#pragma once

#include "adapters/batch_codec.hpp"
#include "adapters/pg_client.hpp"
#include "core/rollup.hpp"

#include <optional>
#include <string>
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

/// Reads `want` from tally_spend and, in the same statement (one snapshot),
/// which of `batch_ids` tally_applied_batches holds.
result<read_answer> read_spend(pg_client& pg, const std::string& schema, const std::vector<spend_key>& want,
                               const std::vector<std::string>& batch_ids);

/// Parses Postgres' text of a numeric(38,9) ("12.5", "-0.000000001") into
/// exact nano-units. False for anything else.
bool parse_numeric_nanos(std::string_view text, __int128& out) noexcept;

/// The tally_spend rows of a batch (the rows TALLY.GET reads), with their
/// measures; other tables are skipped.
struct batch_spend_row {
  spend_key key;
  measure_values values;
};
std::vector<batch_spend_row> spend_rows_of(const batch& b);

} // namespace tally::adapters
