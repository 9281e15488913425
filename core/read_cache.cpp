// core/read_cache.cpp — see read_cache.hpp.
#include "core/read_cache.hpp"

#include <xxhash.h>

#include <algorithm>
#include <cstddef>
#include <cstring>

namespace tally {

namespace {

constexpr size_t ways = 8;
constexpr int read_attempts = 4;
constexpr char separator = '\x1f';

// Slot words after the key: spend (two halves), seven counts, found, fill time.
constexpr int word_spend_lo = 0;
constexpr int word_spend_hi = 1;
constexpr int word_counts = 2;
constexpr int word_found = 9;
constexpr int word_filled = 10;
constexpr int words = 11;

int64_t steady_now_ms() noexcept {
  using namespace std::chrono;
  return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

void subtract(measure_values& a, const measure_values& b) noexcept {
  a.spend -= b.spend;
  a.prompt_tokens -= b.prompt_tokens;
  a.completion_tokens -= b.completion_tokens;
  a.cache_read_tokens -= b.cache_read_tokens;
  a.cache_creation_tokens -= b.cache_creation_tokens;
  a.requests -= b.requests;
  a.successful_requests -= b.successful_requests;
  a.failed_requests -= b.failed_requests;
}

int64_t* counts_of(measure_values& m) noexcept { return &m.prompt_tokens; }
const int64_t* counts_of(const measure_values& m) noexcept { return &m.prompt_tokens; }
static_assert(offsetof(measure_values, failed_requests) - offsetof(measure_values, prompt_tokens)
                  == 6 * sizeof(int64_t),
              "the seven counts of measure_values are contiguous");

/// A slot's words back into a value (the inverse of write_slot).
cached_totals decode(const uint64_t (&w)[words]) noexcept {
  cached_totals out;
  out.values.spend =
    static_cast<__int128>((static_cast<unsigned __int128>(w[word_spend_hi]) << 64) | w[word_spend_lo]);
  int64_t* counts = counts_of(out.values);
  for (int j = 0; j < 7; ++j)
    counts[j] = static_cast<int64_t>(w[word_counts + j]);
  out.found = w[word_found] != 0;
  return out;
}

} // namespace

entity_key make_entity_key(std::string_view type, std::string_view scope, std::string_view id) noexcept {
  // Ids are at most 256 bytes, so the joined text fits the stack buffer;
  // longer input (never from a validated id) takes the heap.
  char stack[1024];
  std::string heap;
  size_t size = type.size() + scope.size() + id.size() + 2;
  char* buf = stack;
  if (size > sizeof stack) {
    heap.resize(size);
    buf = heap.data();
  }
  char* p = buf;
  std::memcpy(p, type.data(), type.size());
  p += type.size();
  *p++ = separator;
  std::memcpy(p, scope.data(), scope.size());
  p += scope.size();
  *p++ = separator;
  std::memcpy(p, id.data(), id.size());
  XXH128_hash_t h = XXH3_128bits(buf, size);
  entity_key k{h.low64, h.high64};
  if (k.empty())
    k.lo = 1;  // (0, 0) marks an empty slot
  return k;
}

/// One entry: a seqlock (odd version while written) over atomic words, so
/// readers never block a writer and never see a torn value.
struct alignas(64) read_cache::slot {
  std::atomic<uint64_t> version{0};
  std::atomic<uint64_t> key_lo{0};
  std::atomic<uint64_t> key_hi{0};
  std::atomic<uint64_t> w[words] = {};
  std::atomic<uint8_t> referenced{0};
};

read_cache::read_cache(size_t capacity, std::chrono::milliseconds ttl, size_t ledger_max_rows)
  : sets_(std::max<size_t>(1, (capacity + ways - 1) / ways)), ttl_ms_(ttl.count()),
    ledger_max_rows_(ledger_max_rows) {
  slots_ = std::make_unique<slot[]>(sets_ * ways);
  hands_ = std::make_unique<uint8_t[]>(sets_);
}

read_cache::~read_cache() = default;

std::optional<cached_totals> read_cache::lookup(const entity_key& k, bool count) noexcept {
  if (!enabled_.load(std::memory_order_acquire)) {
    if (count)
      counters_.misses.fetch_add(1, std::memory_order_relaxed);
    return std::nullopt;
  }
  slot* set = &slots_[(k.lo % sets_) * ways];
  for (size_t i = 0; i < ways; ++i) {
    slot& s = set[i];
    for (int attempt = 0; attempt < read_attempts; ++attempt) {
      uint64_t v1 = s.version.load(std::memory_order_acquire);
      if (v1 & 1)
        continue;  // a writer is in the slot
      if (s.key_lo.load(std::memory_order_relaxed) != k.lo || s.key_hi.load(std::memory_order_relaxed) != k.hi) {
        std::atomic_thread_fence(std::memory_order_acquire);
        if (s.version.load(std::memory_order_relaxed) == v1)
          break;  // not this slot
        continue;
      }
      uint64_t w[words];
      for (int j = 0; j < words; ++j)
        w[j] = s.w[j].load(std::memory_order_relaxed);
      std::atomic_thread_fence(std::memory_order_acquire);
      if (s.version.load(std::memory_order_relaxed) != v1)
        continue;
      if (steady_now_ms() - static_cast<int64_t>(w[word_filled]) > ttl_ms_)
        break;
      if (s.referenced.load(std::memory_order_relaxed) == 0)
        s.referenced.store(1, std::memory_order_relaxed);
      if (count)
        counters_.hits.fetch_add(1, std::memory_order_relaxed);
      return decode(w);
    }
  }
  if (count)
    counters_.misses.fetch_add(1, std::memory_order_relaxed);
  return std::nullopt;
}

read_cache::slot* read_cache::find_locked(const entity_key& k) {
  slot* set = &slots_[(k.lo % sets_) * ways];
  for (size_t i = 0; i < ways; ++i)
    if (set[i].key_lo.load(std::memory_order_relaxed) == k.lo && set[i].key_hi.load(std::memory_order_relaxed) == k.hi)
      return &set[i];
  return nullptr;
}

read_cache::slot& read_cache::victim_locked(size_t set_index) {
  slot* set = &slots_[set_index * ways];
  for (size_t i = 0; i < ways; ++i)
    if (set[i].key_lo.load(std::memory_order_relaxed) == 0 && set[i].key_hi.load(std::memory_order_relaxed) == 0)
      return set[i];
  uint8_t& hand = hands_[set_index];
  for (size_t step = 0; step < 2 * ways; ++step) {
    slot& s = set[hand];
    hand = static_cast<uint8_t>((hand + 1) % ways);
    if (s.referenced.load(std::memory_order_relaxed) == 0) {
      counters_.evictions.fetch_add(1, std::memory_order_relaxed);
      entries_.fetch_sub(1, std::memory_order_relaxed);
      return s;
    }
    s.referenced.store(0, std::memory_order_relaxed);
  }
  slot& s = set[hand];  // unreachable: the first pass cleared every mark
  counters_.evictions.fetch_add(1, std::memory_order_relaxed);
  entries_.fetch_sub(1, std::memory_order_relaxed);
  return s;
}

void read_cache::write_slot(slot& s, const entity_key& k, const cached_totals& v, int64_t filled_ms) {
  uint64_t ver = s.version.load(std::memory_order_relaxed);
  s.version.store(ver + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  s.key_lo.store(k.lo, std::memory_order_relaxed);
  s.key_hi.store(k.hi, std::memory_order_relaxed);
  auto spend = static_cast<unsigned __int128>(v.values.spend);
  s.w[word_spend_lo].store(static_cast<uint64_t>(spend), std::memory_order_relaxed);
  s.w[word_spend_hi].store(static_cast<uint64_t>(spend >> 64), std::memory_order_relaxed);
  const int64_t* counts = counts_of(v.values);
  for (int j = 0; j < 7; ++j)
    s.w[word_counts + j].store(static_cast<uint64_t>(counts[j]), std::memory_order_relaxed);
  s.w[word_found].store(v.found ? 1 : 0, std::memory_order_relaxed);
  s.w[word_filled].store(static_cast<uint64_t>(filled_ms), std::memory_order_relaxed);
  s.version.store(ver + 2, std::memory_order_release);
}

void read_cache::clear_slot(slot& s) {
  uint64_t ver = s.version.load(std::memory_order_relaxed);
  s.version.store(ver + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  s.key_lo.store(0, std::memory_order_relaxed);
  s.key_hi.store(0, std::memory_order_relaxed);
  s.referenced.store(0, std::memory_order_relaxed);
  s.version.store(ver + 2, std::memory_order_release);
  entries_.fetch_sub(1, std::memory_order_relaxed);
}

void read_cache::touch_fill_locked(const entity_key& k) {
  auto it = fills_.find(k);
  if (it != fills_.end())
    ++it->second.generation;
}

read_cache::fill_ticket read_cache::begin_fill(const entity_key& k) {
  std::lock_guard<std::mutex> lock(mu_);
  fill_ticket t;
  t.key = k;
  auto& f = fills_[k];
  ++f.active;
  t.generation = f.generation;
  t.global_generation = global_generation_;
  if (auto it = overlay_.find(k); it != overlay_.end())
    for (uint64_t seq : it->second.seqs)
      t.pending_ids.push_back(ledger_.at(seq).id);
  return t;
}

void read_cache::release_fill_locked(const entity_key& k) {
  auto it = fills_.find(k);
  if (it != fills_.end() && --it->second.active == 0)
    fills_.erase(it);
}

void read_cache::abandon_fills(const std::vector<fill_ticket>& tickets) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& t : tickets)
    release_fill_locked(t.key);
}

std::vector<std::optional<cached_totals>>
read_cache::finish_fills(const std::vector<fill_ticket>& tickets, const std::vector<std::optional<measure_values>>& pg,
                         const std::vector<std::string>& applied) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<bool> stale(tickets.size());
  for (size_t i = 0; i < tickets.size(); ++i) {
    const auto& t = tickets[i];
    auto it = fills_.find(t.key);
    stale[i] = it == fills_.end() || it->second.generation != t.generation
               || global_generation_ != t.global_generation;
  }
  // Judged before retiring: retiring what this very snapshot holds must not
  // make its own fills stale.
  for (const auto& id : applied)
    retire_locked(id);
  std::vector<std::optional<cached_totals>> out(tickets.size());
  int64_t now = steady_now_ms();
  for (size_t i = 0; i < tickets.size(); ++i) {
    const auto& t = tickets[i];
    release_fill_locked(t.key);
    if (stale[i]) {
      counters_.stale_fills.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    cached_totals v;
    if (pg[i])
      v.values = *pg[i];
    v.found = pg[i].has_value();
    if (auto o = overlay_.find(t.key); o != overlay_.end()) {
      v.values.add(o->second.sum);
      v.found = true;
    }
    if (enabled_.load(std::memory_order_relaxed)) {
      slot* s = find_locked(t.key);
      if (s == nullptr) {
        s = &victim_locked(t.key.lo % sets_);
        entries_.fetch_add(1, std::memory_order_relaxed);
      }
      write_slot(*s, t.key, v, now);
      counters_.fills.fetch_add(1, std::memory_order_relaxed);
    }
    out[i] = v;
  }
  return out;
}

void read_cache::add_batch(const std::string& id, std::vector<std::pair<entity_key, measure_values>> rows) {
  if (rows.empty())
    return;
  std::lock_guard<std::mutex> lock(mu_);
  if (ledger_ids_.count(id))
    return;
  if (ledger_rows_ + rows.size() > ledger_max_rows_) {
    // Reads will miss this batch until it is flushed, like another
    // instance's spend; counted, so an operator sees it.
    counters_.ledger_overflow.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  uint64_t seq = next_seq_++;
  for (const auto& [k, m] : rows) {
    auto& o = overlay_[k];
    o.sum.add(m);
    o.seqs.push_back(seq);
    if (slot* s = find_locked(k)) {
      uint64_t w[words];
      for (int j = 0; j < words; ++j)
        w[j] = s->w[j].load(std::memory_order_relaxed);
      cached_totals v = decode(w);
      v.values.add(m);
      v.found = true;
      write_slot(*s, k, v, static_cast<int64_t>(w[word_filled]));
    }
  }
  ledger_rows_ += rows.size();
  ledger_ids_.emplace(id, seq);
  ledger_.emplace(seq, ledger_batch{id, std::move(rows)});
}

void read_cache::retire_locked(const std::string& id) {
  auto found = ledger_ids_.find(id);
  if (found == ledger_ids_.end())
    return;
  uint64_t seq = found->second;
  ledger_ids_.erase(found);
  auto b = ledger_.find(seq);
  for (const auto& [k, m] : b->second.rows) {
    auto o = overlay_.find(k);
    subtract(o->second.sum, m);
    auto& seqs = o->second.seqs;
    seqs.erase(std::remove(seqs.begin(), seqs.end(), seq), seqs.end());
    if (seqs.empty())
      overlay_.erase(o);
    // A fill in flight may have read Postgres before this batch landed: it
    // would now miss the delta on both sides.
    touch_fill_locked(k);
  }
  ledger_rows_ -= b->second.rows.size();
  ledger_.erase(b);
  counters_.retired_batches.fetch_add(1, std::memory_order_relaxed);
}

void read_cache::retire(const std::vector<std::string>& ids) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& id : ids)
    retire_locked(id);
}

void read_cache::invalidate(const std::vector<entity_key>& keys) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& k : keys) {
    touch_fill_locked(k);
    if (slot* s = find_locked(k)) {
      clear_slot(*s);
      counters_.invalidated.fetch_add(1, std::memory_order_relaxed);
    }
  }
}

void read_cache::invalidate_all() {
  std::lock_guard<std::mutex> lock(mu_);
  ++global_generation_;
  for (size_t i = 0; i < sets_ * ways; ++i)
    if (!(slots_[i].key_lo.load(std::memory_order_relaxed) == 0 && slots_[i].key_hi.load(std::memory_order_relaxed) == 0))
      clear_slot(slots_[i]);
  counters_.invalidate_all.fetch_add(1, std::memory_order_relaxed);
}

void read_cache::set_enabled(bool on) {
  if (!on)
    enabled_.store(false, std::memory_order_release);
  invalidate_all();
  if (on)
    enabled_.store(true, std::memory_order_release);
}

size_t read_cache::ledger_batches() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ledger_.size();
}

size_t read_cache::ledger_rows() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ledger_rows_;
}

} // namespace tally
