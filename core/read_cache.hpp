// core/read_cache.hpp — the totals TALLY.GET answers with, kept true.
//
// A value is what Postgres holds for one tally_spend row (entity type,
// scope, id) plus this instance's own batches that Postgres does not hold
// yet (the "ledger"), so a gateway reads its own writes as soon as they are
// in a batch. Other instances' spend arrives through invalidations: every
// committed flush names the rows it touched, and those entries are dropped.
//
// Concurrency:
//  * lookups take no lock: the table is set-associative and every slot is a
//    seqlock over atomic words (a reader retries, or misses, when a writer
//    is in the slot);
//  * everything that changes the table (fills, batches, retirements,
//    invalidations) takes one mutex, never held across I/O;
//  * a fill runs its query between begin_fill and finish_fill; an
//    invalidation or retirement of a row it reads in between makes the fill
//    stale (generation counters), so it never installs a value older than
//    the newest invalidation, and the caller queries again.
//
// Why the ledger keeps a value exact: value = Postgres(S) + the own batches
// not applied in snapshot S. A fill asks Postgres, in the same statement,
// which of the row's ledger batches it has (finish_fill's `applied`), and
// retires those first. A cached value stays exact when one of our batches is
// retired later (its delta moves from the ledger into Postgres: the sum does
// not change), so retiring touches no cached value, only fills in flight.
//
// Eviction: 8-way set-associative; within a full set, second chance (CLOCK):
// a hit marks its slot referenced, and the victim is the first unreferenced
// slot from the set's hand, clearing marks on the way.
#pragma once

#include "core/rollup.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tally {

/// A tally_spend row's identity, hashed to 128 bits (XXH3): collisions are
/// as likely as a random 128-bit match.
struct entity_key {
  uint64_t lo = 0;
  uint64_t hi = 0;
  bool operator==(const entity_key& o) const noexcept { return lo == o.lo && hi == o.hi; }
  bool empty() const noexcept { return lo == 0 && hi == 0; }
};
struct entity_key_hash {
  size_t operator()(const entity_key& k) const noexcept { return static_cast<size_t>(k.lo ^ (k.hi >> 7)); }
};

/// Hashes (entity type, scope, id). The parts never contain control
/// characters (ids are validated), so a unit separator joins them unambiguously.
entity_key make_entity_key(std::string_view type, std::string_view scope, std::string_view id) noexcept;

/// One answer: the row's measures and whether anything is known of it (a
/// row in Postgres, or an own batch not yet applied).
struct cached_totals {
  measure_values values;
  bool found = false;
};

struct read_cache_counters {
  std::atomic<uint64_t> hits{0};
  std::atomic<uint64_t> misses{0};
  std::atomic<uint64_t> queries{0};           // Postgres reads (one per fill round, any number of rows)
  std::atomic<uint64_t> fills{0};             // values installed from Postgres
  std::atomic<uint64_t> stale_fills{0};       // fills that raced an invalidation and were thrown away
  std::atomic<uint64_t> invalidated{0};       // entries dropped by invalidations (one per row named)
  std::atomic<uint64_t> invalidate_all{0};    // whole-cache invalidations (gap, resubscribe, overflow)
  std::atomic<uint64_t> evictions{0};
  std::atomic<uint64_t> retired_batches{0};   // own batches seen applied
  std::atomic<uint64_t> ledger_overflow{0};   // own batches not kept (ledger_max_rows reached)
  std::atomic<int64_t> last_invalidation_ms{0};  // wall ms of the newest invalidation message
};

class read_cache {
public:
  /// `capacity` entries (rounded up to a multiple of 8); entries older than
  /// `ttl` miss; the ledger holds at most `ledger_max_rows` rows.
  read_cache(size_t capacity, std::chrono::milliseconds ttl, size_t ledger_max_rows);
  ~read_cache();
  read_cache(const read_cache&) = delete;
  read_cache& operator=(const read_cache&) = delete;

  // -- reads (no lock) --------------------------------------------------------

  /// The cached value of `k`, if present, fresh, and the cache is enabled.
  /// `count` false: a second look (a reader's, after the caller's miss) that
  /// the hit/miss counters must not see twice.
  std::optional<cached_totals> lookup(const entity_key& k, bool count = true) noexcept;

  // -- fills ------------------------------------------------------------------

  struct fill_ticket {
    entity_key key;
    uint64_t generation = 0;
    uint64_t global_generation = 0;
    std::vector<std::string> pending_ids;  // own batches touching the row, to ask Postgres about
  };
  fill_ticket begin_fill(const entity_key& k);
  /// Ends the fills of one query. `pg[i]`: ticket i's Postgres row, if any;
  /// `applied`: the tickets' pending ids Postgres holds, read in the same
  /// snapshot. Per ticket the value, or nullopt when that fill went stale
  /// (nothing installed: query again).
  std::vector<std::optional<cached_totals>> finish_fills(const std::vector<fill_ticket>& tickets,
                                                         const std::vector<std::optional<measure_values>>& pg,
                                                         const std::vector<std::string>& applied);
  /// A fill that failed (query error): forgets it.
  void abandon_fills(const std::vector<fill_ticket>& tickets);

  // -- own batches ------------------------------------------------------------

  /// A batch this instance formed: its tally_spend rows join the ledger and
  /// every cached value they touch.
  void add_batch(const std::string& id, std::vector<std::pair<entity_key, measure_values>> rows);
  /// Batches Postgres has applied (unknown ids are ignored).
  void retire(const std::vector<std::string>& ids);

  // -- invalidation -----------------------------------------------------------

  void invalidate(const std::vector<entity_key>& keys);
  void invalidate_all();
  /// Off: lookups miss and fills install nothing (no invalidations can
  /// reach us). Turning it on first drops everything.
  void set_enabled(bool on);
  bool enabled() const noexcept { return enabled_.load(std::memory_order_acquire); }

  size_t entries() const noexcept { return entries_.load(std::memory_order_relaxed); }
  size_t ledger_batches() const;
  size_t ledger_rows() const;
  read_cache_counters& counters() noexcept { return counters_; }

private:
  struct slot;
  struct ledger_batch {
    std::string id;
    std::vector<std::pair<entity_key, measure_values>> rows;
  };
  struct overlay_entry {
    measure_values sum;
    std::vector<uint64_t> seqs;  // ledger batches touching the row
  };
  struct fill_entry {
    uint32_t active = 0;
    uint64_t generation = 0;
  };

  slot* find_locked(const entity_key& k);
  slot& victim_locked(size_t set);
  void write_slot(slot& s, const entity_key& k, const cached_totals& v, int64_t filled_ms);
  void clear_slot(slot& s);
  void touch_fill_locked(const entity_key& k);
  void release_fill_locked(const entity_key& k);
  void retire_locked(const std::string& id);

  std::unique_ptr<slot[]> slots_;
  size_t sets_;
  std::unique_ptr<uint8_t[]> hands_;
  int64_t ttl_ms_;
  size_t ledger_max_rows_;
  std::atomic<bool> enabled_{false};
  std::atomic<size_t> entries_{0};
  read_cache_counters counters_;

  mutable std::mutex mu_;
  uint64_t global_generation_ = 0;
  uint64_t next_seq_ = 1;
  size_t ledger_rows_ = 0;
  std::map<uint64_t, ledger_batch> ledger_;
  std::unordered_map<std::string, uint64_t> ledger_ids_;
  std::unordered_map<entity_key, overlay_entry, entity_key_hash> overlay_;
  std::unordered_map<entity_key, fill_entry, entity_key_hash> fills_;
};

} // namespace tally
