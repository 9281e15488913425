// runtime/tallyd_main.cpp — the tallyd daemon: a thin main over the library.
//
// Order (each step's failure is one line and an exit code):
//   1. options: defaults < file < environment < flags (runtime/options.hpp);
//      a bad option exits 2 naming it;
//   2. signals: SIGTERM, SIGINT and SIGHUP are blocked before the actor
//      system exists, so every CAF thread inherits the mask and only the
//      sigwait below sees them (CAF installs no handlers); SIGPIPE is ignored
//      (a client that vanishes must not kill the daemon);
//   3. runtime with CAF's io module, RESP listener, HTTP endpoint (a failure
//      to start any of them exits 1 after stopping what started);
//   4. systemd (runtime/service_notify.hpp; nothing without NOTIFY_SOCKET):
//      READY=1 once stage 1 can persist, WATCHDOG=1 while the actor system
//      answers, RELOADING=1/READY=1 around a reload, STOPPING=1 on a stop;
//   5. sigwait: SIGHUP reloads the options marked runtime-changeable (the
//      Redis database list among them);
//      SIGTERM/SIGINT stop: /readyz turns 503, the RESP acceptor and its
//      connections close, runtime::stop() drains the queues, writes the final
//      stage-1 batch (to the spill journal if no Redis takes it) and
//      releases the flush lease; exit 0 (exit 1 only if batches could go
//      neither to Redis nor to the journal: they are lost with this
//      process, and a supervisor should know).
#include "actors/resp_server.hpp"
#include "core/log.hpp"
#include "runtime/http_server.hpp"
#include "runtime/options.hpp"
#include "runtime/runtime_internal.hpp"
#include "runtime/service_notify.hpp"

#include <caf/all.hpp>

#include <csignal>
#include <cstdio>
#include <iostream>

using namespace tally;

namespace {

constexpr int exit_startup_failed = 1;
constexpr int exit_bad_option = 2;

/// Applies the options marked runtime-changeable from the file (re-read),
/// environment and flags; warns about changed options that need a restart.
/// A changed Redis database list goes to the failover actor, which adds,
/// removes and re-weights (refusing what would leave no database).
void reload(daemon_options& current, const command_line& cl, runtime& rt) {
  daemon_options next;
  if (auto err = load_options(next, cl, environment_variables()); !err.empty()) {
    TALLY_ERROR("tallyd", "SIGHUP: config not reloaded: " << err);
    return;
  }
  int changed = 0, refused = 0;
  for (auto& spec : option_table()) {
    auto before = spec.get(current), after = spec.get(next);
    if (before == after)
      continue;
    if (!spec.runtime_changeable) {
      TALLY_WARN("tallyd", "SIGHUP: option " << spec.name << " changed; restart to apply it");
      continue;
    }
    if (spec.name == "redis_urls") {
      if (auto err = rt.set_redis_databases(next.runtime.redis_urls); !err.empty()) {
        TALLY_ERROR("tallyd", "SIGHUP: redis databases not reloaded: " << err);
        ++refused;
        continue;
      }
    }
    spec.set(current, after);
    ++changed;
    TALLY_INFO("tallyd", "SIGHUP: option " << spec.name << " = " << after << " (was " << before << ")");
  }
  log_level level;
  if (parse_log_level(current.log_level, level))
    set_log_level(level);
  if (changed == 0 && refused == 0)
    TALLY_INFO("tallyd", "SIGHUP: no runtime-changeable option changed");
}

} // namespace

int main(int argc, char** argv) {
  auto cl = parse_command_line(argc, argv);
  if (cl.what == command_line::action::exit_ok) {
    std::cout << cl.output;
    return 0;
  }
  if (cl.what == command_line::action::exit_error) {
    std::cerr << cl.output << "\n";
    return exit_bad_option;
  }
  auto env = environment_variables();
  daemon_options opts;
  if (auto err = load_options(opts, cl, env); !err.empty()) {
    std::cerr << "tallyd: " << err << "\n";
    return exit_bad_option;
  }
  if (cl.print_config) {
    std::cout << effective_config(opts);
    return 0;
  }
  log_level level = log_level::info;
  parse_log_level(opts.log_level, level);  // validated above
  set_log_level(level);
  for (auto& [name, value] : env) {
    // Read by the failpoints (core/failpoint.hpp), not options.
    bool known = name == "TALLY_FAILPOINT" || name == "TALLY_FAILPOINT_SKIP";
    for (auto& spec : option_table())
      known = known || spec.env() == name;
    if (!known)
      TALLY_WARN("tallyd", "ignoring unknown environment variable " << name);
  }

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  runtime rt;
  if (auto err = start_with_io(rt, opts.runtime); !err.empty()) {
    TALLY_ERROR("tallyd", "cannot start: " << err);
    return exit_startup_failed;
  }
  auto listener = spawn_resp_server(system_of(rt), make_resp_backend(rt), opts.resp);
  if (!listener.error.empty()) {
    TALLY_ERROR("tallyd", "cannot start: " << listener.error);
    rt.stop();
    return exit_startup_failed;
  }
  ops_http_server http(rt, opts);
  if (auto err = http.start(); !err.empty()) {
    TALLY_ERROR("tallyd", "cannot start: " << err);
    caf::anon_send_exit(listener.acceptor, caf::exit_reason::user_shutdown);
    listener.acceptor = nullptr;
    rt.stop();
    return exit_startup_failed;
  }
  TALLY_INFO("tallyd", "tallyd ready: resp " << opts.resp.bind << ":" << listener.port << " http "
                       << opts.http_bind << ":" << http.port() << " instance " << rt.instance_id()
                       << " namespace " << opts.runtime.ns
                       << (opts.runtime.postgres_url.empty() ? " (stage 2 off: postgres_url empty)" : ""));
  service_notifier systemd(rt, [&http] { return http.readiness(); });
  systemd.start("resp " + opts.resp.bind + ":" + std::to_string(listener.port) + ", http " + opts.http_bind + ":"
                + std::to_string(http.port()) + ", instance " + rt.instance_id());

  int sig = 0;
  for (;;) {
    if (sigwait(&signals, &sig) != 0)
      continue;
    if (sig != SIGHUP)
      break;
    systemd.reloading();
    reload(opts, cl, rt);
    systemd.reloaded();
  }
  systemd.stopping();  // before runtime::stop(): the watchdog probes its actor system
  TALLY_INFO("tallyd", "stopping on " << (sig == SIGTERM ? "SIGTERM" : "SIGINT")
                       << ": closing listeners, draining");
  http.set_stopping();
  // The acceptor and every connection must be gone before runtime::stop(),
  // which waits for all actors of the system (and the handle must not
  // outlive the system).
  caf::anon_send_exit(listener.acceptor, caf::exit_reason::user_shutdown);
  listener.acceptor = nullptr;
  rt.stop();
  http.stop();
  auto st = rt.snapshot();
  TALLY_INFO("tallyd", "stopped: " << st.events_accepted << " events accepted, " << st.batches_written
                       << " batches written, " << st.journal_batches << " in the spill journal, "
                       << st.pending_batches << " lost");
  return st.pending_batches == 0 ? 0 : exit_startup_failed;
}
