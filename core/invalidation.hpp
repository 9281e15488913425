// core/invalidation.hpp — what a leader says after each committed flush.
//
// One message per committed flush that applied new batches, published on
// `{tally:<ns>}:invalidate`. Text, one record per line, fields separated by
// tabs (ids never hold control characters):
//
//   tally-inv/1 <leader> <epoch> <seq> <all>
//   b <batch id>                       every batch the flush covered
//   e <entity type> <scope> <id>       every tally_spend row it touched
//
// `seq` counts the leader's published flushes within one epoch, from 1, and
// moves on even when a publish fails, so a reader that sees anything but
// the next number (or a new epoch) has missed a flush. `all` (1) means the
// rows were too many to list: drop everything. Batch ids beyond the cap are
// left out (readers learn them from the applied sets and from their fills).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tally {

struct invalidation_entity {
  std::string type;
  std::string scope;
  std::string id;
};

struct invalidation_message {
  std::string leader;
  uint64_t epoch = 0;
  uint64_t seq = 0;
  bool all = false;
  std::vector<std::string> batch_ids;
  std::vector<invalidation_entity> entities;
};

/// Caps that keep one message well under a megabyte.
inline constexpr size_t invalidation_max_entities = 4096;
inline constexpr size_t invalidation_max_batch_ids = 4096;

std::string encode_invalidation(const invalidation_message& m);

/// False (with `why`) for anything that is not a well-formed message.
bool decode_invalidation(std::string_view text, invalidation_message& out, std::string& why);

} // namespace tally
