// tests/redis_client_test.cpp — adapters/redis_client against a real
// redis-server: URL parsing, binary safety, error replies, pipelines,
// timeouts, a killed and restarted server, AUTH.
#include "adapters/redis_client.hpp"
#include "adapters/redis_keyspace.hpp"
#include "tests/harness/servers.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <string>

using namespace std::chrono_literals;
using tally::adapters::parse_redis_url;
using tally::adapters::redis_client;
using tally::adapters::redis_endpoint;
using tally::adapters::redis_errc;
using tally::adapters::redis_reply;
namespace harness = tally::testing;

namespace {

constexpr auto client_timeout = std::chrono::milliseconds(2000);

int code(redis_errc c) { return static_cast<int>(c); }

redis_endpoint endpoint_of(const harness::redis_server& server) {
  auto ep = parse_redis_url(server.url());
  EXPECT_TRUE(ep.ok()) << server.url();
  return ep.ok() ? ep.value() : redis_endpoint{};
}

redis_client connect_or_die(const redis_endpoint& ep, std::chrono::milliseconds timeout = client_timeout) {
  auto client = redis_client::connect(ep, timeout);
  if (!client.ok())
    ADD_FAILURE() << "connect: " << client.error().message;
  return std::move(client.value());
}

} // namespace

// ---------------------------------------------------------------------------
// URL parsing (no server)

TEST(RedisUrl, ParsesFullForm) {
  auto ep = parse_redis_url("redis://alice:s3cret@cache.example:6380/4");
  ASSERT_TRUE(ep.ok()) << ep.error().message;
  EXPECT_EQ(ep->host, "cache.example");
  EXPECT_EQ(ep->port, 6380);
  EXPECT_EQ(ep->user, "alice");
  EXPECT_EQ(ep->password, "s3cret");
  EXPECT_EQ(ep->db, 4);
}

TEST(RedisUrl, AppliesDefaults) {
  auto ep = parse_redis_url("redis://localhost");
  ASSERT_TRUE(ep.ok()) << ep.error().message;
  EXPECT_EQ(ep->host, "localhost");
  EXPECT_EQ(ep->port, 6379);
  EXPECT_EQ(ep->user, "");
  EXPECT_EQ(ep->password, "");
  EXPECT_EQ(ep->db, 0);

  auto slash = parse_redis_url("redis://localhost:7000/");
  ASSERT_TRUE(slash.ok()) << slash.error().message;
  EXPECT_EQ(slash->port, 7000);
  EXPECT_EQ(slash->db, 0);
}

TEST(RedisUrl, PasswordOnlyAndEscapes) {
  auto ep = parse_redis_url("redis://:pw@h");
  ASSERT_TRUE(ep.ok()) << ep.error().message;
  EXPECT_EQ(ep->user, "");
  EXPECT_EQ(ep->password, "pw");

  auto escaped = parse_redis_url("redis://bob:p%40ss%3Aw%2Fd@h:1/2");
  ASSERT_TRUE(escaped.ok()) << escaped.error().message;
  EXPECT_EQ(escaped->user, "bob");
  EXPECT_EQ(escaped->password, "p@ss:w/d");

  // The last '@' ends the credentials, so an unescaped '@' still works.
  auto raw_at = parse_redis_url("redis://:p@ss@h:6390");
  ASSERT_TRUE(raw_at.ok()) << raw_at.error().message;
  EXPECT_EQ(raw_at->password, "p@ss");
  EXPECT_EQ(raw_at->host, "h");
  EXPECT_EQ(raw_at->port, 6390);
}

TEST(RedisUrl, AcceptsHostPortWithoutScheme) {
  auto ep = parse_redis_url("10.0.0.7:6390");
  ASSERT_TRUE(ep.ok()) << ep.error().message;
  EXPECT_EQ(ep->host, "10.0.0.7");
  EXPECT_EQ(ep->port, 6390);

  auto bare = parse_redis_url("redis-host");
  ASSERT_TRUE(bare.ok()) << bare.error().message;
  EXPECT_EQ(bare->host, "redis-host");
  EXPECT_EQ(bare->port, 6379);
}

TEST(RedisUrl, AcceptsBracketedIpv6) {
  auto ep = parse_redis_url("redis://[::1]:6381/1");
  ASSERT_TRUE(ep.ok()) << ep.error().message;
  EXPECT_EQ(ep->host, "::1");
  EXPECT_EQ(ep->port, 6381);
  EXPECT_EQ(ep->db, 1);
}

TEST(RedisUrl, RejectsBadUrlsNamingTheProblem) {
  struct bad_case {
    const char* url;
    const char* reason;  // a fragment the message must contain
  };
  const bad_case cases[] = {
      {"", "empty"},
      {"http://h:6379", "scheme"},
      {"rediss://h", "TLS"},
      {"redis://", "missing host"},
      {"redis://:6379", "missing host"},
      {"redis://h:", "port"},
      {"redis://h:0", "port"},
      {"redis://h:65536", "port"},
      {"redis://h:63x9", "port"},
      {"redis://h/x", "database"},
      {"redis://h/-1", "database"},
      {"redis://h/1/2", "database"},
      {"redis://user@h", "':'"},
      {"redis://u:%zz@h", "%-escape"},
      {"redis://h?db=1", "query"},
      {"redis://[::1:6379", "IPv6"},
  };
  for (const auto& c : cases) {
    auto ep = parse_redis_url(c.url);
    ASSERT_FALSE(ep.ok()) << "accepted: '" << c.url << "'";
    EXPECT_EQ(ep.error().code, code(redis_errc::bad_url)) << c.url;
    EXPECT_NE(ep.error().message.find(c.reason), std::string::npos)
        << c.url << " -> " << ep.error().message;
    if (*c.url != '\0') {
      EXPECT_NE(ep.error().message.find(c.url), std::string::npos) << ep.error().message;
    }
  }
}

TEST(RedisErrc, HasNames) {
  EXPECT_STREQ(to_string(redis_errc::timeout), "timeout");
  EXPECT_STREQ(to_string(redis_errc::reply_error), "reply_error");
}

// ---------------------------------------------------------------------------
// Against a server

class RedisClientTest : public ::testing::Test {
protected:
  harness::redis_server server_;
};

TEST_F(RedisClientTest, ConnectsAndPings) {
  auto client = connect_or_die(endpoint_of(server_));
  EXPECT_TRUE(client.connected());
  auto pong = client.command({"PING"});
  ASSERT_TRUE(pong.ok()) << pong.error().message;
  EXPECT_EQ(pong->type, redis_reply::kind::status);
  EXPECT_EQ(pong->str, "PONG");
}

TEST_F(RedisClientTest, SetGetIsBinarySafe) {
  auto client = connect_or_die(endpoint_of(server_));
  const std::string key("k\0ey\r\n", 6);
  const std::string value("v\0a\r\nl\0\xff", 9);
  auto set = client.command({"SET", key, value});
  ASSERT_TRUE(set.ok()) << set.error().message;
  EXPECT_EQ(set->str, "OK");

  auto get = client.command({"GET", key});
  ASSERT_TRUE(get.ok()) << get.error().message;
  EXPECT_EQ(get->type, redis_reply::kind::string);
  EXPECT_EQ(get->str, value);
  EXPECT_EQ(get->str.size(), 9u);

  // The key without its NUL tail is a different key.
  auto other = client.command({"GET", std::string("k")});
  ASSERT_TRUE(other.ok()) << other.error().message;
  EXPECT_TRUE(other->is_nil());

  const std::string big(1 << 20, '\0');
  ASSERT_TRUE(client.command({"SET", "big", big}).ok());
  auto strlen_reply = client.command({"STRLEN", "big"});
  ASSERT_TRUE(strlen_reply.ok());
  EXPECT_EQ(strlen_reply->type, redis_reply::kind::integer);
  EXPECT_EQ(strlen_reply->integer, 1 << 20);

  ASSERT_TRUE(client.command({"SET", "empty", ""}).ok());
  auto empty = client.command({"GET", "empty"});
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->type, redis_reply::kind::string);
  EXPECT_EQ(empty->str, "");
}

TEST_F(RedisClientTest, CopiesNestedArrays) {
  auto client = connect_or_die(endpoint_of(server_));
  ASSERT_TRUE(client.command({"RPUSH", "list", "a", std::string("b\0c", 3), "d"}).ok());
  auto range = client.command({"LRANGE", "list", "0", "-1"});
  ASSERT_TRUE(range.ok()) << range.error().message;
  ASSERT_EQ(range->type, redis_reply::kind::array);
  ASSERT_EQ(range->elements.size(), 3u);
  EXPECT_EQ(range->elements[1].str, std::string("b\0c", 3));

  // EXEC returns an array of replies, one of them itself an array.
  auto multi = client.pipeline({{"MULTI"}, {"INCR", "n"}, {"LRANGE", "list", "0", "0"}, {"EXEC"}});
  ASSERT_TRUE(multi.ok()) << multi.error().message;
  const auto& exec = multi->back();
  ASSERT_EQ(exec.type, redis_reply::kind::array);
  ASSERT_EQ(exec.elements.size(), 2u);
  EXPECT_EQ(exec.elements[0].integer, 1);
  ASSERT_EQ(exec.elements[1].type, redis_reply::kind::array);
  EXPECT_EQ(exec.elements[1].elements.at(0).str, "a");
}

TEST_F(RedisClientTest, ErrorReplySurfacesServerText) {
  auto client = connect_or_die(endpoint_of(server_));
  ASSERT_TRUE(client.command({"SET", "word", "not-a-number"}).ok());
  auto incr = client.command({"INCR", "word"});
  ASSERT_FALSE(incr.ok());
  EXPECT_EQ(incr.error().code, code(redis_errc::reply_error));
  EXPECT_NE(incr.error().message.find("not an integer"), std::string::npos) << incr.error().message;

  auto unknown = client.command({"NO.SUCH.COMMAND", "x"});
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.error().code, code(redis_errc::reply_error));
  EXPECT_NE(unknown.error().message.find("unknown command"), std::string::npos)
      << unknown.error().message;

  // An error reply is not a transport failure: the connection stays.
  EXPECT_TRUE(client.connected());
  EXPECT_TRUE(client.command({"PING"}).ok());

  auto empty = client.command({});
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.error().code, code(redis_errc::protocol));
}

TEST_F(RedisClientTest, PipelineKeepsOrderAndInlinesErrors) {
  auto client = connect_or_die(endpoint_of(server_));
  std::vector<std::string> values;
  for (int i = 0; i < 200; ++i)
    values.push_back("v" + std::to_string(i));
  std::vector<std::vector<std::string_view>> cmds;
  for (const auto& v : values)
    cmds.push_back({"RPUSH", "order", v});
  cmds.push_back({"INCR", "order"});  // WRONGTYPE in the middle
  cmds.push_back({"LLEN", "order"});
  cmds.push_back({"LINDEX", "order", "0"});
  cmds.push_back({"LINDEX", "order", "-1"});

  auto replies = client.pipeline(cmds);
  ASSERT_TRUE(replies.ok()) << replies.error().message;
  ASSERT_EQ(replies->size(), cmds.size());
  for (int i = 0; i < 200; ++i) {
    ASSERT_EQ((*replies)[i].type, redis_reply::kind::integer);
    EXPECT_EQ((*replies)[i].integer, i + 1);
  }
  EXPECT_EQ((*replies)[200].type, redis_reply::kind::error);
  EXPECT_NE((*replies)[200].str.find("WRONGTYPE"), std::string::npos) << (*replies)[200].str;
  EXPECT_EQ((*replies)[201].integer, 200);
  EXPECT_EQ((*replies)[202].str, "v0");
  EXPECT_EQ((*replies)[203].str, "v199");

  auto none = client.pipeline({});
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  EXPECT_TRUE(client.connected());
}

TEST_F(RedisClientTest, SelectsDatabaseFromUrl) {
  auto ep = endpoint_of(server_);
  ep.db = 3;
  auto db3 = connect_or_die(ep);
  ASSERT_TRUE(db3.command({"SET", "where", "db3"}).ok());

  auto db0 = connect_or_die(endpoint_of(server_));
  auto missing = db0.command({"GET", "where"});
  ASSERT_TRUE(missing.ok());
  EXPECT_TRUE(missing->is_nil());
  auto found = db0.command({"SELECT", "3"});
  ASSERT_TRUE(found.ok());
  EXPECT_EQ(db0.command({"GET", "where"})->str, "db3");

  ep.db = 100000;  // beyond the server's 16 databases
  auto refused = redis_client::connect(ep, client_timeout);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, code(redis_errc::connect_failed));
  EXPECT_NE(refused.error().message.find("SELECT"), std::string::npos) << refused.error().message;
}

TEST_F(RedisClientTest, CommandTimeoutDisconnectsThenReconnects) {
  auto client = connect_or_die(endpoint_of(server_), 200ms);
  auto started = std::chrono::steady_clock::now();
  // Blocks server-side for 2 s, far past the 200 ms client deadline.
  auto blocked = client.command({"BLPOP", "never-filled", "2"});
  auto waited = std::chrono::steady_clock::now() - started;
  ASSERT_FALSE(blocked.ok());
  EXPECT_EQ(blocked.error().code, code(redis_errc::timeout)) << blocked.error().message;
  EXPECT_LT(waited, 1500ms);
  EXPECT_GE(waited, 150ms);
  EXPECT_FALSE(client.connected());

  // The late BLPOP reply must not be taken for the PING's: a new connection.
  auto pong = client.command({"PING"});
  ASSERT_TRUE(pong.ok()) << pong.error().message;
  EXPECT_EQ(pong->str, "PONG");
  EXPECT_TRUE(client.connected());

  auto pipe = client.pipeline({{"PING"}, {"BLPOP", "never-filled", "2"}});
  ASSERT_FALSE(pipe.ok());
  EXPECT_EQ(pipe.error().code, code(redis_errc::timeout)) << pipe.error().message;
  EXPECT_FALSE(client.connected());
  auto after = client.pipeline({{"ECHO", "a"}, {"ECHO", "b"}});
  ASSERT_TRUE(after.ok()) << after.error().message;
  EXPECT_EQ((*after)[0].str, "a");
  EXPECT_EQ((*after)[1].str, "b");
}

TEST_F(RedisClientTest, KilledServerIsIoErrorAndRestartReconnects) {
  auto client = connect_or_die(endpoint_of(server_));
  ASSERT_TRUE(client.command({"SET", "survivor", "yes"}).ok());

  server_.kill();
  auto lost = client.command({"GET", "survivor"});
  ASSERT_FALSE(lost.ok());
  EXPECT_EQ(lost.error().code, code(redis_errc::io_error)) << lost.error().message;
  EXPECT_FALSE(client.connected());

  // While it is down, the one reconnect attempt is refused.
  auto down = client.command({"PING"});
  ASSERT_FALSE(down.ok());
  EXPECT_EQ(down.error().code, code(redis_errc::connect_failed)) << down.error().message;

  server_.start();
  auto back = client.command({"GET", "survivor"});
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(back->str, "yes");  // appendonly + fsync always kept it
  EXPECT_TRUE(client.connected());
}

TEST_F(RedisClientTest, WritingToKilledServerDoesNotRaiseSigpipe) {
  auto client = connect_or_die(endpoint_of(server_));
  ASSERT_TRUE(client.command({"PING"}).ok());
  server_.kill();
  // Several MB after the peer is gone: the first write draws an RST, the
  // next ones fail with EPIPE, which would raise SIGPIPE and kill the test.
  const std::string payload(64 * 1024, 'x');
  std::vector<std::vector<std::string_view>> cmds(64, {"SET", "k", payload});
  auto result = client.pipeline(cmds);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().code, code(redis_errc::io_error)) << result.error().message;
  EXPECT_FALSE(client.connected());
}

TEST_F(RedisClientTest, ExplicitReconnect) {
  auto client = connect_or_die(endpoint_of(server_));
  auto id1 = client.command({"CLIENT", "ID"});
  ASSERT_TRUE(id1.ok());
  ASSERT_TRUE(client.reconnect().ok());
  auto id2 = client.command({"CLIENT", "ID"});
  ASSERT_TRUE(id2.ok());
  EXPECT_NE(id1->integer, id2->integer);
}

TEST(RedisClient, ConnectRefusedWhenNothingListens) {
  redis_endpoint ep;
  ep.port = harness::free_port();
  auto client = redis_client::connect(ep, 500ms);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.error().code, code(redis_errc::connect_failed));
  EXPECT_NE(client.error().message.find(std::to_string(ep.port)), std::string::npos)
      << client.error().message;
}

TEST(RedisClient, MovedFromClientFailsCleanly) {
  harness::redis_server server;
  auto a = connect_or_die(endpoint_of(server));
  redis_client b = std::move(a);
  EXPECT_TRUE(b.command({"PING"}).ok());
  EXPECT_FALSE(a.connected());  // NOLINT(bugprone-use-after-move): tested on purpose
  EXPECT_FALSE(a.command({"PING"}).ok());
}

TEST(RedisClientAuth, RequirePass) {
  harness::redis_options opts;
  opts.appendonly = false;
  opts.requirepass = "s3cret";
  harness::redis_server server(opts);

  // url() carries the password; parsing it gives an AUTHing endpoint.
  auto ep = endpoint_of(server);
  EXPECT_EQ(ep.password, "s3cret");
  auto client = connect_or_die(ep);
  EXPECT_TRUE(client.command({"SET", "a", "1"}).ok());

  // ACL form: AUTH default <password>.
  auto with_user = ep;
  with_user.user = "default";
  auto acl_client = connect_or_die(with_user);
  EXPECT_EQ(acl_client.command({"GET", "a"})->str, "1");

  auto wrong = ep;
  wrong.password = "nope";
  auto refused = redis_client::connect(wrong, client_timeout);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, code(redis_errc::connect_failed));
  EXPECT_NE(refused.error().message.find("AUTH"), std::string::npos) << refused.error().message;

  // No password: connects, but commands get NOAUTH as a reply error.
  auto anonymous_ep = ep;
  anonymous_ep.password.clear();
  auto anonymous = connect_or_die(anonymous_ep);
  auto noauth = anonymous.command({"GET", "a"});
  ASSERT_FALSE(noauth.ok());
  EXPECT_EQ(noauth.error().code, code(redis_errc::reply_error));
  EXPECT_NE(noauth.error().message.find("NOAUTH"), std::string::npos) << noauth.error().message;

  // A reconnect repeats the AUTH.
  ASSERT_TRUE(client.reconnect().ok());
  EXPECT_EQ(client.command({"GET", "a"})->str, "1");
}

// A clean stop leaves nothing only the stopped instance could find: what its
// inflight list still holds (its flusher could not hand it back) goes back to
// batches as it leaves the instances set, since a leader's orphan scan only
// visits ids in that set.
TEST(RedisKeyspace, DeregisterReturnsWhatInflightStillHolds) {
  harness::redis_server server;
  auto c = connect_or_die(endpoint_of(server));
  tally::adapters::redis_keyspace keys("dereg");
  ASSERT_TRUE(keys.register_instance(c, "a").ok());
  ASSERT_TRUE(c.command({"RPUSH", keys.inflight("a"), "b1", "b2"}));
  ASSERT_TRUE(c.command({"RPUSH", keys.batches(), "b0"}));
  ASSERT_TRUE(keys.deregister(c, "a").ok());
  EXPECT_EQ(c.command({"LLEN", keys.inflight("a")})->integer, 0);
  auto all = c.command({"LRANGE", keys.batches(), "0", "-1"});
  ASSERT_TRUE(all);
  ASSERT_EQ(all->elements.size(), 3u);
  EXPECT_EQ(all->elements[0].str, "b0");
  EXPECT_EQ(all->elements[1].str, "b1");
  EXPECT_EQ(all->elements[2].str, "b2");
  EXPECT_EQ(c.command({"SISMEMBER", keys.instances(), "a"})->integer, 0);
  // The orphan scan has nothing left to find.
  auto orphans = keys.return_orphans(c, "leader");
  ASSERT_TRUE(orphans);
  EXPECT_TRUE(orphans->empty());
}
