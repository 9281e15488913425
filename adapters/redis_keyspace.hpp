// adapters/redis_keyspace.hpp — every Redis key and Lua script tally uses
// (design §6), and the typed operations on them.
//
// This is the one place that spells a key of the namespace or a script: the
// actors call operations ("push this batch", "claim a chunk", "renew the
// lease") and never build a command themselves. Every key of a namespace
// shares the hash tag `{tally:<ns>}`, so the namespace lives in one Redis
// Cluster slot and a script may touch several of its keys.
//
//   {tally:<ns>}:batches              stage-1 list; writers LPUSH, the leader takes from the right
//   {tally:<ns>}:written:<batch_id>   marker set atomically with a push (idempotent retries)
//   {tally:<ns>}:inflight:<instance>  batches a leader is applying
//   {tally:<ns>}:deadletter           batches that failed to decode
//   {tally:<ns>}:lease                the flush lease, `<instance>:<nonce>`
//   {tally:<ns>}:instances            set of registered instance ids
//   {tally:<ns>}:instance:<instance>  hash: the instance's registry record, TTL = heartbeat
//   {tally:<ns>}:applied:<instance>   set of that producer's batch ids a leader applied
//   {tally:<ns>}:invalidate           pub/sub channel: one message per committed flush
//
// Contract of every operation: one blocking round trip on the given client
// (redis_client's contract: bounded by its timeout; a transport failure
// disconnects it and returns timeout / io_error; a script or command refused
// by Redis returns reply_error). Nothing here retries: a caller that retries
// decides how a retried logical command is counted (the failure detector
// counts it once).
#pragma once

#include "adapters/redis_client.hpp"
#include "core/result.hpp"

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tally::adapters {

/// One instance as the registry shows it (the hash `instance:<id>`).
struct instance_record {
  std::string id;
  std::string host;
  uint64_t pid = 0;
  std::string version;
  int64_t started_ms = 0;    // wall clock
  int64_t heartbeat_ms = 0;  // wall clock of the last heartbeat
  std::string role;          // leader | flusher | producer
  std::string active_db;     // the database this instance writes to (password masked), "" = none
  uint64_t events_accepted = 0;
  uint64_t epoch = 0;        // a leader's fencing epoch; 0 when it does not lead
};

class redis_keyspace {
public:
  explicit redis_keyspace(const std::string& ns);

  /// `{tally:<ns>}`.
  const std::string& prefix() const noexcept { return prefix_; }
  std::string batches() const { return prefix_ + ":batches"; }
  std::string deadletter() const { return prefix_ + ":deadletter"; }
  std::string lease() const { return prefix_ + ":lease"; }
  std::string instances() const { return prefix_ + ":instances"; }
  std::string invalidate() const { return prefix_ + ":invalidate"; }
  std::string inflight(std::string_view instance) const;
  std::string instance(std::string_view instance) const;
  std::string written(std::string_view batch_id) const;
  std::string applied(std::string_view instance) const;

  // --- stage 1 --------------------------------------------------------------

  /// Pushes one encoded batch, idempotently: a script sets the batch's
  /// written-marker with NX (TTL 24 h) and LPUSHes only if it was not set, in
  /// one atomic step (and one AOF entry). A push retried after a lost reply
  /// therefore lands at most once. True when pushed, false when Redis still
  /// knew the batch.
  result<bool> push_batch(redis_client& c, std::string_view batch_id, std::string_view bytes) const;

  /// LPUSHes a copy whether or not Redis claims to know the batch (producer
  /// retention's last resort for a batch long overdue; the dedup table makes
  /// the copy harmless).
  status push_batch_copy(redis_client& c, std::string_view bytes) const;

  /// LLEN of the stage-1 list: batches not yet taken by a leader.
  result<long long> backlog(redis_client& c) const;

  // --- stage 2: moving batches ----------------------------------------------

  struct claim {
    long long moved = 0;  // batches moved into the inflight list now
    long long left = 0;   // batches still in the stage-1 list
  };
  /// Moves the oldest batches of the stage-1 list onto `instance`'s inflight
  /// list until that list holds `max_batches` or `max_bytes` were moved (one
  /// script of LMOVEs: a batch is always in exactly one list). The right end
  /// of the inflight list stays the oldest.
  result<claim> claim_chunk(redis_client& c, std::string_view instance, int max_batches, uint64_t max_bytes) const;

  /// The oldest `count` batches of `instance`'s inflight list, newest first.
  result<std::vector<std::string>> read_inflight(redis_client& c, std::string_view instance, long long count) const;

  /// Drops the `taken` oldest batches of `instance`'s inflight list (they
  /// were committed). Trimming everything deletes the key.
  status ack_chunk(redis_client& c, std::string_view instance, size_t taken) const;

  /// Moves one batch (by its bytes) from `instance`'s inflight list to the
  /// dead-letter list, atomically. False when it was no longer there.
  result<bool> dead_letter(redis_client& c, std::string_view instance, std::string_view bytes) const;

  /// Hands `instance`'s whole inflight list back to the stage-1 list, oldest
  /// where the next claim takes first. Returns how many moved.
  result<long long> return_inflight(redis_client& c, std::string_view instance) const;

  struct orphan {
    std::string instance;
    long long batches = 0;
  };
  /// For every registered instance but `self` whose registry record expired
  /// (it is dead): returns its inflight list to the stage-1 list and removes
  /// it from the instances set, each in one script. Lists what moved.
  result<std::vector<orphan>> return_orphans(redis_client& c, std::string_view self) const;

  // --- the lease --------------------------------------------------------------

  /// SET lease value NX PX ttl: true when taken.
  result<bool> acquire_lease(redis_client& c, std::string_view value, std::chrono::milliseconds ttl) const;
  /// Compare-and-PEXPIRE: true when the lease was still `value` and is renewed.
  result<bool> renew_lease(redis_client& c, std::string_view value, std::chrono::milliseconds ttl) const;
  /// Compare-and-delete: true when it was `value` and is gone (false: not ours, left alone).
  result<bool> release_lease(redis_client& c, std::string_view value) const;
  /// The lease's value (`<instance>:<nonce>`), "" when nobody holds it.
  result<std::string> lease_holder(redis_client& c) const;

  // --- the registry -----------------------------------------------------------

  /// Writes `rec` as the hash `instance:<id>` with TTL `ttl` and adds the id
  /// to the instances set, in one script. The record's presence is the
  /// heartbeat: a leader treats a member whose record expired as dead.
  status heartbeat(redis_client& c, const instance_record& rec, std::chrono::milliseconds ttl) const;
  /// Adds `instance` to the instances set only (a leader does it before its
  /// inflight list holds anything, so a crash leaves the list findable).
  status register_instance(redis_client& c, std::string_view instance) const;
  /// Returns what the inflight list still holds to batches, deletes the
  /// record and leaves the set, in one script (clean stop).
  status deregister(redis_client& c, std::string_view instance) const;
  /// Every live registered instance (members whose record exists).
  result<std::vector<instance_record>> read_instances(redis_client& c) const;

  // --- applied markers (producer retention) -----------------------------------

  /// Tells the producers of `batch_ids` (`<instance>:<seq>`) that a leader
  /// applied them: each id is added to its producer's applied set, whose TTL
  /// is reset to `ttl`. Losing these sets (a Redis restart) only makes
  /// producers push again what the dedup table then skips.
  status mark_applied(redis_client& c, const std::vector<std::string>& batch_ids,
                      std::chrono::milliseconds ttl) const;
  /// Takes (reads and deletes, atomically) `instance`'s applied set.
  result<std::vector<std::string>> take_applied(redis_client& c, std::string_view instance) const;

  // --- the read cache ---------------------------------------------------------

  /// PUBLISHes one flush summary on the invalidation channel.
  status publish_invalidation(redis_client& c, std::string_view message) const;

private:
  std::string prefix_;
};

/// The instance part of a batch id `<instance>:<seq>` ("" if malformed).
std::string_view batch_producer(std::string_view batch_id) noexcept;

} // namespace tally::adapters
