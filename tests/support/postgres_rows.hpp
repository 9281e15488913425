// tests/support/postgres_rows.hpp — reading tally's tables back out of Postgres.
#pragma once

#include "tests/harness/servers.hpp"
#include "tests/support/workload.hpp"

#include <map>
#include <string>
#include <utility>
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

/// tally_spend as the gateway feeds (tests/litellm/feed.py, tests/node/feed.js)
/// print it: "entity_type\tscope\tentity_id" -> "spend\tprompt_tokens\t...
/// \tfailed_requests" (spend with 9 decimals, as Postgres prints numeric(38,9)).
using spend_rows = std::map<std::string, std::string>;

/// Splits such a line after its third column: the row's key, its measures.
std::pair<std::string, std::string> split_spend_key(const std::string& line);

/// Returns every row of `schema`.tally_spend in that format.
spend_rows read_spend(const postgres_server& pg, const std::string& schema);

/// What a feed printed: its "expect\t..." rows and its "events\tN" count.
struct feed_expectation {
  spend_rows rows;
  long long events = 0;
};
feed_expectation parse_feed_output(const std::string& out);

/// Lists the rows that differ, one per line; empty when the two are equal.
std::string diff_spend(const spend_rows& expected, const spend_rows& actual);

} // namespace tally::testing
