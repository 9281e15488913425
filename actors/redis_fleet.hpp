// actors/redis_fleet.hpp — the Redis databases as one shared, read-mostly
// view, and the link every Redis-using actor holds to "the active database".
//
// Concept: the failover actor (failover.hpp) is the only writer of the view:
// which databases exist, their weights, where each one is (a Sentinel
// database moves), their circuit states, and which one is active. Every
// other actor (stage-1 writer, lease, flusher, registry, retention) reads it
// through a redis_link and follows it: none keeps its own idea of the active
// database. A new view is published whole (copy on write), so a reader
// holding one sees a consistent picture; `generation` changes whenever the
// active database or its address changes, so links notice with one atomic
// load.
//
// Links report the outcome of every logical command back to the failover
// actor (the failure detector's input), one report per logical command.
#pragma once

#include "adapters/redis_client.hpp"
#include "core/circuit_breaker.hpp"

#include <caf/actor.hpp>
#include <caf/atom.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace tally {

/// Sent by the failover actor to subscribers after the active database (or
/// its address) changed: `active_atom, uint64_t generation`.
using active_atom = caf::atom_constant<caf::atom("active")>;
/// `subscribe_atom` to the failover actor: send me active_atom from now on.
using subscribe_atom = caf::atom_constant<caf::atom("subscribe")>;
/// `cmd_atom, uint32_t db, bool ok` to the failover actor: one logical command's outcome.
using cmd_atom = caf::atom_constant<caf::atom("cmd")>;

/// One configured database as the view shows it.
struct fleet_db {
  uint32_t id = 0;                        // unique for the life of the process, never reused
  adapters::redis_database_spec spec;     // url, display, weight, direct or Sentinel
  std::optional<adapters::redis_endpoint> endpoint;  // where it is now; none until a Sentinel answered
  circuit_state state = circuit_state::unknown;
  std::string last_error;                 // the latest failed probe's reason
  uint64_t opens = 0;
};

struct fleet_view {
  uint64_t generation = 0;  // changes when the active database or its endpoint changes
  std::vector<fleet_db> dbs;
  int active = -1;          // index into dbs; -1: no database is healthy

  const fleet_db* active_db() const noexcept { return active >= 0 ? &dbs[static_cast<size_t>(active)] : nullptr; }
  std::optional<uint32_t> active_db_id() const noexcept {
    return active >= 0 ? std::optional<uint32_t>(dbs[static_cast<size_t>(active)].id) : std::nullopt;
  }
  const fleet_db* find(uint32_t id) const noexcept;
  /// None is active yet because some database has not had its first health
  /// verdict (the process is starting), not because they failed.
  bool judging() const noexcept {
    if (active >= 0)
      return false;
    for (const auto& d : dbs)
      if (d.state == circuit_state::unknown)
        return true;
    return false;
  }
};
using fleet_view_ptr = std::shared_ptr<const fleet_view>;

/// The shared view plus the way back to the failover actor. Owned by the
/// runtime; outlives every actor that reads it.
class redis_fleet {
public:
  /// The current view (never null).
  fleet_view_ptr view() const;
  /// The current view's generation (one atomic load).
  uint64_t generation() const noexcept { return generation_.load(std::memory_order_acquire); }

  /// Failover actor only: replaces the view.
  void publish(fleet_view_ptr v);
  /// Failover actor only: where reports go (null clears it at shutdown).
  void set_failover(caf::actor failover);
  caf::actor failover() const;

  /// Reports one logical command's outcome on database `db` (non-blocking).
  void report(uint32_t db, bool ok) const;
  /// Blocks until every database had its first health verdict (the view is
  /// published and not judging()), or until `until`. For a thread that may
  /// block: the starting runtime, a detached actor.
  void await_first_verdicts(std::chrono::steady_clock::time_point until) const;

private:
  mutable std::mutex mutex_;  // guards view_ and failover_; never taken on the ingest path
  fleet_view_ptr view_ = std::make_shared<fleet_view>();
  caf::actor failover_;
  std::atomic<uint64_t> generation_{0};
};

/// One actor's connection to the active database. Not thread-safe: each
/// actor (one thread, detached) owns its own.
///
/// Order of use: `if (!link.ensure()) ...; auto r = link.check(keys.op(*link.client, ...));`
/// ensure() reconnects when the active database changed since the last
/// call; check() drops the connection after a transport failure and
/// reports the outcome to the failure detector.
class redis_link {
public:
  redis_link() = default;  // unusable until assigned one made by the constructor below
  redis_link(const redis_fleet& fleet, std::string component, std::chrono::milliseconds timeout)
    : fleet_(&fleet), component_(std::move(component)), timeout_(timeout) {}

  /// Connects to the active database if not connected to it; false when
  /// none is active or it does not answer (logged once per streak).
  bool ensure();

  /// Passes an operation's result through: a transport failure (anything
  /// but a reply Redis refused) drops the client and counts as a failure; a
  /// success counts as one. `count` false: a retry of a logical command
  /// already counted.
  template <class R>
  R check(R r, bool count = true) {
    bool transport_ok = r.ok() || r.error().code == static_cast<int>(adapters::redis_errc::reply_error);
    if (!transport_ok)
      client.reset();
    if (count && connected_db_)
      fleet_->report(*connected_db_, transport_ok);
    return r;
  }

  /// The database the client is connected to (after a successful ensure()).
  std::optional<uint32_t> db() const noexcept { return connected_db_; }
  /// The fleet generation the client follows (after a successful ensure()):
  /// it changes when the active database or its address (Sentinel) does.
  uint64_t generation() const noexcept { return generation_; }
  /// Its display URL (password masked), "" when none.
  const std::string& db_display() const noexcept { return display_; }

  std::optional<adapters::redis_client> client;

private:
  const redis_fleet* fleet_ = nullptr;
  std::string component_;
  std::chrono::milliseconds timeout_{1000};
  uint64_t generation_ = UINT64_MAX;
  std::optional<uint32_t> connected_db_;
  std::string display_;
  std::string failure_;  // last failure logged, to log once per streak
};

} // namespace tally
