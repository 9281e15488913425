// actors/resp_commands.hpp — the RESP command table and its handlers.
//
// One row per command: its name, its arity (Redis's convention: n means
// exactly n arguments counting the name, -n at least n), whether it needs
// AUTH first, and the handler. The connection (resp_connection.cpp) looks a
// request up here, checks arity and AUTH the same way for every command, and
// runs the handler; it keeps only I/O, flow control, reply order and the
// transaction state. A handler writes its reply through a reply_writer
// (RESP2 or RESP3, whichever the session speaks) and says what happened.
#pragma once

#include "actors/resp_connection.hpp"
#include "core/resp_reply.hpp"

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tally {

using resp_args = std::vector<std::string_view>;

/// One connection's protocol state, as the handlers see it.
struct resp_session {
  resp_context* ctx = nullptr;
  uint64_t client_id = 0;
  std::string name;                               // CLIENT SETNAME / HELLO SETNAME
  resp::protocol proto = resp::protocol::resp2;  // HELLO 2|3
  bool authed = false;
  bool durable = false;  // TALLY.ACK durable: +OK only once the event is in Redis
  event_builder builder;
  uint64_t accepted = 0;  // events taken since the connection last added them to the counters
  /// Wall clock (unix ms) of the read being run: the time of an event sent
  /// without `ts`. One clock read per read, not one per event.
  int64_t now_ms = 0;
};

/// What the connection does after a handler ran.
enum class resp_outcome : uint8_t {
  replied,           // the reply is written
  recorded_durable,  // an event was taken in durable mode: the connection owes +OK once it is in Redis
  backpressure,      // nothing ran: retry this same request later
  close,             // the reply is written; close once every earlier reply is out (QUIT)
};

/// Commands the connection runs itself (transactions); every other command
/// has a handler.
enum class resp_special : uint8_t { none, multi, exec, discard, watch };

using resp_handler = resp_outcome (*)(resp_session&, const resp_args&, resp::reply_writer&);

struct resp_command {
  std::string_view name;  // upper case
  int arity;
  bool needs_auth;
  bool record;            // TALLY.RECORD: taken together at EXEC
  resp_special special;
  resp_handler handler;   // nullptr for special commands
};

/// The command named `name` (any case), or nullptr.
const resp_command* find_resp_command(std::string_view name) noexcept;

/// The table, in the order COMMAND lists it.
const std::vector<resp_command>& resp_command_table() noexcept;

/// Whether `argc` arguments (the name included) fit `cmd`'s arity.
inline bool arity_ok(const resp_command& cmd, size_t argc) noexcept {
  return cmd.arity >= 0 ? argc == static_cast<size_t>(cmd.arity) : argc >= static_cast<size_t>(-cmd.arity);
}

/// "-ERR unknown command '<name>', with args beginning with: ..." as Redis.
void reply_unknown_command(resp::reply_writer& out, const resp_args& args);

/// "-NOAUTH Authentication required." (and counts it).
void reply_noauth(resp::reply_writer& out);

/// Builds the event of a TALLY.RECORD without recording it. On error the
/// field error is returned and `name` is the field as the client spelled it.
field_error build_record(resp_session& s, const resp_args& args, event& ev, std::string_view& name) noexcept;

} // namespace tally
