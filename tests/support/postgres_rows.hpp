// tests/support/postgres_rows.hpp — reading tally's tables back out of Postgres.
#pragma once

#include "tests/harness/servers.hpp"
#include "tests/support/workload.hpp"

#include <string>
#include <vector>

namespace tally::testing {

/// Every rollup row of every table in `schema` (empty: the search path),
/// keys as the reference writes them, spend in nano-units (exact: numeric
/// * 1e9 cast to an integer numeric). Compare with diff_rows().
/// Splits psql's unaligned output on `sep`.
std::vector<std::string> split(const std::string& line, char sep);

rollup_rows read_postgres(const postgres_server& pg, const std::string& schema = "");

} // namespace tally::testing
