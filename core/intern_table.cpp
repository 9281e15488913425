// core/intern_table.cpp — see intern_table.hpp for the contract.
#include "core/intern_table.hpp"

#include <cstdlib>
#include <cstring>
#include <new>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace tally {

struct intern_table::node {
  uint64_t hash;
  uint32_t length;
  char text[1];  // `length` bytes follow (allocated past the struct)
};

intern_table::intern_table(uint32_t capacity) {
  uint32_t cap = 1024;
  while (cap < capacity && cap < (1u << 31))
    cap <<= 1;
  mask_ = cap - 1;
  limit_ = cap - cap / 8;
  slots_.reset(new std::atomic<node*>[cap]);
  for (uint32_t i = 0; i < cap; ++i)
    slots_[i].store(nullptr, std::memory_order_relaxed);
}

intern_table::~intern_table() {
  for (uint32_t i = 0; i <= mask_; ++i)
    std::free(slots_[i].load(std::memory_order_relaxed));
}

void intern_table::clear() noexcept {
  for (uint32_t i = 0; i <= mask_; ++i)
    std::free(slots_[i].exchange(nullptr, std::memory_order_relaxed));
  size_.store(0, std::memory_order_relaxed);
}

uint32_t intern_table::intern(std::string_view text) noexcept {
  if (text.empty())
    return 0;
  return probe(text, XXH3_64bits(text.data(), text.size()), true);
}

uint32_t intern_table::find(std::string_view text) const noexcept {
  if (text.empty())
    return 0;
  return const_cast<intern_table*>(this)->probe(text, XXH3_64bits(text.data(), text.size()), false);
}

std::string_view intern_table::text(uint32_t id) const noexcept {
  if (id == 0 || id > mask_)
    return {};
  node* n = slots_[id].load(std::memory_order_acquire);
  return n ? std::string_view{n->text, n->length} : std::string_view{};
}

uint32_t intern_table::probe(std::string_view text, uint64_t hash, bool insert) noexcept {
  node* fresh = nullptr;
  uint32_t i = static_cast<uint32_t>(hash) & mask_;
  for (uint32_t step = 0; step <= mask_; ++step, i = (i + 1) & mask_) {
    if (i == 0)  // slot 0 is the empty string's id; never holds a node
      continue;
    node* n = slots_[i].load(std::memory_order_acquire);
    if (n == nullptr) {
      if (!insert)
        return npos;
      // Claim the slot. The count is reserved first so the table can never
      // pass its limit, even with many threads inserting at once.
      if (fresh == nullptr) {
        if (size_.fetch_add(1, std::memory_order_relaxed) >= limit_) {
          size_.fetch_sub(1, std::memory_order_relaxed);
          return npos;
        }
        void* mem = std::malloc(sizeof(node) + text.size());
        if (mem == nullptr) {
          size_.fetch_sub(1, std::memory_order_relaxed);
          return npos;
        }
        fresh = static_cast<node*>(mem);
        fresh->hash = hash;
        fresh->length = static_cast<uint32_t>(text.size());
        std::memcpy(fresh->text, text.data(), text.size());
      }
      node* expected = nullptr;
      if (slots_[i].compare_exchange_strong(expected, fresh, std::memory_order_acq_rel))
        return i;
      n = expected;  // lost the race: the winner may be our own string
    }
    if (n->hash == hash && n->length == text.size() && std::memcmp(n->text, text.data(), text.size()) == 0) {
      if (fresh != nullptr) {
        std::free(fresh);
        size_.fetch_sub(1, std::memory_order_relaxed);
      }
      return i;
    }
  }
  if (fresh != nullptr) {
    std::free(fresh);
    size_.fetch_sub(1, std::memory_order_relaxed);
  }
  return npos;
}

} // namespace tally
