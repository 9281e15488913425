// adapters/redis_sentinel.cpp — primary lookup through Redis Sentinel.
//
// Uses one short-lived redis_client per Sentinel and one for the ROLE check:
// a lookup happens at start and after a failure, so connection reuse would
// buy nothing, and a fresh connection cannot carry a stale reply.
#include "adapters/redis_sentinel.hpp"

#include <charconv>
#include <string>
#include <utility>

namespace tally::adapters {
namespace {

error_info make_error(redis_errc code, std::string message) {
  return error_info{static_cast<int>(code), std::move(message), {}};
}

// host:port, with IPv6 hosts in brackets so the port stays readable.
std::string address_text(const std::string& host, int port) {
  if (host.find(':') != std::string::npos)
    return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

bool parse_port(const std::string& text, int& port) {
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), port);
  return ec == std::errc{} && end == text.data() + text.size() && port >= 1 && port <= 65535;
}

// What one Sentinel said: an address, or why it gave none.
struct sentinel_answer {
  bool found = false;
  std::string host;
  int port = 0;
  std::string why_not;
};

// Asks one Sentinel for the master's address (blocking, each step bounded by
// `timeout`).
sentinel_answer ask_sentinel(const std::string& host, int port, const redis_database_spec& spec,
                             std::chrono::milliseconds timeout) {
  sentinel_answer answer;
  redis_endpoint sentinel_ep;
  sentinel_ep.host = host;
  sentinel_ep.port = port;
  sentinel_ep.password = spec.sentinel_password;  // AUTH <password>: Sentinels have no user in the URL
  auto client = redis_client::connect(sentinel_ep, timeout);
  if (!client) {
    answer.why_not = client.error().message;
    return answer;
  }
  auto reply = client->command({"SENTINEL", "get-master-addr-by-name", spec.master_name});
  if (!reply) {
    answer.why_not = "SENTINEL get-master-addr-by-name failed: " + reply.error().message;
    return answer;
  }
  if (reply->is_nil()) {
    answer.why_not = "does not know master '" + spec.master_name + "'";
    return answer;
  }
  if (reply->type != redis_reply::kind::array || reply->elements.size() != 2
      || reply->elements[0].type != redis_reply::kind::string
      || reply->elements[1].type != redis_reply::kind::string || reply->elements[0].str.empty()
      || !parse_port(reply->elements[1].str, answer.port)) {
    answer.why_not = "unexpected reply to SENTINEL get-master-addr-by-name (not [host, port])";
    return answer;
  }
  answer.found = true;
  answer.host = reply->elements[0].str;
  return answer;
}

// Connects to `primary` as the database's clients will (credentials, db)
// and checks that ROLE says master. Returns "" or why the node is not usable.
std::string check_is_primary(const redis_endpoint& primary, std::chrono::milliseconds timeout) {
  auto client = redis_client::connect(primary, timeout);
  if (!client)
    return client.error().message;
  auto role = client->command({"ROLE"});
  if (!role)
    return "ROLE failed: " + role.error().message;
  if (role->type != redis_reply::kind::array || role->elements.empty()
      || role->elements[0].type != redis_reply::kind::string)
    return "unexpected reply to ROLE";
  const std::string& name = role->elements[0].str;
  if (name == "master")
    return {};
  std::string why = "it is not a primary: ROLE says '" + name + "'";
  // A replica's ROLE is [slave, master host, master port, state, offset].
  if (name == "slave" && role->elements.size() >= 3 && role->elements[1].type == redis_reply::kind::string
      && role->elements[2].type == redis_reply::kind::integer)
    why += " (a replica of " + address_text(role->elements[1].str, static_cast<int>(role->elements[2].integer)) + ")";
  return why;
}

} // namespace

result<redis_endpoint> resolve_sentinel_primary(const redis_database_spec& spec,
                                                std::chrono::milliseconds timeout) {
  if (spec.type != redis_database_spec::kind::sentinel)
    return make_error(redis_errc::bad_url, "'" + spec.display + "' is not a redis+sentinel:// database");
  if (spec.sentinels.empty() || spec.master_name.empty())
    return make_error(redis_errc::bad_url, "'" + spec.display + "' names no Sentinel or no master");

  std::string tried;  // "; "-separated: every Sentinel that gave no address, and why
  for (const auto& [host, port] : spec.sentinels) {
    const std::string sentinel = address_text(host, port);
    sentinel_answer answer = ask_sentinel(host, port, spec, timeout);
    if (!answer.found) {
      tried += (tried.empty() ? "" : "; ") + ("Sentinel " + sentinel + ": " + answer.why_not);
      continue;
    }
    redis_endpoint primary = spec.endpoint;
    primary.host = std::move(answer.host);
    primary.port = answer.port;
    if (auto why = check_is_primary(primary, timeout); !why.empty())
      return make_error(redis_errc::connect_failed,
                        "Sentinel " + sentinel + " names " + address_text(primary.host, primary.port)
                            + " as primary of '" + spec.master_name + "', but " + why
                            + (tried.empty() ? "" : " (asked before: " + tried + ")"));
    return primary;
  }
  return make_error(redis_errc::connect_failed,
                    "no Sentinel named a primary for '" + spec.master_name + "': " + tried);
}

} // namespace tally::adapters
