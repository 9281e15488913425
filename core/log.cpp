// core/log.cpp — see log.hpp.
#include "core/log.hpp"

#include <chrono>
#include <cstdio>
#include <ctime>
#include <unistd.h>

namespace tally {

namespace {
std::atomic<int> current_level{static_cast<int>(log_level::info)};
const char* names[] = {"debug", "info", "warn", "error", "off"};
} // namespace

void set_log_level(log_level level) noexcept { current_level.store(static_cast<int>(level)); }
log_level get_log_level() noexcept { return static_cast<log_level>(current_level.load(std::memory_order_relaxed)); }

bool parse_log_level(const std::string& text, log_level& out) noexcept {
  for (int i = 0; i <= 4; ++i)
    if (text == names[i]) {
      out = static_cast<log_level>(i);
      return true;
    }
  return false;
}

void log_line(log_level level, const char* component, const std::string& message) noexcept {
  try {
    using namespace std::chrono;
    auto now = system_clock::now();
    auto ms = duration_cast<milliseconds>(now.time_since_epoch()).count();
    std::time_t secs = static_cast<std::time_t>(ms / 1000);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char stamp[64];
    std::snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms % 1000));
    std::string line;
    line.reserve(64 + message.size());
    line += stamp;
    line += ' ';
    line += names[static_cast<int>(level)];
    line += ' ';
    line += component;
    line += ": ";
    for (char c : message)  // one event, one line
      line += (c == '\n' || c == '\r') ? ' ' : c;
    line += '\n';
    ssize_t rc = ::write(STDERR_FILENO, line.data(), line.size());
    (void)rc;
  } catch (...) {
  }
}

} // namespace tally
