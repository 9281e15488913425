// core/backoff.cpp — the backoff class (see backoff.hpp). Its members are
// defined here rather than inline so that a second class of the same name
// in another library breaks the link loudly instead of being merged silently.
#include "core/backoff.hpp"

namespace tally {

backoff::backoff(std::chrono::milliseconds min, std::chrono::milliseconds max, uint64_t seed) noexcept
  : min_(std::max(min, std::chrono::milliseconds{1})),
    max_(std::max(max, min_)),
    random_state_(seed) {}

std::chrono::milliseconds backoff::next() noexcept {
  if (current_.count() == 0)
    current_ = min_;
  else if (current_ > max_ / 2)
    current_ = max_;  // also keeps current_ * 2 from overflowing
  else
    current_ *= 2;
  auto span = static_cast<uint64_t>(current_.count() / jitter_divisor) + 1;
  return current_ + std::chrono::milliseconds(static_cast<int64_t>(next_random(random_state_) % span));
}

} // namespace tally
