// core/log.hpp — one line per event, leveled, to stderr.
//
// CAF's own logger is compiled out of Debian's build, so tally brings this
// one. A line is `2026-11-23T13:45:00.123Z level component: message` and is
// written with a single write(2), so lines from threads never interleave.
#pragma once

#include <atomic>
#include <sstream>
#include <string>

namespace tally {

enum class log_level : int { debug = 0, info = 1, warn = 2, error = 3, off = 4 };

/// Sets the least severe level that is printed (default info).
void set_log_level(log_level level) noexcept;
log_level get_log_level() noexcept;
/// Parses "debug|info|warn|error|off"; false when unknown.
bool parse_log_level(const std::string& text, log_level& out) noexcept;

void log_line(log_level level, const char* component, const std::string& message) noexcept;

} // namespace tally

#define TALLY_LOG(level, component, expr)                                   \
  do {                                                                      \
    if (static_cast<int>(level) >= static_cast<int>(::tally::get_log_level())) { \
      std::ostringstream tally_log_os_;                                     \
      tally_log_os_ << expr;                                                \
      ::tally::log_line(level, component, tally_log_os_.str());             \
    }                                                                       \
  } while (false)

#define TALLY_DEBUG(c, e) TALLY_LOG(::tally::log_level::debug, c, e)
#define TALLY_INFO(c, e) TALLY_LOG(::tally::log_level::info, c, e)
#define TALLY_WARN(c, e) TALLY_LOG(::tally::log_level::warn, c, e)
#define TALLY_ERROR(c, e) TALLY_LOG(::tally::log_level::error, c, e)
