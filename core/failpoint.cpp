// core/failpoint.cpp — see failpoint.hpp.
#include "core/failpoint.hpp"

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
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
} // namespace

void failpoint(const char* name) noexcept {
  const std::string& list = armed();
  if (list.empty() || list.find("," + std::string(name) + ",") == std::string::npos)
    return;
  if (skip_left.fetch_sub(1) > 0)
    return;
  char line[160];
  int n = std::snprintf(line, sizeof line, "failpoint %s: SIGKILL\n", name);
  ssize_t rc = ::write(STDERR_FILENO, line, static_cast<size_t>(n));
  (void)rc;
  ::kill(::getpid(), SIGKILL);
}

} // namespace tally
