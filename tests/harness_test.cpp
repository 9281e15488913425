// tests/harness_test.cpp — checks the real-server harness (tests/harness)
// against real redis-server, redis-sentinel and postgres processes: every
// later integration test trusts that these servers start, keep data across
// kill -9 where they should, fail over when told to, and never outlive the
// test.
#include "tests/harness/servers.hpp"
#include "tests/support/workload.hpp"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <netinet/in.h>
#include <string>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using namespace std::chrono_literals;
using namespace tally::testing;
namespace fs = std::filesystem;

/// Sends `request` bytes to 127.0.0.1:port and returns the first
/// `reply_bytes` bytes of the answer (fewer if the server closes). Written
/// against the socket API directly so that these tests do not trust the
/// harness' own RESP client to check the harness.
std::string raw_exchange(int port, const std::string& request, std::size_t reply_bytes) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return "socket failed";
  timeval timeout{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  std::string reply;
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0 &&
      ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size())) {
    char buf[512];
    while (reply.size() < reply_bytes) {
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0)
        break;
      reply.append(buf, static_cast<std::size_t>(n));
    }
  } else {
    reply = "connect/send failed";
  }
  ::close(fd);
  return reply;
}

/// Reads as many reply bytes as `expected` has, so a wrong reply shows up in
/// the assertion instead of as a hang.
std::string raw_command(int port, const std::string& request, const std::string& expected) {
  return raw_exchange(port, request, expected.size());
}

const std::string ping = "*1\r\n$4\r\nPING\r\n";

std::string set_cmd(const std::string& key, const std::string& value) {
  return "*3\r\n$3\r\nSET\r\n$" + std::to_string(key.size()) + "\r\n" + key + "\r\n$" +
         std::to_string(value.size()) + "\r\n" + value + "\r\n";
}

std::string get_cmd(const std::string& key) {
  return "*2\r\n$3\r\nGET\r\n$" + std::to_string(key.size()) + "\r\n" + key + "\r\n";
}

std::string bulk(const std::string& value) {
  return "$" + std::to_string(value.size()) + "\r\n" + value + "\r\n";
}

// --- processes -----------------------------------------------------------------

TEST(Harness, FreePortIsBindableAndClosed) {
  const int port = free_port();
  EXPECT_GT(port, 0);
  EXPECT_LT(port, 65536);
  EXPECT_FALSE(port_open(port));
}

TEST(Harness, SpawnProcessReportsExitStatusAndLog) {
  const auto dir = fs::temp_directory_path() / ("tally-harness-test-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const auto log = (dir / "out.log").string();

  const pid_t pid = spawn_process({"sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"}, log);
  const int status = wait_process(pid, 5s);
  ASSERT_NE(status, -1);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 3);
  std::ifstream in(log);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "to-stdout\nto-stderr\n");
  fs::remove_all(dir);
}

TEST(Harness, WaitProcessTimesOutOnRunningChild) {
  const pid_t pid = spawn_process({"sleep", "30"});
  EXPECT_EQ(wait_process(pid, 50ms), -1);
  EXPECT_TRUE(process_exists(pid));
  ::kill(pid, SIGKILL);
  const int status = wait_process(pid, 5s);
  ASSERT_NE(status, -1);
  EXPECT_TRUE(WIFSIGNALED(status));
  EXPECT_FALSE(process_exists(pid));
}

TEST(Harness, SpawnProcessThrowsForMissingBinary) {
  EXPECT_THROW(spawn_process({"tally-no-such-binary-here"}), std::runtime_error);
}

TEST(Harness, WaitForReturnsPredicateOutcome) {
  int calls = 0;
  EXPECT_TRUE(wait_for([&] { return ++calls == 3; }, 5s, 1ms));
  EXPECT_EQ(calls, 3);
  EXPECT_FALSE(wait_for([] { return false; }, 30ms, 5ms));
}

// --- redis -----------------------------------------------------------------------

TEST(RedisServer, AnswersPingOnRawSocket) {
  redis_server redis;
  ASSERT_TRUE(redis.running());
  EXPECT_TRUE(process_exists(redis.pid()));
  EXPECT_EQ(raw_command(redis.port(), ping, "+PONG\r\n"), "+PONG\r\n");
  EXPECT_EQ(redis.url(), "redis://127.0.0.1:" + std::to_string(redis.port()));

  const auto pong = redis_command(redis.port(), {"PING"});
  EXPECT_EQ(pong.type, '+');
  EXPECT_EQ(pong.value, "PONG");
  // The options the harness promises are the ones the server runs with.
  const auto persistence = redis_command(redis.port(), {"INFO", "persistence"});
  EXPECT_NE(persistence.value.find("aof_enabled:1\r\n"), std::string::npos);
  // Arrays: flat, nested, and the nil array.
  const auto save = redis_command(redis.port(), {"CONFIG", "GET", "save"});
  ASSERT_EQ(save.type, '*');
  ASSERT_EQ(save.elements.size(), 2u);
  EXPECT_EQ(save.elements[0].value, "save");
  EXPECT_EQ(save.elements[1].value, "");
  const auto nested = redis_command(redis.port(), {"EVAL", "return {1, {'a', 'bc'}, false, {}}", "0"});
  ASSERT_EQ(nested.type, '*');
  ASSERT_EQ(nested.elements.size(), 4u);
  EXPECT_EQ(nested.elements[0].type, ':');
  EXPECT_EQ(nested.elements[0].value, "1");
  ASSERT_EQ(nested.elements[1].type, '*');
  ASSERT_EQ(nested.elements[1].elements.size(), 2u);
  EXPECT_EQ(nested.elements[1].elements[1].value, "bc");
  EXPECT_TRUE(nested.elements[2].nil);  // Lua false is a nil bulk string
  EXPECT_EQ(nested.elements[3].type, '*');
  EXPECT_TRUE(nested.elements[3].elements.empty());
  EXPECT_FALSE(nested.elements[3].nil);
  const auto timed_out = redis_command(redis.port(), {"BLPOP", "tally:empty", "0.01"});
  EXPECT_EQ(timed_out.type, '*');
  EXPECT_TRUE(timed_out.nil);
  // The connection stays in step after an array: the next reply is PING's.
  EXPECT_EQ(redis_command(redis.port(), {"PING"}).value, "PONG");
}

TEST(RedisServer, AppendOnlyDataSurvivesKillAndStart) {
  redis_server redis;
  const int port = redis.port();
  const pid_t first_pid = redis.pid();
  ASSERT_EQ(raw_command(port, set_cmd("tally:k", "value-1"), "+OK\r\n"), "+OK\r\n");

  redis.kill();
  EXPECT_FALSE(redis.running());
  EXPECT_FALSE(process_exists(first_pid));
  EXPECT_FALSE(port_open(port));

  redis.start();
  EXPECT_EQ(redis.port(), port);
  EXPECT_NE(redis.pid(), first_pid);
  EXPECT_EQ(raw_command(port, get_cmd("tally:k"), bulk("value-1")), bulk("value-1"));

  // A clean stop keeps it too (SIGTERM path).
  redis.restart();
  EXPECT_EQ(raw_command(port, get_cmd("tally:k"), bulk("value-1")), bulk("value-1"));
}

TEST(RedisServer, WithoutAppendOnlyKillLosesData) {
  // Tests of "Redis lost acknowledged writes" rely on this.
  redis_server redis(redis_options{false, ""});
  ASSERT_EQ(raw_command(redis.port(), set_cmd("tally:k", "gone"), "+OK\r\n"), "+OK\r\n");
  redis.kill();
  redis.start();
  EXPECT_EQ(raw_command(redis.port(), get_cmd("tally:k"), "$-1\r\n"), "$-1\r\n");
}

TEST(RedisServer, TwoRunAtOnceOnDifferentPorts) {
  redis_server a;
  redis_server b;
  ASSERT_NE(a.port(), b.port());
  ASSERT_NE(a.dir(), b.dir());
  ASSERT_EQ(raw_command(a.port(), set_cmd("who", "a"), "+OK\r\n"), "+OK\r\n");
  ASSERT_EQ(raw_command(b.port(), set_cmd("who", "b"), "+OK\r\n"), "+OK\r\n");
  EXPECT_EQ(raw_command(a.port(), get_cmd("who"), bulk("a")), bulk("a"));
  EXPECT_EQ(raw_command(b.port(), get_cmd("who"), bulk("b")), bulk("b"));

  a.kill();  // one going down leaves the other alone
  EXPECT_EQ(raw_command(b.port(), ping, "+PONG\r\n"), "+PONG\r\n");
}

TEST(RedisServer, RequirePassRefusesUnauthenticated) {
  redis_server redis(redis_options{true, "s3cret"});
  EXPECT_EQ(raw_exchange(redis.port(), ping, 8).rfind("-NOAUTH", 0), 0u);
  const auto pong = redis_command(redis.port(), {"PING"}, "s3cret");
  EXPECT_EQ(pong.type, '+');
  EXPECT_EQ(pong.value, "PONG");
  EXPECT_EQ(redis.url(), "redis://:s3cret@127.0.0.1:" + std::to_string(redis.port()));
  redis.kill();
  redis.start();  // readiness probe authenticates too
  EXPECT_EQ(redis_command(redis.port(), {"PING"}, "s3cret").value, "PONG");
}

TEST(RedisServer, DestructorStopsProcessAndRemovesDir) {
  pid_t pid;
  std::string dir;
  int port;
  {
    redis_server redis;
    pid = redis.pid();
    dir = redis.dir();
    port = redis.port();
    ASSERT_TRUE(fs::is_directory(dir));
  }
  EXPECT_FALSE(process_exists(pid));
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_FALSE(port_open(port));
}

// A test binary that dies (crash, SIGKILL from a timeout) must not leak its
// servers: PR_SET_PDEATHSIG kills them with it.
TEST(RedisServer, DiesWithCrashedTestProcess) {
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  const pid_t test_process = ::fork();
  ASSERT_GE(test_process, 0);
  if (test_process == 0) {
    ::close(pipe_fds[0]);
    try {
      redis_server redis;
      const std::string message = std::to_string(redis.pid()) + " " + redis.dir() + "\n";
      [[maybe_unused]] auto written = ::write(pipe_fds[1], message.data(), message.size());
      ::pause();  // until SIGKILLed: no destructor runs
    } catch (...) {
    }
    ::_exit(1);
  }
  ::close(pipe_fds[1]);
  std::string message;
  char c;
  while (::read(pipe_fds[0], &c, 1) == 1 && c != '\n')
    message += c;
  ::close(pipe_fds[0]);
  const auto space = message.find(' ');
  ASSERT_NE(space, std::string::npos) << "child did not start redis";
  const pid_t redis_pid = std::stoi(message.substr(0, space));
  const std::string dir = message.substr(space + 1);
  ASSERT_TRUE(process_exists(redis_pid));

  ::kill(test_process, SIGKILL);
  ASSERT_NE(wait_process(test_process, 5s), -1);
  EXPECT_TRUE(wait_for([&] { return !process_exists(redis_pid); }, 5s));
  fs::remove_all(dir);  // a crashed test leaks its dir, nothing else
}

TEST(RedisServer, ReplicaFollowsItsPrimary) {
  redis_server primary(redis_options{false, "s3cret"});
  redis_options replica_opts{false, "s3cret"};
  replica_opts.replica_of_port = primary.port();
  redis_server replica(replica_opts);
  EXPECT_FALSE(primary.replica_link_up());
  ASSERT_TRUE(wait_for([&] { return replica.replica_link_up(); }, 30s));  // masterauth worked

  ASSERT_EQ(redis_command(primary.port(), {"SET", "tally:k", "replicated"}, "s3cret").value, "OK");
  EXPECT_TRUE(wait_for([&] { return redis_command(replica.port(), {"GET", "tally:k"}, "s3cret").value == "replicated"; },
                       30s));
  const auto role = redis_command(replica.port(), {"ROLE"}, "s3cret");
  ASSERT_EQ(role.type, '*');
  ASSERT_GE(role.elements.size(), 3u);
  EXPECT_EQ(role.elements[0].value, "slave");
  EXPECT_EQ(role.elements[2].value, std::to_string(primary.port()));
}

// --- redis-sentinel --------------------------------------------------------------

TEST(RedisSentinelServer, ReportsPrimaryAndFollowsFailover) {
  redis_server primary(redis_options{false, ""});
  redis_options replica_opts{false, ""};
  replica_opts.replica_of_port = primary.port();
  redis_server replica(replica_opts);
  // Sentinel learns replicas from the primary's INFO, at once when it
  // connects and every 10 s after: start it once the replica is attached.
  ASSERT_TRUE(wait_for([&] { return replica.replica_link_up(); }, 30s));

  redis_sentinel_server sentinel("tally-primary", primary.port());
  ASSERT_TRUE(sentinel.running());
  EXPECT_TRUE(process_exists(sentinel.pid()));
  EXPECT_NE(sentinel.port(), primary.port());
  EXPECT_EQ(sentinel.url(), "redis+sentinel://127.0.0.1:" + std::to_string(sentinel.port()) + "/tally-primary");
  // It really is a Sentinel, and runs with the config the harness promises.
  EXPECT_NE(redis_command(sentinel.port(), {"INFO", "server"}).value.find("redis_mode:sentinel"), std::string::npos);
  const auto settings = redis_command(sentinel.port(), {"SENTINEL", "MASTER", "tally-primary"});
  ASSERT_EQ(settings.type, '*');
  std::map<std::string, std::string> fields;
  for (std::size_t i = 0; i + 1 < settings.elements.size(); i += 2)
    fields[settings.elements[i].value] = settings.elements[i + 1].value;
  EXPECT_EQ(fields["quorum"], "1");
  EXPECT_EQ(fields["down-after-milliseconds"], "1000");
  EXPECT_EQ(fields["failover-timeout"], "5000");

  EXPECT_EQ(sentinel.master_address(), std::make_pair(std::string("127.0.0.1"), primary.port()));
  ASSERT_TRUE(sentinel.wait_for_replicas(1, 30s));
  EXPECT_FALSE(sentinel.wait_for_replicas(2, 50ms));

  const auto started = std::chrono::steady_clock::now();
  sentinel.failover();
  ASSERT_TRUE(wait_for([&] { return sentinel.master_address().second == replica.port(); }, 30s));
  std::cout << "[ info     ] SENTINEL FAILOVER until the replica is named: "
            << std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count()
            << " ms\n";
  EXPECT_EQ(redis_command(replica.port(), {"ROLE"}).elements.at(0).value, "master");
  // Not waited for: the old primary becomes a replica only at Sentinel's
  // next INFO to it, up to 10 s later, and says "master" until then.
}

TEST(RedisSentinelServer, FailoverWithoutReplicaThrows) {
  redis_server primary(redis_options{false, ""});
  redis_sentinel_server sentinel("lonely", primary.port());
  try {
    sentinel.failover();
    ADD_FAILURE() << "failover without a replica succeeded";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("NOGOODSLAVE"), std::string::npos) << e.what();
  }
  EXPECT_EQ(sentinel.master_address().second, primary.port());
}

TEST(RedisSentinelServer, UnknownMasterAddressIsEmpty) {
  redis_server primary(redis_options{false, ""});
  redis_sentinel_server sentinel("known", primary.port());
  const auto reply = redis_command(sentinel.port(), {"SENTINEL", "get-master-addr-by-name", "unknown"});
  EXPECT_TRUE(reply.nil);
  EXPECT_EQ(sentinel.master_address().first, "127.0.0.1");
}

TEST(RedisSentinelServer, RestartKeepsPortAndRewrittenConfig) {
  redis_server primary(redis_options{false, ""});
  pid_t last_pid;
  std::string dir;
  int port;
  {
    redis_sentinel_server sentinel("tally-primary", primary.port(), 1, 1000ms, 5000ms, "sentinel-pw");
    port = sentinel.port();
    dir = sentinel.dir();
    EXPECT_EQ(sentinel.url(), "redis+sentinel://127.0.0.1:" + std::to_string(port) +
                                  "/tally-primary?sentinel_password=sentinel-pw");
    EXPECT_EQ(raw_exchange(port, ping, 8).rfind("-NOAUTH", 0), 0u);
    const pid_t first_pid = sentinel.pid();

    // Sentinel rewrites its config with what it learned (here: its id).
    std::ifstream conf(dir + "/sentinel.conf");
    const std::string text((std::istreambuf_iterator<char>(conf)), std::istreambuf_iterator<char>());
    EXPECT_NE(text.find("sentinel myid "), std::string::npos) << text;

    sentinel.kill();
    EXPECT_FALSE(sentinel.running());
    EXPECT_FALSE(process_exists(first_pid));
    EXPECT_FALSE(port_open(port));
    sentinel.start();
    EXPECT_EQ(sentinel.port(), port);
    EXPECT_NE(sentinel.pid(), first_pid);
    EXPECT_EQ(sentinel.master_address().second, primary.port());

    sentinel.stop();
    EXPECT_FALSE(port_open(port));
    sentinel.start();
    EXPECT_EQ(sentinel.master_address().second, primary.port());
    last_pid = sentinel.pid();
  }
  EXPECT_FALSE(process_exists(last_pid));
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_FALSE(port_open(port));
}

TEST(RedisSentinelServer, StartFailureThrowsWithTheLog) {
  redis_server primary(redis_options{false, ""});
  try {
    redis_sentinel_server sentinel("tally-primary", primary.port(), 0);  // Sentinel refuses quorum 0
    ADD_FAILURE() << "started with quorum 0";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("exited while starting"), std::string::npos) << what;
    EXPECT_NE(what.find("sentinel.log"), std::string::npos) << what;
    EXPECT_NE(what.find("Quorum"), std::string::npos) << what;  // Sentinel's own words
  }
}

// --- postgres --------------------------------------------------------------------

TEST(PostgresServer, SelectRestartKillAndCleanup) {
  pid_t first_pid;
  std::string dir;
  int port;
  {
    const auto started = std::chrono::steady_clock::now();
    postgres_server pg;
    const auto startup = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - started);
    RecordProperty("postgres_initdb_and_start_ms", static_cast<int>(startup.count()));
    std::cout << "[ info     ] postgres initdb + start + CREATE DATABASE: " << startup.count() << " ms\n";

    first_pid = pg.pid();
    dir = pg.dir();
    port = pg.port();
    ASSERT_TRUE(pg.running());
    EXPECT_EQ(pg.url(), "postgresql://postgres@127.0.0.1:" + std::to_string(port) + "/tally");
    EXPECT_EQ(pg.psql("select 1"), "1\n");
    EXPECT_EQ(pg.psql("select current_database()"), "tally\n");
    EXPECT_EQ(pg.psql("show fsync"), "off\n");
    EXPECT_EQ(pg.psql("show max_connections"), "200\n");
    EXPECT_THROW(pg.psql("select * from no_such_table"), std::runtime_error);

    pg.psql("create table t (v int primary key)");
    pg.psql("insert into t values (1)");

    // Clean restart (SIGINT fast shutdown).
    pg.restart();
    EXPECT_EQ(pg.port(), port);
    EXPECT_NE(pg.pid(), first_pid);
    EXPECT_EQ(pg.psql("select sum(v) from t"), "1\n");

    // Crash: what was committed before kill -9 is there after recovery.
    pg.psql("insert into t values (2)");
    const pid_t killed_pid = pg.pid();
    const auto restarted = std::chrono::steady_clock::now();
    pg.kill();
    EXPECT_FALSE(pg.running());
    EXPECT_FALSE(process_exists(killed_pid));
    EXPECT_FALSE(port_open(port));
    pg.start();
    std::cout << "[ info     ] postgres kill + start (crash recovery): "
              << std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - restarted).count()
              << " ms\n";
    EXPECT_EQ(pg.psql("select count(*), sum(v) from t"), "2|3\n");
    pg.psql("insert into t values (3)");  // and it takes writes again
    EXPECT_EQ(pg.psql("select sum(v) from t"), "6\n");
    first_pid = pg.pid();
  }
  EXPECT_FALSE(process_exists(first_pid));
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_FALSE(port_open(port));
}

} // namespace

// The hashed accumulator the large references and read_stage1 use gives
// exactly the rows of the plain std::map path (add_reference): both sides
// of an exact-totals check go through it, so a fault in it must show here.
TEST(Harness, RowsAccumulatorMatchesTheMapReference) {
  rollup_rows plain;
  rows_accumulator events, rows;
  for (uint64_t i = 0; i < 20000; ++i) {
    auto ev = generate(5, i);
    add_reference(plain, ev);
    events.add(ev);
    rollup_rows one;
    add_reference(one, ev);
    for (const auto& [table, table_rows] : one)
      for (const auto& [key, values] : table_rows)
        rows.add(table, key, values);
  }
  size_t n = 0;
  for (const auto& [table, table_rows] : plain)
    n += table_rows.size();
  EXPECT_GT(n, 20000u);
  EXPECT_EQ(diff_rows(plain, events.take()), "");
  EXPECT_EQ(diff_rows(plain, rows.take()), "");
  EXPECT_EQ(diff_rows(plain, reference_range(5, 0, 20000)), "");
  EXPECT_NE(diff_rows(plain, reference_range(5, 0, 19999)), "");
}
