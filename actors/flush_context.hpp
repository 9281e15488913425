// actors/flush_context.hpp — what the actors around Redis and Postgres
// (registry and retention on every instance; flush supervisor, lease and
// flusher where there is a Postgres) share, and the messages between them.
//
// The context is built once by the runtime and handed to every actor at
// spawn (configuration flows down): settings, this instance's identity, the
// keyspace, the Redis fleet to follow. Besides those it holds one piece of
// shared memory: the moment until which the Redis lease is known to be
// ours. The lease actor writes it on every renewal; the flusher reads it
// between the statements of a flush, so a lost lease rolls an open
// transaction back at once instead of after a message round trip. The
// Postgres fence (epoch), not this value, is what makes flushing correct.
#pragma once

#include "actors/ingest.hpp"
#include "actors/redis_fleet.hpp"
#include "adapters/redis_keyspace.hpp"
#include "tally/tally.hpp"

#include <caf/atom.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

namespace tally {

// Messages of stage 2 (CAF 0.17 atoms, at most 10 characters).
using lease_atom = caf::atom_constant<caf::atom("lease")>;      // lease -> supervisor: held?, epoch
using lead_atom = caf::atom_constant<caf::atom("lead")>;        // supervisor -> flusher: flush with epoch
using follow_atom = caf::atom_constant<caf::atom("follow")>;    // supervisor -> flusher: stop flushing
using fenced_atom = caf::atom_constant<caf::atom("fenced")>;    // flusher -> supervisor: epoch is stale
using fcycle_atom = caf::atom_constant<caf::atom("fcycle")>;    // flusher timer
using prune_atom = caf::atom_constant<caf::atom("prune")>;      // pruner timer
using fstop_atom = caf::atom_constant<caf::atom("fstop")>;      // finish, release, answer
using renew_atom = caf::atom_constant<caf::atom("renew")>;      // lease timer
using acquire_atom = caf::atom_constant<caf::atom("acquire")>;  // try to take the lease now
using release_atom = caf::atom_constant<caf::atom("release")>;  // compare-and-delete the lease
using drop_atom = caf::atom_constant<caf::atom("droplease")>;   // fenced: let the lease go
using beat_atom = caf::atom_constant<caf::atom("beat")>;        // registry heartbeat timer
using restart_atom = caf::atom_constant<caf::atom("restart")>;  // supervisor: respawn a child

/// Milliseconds of the steady clock (lease deadlines never jump with NTP).
inline int64_t steady_ms() noexcept {
  using namespace std::chrono;
  return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

/// Milliseconds of the wall clock (deadlines handed over by runtime::stop).
inline int64_t wall_ms() noexcept {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

struct flush_context {
  flush_context(const config& c, std::string instance_id, ingest_state& in, const redis_fleet& f)
    : cfg(c), instance(std::move(instance_id)), counters(&in.counters), ingest(&in), fleet(&f), keys(c.ns),
      started_ms(wall_ms()) {}

  const config cfg;
  const std::string instance;
  pipeline_counters* const counters;
  const ingest_state* const ingest;  // for the registry's event counts
  const redis_fleet* const fleet;    // which Redis database is active
  const adapters::redis_keyspace keys;
  const int64_t started_ms;          // wall clock, for the registry

  /// Steady-clock ms until which the lease is ours; 0 when not held.
  std::atomic<int64_t> lease_valid_until{0};

  /// A renewal sent at t is good until t + lease_ttl by Redis' clock; the
  /// margin covers clock rate differences and the time a flush statement
  /// still needs after this check.
  std::chrono::milliseconds lease_margin() const noexcept {
    return std::min(cfg.lease_ttl / 5, std::chrono::milliseconds(2000));
  }
  bool lease_valid() const noexcept {
    return steady_ms() + lease_margin().count() < lease_valid_until.load(std::memory_order_acquire);
  }
};

using flush_context_ptr = std::shared_ptr<flush_context>;

} // namespace tally
