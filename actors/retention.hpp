// actors/retention.hpp — producer retention (design §6): this instance keeps
// every batch it wrote until it sees the batch id in tally_applied_batches,
// and pushes it again if Redis lost it.
//
// The stage-1 writer hands every batch it wrote over (id and encoded bytes;
// the writer finds this actor in the actor system's registry under
// `retention_registry_name`). Every min(repush_after / 3, 2 s) the actor asks
// Postgres which retained ids are applied and forgets those. A batch not
// applied within repush_after is pushed again when Redis no longer knows it:
// its `{tally:<ns>}:written:<id>` marker, set atomically with the original
// LPUSH, is gone (Redis restarted without persistence, failover to a lagging
// replica). The re-push uses the writer's idempotent script, so it lands at
// most once per loss, and the dedup table makes a copy that raced a flush
// harmless. A batch still unapplied after 10 x repush_after is pushed again
// even with its marker present (it may have been lost after the marker).
//
// Memory is bounded (retention_max_bytes). Past the bound the oldest batches
// are forgotten with a warning: the local spill journal that should take
// them (design §6) is not built yet.
//
// Accepts:
//   retain_atom, std::string id, std::string bytes   from the writer
//   rcheck_atom, uint64_t generation                  timer
#pragma once

#include "actors/flush_context.hpp"

#include <caf/atom.hpp>
#include <caf/fwd.hpp>

namespace tally {

using retain_atom = caf::atom_constant<caf::atom("retain")>;
using rcheck_atom = caf::atom_constant<caf::atom("rcheck")>;

/// Name of the retention actor in the actor system's registry.
constexpr caf::atom_value retention_registry_name = caf::atom("retention");

/// Bytes of encoded batches held at most.
constexpr size_t retention_max_bytes = size_t{256} << 20;

/// Spawns the retention actor (detached: its Postgres and Redis calls block),
/// linked to `supervisor`, and registers it under retention_registry_name.
caf::actor spawn_retention(caf::event_based_actor* supervisor, flush_context_ptr ctx);

} // namespace tally
