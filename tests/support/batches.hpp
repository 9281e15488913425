// tests/support/batches.hpp — reading stage-1 batches back out of Redis.
#pragma once

#include "adapters/batch_codec.hpp"
#include "tests/support/workload.hpp"

#include <set>
#include <string>

namespace tally::testing {

struct stage1_contents {
  rollup_rows rows;                 // every batch decoded and summed
  size_t batches = 0;
  size_t rows_in_batches = 0;       // rows counted batch by batch, before summing
  std::set<std::string> ids;        // distinct batch ids
  std::vector<std::string> duplicate_ids;
  std::vector<std::string> errors;  // batches that failed to decode
};

/// Adds the rows of one decoded batch into `out`, table by table.
void add_batch_rows(rollup_rows& out, const adapters::batch& b);

/// LRANGEs `{tally:<ns>}:batches` and decodes every batch.
stage1_contents read_stage1(const std::string& redis_url, const std::string& ns);

} // namespace tally::testing
