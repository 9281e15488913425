// actors/resp_server.cpp — the RESP acceptor broker (see resp_server.hpp).
//
// The listening socket is opened on the caller's thread (so spawn_resp_server
// can report "port in use" and the bound port at once), then handed to an
// acceptor broker. The acceptor forks one resp_connection broker per socket,
// or a refusing one past max_connections, and monitors the connections so
// that its own exit (user_shutdown) closes every one of them.
//
// Why parsing stays on the multiplexer thread: CAF 0.17 runs every broker on
// its single multiplexer thread. bench/README.md ("RESP ingest") has the
// measurement: on the 2-core box the multiplexer thread is not the limit
// (redis-benchmark itself needs a core; the aggregators need the rest), and
// handing buffers to scheduled parser actors would add a copy and two
// messages per read without adding a core. The per-connection code keeps
// the parse step separate (process()), so moving it later is local.
#include "actors/resp_server.hpp"

#include "actors/resp_connection.hpp"
#include "core/log.hpp"

#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include <unordered_map>

namespace tally {

namespace {

struct acceptor_state {
  static inline const char* name = "resp_acceptor";
  std::shared_ptr<resp_context> ctx;
  std::unordered_map<caf::actor_id, caf::actor> connections;
};

using acceptor_broker = caf::io::stateful_broker<acceptor_state>;

caf::behavior resp_acceptor(acceptor_broker* self, caf::io::doorman_ptr doorman,
                            std::shared_ptr<resp_context> ctx) {
  self->state.ctx = std::move(ctx);
  self->add_doorman(std::move(doorman));
  self->set_down_handler([=](caf::down_msg& msg) {
    self->state.connections.erase(msg.source.id());
  });
  // Any exit request (user_shutdown from the owner) closes every connection,
  // then the acceptor; without this the connections would outlive it and
  // keep the actor system from shutting down.
  self->set_exit_handler([=](caf::exit_msg& msg) {
    for (auto& [id, conn] : self->state.connections)
      self->send_exit(conn, msg.reason);
    self->state.connections.clear();
    self->quit(msg.reason);
  });
  return {
    [=](const caf::io::new_connection_msg& msg) {
      auto& st = self->state;
      auto& counters = global_resp_counters();
      counters.connections_total.fetch_add(1, std::memory_order_relaxed);
      if (st.ctx->connections.load(std::memory_order_relaxed) >= st.ctx->opts.max_connections) {
        counters.connections_refused.fetch_add(1, std::memory_order_relaxed);
        fork_refused_connection(self, msg.handle);
        return;
      }
      st.ctx->connections.fetch_add(1, std::memory_order_relaxed);
      counters.connections_current.fetch_add(1, std::memory_order_relaxed);
      auto conn = fork_resp_connection(self, msg.handle, st.ctx);
      self->monitor(conn);
      st.connections.emplace(conn.id(), conn);
    },
    [=](const caf::io::acceptor_closed_msg&) {
      TALLY_ERROR("resp_server", "listening socket closed unexpectedly");
    },
  };
}

} // namespace

resp_listener spawn_resp_server(caf::actor_system& sys, std::shared_ptr<resp_backend> backend,
                                const resp_options& opts) {
  // The options come checked against their bounds (runtime/options.cpp,
  // the one place they are written).
  resp_listener out;
  auto& mm = sys.middleman();
  auto doorman = mm.backend().new_tcp_doorman(opts.port, opts.bind.c_str(), true);
  if (!doorman) {
    out.error = "resp listener " + opts.bind + ":" + std::to_string(opts.port) + ": "
                + sys.render(doorman.error());
    return out;
  }
  out.port = (*doorman)->port();
  auto ctx = std::make_shared<resp_context>();
  ctx->backend = std::move(backend);
  ctx->opts = opts;
  ctx->opts.port = out.port;
  out.acceptor = mm.spawn_broker(resp_acceptor, std::move(*doorman), std::move(ctx));
  TALLY_INFO("resp_server", "listening on " << opts.bind << ":" << out.port
                            << (opts.requirepass.empty() ? "" : " (requirepass set)"));
  return out;
}

} // namespace tally
