// actors/resp_server.hpp — the RESP (Redis protocol) ingest listener.
//
// An acceptor broker on CAF's I/O layer and one broker per connection. Each
// connection parses every complete command in its read buffer and records
// the events through the runtime (bulk, no CAF message per event); replies
// go out in request order. See design §7.
#pragma once

#include "tally/tally.hpp"

#include <caf/actor.hpp>
#include <caf/fwd.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

namespace tally {

struct resp_options {
  std::string bind = "127.0.0.1";
  uint16_t port = 6380;                 // 0 = any free port
  std::string requirepass;              // empty = no AUTH needed
  uint32_t max_connections = 10000;
  uint32_t max_args = 1024;             // arguments in one command
  uint32_t max_bulk_bytes = 64 * 1024;  // one argument
  uint32_t max_buffered_bytes = 4 << 20;  // unparsed + unsent per connection
  std::chrono::seconds idle_timeout{0};  // 0 = none
  uint32_t read_chunk_bytes = 64 * 1024;  // largest single socket read
  /// How often a connection paused by ingest backpressure retries its
  /// unprocessed commands.
  std::chrono::milliseconds backpressure_retry{2};
};

/// Process-wide counters of every RESP listener, for /metrics. Each value is
/// a snapshot of a relaxed atomic (monotonic unless said otherwise).
struct resp_metrics {
  static constexpr size_t errc_slots = 16;  // tally::errc values 0..15
  uint64_t connections_current = 0;   // gauge
  uint64_t connections_total = 0;     // accepted (refused ones included)
  uint64_t connections_refused = 0;   // over max_connections
  uint64_t commands = 0;              // requests executed (any command)
  uint64_t events_accepted = 0;       // TALLY.RECORD taken by the runtime
  uint64_t rejections[errc_slots] = {};  // TALLY.RECORD refused, by tally::errc
  uint64_t protocol_errors = 0;       // malformed RESP: error reply, then close
  uint64_t auth_failures = 0;         // wrong password (WRONGPASS)
  uint64_t noauth_refusals = 0;       // commands refused before AUTH (NOAUTH)
  uint64_t backpressure_pauses = 0;   // times a connection stopped reading: ingest full
  uint64_t output_pauses = 0;         // times a connection stopped reading: replies unsent
  uint64_t idle_closes = 0;           // connections closed by idle_timeout
  uint64_t buffer_limit_closes = 0;   // connections closed by max_buffered_bytes

  /// Every TALLY.RECORD refused, all reasons: the sum of
  /// tally_events_rejected_total, what TALLY.STATUS reports.
  uint64_t rejections_total() const noexcept {
    uint64_t n = 0;
    for (size_t i = 1; i < errc_slots; ++i)
      n += rejections[i];
    return n;
  }
};

/// Reads the counters of all listeners in this process.
resp_metrics snapshot_resp_metrics() noexcept;

/// Starts listening. Returns the acceptor actor and the bound port, or an
/// error message (port in use, bad bind address). Stop it with
/// caf::anon_send_exit(acceptor, caf::exit_reason::user_shutdown): the
/// listening socket and every connection close (replies already produced are
/// still sent; durable replies still waiting for Redis are not). Stop it
/// before runtime::stop(), which waits for every actor of the system.
struct resp_listener {
  caf::actor acceptor;
  uint16_t port = 0;
  std::string error;
};
resp_listener spawn_resp_server(caf::actor_system& sys, runtime& rt, const resp_options& opts);

} // namespace tally
