// runtime/service_notify.hpp — tallyd's side of systemd's service protocol
// (sd_notify(3)), for a unit with Type=notify and WatchdogSec=.
//
// What systemd hears, and when:
//   READY=1     once the listeners are bound (start() is called after them)
//               and stage 1 can persist: the same verdict as /readyz (a Redis
//               database is active, or the spill journal takes batches).
//               Units ordered After=tallyd.service start only then.
//   WATCHDOG=1  every half WATCHDOG_USEC while the actor system answers a
//               probe. A hung scheduler stops the pings and systemd restarts
//               tallyd; a full journal or every Redis down does not (a
//               restart would not help and would cost the batches in memory).
//   RELOADING=1, then READY=1, around a SIGHUP reload.
//   STOPPING=1  when SIGTERM/SIGINT handling begins; the watchdog stops with
//               it (systemd no longer watches a stopping service either).
//
// Without NOTIFY_SOCKET in the environment (not started by systemd) every
// call does nothing and no thread runs.
//
// Order of calls: start() after the listeners are bound; reloading() and
// reloaded() around each reload; stopping() before runtime::stop(), which
// destroys the actor system the watchdog probes.
#pragma once

#include "tally/tally.hpp"

#include <functional>
#include <memory>
#include <string>

namespace tally {

class service_notifier {
public:
  /// `readiness` returns "" when stage 1 can persist, else why not (it is
  /// called from the notifier's thread). `rt` must be started and outlive
  /// this object.
  service_notifier(runtime& rt, std::function<std::string()> readiness);
  ~service_notifier();  // calls stopping() without notifying if still running
  service_notifier(const service_notifier&) = delete;
  service_notifier& operator=(const service_notifier&) = delete;

  /// Starts the thread that sends READY=1 once `readiness` says so (with
  /// `status` as STATUS=), then the watchdog pings.
  void start(const std::string& status);

  /// Sends RELOADING=1: a SIGHUP reload begins.
  void reloading();

  /// Sends READY=1 again: the reload is done.
  void reloaded();

  /// Sends STOPPING=1 and ends the thread. Idempotent.
  void stopping();

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace tally
