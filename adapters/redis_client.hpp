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
#include <string>
#include <string_view>
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
result<redis_endpoint> parse_redis_url(std::string_view url);

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
