// core/failpoint.cpp — see failpoint.hpp.
#include "core/failpoint.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
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
const char* const wait_dir = [] {
  const char* env = std::getenv("TALLY_FAILPOINT_WAIT_DIR");
  return env && *env ? env : nullptr;
}();
const bool throw_instead = [] {
  const char* env = std::getenv("TALLY_FAILPOINT_THROW");
  return env && std::strcmp(env, "1") == 0;
}();
// The pause, wait and throw modes act once: a test forces one moment.
std::atomic<bool> acted_once{false};

void say(const char* name, const char* what) noexcept {
  char line[512];
  int n = std::snprintf(line, sizeof line, "failpoint %s: %s\n", name, what);
  if (n > 0) {
    ssize_t rc = ::write(STDERR_FILENO, line, std::min(static_cast<size_t>(n), sizeof line - 1));
    (void)rc;
  }
}

bool exists(const std::string& path) noexcept { return ::access(path.c_str(), F_OK) == 0; }

/// Holds this thread until the test creates <dir>/<name>.release. Polling
/// keeps this free of anything the test would have to share but a directory.
void wait_for_release(const char* name) {
  const std::string base = std::string(wait_dir) + "/" + name;
  const std::string release = base + ".release";
  say(name, ("waiting for " + release).c_str());
  int fd = ::open((base + ".reached").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
  if (fd >= 0)
    ::close(fd);
  while (!exists(release))
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  say(name, "released");
}
} // namespace

void failpoint(const char* name) {
  const std::string& list = armed();
  if (list.empty() || list.find("," + std::string(name) + ",") == std::string::npos)
    return;
  if (skip_left.fetch_sub(1) > 0)
    return;
  if (pause_ms > 0 || wait_dir != nullptr || throw_instead) {
    if (acted_once.exchange(true))
      return;
    if (wait_dir != nullptr) {
      wait_for_release(name);
    } else if (throw_instead) {
      say(name, "throwing");
      throw failpoint_crash(std::string("failpoint ") + name);
    } else {
      char what[64];
      std::snprintf(what, sizeof what, "pausing %ld ms", pause_ms);
      say(name, what);
      std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms));
    }
    return;
  }
  say(name, "SIGKILL");
  ::kill(::getpid(), SIGKILL);
}

} // namespace tally
