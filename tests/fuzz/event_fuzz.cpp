// tests/fuzz/event_fuzz.cpp — libFuzzer target for event parsing and
// validation (core/event.cpp): event_builder with every field's checks, and
// parse_spend against the C library's strtold.
//
// Input: lines separated by '\n', taken in pairs as (field name, value), the
// way a TALLY.RECORD's arguments reach the builder. Properties:
//  * the builder refuses at the first bad pair and names a field, or builds
//    an event that validate() accepts, whose numbers lie within their bounds
//    and whose ids are the values given (views into the input, unchanged);
//  * finish() succeeding implies build() succeeds with the same event, and
//    build() succeeding where finish() fails means an id's text is bad;
//  * parse_spend(text) succeeding means strtold reads all of text to a value
//    within half a nano-unit (plus long double rounding) of the result; and
//    for text in parse_spend's documented grammar that strtold reads as a
//    value clearly below max_event_spend, parse_spend must succeed (it may
//    not refuse numbers the C library reads fine, nor accept a wider set
//    with a different meaning).
#include "core/event.hpp"
#include "tests/fuzz/fuzz_check.hpp"

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

using namespace tally;

namespace {

bool in_spend_grammar(std::string_view s) {
  // ['+'] (digits ['.' [digits]] | '.' digits) [('e'|'E') ['+'|'-'] digits]
  size_t i = 0;
  if (i < s.size() && s[i] == '+') ++i;
  size_t digits = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i, ++digits;
  if (i < s.size() && s[i] == '.') {
    ++i;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i, ++digits;
  }
  if (digits == 0) return false;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    size_t exp_digits = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i, ++exp_digits;
    if (exp_digits == 0) return false;
  }
  return i == s.size();
}

void check_spend_against_strtold(std::string_view text) {
  nano_units ours = -1;
  field_error err = parse_spend(text, ours);
  std::string copy(text);  // strtold needs a terminator
  if (copy.find('\0') != std::string::npos) {
    FUZZ_CHECK(err);  // an embedded NUL is never a number
    return;
  }
  char* end = nullptr;
  errno = 0;
  long double theirs = std::strtold(copy.c_str(), &end);
  bool read_all = end == copy.c_str() + copy.size();
  if (!err) {
    FUZZ_CHECK(ours >= 0 && ours <= max_event_spend);
    FUZZ_CHECK(read_all);
    long double nanos = theirs * 1e9L;
    long double tolerance = 0.5L + std::fabs(nanos) * 4e-19L + 1e-9L;
    FUZZ_CHECK(std::fabs(nanos - static_cast<long double>(ours)) <= tolerance);
    return;
  }
  if (in_spend_grammar(text) && read_all) {
    long double nanos = theirs * 1e9L;
    long double limit = static_cast<long double>(max_event_spend);
    if (nanos < limit * (1 - 1e-15L))
      FUZZ_CHECK(!err);
    if (nanos > limit * (1 + 1e-15L))
      FUZZ_CHECK(err.code == errc::overflow);
  }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* bytes, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(bytes), size);
  std::vector<std::string_view> lines;
  for (size_t pos = 0; pos <= input.size();) {
    size_t nl = input.find('\n', pos);
    if (nl == std::string_view::npos) nl = input.size();
    lines.push_back(input.substr(pos, nl - pos));
    pos = nl + 1;
  }

  for (std::string_view line : lines)
    check_spend_against_strtold(line);

  event_builder builder;
  bool refused = false;
  std::vector<std::pair<field, std::string_view>> given;
  for (size_t i = 0; i + 1 < lines.size(); i += 2) {
    field_error e = builder.set(lines[i], lines[i + 1]);
    if (e) {
      FUZZ_CHECK(e.code != errc::ok);
      FUZZ_CHECK(to_string(e.code) != nullptr);
      refused = true;
      break;
    }
    given.emplace_back(field_from_name(lines[i]), lines[i + 1]);
  }
  if (refused)
    return 0;

  event finished, built;
  field_error fin = builder.finish(finished);
  field_error bld = builder.build(built);
  if (!fin) {
    FUZZ_CHECK(!bld);
    FUZZ_CHECK(!validate(finished));
    for (int i = 0; i < id_field_count; ++i)
      FUZZ_CHECK(finished.ids[i].data() == built.ids[i].data() && finished.ids[i] == built.ids[i]);
    FUZZ_CHECK(finished.spend >= 0 && finished.spend <= max_event_spend);
    for (int64_t count : {finished.prompt_tokens, finished.completion_tokens, finished.cache_read_tokens,
                          finished.cache_creation_tokens})
      FUZZ_CHECK(count >= 0 && count <= max_event_tokens);
    FUZZ_CHECK(finished.ts_ms >= 0);
    for (const auto& [f, value] : given) {
      if (static_cast<int>(f) < id_field_count) {
        FUZZ_CHECK(finished.id(f) == value);
        FUZZ_CHECK(check_id_field(f, value) == errc::ok);
      }
    }
  } else if (!bld) {
    // Only an id's text can fail finish() once the values passed.
    FUZZ_CHECK(static_cast<int>(fin.about) < id_field_count);
    FUZZ_CHECK(check_id_field(fin.about, built.id(fin.about)) == fin.code);
  }
  return 0;
}
