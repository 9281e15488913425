// runtime/http_server.hpp — tallyd's operations endpoint (cpp-httplib).
//
//   GET /metrics  Prometheus text format (runtime/metrics.hpp)
//   GET /healthz  200 "ok" while the process serves HTTP (liveness)
//   GET /v1/instances  JSON: every live instance of the namespace and the
//                 lease holder (runtime::cluster: read from the active Redis
//                 at most once a second); 503 with {"error": ...} when it
//                 cannot be read
//   GET /readyz   200 "ready" when this instance can persist events, else
//                 503 with the reason (readiness; see below)
//
// Readiness (design §7: "can persist"): tallyd is ready when (1) it is not
// shutting down and (2) stage 1 can persist: a Redis database is active, or
// the local spill journal still takes batches (it is not full). With every
// Redis down it stays ready and says so in the body: events go to the
// journal and are replayed later, nothing is refused. Postgres is not part
// of it: stage 1 keeps persisting while Postgres is down, and the flush
// catches up later.
//
// Threads: httplib's listener thread and its worker pool, never CAF's
// scheduler. Nothing here but /v1/instances talks to Redis: database states come from the
// failover actor's view (its health actors probe), the stage-1 backlog from
// the registry's heartbeat, so a scrape storm is never a Redis storm.
//
// Order of calls: start() (binds synchronously, so a port in use is an
// error at once), set_stopping() when a signal arrives, stop() last.
#pragma once

#include "tally/tally.hpp"

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

namespace tally {

struct daemon_options;

class ops_http_server {
public:
  /// `rt` must outlive this object; the options are copied.
  ops_http_server(runtime& rt, const daemon_options& opts);
  ~ops_http_server();  // calls stop()
  ops_http_server(const ops_http_server&) = delete;
  ops_http_server& operator=(const ops_http_server&) = delete;

  /// Binds http_bind:http_port and serves on a thread of its own. Returns ""
  /// or why it could not listen.
  std::string start();

  /// The bound port (the chosen one when http_port was 0).
  uint16_t port() const noexcept;

  /// From now on /readyz answers 503 "stopping" (load balancers drain).
  void set_stopping() noexcept;

  /// Stops listening and joins the server thread. Idempotent.
  void stop();

  /// Exposed for tests and TALLY.STATUS-like callers: "" when ready, else why not.
  std::string readiness();

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace tally
