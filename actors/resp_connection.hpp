// actors/resp_connection.hpp — one broker per RESP client connection.
//
// Messages it accepts (besides CAF's new_data_msg, data_transferred_msg,
// connection_passivated_msg, connection_closed_msg):
//   (resp_retry_atom, uint64_t generation)  re-run the commands held back by
//                                           ingest backpressure
//   (resp_durable_atom, uint64_t ticket, uint8_t errc)  a durable ticket is in
//                                           Redis (errc ok) or failed
//   (resp_idle_atom)                        idle-timeout check
//   (resp_unpark_atom)                      CAF has applied a passivation: a
//                                           read token works again
// It sends nothing to other actors; durable fences travel through
// resp_backend::durable_fence and come back as resp_durable_atom.
//
// The acceptor (resp_server.cpp) forks one per accepted socket; see the
// comment of resp_connection.cpp for the read/parse/reply cycle.
#pragma once

#include "actors/resp_backend.hpp"
#include "actors/resp_server.hpp"

#include <caf/atom.hpp>
#include <caf/io/fwd.hpp>

#include <atomic>
#include <memory>

namespace tally {

using resp_retry_atom = caf::atom_constant<caf::atom("respretry")>;
using resp_durable_atom = caf::atom_constant<caf::atom("respdur")>;
using resp_idle_atom = caf::atom_constant<caf::atom("respidle")>;
using resp_unpark_atom = caf::atom_constant<caf::atom("respunpark")>;

/// What a listener shares with its connections (read-only but the counters).
struct resp_context {
  std::shared_ptr<resp_backend> backend;
  resp_options opts;
  std::atomic<uint32_t> connections{0};     // live connections of this listener
  std::atomic<uint64_t> next_client_id{1};  // CLIENT ID / HELLO id
};

/// The process-wide counters behind snapshot_resp_metrics().
struct resp_counters {
#define TALLY_RESP_ATOMIC(member, kind, metric, help) std::atomic<uint64_t> member{0};
  TALLY_RESP_COUNTERS(TALLY_RESP_ATOMIC)
#undef TALLY_RESP_ATOMIC
  std::atomic<uint64_t> rejections[resp_metrics::errc_slots] = {};

  void add(std::atomic<uint64_t> resp_counters::*member, uint64_t n = 1) noexcept {
    (this->*member).fetch_add(n, std::memory_order_relaxed);
  }
  void reject(errc code) noexcept {
    auto slot = static_cast<size_t>(code);
    if (slot < resp_metrics::errc_slots)
      rejections[slot].fetch_add(1, std::memory_order_relaxed);
  }
};
resp_counters& global_resp_counters() noexcept;

/// Moves the accepted socket `hdl` from `acceptor` into a new connection
/// broker and returns it. The caller has already counted it in
/// ctx->connections; the connection uncounts itself when it ends.
caf::actor fork_resp_connection(caf::io::broker* acceptor, caf::io::connection_handle hdl,
                                std::shared_ptr<resp_context> ctx);

/// Forks a broker that answers "-ERR max number of clients reached" and
/// closes (the connection is not counted).
void fork_refused_connection(caf::io::broker* acceptor, caf::io::connection_handle hdl);

} // namespace tally
