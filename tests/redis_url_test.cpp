// tests/redis_url_test.cpp — parse_redis_database (adapters/redis_client):
// the weighted database URLs, direct and Sentinel, their errors, and the
// masking of passwords in `display` and in error messages. No server.
#include "adapters/redis_client.hpp"

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

using tally::adapters::max_redis_database_weight;
using tally::adapters::parse_redis_database;
using tally::adapters::parse_redis_url;
using tally::adapters::redis_database_spec;
using tally::adapters::redis_errc;

namespace {

using kind = redis_database_spec::kind;
using sentinel_list = std::vector<std::pair<std::string, int>>;

redis_database_spec parse_or_fail(const std::string& url) {
  auto spec = parse_redis_database(url);
  if (!spec.ok()) {
    ADD_FAILURE() << url << ": " << spec.error().message;
    return {};
  }
  return spec.value();
}

} // namespace

// ---------------------------------------------------------------------------
// direct

TEST(RedisDatabaseUrl, DirectFullForm) {
  auto spec = parse_or_fail("redis://alice:s3cret@cache.example:6380/4?weight=250");
  EXPECT_EQ(spec.type, kind::direct);
  EXPECT_EQ(spec.endpoint.host, "cache.example");
  EXPECT_EQ(spec.endpoint.port, 6380);
  EXPECT_EQ(spec.endpoint.user, "alice");
  EXPECT_EQ(spec.endpoint.password, "s3cret");
  EXPECT_EQ(spec.endpoint.db, 4);
  EXPECT_EQ(spec.weight, 250u);
  EXPECT_TRUE(spec.sentinels.empty());
  EXPECT_EQ(spec.master_name, "");
  EXPECT_EQ(spec.url, "redis://alice:s3cret@cache.example:6380/4");
  EXPECT_EQ(spec.display, "redis://alice:***@cache.example:6380/4");
}

TEST(RedisDatabaseUrl, DirectDefaults) {
  auto spec = parse_or_fail("redis://localhost");
  EXPECT_EQ(spec.type, kind::direct);
  EXPECT_EQ(spec.endpoint.host, "localhost");
  EXPECT_EQ(spec.endpoint.port, 6379);
  EXPECT_EQ(spec.endpoint.db, 0);
  EXPECT_EQ(spec.weight, 1u);
  EXPECT_EQ(spec.url, "redis://localhost");
  EXPECT_EQ(spec.display, "redis://localhost");

  // Like parse_redis_url: no scheme is a direct URL.
  auto bare = parse_or_fail("10.0.0.7:6390");
  EXPECT_EQ(bare.type, kind::direct);
  EXPECT_EQ(bare.endpoint.host, "10.0.0.7");
  EXPECT_EQ(bare.endpoint.port, 6390);
  EXPECT_EQ(bare.url, "10.0.0.7:6390");

  auto slash = parse_or_fail("redis://h:7000/?weight=3");
  EXPECT_EQ(slash.endpoint.db, 0);
  EXPECT_EQ(slash.weight, 3u);
  EXPECT_EQ(slash.url, "redis://h:7000/");
}

TEST(RedisDatabaseUrl, DirectAgreesWithParseRedisUrl) {
  for (const char* url : {"redis://alice:s3cret@cache.example:6380/4", "redis://:pw@h", "redis://[::1]:6381/1",
                          "redis://bob:p%40ss%3Aw%2Fd@h:1/2", "redis://:p@ss@h:6390", "redis-host"}) {
    auto ep = parse_redis_url(url);
    ASSERT_TRUE(ep.ok()) << url << ": " << ep.error().message;
    auto spec = parse_or_fail(url);
    EXPECT_EQ(spec.endpoint.host, ep->host) << url;
    EXPECT_EQ(spec.endpoint.port, ep->port) << url;
    EXPECT_EQ(spec.endpoint.user, ep->user) << url;
    EXPECT_EQ(spec.endpoint.password, ep->password) << url;
    EXPECT_EQ(spec.endpoint.db, ep->db) << url;
    EXPECT_EQ(spec.url, url);
  }
}

TEST(RedisDatabaseUrl, DirectIpv6) {
  auto spec = parse_or_fail("redis://:pw@[::1]:6381/2?weight=7");
  EXPECT_EQ(spec.endpoint.host, "::1");
  EXPECT_EQ(spec.endpoint.port, 6381);
  EXPECT_EQ(spec.endpoint.db, 2);
  EXPECT_EQ(spec.weight, 7u);
  EXPECT_EQ(spec.display, "redis://:***@[::1]:6381/2");

  auto no_port = parse_or_fail("redis://[fe80::1]");
  EXPECT_EQ(no_port.endpoint.host, "fe80::1");
  EXPECT_EQ(no_port.endpoint.port, 6379);
}

TEST(RedisDatabaseUrl, PasswordEscapes) {
  // %-escapes decode; '?', '#' and '&' can only appear escaped, since the
  // query starts at the first '?'.
  auto spec = parse_or_fail("redis://bob:p%3Fa%23s%26s%40w%3Ad%2F%25@h:1/2?weight=2");
  EXPECT_EQ(spec.endpoint.user, "bob");
  EXPECT_EQ(spec.endpoint.password, "p?a#s&s@w:d/%");
  EXPECT_EQ(spec.url, "redis://bob:p%3Fa%23s%26s%40w%3Ad%2F%25@h:1/2");
  EXPECT_EQ(spec.display, "redis://bob:***@h:1/2");

  // Raw '@', ':' and '/' in a password work as for parse_redis_url.
  auto raw = parse_or_fail("redis://:p@s:s/w@h:6390?weight=9");
  EXPECT_EQ(raw.endpoint.password, "p@s:s/w");
  EXPECT_EQ(raw.endpoint.host, "h");
  EXPECT_EQ(raw.endpoint.port, 6390);
  EXPECT_EQ(raw.weight, 9u);
  EXPECT_EQ(raw.display, "redis://:***@h:6390");

  auto user_only_colon = parse_or_fail("redis://user:@h");
  EXPECT_EQ(user_only_colon.endpoint.user, "user");
  EXPECT_EQ(user_only_colon.endpoint.password, "");
  EXPECT_EQ(user_only_colon.display, "redis://user:@h");  // nothing to hide
}

TEST(RedisDatabaseUrl, WeightBounds) {
  EXPECT_EQ(parse_or_fail("redis://h?weight=1").weight, 1u);
  EXPECT_EQ(parse_or_fail("redis://h?weight=1000000").weight, max_redis_database_weight);
  EXPECT_EQ(max_redis_database_weight, 1000000u);
}

// ---------------------------------------------------------------------------
// Sentinel

TEST(RedisDatabaseUrl, SentinelFullForm) {
  auto spec = parse_or_fail(
      "redis+sentinel://app:pw@10.0.0.1:5000,10.0.0.2,[::1]:5002/mymaster/3?weight=40&sentinel_password=sp");
  EXPECT_EQ(spec.type, kind::sentinel);
  EXPECT_EQ(spec.sentinels, (sentinel_list{{"10.0.0.1", 5000}, {"10.0.0.2", 26379}, {"::1", 5002}}));
  EXPECT_EQ(spec.master_name, "mymaster");
  EXPECT_EQ(spec.sentinel_password, "sp");
  EXPECT_EQ(spec.weight, 40u);
  // The userinfo and the db are the primary's; its address comes from resolution.
  EXPECT_EQ(spec.endpoint.user, "app");
  EXPECT_EQ(spec.endpoint.password, "pw");
  EXPECT_EQ(spec.endpoint.db, 3);
  EXPECT_EQ(spec.endpoint.host, "");
  EXPECT_EQ(spec.endpoint.port, 0);
  EXPECT_EQ(spec.url, "redis+sentinel://app:pw@10.0.0.1:5000,10.0.0.2,[::1]:5002/mymaster/3?sentinel_password=sp");
  EXPECT_EQ(spec.display,
            "redis+sentinel://app:***@10.0.0.1:5000,10.0.0.2,[::1]:5002/mymaster/3?sentinel_password=***");
}

TEST(RedisDatabaseUrl, SentinelMinimalForm) {
  auto spec = parse_or_fail("redis+sentinel://sentinel.example/cache");
  EXPECT_EQ(spec.type, kind::sentinel);
  EXPECT_EQ(spec.sentinels, (sentinel_list{{"sentinel.example", 26379}}));
  EXPECT_EQ(spec.master_name, "cache");
  EXPECT_EQ(spec.sentinel_password, "");
  EXPECT_EQ(spec.endpoint.db, 0);
  EXPECT_EQ(spec.endpoint.user, "");
  EXPECT_EQ(spec.endpoint.password, "");
  EXPECT_EQ(spec.weight, 1u);
  EXPECT_EQ(spec.url, "redis+sentinel://sentinel.example/cache");
  EXPECT_EQ(spec.display, spec.url);

  auto trailing_slash = parse_or_fail("redis+sentinel://[::1]/cache/");
  EXPECT_EQ(trailing_slash.sentinels, (sentinel_list{{"::1", 26379}}));
  EXPECT_EQ(trailing_slash.endpoint.db, 0);
}

TEST(RedisDatabaseUrl, SentinelParametersInAnyOrderAndEscaped) {
  auto spec = parse_or_fail("redis+sentinel://h:1/m%2Fx?sentinel_password=a%26b%3Dc@d&weight=5");
  EXPECT_EQ(spec.master_name, "m/x");
  EXPECT_EQ(spec.sentinel_password, "a&b=c@d");
  EXPECT_EQ(spec.weight, 5u);
  EXPECT_EQ(spec.url, "redis+sentinel://h:1/m%2Fx?sentinel_password=a%26b%3Dc@d");
  EXPECT_EQ(spec.display, "redis+sentinel://h:1/m%2Fx?sentinel_password=***");

  // A raw '@' in sentinel_password is not taken for the userinfo's end.
  auto at_in_query = parse_or_fail("redis+sentinel://u:pw@h/m?sentinel_password=s@cret");
  EXPECT_EQ(at_in_query.endpoint.user, "u");
  EXPECT_EQ(at_in_query.endpoint.password, "pw");
  EXPECT_EQ(at_in_query.sentinel_password, "s@cret");
  EXPECT_EQ(at_in_query.sentinels, (sentinel_list{{"h", 26379}}));
}

TEST(RedisDatabaseUrl, IdentityIgnoresOnlyTheWeight) {
  auto a = parse_or_fail("redis+sentinel://h/m?weight=1&sentinel_password=x");
  auto b = parse_or_fail("redis+sentinel://h/m?sentinel_password=x&weight=900");
  EXPECT_EQ(a.url, b.url);
  EXPECT_EQ(a.display, b.display);
  auto c = parse_or_fail("redis+sentinel://h/m?sentinel_password=y");
  EXPECT_NE(a.url, c.url);
  EXPECT_EQ(a.display, c.display);  // masking hides which password
}

// ---------------------------------------------------------------------------
// errors

TEST(RedisDatabaseUrl, RejectsBadUrlsNamingTheProblem) {
  struct bad_case {
    const char* url;
    const char* reason;  // a fragment the message must contain
  };
  const bad_case cases[] = {
      {"", "empty"},
      {"http://h:6379", "scheme must be redis:// or redis+sentinel://"},
      {"rediss://h", "TLS"},
      {"rediss+sentinel://h/m", "TLS"},
      {"redis://", "missing host"},
      {"redis://:6379", "missing host"},
      {"redis://h:", "port"},
      {"redis://h:0", "port"},
      {"redis://h:65536", "port"},
      {"redis://h:63x9", "port"},
      {"redis://h/x", "database"},
      {"redis://h/-1", "database"},
      {"redis://h/1/2", "database"},
      {"redis://user@h", "missing ':'"},
      {"redis://u:%zz@h", "%-escape in password"},
      {"redis://%zz:p@h", "%-escape in user name"},
      {"redis://[::1:6379", "IPv6"},
      {"redis://[::1]x", "after ']'"},
      {"redis://h#frag", "fragments"},
      {"redis://a,b:6379", "several hosts"},
      // query parameters
      {"redis://h?", "empty query parameter"},
      {"redis://h?weight=1&", "empty query parameter"},
      {"redis://h?&weight=1", "empty query parameter"},
      {"redis://h?db=1", "unknown query parameter 'db'"},
      {"redis://h?weight", "'weight' needs a value"},
      {"redis://h?weight=0", "weight must be a whole number from 1 to 1000000, got '0'"},
      {"redis://h?weight=1000001", "got '1000001'"},
      {"redis://h?weight=99999999999", "got '99999999999'"},
      {"redis://h?weight=-1", "got '-1'"},
      {"redis://h?weight=+1", "got '+1'"},
      {"redis://h?weight=1.5", "got '1.5'"},
      {"redis://h?weight=x", "got 'x'"},
      {"redis://h?weight=", "got ''"},
      {"redis://h?weight=1&weight=2", "'weight' is given more than once"},
      {"redis://h?sentinel_password=x", "only for redis+sentinel://"},
      // Sentinel
      {"redis+sentinel://h", "missing /master-name"},
      {"redis+sentinel://h/", "missing /master-name"},
      {"redis+sentinel:///m", "missing Sentinel host"},
      {"redis+sentinel://h1,,h2/m", "empty Sentinel address"},
      {"redis+sentinel://h1,/m", "empty Sentinel address"},
      {"redis+sentinel://h1:0/m", "Sentinel 'h1:0': port must be a number from 1 to 65535"},
      {"redis+sentinel://h1,h2:x/m", "Sentinel 'h2:x': port"},
      {"redis+sentinel://[::1/m", "IPv6"},
      {"redis+sentinel://h/m/x", "database"},
      {"redis+sentinel://h/m/1/2", "database"},
      {"redis+sentinel://h/%zz", "%-escape in master name"},
      {"redis+sentinel://h/m?sentinel_password=", "sentinel_password is empty"},
      {"redis+sentinel://h/m?sentinel_password=%zz", "%-escape in sentinel_password"},
      {"redis+sentinel://h/m?sentinel_password=a&sentinel_password=b", "given more than once"},
      {"redis+sentinel://h/m?password=x", "unknown query parameter 'password' (known: weight, sentinel_password)"},
      {"redis+sentinel://h/m?weight=0", "weight must be"},
  };
  for (const auto& c : cases) {
    auto spec = parse_redis_database(c.url);
    ASSERT_FALSE(spec.ok()) << "accepted: '" << c.url << "'";
    EXPECT_EQ(spec.error().code, static_cast<int>(redis_errc::bad_url)) << c.url;
    EXPECT_NE(spec.error().message.find(c.reason), std::string::npos) << c.url << " -> " << spec.error().message;
    EXPECT_EQ(spec.error().message.rfind("bad Redis URL '", 0), 0u) << spec.error().message;
  }
}

TEST(RedisDatabaseUrl, ErrorsQuoteTheUrlWithPasswordsMasked) {
  struct masked_case {
    const char* url;
    const char* shown;  // how the message must quote it
    const char* secret; // what it must not contain
  };
  const masked_case cases[] = {
      {"redis://u:hunter2@h?weight=0", "redis://u:***@h?weight=0", "hunter2"},
      {"redis://u:hunter2@h:99999", "redis://u:***@h:99999", "hunter2"},
      {"redis://u:hunter2%zz@h", "redis://u:***@h", "hunter2"},
      // No ':' in the userinfo: the whole of it may be a password.
      {"redis://hunter2@h", "redis://***@h", "hunter2"},
      {"redis+sentinel://h/m?sentinel_password=hunter2&weight=0",
       "redis+sentinel://h/m?sentinel_password=***&weight=0", "hunter2"},
      {"redis+sentinel://:hunter2@h?sentinel_password=hunter3", "redis+sentinel://:***@h?sentinel_password=***",
       "hunter"},
  };
  for (const auto& c : cases) {
    auto spec = parse_redis_database(c.url);
    ASSERT_FALSE(spec.ok()) << "accepted: '" << c.url << "'";
    const auto& message = spec.error().message;
    EXPECT_NE(message.find(std::string("'") + c.shown + "'"), std::string::npos) << message;
    EXPECT_EQ(message.find(c.secret), std::string::npos) << message;
  }
  // Without passwords the URL is quoted as given.
  auto plain = parse_redis_database("redis://h?weight=0");
  ASSERT_FALSE(plain.ok());
  EXPECT_NE(plain.error().message.find("'redis://h?weight=0'"), std::string::npos) << plain.error().message;
}

// parse_redis_url is the single-endpoint form: it keeps refusing what only
// a database URL may carry.
TEST(RedisDatabaseUrl, ParseRedisUrlStillRefusesQueriesAndSentinels) {
  for (const char* url : {"redis://h?weight=1", "redis://h:6379/0?weight=2", "redis+sentinel://h/m"}) {
    auto ep = parse_redis_url(url);
    ASSERT_FALSE(ep.ok()) << "accepted: " << url;
    EXPECT_EQ(ep.error().code, static_cast<int>(redis_errc::bad_url));
  }
  auto query = parse_redis_url("redis://h?weight=1");
  ASSERT_FALSE(query.ok());
  EXPECT_NE(query.error().message.find("query strings"), std::string::npos) << query.error().message;
}

// Found by tests/fuzz/redis_url_fuzz: a host is handed to hiredis as a C
// string, so a NUL would connect to a shorter name than the one configured;
// both parsers refuse a host no name or address can be.
TEST(RedisDatabaseUrl, HostsWithBytesNoHostNameHasAreRefusedByBothParsers) {
  using namespace std::string_literals;
  for (const std::string& url : {"redis://cache\0evil:6379"s, "redis://a,b:6379"s, "a b"s, "redis://h\x7f"s,
                                 "redis://:pw@h\tx/1"s, "redis+sentinel://s1,s\x01/m"s}) {
    auto ep = parse_redis_url(url);
    EXPECT_FALSE(ep.ok()) << "parse_redis_url accepted a host in " << url;
    auto spec = parse_redis_database(url);
    ASSERT_FALSE(spec.ok()) << "parse_redis_database accepted a host in " << url;
    EXPECT_NE(spec.error().message.find("host"), std::string::npos) << spec.error().message;
  }
}
