// adapters/pg_schema.hpp — tally's tables in Postgres: DDL and migrations.
//
// Every table is created by tally itself at start (design §5), in a
// configurable schema, idempotently and safely when several instances start
// at once: migrate_schema() runs in one transaction that first takes a
// transaction-scoped advisory lock keyed on the schema name, so concurrent
// starters queue instead of racing on CREATE (which is not concurrency-safe
// in Postgres: two CREATE TABLE IF NOT EXISTS can both fail on the catalog's
// unique index).
//
// Versions live in tally_schema_version (one row per applied migration).
// Migrations are numbered, append-only SQL generators; the rollup tables are
// generated from rollup_specs() (rollups are data), so a new rollup entry
// gets its table from the CREATE TABLE IF NOT EXISTS pass that follows the
// numbered migrations on every start; changing an existing rollup needs a
// numbered migration.
#pragma once

#include "adapters/pg_client.hpp"
#include "core/rollup.hpp"
#include "core/result.hpp"

#include <string>
#include <string_view>

namespace tally::adapters {

enum class schema_errc : int {
  ok = 0,
  migrate_failed = 100,  // a DDL statement failed; message and SQLSTATE say why
  too_new,               // the schema was migrated by a newer tally
};
const char* to_string(schema_errc code) noexcept;

/// `"schema"."table"`.
std::string qualified_table(const std::string& schema, const std::string& table);

/// The SQL type of a rollup key column (date, timestamptz or text).
const char* key_column_type(const rollup_spec& spec, size_t key_index);

/// The SQL type of a measure column: numeric(38,9) for spend (nano-units
/// stored as units), bigint for the counts.
const char* measure_column_type(measure m);

/// Fill factor of the rollup tables. A flush updates most of its rows in
/// place; with free space on the page Postgres makes that a HOT update
/// (no new index entry), which measured 2-2.5x faster than on full pages
/// for 20,000-row flushes, and keeps the primary key from bloating
/// (bench/README.md, "HOT updates"). Pages written before the migration
/// set it stay full until rewritten (VACUUM FULL, pg_repack).
constexpr int rollup_fillfactor = 70;

/// CREATE TABLE IF NOT EXISTS for one rollup, generated from its spec.
std::string rollup_table_ddl(const std::string& schema, const rollup_spec& spec);

/// CREATE TABLE IF NOT EXISTS <rollup>_deferred: increments a flush
/// committed but could not lock the row for (it was held by a writer
/// outside tally), one row each (id, key columns, measure columns,
/// deferred_at) until apply_deferred adds them to the rollup.
std::string deferred_table_ddl(const std::string& schema, const rollup_spec& spec);

/// The newest schema version this build knows.
int latest_schema_version() noexcept;

/// Creates the schema and every table, applies missing migrations, records
/// them in tally_schema_version. Blocking; one transaction; idempotent.
/// Returns schema_errc::too_new if the database is ahead of this build.
status migrate_schema(pg_client& pg, const std::string& schema);

} // namespace tally::adapters
