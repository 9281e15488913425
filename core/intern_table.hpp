// core/intern_table.hpp — process-wide identifier table, lock-free.
//
// Every id string of an event (api key, user, model, ...) is turned into a
// 32-bit id once, so the hot path carries and hashes small fixed structs
// instead of strings. The table is open addressing over a fixed array of
// atomic node pointers: a lookup of a known string takes no lock and
// allocates nothing; the first sight of a new string allocates its node and
// publishes it with one CAS. Ids are slot indexes and never change or go away
// until clear(), so any thread may turn an id back into its text at any time
// before that. Id 0 is the empty string ("absent").
//
// Bound: at most 7/8 of `capacity` distinct strings; past that intern()
// returns `npos`. The table never forgets a string on its own: its owner
// empties it with clear() once nothing holds an id of it (the ingest
// pipeline does so at a collection cycle, ingest.hpp).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string_view>

namespace tally {

class intern_table {
public:
  static constexpr uint32_t npos = 0xFFFFFFFFu;

  /// `capacity` is rounded up to a power of two (at least 1024).
  explicit intern_table(uint32_t capacity);
  ~intern_table();
  intern_table(const intern_table&) = delete;
  intern_table& operator=(const intern_table&) = delete;

  /// Returns the id of `text` (0 for empty), adding it if new; npos when full
  /// or out of memory. Thread-safe, lock-free.
  uint32_t intern(std::string_view text) noexcept;

  /// Returns the id of `text` if present, else npos; never adds.
  uint32_t find(std::string_view text) const noexcept;

  /// Returns the text of an id from intern(); "" for 0. Thread-safe.
  std::string_view text(uint32_t id) const noexcept;

  /// Forgets every string and frees its memory; ids start over. Not
  /// thread-safe: the caller makes sure no other thread uses the table and
  /// no id from before is ever looked up again.
  void clear() noexcept;

  uint32_t size() const noexcept { return size_.load(std::memory_order_relaxed); }
  uint32_t capacity() const noexcept { return mask_ + 1; }
  /// The most strings the table holds (7/8 of capacity).
  uint32_t limit() const noexcept { return limit_; }

private:
  struct node;
  uint32_t probe(std::string_view text, uint64_t hash, bool insert) noexcept;

  std::unique_ptr<std::atomic<node*>[]> slots_;
  uint32_t mask_;
  uint32_t limit_;
  std::atomic<uint32_t> size_{0};
};

} // namespace tally
