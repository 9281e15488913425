// actors/reader.hpp — reads totals from Postgres for the read path.
//
// A small pool of detached actors, each with its own Postgres connection
// (never the flusher's): a GET that misses the cache becomes a job for the
// reader its first missing row hashes to, so concurrent misses of one row
// queue at one reader, and every one after the first finds the value the
// first installed (single flight). A job's misses are read in one query;
// fills that raced an invalidation are read again (at most read_attempts
// rounds, then the job fails with "try again").
//
// Accepts:
//   read_atom, read_job_ptr        answer through the job's promise
#pragma once

#include "actors/flush_context.hpp"
#include "adapters/read_sql.hpp"
#include "core/read_cache.hpp"

#include <caf/atom.hpp>
#include <caf/fwd.hpp>

#include <future>
#include <memory>
#include <string>
#include <vector>

namespace tally {

using read_atom = caf::atom_constant<caf::atom("read")>;

struct read_job_result {
  std::string error;  // "" on success
  std::vector<cached_totals> values;  // by request index
};

/// One read. A promise, not a CAF response: the asker may be a connection
/// actor or any embedding thread (see cluster_reply).
struct read_job {
  std::vector<adapters::spend_key> keys;
  std::vector<entity_key> hashed;  // make_entity_key of each key
  std::promise<read_job_result> done;
};
using read_job_ptr = std::shared_ptr<read_job>;

inline constexpr int read_attempts = 5;

caf::actor spawn_reader(caf::actor_system& sys, flush_context_ptr ctx, read_cache& cache);

} // namespace tally

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(tally::read_job_ptr)
