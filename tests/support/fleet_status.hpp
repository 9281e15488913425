// tests/support/fleet_status.hpp — the Redis-fleet part of a test process's
// progress line, so tests can wait on failover events from the outside.
#pragma once

#include "tally/tally.hpp"

#include <string>

namespace tally::testing {

/// " active=<url|none> switches=<total> health_check=<n> failure_detector=<n>
/// fail_back=<n> operator=<n> sentinel=<n> journal=<batches> journaled=<n>
/// replayed=<n> repushed=<n>" (leading space; urls with passwords masked).
std::string fleet_status(const runtime& rt);

} // namespace tally::testing
