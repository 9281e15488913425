// tests/resp_server_test.cpp — the RESP server end to end: a real
// redis-server (stage 1), an in-process runtime with the RESP listener on a
// free port, and real clients: hiredis with pipelining (adapters/
// redis_client), raw sockets for malformed input, and the redis-cli and
// redis-benchmark binaries. Totals are checked exactly by decoding every
// stage-1 batch (read_stage1) against the independent reference.
#include "actors/resp_commands.hpp"
#include "actors/resp_server.hpp"
#include "adapters/redis_client.hpp"
#include "runtime/runtime_internal.hpp"
#include "tally/tally.hpp"
#include "tests/harness/servers.hpp"
#include "tests/support/batches.hpp"
#include "tests/support/workload.hpp"

#include <caf/all.hpp>
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <atomic>
#include <fcntl.h>
#include <fstream>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <set>
#include <algorithm>
#include <sstream>
#include <sys/resource.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>

using namespace tally;
using namespace tally::testing;
using namespace std::chrono_literals;

namespace {

const std::string ns = "resp";

/// A runtime with the RESP server, against its own redis-server.
class server_fixture {
public:
  explicit server_fixture(resp_options opts = {}, config cfg = {}, redis_options ropts = {})
    : redis_(ropts) {
    cfg.ns = ns;
    cfg.redis_urls = {redis_.url()};
    cfg.state_dir = tally::testing::temp_dir("tally-state-");
    if (cfg.buffer_interval == config{}.buffer_interval)
      cfg.buffer_interval = 100ms;
    if (auto err = start_with_io(rt_, cfg); !err.empty())
      throw std::runtime_error("runtime start: " + err);
    opts.port = 0;
    listener_ = spawn_resp_server(system_of(rt_), make_resp_backend(rt_), opts);
    if (!listener_.error.empty())
      throw std::runtime_error("listen: " + listener_.error);
  }

  ~server_fixture() { stop(); }

  /// Closes the listener and every connection, then drains the runtime:
  /// afterwards every accepted event is in Redis.
  void stop() {
    if (stopped_)
      return;
    stopped_ = true;
    caf::anon_send_exit(listener_.acceptor, caf::exit_reason::user_shutdown);
    listener_.acceptor = nullptr;
    rt_.stop();
  }

  /// Stops only the listener (its connections answer what they owe, then
  /// close); the runtime keeps running.
  void stop_listener() {
    caf::anon_send_exit(listener_.acceptor, caf::exit_reason::user_shutdown);
  }

  int port() const { return listener_.port; }
  redis_server& redis() { return redis_; }
  runtime& rt() { return rt_; }
  stage1_contents stage1() { return read_stage1(redis_.url(), ns); }

private:
  redis_server redis_;
  runtime rt_;
  resp_listener listener_;
  bool stopped_ = false;
};

std::string encode(const std::vector<std::string>& args) {
  std::string s = "*" + std::to_string(args.size()) + "\r\n";
  for (auto& a : args)
    s += "$" + std::to_string(a.size()) + "\r\n" + a + "\r\n";
  return s;
}

/// A blocking loopback TCP client that speaks raw bytes.
class raw_client {
public:
  explicit raw_client(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd_ < 0)
      throw std::runtime_error("socket failed");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      ::close(fd_);
      throw std::runtime_error("connect failed: " + std::string(strerror(errno)));
    }
  }
  raw_client(const raw_client&) = delete;
  ~raw_client() {
    if (fd_ >= 0)
      ::close(fd_);
  }

  bool send(const std::string& bytes) {
    size_t off = 0;
    while (off < bytes.size()) {
      ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n <= 0)
        return false;
      off += static_cast<size_t>(n);
    }
    return true;
  }

  /// Reads until `pred(received)` holds, the peer closes, or `deadline`.
  template <class Pred>
  const std::string& read_until(Pred pred, std::chrono::milliseconds deadline = 5000ms) {
    auto until = std::chrono::steady_clock::now() + deadline;
    while (!pred(in_) && !closed_) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
      if (left.count() <= 0)
        break;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0)
        continue;
      char buf[65536];
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0)
        closed_ = true;
      else
        in_.append(buf, static_cast<size_t>(n));
    }
    return in_;
  }

  /// Reads whatever has arrived, without waiting.
  void drain() {
    char buf[65536];
    for (;;) {
      ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
      if (n <= 0) {
        if (n == 0)
          closed_ = true;
        return;
      }
      in_.append(buf, static_cast<size_t>(n));
    }
  }

  /// Reads until `n` bytes arrived (or close/deadline).
  const std::string& read_bytes(size_t n, std::chrono::milliseconds deadline = 5000ms) {
    return read_until([n](const std::string& s) { return s.size() >= n; }, deadline);
  }

  /// Reads until the peer closes; true if it did before `deadline`.
  bool wait_closed(std::chrono::milliseconds deadline = 5000ms) {
    read_until([](const std::string&) { return false; }, deadline);
    return closed_;
  }

  /// Reads one complete line (a simple reply) and removes it from the input.
  std::string line(std::chrono::milliseconds deadline = 5000ms) {
    read_until([](const std::string& s) { return s.find("\r\n") != std::string::npos; }, deadline);
    auto at = in_.find("\r\n");
    if (at == std::string::npos)
      return "<no line: " + in_ + (closed_ ? ", closed>" : ">");
    std::string l = in_.substr(0, at);
    in_.erase(0, at + 2);
    return l;
  }

  int fd() const { return fd_; }
  std::string& input() { return in_; }
  bool closed() const { return closed_; }

private:
  int fd_ = -1;
  std::string in_;
  bool closed_ = false;
};

size_t count_of(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t at = hay.find(needle); at != std::string::npos; at = hay.find(needle, at + needle.size()))
    ++n;
  return n;
}

rollup_rows reference(uint64_t seed, uint64_t from, uint64_t to) {
  return reference_range(seed, from, to);
}

void expect_exact(const stage1_contents& got, const rollup_rows& expected) {
  EXPECT_TRUE(got.errors.empty()) << got.errors.front();
  EXPECT_TRUE(got.duplicate_ids.empty()) << "duplicate batch id " << got.duplicate_ids.front();
  EXPECT_EQ(diff_rows(expected, got.rows), "");
}

adapters::redis_client hiredis_client(int port, const std::string& password = "") {
  adapters::redis_endpoint ep;
  ep.port = port;
  ep.password = password;
  auto c = adapters::redis_client::connect(ep, 10000ms);
  if (!c)
    throw std::runtime_error("hiredis connect: " + c.error().message);
  return std::move(*c);
}

/// Sends events [from, to) of `seed` through hiredis in pipelines of `batch`;
/// returns how many replies were "OK".
size_t pipeline_events(adapters::redis_client& c, uint64_t seed, uint64_t from, uint64_t to, size_t batch) {
  size_t ok = 0;
  for (uint64_t i = from; i < to;) {
    std::vector<std::vector<std::string>> owned;
    for (; i < to && owned.size() < batch; ++i)
      owned.push_back(generate(seed, i).resp_args());
    std::vector<std::vector<std::string_view>> cmds;
    for (auto& a : owned)
      cmds.emplace_back(a.begin(), a.end());
    auto replies = c.pipeline(cmds);
    if (!replies)
      throw std::runtime_error("pipeline: " + replies.error().message);
    for (auto& r : *replies)
      ok += r.type == adapters::redis_reply::kind::status && r.str == "OK";
  }
  return ok;
}

/// Reads one whole RESP2 or RESP3 reply and renders it on one line: the
/// type byte and the text of simple values; "$<body>" for strings;
/// aggregates as "<header>[v v ...]".
std::string value(raw_client& c) {
  std::string h = c.line();
  if (h.empty() || h[0] == '<')
    return h;
  char t = h[0];
  if (t == '$' || t == '=') {
    long n = std::stol(h.substr(1));
    if (n < 0)
      return h;
    c.read_bytes(static_cast<size_t>(n) + 2);
    std::string body = c.input().substr(0, static_cast<size_t>(n));
    c.input().erase(0, std::min(c.input().size(), static_cast<size_t>(n) + 2));
    return std::string(1, t) + body;
  }
  if (t == '*' || t == '%' || t == '~') {
    long n = std::stol(h.substr(1));
    if (n < 0)
      return h;
    long k = t == '%' ? 2 * n : n;
    std::string out = h + "[";
    for (long i = 0; i < k; ++i)
      out += (i ? " " : "") + value(c);
    return out + "]";
  }
  return h;
}

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

/// A runtime that pushes back soon once Redis is down: one shard with small
/// queues and key limits (the generated events have more distinct keys),
/// one pending batch and a 1 MiB spill journal.
config backpressure_config() {
  config cfg;
  cfg.shards = 1;
  cfg.queue_capacity = 1024;
  cfg.max_keys_per_shard = 1024;
  cfg.max_pending_batches = 1;
  cfg.journal_max_bytes = 1 << 20;
  cfg.buffer_interval = std::chrono::milliseconds(20);
  cfg.retry_backoff_max = std::chrono::milliseconds(100);
  return cfg;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string temp_file(const std::string& name) {
  return ::testing::TempDir() + "/resp-" + name + "-" + std::to_string(getpid()) + ".log";
}

/// Runs a client binary to completion; returns its output (stdout+stderr).
std::string run_tool(const std::vector<std::string>& argv, std::chrono::milliseconds deadline = 120s) {
  auto log = temp_file(argv[0]);
  std::remove(log.c_str());
  pid_t pid = spawn_process(argv, log);
  int status = wait_process(pid, deadline);
  std::string out = slurp(log);
  std::remove(log.c_str());
  if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw std::runtime_error(argv[0] + " failed (status " + std::to_string(status) + "): " + out);
  return out;
}

} // namespace

// -- the happy path with real clients ------------------------------------------

// 20,000 generated events pipelined through hiredis (500 per round trip) on
// two connections; every reply is +OK and stage 1 holds exactly the truth.
TEST(RespServer, HiredisPipelinedEventsExact) {
  server_fixture fx;
  auto a = hiredis_client(fx.port());
  auto b = hiredis_client(fx.port());
  size_t ok = 0;
  std::thread other([&] { ok += pipeline_events(b, 21, 10000, 20000, 500); });
  size_t ok_a = pipeline_events(a, 21, 0, 10000, 500);
  other.join();
  EXPECT_EQ(ok_a + ok, 20000u);
  fx.stop();
  expect_exact(fx.stage1(), reference(21, 0, 20000));
  EXPECT_EQ(fx.rt().snapshot().events_accepted, 20000u);
}

// The real redis-cli (one process per event, and its inline-free RESP) and
// redis-benchmark (-P 32 -c 50, a fixed event with an explicit ts) both work;
// totals exact.
TEST(RespServer, RedisCliAndRedisBenchmark) {
  server_fixture fx;
  auto port = std::to_string(fx.port());
  for (uint64_t i = 0; i < 20; ++i) {
    std::vector<std::string> argv{"redis-cli", "-p", port};
    for (auto& a : generate(33, i).resp_args())
      argv.push_back(a);
    EXPECT_EQ(run_tool(argv), "OK\n") << "event " << i;
  }
  EXPECT_EQ(run_tool({"redis-cli", "-p", port, "PING"}), "PONG\n");
  EXPECT_NE(run_tool({"redis-cli", "-p", port, "INFO"}).find("redis_version:7.0.0-tally"), std::string::npos);
  EXPECT_NE(run_tool({"redis-cli", "-p", port, "TALLY.STATUS"}).find("events_accepted:"), std::string::npos);
  EXPECT_NE(run_tool({"redis-cli", "-p", port, "tally.record", "key", "k", "spend", "x"})
              .find("ERR bad_number spend: not a decimal number"), std::string::npos);

  // 32 * 50 * 25 = 40,000 requests: whole pipelines on every connection.
  const uint64_t n = 40000;
  auto out = run_tool({"redis-benchmark", "-p", port, "-P", "32", "-c", "50", "-n", std::to_string(n), "-q",
                       "TALLY.RECORD", "key", "bench-key", "model", "gpt-4o", "spend", "0.00042",
                       "prompt_tokens", "120", "completion_tokens", "30", "ts", "1795391400000"});
  EXPECT_NE(out.find("requests per second"), std::string::npos) << out;
  fx.stop();

  rollup_rows expected = reference(33, 0, 20);
  generated_event bench;
  bench.ids[static_cast<int>(field::key)] = "bench-key";
  bench.ids[static_cast<int>(field::model)] = "gpt-4o";
  bench.spend = 420000;
  bench.prompt_tokens = 120;
  bench.completion_tokens = 30;
  bench.ts_ms = 1795391400000LL;
  for (uint64_t i = 0; i < n; ++i)
    add_reference(expected, bench);
  expect_exact(fx.stage1(), expected);
}

// Replies come in request order across command kinds, and inline commands
// work as in Redis.
TEST(RespServer, RepliesInOrderAndInlineCommands) {
  server_fixture fx;
  raw_client c(fx.port());
  std::string req = encode(generate(5, 0).resp_args()) + "PING\r\n" + encode({"ping", "hi"})
                    + encode({"TALLY.RECORD", "key"}) + encode(generate(5, 1).resp_args())
                    + encode({"HELLO", "4"}) + encode({"SELECT", "0"}) + encode({"CLIENT", "SETNAME", "gw1"})
                    + encode({"CLIENT", "GETNAME"}) + encode({"COMMAND", "COUNT"}) + "  \r\n"
                    + encode({"QUIT"}) + encode(generate(5, 2).resp_args());
  ASSERT_TRUE(c.send(req));
  EXPECT_EQ(c.line(), "+OK");
  EXPECT_EQ(c.line(), "+PONG");
  EXPECT_EQ(c.line(), "$2");
  EXPECT_EQ(c.line(), "hi");
  EXPECT_EQ(c.line(), "-ERR missing_value key: field name without a value");
  EXPECT_EQ(c.line(), "+OK");
  EXPECT_EQ(c.line(), "-NOPROTO sorry, this protocol version is not supported");
  EXPECT_EQ(c.line(), "+OK");
  EXPECT_EQ(c.line(), "+OK");
  EXPECT_EQ(c.line(), "$3");
  EXPECT_EQ(c.line(), "gw1");
  EXPECT_EQ(c.line(), ":" + std::to_string(resp_command_table().size()));
  EXPECT_EQ(c.line(), "+OK");  // QUIT
  EXPECT_TRUE(c.wait_closed());
  EXPECT_EQ(c.input(), "");    // nothing after QUIT ran
  fx.stop();
  expect_exact(fx.stage1(), reference(5, 0, 2));
}

// -- bad input and limits ------------------------------------------------------

// Every malformed input gets its documented error; field errors keep the
// connection, protocol errors close it; the server stays up and the good
// events sent around the bad ones (on the same and other connections) are
// counted exactly.
TEST(RespServer, MalformedInputMatrix) {
  resp_options opts;
  opts.max_args = 64;
  opts.max_bulk_bytes = 4096;
  server_fixture fx(opts);
  auto good = hiredis_client(fx.port());
  uint64_t next_good = 0;
  auto send_good = [&](uint64_t n) {
    EXPECT_EQ(pipeline_events(good, 41, next_good, next_good + n, 50), n);
    next_good += n;
  };
  struct field_case {
    std::vector<std::string> args;
    std::string reply;
  };
  std::vector<field_case> field_cases = {
    {{"TALLY.RECORD", "key", "k", "colour", "red"}, "-ERR unknown_field colour: unknown field"},
    {{"TALLY.RECORD", "key", "k", "spend"}, "-ERR missing_value spend: field name without a value"},
    {{"TALLY.RECORD", "key", "k", "spend", "1.2.3"}, "-ERR bad_number spend: not a decimal number"},
    {{"TALLY.RECORD", "key", "k", "prompt_tokens", "12x"}, "-ERR bad_number prompt_tokens: not a non-negative integer"},
    {{"TALLY.RECORD", "key", "k", "spend", "-0.5"}, "-ERR negative_value spend: negative values are not allowed"},
    {{"TALLY.RECORD", "key", "k", "prompt_tokens", "-5"}, "-ERR negative_value prompt_tokens: negative values are not allowed"},
    {{"TALLY.RECORD", "key", "k", "key", "k2"}, "-ERR repeated_field key: field given twice"},
    {{"TALLY.RECORD", "spend", "1"}, "-ERR no_entity event: an event must name at least one of key user team org end_user tags model"},
    {{"TALLY.RECORD", "key", "k", "status", "maybe"}, "-ERR bad_status status: status must be ok or error"},
    {{"TALLY.RECORD", "key", std::string("a\x01", 2)}, "-ERR bad_id key: id must be UTF-8 without control characters"},
    {{"TALLY.RECORD", "key", "k", "spend", "1e400"}, ""},  // overflow or bad_number, checked below
    {{"TALLY.RECORD"}, "-ERR no_entity event: an event must name at least one of key user team org end_user tags model"},
    {{"NOSUCH", "x"}, "-ERR unknown command 'NOSUCH', with args beginning with: 'x'"},
    {{"\x01\x02garbage"}, "-ERR unknown command '??garbage', with args beginning with:"},
  };
  {
    raw_client c(fx.port());
    for (auto& fc : field_cases) {
      send_good(7);
      ASSERT_TRUE(c.send(encode(fc.args)));
      auto line = c.line();
      if (fc.reply.empty())
        EXPECT_TRUE(line.rfind("-ERR overflow spend:", 0) == 0 || line.rfind("-ERR bad_number spend:", 0) == 0) << line;
      else
        EXPECT_EQ(line, fc.reply);
      // The connection goes on: a good event on it is taken.
      ASSERT_TRUE(c.send(encode(generate(42, &fc - field_cases.data()).resp_args())));
      EXPECT_EQ(c.line(), "+OK");
    }
    // Binary garbage with a newline is an (unknown) inline command; the
    // connection survives it too.
    ASSERT_TRUE(c.send(std::string("\xff\xfe\x00\x10 zz\n", 8)));
    EXPECT_EQ(c.line().rfind("-ERR unknown command", 0), 0u);
    ASSERT_TRUE(c.send("PING\r\n"));
    EXPECT_EQ(c.line(), "+PONG");
  }
  struct protocol_case {
    std::string bytes;
    std::string reply;
  };
  std::vector<protocol_case> protocol_cases = {
    {"*2\r\n$12\r\nTALLY.RECORD\r\n$5000\r\n", "-ERR Protocol error: invalid bulk length (argument over 4096 bytes)"},
    {"*65\r\n", "-ERR Protocol error: invalid multibulk length (more than 64 arguments)"},
    {"*2\r\n$4\r\nPING\r\n:5\r\n", "-ERR Protocol error: expected '$', got ':'"},
    {"*1\r\n*1\r\n$4\r\nPING\r\n", "-ERR Protocol error: expected '$', got '*'"},
    {"*1\r\n$x\r\n", "-ERR Protocol error: invalid bulk length"},
    {"*abc\r\n", "-ERR Protocol error: invalid multibulk length"},
    {"*1\r\n$4\r\nPINGxx", "-ERR Protocol error: bulk argument not followed by CRLF"},
    {"PING \"unterminated\r\n", "-ERR Protocol error: unbalanced quotes in request"},
    {std::string(70000, '\x01'), "-ERR Protocol error: too big inline request"},
  };
  for (auto& pc : protocol_cases) {
    send_good(5);
    raw_client c(fx.port());
    // A good event first on the same connection: counted, answered first.
    ASSERT_TRUE(c.send(encode(generate(43, &pc - protocol_cases.data()).resp_args()) + pc.bytes));
    EXPECT_EQ(c.line(), "+OK") << pc.reply;
    EXPECT_EQ(c.line(), pc.reply);
    EXPECT_TRUE(c.wait_closed()) << pc.reply;
  }
  // A command cut mid-way, then disconnect: not counted, nothing breaks.
  for (int i = 0; i < 20; ++i) {
    raw_client c(fx.port());
    auto full = encode(generate(44, i).resp_args());
    ASSERT_TRUE(c.send(full.substr(0, full.size() * static_cast<size_t>(i + 1) / 22)));
  }
  send_good(10);
  EXPECT_EQ(run_tool({"redis-cli", "-p", std::to_string(fx.port()), "PING"}), "PONG\n");
  fx.stop();

  rollup_rows expected = reference(41, 0, next_good);
  merge_rows(expected, reference(42, 0, field_cases.size()));
  merge_rows(expected, reference(43, 0, protocol_cases.size()));
  expect_exact(fx.stage1(), expected);
  auto m = snapshot_resp_metrics();
  EXPECT_GE(m.protocol_errors, protocol_cases.size());
  EXPECT_GE(m.rejections[static_cast<int>(errc::unknown_field)], 1u);
  EXPECT_GE(m.rejections[static_cast<int>(errc::negative_value)], 2u);
}

// 2,100 connections opened at once, each sending one distinct event: all
// answered, all counted exactly.
TEST(RespServer, ThousandsOfConnectionsAtOnce) {
  rlimit lim{};
  getrlimit(RLIMIT_NOFILE, &lim);
  if (lim.rlim_cur < 8192 && lim.rlim_max >= 8192) {
    lim.rlim_cur = 8192;
    setrlimit(RLIMIT_NOFILE, &lim);
  }
  ASSERT_GE(lim.rlim_cur, 5000u) << "need file descriptors for 2 x 2100 sockets";
  server_fixture fx;
  const int n = 2100;
  std::vector<std::unique_ptr<raw_client>> clients;
  for (int i = 0; i < n; ++i)
    clients.push_back(std::make_unique<raw_client>(fx.port()));
  for (int i = 0; i < n; ++i)
    ASSERT_TRUE(clients[i]->send(encode(generate(51, i).resp_args())));
  int ok = 0;
  for (auto& c : clients)
    ok += c->line(20000ms) == "+OK";
  EXPECT_EQ(ok, n);
  EXPECT_GE(snapshot_resp_metrics().connections_current, static_cast<uint64_t>(n));
  clients.clear();
  // Every connection ends when its client goes (the gauge drops back).
  EXPECT_TRUE(wait_for([] { return snapshot_resp_metrics().connections_current == 0; }, 20000ms))
    << snapshot_resp_metrics().connections_current;
  fx.stop();
  expect_exact(fx.stage1(), reference(51, 0, n));
}

// Past max_connections a client gets "-ERR max number of clients reached" and
// is closed; closing one frees its slot.
TEST(RespServer, MaxConnections) {
  resp_options opts;
  opts.max_connections = 5;
  server_fixture fx(opts);
  std::vector<std::unique_ptr<raw_client>> clients;
  for (int i = 0; i < 5; ++i) {
    clients.push_back(std::make_unique<raw_client>(fx.port()));
    ASSERT_TRUE(clients.back()->send("PING\r\n"));
    ASSERT_EQ(clients.back()->line(), "+PONG");  // accepted and counted
  }
  raw_client extra(fx.port());
  EXPECT_EQ(extra.line(), "-ERR max number of clients reached");
  EXPECT_TRUE(extra.wait_closed());
  clients.pop_back();
  ASSERT_TRUE(wait_for([&] {
    raw_client again(fx.port());
    again.send("PING\r\n");
    return again.line(1000ms) == "+PONG";
  }, 5000ms));
}

// With requirepass, nothing but AUTH, HELLO, PING and QUIT runs before AUTH;
// refused events are not counted; AUTH, HELLO AUTH, hiredis with a password
// and redis-cli -a all work.
TEST(RespServer, RequirePass) {
  resp_options opts;
  opts.requirepass = "s3cret";
  server_fixture fx(opts);
  {
    raw_client c(fx.port());
    ASSERT_TRUE(c.send(encode(generate(61, 100).resp_args()) + encode({"TALLY.ACK", "durable"}) + "PING\r\n"
                       + encode({"AUTH", "wrong"}) + encode({"HELLO", "2"}) + encode({"HELLO", "2", "AUTH", "default", "nope"})
                       + encode(generate(61, 101).resp_args()) + encode({"AUTH", "s3cret"})
                       + encode(generate(61, 0).resp_args())));
    EXPECT_EQ(c.line(), "-NOAUTH Authentication required.");
    EXPECT_EQ(c.line(), "-NOAUTH Authentication required.");
    EXPECT_EQ(c.line(), "+PONG");
    EXPECT_EQ(c.line(), "-WRONGPASS invalid username-password pair or user is disabled.");
    EXPECT_EQ(c.line().rfind("-NOAUTH HELLO must be called", 0), 0u);
    EXPECT_EQ(c.line(), "-WRONGPASS invalid username-password pair or user is disabled.");
    EXPECT_EQ(c.line(), "-NOAUTH Authentication required.");
    EXPECT_EQ(c.line(), "+OK");  // AUTH
    EXPECT_EQ(c.line(), "+OK");  // event 0 counted
  }
  {
    // Unauthenticated clients cannot make the server buffer big requests.
    raw_client c(fx.port());
    ASSERT_TRUE(c.send("*41\r\n"));
    EXPECT_EQ(c.line(), "-ERR Protocol error: invalid multibulk length (more than 40 arguments)");
    EXPECT_TRUE(c.wait_closed());
  }
  {
    raw_client c(fx.port());
    ASSERT_TRUE(c.send(encode({"HELLO", "2", "AUTH", "default", "s3cret", "SETNAME", "gw"}) + encode(generate(61, 1).resp_args())));
    EXPECT_EQ(c.line(), "*14");
    c.read_until([](const std::string& s) { return s.find("+OK\r\n") != std::string::npos; });
    EXPECT_NE(c.input().find("$7\r\nversion\r\n"), std::string::npos);
  }
  auto authed = hiredis_client(fx.port(), "s3cret");
  EXPECT_EQ(pipeline_events(authed, 61, 2, 50, 16), 48u);
  auto port = std::to_string(fx.port());
  auto args = generate(61, 50).resp_args();
  std::vector<std::string> argv{"redis-cli", "--no-auth-warning", "-a", "s3cret", "-p", port};
  argv.insert(argv.end(), args.begin(), args.end());
  EXPECT_EQ(run_tool(argv), "OK\n");
  std::vector<std::string> noauth{"redis-cli", "-p", port};
  auto args2 = generate(61, 102).resp_args();
  noauth.insert(noauth.end(), args2.begin(), args2.end());
  EXPECT_NE(run_tool(noauth).find("NOAUTH"), std::string::npos);
  fx.stop();
  expect_exact(fx.stage1(), reference(61, 0, 51));  // 100..102 refused, not counted
}

// Idle connections are closed after idle_timeout.
TEST(RespServer, IdleTimeout) {
  resp_options opts;
  opts.idle_timeout = std::chrono::seconds(1);
  server_fixture fx(opts);
  raw_client c(fx.port());
  ASSERT_TRUE(c.send("PING\r\n"));
  EXPECT_EQ(c.line(), "+PONG");
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(c.wait_closed(5000ms));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 900ms);
}

// A request bigger than max_buffered_bytes (each argument within limits)
// is refused and the connection closed.
TEST(RespServer, BufferedBytesLimit) {
  resp_options opts;
  opts.max_buffered_bytes = 64 * 1024;
  opts.max_bulk_bytes = 16 * 1024;
  server_fixture fx(opts);
  raw_client c(fx.port());
  std::string arg(16000, 'a');
  std::string req = "*20\r\n$4\r\nECHO\r\n";
  for (int i = 0; i < 19; ++i)
    req += "$16000\r\n" + arg + "\r\n";
  c.send(req);
  EXPECT_EQ(c.line(), "-ERR Protocol error: request larger than the connection buffer limit of 65536 bytes");
  EXPECT_TRUE(c.wait_closed());
}

// A client that reads its replies in bursts makes the connection stop
// reading (more than max_buffered_bytes unsent) and start again, hundreds
// of times. Every pause must end, and each reply arrives, in order. (The
// lost-token trap of CAF 0.17 described in resp_connection.cpp is timing
// dependent; this test runs the resume paths often, tallyd_flood_test runs
// the case that stalled.)
TEST(RespServer, ReadingResumesAfterEveryOutputPause) {
  resp_options opts;
  opts.max_buffered_bytes = 4096;
  opts.max_bulk_bytes = 1024;
  server_fixture fx(opts);
  const int n = 100000;
  const std::string payload(200, 'x');
  std::string all;
  for (int i = 0; i < n; ++i)
    all += encode({"ECHO", std::to_string(i) + payload});
  std::string expected;
  for (int i = 0; i < n; ++i) {
    std::string body = std::to_string(i) + payload;
    expected += "$" + std::to_string(body.size()) + "\r\n" + body + "\r\n";
  }
  auto pauses_before = snapshot_resp_metrics().output_pauses;
  raw_client c(fx.port());
  std::thread writer([&] { c.send(all); });
  // Sleep, then drain everything at once: while the client sleeps the
  // socket fills and the server's write waits; when it drains, the server
  // can read a burst of requests (replies past the limit: pause) and write
  // it all (resume) in one multiplexer round.
  auto until = std::chrono::steady_clock::now() + 60s;
  while (c.input().size() < expected.size() && !c.closed() && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(1ms);
    c.drain();
  }
  writer.join();
  EXPECT_GT(snapshot_resp_metrics().output_pauses, pauses_before) << "the test never paused output";
  ASSERT_EQ(c.input().size(), expected.size()) << "replies stopped: the connection stalled";
  EXPECT_TRUE(c.input() == expected) << "replies out of order or damaged";
}

// -- backpressure and durability ----------------------------------------------

// Redis down, tiny queues and the smallest spill journal: once the journal
// is full a client pipelining 60,000 events is slowed (the server stops
// reading, the client's writes block); nothing is refused; once Redis is
// back the journal is replayed and every event is counted exactly.
TEST(RespServer, BackpressureStopsReadingAndLosesNothing) {
  server_fixture fx({}, backpressure_config());
  fx.redis().stop();
  const uint64_t n = 60000;
  auto pauses_before = snapshot_resp_metrics().backpressure_pauses;
  raw_client c(fx.port());
  std::atomic<bool> sent_all{false};
  std::thread writer([&] {
    std::string all;
    for (uint64_t i = 0; i < n; ++i)
      all += encode(generate(71, i).resp_args());
    c.send(all);
    sent_all = true;
  });
  // Ingest fills up; the server stops reading; replies stop short of n.
  ASSERT_TRUE(wait_for([&] { return snapshot_resp_metrics().backpressure_pauses > pauses_before; }, 20000ms));
  c.read_until([](const std::string&) { return false; }, 1500ms);
  size_t stalled = count_of(c.input(), "+OK\r\n");
  EXPECT_LT(stalled, n);
  EXPECT_FALSE(sent_all.load()) << "the client's writes should block while the server does not read";
  EXPECT_EQ(c.input().find("-ERR"), std::string::npos);
  fx.redis().start();
  c.read_until([&](const std::string& s) { return count_of(s, "+OK\r\n") >= n; }, 120000ms);
  writer.join();
  EXPECT_EQ(count_of(c.input(), "+OK\r\n"), n);
  EXPECT_EQ(c.input().find("-ERR"), std::string::npos);
  fx.stop();
  expect_exact(fx.stage1(), reference(71, 0, n));
}

// TALLY.ACK durable: each +OK arrives only once the event's batch is in
// Redis — read_stage1 right after the reply already holds it. Replies stay
// in order around buffered ones and other commands.
TEST(RespServer, DurableReplyAfterBatchIsInRedis) {
  config cfg;
  cfg.buffer_interval = std::chrono::milliseconds(5000);  // durable must not wait for it
  server_fixture fx({}, cfg);
  auto c = hiredis_client(fx.port());
  ASSERT_TRUE(c.command({"TALLY.ACK", "durable"}).ok());
  for (uint64_t round = 0; round < 5; ++round) {
    auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(pipeline_events(c, 81, round * 40, round * 40 + 40, 40), 40u);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 4000ms) << "durable waited for the buffer interval";
    expect_exact(fx.stage1(), reference(81, 0, round * 40 + 40));
  }
  // Ordering: durable, PING, durable, switch to buffered, buffered.
  raw_client r(fx.port());
  ASSERT_TRUE(r.send(encode({"TALLY.ACK", "durable"}) + encode(generate(82, 0).resp_args()) + "PING\r\n"
                     + encode({"TALLY.RECORD", "key"}) + encode(generate(82, 1).resp_args())
                     + encode({"TALLY.ACK", "buffered"}) + encode(generate(82, 2).resp_args())));
  // The buffered event after them may share their batch, so stage 1 holds
  // the durable ones and possibly the later ones: check "at least".
  auto holds = [&](uint64_t durable_done) {
    auto got = fx.stage1().rows;
    for (uint64_t extra = durable_done; extra <= 3; ++extra) {
      rollup_rows want = reference(81, 0, 200);
      merge_rows(want, reference(82, 0, extra));
      if (diff_rows(want, got).empty())
        return true;
    }
    return false;
  };
  EXPECT_EQ(r.line(), "+OK");  // TALLY.ACK
  EXPECT_EQ(r.line(), "+OK");  // durable event 0
  EXPECT_TRUE(holds(1));
  EXPECT_EQ(r.line(), "+PONG");
  EXPECT_EQ(r.line(), "-ERR missing_value key: field name without a value");
  EXPECT_EQ(r.line(), "+OK");  // durable event 1
  EXPECT_TRUE(holds(2));
  EXPECT_EQ(r.line(), "+OK");  // TALLY.ACK buffered
  EXPECT_EQ(r.line(), "+OK");  // buffered event 2
  fx.stop();
  rollup_rows all = reference(81, 0, 200);
  merge_rows(all, reference(82, 0, 3));
  expect_exact(fx.stage1(), all);
}

// -- transactions, RESP3, reply order ------------------------------------------

// MULTI/EXEC counts every queued event or none: a refused event fails the
// whole EXEC (its error at its place, "not counted" at the others), a
// malformed command aborts it (EXECABORT), DISCARD drops it. Only the first
// transaction's events are in stage 1.
TEST(RespServer, TransactionsCountAllOrNothing) {
  server_fixture fx;
  raw_client c(fx.port());
  const std::string not_counted =
    "-ERR not_counted event: this transaction counted nothing (another command in it was refused)";
  auto bad = encode({"TALLY.RECORD", "key", "k", "spend", "abc"});
  ASSERT_TRUE(c.send(encode({"MULTI"}) + encode(generate(91, 0).resp_args()) + encode({"PING"})
                     + encode(generate(91, 1).resp_args()) + encode({"EXEC"})));
  EXPECT_EQ(c.line(), "+OK");
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(c.line(), "+QUEUED");
  EXPECT_EQ(value(c), "*3[+OK +PONG +OK]");

  ASSERT_TRUE(c.send(encode({"MULTI"}) + encode(generate(91, 2).resp_args()) + bad
                     + encode(generate(91, 3).resp_args()) + encode({"EXEC"})));
  EXPECT_EQ(c.line(), "+OK");
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(c.line(), "+QUEUED");
  EXPECT_EQ(value(c), "*3[" + not_counted + " -ERR bad_number spend: not a decimal number " + not_counted + "]");

  ASSERT_TRUE(c.send(encode({"MULTI"}) + encode(generate(91, 4).resp_args()) + encode({"NOSUCH", "x"})
                     + encode({"ECHO"}) + encode({"EXEC"})));
  EXPECT_EQ(c.line(), "+OK");
  EXPECT_EQ(c.line(), "+QUEUED");
  EXPECT_EQ(c.line(), "-ERR unknown command 'NOSUCH', with args beginning with: 'x'");
  EXPECT_EQ(c.line(), "-ERR wrong number of arguments for 'echo' command");
  EXPECT_EQ(c.line(), "-EXECABORT Transaction discarded because of previous errors.");

  ASSERT_TRUE(c.send(encode({"MULTI"}) + encode(generate(91, 5).resp_args()) + encode({"MULTI"})
                     + encode({"DISCARD"}) + encode({"EXEC"}) + encode({"DISCARD"}) + encode({"WATCH", "k"})
                     + encode({"UNWATCH"})));
  EXPECT_EQ(c.line(), "+OK");
  EXPECT_EQ(c.line(), "+QUEUED");
  EXPECT_EQ(c.line(), "-ERR MULTI calls can not be nested");
  EXPECT_EQ(c.line(), "+OK");  // DISCARD
  EXPECT_EQ(c.line(), "-ERR EXEC without MULTI");
  EXPECT_EQ(c.line(), "-ERR DISCARD without MULTI");
  EXPECT_TRUE(starts_with(c.line(), "-ERR WATCH is not supported"));
  EXPECT_EQ(c.line(), "+OK");  // UNWATCH

  // Durable acknowledgement: the EXEC array waits for Redis as a whole.
  ASSERT_TRUE(c.send(encode({"TALLY.ACK", "durable"}) + encode({"MULTI"}) + encode(generate(91, 6).resp_args())
                     + encode({"EXEC"}) + encode({"PING"})));
  EXPECT_EQ(c.line(), "+OK");
  EXPECT_EQ(c.line(), "+OK");
  EXPECT_EQ(c.line(), "+QUEUED");
  EXPECT_EQ(value(c), "*1[+OK]");
  rollup_rows want = reference(91, 0, 2);
  merge_rows(want, reference(91, 6, 7));
  EXPECT_EQ(diff_rows(want, fx.stage1().rows), "") << "the durable EXEC answered before its event was in Redis";
  EXPECT_EQ(c.line(), "+PONG");
  fx.stop();
  expect_exact(fx.stage1(), want);
}

// After HELLO 3 every command answers in RESP3 (maps and nulls in their
// RESP3 form); RESET goes back to RESP2. The test covers every command of
// the table, so a new command cannot skip its RESP3 form unnoticed.
TEST(RespServer, Resp3AfterHelloForEveryCommand) {
  server_fixture fx;
  raw_client c(fx.port());
  std::set<std::string> covered;
  auto ask = [&](std::vector<std::string> args) {
    std::string name = args[0];
    std::transform(name.begin(), name.end(), name.begin(), ::toupper);
    covered.insert(name);
    EXPECT_TRUE(c.send(encode(args)));
    return value(c);
  };
  auto hello = ask({"HELLO", "3"});
  EXPECT_TRUE(starts_with(hello, "%7[$server $tally $version")) << hello;
  EXPECT_NE(hello.find("$proto :3"), std::string::npos) << hello;
  EXPECT_EQ(ask({"PING"}), "+PONG");
  EXPECT_EQ(ask({"ECHO", "hi"}), "$hi");
  EXPECT_EQ(ask(generate(92, 0).resp_args()), "+OK");
  EXPECT_EQ(ask({"TALLY.ACK", "buffered"}), "+OK");
  EXPECT_EQ(ask({"SELECT", "0"}), "+OK");
  EXPECT_EQ(ask({"SELECT", "1"}), "-ERR DB index is out of range (tally has one database: SELECT 0)");
  EXPECT_EQ(ask({"CLIENT", "GETNAME"}), "_");
  EXPECT_EQ(ask({"CLIENT", "SETNAME", "gw"}), "+OK");
  EXPECT_EQ(ask({"CLIENT", "SETINFO", "LIB-NAME", "x"}), "+OK");
  EXPECT_EQ(ask({"CLIENT", "MAINT_NOTIFICATIONS", "on"}), "+OK");
  EXPECT_TRUE(starts_with(ask({"CLIENT", "TRACKING", "on"}), "-ERR client-side caching is not supported"));
  EXPECT_TRUE(starts_with(ask({"CLIENT", "ID"}), ":"));
  EXPECT_NE(ask({"CLIENT", "INFO"}).find("name=gw db=0 resp=3"), std::string::npos);
  EXPECT_EQ(ask({"CONFIG", "GET", "save"}), "%1[$save $]");
  EXPECT_EQ(ask({"COMMAND", "INFO", "nosuch"}), "*1[_]");
  EXPECT_EQ(ask({"COMMAND", "COUNT"}), ":" + std::to_string(resp_command_table().size()));
  auto info = ask({"INFO"});
  for (const char* f : {"connected_clients:", "blocked_clients:", "used_memory:", "total_commands_processed:",
                        "total_connections_received:", "db0:keys="})
    EXPECT_NE(info.find(f), std::string::npos) << f << " missing from INFO";
  EXPECT_TRUE(starts_with(ask({"TALLY.STATUS"}), "$events_accepted:"));
  EXPECT_TRUE(starts_with(ask({"TALLY.DB", "LIST"}), "*1[%7[$url $redis://")) ;
  auto instances = ask({"TALLY.INSTANCES"});
  EXPECT_TRUE(starts_with(instances, "*")) << instances;
  EXPECT_TRUE(instances == "*0[]" || instances.find("[%") != std::string::npos) << instances;
  auto leader = ask({"TALLY.LEADER"});
  EXPECT_TRUE(starts_with(leader, "%2[$instance ")) << leader;
  // No Postgres here: reads are refused with an error, in either protocol
  // (their RESP3 map form is checked in read_path_test).
  EXPECT_TRUE(starts_with(ask({"TALLY.GET", "user", "bob"}), "-"));
  EXPECT_TRUE(starts_with(ask({"TALLY.MGET", "user", "a", "b"}), "-"));
  EXPECT_TRUE(starts_with(ask({"AUTH", "pw"}), "-ERR AUTH <password> called without any password"));
  EXPECT_EQ(ask({"MULTI"}), "+OK");
  EXPECT_EQ(ask(generate(92, 1).resp_args()), "+QUEUED");
  EXPECT_EQ(ask({"CONFIG", "GET", "appendonly"}), "+QUEUED");
  EXPECT_EQ(ask({"EXEC"}), "*2[+OK %1[$appendonly $no]]");
  EXPECT_EQ(ask({"MULTI"}), "+OK");
  EXPECT_EQ(ask({"DISCARD"}), "+OK");
  EXPECT_TRUE(starts_with(ask({"WATCH", "k"}), "-ERR WATCH is not supported"));
  EXPECT_EQ(ask({"UNWATCH"}), "+OK");
  EXPECT_EQ(ask({"RESET"}), "+RESET");
  EXPECT_EQ(ask({"CLIENT", "GETNAME"}), "$-1");  // RESP2 again, name cleared
  EXPECT_EQ(ask({"CONFIG", "GET", "save"}), "*2[$save $]");
  EXPECT_EQ(ask({"QUIT"}), "+OK");
  EXPECT_TRUE(c.wait_closed());
  for (const auto& cmd : resp_command_table())
    EXPECT_TRUE(covered.count(std::string(cmd.name))) << cmd.name << " has no RESP3 check";
  fx.stop();
  expect_exact(fx.stage1(), reference(92, 0, 2));
}

// Durable and buffered replies interleaved with other commands and errors,
// while ingest pushes back (Redis down, small queues): every reply arrives,
// in request order, and stage 1 holds exactly the accepted events.
TEST(RespServer, DurableAndBufferedRepliesInOrderUnderBackpressure) {
  server_fixture fx({}, backpressure_config());
  fx.redis().stop();
  const uint64_t n = 40000;
  std::string req;
  std::vector<std::string> want;
  bool durable = false;
  for (uint64_t i = 0; i < n; ++i) {
    if (i % 500 == 0) {
      durable = !durable;
      req += encode({"TALLY.ACK", durable ? "durable" : "buffered"});
      want.push_back("+OK");
    }
    req += encode(generate(93, i).resp_args());
    want.push_back("+OK");
    if (i % 97 == 0) {
      req += encode({"PING", std::to_string(i)});
      want.push_back("$" + std::to_string(std::to_string(i).size()));
      want.push_back(std::to_string(i));
    }
    if (i % 89 == 0) {
      req += encode({"TALLY.RECORD", "key"});
      want.push_back("-ERR missing_value key: field name without a value");
    }
  }
  auto pauses_before = snapshot_resp_metrics().backpressure_pauses;
  raw_client c(fx.port());
  std::thread writer([&] { c.send(req); });
  ASSERT_TRUE(wait_for([&] { return snapshot_resp_metrics().backpressure_pauses > pauses_before; }, 30000ms));
  fx.redis().start();
  size_t mismatches = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    auto got = c.line(60000ms);
    if (got != want[i] && mismatches++ < 5)
      ADD_FAILURE() << "reply " << i << ": got '" << got << "', want '" << want[i] << "'";
  }
  writer.join();
  EXPECT_EQ(mismatches, 0u);
  fx.stop();
  expect_exact(fx.stage1(), reference(93, 0, n));
}

// A durable run whose last event is refused by the runtime (an id it has
// not seen before fails its check there, after the command was parsed):
// that event gets its error, the earlier ones their +OK; nothing waits for
// a later read.
TEST(RespServer, DurableRunEndingInARefusalDoesNotHang) {
  server_fixture fx;
  raw_client c(fx.port());
  auto refused = generate(95, 2);
  refused.ids[static_cast<int>(field::user)] = "never\x01seen";
  ASSERT_TRUE(c.send(encode({"TALLY.ACK", "durable"}) + encode(generate(95, 0).resp_args())
                     + encode(generate(95, 1).resp_args()) + encode(refused.resp_args())));
  EXPECT_EQ(c.line(), "+OK");  // TALLY.ACK
  EXPECT_EQ(c.line(), "+OK");
  EXPECT_EQ(c.line(), "+OK");
  EXPECT_EQ(c.line(), "-ERR bad_id user: id must be UTF-8 without control characters");
  fx.stop();
  expect_exact(fx.stage1(), reference(95, 0, 2));
}

// Stopping the listener while durable replies wait for Redis: the
// connection stops reading, answers every reply it owes once Redis takes the
// events, then closes. Every +OK is an event counted, and nothing else is.
TEST(RespServer, ListenerStopAnswersWaitingDurableReplies) {
  server_fixture fx({}, backpressure_config());
  fx.redis().stop();
  const uint64_t n = 60000;
  std::string req = encode({"TALLY.ACK", "durable"});
  for (uint64_t i = 0; i < n; ++i)
    req += encode(generate(94, i).resp_args());
  auto pauses_before = snapshot_resp_metrics().backpressure_pauses;
  raw_client c(fx.port());
  std::thread writer([&] { c.send(req); });
  ASSERT_TRUE(wait_for([&] { return snapshot_resp_metrics().backpressure_pauses > pauses_before; }, 30000ms));
  // Once the journal is full too, the accepted events' batches can go
  // nowhere: their durable replies wait.
  ASSERT_TRUE(wait_for([&] { return fx.rt().snapshot().journal_full == 1; }, 60000ms));
  EXPECT_EQ(c.line(), "+OK");  // TALLY.ACK
  fx.stop_listener();
  c.read_until([](const std::string&) { return false; }, 1000ms);
  EXPECT_FALSE(c.closed()) << "closed with durable replies owed: " << c.input().size() << " bytes";
  fx.redis().start();
  EXPECT_TRUE(c.wait_closed(60000ms));
  ::shutdown(c.fd(), SHUT_RDWR);  // the writer thread may still be blocked in send()
  writer.join();
  size_t ok = count_of(c.input(), "+OK\r\n");
  EXPECT_EQ(c.input().find("-"), std::string::npos) << c.input().substr(0, 200);
  EXPECT_EQ(ok * 5, c.input().size()) << "only +OK replies";
  EXPECT_GT(ok, 0u);
  EXPECT_LT(ok, n);
  fx.stop();
  expect_exact(fx.stage1(), reference(94, 0, ok));
}
