// tests/harness/servers_inl.hpp — template definitions for servers.hpp.
//
// Included at the end of servers.hpp; do not include it directly.
#pragma once

#include <chrono>
#include <thread>

namespace tally::testing {

// Polls instead of sleeping a fixed time (style.md: tests wait on a condition
// with a deadline). The last evaluation happens at or after the deadline, so a
// condition that becomes true just in time is still seen.
template <class Pred>
bool wait_for(Pred pred, std::chrono::milliseconds deadline, std::chrono::milliseconds poll) {
  const auto until = std::chrono::steady_clock::now() + deadline;
  while (std::chrono::steady_clock::now() < until) {
    if (pred())
      return true;
    std::this_thread::sleep_for(poll);
  }
  return static_cast<bool>(pred());
}

} // namespace tally::testing
