// tests/event_test.cpp — unit tests for core/event.cpp (design §4).
//
// Spend parsing is checked three ways: hand-picked cases (including the
// 17-significant-digit reprs Python gateways send), an independent string /
// __int128 reference over random decimals, and round trips of known nano-unit
// values through many spellings. Ids are checked against an independent UTF-8
// decoder over every 1..3-byte string. The builder is driven to every error it
// can report, with the field it names.
#include "core/event.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <random>
#include <string>
#include <vector>

// Counts heap allocations so tests can assert that the per-event functions do
// not allocate. Replacing the global operators affects the whole binary; only
// the difference across a block is ever looked at.
namespace {
std::atomic<long> allocation_count{0};
}  // namespace

// noinline: once inlined, GCC 12 pairs the malloc with a `delete` expression
// and warns (-Wmismatched-new-delete) although the pair is matched.
__attribute__((noinline)) void* operator new(std::size_t size) {
  allocation_count.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
__attribute__((noinline)) void operator delete(void* p) noexcept { std::free(p); }
__attribute__((noinline)) void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace tally {
namespace {

using namespace std::literals;

constexpr nano_units nanos_per_unit = 1'000'000'000;
constexpr int64_t ts_limit_ms = int64_t{1} << 53;

// --- helpers ------------------------------------------------------------------

/// Quotes `text` for a failure message, eliding the middle of long inputs.
std::string quoted(std::string_view text) {
  if (text.size() <= 80) return '"' + std::string(text) + '"';
  return '"' + std::string(text.substr(0, 40)) + "...(" + std::to_string(text.size()) +
         " bytes)..." + std::string(text.substr(text.size() - 30)) + '"';
}

/// Parses `text` as spend and expects success with `expected` nano-units.
::testing::AssertionResult spend_is(std::string_view text, nano_units expected) {
  nano_units out = -12345;
  field_error err = parse_spend(text, out);
  if (err)
    return ::testing::AssertionFailure()
           << quoted(text) << " refused with " << to_string(err.code);
  if (out != expected)
    return ::testing::AssertionFailure()
           << quoted(text) << " gave " << out << ", expected " << expected;
  return ::testing::AssertionSuccess();
}

/// Parses `text` as spend and expects `code` about field::spend, `out` untouched.
::testing::AssertionResult spend_refused(std::string_view text, errc code) {
  nano_units out = -12345;
  field_error err = parse_spend(text, out);
  if (err.code != code)
    return ::testing::AssertionFailure() << quoted(text) << " gave " << to_string(err.code)
                                         << ", expected " << to_string(code);
  if (err.about != field::spend)
    return ::testing::AssertionFailure()
           << quoted(text) << " named field " << to_string(err.about);
  if (out != -12345)
    return ::testing::AssertionFailure() << quoted(text) << " wrote " << out << " on error";
  return ::testing::AssertionSuccess();
}

std::string to_decimal(__int128 v) {
  if (v == 0) return "0";
  bool negative = v < 0;
  std::string s;
  while (v != 0) {
    int d = static_cast<int>(v % 10);
    s.insert(s.begin(), static_cast<char>('0' + (negative ? -d : d)));
    v /= 10;
  }
  return negative ? "-" + s : s;
}

/// An event with one entity so that validate() gets past no_entity.
event minimal_event() {
  event ev;
  ev.id(field::key) = "k";
  return ev;
}

// --- names --------------------------------------------------------------------

TEST(EventNames, FieldWireNamesRoundTrip) {
  const char* expected[] = {
    "key", "user", "team", "org", "end_user", "tags", "model", "model_group",
    "provider", "endpoint", "spend", "prompt_tokens", "completion_tokens",
    "cache_read_tokens", "cache_creation_tokens", "status", "ts",
  };
  ASSERT_EQ(sizeof(expected) / sizeof(expected[0]), static_cast<size_t>(field::none));
  for (int i = 0; i < static_cast<int>(field::none); ++i) {
    auto f = static_cast<field>(i);
    EXPECT_STREQ(to_string(f), expected[i]);
    EXPECT_EQ(field_from_name(expected[i]), f) << expected[i];
  }
  EXPECT_STREQ(to_string(field::none), "none");
}

TEST(EventNames, IdFieldsComeFirst) {
  EXPECT_EQ(static_cast<int>(field::endpoint) + 1, id_field_count);
  EXPECT_LT(static_cast<int>(field::tags), id_field_count);
}

TEST(EventNames, UnknownFieldNames) {
  for (std::string_view name : std::initializer_list<std::string_view>{"", "none", "Key", "KEY", "key ", " key", "spend\0"sv,
                                "end-user", "endUser", "cost", "tag", "timestamp",
                                "prompt_token", "k"}) {
    EXPECT_EQ(field_from_name(name), field::none) << '"' << name << '"';
  }
}

TEST(EventNames, ErrcNames) {
  const std::pair<errc, const char*> names[] = {
    {errc::ok, "ok"},
    {errc::unknown_field, "unknown_field"},
    {errc::repeated_field, "repeated_field"},
    {errc::missing_value, "missing_value"},
    {errc::empty_value, "empty_value"},
    {errc::id_too_long, "id_too_long"},
    {errc::bad_id, "bad_id"},
    {errc::bad_number, "bad_number"},
    {errc::negative_value, "negative_value"},
    {errc::overflow, "overflow"},
    {errc::bad_status, "bad_status"},
    {errc::bad_timestamp, "bad_timestamp"},
    {errc::no_entity, "no_entity"},
    {errc::backpressure, "backpressure"},
    {errc::stopped, "stopped"},
    {errc::intern_full, "intern_full"},
  };
  for (auto [code, name] : names) EXPECT_STREQ(to_string(code), name);
  // A value outside the enum still yields a string, never nullptr.
  EXPECT_NE(to_string(static_cast<errc>(200)), nullptr);
}

TEST(EventNames, FieldErrorBoolMeansFailure) {
  EXPECT_FALSE(field_error{});
  EXPECT_TRUE((field_error{errc::bad_id, field::key}));
}

// --- parse_spend: hand-picked cases -------------------------------------------

TEST(ParseSpend, PlainNotation) {
  EXPECT_TRUE(spend_is("0", 0));
  EXPECT_TRUE(spend_is("0.0", 0));
  EXPECT_TRUE(spend_is("+0", 0));
  EXPECT_TRUE(spend_is("0.00042", 420'000));
  EXPECT_TRUE(spend_is("12", 12 * nanos_per_unit));
  EXPECT_TRUE(spend_is("+3", 3 * nanos_per_unit));
  EXPECT_TRUE(spend_is(".5", 500'000'000));
  EXPECT_TRUE(spend_is("5.", 5 * nanos_per_unit));
  EXPECT_TRUE(spend_is("+.5", 500'000'000));
  EXPECT_TRUE(spend_is("0.000000001", 1));
  EXPECT_TRUE(spend_is("1.000000001", nanos_per_unit + 1));
  EXPECT_TRUE(spend_is("123.456789012", 123'456'789'012));
  EXPECT_TRUE(spend_is("000012.500", 12'500'000'000));
  EXPECT_TRUE(spend_is("0000000000000000000000000000001", nanos_per_unit));
  EXPECT_TRUE(spend_is("1.0000000000000000000000000000000", nanos_per_unit));
}

TEST(ParseSpend, ScientificNotation) {
  EXPECT_TRUE(spend_is("1.5e-07", 150));
  EXPECT_TRUE(spend_is("1.5E-07", 150));
  EXPECT_TRUE(spend_is("3E2", 300 * nanos_per_unit));
  EXPECT_TRUE(spend_is("3e+2", 300 * nanos_per_unit));
  EXPECT_TRUE(spend_is("3e+02", 300 * nanos_per_unit));
  EXPECT_TRUE(spend_is("3e0", 3 * nanos_per_unit));
  EXPECT_TRUE(spend_is("3e-0", 3 * nanos_per_unit));
  EXPECT_TRUE(spend_is("1e-9", 1));
  EXPECT_TRUE(spend_is("1e9", 1'000'000'000 * nanos_per_unit));
  EXPECT_TRUE(spend_is("1e0000000000000000000000000009", 1'000'000'000 * nanos_per_unit));
  EXPECT_TRUE(spend_is(".5e1", 5 * nanos_per_unit));
  EXPECT_TRUE(spend_is("5.e-1", 500'000'000));
  EXPECT_TRUE(spend_is("100e-2", nanos_per_unit));
  EXPECT_TRUE(spend_is("0.000000001e9", nanos_per_unit));
  EXPECT_TRUE(spend_is("1000000000000e-21", 1));
  EXPECT_TRUE(spend_is("12345.6789e-4", 1'234'567'890));
  EXPECT_TRUE(spend_is("0e999999999999999999999999", 0));
  EXPECT_TRUE(spend_is("0.000e-999999999999999999999999", 0));
}

TEST(ParseSpend, RoundsHalfToEvenAtTheNinthDecimal) {
  EXPECT_TRUE(spend_is("1e-10", 0));
  EXPECT_TRUE(spend_is("4e-10", 0));
  EXPECT_TRUE(spend_is("5e-10", 0));                  // tie, 0 is even
  EXPECT_TRUE(spend_is("5.000000000000000001e-10", 1));  // just above the tie
  EXPECT_TRUE(spend_is("6e-10", 1));
  EXPECT_TRUE(spend_is("1.5e-9", 2));   // tie, up to even
  EXPECT_TRUE(spend_is("2.5e-9", 2));   // tie, down to even
  EXPECT_TRUE(spend_is("3.5e-9", 4));
  EXPECT_TRUE(spend_is("2.4999999999e-9", 2));
  EXPECT_TRUE(spend_is("2.5000000001e-9", 3));
  EXPECT_TRUE(spend_is("0.0000000025", 2));
  EXPECT_TRUE(spend_is("0.0000000035", 4));
  EXPECT_TRUE(spend_is("0.00000000250000000000000000000", 2));  // trailing zeros keep the tie
  EXPECT_TRUE(spend_is("0.00000000250000000000000000001", 3));
  EXPECT_TRUE(spend_is("0.9999999995", 1'000'000'000));   // tie, 999999999 is odd: carry
  EXPECT_TRUE(spend_is("0.9999999994999", 999'999'999));
  EXPECT_TRUE(spend_is("1.0000000005", 1'000'000'000));   // tie, already even
  EXPECT_TRUE(spend_is("1.0000000015", 1'000'000'002));
  EXPECT_TRUE(spend_is("0.00000000049999999999999999999999", 0));
  EXPECT_TRUE(spend_is("1e-400", 0));
  EXPECT_TRUE(spend_is("9e-11", 0));
  EXPECT_TRUE(spend_is("9.99999e-10", 1));
}

TEST(ParseSpend, PythonFloatReprs) {
  // repr() of doubles as Python gateways (LiteLLM) print them: up to 17
  // significant digits, scientific below 1e-4. The exact decimal text counts,
  // not the double it came from.
  EXPECT_TRUE(spend_is("0.00013499999999999997", 135'000));  // 134999.99999999997 nanos
  EXPECT_TRUE(spend_is("0.30000000000000004", 300'000'000));
  EXPECT_TRUE(spend_is("0.1", 100'000'000));
  EXPECT_TRUE(spend_is("0.2", 200'000'000));
  EXPECT_TRUE(spend_is("1.5e-07", 150));
  EXPECT_TRUE(spend_is("1e-05", 10'000));
  EXPECT_TRUE(spend_is("2.9999999999999997e-06", 3'000));
  EXPECT_TRUE(spend_is("1.2345678901234567e-05", 12'346));
  EXPECT_TRUE(spend_is("3.0000000000000004e-05", 30'000));
  EXPECT_TRUE(spend_is("7.500000000000001e-07", 750));
  EXPECT_TRUE(spend_is("2.5e-10", 0));
  EXPECT_TRUE(spend_is("123456789.12345679", 123'456'789'123'456'790));
  EXPECT_TRUE(spend_is("0.0001", 100'000));
  EXPECT_TRUE(spend_is("5e-324", 0));  // smallest subnormal
  EXPECT_TRUE(spend_is("2.2250738585072014e-308", 0));
  EXPECT_TRUE(spend_refused("1.7976931348623157e+308", errc::overflow));
}

TEST(ParseSpend, UpperLimit) {
  EXPECT_TRUE(spend_is("9000000000", max_event_spend));
  EXPECT_TRUE(spend_is("9e9", max_event_spend));
  EXPECT_TRUE(spend_is("9000000000.000000000", max_event_spend));
  EXPECT_TRUE(spend_is("8999999999.999999999", max_event_spend - 1));
  EXPECT_TRUE(spend_is("8999999999.9999999995", max_event_spend));  // tie rounds up to even
  EXPECT_TRUE(spend_is("9000000000.0000000005", max_event_spend));  // tie rounds down to even
  EXPECT_TRUE(spend_is("9000000000.0000000004999", max_event_spend));
  EXPECT_TRUE(spend_is("0.000000000000000000009e30", max_event_spend));
  EXPECT_TRUE(spend_refused("9000000000.000000001", errc::overflow));
  EXPECT_TRUE(spend_refused("9000000000.00000000050001", errc::overflow));
  EXPECT_TRUE(spend_refused("9000000000.0000000015", errc::overflow));
  EXPECT_TRUE(spend_refused("9223372036.854775807", errc::overflow));  // int64 max nanos
  EXPECT_TRUE(spend_refused("9223372036.854775808", errc::overflow));
  EXPECT_TRUE(spend_refused("18446744073.709551615", errc::overflow));  // uint64 max nanos
  EXPECT_TRUE(spend_refused("9999999999.9999999995", errc::overflow));  // rounds to 1e19
  EXPECT_TRUE(spend_refused("99999999999.9999999999", errc::overflow));
  EXPECT_TRUE(spend_refused("1e10", errc::overflow));
  EXPECT_TRUE(spend_refused("1e400", errc::overflow));
  EXPECT_TRUE(spend_refused("1e99999999999999999999999999999", errc::overflow));
  EXPECT_TRUE(spend_refused("99999999999999999999999999999999999999999", errc::overflow));
}

TEST(ParseSpend, HugeInputsDoNotOverflowIntermediates) {
  const std::string zeros(100'000, '0');
  EXPECT_TRUE(spend_is(zeros + "1", nanos_per_unit));
  EXPECT_TRUE(spend_is(zeros + "1." + zeros, nanos_per_unit));
  EXPECT_TRUE(spend_is("0." + zeros + "1", 0));
  EXPECT_TRUE(spend_is("0.000000000" + "5"s + zeros, 0));        // tie at 0: stays 0
  EXPECT_TRUE(spend_is("0.000000000" + "5"s + zeros + "1", 1));  // sticky digit far out
  EXPECT_TRUE(spend_is("0.00000000" + "15"s + zeros, 2));        // tie at 1: up to 2
  EXPECT_TRUE(spend_is("0.00000000" + "25"s + zeros, 2));        // tie at 2: stays 2
  EXPECT_TRUE(spend_is("1" + zeros + "e-100000", nanos_per_unit));
  EXPECT_TRUE(spend_is("0." + zeros + "1e100001", nanos_per_unit));
  EXPECT_TRUE(spend_refused("1" + zeros, errc::overflow));
  EXPECT_TRUE(spend_refused(std::string(100'000, '9'), errc::overflow));
  EXPECT_TRUE(spend_refused(std::string(100'000, '9') + "e-99990", errc::overflow));
  EXPECT_TRUE(spend_is(std::string(100'000, '9') + "e-100009", 1));  // 0.999..e-9 rounds up
  EXPECT_TRUE(spend_is(std::string(100'000, '9') + "e-100010", 0));  // 0.999..e-10 rounds down
  EXPECT_TRUE(spend_refused("1e" + std::string(1000, '9'), errc::overflow));
  EXPECT_TRUE(spend_is("1e-" + std::string(1000, '9'), 0));
  EXPECT_TRUE(spend_is("1e-" + zeros + "1", nanos_per_unit / 10));  // exponent -1 with many zeros
  EXPECT_TRUE(spend_is("0e" + std::string(1000, '9'), 0));
}

TEST(ParseSpend, RefusesEmpty) {
  EXPECT_TRUE(spend_refused("", errc::empty_value));
}

TEST(ParseSpend, RefusesNegative) {
  // Any leading '-' on a well-formed number is negative_value, "-0" included:
  // the contract allows no sign but '+'.
  for (std::string_view text : std::initializer_list<std::string_view>{"-1", "-0", "-0.0", "-.5", "-1e-20", "-1.5e-07", "-1e400"})
    EXPECT_TRUE(spend_refused(text, errc::negative_value)) << text;
}

TEST(ParseSpend, RefusesGarbage) {
  for (std::string_view text :
       std::initializer_list<std::string_view>{"nan", "NaN", "-nan", "inf", "-inf", "+inf", "Infinity", "infinity", "1.2.3", "1e", "1E",
        "1e+", "1e-", "e5", "E5", ".e5", ".", "+", "-", "+-1", "-+1", "++1", "--1", " 1", "1 ",
        " ", "\t1", "1\n", "0x10", "0X10", "0b1", "1,5", "1_000", "1'000", "1e5.5", "1e5e5",
        "1.5e-0.7", "1..5", "..5", "5..", "1e 5", "1 e5", "١", "１", "1\0"sv, "\0"sv, "0.1f",
        "1d", "$1", "1€", "e", "1e--5", "1e++5", "+.", "-.", ".+5", "5-", "5+"})
    EXPECT_TRUE(spend_refused(text, errc::bad_number)) << '"' << text << '"';
}

TEST(ParseSpend, MillionAdditionsOfOneTenthAreExact) {
  // The classic float failure: 0.1 added a million times. In nano-units the
  // sum is exact.
  nano_units total = 0;
  for (int i = 0; i < 1'000'000; ++i) {
    nano_units one = 0;
    ASSERT_FALSE(parse_spend("0.1", one));
    total += one;
  }
  EXPECT_EQ(total, 100'000 * nanos_per_unit);
}

// --- parse_spend: independent reference over random decimals -------------------

/// What the reference expects for one input.
struct reference_result {
  errc code = errc::ok;
  nano_units nanos = 0;
};

/// Reference for well-formed, non-negative decimals: rewrites the value as an
/// integer digit string times 10^-scale, moves the point by string slicing,
/// rounds by comparing the cut-off digits with "5000...", and converts with
/// __int128. It shares no code or structure with core/event.cpp.
reference_result reference_spend(const std::string& mantissa_int, const std::string& mantissa_frac,
                                 long exponent) {
  std::string digits = mantissa_int + mantissa_frac;
  // value = digits * 10^(exponent - frac_len); nanos = digits * 10^shift
  long shift = exponent - static_cast<long>(mantissa_frac.size()) + 9;
  std::string whole, rest;
  if (shift >= 0) {
    whole = digits + std::string(static_cast<size_t>(shift), '0');
  } else {
    auto drop = static_cast<size_t>(-shift);
    if (drop >= digits.size()) {
      rest = std::string(drop - digits.size(), '0') + digits;
    } else {
      whole = digits.substr(0, digits.size() - drop);
      rest = digits.substr(digits.size() - drop);
    }
  }
  size_t nonzero = whole.find_first_not_of('0');
  whole = nonzero == std::string::npos ? "" : whole.substr(nonzero);
  if (whole.size() > 30) return {errc::overflow, 0};
  __int128 value = 0;
  for (char c : whole) value = value * 10 + (c - '0');
  if (!rest.empty()) {
    std::string half = "5" + std::string(rest.size() - 1, '0');
    int cmp = rest.compare(half);
    if (cmp > 0 || (cmp == 0 && value % 2 == 1)) value += 1;
  }
  if (value > max_event_spend) return {errc::overflow, 0};
  return {errc::ok, static_cast<nano_units>(value)};
}

TEST(ParseSpendProperty, MatchesIndependentReference) {
  std::mt19937_64 rng(20240611);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  auto random_digits = [&](int n) {
    std::string s;
    for (int i = 0; i < n; ++i) {
      // Bias toward 0, 4, 5, 9 so that ties, near-ties and carries are common.
      static const char pool[] = "0123456789000455599";
      s.push_back(pool[pick(0, sizeof(pool) - 2)]);
    }
    return s;
  };
  int ties = 0, overflows = 0, zeros = 0;
  for (int iteration = 0; iteration < 5000; ++iteration) {
    std::string int_part = random_digits(pick(0, 22));
    std::string frac_part = random_digits(pick(0, 25));
    bool has_point = !frac_part.empty() || pick(0, 3) == 0;
    if (int_part.empty() && frac_part.empty()) int_part = "0";
    if (pick(0, 4) == 0) int_part = std::string(pick(1, 5), '0') + int_part;
    long exponent = 0;
    std::string exponent_text;
    if (pick(0, 2) != 0) {
      exponent = pick(-40, 30);
      exponent_text = pick(0, 1) ? "e" : "E";
      if (exponent < 0) exponent_text += '-';
      else if (pick(0, 1)) exponent_text += '+';
      exponent_text += std::string(pick(0, 2), '0') + std::to_string(exponent < 0 ? -exponent : exponent);
    }
    // Every fifth input is forced onto an exact tie: 5 at the tenth decimal
    // of the value in nano-units and nothing non-zero after it.
    if (iteration % 5 == 0) {
      frac_part = random_digits(pick(0, 12));
      int_part = random_digits(pick(1, 10));
      has_point = true;
      exponent = pick(-15, 5);
      exponent_text = "e" + std::to_string(exponent);
      // Position (in frac digits after applying the exponent) of the tenth
      // decimal: frac index 9 + exponent.
      long tie_at = 9 + exponent;
      if (tie_at >= 0) {
        if (static_cast<long>(frac_part.size()) <= tie_at)
          frac_part += std::string(static_cast<size_t>(tie_at) - frac_part.size() + 1, '0');
        frac_part[static_cast<size_t>(tie_at)] = '5';
        frac_part.resize(static_cast<size_t>(tie_at) + 1 + pick(0, 3), '0');
        std::fill(frac_part.begin() + tie_at + 1, frac_part.end(), '0');
      }
    }
    std::string text = (pick(0, 9) == 0 ? "+" : "") + int_part + (has_point ? "." : "") +
                       frac_part + exponent_text;
    reference_result want = reference_spend(int_part, frac_part, exponent);

    nano_units got = -1;
    field_error err = parse_spend(text, got);
    ASSERT_EQ(err.code, want.code) << text;
    if (want.code == errc::ok) {
      ASSERT_EQ(got, want.nanos) << text;
      if (got == 0) ++zeros;
    } else {
      ++overflows;
    }
    if (iteration % 5 == 0) ++ties;
  }
  // The generator must actually reach every region it is meant to cover.
  EXPECT_GT(overflows, 100);
  EXPECT_GT(zeros, 100);
  EXPECT_GT(ties, 500);
}

TEST(ParseSpendProperty, KnownValuesRoundTripThroughManySpellings) {
  // Write a known nano-unit value as "<units>.<9 digits>", then move the point
  // by a random exponent and pad with zeros: every spelling must parse back to
  // the same integer.
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int64_t> any_spend(0, max_event_spend);
  std::uniform_int_distribution<int64_t> small_spend(0, 10'000'000'000LL);
  for (int iteration = 0; iteration < 3000; ++iteration) {
    int64_t nanos = iteration % 2 ? any_spend(rng) : small_spend(rng);
    const int64_t edges[] = {0, 1, max_event_spend, max_event_spend - 1};
    if (iteration < 4) nanos = edges[iteration];
    std::string digits = std::to_string(nanos);
    if (digits.size() < 10) digits.insert(0, 10 - digits.size(), '0');
    // digits * 10^-9; put the point `point` digits from the left and adjust
    // the exponent to match.
    long frac_len = static_cast<long>(std::uniform_int_distribution<int>(0, 25)(rng));
    std::string padded = std::string(static_cast<size_t>(std::uniform_int_distribution<int>(0, 3)(rng)), '0') +
                         digits + std::string(static_cast<size_t>(frac_len), '0');
    // value = padded * 10^(-9 - frac_len). Choose how many digits go after the
    // point; the rest of the scale goes into the exponent.
    long after_point = std::uniform_int_distribution<long>(0, static_cast<long>(padded.size()))(rng);
    long exponent = -9 - frac_len + after_point;
    std::string text = padded.substr(0, padded.size() - static_cast<size_t>(after_point));
    if (after_point > 0) text += "." + padded.substr(padded.size() - static_cast<size_t>(after_point));
    if (text.empty() || text[0] == '.') text.insert(0, "0");
    if (exponent != 0 || iteration % 3 == 0) text += "e" + std::to_string(exponent);
    ASSERT_TRUE(spend_is(text, nanos)) << text;
  }
}

TEST(ParseSpendProperty, ExactTiesGoToEven) {
  // n + 0.5 nano-units in several spellings rounds to the even neighbour.
  std::mt19937_64 rng(99);
  std::uniform_int_distribution<int64_t> any(0, max_event_spend - 1);
  for (int iteration = 0; iteration < 2000; ++iteration) {
    int64_t n = iteration < 2 ? iteration : any(rng);
    int64_t expected = n % 2 == 0 ? n : n + 1;
    __int128 tenths = static_cast<__int128>(n) * 10 + 5;  // value * 1e10
    std::string digits = to_decimal(tenths);
    // digits * 1e-10
    std::string sci = digits + "e-10";
    std::string plain = digits.size() > 10
                            ? digits.substr(0, digits.size() - 10) + "." + digits.substr(digits.size() - 10)
                            : "0." + std::string(10 - digits.size(), '0') + digits;
    std::string padded = plain + std::string(static_cast<size_t>(iteration % 7), '0');
    if (expected > max_event_spend) {
      EXPECT_TRUE(spend_refused(sci, errc::overflow)) << sci;
      continue;
    }
    EXPECT_TRUE(spend_is(sci, expected));
    EXPECT_TRUE(spend_is(plain, expected));
    EXPECT_TRUE(spend_is(padded, expected));
    // Just above the tie always rounds up, just below always down.
    if (n + 1 <= max_event_spend) {
      EXPECT_TRUE(spend_is(padded + "1", n + 1));
    }
    std::string below = to_decimal(tenths * 10 - 1) + "e-11";
    EXPECT_TRUE(spend_is(below, n));
  }
}

// --- parse_count --------------------------------------------------------------

::testing::AssertionResult count_is(std::string_view text, int64_t expected) {
  int64_t out = -7;
  field_error err = parse_count(text, out);
  if (err)
    return ::testing::AssertionFailure() << quoted(text) << " refused with " << to_string(err.code);
  if (out != expected)
    return ::testing::AssertionFailure() << quoted(text) << " gave " << out;
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult count_refused(std::string_view text, errc code) {
  int64_t out = -7;
  field_error err = parse_count(text, out);
  if (err.code != code)
    return ::testing::AssertionFailure() << quoted(text) << " gave " << to_string(err.code)
                                         << ", expected " << to_string(code);
  if (err.about != field::none)
    return ::testing::AssertionFailure() << "parse_count named field " << to_string(err.about);
  if (out != -7) return ::testing::AssertionFailure() << "wrote " << out << " on error";
  return ::testing::AssertionSuccess();
}

TEST(ParseCount, Accepts) {
  EXPECT_TRUE(count_is("0", 0));
  EXPECT_TRUE(count_is("+0", 0));
  EXPECT_TRUE(count_is("7", 7));
  EXPECT_TRUE(count_is("+7", 7));
  EXPECT_TRUE(count_is("000123", 123));
  EXPECT_TRUE(count_is("1234567", 1'234'567));
  EXPECT_TRUE(count_is("1000000000000", max_event_tokens));
  EXPECT_TRUE(count_is(std::string(10'000, '0') + "42", 42));
}

TEST(ParseCount, Refuses) {
  EXPECT_TRUE(count_refused("", errc::empty_value));
  EXPECT_TRUE(count_refused("-1", errc::negative_value));
  EXPECT_TRUE(count_refused("-0", errc::negative_value));
  EXPECT_TRUE(count_refused("1000000000001", errc::overflow));
  EXPECT_TRUE(count_refused("9223372036854775807", errc::overflow));
  EXPECT_TRUE(count_refused("9223372036854775808", errc::overflow));
  EXPECT_TRUE(count_refused("99999999999999999999999999999999", errc::overflow));
  EXPECT_TRUE(count_refused(std::string(10'000, '9'), errc::overflow));
  for (std::string_view text : std::initializer_list<std::string_view>{"+", "-", "1.0", "1.", ".1", "1e3", "1E3", " 1", "1 ", "0x1",
                                "1,000", "nan", "inf", "abc", "1a", "a1", "++1", "+-1", "１",
                                "1\0"sv, "-x", "-1.5"})
    EXPECT_TRUE(count_refused(text, errc::bad_number)) << '"' << text << '"';
}

// --- check_id -----------------------------------------------------------------

/// Independent UTF-8 reference: decodes by the generic bit pattern, then
/// rejects what the standard forbids (overlong forms, surrogates, > U+10FFFF)
/// and the Cc control characters (C0, DEL, C1).
bool reference_clean_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    auto b = static_cast<unsigned char>(s[i]);
    int extra;
    uint32_t cp;
    if (b < 0x80) { extra = 0; cp = b; }
    else if ((b >> 5) == 0x6) { extra = 1; cp = b & 0x1F; }
    else if ((b >> 4) == 0xE) { extra = 2; cp = b & 0x0F; }
    else if ((b >> 3) == 0x1E) { extra = 3; cp = b & 0x07; }
    else return false;
    if (i + static_cast<size_t>(extra) >= s.size()) return false;  // truncated
    for (int k = 1; k <= extra; ++k) {
      auto c = static_cast<unsigned char>(s[i + k]);
      if ((c >> 6) != 0x2) return false;
      cp = (cp << 6) | (c & 0x3F);
    }
    static const uint32_t min_for_length[] = {0, 0x80, 0x800, 0x10000};
    if (cp < min_for_length[extra]) return false;
    if (cp >= 0xD800 && cp <= 0xDFFF) return false;
    if (cp > 0x10FFFF) return false;
    if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F)) return false;
    i += static_cast<size_t>(extra) + 1;
  }
  return true;
}

TEST(CheckId, LengthBounds) {
  EXPECT_EQ(check_id(""), errc::empty_value);
  EXPECT_EQ(check_id("a"), errc::ok);
  EXPECT_EQ(check_id(std::string(256, 'a')), errc::ok);
  EXPECT_EQ(check_id(std::string(257, 'a')), errc::id_too_long);
  EXPECT_EQ(check_id(std::string(100'000, 'a')), errc::id_too_long);
  EXPECT_EQ(check_id(std::string(257, '\x01')), errc::id_too_long);  // length is judged first
  // 256 bytes of 2-byte characters are fine, one more byte is not.
  std::string two_byte;
  for (int i = 0; i < 128; ++i) two_byte += "\xC3\xA9";
  EXPECT_EQ(check_id(two_byte), errc::ok);
  EXPECT_EQ(check_id(two_byte + "a"), errc::id_too_long);
}

TEST(CheckId, AcceptsPrintableUtf8) {
  for (std::string_view id :
       std::initializer_list<std::string_view>{"sk-abc123", "user@example.com", "gpt-4o-mini", "team a,b", " spaced ", "~!@#$%^&*()",
        "\xC3\xA9" /* é */, "\xC2\xA0" /* U+00A0, first after C1 */, "\xE2\x82\xAC" /* € */,
        "\xED\x9F\xBF" /* U+D7FF */, "\xEE\x80\x80" /* U+E000 */, "\xEF\xBF\xBD" /* U+FFFD */,
        "\xF0\x9D\x84\x9E" /* 𝄞 */, "\xF0\x90\x80\x80" /* U+10000 */,
        "\xF4\x8F\xBF\xBF" /* U+10FFFF */, "\xE6\x97\xA5\xE6\x9C\xAC" /* 日本 */})
    EXPECT_EQ(check_id(id), errc::ok) << id;
}

TEST(CheckId, RefusesControlsAndBadUtf8) {
  for (std::string_view id :
       std::initializer_list<std::string_view>{"\0"sv, "a\0b"sv, "\x01", "a\tb", "a\nb", "\r", "\x1F", "\x7F", "a\x7F",
        "\xC2\x80" /* U+0080 */, "\xC2\x85" /* NEL */, "\xC2\x9F" /* U+009F */,
        "\xC0\xAF", "\xC1\xBF", "\xE0\x80\xAF", "\xE0\x9F\xBF", "\xF0\x80\x80\xAF",
        "\xF0\x8F\xBF\xBF" /* overlongs */, "\xED\xA0\x80", "\xED\xBF\xBF" /* surrogates */,
        "\xF4\x90\x80\x80", "\xF5\x80\x80\x80", "\xF7\xBF\xBF\xBF" /* > U+10FFFF */,
        "\xF8\x88\x80\x80\x80", "\xFE", "\xFF", "\x80", "\xBF", "a\x80",
        "\xC3", "\xE2\x82", "\xF0\x9D\x84", "a\xC3" /* truncated */, "\xC3\x28",
        "\xE2\x28\xA1", "\xE2\x82\x28", "\xF0\x9D\x28\x9E", "\xF0\x9D\x84\x28",
        "\xC3\xA9\xA9" /* extra continuation */})
    EXPECT_EQ(check_id(id), errc::bad_id) << testing::PrintToString(std::string(id));
}

TEST(CheckId, TruncatedSequenceIsJudgedByTheViewNotTheBuffer) {
  // The bytes after the view would complete the character; they must not be read.
  const std::string_view whole[] = {"\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9D\x84\x9E"};
  for (std::string_view c : whole) {
    EXPECT_EQ(check_id(c), errc::ok);
    for (size_t len = 1; len < c.size(); ++len)
      EXPECT_EQ(check_id(c.substr(0, len)), errc::bad_id) << len << " of " << c.size();
  }
  // Also inside tags, where each tag is a view into the middle of the list.
  event ev;
  ev.id(field::tags) = std::string_view("a,\xE2\x82\xAC", 4);
  EXPECT_EQ(validate(ev).code, errc::bad_id);
}

TEST(CheckId, MatchesReferenceOnEveryShortString) {
  // Every string of one, two and three bytes: 16.8M inputs.
  std::string s;
  for (int len = 1; len <= 3; ++len) {
    s.assign(static_cast<size_t>(len), '\0');
    const uint32_t total = 1u << (8 * len);
    for (uint32_t v = 0; v < total; ++v) {
      for (int k = 0; k < len; ++k) s[static_cast<size_t>(k)] = static_cast<char>(v >> (8 * k));
      bool want = reference_clean_utf8(s);
      if ((check_id(s) == errc::ok) != want) {
        ADD_FAILURE() << "mismatch on " << testing::PrintToString(s) << ", reference says " << want;
        return;
      }
    }
  }
}

TEST(CheckId, MatchesReferenceOnRandomFourByteAndLongerStrings) {
  std::mt19937 rng(4);
  // Bytes drawn mostly from the interesting ranges (leads, continuations,
  // boundaries) so that valid 4-byte forms are common.
  static const unsigned char interesting[] = {
    0x00, 0x1F, 0x20, 0x41, 0x7E, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2,
    0xC3, 0xDF, 0xE0, 0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF};
  std::uniform_int_distribution<int> pick_interesting(0, sizeof(interesting) - 1);
  std::uniform_int_distribution<int> any_byte(0, 255);
  std::uniform_int_distribution<int> length(4, 12);
  for (int iteration = 0; iteration < 2'000'000; ++iteration) {
    std::string s(static_cast<size_t>(length(rng)), '\0');
    for (char& c : s)
      c = static_cast<char>(rng() % 3 ? interesting[pick_interesting(rng)] : any_byte(rng));
    if ((check_id(s) == errc::ok) != reference_clean_utf8(s)) {
      ADD_FAILURE() << "mismatch on " << testing::PrintToString(s);
      return;
    }
  }
}

// --- validate -----------------------------------------------------------------

TEST(Validate, MinimalEventsPass) {
  for (field f : {field::key, field::user, field::team, field::org, field::end_user,
                  field::tags, field::model}) {
    event ev;
    ev.id(f) = "x";
    EXPECT_FALSE(validate(ev)) << to_string(f);
  }
}

TEST(Validate, NoEntity) {
  event ev;
  EXPECT_EQ(validate(ev).code, errc::no_entity);
  EXPECT_EQ(validate(ev).about, field::none);
  // Dimensions alone do not name anyone to bill.
  ev.id(field::model_group) = "g";
  ev.id(field::provider) = "p";
  ev.id(field::endpoint) = "/v1/chat";
  ev.spend = 5;
  ev.prompt_tokens = 3;
  EXPECT_EQ(validate(ev).code, errc::no_entity);
  EXPECT_EQ(validate(ev).about, field::none);
}

TEST(Validate, EveryIdFieldIsChecked) {
  for (int i = 0; i < id_field_count; ++i) {
    auto f = static_cast<field>(i);
    event ev = minimal_event();
    ev.id(f) = "bad\x01";
    field_error err = validate(ev);
    EXPECT_EQ(err.code, errc::bad_id) << to_string(f);
    EXPECT_EQ(err.about, f);

    std::string long_id(257, 'x');
    ev.id(f) = long_id;
    err = validate(ev);
    EXPECT_EQ(err.code, errc::id_too_long) << to_string(f);
    EXPECT_EQ(err.about, f);
  }
}

TEST(Validate, ReportsTheFirstBadIdInFieldOrder) {
  event ev;
  ev.id(field::org) = "\xFF";
  ev.id(field::model) = std::string_view("\x01");
  ev.id(field::user) = "ok";
  field_error err = validate(ev);
  EXPECT_EQ(err.code, errc::bad_id);
  EXPECT_EQ(err.about, field::org);
}

TEST(Validate, Tags) {
  auto tags_error = [](std::string_view tags) {
    event ev;
    ev.id(field::tags) = tags;
    return validate(ev);
  };
  EXPECT_FALSE(tags_error("a"));
  EXPECT_FALSE(tags_error("prod,team-x,\xC3\xA9t\xC3\xA9"));
  EXPECT_FALSE(tags_error("a b,c d"));
  for (std::string_view bad : std::initializer_list<std::string_view>{",", "a,", ",a", "a,,b", ",,", "a,b,"}) {
    field_error err = tags_error(bad);
    EXPECT_EQ(err.code, errc::empty_value) << bad;
    EXPECT_EQ(err.about, field::tags) << bad;
  }
  field_error err = tags_error("a,b\x7F,c");
  EXPECT_EQ(err.code, errc::bad_id);
  EXPECT_EQ(err.about, field::tags);
  // A multi-byte character split by a comma is invalid on both sides.
  EXPECT_EQ(tags_error("\xE2\x82,\xAC").code, errc::bad_id);

  std::string tag256(256, 't');
  EXPECT_FALSE(tags_error(tag256 + "," + tag256));
  err = tags_error("a," + tag256 + "t");
  EXPECT_EQ(err.code, errc::id_too_long);
  EXPECT_EQ(err.about, field::tags);

  std::string tags64;
  for (size_t i = 0; i < max_tags; ++i) tags64 += (i ? ",tag-" : "tag-") + std::to_string(i);
  EXPECT_FALSE(tags_error(tags64));
  err = tags_error(tags64 + ",one_more");
  EXPECT_EQ(err.code, errc::id_too_long);
  EXPECT_EQ(err.about, field::tags);
  // The whole list may exceed 256 bytes; only each tag is bounded.
  EXPECT_GT(tags64.size(), max_id_bytes);
}

TEST(Validate, Measures) {
  struct case_t {
    field f;
    int64_t event::*member;
    int64_t limit;
  };
  const case_t cases[] = {
    {field::spend, &event::spend, max_event_spend},
    {field::prompt_tokens, &event::prompt_tokens, max_event_tokens},
    {field::completion_tokens, &event::completion_tokens, max_event_tokens},
    {field::cache_read_tokens, &event::cache_read_tokens, max_event_tokens},
    {field::cache_creation_tokens, &event::cache_creation_tokens, max_event_tokens},
  };
  for (const auto& c : cases) {
    event ev = minimal_event();
    ev.*c.member = 0;
    EXPECT_FALSE(validate(ev));
    ev.*c.member = c.limit;
    EXPECT_FALSE(validate(ev)) << to_string(c.f);
    ev.*c.member = c.limit + 1;
    EXPECT_EQ(validate(ev).code, errc::overflow) << to_string(c.f);
    EXPECT_EQ(validate(ev).about, c.f);
    ev.*c.member = INT64_MAX;
    EXPECT_EQ(validate(ev).code, errc::overflow) << to_string(c.f);
    ev.*c.member = -1;
    EXPECT_EQ(validate(ev).code, errc::negative_value) << to_string(c.f);
    EXPECT_EQ(validate(ev).about, c.f);
    ev.*c.member = INT64_MIN;
    EXPECT_EQ(validate(ev).code, errc::negative_value) << to_string(c.f);
  }
}

TEST(Validate, Timestamp) {
  event ev = minimal_event();
  for (int64_t ts : {int64_t{0}, int64_t{1}, int64_t{1'718'000'000'000}, ts_limit_ms - 1}) {
    ev.ts_ms = ts;
    EXPECT_FALSE(validate(ev)) << ts;
  }
  for (int64_t ts : {int64_t{-1}, INT64_MIN, ts_limit_ms, INT64_MAX}) {
    ev.ts_ms = ts;
    EXPECT_EQ(validate(ev).code, errc::bad_timestamp) << ts;
    EXPECT_EQ(validate(ev).about, field::ts);
  }
}

TEST(Validate, StatusIsFree) {
  event ev = minimal_event();
  ev.ok = false;
  EXPECT_FALSE(validate(ev));
}

// --- event_builder ------------------------------------------------------------

/// Feeds pairs to a fresh builder and returns the first error (set or finish).
field_error build(std::initializer_list<std::pair<std::string_view, std::string_view>> pairs,
                  event* out = nullptr) {
  event_builder b;
  for (auto [name, value] : pairs)
    if (field_error err = b.set(name, value)) return err;
  event ev;
  field_error err = b.finish(ev);
  if (out && !err) *out = ev;
  return err;
}

void expect_error(field_error err, errc code, field about) {
  EXPECT_EQ(err.code, code) << to_string(err.code) << " about " << to_string(err.about);
  EXPECT_EQ(err.about, about) << to_string(err.code) << " about " << to_string(err.about);
}

TEST(EventBuilder, BuildsAFullEvent) {
  event ev;
  ASSERT_FALSE(build({{"key", "sk-1"},
                      {"user", "u"},
                      {"team", "t"},
                      {"org", "o"},
                      {"end_user", "eu"},
                      {"tags", "a,b"},
                      {"model", "gpt-4o"},
                      {"model_group", "gpt"},
                      {"provider", "openai"},
                      {"endpoint", "/v1/chat/completions"},
                      {"spend", "1.5e-07"},
                      {"prompt_tokens", "10"},
                      {"completion_tokens", "+20"},
                      {"cache_read_tokens", "3"},
                      {"cache_creation_tokens", "0"},
                      {"status", "error"},
                      {"ts", "1718000000000"}},
                     &ev));
  EXPECT_EQ(ev.id(field::key), "sk-1");
  EXPECT_EQ(ev.id(field::user), "u");
  EXPECT_EQ(ev.id(field::team), "t");
  EXPECT_EQ(ev.id(field::org), "o");
  EXPECT_EQ(ev.id(field::end_user), "eu");
  EXPECT_EQ(ev.id(field::tags), "a,b");
  EXPECT_EQ(ev.id(field::model), "gpt-4o");
  EXPECT_EQ(ev.id(field::model_group), "gpt");
  EXPECT_EQ(ev.id(field::provider), "openai");
  EXPECT_EQ(ev.id(field::endpoint), "/v1/chat/completions");
  EXPECT_EQ(ev.spend, 150);
  EXPECT_EQ(ev.prompt_tokens, 10);
  EXPECT_EQ(ev.completion_tokens, 20);
  EXPECT_EQ(ev.cache_read_tokens, 3);
  EXPECT_EQ(ev.cache_creation_tokens, 0);
  EXPECT_FALSE(ev.ok);
  EXPECT_EQ(ev.ts_ms, 1'718'000'000'000);
}

TEST(EventBuilder, DefaultsAndViews) {
  std::string user = "alice";
  event ev;
  ASSERT_FALSE(build({{"user", user}}, &ev));
  EXPECT_EQ(ev.id(field::user).data(), user.data());  // a view, not a copy
  EXPECT_TRUE(ev.ok);
  EXPECT_EQ(ev.ts_ms, 0);
  EXPECT_EQ(ev.spend, 0);
  EXPECT_EQ(ev.prompt_tokens, 0);
  for (int i = 0; i < id_field_count; ++i)
    if (static_cast<field>(i) != field::user) {
      EXPECT_TRUE(ev.ids[i].empty()) << to_string(static_cast<field>(i));
    }
  ASSERT_FALSE(build({{"key", "k"}, {"status", "ok"}, {"ts", "0"}}, &ev));
  EXPECT_TRUE(ev.ok);
  EXPECT_EQ(ev.ts_ms, 0);
}

TEST(EventBuilder, ResetStartsOver) {
  event_builder b;
  ASSERT_FALSE(b.set("key", "a"));
  expect_error(b.set("key", "b"), errc::repeated_field, field::key);
  b.reset();
  ASSERT_FALSE(b.set("key", "b"));
  ASSERT_FALSE(b.set("spend", "1"));
  event ev;
  ASSERT_FALSE(b.finish(ev));
  EXPECT_EQ(ev.id(field::key), "b");
  EXPECT_EQ(ev.spend, nanos_per_unit);
  b.reset();
  expect_error(b.finish(ev), errc::no_entity, field::none);
}

TEST(EventBuilder, UnknownField) {
  expect_error(build({{"cost", "1"}}), errc::unknown_field, field::none);
  expect_error(build({{"Key", "a"}}), errc::unknown_field, field::none);
  expect_error(build({{"none", "a"}}), errc::unknown_field, field::none);
  expect_error(build({{"", "a"}}), errc::unknown_field, field::none);
}

TEST(EventBuilder, RepeatedField) {
  for (int i = 0; i < static_cast<int>(field::none); ++i) {
    auto f = static_cast<field>(i);
    event_builder b;
    std::string_view value = f == field::status ? "ok" : "1";
    ASSERT_FALSE(b.set(to_string(f), value)) << to_string(f);
    expect_error(b.set(to_string(f), value), errc::repeated_field, f);
  }
  // A refused first value still counts as seen.
  event_builder b;
  expect_error(b.set("spend", "x"), errc::bad_number, field::spend);
  expect_error(b.set("spend", "1"), errc::repeated_field, field::spend);
}

TEST(EventBuilder, EmptyValue) {
  for (int i = 0; i < static_cast<int>(field::none); ++i) {
    auto f = static_cast<field>(i);
    if (f == field::status) continue;
    expect_error(build({{"key", "k"}, {to_string(f), ""}}),
                 f == field::key ? errc::repeated_field : errc::empty_value, f);
    expect_error(build({{to_string(f), ""}}), errc::empty_value, f);
  }
  expect_error(build({{"key", "k"}, {"tags", "a,,b"}}), errc::empty_value, field::tags);
}

TEST(EventBuilder, IdTooLong) {
  std::string long_id(257, 'u');
  expect_error(build({{"user", long_id}}), errc::id_too_long, field::user);
  expect_error(build({{"key", "k"}, {"endpoint", long_id}}), errc::id_too_long, field::endpoint);
  std::string many_tags = "t";
  for (size_t i = 0; i < max_tags; ++i) many_tags += ",t";
  expect_error(build({{"tags", many_tags}}), errc::id_too_long, field::tags);
}

TEST(EventBuilder, BadId) {
  expect_error(build({{"model", "gpt\x01"}}), errc::bad_id, field::model);
  expect_error(build({{"key", "k"}, {"provider", "\xC0\xAF"}}), errc::bad_id, field::provider);
  expect_error(build({{"tags", "ok,\xED\xA0\x80"}}), errc::bad_id, field::tags);
}

TEST(EventBuilder, BadNumber) {
  expect_error(build({{"key", "k"}, {"spend", "nan"}}), errc::bad_number, field::spend);
  expect_error(build({{"key", "k"}, {"spend", "1,5"}}), errc::bad_number, field::spend);
  for (std::string_view name :
       std::initializer_list<std::string_view>{"prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_creation_tokens"}) {
    expect_error(build({{"key", "k"}, {name, "1.5"}}), errc::bad_number, field_from_name(name));
    expect_error(build({{"key", "k"}, {name, "1e3"}}), errc::bad_number, field_from_name(name));
    expect_error(build({{"key", "k"}, {name, " 1"}}), errc::bad_number, field_from_name(name));
  }
}

TEST(EventBuilder, NegativeValue) {
  expect_error(build({{"key", "k"}, {"spend", "-0.5"}}), errc::negative_value, field::spend);
  for (std::string_view name :
       std::initializer_list<std::string_view>{"prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_creation_tokens"})
    expect_error(build({{"key", "k"}, {name, "-3"}}), errc::negative_value, field_from_name(name));
}

TEST(EventBuilder, Overflow) {
  expect_error(build({{"key", "k"}, {"spend", "1e400"}}), errc::overflow, field::spend);
  expect_error(build({{"key", "k"}, {"spend", "9000000000.000000001"}}), errc::overflow,
               field::spend);
  for (std::string_view name :
       std::initializer_list<std::string_view>{"prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_creation_tokens"})
    expect_error(build({{"key", "k"}, {name, "1000000000001"}}), errc::overflow,
                 field_from_name(name));
}

TEST(EventBuilder, BadStatus) {
  for (std::string_view status : std::initializer_list<std::string_view>{"", "OK", "Ok", "ERROR", "err", "errors", "ok ", " ok", "1",
                                  "true", "failed", "ok\0"sv})
    expect_error(build({{"key", "k"}, {"status", status}}), errc::bad_status, field::status);
}

TEST(EventBuilder, BadTimestamp) {
  for (std::string_view ts : std::initializer_list<std::string_view>{"-1", "-0", "abc", "1.5", "1e12", " 1", "+", "9007199254740992",
                              "99999999999999999999999", "0x10"})
    expect_error(build({{"key", "k"}, {"ts", ts}}), errc::bad_timestamp, field::ts);
  event ev;
  ASSERT_FALSE(build({{"key", "k"}, {"ts", "9007199254740991"}}, &ev));
  EXPECT_EQ(ev.ts_ms, ts_limit_ms - 1);
  ASSERT_FALSE(build({{"key", "k"}, {"ts", "+0001"}}, &ev));
  EXPECT_EQ(ev.ts_ms, 1);
}

TEST(EventBuilder, NoEntity) {
  expect_error(build({{"model_group", "g"}, {"provider", "p"}, {"endpoint", "e"},
                      {"spend", "1"}, {"prompt_tokens", "1"}, {"status", "ok"}, {"ts", "1"}}),
               errc::no_entity, field::none);
  expect_error(build({}), errc::no_entity, field::none);
}

TEST(EventBuilder, EntityFieldsEachSuffice) {
  for (std::string_view name : std::initializer_list<std::string_view>{"key", "user", "team", "org", "end_user", "tags", "model"})
    EXPECT_FALSE(build({{name, "x"}})) << name;
}

// --- the hot path does not allocate -------------------------------------------

TEST(EventHotPath, ParseValidateAndBuildDoNotAllocate) {
  // Inputs are built before counting starts.
  const std::string long_spend = "0." + std::string(1000, '0') + "1e1005";
  const std::string tags = "a,b,c,\xC3\xA9t\xC3\xA9";
  const std::string bad_tags(300, ',');
  long before = allocation_count.load();
  nano_units spend = 0;
  int64_t count = 0;
  for (int i = 0; i < 100; ++i) {
    (void)parse_spend("0.00013499999999999997", spend);
    (void)parse_spend(long_spend, spend);
    (void)parse_spend("1e400", spend);
    (void)parse_spend("nan", spend);
    (void)parse_count("12345", count);
    (void)check_id("\xF0\x9D\x84\x9E");
    event_builder b;
    (void)b.set("key", "sk-1");
    (void)b.set("tags", tags);
    (void)b.set("spend", "1.5e-07");
    (void)b.set("prompt_tokens", "10");
    (void)b.set("status", "error");
    (void)b.set("ts", "1718000000000");
    event ev;
    (void)b.finish(ev);
    ev.id(field::tags) = bad_tags;
    (void)validate(ev);
    (void)to_string(field::cache_creation_tokens);
    (void)to_string(errc::intern_full);
    (void)field_from_name("cache_creation_tokens");
  }
  EXPECT_EQ(allocation_count.load() - before, 0);
}

}  // namespace
}  // namespace tally
