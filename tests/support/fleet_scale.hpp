// tests/support/fleet_scale.hpp — many tallyd instances on one Redis and one
// Postgres: exact totals, and what stage 2 costs against the instance count.
//
// One run starts `instances` real tallyd processes in one namespace and
// schema, spreads a generated workload over them in blocks (default 100
// events; block b to instance b mod N) through their RESP ports, waits for Postgres
// to hold exactly the workload's reference rollups, and reads every
// instance's /metrics and Redis' INFO commandstats. Shared by
// tallyd_scale_test (exactness at 1 and 8 instances) and scale_bench (1, 8
// and 32, at default intervals, with the figures).
//
// Two modes:
//  * steady: every instance also holds a Postgres URL, competes for the
//    lease and one of them flushes while the events arrive, at `rate`;
//  * drain: the instances only write stage 1 (no Postgres URL) and are
//    stopped (which writes out everything they hold); stage 1 is read back
//    and checked; then one more instance, the only one with Postgres, drains
//    it. Every batch is in Redis before that flusher starts, so its flushes
//    show exactly how the apply scales with the batches of N producers.
#pragma once

#include "tests/harness/servers.hpp"
#include "tests/support/workload.hpp"

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace tally::testing {

struct fleet_scale_options {
  int instances = 1;
  std::string ns = "scale";           // also the Postgres schema
  uint64_t seed = 1;
  uint64_t events = 20000;
  double rate = 0;                    // events/s over all instances; 0 = as fast as sent
  uint64_t block = 100;               // events per pipeline; block b goes to instance b mod N
  bool drain = false;                 // see the file comment
  std::vector<std::string> tallyd_args;  // more flags for every instance (intervals)
  std::chrono::milliseconds deadline{std::chrono::seconds(180)};
};

/// The figures of one run; counters are summed over the instances (and the
/// drain mode's flusher), taken over the run.
struct fleet_scale_result {
  int instances = 0;
  uint64_t events = 0;
  size_t reference_rows = 0;          // distinct rows of the workload, all tables
  std::string totals_diff;            // "" when Postgres holds exactly the reference
  double send_seconds = 0;            // sending every event
  double visible_seconds = 0;         // first event sent -> every total in Postgres
  long long events_accepted = 0;
  long long batches_written = 0;
  long long batch_bytes = 0;
  long long flushes = 0;
  long long rows_upserted = 0;
  long long duplicate_batches = 0;
  double flush_seconds = 0;           // summed over flushes (prepare + transaction)
  int lease_holders = 0;              // instances holding the lease at the end
  int instances_with_batches = 0;     // producers that wrote at least one batch
  std::vector<long long> accepted_per_instance;
  std::map<std::string, long long> redis_calls;  // INFO commandstats over the run
  double redis_seconds = 0;           // the window those calls were counted over
  double redis_cpu_seconds = 0;       // redis-server's CPU time in that window
  long long redis_bytes_in = 0;       // network bytes redis-server read in it
  long long redis_bytes_out = 0;      // and wrote (replies, pub/sub fan-out)
  double fleet_cpu_seconds = 0;       // the instances' CPU time in it (steady mode only)
  // drain mode only: what stage 1 held before the flusher started
  size_t stage1_batches = 0;
  size_t stage1_rows = 0;             // rows summed over batches, before any merge
  std::string stage1_diff;            // stage 1 summed vs the reference
  std::vector<int> exit_codes;        // of every instance's SIGTERM, in order
};

/// Runs one scenario against `redis` and `postgres`; throws
/// std::runtime_error (with the instance's log) when an instance does not
/// start or a send fails.
fleet_scale_result run_fleet_scale(const redis_server& redis, const postgres_server& postgres,
                                   const fleet_scale_options& opts);

/// Number of rows over all tables.
size_t row_count(const rollup_rows& rows);

} // namespace tally::testing
