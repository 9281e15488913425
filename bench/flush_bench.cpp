// bench/flush_bench.cpp — stage 2's contention paths against a real postgres.
//
//  * BM_Upsert/<strategy>/<rows>: one flush's upsert of `rows` merged
//    tally_daily rows (half of them hitting existing rows), in one
//    transaction that is rolled back so every iteration sees the same table.
//    strategy 0 = one INSERT over unnest() of arrays (tally's earlier apply),
//    1 = multi-row VALUES in statements of 1000 rows (the usual alternative),
//    2 = COPY into a temporary staging table, then one INSERT ... SELECT
//    ORDER BY ord (what tally uses: adapters/flush_sql.hpp). Each includes
//    building its parameters or COPY data from the merged rows.
//  * BM_Merge/<impl>: the flusher's merge of decoded batches into one
//    sorted row set per table (adapters::merge_batches), on 33 batches of
//    3,000 generated events each (about 300,000 rows before merging, as one
//    full flush chunk of the three-instance flush test). impl 0 = the merge
//    before (a joined key string per row, every row copied), 1 = tally's.
//    Counter peak_MB: the heap the merge added at its peak (operator new
//    is counted in this binary).
//  * BM_Decode, BM_CopyData: the steps around it on the same batches:
//    decoding them from their stage-1 bytes, and the COPY text of the
//    merged rows.
//  * BM_FlushWhilePruning/<prune>: latency of small flushes (flush_batches,
//    100 tally_spend rows each) with prune=1 while the pruner's bounded
//    batches (same size and pacing as actors/pruner) delete 1,000,000
//    expired applied batch ids on another connection, prune=0 without. Counters p50_ms, p99_ms.
//  * BM_DirectWriters: the problem itself. 16 threads, each event one
//    transaction of `UPDATE tally_spend SET spend = spend + x` on 4 of 100
//    hot rows in random order, as gateways do. Counters: events/s, deadlocks.
//  * BM_ThroughTally: the same event count through an embedded tally runtime
//    (16 recording threads, Redis stage 1, flush to Postgres) until Postgres
//    holds every event. Counters: events/s, deadlocks (always 0 by design).
//
// Servers are started once per process (tests/harness). Run:
//   build/bench/flush_bench --benchmark_min_time=1
// Results and commands are recorded in bench/README.md.
#include "adapters/flush_sql.hpp"
#include "adapters/pg_client.hpp"
#include "adapters/pg_schema.hpp"
#include "tally/tally.hpp"
#include "tests/harness/servers.hpp"
#include "tests/support/workload.hpp"

#include <benchmark/benchmark.h>
#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <deque>
#include <memory>
#include <random>
#include <thread>
#include <unordered_map>

using namespace tally;
using namespace std::chrono_literals;

// Heap bytes live and their peak, counted by the operator new below so that
// BM_Merge can report the merge's own peak (a process-wide figure such as
// heaptrack's is the generated batches').
namespace heap_watch {
std::atomic<long long> live{0}, peak{0};
void note(long long delta) noexcept {
  long long now = live.fetch_add(delta, std::memory_order_relaxed) + delta;
  long long seen = peak.load(std::memory_order_relaxed);
  while (now > seen && !peak.compare_exchange_weak(seen, now, std::memory_order_relaxed)) {
  }
}
} // namespace heap_watch

void* operator new(std::size_t n) {
  void* p = std::malloc(n ? n : 1);
  if (!p)
    throw std::bad_alloc();
  heap_watch::note(static_cast<long long>(malloc_usable_size(p)));
  return p;
}
void operator delete(void* p) noexcept {
  if (!p)
    return;
  heap_watch::note(-static_cast<long long>(malloc_usable_size(p)));
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  operator delete(p);
}

namespace {

struct servers {
  testing::redis_server redis;
  testing::postgres_server pg;
  servers() {
    auto c = adapters::pg_client::connect(pg.url(), 5000ms);
    if (!c || !adapters::migrate_schema(*c, "public"))
      throw std::runtime_error("bench: cannot migrate");
  }
};

servers& env() {
  static servers s;
  return s;
}

/// Made-up merged rows and the texts their views point into.
struct owned_rows {
  owned_rows(size_t key_count, size_t measure_count) : table(key_count, measure_count) {}
  owned_rows(const owned_rows&) = delete;  // the views would point into the original
  owned_rows(owned_rows&&) = default;      // a deque's elements stay where they are

  /// Sorts `rows` by key (the flusher's order) and keeps them.
  void assign(std::vector<std::pair<std::vector<std::string>, std::vector<__int128>>> rows) {
    std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    std::vector<std::string_view> views;
    for (const auto& [keys, values] : rows) {
      views.clear();
      for (const auto& k : keys)
        views.push_back(texts.emplace_back(k));
      table.add(views.data(), values.data());
    }
  }
  /// The first `n` rows, as their own table (views into these texts).
  adapters::merged_table head(size_t n) const {
    adapters::merged_table out(table.key_count, table.measure_count);
    out.keys.assign(table.keys.begin(), table.keys.begin() + static_cast<std::ptrdiff_t>(n * table.key_count));
    out.values.assign(table.values.begin(),
                      table.values.begin() + static_cast<std::ptrdiff_t>(n * table.measure_count));
    return out;
  }

  std::deque<std::string> texts;
  adapters::merged_table table;
};

owned_rows daily_rows(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::pair<std::vector<std::string>, std::vector<__int128>>> rows;
  rows.reserve(n);
  for (size_t i = 0; i < n; ++i)
    rows.push_back({{"2026-11-22", "user", "user-" + std::to_string(rng() % 1000), "key-" + std::to_string(i),
                     "gpt-4o", "openai", "/v1/chat/completions"},
                    {static_cast<__int128>(rng() % 100000000), 10, 20, 0, 0, 1, 1, 0}});
  const auto& spec = rollup_specs()[1];
  owned_rows out(spec.key_columns().size(), spec.measure_columns().size());
  out.assign(std::move(rows));
  return out;
}

std::string values_sql(const rollup_spec& spec, size_t rows) {
  auto keys = spec.key_columns();
  auto measures = spec.measure_columns();
  size_t width = keys.size() + measures.size();
  std::string cols, updates;
  for (auto& k : keys)
    cols += k + ", ";
  for (auto& m : measures) {
    cols += m + ", ";
    updates += m + " = t." + m + " + EXCLUDED." + m + ", ";
  }
  std::string sql = "INSERT INTO tally_daily AS t (" + cols + "updated_at) VALUES ";
  for (size_t r = 0; r < rows; ++r) {
    sql += r ? ", (" : "(";
    for (size_t c = 0; c < width; ++c) {
      std::string p = "$" + std::to_string(r * width + c + 1);
      sql += p + (c == 0 ? "::date" : c >= keys.size() ? (c == keys.size() ? "::numeric" : "::bigint") : "") + ", ";
    }
    sql += "now())";
  }
  std::string conflict;
  for (size_t i = 0; i < keys.size(); ++i)
    conflict += (i ? ", " : "") + keys[i];
  return sql + " ON CONFLICT (" + conflict + ") DO UPDATE SET " + updates + "updated_at = now()";
}

void BM_Upsert(benchmark::State& state) {
  const int strategy = static_cast<int>(state.range(0));
  const size_t n = static_cast<size_t>(state.range(1));
  auto conn = adapters::pg_client::connect(env().pg.url(), 5000ms);
  const auto& spec = rollup_specs()[1];
  auto rows = daily_rows(n, 1);
  // Half the rows exist already, so the upsert updates and inserts.
  {
    (void)conn->exec("TRUNCATE tally_daily");
    (void)adapters::upsert_rows(*conn, "public", spec, adapters::upsert_params(spec, rows.head(n / 2)));
  }
  // The staging table lives as long as the session (as in the flusher, which
  // creates it once; later transactions find it).
  if (strategy == 2)
    (void)conn->exec(adapters::stage_table_ddl(spec));
  for (auto _ : state) {
    (void)conn->exec(strategy == 2 ? "BEGIN; " + adapters::stage_table_ddl(spec) : std::string("BEGIN"));
    if (strategy == 2) {
      auto staged = adapters::stage_rows(*conn, spec, adapters::stage_copy_data(spec, rows.table));
      auto r = staged ? adapters::upsert_staged(*conn, "public", spec) : staged;
      if (!r)
        state.SkipWithError(r.error().message.c_str());
      else if (r->affected != static_cast<long>(n))
        state.SkipWithError("the staged upsert did not touch every row");
    } else if (strategy == 0) {
      auto r = adapters::upsert_rows(*conn, "public", spec, adapters::upsert_params(spec, rows.table));
      if (!r)
        state.SkipWithError(r.error().message.c_str());
    } else {
      constexpr size_t per_statement = 1000;
      const auto& t = rows.table;
      for (size_t at = 0; at < t.size(); at += per_statement) {
        size_t count = std::min(per_statement, t.size() - at);
        std::vector<std::string> params;
        for (size_t r = at; r < at + count; ++r) {
          for (size_t k = 0; k < t.key_count; ++k)
            params.emplace_back(t.key(r, k));
          for (size_t m = 0; m < t.measure_count; ++m)
            params.push_back(m == 0 ? adapters::format_nano_units(t.value(r, m))
                                    : std::to_string(static_cast<long long>(t.value(r, m))));
        }
        auto res = conn->exec_params(values_sql(spec, count), params);
        if (!res)
          state.SkipWithError(res.error().message.c_str());
      }
    }
    (void)conn->exec("ROLLBACK");
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * n));
}
BENCHMARK(BM_Upsert)->ArgsProduct({{0, 1, 2}, {1000, 20000}})->Unit(benchmark::kMillisecond)->UseRealTime();

// Batches as the writer builds them: `count` batches of `events` generated
// events each, every one rolled up on its own (so rows repeat across
// batches, as they do across instances and intervals).
std::vector<adapters::batch> generated_batches(size_t count, uint64_t events) {
  std::vector<adapters::batch> out;
  for (size_t b = 0; b < count; ++b) {
    testing::rollup_rows rows;
    for (uint64_t i = b * events; i < (b + 1) * events; ++i)
      testing::add_reference(rows, testing::generate(7, i));
    adapters::batch batch;
    batch.id = "bench:" + std::to_string(b);
    for (const auto& spec : rollup_specs()) {
      adapters::batch_table t;
      t.name = spec.table;
      t.key_columns = spec.key_columns();
      t.measure_columns = spec.measure_columns();
      for (const auto& [keys, values] : rows[spec.table])
        t.rows.push_back({keys, values});
      batch.tables.push_back(std::move(t));
    }
    out.push_back(std::move(batch));
  }
  return out;
}

// The merge as it was: a joined key string per row, each first row copied.
struct row_before {
  std::vector<std::string> keys;
  std::vector<__int128> values;
};
std::vector<std::vector<row_before>> merge_before(const std::vector<const adapters::batch*>& batches) {
  const auto& specs = rollup_specs();
  std::vector<std::vector<row_before>> out(specs.size());
  std::vector<std::unordered_map<std::string, size_t>> index(specs.size());
  for (const auto* b : batches)
    for (const auto& t : b->tables) {
      size_t s = 0;
      while (s < specs.size() && specs[s].table != t.name)
        ++s;
      auto& rows = out[s];
      for (const auto& row : t.rows) {
        std::string joined;
        for (const auto& k : row.keys) {
          joined += k;
          joined.push_back('\x01');
        }
        auto [it, fresh] = index[s].try_emplace(std::move(joined), rows.size());
        if (fresh) {
          rows.push_back({row.keys, row.values});
        } else {
          auto& sum = rows[it->second].values;
          for (size_t m = 0; m < sum.size(); ++m)
            sum[m] += row.values[m];
        }
      }
    }
  for (auto& rows : out)
    std::sort(rows.begin(), rows.end(), [](const row_before& a, const row_before& b) { return a.keys < b.keys; });
  return out;
}

void BM_Merge(benchmark::State& state) {
  const bool now = state.range(0) == 1;
  static const auto batches = generated_batches(33, 3000);
  std::vector<const adapters::batch*> ptrs;
  size_t in = 0;
  for (const auto& b : batches) {
    ptrs.push_back(&b);
    in += b.row_count();
  }
  size_t merged = 0;
  auto count = [&](const auto& out) {
    merged = 0;
    for (const auto& rows : out)
      merged += rows.size();
  };
  long long peak = 0;
  for (auto _ : state) {
    const long long before = heap_watch::live.load();
    heap_watch::peak.store(before);
    if (now) {
      auto out = adapters::merge_batches(ptrs);
      count(out);
      benchmark::DoNotOptimize(out);
    } else {
      auto out = merge_before(ptrs);
      count(out);
      benchmark::DoNotOptimize(out);
    }
    peak = std::max(peak, heap_watch::peak.load() - before);
  }
  state.counters["rows_in"] = static_cast<double>(in);
  state.counters["peak_MB"] = static_cast<double>(peak) / 1e6;  // above the batches, the result included
  state.counters["rows_out"] = static_cast<double>(merged);
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * in));
}
BENCHMARK(BM_Merge)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();

// Decoding the same batches from their stage-1 bytes (the flusher's step
// before the merge).
void BM_Decode(benchmark::State& state) {
  static const auto batches = generated_batches(33, 3000);
  std::vector<std::string> encoded;
  size_t rows = 0, bytes = 0;
  for (const auto& b : batches) {
    encoded.push_back(adapters::encode_batch(b));
    rows += b.row_count();
    bytes += encoded.back().size();
  }
  for (auto _ : state)
    for (const auto& e : encoded) {
      auto b = adapters::decode_batch(e, adapters::check_table_shape);
      if (!b)
        state.SkipWithError("decode failed");
      benchmark::DoNotOptimize(b);
    }
  state.counters["bytes"] = static_cast<double>(bytes);
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * rows));
}
BENCHMARK(BM_Decode)->Unit(benchmark::kMillisecond)->UseRealTime();

// The COPY text of the same merged rows (the rest of a flush's preparation).
void BM_CopyData(benchmark::State& state) {
  static const auto batches = generated_batches(33, 3000);
  std::vector<const adapters::batch*> ptrs;
  for (const auto& b : batches)
    ptrs.push_back(&b);
  const auto merged = adapters::merge_batches(ptrs);
  size_t rows = 0, bytes = 0;
  for (auto _ : state) {
    rows = bytes = 0;
    for (size_t s = 0; s < merged.size(); ++s) {
      auto data = adapters::stage_copy_data(rollup_specs()[s], merged[s]);
      bytes += data.size();
      rows += merged[s].size();
      benchmark::DoNotOptimize(data);
    }
  }
  state.counters["bytes"] = static_cast<double>(bytes);
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * rows));
}
BENCHMARK(BM_CopyData)->Unit(benchmark::kMillisecond)->UseRealTime();

// The apply as it runs day after day: the same 20,000 tally_daily rows
// flushed again and again (one committed transaction per iteration, after
// a first flush that inserted them), so nearly every row is an update.
// /0 is the apply before the COPY work: unnest arrays into a table with
// Postgres' default fillfactor 100. /1 is the apply now: COPY-staged into
// the migrated table (rollup_fillfactor), where updates can be HOT.
void BM_ApplySteady(benchmark::State& state) {
  const bool now = state.range(0) == 1;
  const size_t n = 20000;
  auto conn = adapters::pg_client::connect(env().pg.url(), 5000ms);
  const auto& spec = rollup_specs()[1];
  const std::string schema = now ? "public" : "before_fillfactor";
  if (!now) {
    (void)conn->exec("CREATE SCHEMA IF NOT EXISTS before_fillfactor");
    (void)conn->exec(adapters::rollup_table_ddl(schema, spec));
  }
  (void)conn->exec("TRUNCATE " + adapters::qualified_table(schema, spec.table));
  auto rows = daily_rows(n, 1);
  const std::string data = adapters::stage_copy_data(spec, rows.table);
  auto params = adapters::upsert_params(spec, rows.table);
  auto apply = [&]() -> bool {
    if (!conn->exec(now ? "BEGIN; " + adapters::stage_table_ddl(spec) : std::string("BEGIN")))
      return false;
    auto r = now ? adapters::stage_rows(*conn, spec, data) : adapters::upsert_rows(*conn, schema, spec, params);
    if (r && now)
      r = adapters::upsert_staged(*conn, schema, spec);
    if (!r || r->affected != static_cast<long>(n)) {
      (void)conn->exec("ROLLBACK");
      return false;
    }
    return conn->exec("COMMIT").ok();
  };
  if (!apply()) {
    state.SkipWithError("the first apply failed");
    return;
  }
  for (auto _ : state)
    if (!apply())
      state.SkipWithError("an apply failed");
  // Share of this table's updates Postgres made HOT (its statistics lag by
  // up to a second, so this is approximate).
  auto hot = conn->exec("SELECT n_tup_hot_upd::float8 / greatest(n_tup_upd, 1) FROM pg_stat_user_tables WHERE relid = '"
                        + adapters::qualified_table(schema, spec.table) + "'::regclass");
  if (hot && !hot->rows.empty())
    state.counters["hot_share"] = std::atof(hot->rows[0][0].c_str());
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * n));
}
BENCHMARK(BM_ApplySteady)->Arg(0)->Arg(1)->Iterations(8)->Unit(benchmark::kMillisecond)->UseRealTime();

// What a flush without deadlock priority pays for never waiting on a row a
// foreign writer holds: the SKIP LOCKED pass over the staged entity totals
// (arg 1) beside the same staged upsert without it (arg 0). Every row
// exists, so the pass joins and locks all of them: its worst case.
void BM_DeferPass(benchmark::State& state) {
  const bool defer = state.range(0) == 1;
  const size_t n = static_cast<size_t>(state.range(1));
  auto conn = adapters::pg_client::connect(env().pg.url(), 5000ms);
  const auto& spec = rollup_specs()[0];
  std::vector<std::pair<std::vector<std::string>, std::vector<__int128>>> made;
  for (size_t i = 0; i < n; ++i)
    made.push_back({{"key", "", "entity-" + std::to_string(i)}, {42000, 10, 20, 0, 0, 1, 1, 0}});
  owned_rows rows(spec.key_columns().size(), spec.measure_columns().size());
  rows.assign(std::move(made));
  (void)conn->exec("TRUNCATE tally_spend, tally_spend_deferred");
  (void)adapters::upsert_rows(*conn, "public", spec, adapters::upsert_params(spec, rows.table));
  const std::string data = adapters::stage_copy_data(spec, rows.table);
  for (auto _ : state) {
    (void)conn->exec("BEGIN; " + adapters::stage_table_ddl(spec));
    auto r = adapters::stage_rows(*conn, spec, data);
    if (r && defer)
      r = conn->exec(adapters::defer_locked_sql("public", spec));
    if (r)
      r = adapters::upsert_staged(*conn, "public", spec);
    if (!r)
      state.SkipWithError(r.error().message.c_str());
    else if (r->affected != static_cast<long>(n))
      state.SkipWithError("the staged upsert did not touch every row");
    (void)conn->exec("ROLLBACK");
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * n));
}
BENCHMARK(BM_DeferPass)->ArgsProduct({{0, 1}, {20000}})->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_FlushWhilePruning(benchmark::State& state) {
  const bool prune = state.range(0) != 0;
  auto conn = adapters::pg_client::connect(env().pg.url(), 5000ms);
  const std::string ns = prune ? "prune1" : "prune0";
  auto epoch = adapters::take_epoch(*conn, "public", ns, "bench", 5000ms);
  if (!epoch) {
    state.SkipWithError(epoch.error().message.c_str());
    return;
  }
  // The CTest smoke entry only checks that this runs.
  const long expired_ids = std::getenv("TALLY_BENCH_SMOKE") != nullptr ? 10'000 : 1'000'000;
  if (prune)
    (void)conn->exec("INSERT INTO tally_applied_batches (batch_id, epoch, applied_at) SELECT 'expired:' || g, 0, "
                     "now() - interval '30 days' FROM generate_series(1, " + std::to_string(expired_ids) + ") g");
  std::atomic<bool> stop{false};
  std::atomic<long> pruned{0};
  std::thread pruner;
  if (prune)
    pruner = std::thread([&] {
      auto pc = adapters::pg_client::connect(env().pg.url(), 5000ms);
      while (!stop.load()) {
        auto started = std::chrono::steady_clock::now();
        auto n = adapters::prune_applied_batches(*pc, "public", std::chrono::hours(24 * 7),
                                                 adapters::prune_batch_ids, adapters::prune_statement_timeout);
        if (!n || *n < adapters::prune_batch_ids)
          break;
        pruned += *n;
        std::this_thread::sleep_for(adapters::prune_rest(
          std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started)));
      }
    });
  adapters::flush_settings settings;
  settings.ns = ns;
  settings.leader = "bench";
  settings.epoch = *epoch;
  const auto& spec = rollup_specs()[0];
  static long next_batch = 0;
  std::vector<double> latencies_ms;
  for (auto _ : state) {
    adapters::batch b;
    b.id = "lat:" + std::to_string(next_batch++);
    adapters::batch_table t{spec.table, spec.key_columns(), spec.measure_columns(), {}};
    for (int r = 0; r < 100; ++r)
      t.rows.push_back({{"key", "", "k" + std::to_string(r)}, std::vector<__int128>(spec.measures.size(), 1)});
    b.tables.push_back(std::move(t));
    auto started = std::chrono::steady_clock::now();
    auto out = adapters::flush_batches(*conn, settings, {&b}, [] { return true; });
    auto took = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    if (!out || out->what != adapters::flush_outcome::kind::committed) {
      state.SkipWithError(out ? "flush not committed" : out.error().message.c_str());
      break;
    }
    state.SetIterationTime(took);
    latencies_ms.push_back(took * 1000);
  }
  stop = true;
  if (pruner.joinable())
    pruner.join();
  if (latencies_ms.empty())
    return;
  std::sort(latencies_ms.begin(), latencies_ms.end());
  auto at = [&](double q) { return latencies_ms[std::min(latencies_ms.size() - 1, size_t(q * latencies_ms.size()))]; };
  state.counters["p50_ms"] = at(0.50);
  state.counters["p99_ms"] = at(0.99);
  state.counters["pruned"] = static_cast<double>(pruned.load());
  if (prune)
    (void)conn->exec("DELETE FROM tally_applied_batches WHERE batch_id LIKE 'expired:%'");
}
BENCHMARK(BM_FlushWhilePruning)->Arg(0)->Arg(1)->Iterations(400)->UseManualTime()->Unit(benchmark::kMillisecond);

constexpr int hot_rows = 100;
constexpr int writers = 16;

void seed_hot_rows(adapters::pg_client& c) {
  (void)c.exec("TRUNCATE tally_spend");
  (void)c.exec("INSERT INTO tally_spend (entity_type, scope, entity_id) SELECT 'key', '', 'hot-' || g FROM "
               "generate_series(0, " + std::to_string(hot_rows - 1) + ") g");
}

void BM_DirectWriters(benchmark::State& state) {
  const auto events_per_writer = static_cast<int>(state.range(0));
  for (auto _ : state) {
    state.PauseTiming();
    {
      auto c = adapters::pg_client::connect(env().pg.url(), 5000ms);
      seed_hot_rows(*c);
    }
    std::atomic<long> deadlocks{0}, done{0};
    state.ResumeTiming();
    std::vector<std::thread> threads;
    for (int w = 0; w < writers; ++w)
      threads.emplace_back([&, w] {
        auto c = adapters::pg_client::connect(env().pg.url(), 5000ms);
        std::mt19937_64 rng(w);
        for (int e = 0; e < events_per_writer;) {
          bool ok = c->exec("BEGIN").ok();
          for (int r = 0; r < 4 && ok; ++r) {
            auto res = c->exec_params("UPDATE tally_spend SET spend = spend + 0.000042 WHERE entity_type = 'key'"
                                      " AND scope = '' AND entity_id = $1",
                                      {"hot-" + std::to_string(rng() % hot_rows)});
            if (!res) {
              ok = false;
              if (res.error().sqlstate == "40P01")
                ++deadlocks;
            }
          }
          if (ok && c->exec("COMMIT").ok()) {
            ++e;
            ++done;
          } else {
            (void)c->exec("ROLLBACK");
          }
        }
      });
    for (auto& t : threads)
      t.join();
    state.counters["deadlocks"] += static_cast<double>(deadlocks.load());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * writers * events_per_writer);
}
BENCHMARK(BM_DirectWriters)->Arg(40)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_ThroughTally(benchmark::State& state) {
  const auto events_per_writer = static_cast<int>(state.range(0));
  static int round = 0;
  for (auto _ : state) {
    state.PauseTiming();
    config cfg;
    cfg.ns = "bench" + std::to_string(round++);
    cfg.instance_id = "bench";
    cfg.redis_urls = {env().redis.url()};
    cfg.state_dir = tally::testing::temp_dir("tally-state-");
    cfg.postgres_url = env().pg.url();
    cfg.buffer_interval = 50ms;
    cfg.flush_interval = 50ms;
    cfg.lease_ttl = 2000ms;
    {
      auto c = adapters::pg_client::connect(env().pg.url(), 5000ms);
      seed_hot_rows(*c);
    }
    runtime rt;
    if (auto err = rt.start(cfg); !err.empty()) {
      state.SkipWithError(err.c_str());
      return;
    }
    state.ResumeTiming();
    std::vector<std::thread> threads;
    for (int w = 0; w < writers; ++w)
      threads.emplace_back([&, w] {
        std::mt19937_64 rng(w);
        std::string key;
        for (int e = 0; e < events_per_writer; ++e) {
          key = "hot-" + std::to_string(rng() % hot_rows);
          event ev;
          ev.id(field::key) = key;
          ev.spend = 42000;
          while (rt.record(ev).code == errc::backpressure)
            std::this_thread::yield();
        }
      });
    for (auto& t : threads)
      t.join();
    rt.stop();  // drains stage 1 and flushes the rest while leading
    state.PauseTiming();
    auto c = adapters::pg_client::connect(env().pg.url(), 5000ms);
    auto total = c->exec("SELECT coalesce(sum(requests), 0) FROM tally_spend WHERE entity_type = 'key'");
    long long want = static_cast<long long>(writers) * events_per_writer;
    if (!total || std::stoll(total->rows[0][0]) != want)
      state.SkipWithError("tally did not flush every event");
    state.ResumeTiming();
  }
  state.counters["deadlocks"] = 0;
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * writers * events_per_writer);
}
BENCHMARK(BM_ThroughTally)->Arg(5000)->Unit(benchmark::kMillisecond)->UseRealTime();

} // namespace

BENCHMARK_MAIN();
