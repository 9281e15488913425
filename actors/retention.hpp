// actors/retention.hpp — producer retention (design §6): this instance keeps
// every batch it wrote until a leader reports it applied, and pushes again
// what Redis may have lost.
//
// Runs on every instance, producer-only ones too (they have no Postgres to
// ask). The stage-1 writer hands over every batch it wrote (id, bytes, and
// the database it went to). A leader, after each committed flush, adds the
// ids it applied (new or duplicate) to `{tally:<ns>}:applied:<producer>`
// in the database active for it; every second retention takes that set from
// every database whose circuit is not open (after a switch away and back
// the report may sit in the other one) and forgets those batches. Losing
// the set (a Redis restart) only costs a re-push that the Postgres dedup
// table skips.
//
// Pushed again through the idempotent stage-1 push, which lands only where
// the batch's written-marker is missing:
//   * at once, every batch pushed before the active database (or, for a
//     Sentinel database, its primary) changed or came back: a dead database
//     takes its batches with it, a promoted replica may lack the newest
//     writes, a restarted one may have lost them; one that kept them
//     (persistence, or merely a network blip) keeps them once;
//   * any batch not applied within repush_after (Redis lost data without
//     anyone noticing a failure).
// As an unconditional copy, once per 10 x repush_after, a batch still
// unapplied that long even though Redis claims to know it (a report may have
// been lost with a database). The Postgres dedup table makes every copy
// harmless; stage 1 stays free of duplicates otherwise.
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
