// tests/flush_sql_test.cpp — adapters/flush_sql against a real postgres: the
// COPY-staged apply sums exactly (ids COPY would misread unescaped
// included), locks rows in key order, stays fenced and exactly once, and the
// applied-batch prune deletes in bounded batches.
#include "adapters/flush_sql.hpp"
#include "adapters/pg_client.hpp"
#include "adapters/pg_schema.hpp"
#include "adapters/read_sql.hpp"
#include "tests/harness/servers.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using namespace tally;
using tally::adapters::pg_client;
namespace harness = tally::testing;

namespace {

harness::postgres_server* server = nullptr;

class PgEnvironment : public ::testing::Environment {
public:
  void SetUp() override { server = new harness::postgres_server(); }
  void TearDown() override {
    delete server;
    server = nullptr;
  }
};
const auto* const pg_environment = ::testing::AddGlobalTestEnvironment(new PgEnvironment);

pg_client connect_or_die() {
  auto client = pg_client::connect(server->url(), 5000ms);
  if (!client.ok())
    ADD_FAILURE() << "connect: " << client.error().message;
  return std::move(client.value());
}

std::string scalar(pg_client& pg, const std::string& sql) {
  auto rows = pg.exec(sql);
  if (!rows.ok()) {
    ADD_FAILURE() << sql << ": " << rows.error().message;
    return {};
  }
  return rows->rows.empty() ? std::string() : rows->rows[0][0];
}

const rollup_spec& spend_spec() {
  for (const auto& s : rollup_specs())
    if (s.table == "tally_spend")
      return s;
  throw std::runtime_error("no tally_spend rollup");
}

// A batch with one tally_spend table: (entity_type, scope, entity_id) rows,
// each counting `requests` and `spend` nano-units.
adapters::batch spend_batch(const std::string& id, const std::vector<std::string>& entity_ids, __int128 spend) {
  const auto& spec = spend_spec();
  adapters::batch b;
  b.id = id;
  adapters::batch_table t{spec.table, spec.key_columns(), spec.measure_columns(), {}};
  auto measures = spec.measure_columns();
  for (const auto& e : entity_ids) {
    adapters::batch_row row;
    row.keys = {"key", "", e};
    row.values.assign(measures.size(), 0);
    for (size_t m = 0; m < measures.size(); ++m) {
      if (measures[m] == "spend")
        row.values[m] = spend;
      if (measures[m] == "requests")
        row.values[m] = 1;
    }
    t.rows.push_back(std::move(row));
  }
  b.tables.push_back(std::move(t));
  return b;
}

struct fixture {
  pg_client pg = connect_or_die();
  std::string schema;
  adapters::flush_settings settings;

  explicit fixture(const std::string& name) : schema("fs_" + name) {
    EXPECT_TRUE(pg.exec("DROP SCHEMA IF EXISTS " + schema + " CASCADE").ok());
    EXPECT_TRUE(adapters::migrate_schema(pg, schema).ok());
    auto epoch = adapters::take_epoch(pg, schema, "ns", "test", 5000ms);
    EXPECT_TRUE(epoch.ok());
    settings.schema = schema;
    settings.ns = "ns";
    settings.leader = "test";
    settings.epoch = epoch.ok() ? *epoch : 0;
  }

  result<adapters::flush_outcome> flush(const std::vector<adapters::batch>& batches) {
    std::vector<const adapters::batch*> ptrs;
    for (const auto& b : batches)
      ptrs.push_back(&b);
    return adapters::flush_batches(pg, settings, ptrs, [] { return true; });
  }

  std::map<std::string, std::string> requests_by_id() {
    std::map<std::string, std::string> out;
    auto rows = pg.exec("SELECT entity_id, requests, spend FROM " + schema + ".tally_spend");
    EXPECT_TRUE(rows.ok());
    if (rows.ok())
      for (const auto& r : rows->rows)
        out[r[0]] = r[1] + "/" + r[2];
    return out;
  }
};

} // namespace

TEST(FlushSql, StagedApplySumsExactlyWithIdsCopyTreatsSpecially) {
  fixture f("awkward");
  // Backslash, the COPY NULL marker, tab and newline would shift or nullify
  // fields if sent unescaped; quotes, commas and braces break array literals.
  std::vector<std::string> ids = {"plain", "back\\slash", "\\N", "tab\there", "new\nline", "q\"u,o{t}e", "ü-€", ""};
  std::vector<adapters::batch> batches = {spend_batch("i:1", ids, 1500000000), spend_batch("i:2", ids, 1)};
  auto out = f.flush(batches);
  ASSERT_TRUE(out.ok()) << out.error().message;
  EXPECT_EQ(out->what, adapters::flush_outcome::kind::committed);
  EXPECT_EQ(out->rows, ids.size());
  auto got = f.requests_by_id();
  ASSERT_EQ(got.size(), ids.size());
  for (const auto& id : ids)
    EXPECT_EQ(got[id], "2/1.500000001") << "id '" << id << "'";
  // A second flush of new batches adds onto the rows (the ON CONFLICT path).
  ASSERT_TRUE(f.flush({spend_batch("i:3", ids, 2)}).ok());
  for (const auto& [id, v] : f.requests_by_id())
    EXPECT_EQ(v, "3/1.500000003") << "id '" << id << "'";
}

TEST(FlushSql, UpsertTouchesRowsInKeyOrder) {
  fixture f("order");
  // A row trigger fires in the order the upsert processes (and locks) rows.
  ASSERT_TRUE(f.pg.exec("CREATE TABLE " + f.schema + ".touch_log (seq bigserial, entity_id text)").ok());
  ASSERT_TRUE(f.pg.exec("CREATE FUNCTION " + f.schema + ".log_touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                        "INSERT INTO " + f.schema + ".touch_log (entity_id) VALUES (NEW.entity_id); RETURN NEW; END $$")
                .ok());
  ASSERT_TRUE(f.pg.exec("CREATE TRIGGER log_touch BEFORE INSERT ON " + f.schema + ".tally_spend FOR EACH ROW "
                        "EXECUTE FUNCTION " + f.schema + ".log_touch()")
                .ok());
  std::vector<std::string> ids;
  for (int i = 0; i < 2000; ++i)
    ids.push_back("id-" + std::to_string(i * 7919 % 2000));
  std::mt19937 rng(7);
  std::shuffle(ids.begin(), ids.end(), rng);
  // Half the rows exist before, so both the insert and the update path run.
  ASSERT_TRUE(f.flush({spend_batch("o:1", std::vector<std::string>(ids.begin(), ids.begin() + 1000), 1)}).ok());
  ASSERT_TRUE(f.pg.exec("TRUNCATE " + f.schema + ".touch_log").ok());
  std::shuffle(ids.begin(), ids.end(), rng);
  ASSERT_TRUE(f.flush({spend_batch("o:2", std::vector<std::string>(ids.begin(), ids.begin() + 1200), 1),
                       spend_batch("o:3", std::vector<std::string>(ids.begin() + 800, ids.end()), 1)})
                .ok());
  auto rows = f.pg.exec("SELECT entity_id FROM " + f.schema + ".touch_log ORDER BY seq");
  ASSERT_TRUE(rows.ok());
  std::vector<std::string> touched;
  for (const auto& r : rows->rows)
    touched.push_back(r[0]);
  auto sorted = ids;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(touched, sorted);
}

TEST(FlushSql, FencedFlushAppliesNothingAndDuplicatesAreSkipped) {
  fixture f("fence");
  ASSERT_TRUE(f.flush({spend_batch("f:1", {"a", "b"}, 5)}).ok());
  // A re-delivered batch next to a new one: only the new one counts.
  auto again = f.flush({spend_batch("f:1", {"a", "b"}, 5), spend_batch("f:2", {"a"}, 5)});
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_EQ(again->batches_duplicate, 1u);
  EXPECT_EQ(again->batches_new, 1u);
  // Another leader's epoch: the old one's flush rolls back.
  ASSERT_TRUE(adapters::take_epoch(f.pg, f.schema, "ns", "other", 5000ms).ok());
  auto fenced = f.flush({spend_batch("f:3", {"a", "b"}, 5)});
  ASSERT_TRUE(fenced.ok()) << fenced.error().message;
  EXPECT_EQ(fenced->what, adapters::flush_outcome::kind::fenced);
  auto got = f.requests_by_id();
  EXPECT_EQ(got["a"], "2/0.000000010");
  EXPECT_EQ(got["b"], "1/0.000000005");
  EXPECT_EQ(scalar(f.pg, "SELECT count(*) FROM " + f.schema + ".tally_applied_batches"), "2");
}

// Without deadlock priority a flush does not wait for an entity-total row a
// writer outside tally holds: the increment is committed to the deferred
// table with the batch ids, reads count it at once, and apply_deferred adds
// it to the row once the holder is gone, exactly once.
TEST(FlushSql, RowHeldByAnotherWriterIsDeferredNotWaitedFor) {
  fixture f("defer");
  const std::string table = f.schema + ".tally_spend";
  const std::string deferred = f.schema + ".tally_spend_deferred";
  ASSERT_TRUE(f.flush({spend_batch("d:1", {"a", "b", "c"}, 5)}).ok());
  auto holder = connect_or_die();
  ASSERT_TRUE(holder.exec("BEGIN; UPDATE " + table + " SET spend = spend + 0.000000100 WHERE entity_id = 'b'").ok());
  f.settings.lock_timeout = 30000ms;  // a flush that waited would take this long
  f.settings.deadlock_priority = false;
  auto started = std::chrono::steady_clock::now();
  auto out = f.flush({spend_batch("d:2", {"a", "b", "c", "new"}, 7)});
  ASSERT_TRUE(out.ok()) << out.error().message;
  EXPECT_LT(std::chrono::steady_clock::now() - started, 10s);
  EXPECT_EQ(out->what, adapters::flush_outcome::kind::committed);
  EXPECT_EQ(out->deferred, 1u);
  auto got = f.requests_by_id();
  EXPECT_EQ(got["a"], "2/0.000000012");
  EXPECT_EQ(got["b"], "1/0.000000005");  // its increment waits in the deferred table
  EXPECT_EQ(got["c"], "2/0.000000012");
  EXPECT_EQ(got["new"], "1/0.000000007");
  EXPECT_EQ(scalar(f.pg, "SELECT count(*) FROM " + deferred + " WHERE entity_id = 'b'"), "1");
  // Reads add it in (the holder's own increment is not committed yet).
  auto read = adapters::read_spend(f.pg, f.schema, {{"key", "", "a"}, {"key", "", "b"}, {"key", "", "gone"}},
                                   {"d:2", "d:3"});
  ASSERT_TRUE(read.ok()) << read.error().message;
  ASSERT_EQ(read->rows.size(), 3u);
  ASSERT_TRUE(read->rows[1].has_value());
  EXPECT_EQ(read->rows[1]->requests, 2);
  EXPECT_TRUE(read->rows[1]->spend == 12);
  EXPECT_TRUE(read->rows[0]->spend == 12);
  EXPECT_FALSE(read->rows[2].has_value());
  EXPECT_EQ(read->applied, std::vector<std::string>{"d:2"});
  // Applying waits for the holder, at most its lock timeout.
  auto blocked = adapters::apply_deferred(f.pg, f.schema, 100, 200ms);
  ASSERT_TRUE(blocked.ok()) << blocked.error().message;
  EXPECT_EQ(blocked->applied, 0);
  EXPECT_TRUE(blocked->held);
  ASSERT_TRUE(holder.exec("COMMIT").ok());
  auto applied = adapters::apply_deferred(f.pg, f.schema, 100, 5000ms);
  ASSERT_TRUE(applied.ok()) << applied.error().message;
  EXPECT_EQ(applied->applied, 1);
  EXPECT_FALSE(applied->held);
  EXPECT_EQ(f.requests_by_id()["b"], "2/0.000000112");
  EXPECT_EQ(scalar(f.pg, "SELECT count(*) FROM " + deferred), "0");
  auto again = adapters::apply_deferred(f.pg, f.schema, 100, 5000ms);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->applied, 0);
  EXPECT_FALSE(again->held);
  EXPECT_EQ(f.requests_by_id()["b"], "2/0.000000112");
}

// A row another transaction holds for long does not hold up the increments
// deferred after its own: they are applied at once, oldest first, and the
// held one waits (the apply says so) until its row is free. An increment
// whose row is gone (deleted since) goes with the waiting ones, oldest
// first, and inserts its row.
TEST(FlushSql, HeldRowDoesNotHoldUpTheDeferredIncrementsBehindIt) {
  fixture f("defer_hol");
  const std::string deferred = f.schema + ".tally_spend_deferred";
  ASSERT_TRUE(f.flush({spend_batch("h:1", {"a", "b", "c", "gone"}, 5)}).ok());
  // b's first, then a, c and gone (its row deleted since), 3 nano-units each.
  ASSERT_TRUE(f.pg.exec("INSERT INTO " + deferred + " (entity_type, scope, entity_id, spend, prompt_tokens, "
                        "completion_tokens, cache_read_tokens, cache_creation_tokens, requests, successful_requests, "
                        "failed_requests) SELECT 'key', '', id, 0.000000003, 0, 0, 0, 0, 1, 1, 0 FROM "
                        "unnest(ARRAY['b', 'a', 'c', 'gone']) id")
                .ok());
  ASSERT_TRUE(f.pg.exec("DELETE FROM " + f.schema + ".tally_spend WHERE entity_id = 'gone'").ok());
  auto holder = connect_or_die();
  ASSERT_TRUE(holder.exec("BEGIN; SELECT 1 FROM " + f.schema + ".tally_spend WHERE entity_id = 'b' FOR UPDATE").ok());
  auto started = std::chrono::steady_clock::now();
  auto out = adapters::apply_deferred(f.pg, f.schema, 100, 300ms);
  ASSERT_TRUE(out.ok()) << out.error().message;
  EXPECT_LT(std::chrono::steady_clock::now() - started, 5s);  // one wait of 300 ms, not one per increment
  EXPECT_EQ(out->applied, 2);
  EXPECT_TRUE(out->held);
  auto got = f.requests_by_id();
  EXPECT_EQ(got["a"], "2/0.000000008");
  EXPECT_EQ(got["b"], "1/0.000000005");  // still waiting
  EXPECT_EQ(got["c"], "2/0.000000008");
  EXPECT_EQ(got.count("gone"), 0u);
  EXPECT_EQ(scalar(f.pg, "SELECT string_agg(entity_id, ',' ORDER BY id) FROM " + deferred), "b,gone");
  ASSERT_TRUE(holder.exec("ROLLBACK").ok());
  out = adapters::apply_deferred(f.pg, f.schema, 100, 5000ms);
  ASSERT_TRUE(out.ok()) << out.error().message;
  EXPECT_EQ(out->applied, 2);
  EXPECT_FALSE(out->held);
  got = f.requests_by_id();
  EXPECT_EQ(got["b"], "2/0.000000008");
  EXPECT_EQ(got["gone"], "1/0.000000003");
  EXPECT_EQ(scalar(f.pg, "SELECT count(*) FROM " + deferred), "0");
}

// Any instance may apply deferred increments (a new leader applies what an
// old one deferred, and an old one may still be finishing): however many
// run at once, each increment is added exactly once.
TEST(FlushSql, DeferredIncrementsApplyExactlyOnceWithConcurrentAppliers) {
  fixture f("defer_race");
  const std::vector<std::string> ids = {"a", "b", "c", "d", "e"};
  ASSERT_TRUE(f.flush({spend_batch("r:1", ids, 1)}).ok());
  ASSERT_TRUE(f.pg.exec("INSERT INTO " + f.schema + ".tally_spend_deferred (entity_type, scope, entity_id, spend, "
                        "prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens, requests, "
                        "successful_requests, failed_requests) SELECT 'key', '', chr(97 + g % 5), 0.000000001, 0, 0, "
                        "0, 0, 1, 1, 0 FROM generate_series(1, 600) g")
                .ok());
  std::atomic<long> applied{0};
  std::vector<std::thread> appliers;
  for (int t = 0; t < 3; ++t)
    appliers.emplace_back([&] {
      auto pg = connect_or_die();
      for (;;) {
        auto n = adapters::apply_deferred(pg, f.schema, 50, 5000ms);
        if (!n.ok()) {
          ADD_FAILURE() << n.error().message;
          return;
        }
        applied += n->applied;
        if (n->applied == 0)
          return;
      }
    });
  for (auto& t : appliers)
    t.join();
  EXPECT_EQ(applied.load(), 600);
  for (const auto& [id, v] : f.requests_by_id())
    EXPECT_EQ(v, "121/0.000000121") << id;
  EXPECT_EQ(scalar(f.pg, "SELECT count(*) FROM " + f.schema + ".tally_spend_deferred"), "0");
}

TEST(FlushSql, PruneDeletesOldIdsInBoundedBatchesAndSkipsLockedRows) {
  fixture f("prune");
  const std::string table = f.schema + ".tally_applied_batches";
  ASSERT_TRUE(f.pg.exec("INSERT INTO " + table + " (batch_id, epoch, applied_at) SELECT 'old:' || g, 1, now() - "
                        "interval '30 days' - g * interval '1 second' FROM generate_series(1, 12000) g")
                .ok());
  ASSERT_TRUE(f.pg.exec("INSERT INTO " + table + " (batch_id, epoch) SELECT 'new:' || g, 1 FROM generate_series(1, 10) g")
                .ok());
  // Another session holds one expired row: the prune goes around it
  // instead of waiting (a wait would be a stall of the whole prune).
  auto holder = connect_or_die();
  ASSERT_TRUE(holder.exec("BEGIN; SELECT 1 FROM " + table + " WHERE batch_id = 'old:7' FOR UPDATE").ok());
  const auto retention = std::chrono::hours(24 * 7);
  std::vector<long> deleted;
  for (;;) {
    auto n = adapters::prune_applied_batches(f.pg, f.schema, retention, 5000, 5000ms);
    ASSERT_TRUE(n.ok()) << n.error().message;
    deleted.push_back(*n);
    if (*n < 5000)
      break;
  }
  EXPECT_EQ(deleted, (std::vector<long>{5000, 5000, 1999}));  // limit as given, not prune_batch_ids
  ASSERT_TRUE(holder.exec("COMMIT").ok());
  auto last = adapters::prune_applied_batches(f.pg, f.schema, retention, 5000, 5000ms);
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(*last, 1);
  EXPECT_EQ(scalar(f.pg, "SELECT count(*) FROM " + table + " WHERE batch_id LIKE 'old:%'"), "0");
  EXPECT_EQ(scalar(f.pg, "SELECT count(*) FROM " + table + " WHERE batch_id LIKE 'new:%'"), "10");
}

TEST(FlushSql, PruneBatchGivesUpAtItsStatementTimeout) {
  fixture f("prune_timeout");
  const std::string table = f.schema + ".tally_applied_batches";
  ASSERT_TRUE(f.pg.exec("INSERT INTO " + table + " (batch_id, epoch, applied_at) SELECT 'old:' || g, 1, now() - "
                        "interval '30 days' FROM generate_series(1, 10) g")
                .ok());
  // A table lock nobody can skip: the batch must end at its timeout, not wait.
  auto holder = connect_or_die();
  ASSERT_TRUE(holder.exec("BEGIN; LOCK TABLE " + table + " IN ACCESS EXCLUSIVE MODE").ok());
  auto started = std::chrono::steady_clock::now();
  auto n = adapters::prune_applied_batches(f.pg, f.schema, std::chrono::hours(1), 5000, 300ms);
  auto took = std::chrono::steady_clock::now() - started;
  ASSERT_FALSE(n.ok());
  EXPECT_TRUE(n.error().sqlstate == "55P03" || n.error().sqlstate == "57014") << n.error().sqlstate;
  EXPECT_LT(took, 10s);
  ASSERT_TRUE(holder.exec("ROLLBACK").ok());
  // The client is usable again and the next batch does the work.
  auto again = adapters::prune_applied_batches(f.pg, f.schema, std::chrono::hours(1), 5000, 300ms);
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_EQ(*again, 10);
}
