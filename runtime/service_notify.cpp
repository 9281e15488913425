// runtime/service_notify.cpp — sd_notify(3) for tallyd (see service_notify.hpp).
#include "runtime/service_notify.hpp"

#include "core/log.hpp"
#include "runtime/runtime_internal.hpp"

#include <caf/all.hpp>
#include <systemd/sd-daemon.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <ctime>
#include <mutex>
#include <thread>

namespace tally {

namespace {

using namespace std::chrono_literals;

/// How often readiness is polled before READY=1; a normal start is ready at
/// once, so this only bounds the delay in the rare case that it is not.
constexpr auto ready_poll = 50ms;
/// When a start that is not ready yet is first reported, then how often again.
constexpr auto not_ready_report_first = 5s;
constexpr auto not_ready_report_every = 30s;

/// Sends one state string; a failure is logged, never fatal (systemd then
/// times out the start or the watchdog, which says more than we could).
void notify(const std::string& state) {
  int rc = sd_notify(0, state.c_str());
  if (rc < 0)
    TALLY_WARN("systemd", "sd_notify(" << state.substr(0, state.find('\n')) << ") failed: errno " << -rc);
}

/// CLOCK_MONOTONIC in microseconds, as RELOADING=1's MONOTONIC_USEC= wants it.
uint64_t monotonic_usec() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000u + static_cast<uint64_t>(ts.tv_nsec) / 1000u;
}

} // namespace

struct service_notifier::impl {
  runtime& rt;
  std::function<std::string()> readiness;
  bool enabled = false;                    // NOTIFY_SOCKET is set
  std::chrono::microseconds watchdog{0};   // WATCHDOG_USEC for this pid; 0 = off
  caf::actor probe;                        // answers the watchdog's liveness request
  std::thread thread;
  std::mutex mtx;
  std::condition_variable wake;
  bool stop_requested = false;  // under mtx
  bool ready_sent = false;      // under mtx

  impl(runtime& r, std::function<std::string()> ready) : rt(r), readiness(std::move(ready)) {
    const char* socket = std::getenv("NOTIFY_SOCKET");
    enabled = socket && *socket;
    uint64_t usec = 0;
    // > 0 only when WATCHDOG_USEC is set and WATCHDOG_PID, if set, is ours.
    if (enabled && sd_watchdog_enabled(0, &usec) > 0)
      watchdog = std::chrono::microseconds(usec);
  }

  /// Sleeps up to `d`; true when stopping() asked the thread to end.
  bool sleep_for(std::chrono::steady_clock::duration d) {
    std::unique_lock<std::mutex> lock(mtx);
    return wake.wait_for(lock, d, [this] { return stop_requested; });
  }

  /// Returns true when the actor system runs a trivial request within
  /// `timeout`: every scheduler thread stuck (a deadlock, a call that never
  /// returns) is what the watchdog is for.
  bool actor_system_answers(std::chrono::milliseconds timeout) {
    bool answered = false;
    caf::scoped_actor self{system_of(rt)};
    self->request(probe, timeout, caf::ok_atom::value)
      .receive([&](caf::ok_atom) { answered = true; }, [&](caf::error&) {});
    return answered;
  }

  void run(const std::string& status) {
    // READY=1 once stage 1 can persist. No deadline of our own: the unit's
    // TimeoutStartSec= bounds the start, and the one state that is not ready
    // at start (every Redis down and the journal full) clears by itself when
    // a Redis database comes back.
    auto next_report = std::chrono::steady_clock::now() + not_ready_report_first;
    for (;;) {
      auto why = readiness();
      if (why.empty())
        break;
      if (std::chrono::steady_clock::now() >= next_report) {
        TALLY_WARN("systemd", "not telling systemd READY=1 yet: " << why);
        notify("STATUS=not ready: " + why);
        next_report += not_ready_report_every;
      }
      if (sleep_for(ready_poll))
        return;
    }
    {
      std::lock_guard<std::mutex> lock(mtx);
      if (stop_requested)
        return;
      notify("READY=1\nSTATUS=" + status);
      ready_sent = true;
    }
    if (watchdog.count() == 0) {
      TALLY_INFO("systemd", "READY=1 sent");
      return;
    }
    auto interval = watchdog / 2;
    TALLY_INFO("systemd", "READY=1 sent; WATCHDOG=1 every "
                          << std::chrono::duration_cast<std::chrono::milliseconds>(interval).count() << " ms");
    auto probe_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(watchdog / 4);
    probe_timeout = std::max(probe_timeout, std::chrono::milliseconds(1));
    for (;;) {
      auto began = std::chrono::steady_clock::now();
      if (actor_system_answers(probe_timeout)) {
        std::lock_guard<std::mutex> lock(mtx);
        if (stop_requested)  // STOPPING=1 is out: nothing after it
          return;
        notify("WATCHDOG=1");
      } else {
        TALLY_ERROR("systemd", "the actor system did not answer within " << probe_timeout.count()
                               << " ms: no WATCHDOG=1 this round");
      }
      if (sleep_for(interval - (std::chrono::steady_clock::now() - began)))
        return;
    }
  }

  /// Ends the thread; sends `last` (if not empty) first, so that nothing the
  /// thread sends can follow it.
  void end_thread(const std::string& last) {
    {
      std::lock_guard<std::mutex> lock(mtx);
      if (stop_requested)
        return;
      stop_requested = true;
      if (!last.empty())
        notify(last);
    }
    wake.notify_all();
    if (thread.joinable())
      thread.join();
    if (probe) {
      caf::anon_send_exit(probe, caf::exit_reason::user_shutdown);
      probe = nullptr;
    }
  }
};

service_notifier::service_notifier(runtime& rt, std::function<std::string()> readiness)
  : impl_(std::make_unique<impl>(rt, std::move(readiness))) {}

service_notifier::~service_notifier() {
  impl_->end_thread("");
}

void service_notifier::start(const std::string& status) {
  auto& p = *impl_;
  if (!p.enabled || p.thread.joinable())
    return;
  if (p.watchdog.count() != 0)
    p.probe = system_of(p.rt).spawn([]() -> caf::behavior {
      return {[](caf::ok_atom) { return caf::ok_atom::value; }};
    });
  p.thread = std::thread([&p, status] { p.run(status); });
}

void service_notifier::reloading() {
  auto& p = *impl_;
  std::lock_guard<std::mutex> lock(p.mtx);
  if (p.ready_sent)  // a reload before READY=1 is part of the start
    notify("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(monotonic_usec()));
}

void service_notifier::reloaded() {
  auto& p = *impl_;
  std::lock_guard<std::mutex> lock(p.mtx);
  if (p.ready_sent)
    notify("READY=1");
}

void service_notifier::stopping() {
  auto& p = *impl_;
  if (p.enabled)
    p.end_thread("STOPPING=1");
}

} // namespace tally
