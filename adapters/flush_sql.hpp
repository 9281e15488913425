// adapters/flush_sql.hpp — the one-transaction flush (design §5) and the
// fencing epoch, over a blocking pg_client.
//
// One flush, in one transaction, in this order:
//
//   BEGIN; lock_timeout, statement_timeout, idle_in_transaction_session_timeout (all LOCAL);
//     CREATE TEMP TABLE IF NOT EXISTS pg_temp.tally_stage_<rollup> (...) ON COMMIT DELETE ROWS
//   SELECT epoch FROM tally_lease WHERE namespace = $ns FOR UPDATE   -- must be ours, else ROLLBACK
//   INSERT INTO tally_applied_batches SELECT unnest($ids) ... ON CONFLICT DO NOTHING RETURNING batch_id
//   -- merge the rows of the returned (new) batches only, keys merged so no row appears twice
//   per rollup table in reverse rollup_specs() order (entity totals last), rows sorted by key:
//     COPY pg_temp.tally_stage_<rollup> FROM STDIN      -- (ord, keys, measures), ord = sorted position
//     INSERT ... SELECT FROM pg_temp.tally_stage_<rollup> ORDER BY ord     -- under a savepoint
//       ON CONFLICT (key) DO UPDATE SET m = t.m + EXCLUDED.m, updated_at = now()
//     [lock timeout: ROLLBACK TO SAVEPOINT; entity totals without deadlock
//      priority: defer_locked_sql; the upsert again]
//   COMMIT
//
// Why COPY into a staging table: measured in bench/flush_bench (BM_Upsert,
// same run, see bench/README.md) it applies 20,000-row flushes faster than
// one INSERT over unnest() of text-array literals and about twice as fast as
// multi-row VALUES; Postgres reads COPY's row format with less work than it
// parses array literals or binds parameters. (Most of a large flush is the
// upsert's index work on the server, which no input format changes.)
// The staging tables are temporary (session-private,
// no WAL) and emptied at COMMIT; they are created once per session (again
// after a rolled-back transaction that created them), not per flush, so
// the catalog does not churn. The upsert reads them ORDER BY ord, the
// position in the key-sorted merge, so rows are locked in the same global
// order as before.
//
// Why each piece:
//  * The FOR UPDATE on the lease row serializes a flush against a new
//    leader's epoch increment (take_epoch), so a paused ex-leader either
//    committed before the new epoch existed or sees it and rolls back.
//  * Batch ids recorded in the same transaction make a re-applied batch
//    (crash after commit, re-pushed copy) a no-op: exactly once.
//  * Every tally transaction locks rows in one global order (table, then key
//    in byte order), so two flushes can never deadlock each other. Against
//    foreign writers that lock rows in random order a cycle is possible; the
//    effective lock_timeout is kept below the server's deadlock_timeout, so a
//    tally flush that would wait into a cycle gives up with a lock timeout
//    (55P03) before Postgres could pick it as the deadlock victim: tally's
//    flushes never fail with 40P01, the foreign writer's may.
//    Deadlock priority: when the role may set deadlock_timeout, a flush sets
//    it (LOCAL) above its own lock_timeout and above the server default, so
//    in a cycle with a foreign writer it is always the foreign transaction
//    whose deadlock check runs first and aborts; the flush just waits about
//    one deadlock_timeout. Without the privilege tally never waits for an
//    entity-total row a foreign writer holds for longer than a first short
//    lock timeout: it rolls the upsert back to its savepoint, locks the
//    existing rows it can with SKIP LOCKED and moves the increments of
//    the rows it could not into tally_spend_deferred, in the same
//    transaction (so they are as committed, and as exactly-once, as the
//    rest). apply_deferred adds them afterwards, one row per transaction,
//    which can wait behind a foreign writer but never close a cycle; reads
//    add them in. Waiting and yielding instead starves: foreign writers
//    that lock in random order and queue behind one row of a large flush
//    hold the very rows it needs next, so every retry meets a cycle.
//    Uncontended flushes never pay for that pass (bench/flush_bench
//    BM_DeferPass: +20% on the entity totals' upsert when it runs). Other
//    tables and new rows keep the savepoint retry with a short, growing
//    lock_timeout: on 55P03 roll back to the savepoint, try again at once.
//  * idle_in_transaction_session_timeout makes the server end the session of
//    a leader frozen inside the transaction (SIGSTOP, VM pause), so it cannot
//    hold the lease row lock, and thereby block a new leader, forever. It is
//    set LOCAL in every transaction, so a silent reconnect cannot lose it.
//  * A sanity callback (`still_leader`) is checked before BEGIN and before
//    COMMIT: losing the Redis lease rolls an open flush back at once. The
//    fence, not this check, is what makes it correct.
#pragma once

#include "adapters/batch_codec.hpp"
#include "adapters/pg_client.hpp"
#include "core/rollup.hpp"
#include "core/result.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace tally::adapters {

struct flush_settings {
  std::string schema = "public";
  std::string ns;
  std::string leader;  // instance id, recorded with each applied batch
  uint64_t epoch = 0;
  std::chrono::milliseconds lock_timeout{5000};
  std::chrono::milliseconds statement_timeout{30000};
  std::chrono::milliseconds idle_in_transaction_timeout{10000};
  /// The role may SET deadlock_timeout (superuser, or PG15+ GRANT SET ON
  /// PARAMETER): see deadlock priority above. From can_take_deadlock_priority().
  bool deadlock_priority = false;
};

/// Whether the connected role may set deadlock_timeout for its own
/// transactions (superuser, or on PG 15+ `GRANT SET ON PARAMETER
/// deadlock_timeout TO <role>`).
result<bool> can_take_deadlock_priority(pg_client& pg);

struct table_count {
  std::string table;
  size_t rows = 0;
};

struct flush_outcome {
  enum class kind { committed, fenced, lease_lost };
  kind what = kind::committed;
  uint64_t database_epoch = 0;  // the epoch found in tally_lease
  size_t batches_new = 0;       // ids recorded by this transaction
  size_t batches_duplicate = 0; // ids that were already applied, skipped
  size_t rows = 0;              // rows upserted over all tables
  std::vector<table_count> tables;
  size_t lock_retries = 0;       // upserts retried after a short lock timeout
  size_t deferred = 0;           // entity-total rows held by others: to the deferred table
  std::chrono::milliseconds prepare_time{0};      // lookup, merge, parameters (before BEGIN)
  std::chrono::milliseconds transaction_time{0};  // BEGIN .. COMMIT
};

/// One rollup's rows, merged and sorted by key, in two flat arrays: row r's
/// key texts (key-column order) are keys[r * key_count ..], its measures
/// values[r * measure_count ..]. The texts are views into the batches the
/// rows came from, which must outlive the table. A row costs its views and
/// sums, no allocation of its own: a flush's rows are the largest thing a
/// leader holds.
struct merged_table {
  size_t key_count = 0;
  size_t measure_count = 0;
  std::vector<std::string_view> keys;
  std::vector<__int128> values;

  merged_table() = default;
  merged_table(size_t key_columns, size_t measure_columns) : key_count(key_columns), measure_count(measure_columns) {}
  size_t size() const noexcept { return key_count == 0 ? 0 : keys.size() / key_count; }
  bool empty() const noexcept { return keys.empty(); }
  std::string_view key(size_t row, size_t column) const noexcept { return keys[row * key_count + column]; }
  __int128 value(size_t row, size_t measure) const noexcept { return values[row * measure_count + measure]; }
  /// Appends a row; `row_keys` and `row_values` hold key_count and
  /// measure_count entries.
  void add(const std::string_view* row_keys, const __int128* row_values) {
    keys.insert(keys.end(), row_keys, row_keys + key_count);
    values.insert(values.end(), row_values, row_values + measure_count);
  }
};

/// Rows per rollup (index = rollup_specs() index), merged and sorted by key.
using merged_tables = std::vector<merged_table>;

/// "" when `t` (its header: name and columns) is a rollup of this build
/// with the same columns; else why not. Given to decode_batch, it refuses a
/// foreign table before any of its rows is allocated.
std::string check_table_shape(const batch_table& t);

/// "" when every table of `b` is a rollup of this build with the same
/// columns; else why not (such a batch cannot be applied and is dead-lettered).
std::string check_batch_shape(const batch& b);

/// Sums the rows of `batches` per rollup and key; sorts every table by key.
/// The tables' texts are views into `batches`.
merged_tables merge_batches(const std::vector<const batch*>& batches);

/// Formats nano-units as an exact decimal with nine fractional digits.
std::string format_nano_units(__int128 nanos);

/// The upsert statement of one rollup (parameters: one array per key
/// column as text[], then one per measure as numeric[] / bigint[]).
std::string upsert_sql(const std::string& schema, const rollup_spec& spec);

/// The upsert parameters of one rollup's rows: one text-array literal per
/// key column, then per measure. Built before BEGIN, so the transaction
/// spends its time in Postgres, not idle while the client formats arrays.
std::vector<std::string> upsert_params(const rollup_spec& spec, const merged_table& rows);

/// Runs the upsert of one rollup's rows (inside the caller's transaction).
/// The unnest apply: kept as the peer the COPY apply is measured against.
result<pg_rows> upsert_rows(pg_client& pg, const std::string& schema, const rollup_spec& spec,
                            const std::vector<std::string>& params);

/// CREATE TEMP TABLE IF NOT EXISTS of one rollup's staging table: ord
/// (the row's position in the key order), then the key and measure columns
/// with the rollup table's types; ON COMMIT DELETE ROWS.
std::string stage_table_ddl(const rollup_spec& spec);

/// The COPY input (text format) of one rollup's rows for its staging
/// table, ord counting from 0 in the order given (the key order). Built
/// before BEGIN, like the unnest parameters.
std::string stage_copy_data(const rollup_spec& spec, const merged_table& rows);

/// The upsert of one rollup from its staging table, ORDER BY ord.
std::string staged_upsert_sql(const std::string& schema, const rollup_spec& spec);

/// Copies `copy_data` into the staging table (which must exist in this
/// transaction: stage_table_ddl), inside the caller's transaction.
result<pg_rows> stage_rows(pg_client& pg, const rollup_spec& spec, const std::string& copy_data);

/// Runs the staged upsert of one rollup (inside the caller's transaction).
result<pg_rows> upsert_staged(pg_client& pg, const std::string& schema, const rollup_spec& spec);

/// Moves the staged rows of `spec` (the entity totals) whose existing row
/// another transaction holds into <table>_deferred, and locks the rest
/// (SKIP LOCKED: never waits). Inside the flush transaction, after COPY.
std::string defer_locked_sql(const std::string& schema, const rollup_spec& spec);

/// Deletes the oldest deferred increment whose rollup row nobody holds and
/// adds it to that row, in one statement that never waits (SKIP LOCKED on
/// both rows); returns a row when it applied one.
std::string apply_free_deferred_sql(const std::string& schema, const rollup_spec& spec);

/// Deletes the oldest unlocked deferred increment and adds it to its row
/// (inserting the row if it is gone), in one statement that waits for that
/// row; returns a row when it applied one.
std::string apply_deferred_sql(const std::string& schema, const rollup_spec& spec);

struct deferred_applied {
  long applied = 0;
  bool held = false;  // increments are left whose rows another transaction holds
};

/// Applies at most `limit` deferred entity-total increments, each in a
/// transaction of its own: first, oldest first, those whose rows are free
/// (so a row another transaction holds does not hold up the ones behind
/// it), then the oldest left, waiting at most `lock_timeout` for its row
/// (`held` when that wait ran out). Exactly once whoever runs it (the
/// delete and the add commit together), so it needs no epoch. Blocking.
/// Fewer than `limit` and not `held` means none was left that nobody else
/// was applying.
result<deferred_applied> apply_deferred(pg_client& pg, const std::string& schema, long limit,
                                        std::chrono::milliseconds lock_timeout);

/// What waits in the deferred table: how many increments, and the age of
/// the oldest (0 when none).
struct deferred_backlog {
  uint64_t rows = 0;
  uint64_t oldest_seconds = 0;
};

/// Reads the deferred table's backlog. Blocking; one small query.
result<deferred_backlog> read_deferred_backlog(pg_client& pg, const std::string& schema);

/// Applies `batches` (already shape-checked) in one transaction as described
/// above. Blocking. Ids already in tally_applied_batches are looked up and
/// the rest merged before BEGIN (after take_epoch nobody else can commit in
/// this namespace, so the answer holds; if the INSERT ... RETURNING inside
/// the transaction disagrees anyway, it rolls back with SQLSTATE 40001 and
/// the caller retries). An error leaves nothing applied (rolled back, or the
/// COMMIT's fate is unknown, which the dedup table makes harmless to retry).
result<flush_outcome> flush_batches(pg_client& pg, const flush_settings& settings,
                                    const std::vector<const batch*>& batches,
                                    const std::function<bool()>& still_leader);

/// Increments the namespace's fencing epoch (creating the row at 1) and
/// returns it, committed. Blocking, bounded by `lock_timeout` on the row.
result<uint64_t> take_epoch(pg_client& pg, const std::string& schema, const std::string& ns,
                            const std::string& holder, std::chrono::milliseconds lock_timeout);

/// Ids deleted per transaction: one batch takes tens of milliseconds, so it
/// holds its row locks and snapshot only that long.
constexpr long prune_batch_ids = 1000;
/// A batch statement that runs longer is cancelled (and the run retried later).
constexpr std::chrono::milliseconds prune_statement_timeout{5000};
/// Rest after a batch, as a multiple of the time the batch took: the prune
/// uses at most 1 / (1 + prune_rest_factor) of one Postgres backend, so a
/// backlog of a million ids drains in minutes without taking the CPU and
/// disk that flushes need (bench/flush_bench, BM_FlushWhilePruning).
constexpr int prune_rest_factor = 4;
/// The shortest rest between batches.
constexpr std::chrono::milliseconds prune_pause{20};

/// How long to rest after a prune batch that took `batch_time`.
inline std::chrono::milliseconds prune_rest(std::chrono::milliseconds batch_time) {
  return std::max(prune_pause, batch_time * prune_rest_factor);
}

/// Deletes at most `limit` applied-batch ids older than `retention`, oldest
/// first, in one short transaction of its own; returns how many. Bounded so
/// that pruning a large backlog is many small transactions, none holding
/// locks or a snapshot for long: `statement_timeout` caps each one, and rows
/// locked by anyone else are skipped (SKIP LOCKED), never waited for. Call
/// again while it returns `limit`. Blocking.
result<long> prune_applied_batches(pg_client& pg, const std::string& schema, std::chrono::hours retention,
                                   long limit, std::chrono::milliseconds statement_timeout);

} // namespace tally::adapters
