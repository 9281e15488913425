// tests/fuzz/redis_url_fuzz.cpp — libFuzzer target for the Redis URL parsers
// (adapters/redis_client: parse_redis_url, parse_redis_database).
//
// Properties:
//  * what parses is in range: ports 1..65535, db >= 0, weight within
//    1..max_redis_database_weight, a Sentinel URL has sentinels and a
//    master name, a direct one neither;
//  * `url` is the identity of a database: it parses again to the same
//    database with the default weight, and to the same `url`;
//  * `display` and the URL quoted in error messages do not depend on the
//    passwords (two URLs that differ only in a password show alike);
//  * a single endpoint that parse_redis_url accepts is the same endpoint to
//    parse_redis_database.
#include "adapters/redis_client.hpp"
#include "tests/fuzz/fuzz_check.hpp"

#include <cstdint>
#include <string>

using namespace tally::adapters;

namespace {

bool same_endpoint(const redis_endpoint& a, const redis_endpoint& b) {
  return a.host == b.host && a.port == b.port && a.user == b.user && a.password == b.password && a.db == b.db;
}

/// The URL with `secret` spelled differently, when that is certain to
/// change nothing but the secret: a URL without %-escapes (the secret is
/// spelled in it as it is) that holds the secret exactly once (so that is
/// the password's place). Empty when it cannot tell.
std::string with_other_secret(const std::string& url, const std::string& secret) {
  if (secret.empty() || url.find('%') != std::string::npos)
    return {};
  size_t at = url.find(secret);
  if (at == std::string::npos || url.find(secret, at + 1) != std::string::npos)
    return {};
  std::string other = url;
  for (size_t i = 0; i < secret.size(); ++i)
    other[at + i] = secret[i] == 'Z' ? 'Y' : 'Z';
  return other;
}

/// The URL an error message quotes (between "bad Redis URL '" and "': ").
std::string quoted_url(const std::string& message) {
  const std::string opening = "bad Redis URL '";
  size_t end = message.rfind("': ");
  FUZZ_CHECK(message.compare(0, opening.size(), opening) == 0);
  FUZZ_CHECK(end != std::string::npos && end >= opening.size());
  return message.substr(opening.size(), end - opening.size());
}

/// Checks that what is shown of `url` (display, and the URL quoted by an
/// error about a bad weight added to it) does not depend on `secret`.
void check_masked(const redis_database_spec& s, const std::string& secret) {
  std::string other = with_other_secret(s.url, secret);
  if (other.empty())
    return;
  auto twin = parse_redis_database(other);
  if (!twin.ok())
    return;  // the secret's bytes were also structure; nothing to compare
  FUZZ_CHECK(twin->display == s.display);
  auto suffix = [](const std::string& u) { return u + (u.find('?') == std::string::npos ? "?" : "&") + "weight=0"; };
  auto refused = parse_redis_database(suffix(s.url));
  auto twin_refused = parse_redis_database(suffix(other));
  FUZZ_CHECK(!refused.ok() && !twin_refused.ok());
  FUZZ_CHECK(quoted_url(refused.error().message) == quoted_url(twin_refused.error().message));
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* bytes, size_t size) {
  std::string input(reinterpret_cast<const char*>(bytes), size);

  auto single = parse_redis_url(input);
  auto spec = parse_redis_database(input);
  if (single.ok()) {
    FUZZ_CHECK(single->port >= 1 && single->port <= 65535);
    FUZZ_CHECK(single->db >= 0);
    FUZZ_CHECK(spec.ok());
    FUZZ_CHECK(spec->type == redis_database_spec::kind::direct);
    FUZZ_CHECK(same_endpoint(single.value(), spec->endpoint));
  }
  if (!spec.ok()) {
    FUZZ_CHECK(!spec.error().message.empty());
    return 0;
  }
  const redis_database_spec& s = spec.value();
  FUZZ_CHECK(s.weight >= 1 && s.weight <= max_redis_database_weight);
  FUZZ_CHECK(s.endpoint.db >= 0);
  if (s.type == redis_database_spec::kind::direct) {
    FUZZ_CHECK(s.endpoint.port >= 1 && s.endpoint.port <= 65535);
    FUZZ_CHECK(s.sentinels.empty() && s.master_name.empty());
  } else {
    FUZZ_CHECK(!s.sentinels.empty() && !s.master_name.empty());
    for (const auto& [host, port] : s.sentinels)
      FUZZ_CHECK(!host.empty() && port >= 1 && port <= 65535);
  }
  check_masked(s, s.endpoint.password);
  check_masked(s, s.sentinel_password);

  auto again = parse_redis_database(s.url);
  FUZZ_CHECK(again.ok());
  const redis_database_spec& t = again.value();
  FUZZ_CHECK(t.type == s.type);
  FUZZ_CHECK(same_endpoint(t.endpoint, s.endpoint));
  FUZZ_CHECK(t.sentinels == s.sentinels);
  FUZZ_CHECK(t.master_name == s.master_name);
  FUZZ_CHECK(t.sentinel_password == s.sentinel_password);
  FUZZ_CHECK(t.url == s.url);
  FUZZ_CHECK(t.display == s.display);
  FUZZ_CHECK(t.weight == 1);

  return 0;
}
