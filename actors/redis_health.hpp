// actors/redis_health.hpp — one health actor per Redis database.
//
// Every health_check_interval it runs one round of up to
// health_check_probes PINGs, health_check_probe_delay apart, each bounded by
// health_check_timeout, on its own connection (never one a data path uses,
// so probes run off the hot path and a hung database costs one probe
// timeout, not a stalled writer). The round ends as soon as the policy
// (all / majority / any must pass) is decided and its verdict goes to the
// failover actor, which owns the database's circuit breaker.
//
// A Sentinel database (`redis+sentinel://`) is resolved at the start of
// every round: the Sentinels name the primary, ROLE confirms it. When the
// primary moved (a Sentinel failover), the round probes the new address and
// the verdict carries it, so the failover actor re-points every link.
//
// Accepts:
//   hprobe_atom, uint64_t round, uint32_t probe    timer: the next probe
// Sends to the failover actor:
//   probe_atom, uint32_t db, bool healthy, std::string why, std::string host, int32_t port
//     (host "" when a Sentinel database could not be resolved)
#pragma once

#include "adapters/redis_client.hpp"
#include "core/circuit_breaker.hpp"

#include <caf/atom.hpp>
#include <caf/fwd.hpp>

#include <chrono>
#include <cstdint>

namespace tally {

using probe_atom = caf::atom_constant<caf::atom("probe")>;
using hprobe_atom = caf::atom_constant<caf::atom("hprobe")>;

struct health_settings {
  std::chrono::milliseconds interval{1000};
  uint32_t probes = 3;
  std::chrono::milliseconds probe_delay{100};
  std::chrono::milliseconds timeout{1000};
  probe_policy policy = probe_policy::all;
};

/// Spawns the health actor of database `db` (detached: its probes block),
/// linked to `failover`, which receives its verdicts.
caf::actor spawn_redis_health(caf::event_based_actor* failover, uint32_t db, adapters::redis_database_spec spec,
                              health_settings settings);

} // namespace tally
