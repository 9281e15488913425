// actors/failover.hpp — owns "the active Redis database" (design §6).
//
// Concept: one failover actor per runtime holds, for every configured
// database, a circuit breaker (core/circuit_breaker.hpp) fed by two inputs:
// the verdicts of that database's health actor (redis_health.hpp) and the
// outcomes of the commands tally really sends (reported by every redis_link:
// the failure detector). From them it picks the active database: the one
// with the highest weight whose circuit is closed (ties: the first
// configured). It publishes the result in the shared redis_fleet view, which
// every Redis-using actor follows.
//
// When it switches:
//   * away from the active database as soon as its circuit opens (health
//     check or failure detector), to the best closed one, or to none (then
//     batches go to the local spill journal and nobody holds the lease);
//   * back to a strictly better database only from the fail-back timer
//     (auto_fallback_interval, with jitter, so a fleet does not move in
//     lockstep), never because a probe happened to pass: a database that
//     recovered is trusted only after its grace period (the breaker);
//   * on operator commands (promote, weight, remove).
// Every switch is logged with its reason, counted in
// pipeline_counters::redis_switches, passed to config::on_redis_switch and
// sent (active_atom) to every subscriber, so the writer and retention push
// again at once what the old database may not deliver.
//
// Accepts:
//   probe_atom, uint32_t db, bool healthy, std::string why, std::string host, int32_t port   from health actors
//   cmd_atom, uint32_t db, bool ok                          one logical command's outcome (redis_link)
//   subscribe_atom                                          the sender gets active_atom from now on
//   fallback_atom, uint64_t generation                      the fail-back timer
//   dbadd_atom, std::string url, uint32_t weight -> std::string      "" or why refused
//   dbremove_atom, std::string url -> std::string
//   dbweight_atom, std::string url, uint32_t weight -> std::string
//   dbpromote_atom, std::string url -> std::string
//   dbset_atom, std::vector<std::string> urls -> std::string          reload the whole list
#pragma once

#include "actors/ingest.hpp"
#include "actors/redis_fleet.hpp"

#include <caf/atom.hpp>
#include <caf/fwd.hpp>

namespace tally {

using fallback_atom = caf::atom_constant<caf::atom("fallback")>;
using dbadd_atom = caf::atom_constant<caf::atom("dbadd")>;
using dbremove_atom = caf::atom_constant<caf::atom("dbremove")>;
using dbweight_atom = caf::atom_constant<caf::atom("dbweight")>;
using dbpromote_atom = caf::atom_constant<caf::atom("dbpromote")>;
using dbset_atom = caf::atom_constant<caf::atom("dbset")>;

/// Spawns the failover actor for `cfg.redis_urls` (already validated) and
/// one health actor per database; sets itself as `fleet`'s failover.
caf::actor spawn_failover(caf::actor_system& sys, const config& cfg, redis_fleet& fleet, pipeline_counters& counters);

} // namespace tally
