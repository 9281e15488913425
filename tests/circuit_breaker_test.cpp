// tests/circuit_breaker_test.cpp — probe rounds, the bucketed failure window,
// every circuit transition, and the shared backoff. Time is passed in as
// plain milliseconds, so nothing here sleeps. Every suite name starts with
// the file's name because CTest lists each test under its suite name, and
// `ctest -R circuit_breaker` should select exactly these.
#include "core/backoff.hpp"
#include "core/circuit_breaker.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <set>

using namespace tally;
using std::chrono::milliseconds;

namespace {

/// Feeds outcomes into a round until it decides; returns how many it took.
int run_round(probe_round& round, std::initializer_list<bool> outcomes) {
  int used = 0;
  for (bool ok : outcomes) {
    if (round.decided())
      break;
    round.add(ok);
    ++used;
  }
  return used;
}

breaker_settings test_settings() {
  breaker_settings s;
  s.grace_period = milliseconds(10000);
  s.failure_window = milliseconds(5000);
  s.window_buckets = 5;
  s.min_failures = 3;
  s.failure_rate = 0.10;
  return s;
}

/// A breaker taken from unknown to open by a failed check at `at`.
circuit_breaker opened_at(int64_t at) {
  circuit_breaker b(test_settings());
  b.on_health_check(at, false);
  return b;
}

} // namespace

// --- names ---------------------------------------------------------------------

TEST(circuit_breaker_names, ToStringAndParse) {
  EXPECT_STREQ(to_string(circuit_state::unknown), "unknown");
  EXPECT_STREQ(to_string(circuit_state::closed), "closed");
  EXPECT_STREQ(to_string(circuit_state::open), "open");
  EXPECT_STREQ(to_string(circuit_state::half_open), "half_open");
  EXPECT_STREQ(to_string(open_cause::none), "none");
  EXPECT_STREQ(to_string(open_cause::health_check), "health_check");
  EXPECT_STREQ(to_string(open_cause::failure_detector), "failure_detector");
  EXPECT_STREQ(to_string(probe_policy::all), "all");
  EXPECT_STREQ(to_string(probe_policy::majority), "majority");
  EXPECT_STREQ(to_string(probe_policy::any), "any");

  for (auto p : {probe_policy::all, probe_policy::majority, probe_policy::any}) {
    probe_policy out = p == probe_policy::all ? probe_policy::any : probe_policy::all;
    ASSERT_TRUE(parse_probe_policy(to_string(p), out));
    EXPECT_EQ(out, p);
  }
  probe_policy out = probe_policy::majority;
  for (const char* bad : {"", "ALL", "Majority", "most", "any ", "none"}) {
    EXPECT_FALSE(parse_probe_policy(bad, out)) << bad;
    EXPECT_EQ(out, probe_policy::majority) << "a failed parse leaves out alone";
  }
}

// --- probe_round ---------------------------------------------------------------

TEST(circuit_breaker_probe_round, AllDecidesUnhealthyAtFirstFailure) {
  probe_round r(probe_policy::all, 3);
  EXPECT_EQ(run_round(r, {true, false, true}), 2);
  EXPECT_TRUE(r.decided());
  EXPECT_FALSE(r.healthy());
  EXPECT_EQ(r.passed(), 1u);
  EXPECT_EQ(r.failed(), 1u);
}

TEST(circuit_breaker_probe_round, AllNeedsEveryProbeToPass) {
  probe_round r(probe_policy::all, 3);
  r.add(true);
  r.add(true);
  EXPECT_FALSE(r.decided());
  EXPECT_FALSE(r.healthy()) << "undecided reads as not healthy";
  EXPECT_TRUE(r.add(true));
  EXPECT_TRUE(r.healthy());
}

TEST(circuit_breaker_probe_round, AnyDecidesHealthyAtFirstSuccess) {
  probe_round r(probe_policy::any, 3);
  EXPECT_EQ(run_round(r, {false, true, false}), 2);
  EXPECT_TRUE(r.decided());
  EXPECT_TRUE(r.healthy());

  probe_round none(probe_policy::any, 3);
  EXPECT_FALSE(none.add(false));
  EXPECT_FALSE(none.add(false));
  EXPECT_TRUE(none.add(false));
  EXPECT_FALSE(none.healthy());
}

TEST(circuit_breaker_probe_round, MajorityOddDecidesOnceOneSideHasMoreThanHalf) {
  probe_round pass(probe_policy::majority, 3);
  EXPECT_EQ(run_round(pass, {true, true, false}), 2);
  EXPECT_TRUE(pass.healthy());

  probe_round fail(probe_policy::majority, 3);
  EXPECT_EQ(run_round(fail, {false, false, true}), 2);
  EXPECT_TRUE(fail.decided());
  EXPECT_FALSE(fail.healthy());

  probe_round split(probe_policy::majority, 3);
  EXPECT_EQ(run_round(split, {true, false, true}), 3);
  EXPECT_TRUE(split.healthy());

  probe_round five(probe_policy::majority, 5);
  EXPECT_EQ(run_round(five, {false, true, false, true, false}), 5);
  EXPECT_FALSE(five.healthy());
  probe_round five_early(probe_policy::majority, 5);
  EXPECT_EQ(run_round(five_early, {false, false, false, true, true}), 3);
  EXPECT_FALSE(five_early.healthy());
}

TEST(circuit_breaker_probe_round, MajorityEvenNeedsMoreThanHalfAndLosesATie) {
  probe_round pass(probe_policy::majority, 4);
  EXPECT_FALSE(pass.add(true));
  EXPECT_FALSE(pass.add(true)) << "2 of 4 is not more than half";
  EXPECT_TRUE(pass.add(true));
  EXPECT_TRUE(pass.healthy());

  // Two failures of four already make three passes impossible.
  probe_round fail(probe_policy::majority, 4);
  EXPECT_EQ(run_round(fail, {false, false, true, true}), 2);
  EXPECT_TRUE(fail.decided());
  EXPECT_FALSE(fail.healthy());

  probe_round tie(probe_policy::majority, 4);
  EXPECT_EQ(run_round(tie, {true, true, false, false}), 4);
  EXPECT_FALSE(tie.healthy()) << "an even split is not a majority";

  probe_round two(probe_policy::majority, 2);
  EXPECT_EQ(run_round(two, {true, false}), 2);
  EXPECT_FALSE(two.healthy());
  probe_round two_fail(probe_policy::majority, 2);
  EXPECT_EQ(run_round(two_fail, {false, true}), 1);
  EXPECT_FALSE(two_fail.healthy());
}

TEST(circuit_breaker_probe_round, SingleProbeDecidesEveryPolicyAtOnce) {
  for (auto p : {probe_policy::all, probe_policy::majority, probe_policy::any}) {
    probe_round ok(p, 1);
    EXPECT_TRUE(ok.add(true)) << to_string(p);
    EXPECT_TRUE(ok.healthy()) << to_string(p);
    probe_round bad(p, 1);
    EXPECT_TRUE(bad.add(false)) << to_string(p);
    EXPECT_FALSE(bad.healthy()) << to_string(p);
  }
}

TEST(circuit_breaker_probe_round, ZeroProbesIsOneAndLateOutcomesAreIgnored) {
  probe_round r(probe_policy::majority, 0);
  EXPECT_EQ(r.probes(), 1u);
  EXPECT_FALSE(r.decided());
  EXPECT_TRUE(r.add(false));
  EXPECT_TRUE(r.add(true)) << "still decided";
  EXPECT_FALSE(r.healthy()) << "a late pass does not change the verdict";
  EXPECT_EQ(r.passed(), 0u);
  EXPECT_EQ(r.failed(), 1u);
}

// --- failure_window --------------------------------------------------------------

TEST(circuit_breaker_window, CountsFailuresAndTotal) {
  failure_window w(milliseconds(5000), 5);
  EXPECT_EQ(w.slice_width(), 1000);
  EXPECT_EQ(w.buckets(), 5u);
  w.record(100, false);
  w.record(1500, true);
  w.record(2500, false);
  EXPECT_EQ(w.failures(2600), 2u);
  EXPECT_EQ(w.total(2600), 3u);
}

TEST(circuit_breaker_window, BucketsExpireOneSliceAtATime) {
  failure_window w(milliseconds(5000), 5);
  w.record(0, false);
  w.record(1000, false);
  w.record(2000, false);
  EXPECT_EQ(w.failures(4999), 3u);
  EXPECT_EQ(w.failures(5000), 2u);
  EXPECT_EQ(w.failures(6000), 1u);
  EXPECT_EQ(w.failures(7000), 0u);
  EXPECT_EQ(w.total(7000), 0u);
}

TEST(circuit_breaker_window, BoundaryNothingAsOldAsTheWindowCounts) {
  // Stated boundary: counted while slice(now) - slice(t) < buckets, i.e.
  // always when now - t < window - width, never when now - t >= window.
  failure_window start(milliseconds(5000), 5);
  start.record(0, false);  // first millisecond of a slice: lives exactly `window`
  EXPECT_EQ(start.failures(4999), 1u);
  EXPECT_EQ(start.failures(5000), 0u);

  failure_window end(milliseconds(5000), 5);
  end.record(999, false);  // last millisecond of a slice: lives window - width + 1
  EXPECT_EQ(end.failures(3999), 1u) << "age 3000 < window - width";
  EXPECT_EQ(end.failures(4999), 1u);
  EXPECT_EQ(end.failures(5000), 0u) << "expires with its slice, at age 4001";

  failure_window later(milliseconds(5000), 5);
  later.record(1000, false);
  EXPECT_EQ(later.failures(5999), 1u);
  EXPECT_EQ(later.failures(6000), 0u);
}

TEST(circuit_breaker_window, RingSlotIsReusedForANewSlice) {
  failure_window w(milliseconds(5000), 5);
  w.record(200, false);
  w.record(200, false);
  w.record(5200, true);  // same ring slot as 200, five slices later
  EXPECT_EQ(w.failures(5200), 0u);
  EXPECT_EQ(w.total(5200), 1u);
}

TEST(circuit_breaker_window, LongSilenceForgetsEverything) {
  failure_window w(milliseconds(5000), 5);
  for (int i = 0; i < 10; ++i)
    w.record(i * 100, false);
  EXPECT_EQ(w.failures(1000000), 0u);
  w.record(1000000, false);
  EXPECT_EQ(w.failures(1000000), 1u);
  EXPECT_EQ(w.total(1000000), 1u);
}

TEST(circuit_breaker_window, TimeRunningBackwardsCountsInTheNewestSlice) {
  failure_window w(milliseconds(5000), 5);
  w.record(10000, false);
  w.record(3000, false);  // earlier than the newest slice: counted there
  EXPECT_EQ(w.failures(3000), 2u);
  EXPECT_EQ(w.failures(10000), 2u);
  EXPECT_EQ(w.failures(14999), 2u);
  EXPECT_EQ(w.failures(15000), 0u) << "it expires with the newest slice, not earlier";
}

TEST(circuit_breaker_window, NegativeTimesUseFloorSlices) {
  failure_window w(milliseconds(5000), 5);
  w.record(-1, false);  // slice -1, not slice 0
  EXPECT_EQ(w.failures(3999), 1u);
  EXPECT_EQ(w.failures(4000), 0u);
}

TEST(circuit_breaker_window, ClampsBucketsAndWindow) {
  failure_window none(milliseconds(5000), 0);
  EXPECT_EQ(none.buckets(), 1u);
  EXPECT_EQ(none.slice_width(), 5000);

  failure_window fine(milliseconds(3), 10);
  EXPECT_EQ(fine.buckets(), 3u) << "no slice shorter than 1 ms";
  EXPECT_EQ(fine.slice_width(), 1);

  failure_window many(milliseconds(1000000), 1000000);
  EXPECT_EQ(many.buckets(), failure_window::max_buckets);

  failure_window zero(milliseconds(0), 5);
  EXPECT_EQ(zero.window(), milliseconds(1));
  EXPECT_EQ(zero.buckets(), 1u);
  zero.record(7, false);
  EXPECT_EQ(zero.failures(7), 1u);
  EXPECT_EQ(zero.failures(8), 0u);

  // 5000 / 3 rounds the slice down, so the window never reaches back further
  // than 5000 ms.
  failure_window uneven(milliseconds(5000), 3);
  EXPECT_EQ(uneven.slice_width(), 1666);
  uneven.record(0, false);
  EXPECT_EQ(uneven.failures(4997), 1u);
  EXPECT_EQ(uneven.failures(4998), 0u);
}

TEST(circuit_breaker_window, TripsOnlyWithMinFailuresAndRate) {
  failure_window w(milliseconds(5000), 5);
  w.record(0, false);
  w.record(10, false);
  EXPECT_FALSE(w.tripped(10, 3, 0.0)) << "two failures are below min_failures";
  w.record(20, false);
  EXPECT_TRUE(w.tripped(20, 3, 0.10));
  EXPECT_TRUE(w.tripped(20, 3, 1.0)) << "3 of 3 failed";
}

TEST(circuit_breaker_window, SuccessesDiluteTheRate) {
  failure_window w(milliseconds(5000), 5);
  for (int i = 0; i < 27; ++i)
    w.record(100, true);
  for (int i = 0; i < 3; ++i)
    w.record(200, false);
  EXPECT_TRUE(w.tripped(200, 3, 0.10)) << "3 / 30 is exactly the rate: trips";
  w.record(300, true);
  EXPECT_FALSE(w.tripped(300, 3, 0.10)) << "3 / 31 is below it";
  for (int i = 0; i < 1000; ++i)
    w.record(400, true);
  for (int i = 0; i < 50; ++i)
    w.record(1500, false);  // the next slice, so it outlives the successes
  EXPECT_FALSE(w.tripped(1500, 3, 0.10)) << "53 failures among 1081 commands";
  // Once the successes' slice expires, the later failures are the whole window.
  w.record(5300, false);
  EXPECT_EQ(w.total(5300), 51u);
  EXPECT_TRUE(w.tripped(5300, 3, 0.10));
}

TEST(circuit_breaker_window, EmptyWindowNeverTripsAndBadRatesDoNot) {
  failure_window w(milliseconds(5000), 5);
  EXPECT_FALSE(w.tripped(0, 0, 0.0));
  w.record(0, true);
  EXPECT_FALSE(w.tripped(0, 0, 0.0)) << "no failure, no trip";
  w.record(0, false);
  EXPECT_FALSE(w.tripped(0, 1, std::nan(""))) << "NaN rate never trips";
  EXPECT_FALSE(w.tripped(0, 1, 1.5)) << "a rate above 1 cannot be reached";
  EXPECT_TRUE(w.tripped(0, 1, 0.5));
}

TEST(circuit_breaker_window, ClearForgetsEverything) {
  failure_window w(milliseconds(5000), 5);
  w.record(9000, false);
  w.record(9500, true);
  w.clear();
  EXPECT_EQ(w.failures(9500), 0u);
  EXPECT_EQ(w.total(9500), 0u);
  // After clear, an earlier time is no longer pinned to the old newest slice.
  w.record(1000, false);
  EXPECT_EQ(w.failures(1000), 1u);
  EXPECT_EQ(w.failures(6000), 0u);
}

// --- circuit_breaker: transitions ------------------------------------------------

TEST(circuit_breaker, StartsUnknown) {
  circuit_breaker b(test_settings());
  EXPECT_EQ(b.state(), circuit_state::unknown);
  EXPECT_EQ(b.cause(), open_cause::none);
  EXPECT_EQ(b.since_ms(), 0);
  EXPECT_EQ(b.grace_ends_ms(), 0);
  EXPECT_EQ(b.opens(), 0u);
}

TEST(circuit_breaker, UnknownCheckOkClosesWithoutGrace) {
  circuit_breaker b(test_settings());
  EXPECT_TRUE(b.on_health_check(1000, true));
  EXPECT_EQ(b.state(), circuit_state::closed);
  EXPECT_EQ(b.since_ms(), 1000);
  EXPECT_EQ(b.grace_ends_ms(), 0);
  EXPECT_EQ(b.cause(), open_cause::none);
  EXPECT_EQ(b.opens(), 0u);
}

TEST(circuit_breaker, UnknownCheckBadOpens) {
  circuit_breaker b(test_settings());
  EXPECT_TRUE(b.on_health_check(1000, false));
  EXPECT_EQ(b.state(), circuit_state::open);
  EXPECT_EQ(b.cause(), open_cause::health_check);
  EXPECT_EQ(b.since_ms(), 1000);
  EXPECT_EQ(b.opens(), 1u);
}

TEST(circuit_breaker, ClosedStaysClosedOnPassingChecks) {
  circuit_breaker b(test_settings());
  b.on_health_check(1000, true);
  EXPECT_FALSE(b.on_health_check(2000, true));
  EXPECT_EQ(b.state(), circuit_state::closed);
  EXPECT_EQ(b.since_ms(), 1000) << "since_ms is when the state began";
}

TEST(circuit_breaker, ClosedCheckBadOpens) {
  circuit_breaker b(test_settings());
  b.on_health_check(1000, true);
  EXPECT_TRUE(b.on_health_check(2000, false));
  EXPECT_EQ(b.state(), circuit_state::open);
  EXPECT_EQ(b.cause(), open_cause::health_check);
  EXPECT_EQ(b.since_ms(), 2000);
  EXPECT_EQ(b.opens(), 1u);
}

TEST(circuit_breaker, ClosedDetectorTripsOpen) {
  circuit_breaker b(test_settings());
  b.on_health_check(1000, true);
  EXPECT_FALSE(b.on_command(1100, false));
  EXPECT_FALSE(b.on_command(1200, true));
  EXPECT_FALSE(b.on_command(1300, false));
  EXPECT_TRUE(b.on_command(1400, false)) << "3 failures of 4 commands";
  EXPECT_EQ(b.state(), circuit_state::open);
  EXPECT_EQ(b.cause(), open_cause::failure_detector);
  EXPECT_EQ(b.since_ms(), 1400);
  EXPECT_EQ(b.opens(), 1u);
}

TEST(circuit_breaker, ClosedDetectorDilutedBySuccessesStaysClosed) {
  circuit_breaker b(test_settings());
  b.on_health_check(0, true);
  for (int i = 0; i < 100; ++i)
    EXPECT_FALSE(b.on_command(100, true));
  for (int i = 0; i < 11; ++i)
    EXPECT_FALSE(b.on_command(200, false)) << "11 of 111 is below 10 %";
  EXPECT_EQ(b.state(), circuit_state::closed);
  EXPECT_EQ(b.window().failures(200), 11u);
  EXPECT_TRUE(b.on_command(200, false)) << "12 of 112 reaches it";
}

TEST(circuit_breaker, ClosedDetectorForgetsFailuresOlderThanTheWindow) {
  circuit_breaker b(test_settings());
  b.on_health_check(0, true);
  b.on_command(0, false);
  b.on_command(100, false);
  EXPECT_FALSE(b.on_command(5000, false)) << "the failures at 0 and 100 expired";
  EXPECT_EQ(b.state(), circuit_state::closed);
  EXPECT_EQ(b.window().failures(5000), 1u);
}

TEST(circuit_breaker, OpenIgnoresFailingChecks) {
  auto b = opened_at(1000);
  EXPECT_FALSE(b.on_health_check(2000, false));
  EXPECT_EQ(b.state(), circuit_state::open);
  EXPECT_EQ(b.since_ms(), 1000);
  EXPECT_EQ(b.opens(), 1u);
}

TEST(circuit_breaker, OpenCheckOkGoesHalfOpenAndStartsGrace) {
  auto b = opened_at(1000);
  EXPECT_TRUE(b.on_health_check(4000, true));
  EXPECT_EQ(b.state(), circuit_state::half_open);
  EXPECT_EQ(b.since_ms(), 4000);
  EXPECT_EQ(b.grace_ends_ms(), 14000) << "grace counts from the recovery";
}

TEST(circuit_breaker, GraceCountsFromRecoveryNotFromTheFailure) {
  // Down for a minute: a grace period counted from the failure would already
  // be over and the first good check would close the circuit.
  auto b = opened_at(0);
  EXPECT_TRUE(b.on_health_check(60000, true));
  EXPECT_FALSE(b.on_health_check(61000, true));
  EXPECT_EQ(b.state(), circuit_state::half_open);
}

TEST(circuit_breaker, PassingCheckBeforeGraceEndsKeepsHalfOpen) {
  auto b = opened_at(0);
  b.on_health_check(1000, true);
  for (int64_t t = 2000; t < 11000; t += 1000) {
    EXPECT_FALSE(b.on_health_check(t, true)) << t;
    EXPECT_EQ(b.state(), circuit_state::half_open) << t;
    EXPECT_EQ(b.grace_ends_ms(), 11000) << "passing checks do not extend the grace";
  }
  EXPECT_FALSE(b.on_health_check(10999, true));
  EXPECT_TRUE(b.on_health_check(11000, true)) << "now - recovered_at == grace closes";
  EXPECT_EQ(b.state(), circuit_state::closed);
  EXPECT_EQ(b.since_ms(), 11000);
  EXPECT_EQ(b.grace_ends_ms(), 0);
}

TEST(circuit_breaker, FailureDuringGraceReopensAndGraceRestartsAtNextRecovery) {
  auto b = opened_at(0);
  b.on_health_check(1000, true);  // grace would end at 11000
  EXPECT_TRUE(b.on_health_check(5000, false));
  EXPECT_EQ(b.state(), circuit_state::open);
  EXPECT_EQ(b.cause(), open_cause::health_check);
  EXPECT_EQ(b.grace_ends_ms(), 0);
  EXPECT_EQ(b.opens(), 2u);
  EXPECT_FALSE(b.on_health_check(6000, false));
  EXPECT_TRUE(b.on_health_check(8000, true));
  EXPECT_EQ(b.grace_ends_ms(), 18000);
  EXPECT_FALSE(b.on_health_check(11000, true)) << "the first grace end no longer counts";
  EXPECT_FALSE(b.on_health_check(17999, true));
  EXPECT_EQ(b.state(), circuit_state::half_open);
  EXPECT_TRUE(b.on_health_check(18000, true));
  EXPECT_EQ(b.state(), circuit_state::closed);
}

TEST(circuit_breaker, HalfOpenDetectorTripsOpen) {
  auto b = opened_at(0);
  b.on_health_check(1000, true);
  EXPECT_FALSE(b.on_command(1100, false));
  EXPECT_FALSE(b.on_command(1200, false));
  EXPECT_TRUE(b.on_command(1300, false));
  EXPECT_EQ(b.state(), circuit_state::open);
  EXPECT_EQ(b.cause(), open_cause::failure_detector);
  EXPECT_EQ(b.opens(), 2u);
}

TEST(circuit_breaker, ZeroGraceStillTakesARecoveryAndAClose) {
  auto s = test_settings();
  s.grace_period = milliseconds(0);
  circuit_breaker b(s);
  b.on_health_check(0, false);
  EXPECT_TRUE(b.on_health_check(1000, true));
  EXPECT_EQ(b.state(), circuit_state::half_open);
  EXPECT_EQ(b.grace_ends_ms(), 1000);
  EXPECT_TRUE(b.on_health_check(1000, true));
  EXPECT_EQ(b.state(), circuit_state::closed);
}

// --- circuit_breaker: the window around opening ------------------------------------

TEST(circuit_breaker, EnteringOpenClearsTheWindow) {
  circuit_breaker b(test_settings());
  b.on_health_check(0, true);
  b.on_command(100, false);
  b.on_command(200, false);
  EXPECT_EQ(b.window().failures(200), 2u);
  b.on_health_check(300, false);  // opens by health check with 2 failures counted
  EXPECT_EQ(b.window().failures(300), 0u);
  EXPECT_EQ(b.window().total(300), 0u);
  // Recovered quickly, inside the old window: the two old failures would
  // re-trip it on the first new failure if they were still counted.
  b.on_health_check(400, true);
  EXPECT_FALSE(b.on_command(500, false));
  EXPECT_EQ(b.state(), circuit_state::half_open);
  b.on_health_check(10400, true);
  EXPECT_EQ(b.state(), circuit_state::closed);
}

TEST(circuit_breaker, DetectorOpenClearsTheWindowToo) {
  circuit_breaker b(test_settings());
  b.on_health_check(0, true);
  for (int i = 0; i < 3; ++i)
    b.on_command(100, false);
  ASSERT_EQ(b.state(), circuit_state::open);
  EXPECT_EQ(b.window().total(100), 0u);
  b.on_health_check(200, true);
  EXPECT_FALSE(b.on_command(300, false)) << "one new failure, not four";
  EXPECT_EQ(b.state(), circuit_state::half_open);
}

TEST(circuit_breaker, CommandsAreIgnoredWhileUnknownOrOpen) {
  circuit_breaker b(test_settings());
  for (int i = 0; i < 10; ++i)
    EXPECT_FALSE(b.on_command(100, false));
  EXPECT_EQ(b.state(), circuit_state::unknown);
  EXPECT_EQ(b.window().total(100), 0u);
  b.on_health_check(200, true);
  EXPECT_EQ(b.state(), circuit_state::closed) << "nothing failed yet";

  b.on_health_check(300, false);
  // Late replies to commands sent before the circuit opened.
  for (int i = 0; i < 10; ++i)
    EXPECT_FALSE(b.on_command(400, false));
  EXPECT_EQ(b.window().total(400), 0u);
  b.on_health_check(500, true);
  EXPECT_FALSE(b.on_command(600, false));
  EXPECT_EQ(b.state(), circuit_state::half_open);
}

TEST(circuit_breaker, CauseIsKeptAfterClosingAndOpensCounts) {
  circuit_breaker b(test_settings());
  b.on_health_check(0, true);
  for (int i = 0; i < 3; ++i)
    b.on_command(10, false);
  b.on_health_check(1000, true);
  b.on_health_check(11000, true);
  EXPECT_EQ(b.state(), circuit_state::closed);
  EXPECT_EQ(b.cause(), open_cause::failure_detector);
  b.on_health_check(12000, false);
  EXPECT_EQ(b.cause(), open_cause::health_check);
  EXPECT_EQ(b.opens(), 2u);
}

// --- circuit_breaker: settings reload ----------------------------------------------

TEST(circuit_breaker, NewGraceAppliesToAHalfOpenCircuitFromItsRecovery) {
  auto b = opened_at(0);
  b.on_health_check(1000, true);
  auto s = test_settings();
  s.grace_period = milliseconds(3000);
  b.set_settings(s);
  EXPECT_EQ(b.state(), circuit_state::half_open);
  EXPECT_EQ(b.grace_ends_ms(), 4000);
  EXPECT_TRUE(b.on_health_check(4000, true));
  EXPECT_EQ(b.settings().grace_period, milliseconds(3000));
}

TEST(circuit_breaker, NewThresholdsKeepCountsNewWindowRestartsThem) {
  circuit_breaker b(test_settings());
  b.on_health_check(0, true);
  b.on_command(100, false);
  b.on_command(200, false);

  auto s = test_settings();
  s.min_failures = 5;
  b.set_settings(s);
  EXPECT_EQ(b.window().failures(200), 2u) << "thresholds alone keep the counts";
  EXPECT_FALSE(b.on_command(300, false));
  EXPECT_EQ(b.state(), circuit_state::closed) << "3 failures, 5 needed now";

  s.window_buckets = 10;
  b.set_settings(s);
  EXPECT_EQ(b.window().buckets(), 10u);
  EXPECT_EQ(b.window().failures(300), 0u) << "a re-cut window starts empty";
  EXPECT_EQ(b.state(), circuit_state::closed);
  EXPECT_EQ(b.since_ms(), 0);

  s.failure_window = milliseconds(20000);
  b.on_command(400, false);
  b.set_settings(s);
  EXPECT_EQ(b.window().window(), milliseconds(20000));
  EXPECT_EQ(b.window().total(400), 0u);
}

// --- backoff -----------------------------------------------------------------------

TEST(circuit_breaker_backoff, DoublesFromMinUpToMax) {
  backoff b(milliseconds(100), milliseconds(1000), 42);
  EXPECT_EQ(b.current(), milliseconds(0));
  std::vector<int64_t> expected{100, 200, 400, 800, 1000, 1000, 1000};
  for (int64_t want : expected) {
    auto delay = b.next();
    EXPECT_EQ(b.current().count(), want);
    EXPECT_GE(delay.count(), want);
    EXPECT_LE(delay.count(), want + want / 4);
  }
}

TEST(circuit_breaker_backoff, JitterStaysWithinAQuarterAndVaries) {
  std::set<int64_t> seen;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    backoff b(milliseconds(1000), milliseconds(8000), seed);
    for (int i = 0; i < 6; ++i) {
      auto delay = b.next().count();
      auto base = b.current().count();
      ASSERT_GE(delay, base);
      ASSERT_LE(delay, base + base / backoff::jitter_divisor);
      if (i == 0)
        seen.insert(delay);
    }
  }
  EXPECT_GT(seen.size(), 100u) << "seeds spread the first retry of a fleet";
}

TEST(circuit_breaker_backoff, SameSeedSameDelays) {
  backoff a(milliseconds(100), milliseconds(10000), 7);
  backoff b(milliseconds(100), milliseconds(10000), 7);
  backoff c(milliseconds(100), milliseconds(10000), 8);
  bool differs = false;
  for (int i = 0; i < 8; ++i) {
    auto da = a.next();
    EXPECT_EQ(da, b.next());
    differs = differs || da != c.next();
  }
  EXPECT_TRUE(differs);
}

TEST(circuit_breaker_backoff, ResetStartsAgainFromMin) {
  backoff b(milliseconds(100), milliseconds(1000), 1);
  b.next();
  b.next();
  b.next();
  EXPECT_EQ(b.current(), milliseconds(400));
  b.reset();
  EXPECT_EQ(b.current(), milliseconds(0));
  b.next();
  EXPECT_EQ(b.current(), milliseconds(100));
}

TEST(circuit_breaker_backoff, ClampsMinAndMax) {
  backoff zero(milliseconds(0), milliseconds(0), 1);
  EXPECT_EQ(zero.min(), milliseconds(1));
  EXPECT_EQ(zero.max(), milliseconds(1));
  zero.next();
  zero.next();
  EXPECT_EQ(zero.current(), milliseconds(1)) << "a zero min would never grow";

  backoff inverted(milliseconds(500), milliseconds(100), 1);
  EXPECT_EQ(inverted.max(), milliseconds(500));
  inverted.next();
  inverted.next();
  EXPECT_EQ(inverted.current(), milliseconds(500));
}

TEST(circuit_breaker_backoff, HugeMaxDoesNotOverflow) {
  auto huge = milliseconds(std::numeric_limits<int64_t>::max() / 2 + 1);
  backoff b(milliseconds(1), huge, 3);
  for (int i = 0; i < 80; ++i) {
    b.next();
    ASSERT_GT(b.current().count(), 0);
    ASSERT_LE(b.current(), huge);
  }
  EXPECT_EQ(b.current(), huge);
}

TEST(circuit_breaker_backoff, DefaultSeedWorks) {
  backoff b(milliseconds(100), milliseconds(1000));
  auto delay = b.next();
  EXPECT_GE(delay.count(), 100);
  EXPECT_LE(delay.count(), 125);
}

// --- jittered --------------------------------------------------------------------

TEST(circuit_breaker_jittered, StaysWithinPlusMinusFraction) {
  auto base = milliseconds(1000);
  EXPECT_EQ(jittered(base, 0.1, 0), milliseconds(900));
  EXPECT_EQ(jittered(base, 0.1, 200), milliseconds(1100));
  EXPECT_EQ(jittered(base, 0.1, 201), milliseconds(900)) << "random wraps around the 201 choices";
  EXPECT_EQ(jittered(base, 0.1, 100), milliseconds(1000));
  uint64_t state = 99;
  std::set<int64_t> seen;
  for (int i = 0; i < 10000; ++i) {
    auto v = jittered(base, 0.1, next_random(state)).count();
    ASSERT_GE(v, 900);
    ASSERT_LE(v, 1100);
    seen.insert(v);
  }
  EXPECT_EQ(seen.size(), 201u) << "every value in the range is reachable";
  EXPECT_LE(jittered(base, 0.1, UINT64_MAX).count(), 1100);
}

TEST(circuit_breaker_jittered, ClampsFractionAndBase) {
  auto base = milliseconds(1000);
  EXPECT_EQ(jittered(base, 0.0, 12345), base);
  EXPECT_EQ(jittered(base, -0.5, 12345), base);
  EXPECT_EQ(jittered(base, std::nan(""), 12345), base);
  EXPECT_EQ(jittered(base, 2.0, 0), milliseconds(0)) << "fraction clamped to 1: never negative";
  EXPECT_EQ(jittered(base, 2.0, 2000), milliseconds(2000));
  EXPECT_EQ(jittered(milliseconds(0), 0.5, 77), milliseconds(0));
  EXPECT_EQ(jittered(milliseconds(-5), 0.5, 77), milliseconds(-5));
  EXPECT_EQ(jittered(milliseconds(3), 0.2, 77), milliseconds(3)) << "0.6 ms of jitter rounds to none";
}
