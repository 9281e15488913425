// core/failpoint.cpp — see failpoint.hpp.
#include "core/failpoint.hpp"

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <unistd.h>

namespace tally {

namespace {
const std::string& armed() {
  static const std::string value = [] {
    const char* env = std::getenv("TALLY_FAILPOINT");
    return env ? "," + std::string(env) + "," : std::string();
  }();
  return value;
}
std::atomic<long> skip_left{[] {
  const char* env = std::getenv("TALLY_FAILPOINT_SKIP");
  return env ? std::atol(env) : 0L;
}()};
const long pause_ms = [] {
  const char* env = std::getenv("TALLY_FAILPOINT_PAUSE_MS");
  return env ? std::atol(env) : 0L;
}();
std::atomic<bool> paused_once{false};
} // namespace

void failpoint(const char* name) noexcept {
  const std::string& list = armed();
  if (list.empty() || list.find("," + std::string(name) + ",") == std::string::npos)
    return;
  if (skip_left.fetch_sub(1) > 0)
    return;
  if (pause_ms > 0) {
    if (paused_once.exchange(true))
      return;
    char line[160];
    int n = std::snprintf(line, sizeof line, "failpoint %s: pausing %ld ms\n", name, pause_ms);
    ssize_t rc = ::write(STDERR_FILENO, line, static_cast<size_t>(n));
    (void)rc;
    std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms));
    return;
  }
  char line[160];
  int n = std::snprintf(line, sizeof line, "failpoint %s: SIGKILL\n", name);
  ssize_t rc = ::write(STDERR_FILENO, line, static_cast<size_t>(n));
  (void)rc;
  ::kill(::getpid(), SIGKILL);
}

} // namespace tally
