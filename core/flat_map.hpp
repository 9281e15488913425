// core/flat_map.hpp — open-addressing hash map that keeps its memory.
//
// The aggregators sum millions of events per second into a few thousand keys
// and hand the map over every buffer interval. std::unordered_map allocates a
// node per new key and frees them on clear(); this map stores keys and values
// inline (linear probing, power-of-two capacity, load factor at most 1/2) and
// clear() keeps the capacity, so after the first intervals the hot path
// allocates nothing. Keys are trivially copyable structs compared bytewise;
// the caller supplies their hash. No erase: maps are filled, read, cleared.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>

namespace tally {

template <class Key, class Value>
class flat_map {
  static_assert(std::is_trivially_copyable_v<Key>, "keys are compared bytewise");

public:
  /// `max_size` bounds the number of keys: find_or_insert returns nullptr
  /// past it. Memory grows on demand up to 2 * max_size slots.
  explicit flat_map(uint32_t max_size, uint32_t initial_capacity = 1024)
    : max_size_(max_size) {
    uint32_t cap = 16;
    while (cap < initial_capacity)
      cap <<= 1;
    allocate(cap);
  }

  flat_map(const flat_map&) = delete;
  flat_map& operator=(const flat_map&) = delete;

  /// Returns the value for `key`, value-initialized if new; nullptr when the
  /// map already holds max_size keys (the caller must push back).
  Value* find_or_insert(const Key& key, uint64_t hash) {
    if ((size_ + 1) * 2 > capacity_) {
      if (size_ >= max_size_)
        return probe_existing(key, hash);
      grow();
    }
    uint32_t i = static_cast<uint32_t>(hash) & mask_;
    for (;;) {
      if (!used_[i]) {
        if (size_ >= max_size_)
          return nullptr;
        used_[i] = 1;
        std::memcpy(&slots_[i].key, &key, sizeof(Key));
        slots_[i].value = Value{};
        slots_[i].hash = hash;
        ++size_;
        return &slots_[i].value;
      }
      if (slots_[i].hash == hash && std::memcmp(&slots_[i].key, &key, sizeof(Key)) == 0)
        return &slots_[i].value;
      i = (i + 1) & mask_;
    }
  }

  /// Calls fn(const Key&, Value&) for every entry.
  template <class Fn>
  void for_each(Fn&& fn) {
    for (uint32_t i = 0; i < capacity_; ++i)
      if (used_[i])
        fn(slots_[i].key, slots_[i].value);
  }

  /// Forgets every entry, keeps the memory.
  void clear() noexcept {
    if (size_ != 0)
      std::memset(used_.get(), 0, capacity_);
    size_ = 0;
  }

  uint32_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  bool full() const noexcept { return size_ >= max_size_; }
  uint32_t max_size() const noexcept { return max_size_; }

private:
  struct slot {
    Key key;
    uint64_t hash;
    Value value;
  };

  Value* probe_existing(const Key& key, uint64_t hash) {
    uint32_t i = static_cast<uint32_t>(hash) & mask_;
    while (used_[i]) {
      if (slots_[i].hash == hash && std::memcmp(&slots_[i].key, &key, sizeof(Key)) == 0)
        return &slots_[i].value;
      i = (i + 1) & mask_;
    }
    return nullptr;
  }

  void allocate(uint32_t cap) {
    capacity_ = cap;
    mask_ = cap - 1;
    slots_.reset(new slot[cap]);
    used_.reset(new uint8_t[cap]());
  }

  void grow() {
    auto old_slots = std::move(slots_);
    auto old_used = std::move(used_);
    uint32_t old_cap = capacity_;
    allocate(capacity_ * 2);
    for (uint32_t j = 0; j < old_cap; ++j) {
      if (!old_used[j])
        continue;
      uint32_t i = static_cast<uint32_t>(old_slots[j].hash) & mask_;
      while (used_[i])
        i = (i + 1) & mask_;
      used_[i] = 1;
      slots_[i] = old_slots[j];
    }
  }

  std::unique_ptr<slot[]> slots_;
  std::unique_ptr<uint8_t[]> used_;
  uint32_t capacity_ = 0;
  uint32_t mask_ = 0;
  uint32_t size_ = 0;
  uint32_t max_size_;
};

} // namespace tally
