// actors/retention.hpp — producer retention (design §6): this instance keeps
// every batch it wrote until a leader reports it applied, and pushes again
// what Redis may have lost.
//
// Runs on every instance, producer-only ones too (they have no Postgres to
// ask). The stage-1 writer hands over every batch it wrote (id, bytes, and
// the database it went to). A leader, after each committed flush, adds the
// ids it applied (new or duplicate) to `{tally:<ns>}:applied:<producer>`;
// every second retention takes that set from the active database and
// forgets those batches. Losing the set (a Redis restart) only costs a
// re-push that the Postgres dedup table skips.
//
// Pushed again:
//   * at once, as a copy, every batch written before the active database
//     (or, for a Sentinel database, its primary) changed: a dead database
//     takes its batches with it, a promoted replica may lack the newest
//     writes, and after a switch away and back the leader may have reported
//     the batch applied in the other database only; nothing waits for
//     repush_after;
//   * through the idempotent stage-1 push (it lands only if Redis lost the
//     batch's written-marker), any batch not applied within repush_after
//     (Redis restarted without persistence);
//   * as a copy, a batch still unapplied after 10 x repush_after even if
//     Redis claims to know it (it may have been lost after the marker).
// The Postgres dedup table makes every copy harmless.
//
// Memory is bounded (retention_max_bytes); past the bound the oldest batches
// are forgotten with a warning (they are in Redis; only a later loss of that
// Redis would then go unrepaired).
//
// Accepts:
//   retain_atom, std::string id, std::string bytes, uint64_t generation
//       from the writer: the fleet generation (redis_link::generation) it was written under
//   rcheck_atom, uint64_t generation                               timer
//   active_atom, uint64_t generation                               the active database changed
#pragma once

#include "actors/flush_context.hpp"

#include <caf/atom.hpp>
#include <caf/fwd.hpp>

namespace tally {

using retain_atom = caf::atom_constant<caf::atom("retain")>;
using rcheck_atom = caf::atom_constant<caf::atom("rcheck")>;

/// Bytes of encoded batches held at most.
constexpr size_t retention_max_bytes = size_t{256} << 20;

/// Spawns the retention actor (detached: its Redis calls block).
caf::actor spawn_retention(caf::actor_system& sys, flush_context_ptr ctx);

} // namespace tally
