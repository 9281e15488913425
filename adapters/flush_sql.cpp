// adapters/flush_sql.cpp — see flush_sql.hpp.
#include "adapters/flush_sql.hpp"

#include "adapters/pg_schema.hpp"
#include "core/failpoint.hpp"

#include <algorithm>
#include <atomic>
#include <random>
#include <thread>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <unistd.h>
#include <string_view>
#include <unordered_map>

namespace tally::adapters {

namespace {

// Test hook beside the failpoints: TALLY_STOPPOINT=<name> makes the process
// stop itself (SIGSTOP) the first time it reaches <name>, as a VM pause or a
// long GC would, so a test can freeze a leader at an exact moment and resume
// it with SIGCONT. Compiled only with TALLY_FAILPOINTS.
void stoppoint(const char* name) noexcept {
#ifdef TALLY_FAILPOINTS
  static const char* armed = std::getenv("TALLY_STOPPOINT");
  static std::atomic<bool> fired{false};
  if (armed == nullptr || std::string(armed) != name || fired.exchange(true))
    return;
  char line[160];
  int n = std::snprintf(line, sizeof line, "stoppoint %s: SIGSTOP\n", name);
  ssize_t rc = ::write(STDERR_FILENO, line, static_cast<size_t>(n));
  (void)rc;
  ::raise(SIGSTOP);
#else
  (void)name;
#endif
}

std::string i128_text(__int128 v) {
  if (v == 0)
    return "0";
  bool negative = v < 0;
  unsigned __int128 u = negative ? -static_cast<unsigned __int128>(v) : static_cast<unsigned __int128>(v);
  char buf[48];
  int at = sizeof buf;
  while (u > 0) {
    buf[--at] = static_cast<char>('0' + static_cast<int>(u % 10));
    u /= 10;
  }
  if (negative)
    buf[--at] = '-';
  return std::string(buf + at, sizeof buf - at);
}

int spec_index(const std::string& table) {
  const auto& specs = rollup_specs();
  for (size_t i = 0; i < specs.size(); ++i)
    if (specs[i].table == table)
      return static_cast<int>(i);
  return -1;
}

// With deadlock priority: a flush's own deadlock check runs after it waited
// longer than its lock_timeout (so never) and later than a foreign writer's
// check under any sane server default.
std::chrono::milliseconds priority_deadlock_timeout(const flush_settings& st) {
  return std::max(st.lock_timeout + std::chrono::milliseconds(1000), std::chrono::milliseconds(10000));
}

// Upsert attempts per table inside one flush before the flush gives up
// (and is retried as a whole by the caller, with backoff).
constexpr int upsert_lock_attempts = 100;

// "t.k0 = s.k0 AND ..." over the key columns.
std::string key_match(const rollup_spec& spec, const std::string& a, const std::string& b) {
  std::string out;
  for (const auto& k : spec.key_columns())
    out += (out.empty() ? "" : " AND ") + a + "." + quote_identifier(k) + " = " + b + "." + quote_identifier(k);
  return out;
}

// The key columns, then the measure columns, comma-separated.
std::string column_list(const rollup_spec& spec, const std::string& prefix) {
  std::string out;
  for (const auto& c : spec.key_columns())
    out += (out.empty() ? "" : ", ") + prefix + quote_identifier(c);
  for (const auto& c : spec.measure_columns())
    out += ", " + prefix + quote_identifier(c);
  return out;
}

// The SET list that adds the measures of row `from` to the rollup row t.
std::string add_measures(const rollup_spec& spec, const std::string& from) {
  std::string updates;
  for (const auto& m : spec.measure_columns())
    updates += quote_identifier(m) + " = t." + quote_identifier(m) + " + " + from + "." + quote_identifier(m) + ", ";
  return updates + "updated_at = now()";
}

// The tail every upsert into a rollup (aliased t) shares: an existing row
// gets the measures added.
std::string on_conflict_add(const rollup_spec& spec) {
  std::string conflict;
  for (const auto& k : spec.key_columns())
    conflict += (conflict.empty() ? "" : ", ") + quote_identifier(k);
  return " ON CONFLICT (" + conflict + ") DO UPDATE SET " + add_measures(spec, "EXCLUDED");
}

error_info with_context(const error_info& e, const std::string& what) {
  return {e.code, what + ": " + e.message, e.sqlstate};
}

} // namespace

std::string check_table_shape(const batch_table& t) {
  const auto& specs = rollup_specs();
  int i = spec_index(t.name);
  if (i < 0)
    return "unknown rollup table '" + t.name + "'";
  if (t.key_columns != specs[i].key_columns() || t.measure_columns != specs[i].measure_columns())
    return "columns of '" + t.name + "' differ from this build's rollup";
  return {};
}

std::string check_batch_shape(const batch& b) {
  for (const auto& t : b.tables) {
    if (auto why = check_table_shape(t); !why.empty())
      return why;
    for (const auto& row : t.rows)
      if (row.keys.size() != t.key_columns.size() || row.values.size() != t.measure_columns.size())
        return "a row of '" + t.name + "' has the wrong number of columns";
  }
  return {};
}

namespace {

/// One table's merge. Every key text is numbered once per column (a
/// string_view into the batches, no copy); a row is then its column
/// numbers, so finding a repeated row hashes and compares integers, and the
/// lock-order sort compares ranks: the distinct texts of each column are
/// sorted once, not once per row comparison.
class table_merger {
public:
  table_merger(size_t key_count, size_t measure_count, size_t rows_in)
    : keys_(key_count), measures_(measure_count), dicts_(key_count), texts_(key_count), scratch_(key_count) {
    size_t capacity = 16;
    while (capacity < rows_in * 2)
      capacity *= 2;
    slots_.assign(capacity, 0);
    ids_.reserve(rows_in * keys_);
    sums_.reserve(rows_in * measures_);
  }

  void add(const batch_row& row) {
    uint64_t h = 0x9e3779b97f4a7c15ull;
    for (size_t c = 0; c < keys_; ++c) {
      std::string_view text = row.keys[c];
      auto [it, fresh] = dicts_[c].try_emplace(text, static_cast<uint32_t>(texts_[c].size()));
      if (fresh)
        texts_[c].push_back(text);
      scratch_[c] = it->second;
      h = (h ^ it->second) * 0x100000001b3ull;
      h ^= h >> 29;
    }
    const size_t mask = slots_.size() - 1;
    for (size_t at = static_cast<size_t>(h) & mask;; at = (at + 1) & mask) {
      uint32_t n = slots_[at];
      if (n == 0) {
        slots_[at] = static_cast<uint32_t>(rows_ + 1);
        ids_.insert(ids_.end(), scratch_.begin(), scratch_.end());
        sums_.insert(sums_.end(), row.values.begin(), row.values.end());
        ++rows_;
        return;
      }
      if (std::equal(scratch_.begin(), scratch_.end(), ids_.begin() + static_cast<std::ptrdiff_t>((n - 1) * keys_))) {
        __int128* sum = &sums_[(n - 1) * measures_];
        for (size_t m = 0; m < measures_; ++m)
          sum[m] += row.values[m];
        return;
      }
    }
  }

  /// The merged rows, sorted by their key texts.
  merged_table finish() {
    // Each structure is freed as soon as nothing needs it, so that the
    // output (the flush's largest allocation) never coexists with all of
    // them: the probe table and dictionaries now, the sums once copied out
    // in order, the key numbers once turned into texts.
    // (Assigning a new vector: `= {}` would clear and keep the capacity.)
    slots_ = std::vector<uint32_t>();
    dicts_ = std::vector<std::unordered_map<std::string_view, uint32_t>>();
    // rank[c][id]: the place of that text among the column's distinct
    // texts; texts_[c] is then put in that order, so texts_[c][rank] is it.
    std::vector<std::vector<uint32_t>> rank(keys_);
    for (size_t c = 0; c < keys_; ++c) {
      auto& texts = texts_[c];
      std::vector<uint32_t> order(texts.size());
      for (uint32_t i = 0; i < order.size(); ++i)
        order[i] = i;
      std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return texts[a] < texts[b]; });
      rank[c].resize(order.size());
      std::vector<std::string_view> sorted(order.size());
      for (uint32_t r = 0; r < order.size(); ++r) {
        rank[c][order[r]] = r;
        sorted[r] = texts[order[r]];
      }
      texts = std::move(sorted);
    }
    for (size_t i = 0; i < ids_.size(); ++i)
      ids_[i] = rank[i % keys_][ids_[i]];
    std::vector<uint32_t> order(rows_);
    for (uint32_t i = 0; i < rows_; ++i)
      order[i] = i;
    std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
      const uint32_t* x = &ids_[a * keys_];
      const uint32_t* y = &ids_[b * keys_];
      for (size_t c = 0; c < keys_; ++c)
        if (x[c] != y[c])
          return x[c] < y[c];
      return false;
    });
    merged_table out(keys_, measures_);
    out.values.resize(rows_ * measures_);
    for (size_t i = 0; i < rows_; ++i) {
      const __int128* sum = &sums_[order[i] * measures_];
      std::copy(sum, sum + measures_, out.values.begin() + static_cast<std::ptrdiff_t>(i * measures_));
    }
    sums_ = std::vector<__int128>();
    out.keys.resize(rows_ * keys_);
    for (size_t i = 0; i < rows_; ++i) {
      const uint32_t* key = &ids_[order[i] * keys_];
      for (size_t c = 0; c < keys_; ++c)
        out.keys[i * keys_ + c] = texts_[c][key[c]];
    }
    ids_ = std::vector<uint32_t>();
    return out;
  }

private:
  size_t keys_, measures_, rows_ = 0;
  std::vector<std::unordered_map<std::string_view, uint32_t>> dicts_;
  std::vector<std::vector<std::string_view>> texts_;  // per column, by number
  std::vector<uint32_t> slots_;  // merged row number + 1; 0 = empty
  std::vector<uint32_t> ids_;    // keys_ numbers per merged row
  std::vector<__int128> sums_;   // measures_ sums per merged row
  std::vector<uint32_t> scratch_;  // the row being added, as numbers
};

} // namespace

merged_tables merge_batches(const std::vector<const batch*>& batches) {
  const auto& specs = rollup_specs();
  merged_tables out(specs.size());
  std::vector<size_t> rows_in(specs.size());
  for (const batch* b : batches)
    for (const auto& t : b->tables)
      if (int s = spec_index(t.name); s >= 0)
        rows_in[static_cast<size_t>(s)] += t.rows.size();
  for (size_t s = 0; s < specs.size(); ++s) {
    out[s] = merged_table(specs[s].key_columns().size(), specs[s].measure_columns().size());
    if (rows_in[s] == 0)
      continue;
    table_merger merger(specs[s].key_columns().size(), specs[s].measure_columns().size(), rows_in[s]);
    for (const batch* b : batches)
      for (const auto& t : b->tables)
        if (spec_index(t.name) == static_cast<int>(s))  // others are excluded by check_batch_shape
          for (const auto& row : t.rows)
            merger.add(row);
    // One global lock order for every flush: table (spec order), then key.
    out[s] = merger.finish();
  }
  return out;
}

std::string format_nano_units(__int128 nanos) {
  bool negative = nanos < 0;
  unsigned __int128 u = negative ? -static_cast<unsigned __int128>(nanos) : static_cast<unsigned __int128>(nanos);
  std::string whole = i128_text(static_cast<__int128>(u / 1000000000u));
  std::string frac = std::to_string(static_cast<unsigned>(u % 1000000000u));
  return (negative ? "-" : "") + whole + "." + std::string(9 - frac.size(), '0') + frac;
}

std::string upsert_sql(const std::string& schema, const rollup_spec& spec) {
  auto keys = spec.key_columns();
  auto measures = spec.measure_columns();
  std::string cols, select, arrays, aliases;
  int param = 1;
  for (size_t i = 0; i < keys.size(); ++i) {
    std::string col = quote_identifier(keys[i]);
    std::string alias = "k" + std::to_string(i);
    const char* type = key_column_type(spec, i);
    cols += col + ", ";
    select += "u." + alias + (std::string(type) == "text" ? "" : std::string("::") + type) + ", ";
    arrays += (param > 1 ? ", $" : "$") + std::to_string(param) + "::text[]";
    ++param;
    aliases += alias + ", ";
  }
  for (size_t i = 0; i < measures.size(); ++i) {
    std::string col = quote_identifier(measures[i]);
    std::string alias = "m" + std::to_string(i);
    cols += col + ", ";
    select += "u." + alias + ", ";
    arrays += ", $" + std::to_string(param++) + "::"
              + (spec.measures[i] == measure::spend ? "numeric(38,9)" : "bigint") + "[]";
    aliases += alias + ", ";
  }
  // The arrays arrive sorted by key; ORDER BY ordinality keeps that order
  // (the lock order) without making Postgres sort again.
  return "INSERT INTO " + qualified_table(schema, spec.table) + " AS t (" + cols + "updated_at) SELECT " + select
         + "now() FROM unnest(" + arrays + ") WITH ORDINALITY AS u(" + aliases + "ord) ORDER BY u.ord"
         + on_conflict_add(spec);
}

std::vector<std::string> upsert_params(const rollup_spec& spec, const merged_table& rows) {
  size_t nkeys = spec.key_columns().size();
  std::vector<std::string> params;
  params.reserve(nkeys + spec.measures.size());
  std::vector<std::string> column;
  column.reserve(rows.size());
  for (size_t k = 0; k < nkeys; ++k) {
    column.clear();
    for (size_t r = 0; r < rows.size(); ++r)
      column.emplace_back(rows.key(r, k));
    params.push_back(pg_text_array(column));
  }
  for (size_t m = 0; m < spec.measures.size(); ++m) {
    column.clear();
    for (size_t r = 0; r < rows.size(); ++r)
      column.push_back(spec.measures[m] == measure::spend ? format_nano_units(rows.value(r, m))
                                                            : i128_text(rows.value(r, m)));
    params.push_back(pg_text_array(column));
  }
  return params;
}

result<pg_rows> upsert_rows(pg_client& pg, const std::string& schema, const rollup_spec& spec,
                            const std::vector<std::string>& params) {
  return pg.exec_prepared("tally_upsert_" + spec.table, upsert_sql(schema, spec), params);
}

namespace {

std::string stage_table(const rollup_spec& spec) {
  return "pg_temp." + quote_identifier("tally_stage_" + spec.table);
}

// COPY text format: backslash, tab, newline and carriage return are the
// only bytes with a meaning inside a field (ids are validated to hold no
// control characters; escaping anyway keeps a bad id from shifting columns).
void append_copy_text(std::string& out, std::string_view field) {
  for (char c : field) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '\t': out += "\\t"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      default: out.push_back(c);
    }
  }
}

} // namespace

std::string stage_table_ddl(const rollup_spec& spec) {
  auto keys = spec.key_columns();
  std::string sql = "CREATE TEMP TABLE IF NOT EXISTS " + stage_table(spec) + " (ord integer NOT NULL";
  for (size_t i = 0; i < keys.size(); ++i)
    sql += ", " + quote_identifier(keys[i]) + " " + key_column_type(spec, i) + " NOT NULL";
  for (measure m : spec.measures)
    sql += ", " + quote_identifier(to_string(m)) + " " + measure_column_type(m) + " NOT NULL";
  return sql + ") ON COMMIT DELETE ROWS";
}

std::string stage_copy_data(const rollup_spec& spec, const merged_table& rows) {
  std::string out;
  size_t estimate = 0;
  const size_t sample = std::min<size_t>(rows.size(), 16);
  for (size_t i = 0; i < sample * rows.key_count; ++i)
    estimate += rows.keys[i].size() + 1;
  out.reserve(rows.size() * (estimate / std::max<size_t>(1, sample) + 16 + 12 * spec.measures.size()));
  for (size_t r = 0; r < rows.size(); ++r) {
    out += std::to_string(r);
    for (size_t k = 0; k < rows.key_count; ++k) {
      out.push_back('\t');
      append_copy_text(out, rows.key(r, k));
    }
    for (size_t m = 0; m < spec.measures.size(); ++m) {
      out.push_back('\t');
      out += spec.measures[m] == measure::spend ? format_nano_units(rows.value(r, m)) : i128_text(rows.value(r, m));
    }
    out.push_back('\n');
  }
  return out;
}

std::string staged_upsert_sql(const std::string& schema, const rollup_spec& spec) {
  const std::string cols = column_list(spec, "");
  // ORDER BY ord: the key order of the merge, so the lock order; Postgres
  // would otherwise be free to read the staging table in any order.
  return "INSERT INTO " + qualified_table(schema, spec.table) + " AS t (" + cols + ", updated_at) SELECT " + cols
         + ", now() FROM " + stage_table(spec) + " ORDER BY ord" + on_conflict_add(spec);
}

result<pg_rows> stage_rows(pg_client& pg, const rollup_spec& spec, const std::string& copy_data) {
  return pg.copy_in("COPY " + stage_table(spec) + " FROM STDIN", copy_data);
}

result<pg_rows> upsert_staged(pg_client& pg, const std::string& schema, const rollup_spec& spec) {
  return pg.exec(staged_upsert_sql(schema, spec));
}

std::string defer_locked_sql(const std::string& schema, const rollup_spec& spec) {
  const std::string table = qualified_table(schema, spec.table);
  // SKIP LOCKED never waits: the rows it returns are locked by this
  // transaction now; an existing row it skipped is held by someone else,
  // and its staged increment moves to the deferred table instead. Rows that
  // do not exist yet stay staged for the upsert to insert.
  return "WITH locked AS MATERIALIZED (SELECT s.ord FROM " + stage_table(spec) + " s JOIN " + table + " t ON "
         + key_match(spec, "t", "s") + " FOR UPDATE OF t SKIP LOCKED), moved AS (DELETE FROM " + stage_table(spec)
         + " s USING " + table + " t WHERE " + key_match(spec, "t", "s")
         + " AND s.ord NOT IN (SELECT ord FROM locked) RETURNING " + column_list(spec, "s.") + ") INSERT INTO "
         + qualified_table(schema, spec.table + "_deferred") + " (" + column_list(spec, "") + ") SELECT "
         + column_list(spec, "") + " FROM moved";
}

std::string apply_deferred_sql(const std::string& schema, const rollup_spec& spec) {
  const std::string deferred = qualified_table(schema, spec.table + "_deferred");
  return "WITH d AS (DELETE FROM " + deferred + " WHERE id = (SELECT id FROM " + deferred
         + " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING " + column_list(spec, "") + ") INSERT INTO "
         + qualified_table(schema, spec.table) + " AS t (" + column_list(spec, "") + ", updated_at) SELECT "
         + column_list(spec, "") + ", now() FROM d" + on_conflict_add(spec) + " RETURNING 1";
}

std::string apply_free_deferred_sql(const std::string& schema, const rollup_spec& spec) {
  const std::string deferred = qualified_table(schema, spec.table + "_deferred");
  const std::string table = qualified_table(schema, spec.table);
  return "WITH p AS MATERIALIZED (SELECT d.id FROM " + deferred + " d JOIN " + table + " t ON "
         + key_match(spec, "t", "d") + " ORDER BY d.id LIMIT 1 FOR UPDATE OF d, t SKIP LOCKED), x AS (DELETE FROM "
         + deferred + " d USING p WHERE d.id = p.id RETURNING " + column_list(spec, "d.") + ") UPDATE " + table
         + " AS t SET " + add_measures(spec, "x") + " FROM x WHERE " + key_match(spec, "t", "x") + " RETURNING 1";
}

result<deferred_applied> apply_deferred(pg_client& pg, const std::string& schema, long limit,
                                        std::chrono::milliseconds lock_timeout) {
  const auto& spec = rollup_specs().front();
  // One increment per transaction: it holds the lock of its deferred row
  // (which no other writer touches) and at most one rollup row, so it can
  // wait behind a foreign transaction but never be part of a lock cycle.
  const std::string free_sql = apply_free_deferred_sql(schema, spec);
  const std::string wait_sql = "SELECT set_config('lock_timeout', '" + std::to_string(lock_timeout.count())
                               + "', true); " + apply_deferred_sql(schema, spec);
  deferred_applied out;
  bool free_left = true;
  while (out.applied < limit) {
    // What is left once no free row is: rows others hold (wait for the
    // oldest), or an increment whose row is gone (the upsert inserts it).
    auto r = pg.exec(free_left ? free_sql : wait_sql);
    if (!r) {
      if (!free_left && r.error().sqlstate == "55P03") {
        out.held = true;
        break;
      }
      return with_context(r.error(), "apply deferred increments");
    }
    if (!r->rows.empty()) {
      ++out.applied;
      free_left = true;  // the wait may have freed the rows behind it
    } else if (free_left) {
      free_left = false;
    } else {
      break;
    }
  }
  return out;
}

result<deferred_backlog> read_deferred_backlog(pg_client& pg, const std::string& schema) {
  const auto& spec = rollup_specs().front();
  auto r = pg.exec("SELECT count(*), coalesce(floor(extract(epoch FROM now() - min(deferred_at))), 0)::bigint FROM "
                   + qualified_table(schema, spec.table + "_deferred"));
  if (!r)
    return with_context(r.error(), "read the deferred backlog");
  deferred_backlog out;
  if (r->rows.size() == 1 && r->rows[0].size() == 2) {
    out.rows = std::strtoull(r->rows[0][0].c_str(), nullptr, 10);
    const long long age = std::strtoll(r->rows[0][1].c_str(), nullptr, 10);
    out.oldest_seconds = age > 0 ? static_cast<uint64_t>(age) : 0;  // clocks: never negative
  }
  return out;
}

result<flush_outcome> flush_batches(pg_client& pg, const flush_settings& st,
                                    const std::vector<const batch*>& batches,
                                    const std::function<bool()>& still_leader) {
  flush_outcome out;
  auto rollback = [&] { (void)pg.exec("ROLLBACK"); };
  if (!still_leader()) {
    out.what = flush_outcome::kind::lease_lost;
    return out;
  }
  const std::string applied_table = qualified_table(st.schema, "tally_applied_batches");
  using clock = std::chrono::steady_clock;
  auto started = clock::now();
  auto elapsed = [](clock::time_point since) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - since);
  };

  // Outside the transaction: which ids are new, their merged rows, and the
  // statement parameters.
  std::vector<std::string> ids;
  ids.reserve(batches.size());
  for (const batch* b : batches)
    ids.push_back(b->id);
  auto known = pg.exec_params("SELECT batch_id FROM " + applied_table + " WHERE batch_id = ANY($1::text[])",
                              {pg_text_array(ids)});
  if (!known)
    return with_context(known.error(), "look up batch ids");
  std::unordered_map<std::string, bool> applied_before;
  for (const auto& row : known->rows)
    applied_before[row[0]] = true;
  std::vector<const batch*> apply;
  std::vector<std::string> new_ids;
  for (const batch* b : batches)
    if (applied_before.count(b->id) == 0) {
      apply.push_back(b);
      new_ids.push_back(b->id);
    }
  out.batches_new = apply.size();
  out.batches_duplicate = batches.size() - apply.size();
  const auto& specs = rollup_specs();
  std::vector<std::string> copy_data(specs.size());
  std::string stage_ddl;
  {
    auto merged = merge_batches(apply);
    for (size_t s = 0; s < specs.size(); ++s) {
      if (merged[s].empty())
        continue;
      copy_data[s] = stage_copy_data(specs[s], merged[s]);
      stage_ddl += "; " + stage_table_ddl(specs[s]);
      out.rows += merged[s].size();
      out.tables.push_back({specs[s].table, merged[s].size()});
    }
  }
  out.prepare_time = elapsed(started);
  if (apply.empty())
    return out;  // everything was applied before: nothing to commit
  auto transaction_started = clock::now();

  stoppoint("flush_before_begin");
  // lock_timeout stays below deadlock_timeout (see the header); the server's
  // value is read in the same round trip.
  std::string begin =
    st.deadlock_priority
      ? "BEGIN; SET LOCAL deadlock_timeout = " + std::to_string(priority_deadlock_timeout(st).count())
          + "; SET LOCAL lock_timeout = " + std::to_string(st.lock_timeout.count()) + ";"
      : "BEGIN; SELECT set_config('lock_timeout', GREATEST(1, LEAST(" + std::to_string(st.lock_timeout.count())
          + ", (SELECT setting::bigint FROM pg_settings WHERE name = 'deadlock_timeout') * 4 / 5))::text, true);";
  begin += " SET LOCAL statement_timeout = " + std::to_string(st.statement_timeout.count())
           + "; SET LOCAL idle_in_transaction_session_timeout = "
           + std::to_string(st.idle_in_transaction_timeout.count()) + stage_ddl;
  if (auto r = pg.exec(begin); !r) {
    rollback();
    return with_context(r.error(), "begin");
  }
  auto epoch = pg.exec_params("SELECT epoch FROM " + qualified_table(st.schema, "tally_lease")
                                + " WHERE namespace = $1 FOR UPDATE",
                              {st.ns});
  if (!epoch) {
    rollback();
    return with_context(epoch.error(), "epoch check");
  }
  out.database_epoch = epoch->rows.empty() ? 0 : std::stoull(epoch->rows[0][0]);
  if (out.database_epoch != st.epoch) {
    rollback();
    out.what = flush_outcome::kind::fenced;
    return out;
  }
  auto fresh = pg.exec_params("INSERT INTO " + applied_table
                                + " (batch_id, epoch, leader) SELECT b, $2, $3 FROM unnest($1::text[]) AS b"
                                  " ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id",
                              {pg_text_array(new_ids), std::to_string(st.epoch), st.leader});
  if (!fresh) {
    rollback();
    return with_context(fresh.error(), "record batch ids");
  }
  if (fresh->rows.size() != new_ids.size()) {
    rollback();
    return error_info{static_cast<int>(pg_errc::query_failed),
                      "record batch ids: " + std::to_string(new_ids.size() - fresh->rows.size())
                        + " were applied meanwhile; rolled back to merge again",
                      "40001"};
  }
  // Tables in reverse rollups order: any fixed order keeps flushes from
  // deadlocking each other, and this one puts the entity totals (the hot
  // rows gateways also update directly) last, so their row locks are held
  // only from their own upsert to COMMIT, not while the big tables upsert.
  for (size_t s = specs.size(); s-- > 0;) {
    if (copy_data[s].empty())
      continue;
    // Staging takes no lock on shared rows, so it stays outside the
    // savepoint: a lock-timeout retry redoes only the upsert.
    if (auto staged = stage_rows(pg, specs[s], copy_data[s]); !staged) {
      rollback();
      return with_context(staged.error(), "stage " + specs[s].table);
    }
    // Each upsert runs under a savepoint with a short lock_timeout that
    // grows per attempt (capped as above). A foreign writer locking rows in
    // random order can trap a waiting flush in a lock cycle; rolling back
    // to the savepoint releases the rows this statement locked, the foreign
    // transaction finishes, and the upsert tries again at once, instead of
    // the whole flush failing after the full lock_timeout and being redone.
    std::mt19937 rng(std::random_device{}());
    result<pg_rows> r = error_info{};
    for (int attempt = 0;; ++attempt) {
      // Short waits first: inside a lock cycle waiting longer never helps,
      // and a short wait frees the foreign writer sooner.
      long long wait_ms = std::min<long long>(st.lock_timeout.count(), 25LL * (1 + attempt / 10));
      auto sp = pg.exec(st.deadlock_priority
                          ? std::string("SAVEPOINT tally_upsert")  // waits win every cycle: full lock_timeout
                          : "SAVEPOINT tally_upsert; SELECT set_config('lock_timeout', GREATEST(1, LEAST("
                              + std::to_string(wait_ms)
                              + ", (SELECT setting::bigint FROM pg_settings WHERE name = 'deadlock_timeout') * 4 / 5))"
                                "::text, true)");
      if (!sp) {
        rollback();
        return with_context(sp.error(), "savepoint");
      }
      r = upsert_staged(pg, st.schema, specs[s]);
      if (r || r.error().sqlstate != "55P03" || attempt + 1 >= upsert_lock_attempts || !still_leader())
        break;
      if (auto back = pg.exec("ROLLBACK TO SAVEPOINT tally_upsert"); !back) {
        rollback();
        return with_context(back.error(), "rollback to savepoint");
      }
      ++out.lock_retries;
      // The entity totals are the rows writers outside tally update too. A
      // flush that may not win lock cycles (no deadlock priority) stops
      // waiting for them: what it cannot lock now waits, committed, in the
      // deferred table (apply_deferred adds it afterwards). Only after a
      // lock timeout: uncontended flushes skip the extra pass.
      if (s == 0 && !st.deadlock_priority) {
        auto moved = pg.exec(defer_locked_sql(st.schema, specs[s]));
        if (!moved) {
          rollback();
          return with_context(moved.error(), "defer locked " + specs[s].table + " rows");
        }
        out.deferred += static_cast<size_t>(moved->affected);
        continue;  // at once: nothing it still needs is held by anyone else
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1 + rng() % 10));
    }
    if (!r) {
      rollback();
      return with_context(r.error(), "upsert " + specs[s].table);
    }
  }
  if (!still_leader()) {
    rollback();
    out.what = flush_outcome::kind::lease_lost;
    return out;
  }
  TALLY_FAILPOINT("flush_before_commit");
  stoppoint("flush_before_commit");
  if (auto r = pg.exec("COMMIT"); !r) {
    rollback();
    return with_context(r.error(), "commit");
  }
  out.transaction_time = elapsed(transaction_started);
  return out;
}

result<bool> can_take_deadlock_priority(pg_client& pg) {
  auto version = pg.exec("SELECT current_setting('server_version_num')::int");
  if (!version)
    return with_context(version.error(), "server version");
  bool pg15 = std::stoi(version->rows.at(0).at(0)) >= 150000;
  auto r = pg.exec(pg15 ? "SELECT has_parameter_privilege('deadlock_timeout', 'SET')"
                        : "SELECT rolsuper FROM pg_roles WHERE rolname = current_user");
  if (!r)
    return with_context(r.error(), "deadlock_timeout privilege");
  return !r->rows.empty() && r->rows[0][0] == "t";
}

result<uint64_t> take_epoch(pg_client& pg, const std::string& schema, const std::string& ns,
                            const std::string& holder, std::chrono::milliseconds lock_timeout) {
  if (auto r = pg.exec("BEGIN; SET LOCAL lock_timeout = " + std::to_string(lock_timeout.count())); !r) {
    (void)pg.exec("ROLLBACK");
    return with_context(r.error(), "epoch begin");
  }
  auto epoch = pg.exec_params("INSERT INTO " + qualified_table(schema, "tally_lease")
                                + " AS l (namespace, epoch, holder, updated_at) VALUES ($1, 1, $2, now())"
                                  " ON CONFLICT (namespace) DO UPDATE SET epoch = l.epoch + 1,"
                                  " holder = EXCLUDED.holder, updated_at = now() RETURNING epoch",
                              {ns, holder});
  if (!epoch || epoch->rows.empty()) {
    (void)pg.exec("ROLLBACK");
    if (!epoch)
      return with_context(epoch.error(), "epoch increment");
    return error_info{static_cast<int>(pg_errc::query_failed), "epoch increment returned no row", {}};
  }
  if (auto r = pg.exec("COMMIT"); !r) {
    (void)pg.exec("ROLLBACK");
    return with_context(r.error(), "epoch commit");
  }
  return static_cast<uint64_t>(std::stoull(epoch->rows[0][0]));
}

result<long> prune_applied_batches(pg_client& pg, const std::string& schema, std::chrono::hours retention,
                                   long limit, std::chrono::milliseconds statement_timeout) {
  const std::string table = qualified_table(schema, "tally_applied_batches");
  if (auto r = pg.exec("BEGIN; SET LOCAL statement_timeout = " + std::to_string(statement_timeout.count())
                       + "; SET LOCAL lock_timeout = " + std::to_string(statement_timeout.count()));
      !r) {
    (void)pg.exec("ROLLBACK");
    return with_context(r.error(), "prune applied batches");
  }
  // The applied_at index finds the oldest ids without scanning the table.
  auto r = pg.exec_params("DELETE FROM " + table + " WHERE batch_id IN (SELECT batch_id FROM " + table
                            + " WHERE applied_at < now() - make_interval(hours => $1::int)"
                              " ORDER BY applied_at LIMIT $2::bigint FOR UPDATE SKIP LOCKED)",
                          {std::to_string(retention.count()), std::to_string(limit)});
  if (!r) {
    (void)pg.exec("ROLLBACK");
    return with_context(r.error(), "prune applied batches");
  }
  if (auto c = pg.exec("COMMIT"); !c) {
    (void)pg.exec("ROLLBACK");
    return with_context(c.error(), "prune applied batches");
  }
  return r->affected;
}

} // namespace tally::adapters
