// runtime/metrics.hpp — tallyd's metrics in the Prometheus text format.
//
// A pure function from counter snapshots to text, so it is tested without a
// server and the HTTP layer only gathers the snapshots. Names start with
// `tally_`; counters end in `_total`; every family has HELP and TYPE lines
// (text exposition format 0.0.4, checked by `promtool check metrics`).
#pragma once

#include "actors/resp_server.hpp"
#include "tally/tally.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace tally {

/// Everything one scrape shows.
struct metrics_snapshot {
  stats runtime;
  resp_metrics resp;
  std::vector<redis_database_status> databases;
  std::string instance;
  std::string ns;
  bool ready = false;
  bool stopping = false;
  double uptime_seconds = 0;
};

/// Renders the snapshot in the Prometheus text exposition format.
std::string render_metrics(const metrics_snapshot& m);

} // namespace tally
