// core/flat_map.hpp — hash map for the aggregators: dense entries, a small
// index, memory kept across intervals and trimmed after a spike.
//
// The aggregators sum millions of events per second into a few thousand keys
// and hand the map over every buffer interval. std::unordered_map allocates a
// node per new key and frees them on clear(); this map keeps its memory, so
// after the first intervals the hot path allocates nothing. Keys are
// trivially copyable structs compared bytewise; the caller supplies their
// hash. No erase: maps are filled, read, cleared.
//
// Layout, for bytes per live key: entries (value, key, 32 bits of hash) are
// stored densely in insertion order, in fixed-size chunks, so they cost one
// entry per key plus at most one part-filled chunk, and growing never copies
// them. The open-addressing index (linear probing, power-of-two capacity,
// load factor at most 1/2) holds 4-byte entry numbers, not entries: 8 to 16
// bytes per key instead of two to four whole entries. The 32-bit hash in the
// entry rules out most mismatches before the key is compared, and is all a
// larger index needs to place the entry again.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

namespace tally {

template <class Key, class Value>
class flat_map {
  static_assert(std::is_trivially_copyable_v<Key>, "keys are compared bytewise");

  struct entry {
    Value value;
    Key key;
    uint32_t hash;
  };
  // About 64 KiB per chunk: few allocations, little slack.
  static constexpr uint32_t chunk_bits = [] {
    uint32_t bits = 4;
    while ((sizeof(entry) << (bits + 1)) <= 65536)
      ++bits;
    return bits;
  }();
  static constexpr uint32_t chunk_entries = 1u << chunk_bits;

public:
  /// `max_size` bounds the number of keys: find_or_insert returns nullptr
  /// past it. The index grows on demand up to 2 * max_size slots; entries
  /// take memory as keys arrive.
  explicit flat_map(uint32_t max_size, uint32_t initial_capacity = 1024)
    : max_size_(max_size) {
    allocate_index(index_size_for(initial_capacity / 2));
  }

  flat_map(const flat_map&) = delete;
  flat_map& operator=(const flat_map&) = delete;

  /// Returns the value for `key`, value-initialized if new; nullptr when the
  /// map already holds max_size keys (the caller must push back).
  Value* find_or_insert(const Key& key, uint64_t full_hash) {
    const uint32_t hash = static_cast<uint32_t>(full_hash);
    if ((size_ + 1) * 2 > capacity_) {
      if (size_ >= max_size_)
        return find(key, hash);
      grow_index();
    }
    uint32_t i = hash & mask_;
    for (;;) {
      const uint32_t n = index_[i];
      if (n == 0) {
        if (size_ >= max_size_)
          return nullptr;
        if ((size_ >> chunk_bits) == chunks_.size())
          chunks_.push_back(std::make_unique<entry[]>(chunk_entries));
        entry& e = at(size_);
        e.value = Value{};
        std::memcpy(&e.key, &key, sizeof(Key));
        e.hash = hash;
        index_[i] = ++size_;  // entry number + 1: 0 marks an empty slot
        return &e.value;
      }
      entry& e = at(n - 1);
      if (e.hash == hash && std::memcmp(&e.key, &key, sizeof(Key)) == 0)
        return &e.value;
      i = (i + 1) & mask_;
    }
  }

  /// Calls fn(const Key&, Value&) for every entry, in insertion order.
  template <class Fn>
  void for_each(Fn&& fn) {
    for (uint32_t n = 0; n < size_; ++n) {
      entry& e = at(n);
      fn(e.key, e.value);
    }
  }

  /// Forgets every entry, keeps the memory.
  void clear() noexcept {
    if (size_ != 0)
      std::memset(index_.get(), 0, sizeof(uint32_t) * capacity_);
    size_ = 0;
  }

  /// Forgets every entry and gives back memory beyond what `keys` keys need,
  /// so that one spike of distinct keys is not paid for in every later
  /// interval. Keeps what it has when that is no more than twice the need.
  void clear_and_trim(uint32_t keys) {
    clear();
    size_t chunks_needed = (static_cast<size_t>(keys) + chunk_entries - 1) >> chunk_bits;
    if (chunks_.size() > 2 * chunks_needed + 1) {
      chunks_.resize(chunks_needed);
      chunks_.shrink_to_fit();
    }
    uint32_t index_needed = index_size_for(keys);
    if (capacity_ > 2 * index_needed)
      allocate_index(index_needed);
  }

  uint32_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  bool full() const noexcept { return size_ >= max_size_; }
  uint32_t max_size() const noexcept { return max_size_; }

  /// Bytes this map holds on the heap (index and entry chunks).
  size_t memory_bytes() const noexcept {
    return sizeof(uint32_t) * static_cast<size_t>(capacity_) + chunks_.size() * sizeof(entry) * chunk_entries +
           chunks_.capacity() * sizeof(chunks_[0]);
  }

private:
  entry& at(uint32_t n) noexcept { return chunks_[n >> chunk_bits][n & (chunk_entries - 1)]; }

  Value* find(const Key& key, uint32_t hash) {
    uint32_t i = hash & mask_;
    while (uint32_t n = index_[i]) {
      entry& e = at(n - 1);
      if (e.hash == hash && std::memcmp(&e.key, &key, sizeof(Key)) == 0)
        return &e.value;
      i = (i + 1) & mask_;
    }
    return nullptr;
  }

  /// The smallest index that holds `keys` keys at load factor 1/2.
  static uint32_t index_size_for(uint32_t keys) noexcept {
    uint32_t cap = 16;
    while (cap < 2ull * keys && cap < (1u << 31))
      cap <<= 1;
    return cap;
  }

  void allocate_index(uint32_t cap) {
    capacity_ = cap;
    mask_ = cap - 1;
    index_.reset(new uint32_t[cap]());
  }

  void grow_index() {
    allocate_index(capacity_ * 2);
    for (uint32_t n = 0; n < size_; ++n) {
      uint32_t i = at(n).hash & mask_;
      while (index_[i] != 0)
        i = (i + 1) & mask_;
      index_[i] = n + 1;
    }
  }

  std::vector<std::unique_ptr<entry[]>> chunks_;
  std::unique_ptr<uint32_t[]> index_;
  uint32_t capacity_ = 0;  // index slots
  uint32_t mask_ = 0;
  uint32_t size_ = 0;
  uint32_t max_size_;
};

} // namespace tally
