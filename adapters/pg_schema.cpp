// adapters/pg_schema.cpp — see pg_schema.hpp.
#include "adapters/pg_schema.hpp"

#include <functional>
#include <vector>

namespace tally::adapters {

const char* to_string(schema_errc code) noexcept {
  switch (code) {
    case schema_errc::ok: return "ok";
    case schema_errc::migrate_failed: return "migrate_failed";
    case schema_errc::too_new: return "too_new";
  }
  return "unknown";
}

std::string qualified_table(const std::string& schema, const std::string& table) {
  return quote_identifier(schema) + "." + quote_identifier(table);
}

const char* key_column_type(const rollup_spec& spec, size_t key_index) {
  if (key_index == 0 && spec.bucket == time_bucket::day)
    return "date";
  if (key_index == 0 && spec.bucket == time_bucket::minute)
    return "timestamptz";
  return "text";
}

const char* measure_column_type(measure m) {
  return m == measure::spend ? "numeric(38,9)" : "bigint";
}

std::string rollup_table_ddl(const std::string& schema, const rollup_spec& spec) {
  auto keys = spec.key_columns();
  std::string sql = "CREATE TABLE IF NOT EXISTS " + qualified_table(schema, spec.table) + " (";
  for (size_t i = 0; i < keys.size(); ++i) {
    const char* type = key_column_type(spec, i);
    // Absent dimensions are '' (design §5), never NULL, so they take part in keys.
    sql += quote_identifier(keys[i]) + " " + type + " NOT NULL"
           + (std::string(type) == "text" ? " DEFAULT ''" : "") + ", ";
  }
  for (measure m : spec.measures)
    sql += quote_identifier(to_string(m)) + " " + measure_column_type(m) + " NOT NULL DEFAULT 0, ";
  sql += "updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (";
  for (size_t i = 0; i < keys.size(); ++i)
    sql += (i ? ", " : "") + quote_identifier(keys[i]);
  sql += "))";
  return sql;
}

std::string deferred_table_ddl(const std::string& schema, const rollup_spec& spec) {
  auto keys = spec.key_columns();
  std::string sql = "CREATE TABLE IF NOT EXISTS " + qualified_table(schema, spec.table + "_deferred")
                    + " (id bigserial PRIMARY KEY, ";
  for (size_t i = 0; i < keys.size(); ++i)
    sql += quote_identifier(keys[i]) + " " + key_column_type(spec, i) + " NOT NULL, ";
  for (measure m : spec.measures)
    sql += quote_identifier(to_string(m)) + " " + measure_column_type(m) + " NOT NULL, ";
  return sql + "deferred_at timestamptz NOT NULL DEFAULT now())";
}

namespace {

struct migration {
  int version;
  const char* description;
  std::function<std::vector<std::string>(const std::string& schema)> statements;
};

// Append-only: a released migration never changes; a change is a new entry.
const std::vector<migration>& migrations() {
  static const std::vector<migration> list = {
    {1, "rollup tables, fencing lease, applied batches",
     [](const std::string& s) {
       std::vector<std::string> out;
       for (const auto& spec : rollup_specs())
         out.push_back(rollup_table_ddl(s, spec));
       out.push_back("CREATE TABLE IF NOT EXISTS " + qualified_table(s, "tally_lease")
                     + " (namespace text PRIMARY KEY, epoch bigint NOT NULL,"
                       " holder text NOT NULL DEFAULT '', updated_at timestamptz NOT NULL DEFAULT now())");
       // `leader` is not in design §5: it records which instance committed
       // each batch, so tests (and operators) can check that one epoch had
       // exactly one writer. It costs one short text per batch.
       out.push_back("CREATE TABLE IF NOT EXISTS " + qualified_table(s, "tally_applied_batches")
                     + " (batch_id text PRIMARY KEY, epoch bigint NOT NULL,"
                       " leader text NOT NULL DEFAULT '', applied_at timestamptz NOT NULL DEFAULT now())");
       out.push_back("CREATE INDEX IF NOT EXISTS tally_applied_batches_applied_at ON "
                     + qualified_table(s, "tally_applied_batches") + " (applied_at)");
       return out;
     }},
    {2, "deferred entity-total increments",
     [](const std::string& s) {
       const auto& spec = rollup_specs().front();  // the entity totals
       std::string cols;
       for (const auto& k : spec.key_columns())
         cols += (cols.empty() ? "" : ", ") + quote_identifier(k);
       return std::vector<std::string>{
         deferred_table_ddl(s, spec),
         // Reads sum a row's deferred increments by key.
         "CREATE INDEX IF NOT EXISTS " + quote_identifier(spec.table + "_deferred_key") + " ON "
           + qualified_table(s, spec.table + "_deferred") + " (" + cols + ")"};
     }},
    {3, "rollup tables keep free space for HOT updates",
     [](const std::string& s) {
       std::vector<std::string> out;
       for (const auto& spec : rollup_specs())
         out.push_back("ALTER TABLE " + qualified_table(s, spec.table) + " SET (fillfactor = "
                       + std::to_string(rollup_fillfactor) + ")");
       return out;
     }},
  };
  return list;
}

error_info migrate_error(const error_info& cause, const std::string& what) {
  return {static_cast<int>(schema_errc::migrate_failed), "schema migration (" + what + "): " + cause.message,
          cause.sqlstate};
}

} // namespace

int latest_schema_version() noexcept {
  return migrations().back().version;
}

status migrate_schema(pg_client& pg, const std::string& schema) {
  auto run = [&](const std::string& sql, const std::vector<std::string>& params,
                 const std::string& what) -> result<pg_rows> {
    auto r = params.empty() ? pg.exec(sql) : pg.exec_params(sql, params);
    if (!r)
      return migrate_error(r.error(), what);
    return r;
  };
  auto fail = [&](error_info err) -> status {
    (void)pg.exec("ROLLBACK");
    return err;
  };
  if (auto r = run("BEGIN", {}, "begin"); !r)
    return r.error();
  // Key (class, hash of schema): several instances starting at once queue here.
  if (auto r = run("SELECT pg_advisory_xact_lock(1952541817, hashtext($1))", {schema}, "lock"); !r)
    return fail(r.error());
  const std::string version_table = qualified_table(schema, "tally_schema_version");
  for (const std::string& sql :
       {"CREATE SCHEMA IF NOT EXISTS " + quote_identifier(schema),
        "CREATE TABLE IF NOT EXISTS " + version_table
          + " (version integer PRIMARY KEY, description text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"})
    if (auto r = run(sql, {}, "version table"); !r)
      return fail(r.error());
  auto current = run("SELECT coalesce(max(version), 0) FROM " + version_table, {}, "read version");
  if (!current)
    return fail(current.error());
  int have = std::stoi(current->rows.at(0).at(0));
  if (have > latest_schema_version())
    return fail({static_cast<int>(schema_errc::too_new),
                 "schema " + schema + " is at version " + std::to_string(have) + ", newer than this tally ("
                   + std::to_string(latest_schema_version()) + ")",
                 {}});
  for (const auto& m : migrations()) {
    if (m.version <= have)
      continue;
    for (const auto& sql : m.statements(schema))
      if (auto r = run(sql, {}, "version " + std::to_string(m.version)); !r)
        return fail(r.error());
    if (auto r = run("INSERT INTO " + version_table + " (version, description) VALUES ($1, $2)",
                     {std::to_string(m.version), m.description}, "record version");
        !r)
      return fail(r.error());
  }
  // A rollup added to rollup_specs() after the last migration gets its table.
  for (const auto& spec : rollup_specs())
    if (auto r = run(rollup_table_ddl(schema, spec) + " WITH (fillfactor = " + std::to_string(rollup_fillfactor) + ")",
                     {}, spec.table);
        !r)
      return fail(r.error());
  if (auto r = run("COMMIT", {}, "commit"); !r)
    return fail(r.error());
  return {};
}

} // namespace tally::adapters
