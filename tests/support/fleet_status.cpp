// tests/support/fleet_status.cpp — see fleet_status.hpp.
#include "tests/support/fleet_status.hpp"

namespace tally::testing {

std::string fleet_status(const runtime& rt) {
  std::string active = "none";
  for (const auto& db : rt.redis_databases())
    if (db.active)
      active = db.url;
  auto s = rt.snapshot();
  uint64_t total = 0;
  std::string by_reason;
  for (int i = 0; i < 5; ++i) {
    total += s.redis_switches[i];
    by_reason += std::string(" ") + redis_switch_reasons[i] + "=" + std::to_string(s.redis_switches[i]);
  }
  return " active=" + active + " switches=" + std::to_string(total) + by_reason
         + " journal=" + std::to_string(s.journal_batches) + " journaled=" + std::to_string(s.journaled)
         + " replayed=" + std::to_string(s.replayed) + " repushed=" + std::to_string(s.repushed);
}

} // namespace tally::testing
