// tests/support/postgres_rows.hpp — reading tally's tables back out of Postgres.
#pragma once

#include "tests/harness/servers.hpp"
#include "tests/support/workload.hpp"

#include <string>
#include <vector>

namespace tally::testing {

/// Splits psql's unaligned output on `sep`.
std::vector<std::string> split(const std::string& line, char sep);

/// A decimal integer as psql prints it (an optional '-', digits): measures
/// and nano-unit spend exceed 64 bits.
__int128 parse_i128(const std::string& s);

/// Every rollup row of every table in `schema` (empty: the search path),
/// keys as the reference writes them, spend in nano-units (exact: numeric
/// * 1e9 cast to an integer numeric). Compare with diff_rows().
rollup_rows read_postgres(const postgres_server& pg, const std::string& schema = "");

} // namespace tally::testing
