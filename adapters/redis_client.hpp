// adapters/redis_client.hpp — RAII owner of a blocking hiredis connection.
//
// Contract against hiredis: every call is blocking, bounded by the timeout
// given at connect (used for connect and for each command via
// redisSetTimeout). A lost connection turns the client into the
// "disconnected" state: the failing call returns redis_errc::io_error or
// timeout, and the next call tries to reconnect once before it fails. No
// hiredis type appears in this header.
#pragma once

#include "core/result.hpp"

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tally::adapters {

enum class redis_errc : int {
  ok = 0,
  bad_url,         // the URL does not parse
  connect_failed,  // TCP connect refused / unreachable / AUTH or SELECT refused
  timeout,         // connect or command deadline passed
  io_error,        // the connection broke mid-command
  protocol,        // unparseable reply
  reply_error,     // Redis answered -ERR ...; message holds its text
};
const char* to_string(redis_errc code) noexcept;

/// `redis://[[user]:password@]host[:port][/db]`; port defaults to 6379.
struct redis_endpoint {
  std::string host = "127.0.0.1";
  int port = 6379;
  std::string user;
  std::string password;
  int db = 0;
};
/// Parses the single-endpoint form above (the scheme may be left out:
/// `host[:port]`). Refuses query strings: weights and Sentinels are
/// parse_redis_database's.
result<redis_endpoint> parse_redis_url(std::string_view url);

/// The largest weight a database may have: weights are relative, and a bound
/// keeps their sum far from overflowing uint32_t over any sane fleet.
inline constexpr uint32_t max_redis_database_weight = 1000000;

/// One configured Redis database: where it is and how much it is preferred.
struct redis_database_spec {
  enum class kind : uint8_t { direct, sentinel };
  kind type = kind::direct;
  /// direct: the server. sentinel: the primary's credentials and db; host
  /// and port stay empty/0 until resolve_sentinel_primary fills them.
  redis_endpoint endpoint;
  std::vector<std::pair<std::string, int>> sentinels;  // sentinel: host, port (default 26379)
  std::string master_name;                             // sentinel
  std::string sentinel_password;                       // sentinel: optional ?sentinel_password=
  uint32_t weight = 1;                                 // ?weight=N, 1..max_redis_database_weight
  /// The URL as given, without the weight parameter: the identity of the
  /// database, so that changing a weight does not make it a new database.
  std::string url;
  /// `url` with every password (userinfo and sentinel_password) replaced by
  /// "***": for logs, metrics and TALLY.DB LIST.
  std::string display;
};

/// Parses one database URL:
///   redis://[[user]:password@]host[:port][/db][?weight=N]
///   redis+sentinel://[[user]:password@]host[:port][,host2[:port2]...]/master-name[/db]
///                   [?weight=N][&sentinel_password=...]
/// The userinfo is always the data node's credentials; Sentinel ports
/// default to 26379; IPv6 hosts go in brackets. The query starts at the first
/// '?', so a password holding '?', '#' or '&' must %-escape it (':', '/' and
/// '@' may stay raw, as for parse_redis_url). A URL without a scheme is a
/// direct one, as for parse_redis_url. Errors (redis_errc::bad_url) say what
/// is wrong and quote the URL with its passwords masked.
result<redis_database_spec> parse_redis_database(std::string_view url);

/// A reply, copied out of hiredis into plain values.
struct redis_reply {
  enum class kind : uint8_t { nil, status, error, integer, string, array };
  kind type = kind::nil;
  long long integer = 0;
  std::string str;                  // status, error or bulk string
  std::vector<redis_reply> elements;  // array
  bool is_nil() const noexcept { return type == kind::nil; }
};

class redis_client {
public:
  /// Connects (and AUTHs / SELECTs) within `timeout`.
  static result<redis_client> connect(const redis_endpoint& ep, std::chrono::milliseconds timeout);

  redis_client(redis_client&&) noexcept;
  redis_client& operator=(redis_client&&) noexcept;
  ~redis_client();

  /// Runs one command, binary-safe (redisCommandArgv). A `-ERR` reply is
  /// returned as error redis_errc::reply_error with the server's text.
  result<redis_reply> command(const std::vector<std::string_view>& argv);

  /// Pipelines several commands in one round trip; the replies come back in
  /// order (an -ERR reply is a redis_reply of kind error, not a failure). A
  /// transport failure fails the whole call.
  result<std::vector<redis_reply>> pipeline(const std::vector<std::vector<std::string_view>>& cmds);

  /// Waits up to `wait` for one reply the server pushes unasked (pub/sub
  /// messages after SUBSCRIBE). nullopt when none came; a quiet wait keeps
  /// the connection (a plain read timeout would poison the hiredis context).
  result<std::optional<redis_reply>> receive(std::chrono::milliseconds wait);

  /// True while the last call did not lose the connection.
  bool connected() const noexcept;

  /// Drops the connection and connects again.
  status reconnect();

private:
  struct impl;
  explicit redis_client(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

} // namespace tally::adapters
