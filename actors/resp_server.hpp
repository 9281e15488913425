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
#include <memory>
#include <string>

namespace tally {

class resp_backend;

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

/// Every RESP counter, once: X(member, kind, metric, help). The struct
/// below, the atomics behind it (resp_connection.hpp), /metrics
/// (runtime/metrics.cpp) and TALLY.STATUS ("resp_<member>") all expand it,
/// so a new counter is one line here. kind is gauge or counter.
#define TALLY_RESP_COUNTERS(X)                                                                        \
  X(connections_current, gauge, "tally_connections", "Open RESP client connections.")                 \
  X(connections_total, counter, "tally_connections_accepted_total",                                    \
    "RESP connections accepted (refused ones included).")                                              \
  X(connections_refused, counter, "tally_connections_refused_total",                                   \
    "RESP connections refused over resp_max_connections.")                                             \
  X(commands, counter, "tally_commands_total", "RESP commands executed (any command).")                \
  X(events_accepted, counter, "tally_resp_events_accepted_total",                                      \
    "TALLY.RECORD events taken by the runtime over RESP.")                                             \
  X(transactions, counter, "tally_transactions_total",                                                 \
    "MULTI/EXEC transactions whose records were all counted.")                                         \
  X(transactions_refused, counter, "tally_transactions_refused_total",                                 \
    "EXECs that counted nothing: a queued command was malformed or an event was refused.")            \
  X(protocol_errors, counter, "tally_protocol_errors_total",                                           \
    "Malformed RESP input (error reply, then the connection closes).")                                 \
  X(auth_failures, counter, "tally_auth_failures_total", "AUTH attempts with a wrong password.")       \
  X(noauth_refusals, counter, "tally_noauth_refusals_total",                                           \
    "Commands refused because the connection had not authenticated.")                                 \
  X(backpressure_pauses, counter, "tally_backpressure_pauses_total",                                   \
    "Times a RESP connection stopped reading because the ingest queues were full.")                    \
  X(output_pauses, counter, "tally_output_pauses_total",                                               \
    "Times a RESP connection stopped reading because its replies were not being read.")                \
  X(idle_closes, counter, "tally_idle_closes_total", "RESP connections closed by resp_idle_timeout.")  \
  X(buffer_limit_closes, counter, "tally_buffer_limit_closes_total",                                   \
    "RESP connections closed by resp_max_buffered_bytes.")                                             \
  X(stop_abandoned_replies, counter, "tally_stop_abandoned_replies_total",                             \
    "Durable replies answered with an error because the listener stopped before Redis confirmed.")

/// Process-wide counters of every RESP listener, for /metrics. Each value is
/// a snapshot of a relaxed atomic (monotonic unless its kind is gauge).
struct resp_metrics {
  static constexpr size_t errc_slots = 16;  // tally::errc values 0..15
#define TALLY_RESP_FIELD(member, kind, metric, help) uint64_t member = 0;
  TALLY_RESP_COUNTERS(TALLY_RESP_FIELD)
#undef TALLY_RESP_FIELD
  uint64_t rejections[errc_slots] = {};  // TALLY.RECORD refused, by tally::errc

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
/// still sent; durable replies still waiting for Redis are sent when Redis
/// confirms them, or answered with an error after a grace period). Stop it
/// before runtime::stop(), which waits for every actor of the system.
struct resp_listener {
  caf::actor acceptor;
  uint16_t port = 0;
  std::string error;
};
resp_listener spawn_resp_server(caf::actor_system& sys, std::shared_ptr<resp_backend> backend,
                                const resp_options& opts);

} // namespace tally
