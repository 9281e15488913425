// core/circuit_breaker.hpp — whether one Redis database may take traffic.
//
// tally treats Redis as a fleet of weighted databases; the failover actor
// keeps one circuit_breaker per database and makes the highest-weight one
// whose circuit is closed the active database. This file is the decision
// logic only, as plain data: the actor runs the health checks, times them and
// feeds the results in. Every function takes the time as `now_ms` (a
// monotonic clock, in milliseconds) and nothing here reads a clock, so each
// transition is deterministic and unit-tested without sleeping.
//
// Two inputs feed a circuit:
//  * health-check rounds: a few PING probes, decided by a probe_policy
//    (probe_round), reported with circuit_breaker::on_health_check;
//  * the outcomes of real commands, reported with circuit_breaker::on_command
//    and counted by a failure_window, the failure detector.
//
// Three mistakes of the Redis client libraries (redis-py, Jedis, Lettuce)
// that this design avoids on purpose:
//  1. The grace period counts from the RECOVERY, not from the failure. A
//     database that failed long ago and answers one PING now has proved
//     nothing yet; counting from the failure would trust it at once, and a
//     flapping database would take the traffic back on every good PING.
//     Here a recovered database sits in half_open, seeing passing checks,
//     for a whole grace period before it closes; one bad check reopens it
//     and the next recovery starts the grace period again.
//  2. The failure window is a BUCKETED sliding window. A fixed window that
//     resets every N seconds forgets a burst that straddles the reset and
//     trips twice as late as configured; a per-outcome list costs memory
//     per command. Buckets are fixed time slices: memory is `buckets`
//     counters whatever the traffic, and old slices expire as time moves on.
//  3. The failure rate is over ALL commands in the window: failures divided
//     by failures plus successes. A rate over failures alone, or a count of
//     consecutive failures, lets three timeouts among ten thousand good
//     replies fail the fleet over; min_failures AND failure_rate must both
//     hold, so a quiet database is not tripped by one unlucky command and a
//     busy one is not tripped by a sliver of errors.
#pragma once

#include <chrono>
#include <cstdint>
#include <string_view>
#include <vector>

namespace tally {

enum class circuit_state : uint8_t { unknown, closed, open, half_open };
/// Returns "unknown", "closed", "open" or "half_open".
const char* to_string(circuit_state state) noexcept;

/// Why a circuit last opened.
enum class open_cause : uint8_t { none, health_check, failure_detector };
/// Returns "none", "health_check" or "failure_detector".
const char* to_string(open_cause cause) noexcept;

/// How many of a round's probes must pass: all of them, more than half, or
/// at least one.
enum class probe_policy : uint8_t { all, majority, any };
/// Parses "all", "majority" or "any" (exact, lower case); false otherwise,
/// leaving `out` alone.
bool parse_probe_policy(std::string_view text, probe_policy& out) noexcept;
/// Returns "all", "majority" or "any".
const char* to_string(probe_policy policy) noexcept;

/// One health-check round: decides healthy or unhealthy from its probe
/// outcomes as they arrive, so the caller stops probing as soon as the
/// answer can no longer change.
///
/// A round of n probes is healthy when at least `needed` pass: n for all,
/// n/2 + 1 for majority (more than half; an even split is unhealthy), 1 for
/// any. It is decided healthy once `needed` have passed, and unhealthy once
/// more than n - needed have failed. So policy all stops at the first
/// failure, any at the first success, and majority once either side is
/// certain: for odd n when one side has more than n/2; for even n a pass
/// needs n/2 + 1 but n/2 failures already make a majority of passes
/// impossible.
///
/// Invariant: passed() + failed() <= probes(); after decided() the result
/// never changes. Order of calls:
///   probe_round r(policy, probes);
///   while (!r.decided()) r.add(send_ping());
///   breaker.on_health_check(now, r.healthy());
class probe_round {
public:
  /// Starts a round of `probes` probes (0 is taken as 1: a round needs one).
  probe_round(probe_policy policy, uint32_t probes) noexcept;

  /// Counts one probe outcome; returns decided(). Outcomes after the
  /// decision are ignored, so a late reply cannot change a round.
  bool add(bool ok) noexcept;

  bool decided() const noexcept { return decided_; }
  /// Returns the verdict; false while undecided.
  bool healthy() const noexcept { return decided_ && healthy_; }

  probe_policy policy() const noexcept { return policy_; }
  uint32_t probes() const noexcept { return probes_; }
  uint32_t passed() const noexcept { return passed_; }
  uint32_t failed() const noexcept { return failed_; }

private:
  probe_policy policy_;
  uint32_t probes_;
  uint32_t needed_;  // passes that make the round healthy
  uint32_t passed_ = 0;
  uint32_t failed_ = 0;
  bool decided_ = false;
  bool healthy_ = false;
};

/// Counts command outcomes in `buckets` fixed time slices covering `window`;
/// old slices expire as time moves on.
///
/// Slices are aligned to multiples of slice_width() = window / buckets
/// (integer milliseconds, at least 1), and the window ending at `now` is the
/// slice holding `now` plus the buckets - 1 slices before it. Boundary: an
/// outcome recorded at t is counted at `now` while
/// slice(now) - slice(t) < buckets, so
///   * it is counted as long as now - t < window - slice_width(), and
///   * it is never counted once now - t >= window (it stops exactly at
///     t + window when t falls on the start of a slice, earlier otherwise).
/// Clamps: window is taken as at least 1 ms; buckets as 1..max_buckets and
/// at most window ms (so a slice is never shorter than 1 ms); a window that
/// buckets does not divide covers buckets * slice_width() <= window.
///
/// Time is expected not to run backwards; a `now` earlier than the newest
/// recorded slice is treated as that newest slice, so counts never
/// resurrect and a record never lands in an expired slice.
class failure_window {
public:
  static constexpr uint32_t max_buckets = 1000;

  failure_window(std::chrono::milliseconds window, uint32_t buckets);

  /// Counts one outcome at `now_ms`.
  void record(int64_t now_ms, bool ok) noexcept;

  /// Returns the failures in the window ending at `now_ms`.
  uint64_t failures(int64_t now_ms) const noexcept;
  /// Returns all outcomes (failures and successes) in the window ending at `now_ms`.
  uint64_t total(int64_t now_ms) const noexcept;

  /// True when at least min_failures failed AND failures/total >=
  /// failure_rate, both over the window ending now. An empty window never
  /// trips, even with min_failures 0.
  bool tripped(int64_t now_ms, uint32_t min_failures, double failure_rate) const noexcept;

  /// Forgets every outcome.
  void clear() noexcept;

  std::chrono::milliseconds window() const noexcept { return window_; }
  uint32_t buckets() const noexcept { return static_cast<uint32_t>(slices_.size()); }
  int64_t slice_width() const noexcept { return width_; }

private:
  struct slice {
    int64_t index = 0;  // time slice this entry counts (floor(now / width_))
    uint64_t failures = 0;
    uint64_t total = 0;
  };
  int64_t slice_of(int64_t now_ms) const noexcept;
  /// Adds up the slices of the window ending at `now_ms`.
  void sum(int64_t now_ms, uint64_t& failures, uint64_t& total) const noexcept;

  std::chrono::milliseconds window_;
  int64_t width_;
  std::vector<slice> slices_;  // ring: slice i lives at i mod buckets
  int64_t newest_ = 0;         // newest slice index recorded
  bool empty_ = true;          // nothing recorded since construction or clear()
};

/// Settings of one circuit. The options table bounds them for users; the
/// breaker still clamps what would break its arithmetic (see failure_window).
struct breaker_settings {
  std::chrono::milliseconds grace_period{10000};    // half_open this long before closing
  std::chrono::milliseconds failure_window{5000};   // span of the failure detector
  uint32_t window_buckets = 5;                      // slices of that span
  uint32_t min_failures = 3;                        // failures needed to trip, at least
  double failure_rate = 0.10;                       // failures / all commands needed to trip
};

/// One database's circuit.
///
/// Transitions (each on_* call returns true when the state changed):
///   unknown   --check ok--> closed       (first sight: no grace, nothing failed yet)
///   unknown   --check bad-> open (health_check)
///   closed    --check bad-> open (health_check)
///   closed    --detector trips--> open (failure_detector)
///   open      --check ok--> half_open    (recovered_at = now)
///   half_open --check bad--> open (health_check)
///   half_open --detector trips--> open (failure_detector)
///   half_open --check ok and now - recovered_at >= grace--> closed
/// Everything else keeps the state: a passing check on a closed circuit, a
/// bad one on an open circuit, a passing check during the grace period.
/// One event makes at most one transition, so with a zero grace period an
/// open circuit still needs two passing checks (recover, then close).
///
/// Invariants:
///  * entering open clears the failure window and counts opens(): failures
///    from before the outage must not re-trip a database that recovered;
///  * command outcomes are counted only while closed or half_open. In
///    unknown the first health check decides, and "nothing failed yet"
///    holds when it closes; in open the outcomes are replies to commands
///    sent before the circuit opened, and counting them would re-trip the
///    database as soon as it recovers;
///  * recovered_at (hence grace_ends_ms()) changes only on entering
///    half_open, so passing checks during the grace period do not extend it.
///
/// Order of calls: construct with the settings; on every health-check round
/// call on_health_check(now, round.healthy()); once per logical command call
/// on_command(now, ok); read state() to choose the active database; when
/// half_open, schedule a check at grace_ends_ms() so the circuit can close
/// without waiting a full check interval. set_settings() at any time.
class circuit_breaker {
public:
  explicit circuit_breaker(const breaker_settings& settings);

  /// Applies one health-check round's verdict at `now_ms`; true when the
  /// state changed.
  bool on_health_check(int64_t now_ms, bool healthy) noexcept;

  /// Counts the outcome of one LOGICAL command at `now_ms` and opens the
  /// circuit if the window ending now trips; true when the state changed.
  ///
  /// Contract: the caller reports once per logical command, after its
  /// retries, with the final outcome. A command retried five times before
  /// it failed is one failure, not five: counting attempts would let a
  /// retry policy multiply the failure rate and fail over on a blip that
  /// the retries already hid from the user. `ok` is false for errors that
  /// say the database is unwell (connection lost, timeout, LOADING,
  /// READONLY...), not for replies the command itself earned (a script
  /// error, WRONGTYPE), which prove the database answered.
  bool on_command(int64_t now_ms, bool ok) noexcept;

  circuit_state state() const noexcept { return state_; }
  /// Returns why the circuit last opened (kept after it closes again); none
  /// if it never opened.
  open_cause cause() const noexcept { return cause_; }
  /// Returns when the current state began (0 while still unknown).
  int64_t since_ms() const noexcept { return since_ms_; }
  /// Returns when a half-open circuit may close (recovered_at + grace); 0 in
  /// any other state. Lets the owner schedule a check for that moment.
  int64_t grace_ends_ms() const noexcept;
  /// Returns how often the circuit opened, for metrics.
  uint64_t opens() const noexcept { return opens_; }
  /// Returns the failure detector's window, for metrics (failures, total).
  const failure_window& window() const noexcept { return window_; }

  const breaker_settings& settings() const noexcept { return settings_; }
  /// Replaces the settings at runtime; keeps the state and its times. A new
  /// grace period applies to a half-open circuit at once (from its
  /// recovery). A new window span or bucket count restarts the window
  /// empty, since counts cut into the old slices cannot be re-cut; new
  /// thresholds alone keep the counts.
  void set_settings(const breaker_settings& settings);

private:
  void enter(circuit_state next, int64_t now_ms) noexcept;
  void open(int64_t now_ms, open_cause cause) noexcept;

  breaker_settings settings_;
  failure_window window_;
  circuit_state state_ = circuit_state::unknown;
  open_cause cause_ = open_cause::none;
  int64_t since_ms_ = 0;
  int64_t recovered_at_ms_ = 0;  // when half_open began; the grace counts from here
  uint64_t opens_ = 0;
};

} // namespace tally
