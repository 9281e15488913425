// core/backoff.hpp — retry delays and timer jitter, shared by every actor.
//
// Anything that retries a lost Redis or Postgres (the stage-1 writer, the
// stage-2 connections, the supervisor restarting a child) waits longer after
// each failure, so a dead server is not hammered, and adds random jitter, so
// a fleet that lost the server at the same moment does not come back in
// lockstep and knock it over again. This is the one implementation; each
// owner keeps its own `backoff` and calls reset() after a success.
//
// Randomness comes from a seed: random_seed() in production, a constant in
// tests, so a test can predict every delay. Nothing here reads a clock.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>

namespace tally {

/// Returns a seed from std::random_device, different in every process, so
/// each instance of a fleet draws different jitter. Falls back to the
/// address of a local (different per process under ASLR) when the device
/// is unavailable.
inline uint64_t random_seed() noexcept {
  uint64_t local = 0;
  try {
    std::random_device device;
    return (static_cast<uint64_t>(device()) << 32) ^ device();
  } catch (...) {
    return reinterpret_cast<uintptr_t>(&local) * 0x9e3779b97f4a7c15ull;
  }
}

/// Advances `state` and returns the next pseudo-random number (splitmix64:
/// eight bytes of state, the same sequence on every platform).
inline uint64_t next_random(uint64_t& state) noexcept {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/// Returns `base` moved by up to ±fraction of itself, uniformly, chosen by
/// `random` (any uniformly distributed number: next_random(), random_seed()),
/// for periodic timers a fleet must not fire in lockstep (heartbeats, lease
/// renewals, health checks). The result lies in [base - floor(base *
/// fraction), base + floor(base * fraction)]. `fraction` is clamped to
/// [0, 1] (NaN is 0), so the result is never negative; a base <= 0 is
/// returned as it is.
inline std::chrono::milliseconds jittered(std::chrono::milliseconds base, double fraction,
                                          uint64_t random) noexcept {
  if (base.count() <= 0 || !(fraction > 0))
    return base;
  fraction = std::min(fraction, 1.0);
  auto span = static_cast<int64_t>(static_cast<double>(base.count()) * fraction);
  uint64_t choices = 2 * static_cast<uint64_t>(span) + 1;
  return std::chrono::milliseconds(base.count() - span + static_cast<int64_t>(random % choices));
}

/// Exponential backoff with jitter between `min` and `max`.
///
/// Concept: current() is the delay without jitter. It is 0 until the first
/// failure; next() makes it min, then doubles it on every call up to max,
/// and returns it plus a random jitter of 0 to 25 % of it (so a returned
/// delay may exceed max by up to a quarter). reset() after a success starts
/// again from min. Invariant: current() is 0 or within [min, max].
///
/// Order of calls: on each failure `delay = b.next()` and retry after
/// `delay`; on success `b.reset()`.
///
/// Clamps: min is taken as at least 1 ms (a zero delay would never double),
/// max as at least min.
class backoff {
public:
  /// Jitter added by next(), as a fraction of current(): up to 1/jitter_divisor.
  static constexpr int64_t jitter_divisor = 4;

  /// `seed` picks the jitter sequence: leave it to random_seed() so every
  /// process differs; pass a constant in tests.
  backoff(std::chrono::milliseconds min, std::chrono::milliseconds max,
          uint64_t seed = random_seed()) noexcept;

  /// Returns the next delay: current() advanced (min, doubled, capped at
  /// max) plus 0..current()/4 of jitter.
  std::chrono::milliseconds next() noexcept;

  /// Starts again from min at the next failure.
  void reset() noexcept { current_ = std::chrono::milliseconds{0}; }

  /// Returns the delay of the last next() without its jitter; 0 after reset.
  std::chrono::milliseconds current() const noexcept { return current_; }
  std::chrono::milliseconds min() const noexcept { return min_; }
  std::chrono::milliseconds max() const noexcept { return max_; }

private:
  std::chrono::milliseconds min_;
  std::chrono::milliseconds max_;
  std::chrono::milliseconds current_{0};
  uint64_t random_state_;
};

} // namespace tally
