// core/event.hpp — the usage event and its validation (design §4).
//
// core/ owns it (the parser, the rollups and the RESP replies are built on
// it); it is also the public embedding header <tally/event.hpp>, which
// <tally/tally.hpp> includes: the build links include/tally/event.hpp to this
// file and the install copies it there. So: standard library only. An
// `event` holds views into the caller's memory; `runtime::record` copies
// (interns) what it needs before returning, so the caller may reuse its
// buffers at once.
//
// A classic guard, not #pragma once: a translation unit may reach this file
// by both names.
#ifndef TALLY_EVENT_HPP
#define TALLY_EVENT_HPP

#include <cstdint>
#include <string_view>

namespace tally {

/// Spend as an exact integer of nano-units (1e-9 of the currency unit).
using nano_units = int64_t;

/// Error codes of the ingest path, one per reason a value or call is refused.
/// `to_string` gives the stable snake_case name used in RESP errors and metrics.
enum class errc : uint8_t {
  ok = 0,
  unknown_field,    // a field name that design §4 does not list
  repeated_field,   // the same field twice in one event
  missing_value,    // a field name with no value after it
  empty_value,      // an id or number given as ""
  id_too_long,      // an id over 256 bytes (a tag over 256 bytes, tags over 64)
  bad_id,           // control characters or invalid UTF-8 in an id
  bad_number,       // not a decimal / integer, NaN, inf, garbage
  negative_value,   // a measure below zero
  overflow,         // a number past what the pipeline holds exactly
  bad_status,       // status other than ok|error
  bad_timestamp,    // ts not a unix-ms integer in range
  no_entity,        // none of key user team org end_user tags model given
  backpressure,     // ingest memory full: retry later, nothing was taken
  stopped,          // the runtime is stopping or stopped
  intern_full,      // the identifier table is full (see intern_capacity)
};

/// Returns the stable snake_case name of `code` ("ok", "unknown_field", ...).
const char* to_string(errc code) noexcept;

/// The fields of an event, in the order of design §4.
enum class field : uint8_t {
  key, user, team, org, end_user, tags, model, model_group, provider, endpoint,
  spend, prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens,
  status, ts,
  none,  // no field: the error is about the event or the call as a whole
};

/// The identifier fields (key .. endpoint) that are interned; `tags` among them.
inline constexpr int id_field_count = 10;

/// Returns the wire name of `f` ("key", "end_user", "prompt_tokens", ...).
const char* to_string(field f) noexcept;

/// A sentence for people, e.g. "negative values are not allowed". `about`
/// picks the wording where it matters (a spend is a decimal, a count is not).
const char* describe(errc code, field about) noexcept;

/// Looks up a field by its wire name (case-sensitive, as in RESP); `field::none`
/// when unknown.
field field_from_name(std::string_view name) noexcept;

/// An error with the field it is about.
struct field_error {
  errc code = errc::ok;
  field about = field::none;
  explicit operator bool() const noexcept { return code != errc::ok; }
};

/// One usage record. Absent ids are empty views; absent numbers are 0.
struct event {
  std::string_view ids[id_field_count];  // indexed by static_cast<int>(field)
  nano_units spend = 0;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cache_read_tokens = 0;
  int64_t cache_creation_tokens = 0;
  bool ok = true;        // status: ok (true) or error (false)
  int64_t ts_ms = 0;     // unix milliseconds; 0 means "time of record()"

  std::string_view& id(field f) noexcept { return ids[static_cast<int>(f)]; }
  std::string_view id(field f) const noexcept { return ids[static_cast<int>(f)]; }
};

/// Largest spend one event may carry: 9,000,000,000 units (fits nano_units).
inline constexpr nano_units max_event_spend = 9'000'000'000'000'000'000LL;
/// Largest token count one event may carry.
inline constexpr int64_t max_event_tokens = 1'000'000'000'000LL;
/// Longest id, longest tag, most tags in one event.
inline constexpr size_t max_id_bytes = 256;
inline constexpr size_t max_tags = 64;

/// Parses a non-negative decimal in plain or scientific notation ("0.00042",
/// "1.5e-07", "12", "3E2") into exact nano-units, rounding half-to-even at the
/// ninth decimal. Never goes through a float. Refuses empty input, signs other
/// than a leading '+', NaN/inf, garbage, negative values (negative_value) and
/// results above max_event_spend (overflow).
field_error parse_spend(std::string_view text, nano_units& out) noexcept;

/// Parses a non-negative base-10 integer token count (no sign but '+', no
/// spaces); refuses values above max_event_tokens with overflow.
field_error parse_count(std::string_view text, int64_t& out) noexcept;

/// Checks one id: 1..256 bytes of valid UTF-8 without control characters.
errc check_id(std::string_view id) noexcept;

/// Checks the whole event: every id (tags split on ',' and each checked, at
/// most max_tags), numbers in range, at least one of key user team org
/// end_user tags model present. Returns the first error found.
field_error validate(const event& ev) noexcept;

/// Checks one id field's value: check_id, or for `tags` every tag in the
/// comma-separated list (at most max_tags).
errc check_id_field(field f, std::string_view value) noexcept;

/// The checks of validate() that are not about id text: numbers in range,
/// ts, and at least one of key user team org end_user tags model present.
/// The hot path checks each id text only the first time it sees it.
field_error validate_values(const event& ev) noexcept;

/// Builds an event from (name, value) pairs as they arrive over RESP. The
/// views must stay valid until the event is used.
class event_builder {
public:
  /// Sets one field from its text; errors name the field (unknown, repeated,
  /// bad number, ...). After an error the builder must be reset().
  field_error set(std::string_view name, std::string_view value) noexcept;
  /// Validates and returns the event; `out` is only meaningful on success.
  field_error finish(event& out) noexcept;
  /// Like finish(), but checks only validate_values(): for callers that hand
  /// the event straight to runtime::record(), which checks each id text
  /// itself (once per distinct text), so the hot path does not check twice.
  field_error build(event& out) noexcept;
  void reset() noexcept { ev_ = event{}; seen_ = 0; }

private:
  event ev_;
  uint32_t seen_ = 0;  // bit per field
};

} // namespace tally

#endif // TALLY_EVENT_HPP
