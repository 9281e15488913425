// core/circuit_breaker.cpp — probe rounds, the bucketed failure window and
// the circuit's transitions (see circuit_breaker.hpp for the reasoning).
#include "core/circuit_breaker.hpp"

#include <algorithm>

namespace tally {

const char* to_string(circuit_state state) noexcept {
  switch (state) {
    case circuit_state::unknown: return "unknown";
    case circuit_state::closed: return "closed";
    case circuit_state::open: return "open";
    case circuit_state::half_open: return "half_open";
  }
  return "?";
}

const char* to_string(open_cause cause) noexcept {
  switch (cause) {
    case open_cause::none: return "none";
    case open_cause::health_check: return "health_check";
    case open_cause::failure_detector: return "failure_detector";
  }
  return "?";
}

const char* to_string(probe_policy policy) noexcept {
  switch (policy) {
    case probe_policy::all: return "all";
    case probe_policy::majority: return "majority";
    case probe_policy::any: return "any";
  }
  return "?";
}

bool parse_probe_policy(std::string_view text, probe_policy& out) noexcept {
  for (auto policy : {probe_policy::all, probe_policy::majority, probe_policy::any})
    if (text == to_string(policy)) {
      out = policy;
      return true;
    }
  return false;
}

// --- probe_round ---------------------------------------------------------------

probe_round::probe_round(probe_policy policy, uint32_t probes) noexcept
  : policy_(policy), probes_(std::max<uint32_t>(probes, 1)) {
  switch (policy_) {
    case probe_policy::all: needed_ = probes_; break;
    case probe_policy::majority: needed_ = probes_ / 2 + 1; break;
    case probe_policy::any: needed_ = 1; break;
  }
}

bool probe_round::add(bool ok) noexcept {
  if (decided_)
    return true;
  if (ok)
    ++passed_;
  else
    ++failed_;
  if (passed_ >= needed_) {
    decided_ = true;
    healthy_ = true;
  } else if (failed_ > probes_ - needed_) {
    // Too few probes are left for `needed_` passes: waiting cannot help.
    decided_ = true;
    healthy_ = false;
  }
  return decided_;
}

// --- failure_window --------------------------------------------------------------

failure_window::failure_window(std::chrono::milliseconds window, uint32_t buckets)
  : window_(std::max(window, std::chrono::milliseconds{1})) {
  // A slice of at least 1 ms keeps the slice index well defined; rounding
  // the width down keeps every counted outcome younger than `window`.
  int64_t span = window_.count();
  uint32_t count = std::clamp<uint32_t>(buckets, 1, max_buckets);
  if (static_cast<int64_t>(count) > span)
    count = static_cast<uint32_t>(span);
  width_ = span / count;
  slices_.resize(count);
}

int64_t failure_window::slice_of(int64_t now_ms) const noexcept {
  // Floor division, so slices stay aligned for negative times too.
  int64_t index = now_ms / width_;
  if (now_ms % width_ != 0 && now_ms < 0)
    --index;
  // Time running backwards must not reopen a slice that already expired.
  if (!empty_ && index < newest_)
    index = newest_;
  return index;
}

void failure_window::record(int64_t now_ms, bool ok) noexcept {
  int64_t index = slice_of(now_ms);
  auto n = static_cast<int64_t>(slices_.size());
  auto& s = slices_[static_cast<size_t>(((index % n) + n) % n)];
  if (s.index != index)
    s = slice{index, 0, 0};  // the ring slot held an expired slice
  s.total += 1;
  if (!ok)
    s.failures += 1;
  newest_ = empty_ ? index : std::max(newest_, index);
  empty_ = false;
}

void failure_window::sum(int64_t now_ms, uint64_t& failures, uint64_t& total) const noexcept {
  failures = 0;
  total = 0;
  if (empty_)
    return;
  int64_t current = slice_of(now_ms);
  auto n = static_cast<int64_t>(slices_.size());
  for (const auto& s : slices_)
    if (s.index <= current && current - s.index < n) {
      failures += s.failures;
      total += s.total;
    }
}

uint64_t failure_window::failures(int64_t now_ms) const noexcept {
  uint64_t failures, total;
  sum(now_ms, failures, total);
  return failures;
}

uint64_t failure_window::total(int64_t now_ms) const noexcept {
  uint64_t failures, total;
  sum(now_ms, failures, total);
  return total;
}

bool failure_window::tripped(int64_t now_ms, uint32_t min_failures, double failure_rate) const noexcept {
  uint64_t failures, total;
  sum(now_ms, failures, total);
  if (failures == 0 || failures < min_failures)
    return false;
  // Multiplied out rather than divided: no division by zero, and a NaN rate
  // compares false, so a broken setting never trips.
  return static_cast<double>(failures) >= failure_rate * static_cast<double>(total);
}

void failure_window::clear() noexcept {
  std::fill(slices_.begin(), slices_.end(), slice{});
  newest_ = 0;
  empty_ = true;
}

// --- circuit_breaker -------------------------------------------------------------

circuit_breaker::circuit_breaker(const breaker_settings& settings)
  : settings_(settings), window_(settings.failure_window, settings.window_buckets) {}

bool circuit_breaker::on_health_check(int64_t now_ms, bool healthy) noexcept {
  switch (state_) {
    case circuit_state::unknown:
      // First sight: nothing has failed yet, so a passing check is trusted
      // without a grace period.
      if (healthy)
        enter(circuit_state::closed, now_ms);
      else
        open(now_ms, open_cause::health_check);
      return true;
    case circuit_state::closed:
      if (healthy)
        return false;
      open(now_ms, open_cause::health_check);
      return true;
    case circuit_state::open:
      if (!healthy)
        return false;
      recovered_at_ms_ = now_ms;
      enter(circuit_state::half_open, now_ms);
      return true;
    case circuit_state::half_open:
      if (!healthy) {
        open(now_ms, open_cause::health_check);
        return true;
      }
      if (now_ms - recovered_at_ms_ < settings_.grace_period.count())
        return false;
      enter(circuit_state::closed, now_ms);
      return true;
  }
  return false;
}

bool circuit_breaker::on_command(int64_t now_ms, bool ok) noexcept {
  if (state_ != circuit_state::closed && state_ != circuit_state::half_open)
    return false;
  window_.record(now_ms, ok);
  if (!window_.tripped(now_ms, settings_.min_failures, settings_.failure_rate))
    return false;
  open(now_ms, open_cause::failure_detector);
  return true;
}

int64_t circuit_breaker::grace_ends_ms() const noexcept {
  if (state_ != circuit_state::half_open)
    return 0;
  return recovered_at_ms_ + settings_.grace_period.count();
}

void circuit_breaker::set_settings(const breaker_settings& settings) {
  bool reshaped = settings.failure_window != settings_.failure_window
                  || settings.window_buckets != settings_.window_buckets;
  settings_ = settings;
  if (reshaped)
    window_ = failure_window(settings_.failure_window, settings_.window_buckets);
}

void circuit_breaker::enter(circuit_state next, int64_t now_ms) noexcept {
  state_ = next;
  since_ms_ = now_ms;
}

void circuit_breaker::open(int64_t now_ms, open_cause cause) noexcept {
  enter(circuit_state::open, now_ms);
  cause_ = cause;
  ++opens_;
  // Failures from before the outage must not re-trip the database once it
  // recovers; the window starts again from its recovery.
  window_.clear();
}

} // namespace tally
