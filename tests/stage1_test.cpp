// tests/stage1_test.cpp — the embedded ingest path into a real Redis.
//
// Every test here compares what reached Redis (every batch decoded) with the
// ground truth computed independently from the generated events: spend to
// the nano-unit, every token count, every request count, every row.
#include "tally/tally.hpp"
#include "adapters/spill_journal.hpp"
#include "tests/harness/servers.hpp"
#include "tests/support/batches.hpp"
#include "tests/support/workload.hpp"

#include <gtest/gtest.h>

#include <csignal>
#include <fstream>
#include <sstream>
#include <thread>

using namespace tally;
using namespace tally::testing;
using namespace std::chrono_literals;

namespace {

rollup_rows reference(uint64_t seed, uint64_t from, uint64_t to) {
  return reference_range(seed, from, to);
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct driver {
  pid_t pid = -1;
  std::string log;
};

std::string temp_log(const std::string& name) {
  return ::testing::TempDir() + "/" + name + "-" + std::to_string(getpid()) + ".log";
}

driver start_driver(const std::string& name, std::vector<std::string> args) {
  driver d;
  d.log = temp_log(name);
  std::remove(d.log.c_str());
  args.insert(args.begin(), TALLY_DRIVER_PATH);
  d.pid = spawn_process(args, d.log);
  return d;
}

void expect_clean_exit(const driver& d, std::chrono::milliseconds deadline) {
  int status = wait_process(d.pid, deadline);
  ASSERT_NE(status, -1) << "driver did not finish; log:\n" << slurp(d.log);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "driver failed; log:\n" << slurp(d.log);
}

void expect_exact(const stage1_contents& got, const rollup_rows& expected) {
  EXPECT_TRUE(got.errors.empty()) << got.errors.front();
  EXPECT_TRUE(got.duplicate_ids.empty()) << "duplicate batch id " << got.duplicate_ids.front();
  EXPECT_EQ(diff_rows(expected, got.rows), "");
}

std::vector<std::string> driver_args(const std::string& url, const std::string& instance, uint64_t to,
                                     uint64_t offset, int threads) {
  return {"--redis", url, "--ns", "t", "--instance", instance, "--seed", "7", "--from", "0",
          "--to", std::to_string(to), "--stride", "2", "--offset", std::to_string(offset),
          "--threads", std::to_string(threads), "--buffer-ms", "100"};
}

/// Runs the driver `instance` once more on `state_dir`, recording nothing:
/// its start adopts the spill journal the first run may have left (a stop
/// while no Redis was healthy), its stop replays it into Redis.
void replay_journal(const std::string& url, const std::string& instance, const std::string& state_dir) {
  auto d = start_driver("replay-" + instance, {"--redis", url, "--ns", "t", "--instance", instance, "--seed", "7",
                                               "--from", "0", "--to", "0", "--state-dir", state_dir});
  expect_clean_exit(d, 120s);
}

/// Whether a driver has failed a stage-1 write (its progress lines count
/// them) or sent batches to its spill journal instead.
bool write_failed(const std::string& log) {
  auto text = slurp(log);
  auto at = text.rfind("stage1_failures=");
  return (at != std::string::npos && std::atoll(text.c_str() + at + 16) > 0)
         || text.find("spill journal") != std::string::npos;
}

} // namespace

// Two runtimes in separate processes share one Redis; 4 threads (two per
// process) record 1,000,000 events; the decoded batches equal the truth.
TEST(Stage1, TwoProcessesMillionEventsExact) {
  redis_server redis;
  constexpr uint64_t n = 1'000'000;
  auto a = start_driver("two-a", driver_args(redis.url(), "a", n, 0, 2));
  auto b = start_driver("two-b", driver_args(redis.url(), "b", n, 1, 2));
  auto expected = reference(7, 0, n);
  expect_clean_exit(a, 300s);
  expect_clean_exit(b, 300s);
  auto got = read_stage1(redis.url(), "t");
  EXPECT_GT(got.batches, 2u);
  expect_exact(got, expected);
}

// Redis is down when the run starts and comes up midway: nothing is lost,
// nothing is written twice.
TEST(Stage1, RedisStartedMidway) {
  redis_server redis;
  redis.stop();
  constexpr uint64_t n = 200'000;
  auto dir_a = temp_dir("tally-state-"), dir_b = temp_dir("tally-state-");
  auto args_a = driver_args(redis.url(), "a", n, 0, 2), args_b = driver_args(redis.url(), "b", n, 1, 2);
  args_a.insert(args_a.end(), {"--state-dir", dir_a});
  args_b.insert(args_b.end(), {"--state-dir", dir_b});
  auto a = start_driver("mid-a", args_a);
  auto b = start_driver("mid-b", args_b);
  // Both have tried and failed to write before Redis starts (their batches
  // went to their spill journals, replayed once Redis is healthy).
  ASSERT_TRUE(wait_for([&] { return write_failed(a.log) && write_failed(b.log); }, 60s));
  redis.start();
  auto expected = reference(7, 0, n);
  expect_clean_exit(a, 120s);
  expect_clean_exit(b, 120s);
  // A driver that stopped before its health check saw Redis again left its
  // last batches in its journal; its next start replays them.
  replay_journal(redis.url(), "a", dir_a);
  replay_journal(redis.url(), "b", dir_b);
  expect_exact(read_stage1(redis.url(), "t"), expected);
}

// Redis is killed (SIGKILL) while batches flow and restarted from its
// append-only file: exact totals, no batch id twice.
TEST(Stage1, RedisKilledAndRestarted) {
  redis_server redis;  // appendonly yes, appendfsync always
  constexpr uint64_t n = 600'000;
  auto dir_a = temp_dir("tally-state-"), dir_b = temp_dir("tally-state-");
  auto args_a = driver_args(redis.url(), "a", n, 0, 2);
  auto args_b = driver_args(redis.url(), "b", n, 1, 2);
  args_a.insert(args_a.end(), {"--state-dir", dir_a});
  args_b.insert(args_b.end(), {"--state-dir", dir_b});
  auto a = start_driver("kill-a", args_a);
  auto b = start_driver("kill-b", args_b);
  ASSERT_TRUE(wait_for([&] { return read_stage1(redis.url(), "t").batches >= 4; }, 60s));
  redis.kill();
  ASSERT_TRUE(wait_for([&] { return write_failed(a.log) || write_failed(b.log); }, 60s));
  redis.start();
  auto expected = reference(7, 0, n);
  expect_clean_exit(a, 120s);
  expect_clean_exit(b, 120s);
  replay_journal(redis.url(), "a", dir_a);
  replay_journal(redis.url(), "b", dir_b);
  expect_exact(read_stage1(redis.url(), "t"), expected);
}

namespace {

config local_config(const redis_server& redis, std::chrono::milliseconds interval) {
  config cfg;
  cfg.ns = "t";
  cfg.instance_id = "local";
  cfg.redis_urls = {redis.url()};
  cfg.state_dir = tally::testing::temp_dir("tally-state-");
  cfg.buffer_interval = interval;
  return cfg;
}

} // namespace

// Every validation rule refuses its event with its error and field; the
// good events around them are counted exactly.
TEST(Stage1, BadEventsRefusedGoodOnesExact) {
  redis_server redis;
  runtime rt;
  ASSERT_EQ(rt.start(local_config(redis, 50ms)), "");
  rollup_rows expected;
  uint64_t index = 0;
  auto good = [&] {
    auto ev = generate(11, index++);
    ASSERT_FALSE(rt.record(ev.view()));
    add_reference(expected, ev);
  };
  struct bad_case {
    const char* what;
    std::function<void(event&)> spoil;
    errc code;
    field about;
  };
  std::string long_id(300, 'x');
  std::string control_id = std::string("a\x01") + "b";
  std::string bad_utf8 = "\xC3\x28";
  std::string many_tags;
  for (int i = 0; i < 70; ++i)
    many_tags += (i ? "," : "") + std::to_string(i);
  std::vector<bad_case> cases = {
    {"no entity", [](event& e) { for (auto& id : e.ids) id = {}; }, errc::no_entity, field::none},
    {"id too long", [&](event& e) { e.id(field::user) = long_id; }, errc::id_too_long, field::user},
    {"control char", [&](event& e) { e.id(field::team) = control_id; }, errc::bad_id, field::team},
    {"bad utf-8", [&](event& e) { e.id(field::org) = bad_utf8; }, errc::bad_id, field::org},
    {"empty tag", [](event& e) { e.id(field::tags) = "a,,b"; }, errc::empty_value, field::tags},
    {"too many tags", [&](event& e) { e.id(field::tags) = many_tags; }, errc::id_too_long, field::tags},
    {"negative spend", [](event& e) { e.spend = -1; }, errc::negative_value, field::spend},
    {"negative tokens", [](event& e) { e.prompt_tokens = -5; }, errc::negative_value, field::prompt_tokens},
    {"too many tokens", [](event& e) { e.completion_tokens = max_event_tokens + 1; }, errc::overflow,
     field::completion_tokens},
    {"bad ts", [](event& e) { e.ts_ms = -3; }, errc::bad_timestamp, field::ts},
  };
  for (auto& c : cases) {
    good();
    auto ev = generate(11, 1'000'000 + index);
    event spoiled = ev.view();
    c.spoil(spoiled);
    auto err = rt.record(spoiled);
    EXPECT_EQ(err.code, c.code) << c.what << ": got " << to_string(err.code);
    EXPECT_EQ(err.about, c.about) << c.what << ": got field " << to_string(err.about);
    good();
  }
  // The same rules through the text builder (what RESP uses).
  event_builder builder;
  event out;
  EXPECT_EQ(builder.set("bogus", "1").code, errc::unknown_field);
  builder.reset();
  ASSERT_FALSE(builder.set("key", "k"));
  EXPECT_EQ(builder.set("key", "k2").code, errc::repeated_field);
  builder.reset();
  EXPECT_EQ(builder.set("spend", "nan").code, errc::bad_number);
  builder.reset();
  EXPECT_EQ(builder.set("spend", "-0.5").code, errc::negative_value);
  builder.reset();
  EXPECT_EQ(builder.set("status", "maybe").code, errc::bad_status);
  builder.reset();
  ASSERT_FALSE(builder.set("model", "m"));
  ASSERT_FALSE(builder.finish(out));
  rt.stop();
  EXPECT_EQ(rt.snapshot().events_rejected, cases.size());
  expect_exact(read_stage1(redis.url(), "t"), expected);
}

// Redis is killed and restarted with its data (append-only file) while its
// batches wait for a leader (there is none here). When the database is
// active again retention re-pushes every retained batch at once, through
// the idempotent push: Redis, which kept them, still holds each batch once.
TEST(Stage1, RestartedRedisKeepsEachBatchOnce) {
  redis_server redis;  // appendonly yes, appendfsync always
  auto cfg = local_config(redis, 50ms);
  cfg.health_check_interval = 100ms;
  cfg.grace_period = 300ms;
  runtime rt;
  ASSERT_EQ(rt.start(cfg), "");
  rollup_rows expected;
  uint64_t i = 0;
  auto record = [&](uint64_t n) {
    for (uint64_t end = i + n; i < end; ++i) {
      auto ev = generate(17, i);
      while (rt.record(ev.view()).code == errc::backpressure)
        std::this_thread::yield();
      add_reference(expected, ev);
    }
  };
  auto db_state = [&] {
    auto dbs = rt.redis_databases();
    return dbs.size() == 1 ? dbs[0].state + (dbs[0].active ? "/active" : "") : std::string("?");
  };
  record(20'000);
  ASSERT_TRUE(wait_for([&] { return rt.snapshot().pending_batches == 0 && rt.snapshot().retained > 0; }, 20s));
  redis.kill();
  ASSERT_TRUE(wait_for([&] { return db_state() == "open"; }, 20s)) << db_state();
  redis.start();
  ASSERT_TRUE(wait_for([&] { return db_state() == "closed/active"; }, 20s)) << db_state();
  // Retention re-pushes on the switch and checks every second: let it have
  // both chances.
  std::this_thread::sleep_for(2500ms);
  record(5'000);
  rt.stop();
  EXPECT_EQ(rt.snapshot().repushed, 0u) << "retention pushed batches Redis still had";
  expect_exact(read_stage1(redis.url(), "t"), expected);
}

// A durable record completes only once its batch is in Redis, and does not
// wait out a long buffer interval (group commit).
TEST(Stage1, DurableRecordWaitsForRedisNotForTheInterval) {
  redis_server redis;
  runtime rt;
  ASSERT_EQ(rt.start(local_config(redis, 60s)), "");
  auto ev = generate(3, 0);
  ev.ids[0] = "durable-key";
  auto fut = rt.record_durable(ev.view());
  ASSERT_EQ(fut.wait_for(20s), std::future_status::ready) << "durable record waited for the 60 s interval";
  EXPECT_FALSE(fut.get());
  auto got = read_stage1(redis.url(), "t");
  auto& spend = got.rows["tally_spend"];
  auto row = spend.find({"key", "", "durable-key"});
  ASSERT_NE(row, spend.end()) << "the durable event is not in Redis yet";
  EXPECT_EQ(row->second[0], ev.spend);
  rt.stop();
}

// The callback form returns its synchronous refusal (the same error the
// callback gets at once), and errc::ok when the event was taken.
TEST(Stage1, DurableRecordReturnsItsRefusal) {
  redis_server redis;
  runtime rt;
  ASSERT_EQ(rt.start(local_config(redis, 100ms)), "");
  auto bad = generate(6, 0);
  bad.ids[0] = std::string("bad\x01key");
  std::promise<field_error> got_bad;
  auto returned = rt.record_durable(bad.view(), [&](field_error e) { got_bad.set_value(e); });
  EXPECT_EQ(returned.code, errc::bad_id);
  auto f = got_bad.get_future();
  ASSERT_EQ(f.wait_for(0ms), std::future_status::ready) << "a refusal is reported at once";
  EXPECT_EQ(f.get().code, errc::bad_id);
  std::promise<field_error> got_ok;
  EXPECT_EQ(rt.record_durable(generate(6, 1).view(), [&](field_error e) { got_ok.set_value(e); }).code, errc::ok);
  auto g = got_ok.get_future();
  ASSERT_EQ(g.wait_for(20s), std::future_status::ready);
  EXPECT_FALSE(g.get());
  rt.stop();
}

// While Redis is down a durable record does not complete; it completes once
// Redis is back.
TEST(Stage1, DurableRecordCompletesAfterRedisReturns) {
  redis_server redis;
  runtime rt;
  auto cfg = local_config(redis, 100ms);
  cfg.retry_backoff_max = 200ms;
  ASSERT_EQ(rt.start(cfg), "");
  redis.stop();
  auto fut = rt.record_durable(generate(5, 1).view());
  ASSERT_TRUE(wait_for([&] { return rt.snapshot().stage1_failures > 0; }, 20s));
  EXPECT_EQ(fut.wait_for(0ms), std::future_status::timeout);
  redis.start();
  ASSERT_EQ(fut.wait_for(30s), std::future_status::ready);
  EXPECT_FALSE(fut.get());
  rt.stop();
}

// A shard at its key limit has the writer swap at once: a flood of
// distinct keys is paced by how fast batches form, not held back for the
// (here hour-long) buffer interval. Every event is then in Redis, once.
TEST(Stage1, KeyLimitSwapsAtOnceInsteadOfWaitingForTheInterval) {
  redis_server redis;
  auto cfg = local_config(redis, 3600s);
  cfg.shards = 1;
  cfg.max_keys_per_shard = 1024;
  cfg.queue_capacity = 1024;
  runtime rt;
  ASSERT_EQ(rt.start(cfg), "");
  rollup_rows expected;
  const uint64_t n = 30'000;  // about six times what one map holds
  uint64_t i = 0;
  auto deadline = std::chrono::steady_clock::now() + 60s;
  for (; i < n && std::chrono::steady_clock::now() < deadline; ++i) {
    auto ev = generate(29, i);
    ev.ids[0] = "flood-" + std::to_string(i);
    field_error err;
    while ((err = rt.record(ev.view())).code == errc::backpressure && std::chrono::steady_clock::now() < deadline)
      std::this_thread::yield();
    if (err.code == errc::backpressure)
      break;
    ASSERT_FALSE(err) << to_string(err.code);
    add_reference(expected, ev);
  }
  ASSERT_EQ(i, n) << "ingest stalled at the key limit, waiting for the interval";
  EXPECT_GT(rt.snapshot().events_backpressured, 0u) << "the test never reached the key limit";
  EXPECT_GE(rt.snapshot().batches_written, 4u) << "the maps were not swapped as they filled";
  rt.stop();
  expect_exact(read_stage1(redis.url(), "t"), expected);
}

// The id table holds far fewer texts than the stream brings (a key per
// event, as a scan of API keys or per-request end users would): it is
// emptied whenever it fills, without waiting for the interval, and no
// event is refused; producers see backpressure for the moment it takes.
// Steady texts (the workload's users, models, tags) are interned again
// after every reclaim. Every event is counted exactly.
TEST(Stage1, IdTableIsReclaimedAsItFillsNothingRefused) {
  redis_server redis;
  auto cfg = local_config(redis, 3600s);
  cfg.shards = 2;
  cfg.intern_capacity = 1024;  // holds 896 texts; the stream brings 24,000 keys
  runtime rt;
  ASSERT_EQ(rt.start(cfg), "");
  constexpr uint64_t per_thread = 12'000;
  auto event_of = [](int t, uint64_t i) {
    auto ev = generate(31, t * per_thread + i);
    ev.ids[0] = "scan-" + std::to_string(t) + "-" + std::to_string(i);
    return ev;
  };
  std::atomic<uint64_t> recorded[2] = {};
  std::vector<std::string> failures(2);
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      auto deadline = std::chrono::steady_clock::now() + 120s;
      for (uint64_t i = 0; i < per_thread; ++i) {
        auto ev = event_of(t, i);
        field_error err;
        while ((err = rt.record(ev.view())).code == errc::backpressure && std::chrono::steady_clock::now() < deadline)
          std::this_thread::yield();
        if (err) {
          failures[t] = "event " + std::to_string(i) + ": " + to_string(err.code);
          return;
        }
        recorded[t] = i + 1;
      }
    });
  }
  for (auto& th : threads)
    th.join();
  for (int t = 0; t < 2; ++t) {
    EXPECT_EQ(failures[t], "") << "thread " << t;
    EXPECT_EQ(recorded[t].load(), per_thread) << "thread " << t;
  }
  auto s = rt.snapshot();
  EXPECT_EQ(s.events_rejected, 0u);
  EXPECT_GE(s.id_reclaims, 20u) << "24,000 keys through a table of 896 texts";
  EXPECT_LE(s.ids_interned, 896u);
  EXPECT_GT(s.events_backpressured, 0u);
  rt.stop();
  rollup_rows expected;
  for (int t = 0; t < 2; ++t)
    for (uint64_t i = 0; i < recorded[t]; ++i)
      add_reference(expected, event_of(t, i));
  expect_exact(read_stage1(redis.url(), "t"), expected);
}

// Tag lists are interned whole by producers and split by the writer at the
// cycle, which interns every tag part then, in the little room the table
// keeps above what producers may fill. A stream where every event brings
// its own tags (a request id as a tag) needs far more parts per cycle than
// that room: the parts that do not fit are kept aside for the cycle, and
// every tag row is counted exactly.
TEST(Stage1, TagPartsBeyondTheIdTableAreNotLost) {
  redis_server redis;
  auto cfg = local_config(redis, 3600s);
  cfg.shards = 2;
  cfg.intern_capacity = 1024;  // 896 texts, 56 of them above producers' limit
  runtime rt;
  ASSERT_EQ(rt.start(cfg), "");
  constexpr uint64_t events = 6'000;
  auto event_of = [](uint64_t i) {
    auto ev = generate(37, i);
    ev.ids[5] = "req-" + std::to_string(i) + ",batch-" + std::to_string(i / 3) + ",steady";
    return ev;
  };
  auto deadline = std::chrono::steady_clock::now() + 120s;
  for (uint64_t i = 0; i < events; ++i) {
    auto ev = event_of(i);
    field_error err;
    while ((err = rt.record(ev.view())).code == errc::backpressure && std::chrono::steady_clock::now() < deadline)
      std::this_thread::yield();
    ASSERT_FALSE(err) << "event " << i << ": " << to_string(err.code);
  }
  auto s = rt.snapshot();
  EXPECT_GE(s.id_reclaims, 5u) << "6,000 tag lists and 8,000 tag parts through a table of 896 texts";
  EXPECT_LE(s.ids_interned, 896u);
  rt.stop();
  rollup_rows expected;
  for (uint64_t i = 0; i < events; ++i)
    add_reference(expected, event_of(i));
  expect_exact(read_stage1(redis.url(), "t"), expected);
}

// stop() drains queues and writes the final batch even when the interval
// has not come round.
TEST(Stage1, StopWritesEverything) {
  redis_server redis;
  rollup_rows expected;
  {
    runtime rt;
    ASSERT_EQ(rt.start(local_config(redis, 60s)), "");
    for (uint64_t i = 0; i < 50'000; ++i) {
      auto ev = generate(9, i);
      while (rt.record(ev.view()).code == errc::backpressure)
        std::this_thread::yield();
      add_reference(expected, ev);
    }
    rt.stop();
    EXPECT_EQ(rt.record(generate(9, 0).view()).code, errc::stopped);
  }
  expect_exact(read_stage1(redis.url(), "t"), expected);
}

// When memory is full record() pushes back instead of dropping: with Redis
// down and tiny bounds, backpressure appears, and every accepted event is
// still counted once Redis returns.
TEST(Stage1, BackpressureWhenFullNothingDropped) {
  redis_server redis;
  redis.stop();
  auto cfg = local_config(redis, 20ms);
  cfg.queue_capacity = 1024;
  cfg.max_keys_per_shard = 1024;
  cfg.max_pending_batches = 2;
  cfg.journal_max_bytes = 1 << 20;  // the spill journal fills too: then ingest pushes back
  cfg.max_batch_bytes = 4096;
  cfg.retry_backoff_max = 100ms;
  cfg.shards = 1;
  runtime rt;
  ASSERT_EQ(rt.start(cfg), "");
  rollup_rows expected;
  uint64_t i = 0;
  bool pushed_back = false;
  auto deadline = std::chrono::steady_clock::now() + 60s;
  while (!pushed_back && std::chrono::steady_clock::now() < deadline) {
    auto ev = generate(13, i++);
    auto err = rt.record(ev.view());
    if (err.code == errc::backpressure)
      pushed_back = true;
    else if (!err)
      add_reference(expected, ev);
    else
      FAIL() << to_string(err.code);
  }
  ASSERT_TRUE(pushed_back);
  EXPECT_GT(rt.snapshot().events_backpressured, 0u);
  redis.start();
  rt.stop(60s);
  EXPECT_EQ(rt.snapshot().pending_batches, 0u);
  // What the stop could not give Redis yet is in the journal: the next
  // start on the same state_dir replays it.
  runtime again;
  ASSERT_EQ(again.start(cfg), "");
  again.stop(60s);
  expect_exact(read_stage1(redis.url(), "t"), expected);
}

// Two instances started at once in one state_dir: each looks at every
// journal it finds for one to adopt, and may lock the other's brand-new
// file in the moment before its owner does. The owner waits for it (it is
// given back at once, having no records) instead of failing to start. An
// empty leftover is removed, not adopted; a journal a live owner holds
// still refuses a second owner, with a clear error.
TEST(Stage1, InstancesStartingTogetherInOneStateDir) {
  redis_server redis;
  auto cfg = local_config(redis, 50ms);
  const auto own = adapters::journal_path(cfg.state_dir, cfg.ns, cfg.instance_id);
  const auto leftover = adapters::journal_path(cfg.state_dir, cfg.ns, "gone-1234");
  ASSERT_TRUE(adapters::spill_journal::open(leftover, 1 << 20));
  auto other = adapters::spill_journal::open(own, 1 << 20);  // the other instance, mid-scan
  ASSERT_TRUE(other);
  std::thread gives_back([&] {
    std::this_thread::sleep_for(300ms);
    EXPECT_TRUE(other->remove());
  });
  runtime rt;
  EXPECT_EQ(rt.start(cfg), "");
  gives_back.join();
  EXPECT_EQ(rt.record(generate(5, 0).view()).code, errc::ok);
  EXPECT_FALSE(std::ifstream(leftover).good()) << "the empty leftover journal was kept";

  auto second = cfg;  // same instance id: the journal's owner is alive
  runtime twin;
  auto err = twin.start(second);
  EXPECT_NE(err.find("locked by another open journal"), std::string::npos) << err;
  rt.stop();
  expect_exact(read_stage1(redis.url(), "t"), reference(5, 0, 1));
}
