// core/memory_release.cpp — see memory_release.hpp for why and when.
#include "core/memory_release.hpp"

#include <atomic>
#include <chrono>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace tally {

namespace {
std::atomic<size_t> work_since_release{0};
std::atomic<long long> last_release_ms{0};
std::atomic<bool> releasing{false};

long long steady_ms() noexcept {
  using namespace std::chrono;
  return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}
} // namespace

void release_memory_after(size_t bytes) noexcept {
#if defined(__GLIBC__)
  size_t work = work_since_release.fetch_add(bytes, std::memory_order_relaxed) + bytes;
  if (work < release_after_bytes)
    return;
  long long now = steady_ms();
  if (now - last_release_ms.load(std::memory_order_relaxed) < release_min_gap_ms)
    return;
  if (releasing.exchange(true, std::memory_order_acquire))
    return;
  work_since_release.store(0, std::memory_order_relaxed);
  malloc_trim(0);
  last_release_ms.store(steady_ms(), std::memory_order_relaxed);
  releasing.store(false, std::memory_order_release);
#else
  (void)bytes;
#endif
}

} // namespace tally
