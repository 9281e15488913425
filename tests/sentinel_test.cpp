// tests/sentinel_test.cpp — adapters/redis_sentinel against real
// redis-sentinel and redis-server processes: finding the primary, following
// a failover, skipping Sentinels that are down, slow or do not know the
// master, and the errors when none can answer.
#include "adapters/redis_client.hpp"
#include "adapters/redis_sentinel.hpp"
#include "tests/harness/servers.hpp"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <chrono>
#include <iostream>
#include <netinet/in.h>
#include <string>
#include <sys/socket.h>
#include <unistd.h>

using namespace std::chrono_literals;
using tally::adapters::parse_redis_database;
using tally::adapters::redis_client;
using tally::adapters::redis_database_spec;
using tally::adapters::redis_endpoint;
using tally::adapters::redis_errc;
using tally::adapters::resolve_sentinel_primary;
namespace harness = tally::testing;

namespace {

constexpr auto lookup_timeout = std::chrono::milliseconds(2000);
// Generous: a failover here takes about a second, CI machines can be slower.
constexpr auto failover_deadline = std::chrono::milliseconds(30000);
const std::string master = "tally-primary";

int code(redis_errc c) { return static_cast<int>(c); }

std::string sentinel_address(const harness::redis_sentinel_server& s) {
  return "127.0.0.1:" + std::to_string(s.port());
}

redis_database_spec spec_of(const std::string& url) {
  auto spec = parse_redis_database(url);
  if (!spec.ok()) {
    ADD_FAILURE() << url << ": " << spec.error().message;
    return {};
  }
  return spec.value();
}

harness::redis_options replica_of(const harness::redis_server& primary) {
  harness::redis_options opts;
  opts.appendonly = false;
  opts.replica_of_port = primary.port();
  return opts;
}

/// A socket that listens but never accepts or answers: connect() succeeds
/// through the backlog, every command then waits for the timeout.
class silent_listener {
public:
  silent_listener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd_, 8) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
      throw std::runtime_error("silent_listener: cannot listen");
    port_ = ntohs(addr.sin_port);
  }
  ~silent_listener() { ::close(fd_); }
  silent_listener(const silent_listener&) = delete;
  silent_listener& operator=(const silent_listener&) = delete;
  int port() const { return port_; }

private:
  int fd_ = -1;
  int port_ = 0;
};

} // namespace

TEST(SentinelResolve, FindsThePrimaryWithTheSpecsCredentialsAndDb) {
  harness::redis_server primary(harness::redis_options{false, ""});
  harness::redis_sentinel_server sentinel(master, primary.port());

  auto spec = spec_of("redis+sentinel://" + sentinel_address(sentinel) + "/" + master + "/3?weight=5");
  auto found = resolve_sentinel_primary(spec, lookup_timeout);
  ASSERT_TRUE(found.ok()) << found.error().message;
  EXPECT_EQ(found->host, "127.0.0.1");
  EXPECT_EQ(found->port, primary.port());
  EXPECT_EQ(found->db, 3);

  // The endpoint is what a client connects with: db 3 on that primary.
  auto client = redis_client::connect(*found, lookup_timeout);
  ASSERT_TRUE(client.ok()) << client.error().message;
  ASSERT_TRUE(client->command({"SET", "where", "db3"}).ok());
  EXPECT_EQ(harness::redis_command(primary.port(), {"GET", "where"}).nil, true);  // not in db 0

  // The ROLE check connects as the database's clients will: a password the
  // primary does not have is refused there, and the error says so.
  auto wrong = spec_of("redis+sentinel://u:nope@" + sentinel_address(sentinel) + "/" + master);
  auto refused = resolve_sentinel_primary(wrong, lookup_timeout);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, code(redis_errc::connect_failed));
  EXPECT_NE(refused.error().message.find("AUTH"), std::string::npos) << refused.error().message;
  EXPECT_NE(refused.error().message.find("127.0.0.1:" + std::to_string(primary.port())), std::string::npos)
      << refused.error().message;
}

TEST(SentinelResolve, FollowsAFailover) {
  harness::redis_server primary(harness::redis_options{false, ""});
  harness::redis_server replica(replica_of(primary));
  ASSERT_TRUE(harness::wait_for([&] { return replica.replica_link_up(); }, failover_deadline));
  harness::redis_sentinel_server sentinel(master, primary.port());
  const auto spec = spec_of(sentinel.url());

  auto before = resolve_sentinel_primary(spec, lookup_timeout);
  ASSERT_TRUE(before.ok()) << before.error().message;
  EXPECT_EQ(before->port, primary.port());

  ASSERT_TRUE(sentinel.wait_for_replicas(1, failover_deadline));
  const auto started = std::chrono::steady_clock::now();
  sentinel.failover();
  std::string last_error;
  const bool moved = harness::wait_for(
      [&] {
        auto now = resolve_sentinel_primary(spec, lookup_timeout);
        if (!now.ok())
          last_error = now.error().message;
        return now.ok() && now->port == replica.port();
      },
      failover_deadline, 50ms);
  ASSERT_TRUE(moved) << "last error: " << last_error;
  std::cout << "[ info     ] failover until resolve_sentinel_primary names the replica: "
            << std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count()
            << " ms\n";
  EXPECT_EQ(harness::redis_command(replica.port(), {"ROLE"}).elements.at(0).value, "master");
  auto write = redis_client::connect(*resolve_sentinel_primary(spec, lookup_timeout), lookup_timeout);
  ASSERT_TRUE(write.ok()) << write.error().message;
  EXPECT_TRUE(write->command({"SET", "after-failover", "1"}).ok());
}

TEST(SentinelResolve, SecondSentinelAnswersWhenTheFirstIsDown) {
  harness::redis_server primary(harness::redis_options{false, ""});
  harness::redis_sentinel_server first(master, primary.port());
  harness::redis_sentinel_server second(master, primary.port());
  const auto spec =
      spec_of("redis+sentinel://" + sentinel_address(first) + "," + sentinel_address(second) + "/" + master);

  first.stop();
  auto found = resolve_sentinel_primary(spec, lookup_timeout);
  ASSERT_TRUE(found.ok()) << found.error().message;
  EXPECT_EQ(found->port, primary.port());
}

TEST(SentinelResolve, SentinelThatDoesNotKnowTheMasterIsSkipped) {
  harness::redis_server primary(harness::redis_options{false, ""});
  harness::redis_server elsewhere(harness::redis_options{false, ""});
  harness::redis_sentinel_server other_master("some-other-master", elsewhere.port());
  harness::redis_sentinel_server knows(master, primary.port());
  const auto spec =
      spec_of("redis+sentinel://" + sentinel_address(other_master) + "," + sentinel_address(knows) + "/" + master);

  auto found = resolve_sentinel_primary(spec, lookup_timeout);
  ASSERT_TRUE(found.ok()) << found.error().message;
  EXPECT_EQ(found->port, primary.port());
}

TEST(SentinelResolve, SilentSentinelCostsOneTimeoutThenTheNextAnswers) {
  harness::redis_server primary(harness::redis_options{false, ""});
  harness::redis_sentinel_server sentinel(master, primary.port());
  silent_listener silent;
  const auto spec =
      spec_of("redis+sentinel://127.0.0.1:" + std::to_string(silent.port()) + "," + sentinel_address(sentinel) + "/" + master);

  const auto started = std::chrono::steady_clock::now();
  auto found = resolve_sentinel_primary(spec, 300ms);
  const auto waited = std::chrono::steady_clock::now() - started;
  ASSERT_TRUE(found.ok()) << found.error().message;
  EXPECT_EQ(found->port, primary.port());
  EXPECT_GE(waited, 250ms);   // the silent one was asked, and waited for
  EXPECT_LT(waited, 2000ms);  // but only for one command timeout
}

TEST(SentinelResolve, EverySentinelDownIsAnErrorNamingEach) {
  harness::redis_server primary(harness::redis_options{false, ""});
  harness::redis_sentinel_server a(master, primary.port());
  harness::redis_sentinel_server b(master, primary.port());
  const auto spec = spec_of("redis+sentinel://" + sentinel_address(a) + "," + sentinel_address(b) + "/" + master);
  a.stop();
  b.kill();

  const auto started = std::chrono::steady_clock::now();
  auto found = resolve_sentinel_primary(spec, lookup_timeout);
  EXPECT_LT(std::chrono::steady_clock::now() - started, 2000ms);  // refused at once, no timeouts
  ASSERT_FALSE(found.ok());
  EXPECT_EQ(found.error().code, code(redis_errc::connect_failed));
  const auto& message = found.error().message;
  EXPECT_NE(message.find("no Sentinel named a primary for '" + master + "'"), std::string::npos) << message;
  EXPECT_NE(message.find("Sentinel " + sentinel_address(a) + ": "), std::string::npos) << message;
  EXPECT_NE(message.find("Sentinel " + sentinel_address(b) + ": "), std::string::npos) << message;
  EXPECT_NE(message.find("refused"), std::string::npos) << message;
}

TEST(SentinelResolve, UnknownMasterNameIsAnError) {
  harness::redis_server primary(harness::redis_options{false, ""});
  harness::redis_sentinel_server sentinel(master, primary.port());
  const auto spec = spec_of("redis+sentinel://" + sentinel_address(sentinel) + "/no-such-master");

  auto found = resolve_sentinel_primary(spec, lookup_timeout);
  ASSERT_FALSE(found.ok());
  EXPECT_EQ(found.error().code, code(redis_errc::connect_failed));
  EXPECT_NE(found.error().message.find("Sentinel " + sentinel_address(sentinel) +
                                       ": does not know master 'no-such-master'"),
            std::string::npos)
      << found.error().message;
}

// A Sentinel may name a node that is no longer a primary (mid-failover, or a
// stale view). Monitoring a replica directly makes that state last.
TEST(SentinelResolve, RefusesANamedNodeThatIsNotAPrimary) {
  harness::redis_server primary(harness::redis_options{false, ""});
  harness::redis_server replica(replica_of(primary));
  ASSERT_TRUE(harness::wait_for([&] { return replica.replica_link_up(); }, failover_deadline));
  harness::redis_sentinel_server stale(master, replica.port());

  auto found = resolve_sentinel_primary(spec_of(stale.url()), lookup_timeout);
  ASSERT_FALSE(found.ok());
  EXPECT_EQ(found.error().code, code(redis_errc::connect_failed));
  const auto& message = found.error().message;
  EXPECT_NE(message.find("names 127.0.0.1:" + std::to_string(replica.port()) + " as primary"), std::string::npos)
      << message;
  EXPECT_NE(message.find("not a primary: ROLE says 'slave' (a replica of 127.0.0.1:" +
                         std::to_string(primary.port()) + ")"),
            std::string::npos)
      << message;
}

TEST(SentinelResolve, AuthenticatesWithSentinelPassword) {
  harness::redis_server primary(harness::redis_options{false, ""});
  harness::redis_sentinel_server sentinel(master, primary.port(), 1, 1000ms, 5000ms, "sentinel-secret");

  auto found = resolve_sentinel_primary(spec_of(sentinel.url()), lookup_timeout);
  ASSERT_TRUE(found.ok()) << found.error().message;
  EXPECT_EQ(found->port, primary.port());
  EXPECT_EQ(found->password, "");  // the Sentinel's password is not the primary's

  auto without = resolve_sentinel_primary(spec_of("redis+sentinel://" + sentinel_address(sentinel) + "/" + master),
                                          lookup_timeout);
  ASSERT_FALSE(without.ok());
  EXPECT_NE(without.error().message.find("NOAUTH"), std::string::npos) << without.error().message;

  auto wrong = resolve_sentinel_primary(
      spec_of("redis+sentinel://" + sentinel_address(sentinel) + "/" + master + "?sentinel_password=nope"),
      lookup_timeout);
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.error().message.find("AUTH"), std::string::npos) << wrong.error().message;
  EXPECT_EQ(wrong.error().message.find("nope"), std::string::npos) << "leaks the password: " << wrong.error().message;
}

TEST(SentinelResolve, RefusesADirectSpec) {
  auto found = resolve_sentinel_primary(spec_of("redis://:pw@127.0.0.1:6379"), lookup_timeout);
  ASSERT_FALSE(found.ok());
  EXPECT_EQ(found.error().code, code(redis_errc::bad_url));
  EXPECT_NE(found.error().message.find("redis://:***@127.0.0.1:6379"), std::string::npos) << found.error().message;
  EXPECT_NE(found.error().message.find("not a redis+sentinel://"), std::string::npos) << found.error().message;
}
