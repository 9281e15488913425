// core/event.cpp — parsing and validation of usage events (design §4).
//
// Everything here runs once per ingested event, so nothing allocates: numbers
// are parsed straight from the caller's bytes into integers, ids are checked in
// place, and the builder keeps views. Spend never passes through a float; the
// decimal is shifted by its exponent and rounded half-to-even at the ninth
// decimal using only the digit string itself.
#include "core/event.hpp"

#include <cstring>

#include <cstddef>

namespace tally {

namespace {

/// The wire names of design §4, indexed by `field`.
constexpr std::string_view field_names[] = {
  "key", "user", "team", "org", "end_user", "tags", "model", "model_group",
  "provider", "endpoint", "spend", "prompt_tokens", "completion_tokens",
  "cache_read_tokens", "cache_creation_tokens", "status", "ts",
};
constexpr int named_field_count = sizeof(field_names) / sizeof(field_names[0]);
static_assert(named_field_count == static_cast<int>(field::none),
              "every field but none has a wire name");
static_assert(named_field_count <= 32, "event_builder::seen_ has a bit per field");

/// Timestamps are unix milliseconds below 2^53, so any consumer that holds
/// them as a double (JSON, JavaScript dashboards) still reads them exactly.
constexpr int64_t ts_limit_ms = int64_t{1} << 53;

/// An exponent of this size is certainly over- or underflow for any string
/// that fits in memory (under 2^48 bytes of digits); clamping there keeps the
/// accumulation (clamp * 10 + 9) and the position arithmetic inside int64.
constexpr int64_t exponent_clamp = 1'000'000'000'000'000LL;

bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }

/// Parses an unsigned decimal integer of one or more digits (leading '+'
/// allowed, '-' reported as negative) into `out`, saturating at `limit + 1` so
/// that arbitrarily long digit strings cannot overflow. The syntax is checked
/// in full before the sign or the range is judged: "-x" is bad_number, "-5" is
/// negative_value.
errc parse_unsigned(std::string_view text, int64_t limit, int64_t& out) noexcept {
  if (text.empty()) return errc::empty_value;
  size_t i = 0;
  bool negative = false;
  if (text[0] == '+' || text[0] == '-') {
    negative = text[0] == '-';
    i = 1;
  }
  if (i == text.size()) return errc::bad_number;
  int64_t value = 0;
  for (; i < text.size(); ++i) {
    char c = text[i];
    if (!is_digit(c)) return errc::bad_number;
    if (value <= limit) value = value * 10 + (c - '0');  // limit * 10 + 9 fits int64
  }
  if (negative) return errc::negative_value;
  if (value > limit) return errc::overflow;
  out = value;
  return errc::ok;
}

/// The digits of a decimal mantissa as one run, with the integer digits in
/// [int_begin, int_end) and the fraction digits in [frac_begin, frac_end) of
/// the text; the two ranges read as if concatenated.
struct mantissa_digits {
  std::string_view text;
  size_t int_begin = 0, int_end = 0, frac_begin = 0, frac_end = 0;

  int64_t size() const noexcept {
    return static_cast<int64_t>((int_end - int_begin) + (frac_end - frac_begin));
  }
  int digit(int64_t i) const noexcept {
    auto int_len = static_cast<int64_t>(int_end - int_begin);
    size_t at = i < int_len ? int_begin + static_cast<size_t>(i)
                            : frac_begin + static_cast<size_t>(i - int_len);
    return text[at] - '0';
  }
};

/// Checks one UTF-8 id character by character; see check_id for the rules.
bool is_clean_utf8(std::string_view s) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  auto continuation = [](unsigned char b) { return (b & 0xC0) == 0x80; };
  // Ids are nearly always ASCII: test eight bytes at a time for a high bit,
  // a control character (< 0x20) or DEL, and fall back to the exact
  // byte-by-byte check only where one may be.
  constexpr uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
  while (end - p >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    uint64_t below_space = (w - ones * 0x20) & ~w & highs;
    uint64_t del = w ^ (ones * 0x7F);
    uint64_t is_del = (del - ones) & ~del & highs;
    if ((w & highs) | below_space | is_del)
      break;
    p += 8;
  }
  while (p < end) {
    unsigned char b = *p;
    if (b < 0x80) {
      if (b < 0x20 || b == 0x7F) return false;  // C0 controls and DEL
      ++p;
      continue;
    }
    // The lead byte fixes the length and the allowed range of the second byte
    // (Unicode Table 3-7): this refuses overlongs, surrogates and > U+10FFFF.
    int length = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
      length = 2;
      if (b == 0xC2) lo = 0xA0;  // U+0080..U+009F are the C1 controls
    } else if (b >= 0xE0 && b <= 0xEF) {
      length = 3;
      if (b == 0xE0) lo = 0xA0;       // overlong
      else if (b == 0xED) hi = 0x9F;  // UTF-16 surrogates
    } else if (b >= 0xF0 && b <= 0xF4) {
      length = 4;
      if (b == 0xF0) lo = 0x90;       // overlong
      else if (b == 0xF4) hi = 0x8F;  // above U+10FFFF
    } else {
      return false;  // stray continuation byte, C0/C1 overlong lead, F5..FF
    }
    if (end - p < length) return false;
    if (p[1] < lo || p[1] > hi) return false;
    for (int k = 2; k < length; ++k)
      if (!continuation(p[k])) return false;
    p += length;
  }
  return true;
}

bool is_id_field(field f) noexcept {
  return static_cast<int>(f) < id_field_count;
}

/// Checks the comma-separated tag list: each tag is an id, at most max_tags.
errc check_tags(std::string_view tags) noexcept {
  size_t count = 0;
  size_t start = 0;
  while (true) {
    size_t comma = tags.find(',', start);
    size_t stop = comma == std::string_view::npos ? tags.size() : comma;
    if (++count > max_tags) return errc::id_too_long;
    if (errc code = check_id(tags.substr(start, stop - start)); code != errc::ok)
      return code;
    if (comma == std::string_view::npos) return errc::ok;
    start = comma + 1;
  }
}

} // namespace

const char* to_string(errc code) noexcept {
  switch (code) {
    case errc::ok: return "ok";
    case errc::unknown_field: return "unknown_field";
    case errc::repeated_field: return "repeated_field";
    case errc::missing_value: return "missing_value";
    case errc::empty_value: return "empty_value";
    case errc::id_too_long: return "id_too_long";
    case errc::bad_id: return "bad_id";
    case errc::bad_number: return "bad_number";
    case errc::negative_value: return "negative_value";
    case errc::overflow: return "overflow";
    case errc::bad_status: return "bad_status";
    case errc::bad_timestamp: return "bad_timestamp";
    case errc::no_entity: return "no_entity";
    case errc::backpressure: return "backpressure";
    case errc::stopped: return "stopped";
    case errc::intern_full: return "intern_full";
  }
  return "unknown_errc";  // a value cast from outside the enum
}

const char* describe(errc code, field about) noexcept {
  switch (code) {
    case errc::ok: return "ok";
    case errc::unknown_field: return "unknown field";
    case errc::repeated_field: return "field given twice";
    case errc::missing_value: return "field name without a value";
    case errc::empty_value: return "empty value";
    case errc::id_too_long: return "id too long (at most 256 bytes per id or tag, at most 64 tags)";
    case errc::bad_id: return "id must be UTF-8 without control characters";
    case errc::bad_number:
      return about == field::spend ? "not a decimal number" : "not a non-negative integer";
    case errc::negative_value: return "negative values are not allowed";
    case errc::overflow: return "number too large";
    case errc::bad_status: return "status must be ok or error";
    case errc::bad_timestamp: return "ts must be unix milliseconds";
    case errc::no_entity:
      return "an event must name at least one of key user team org end_user tags model";
    case errc::backpressure: return "ingest queues full, retry later";
    case errc::stopped: return "tally is stopping";
    case errc::intern_full: return "identifier table full (raise intern_capacity)";
  }
  return "refused";
}

const char* to_string(field f) noexcept {
  auto i = static_cast<int>(f);
  // Every entry of field_names is a literal, so data() is NUL-terminated.
  return i < named_field_count ? field_names[i].data() : "none";
}

field field_from_name(std::string_view name) noexcept {
  for (int i = 0; i < named_field_count; ++i)
    if (field_names[i] == name) return static_cast<field>(i);
  return field::none;
}

// Grammar: ['+'|'-'] (digits ['.' [digits]] | '.' digits) [('e'|'E') ['+'|'-'] digits]
// with no spaces. The value is m * 10^exp where m is the concatenated mantissa
// digits read with the decimal point after the integer digits. In nano-units
// the point moves nine places right, so mantissa digit i (0-based) lands at or
// above the units place exactly when i < cut = int_len + exp + 9. Digits
// [0, cut) form the integer (padded with zeros past the last digit), digit
// `cut` is the rounding digit and any non-zero digit after it breaks a tie.
field_error parse_spend(std::string_view text, nano_units& out) noexcept {
  auto fail = [](errc code) { return field_error{code, field::spend}; };
  if (text.empty()) return fail(errc::empty_value);

  size_t i = 0;
  bool negative = false;
  if (text[0] == '+' || text[0] == '-') {
    negative = text[0] == '-';
    i = 1;
  }
  mantissa_digits m{text};
  m.int_begin = i;
  while (i < text.size() && is_digit(text[i])) ++i;
  m.int_end = i;
  m.frac_begin = m.frac_end = i;
  if (i < text.size() && text[i] == '.') {
    m.frac_begin = ++i;
    while (i < text.size() && is_digit(text[i])) ++i;
    m.frac_end = i;
  }
  if (m.size() == 0) return fail(errc::bad_number);  // "", "+", ".", "e5", "nan"

  int64_t exponent = 0;
  if (i < text.size() && (text[i] == 'e' || text[i] == 'E')) {
    ++i;
    bool exponent_negative = false;
    if (i < text.size() && (text[i] == '+' || text[i] == '-')) {
      exponent_negative = text[i] == '-';
      ++i;
    }
    size_t exponent_begin = i;
    for (; i < text.size() && is_digit(text[i]); ++i)
      if (exponent < exponent_clamp) exponent = exponent * 10 + (text[i] - '0');
    if (i == exponent_begin) return fail(errc::bad_number);  // "1e", "1e+"
    if (exponent_negative) exponent = -exponent;
  }
  if (i != text.size()) return fail(errc::bad_number);  // "1.2.3", "1 ", "0x10"
  if (negative) return fail(errc::negative_value);      // "-0" too: no sign but '+'

  const int64_t n = m.size();
  int64_t first = 0;  // first non-zero mantissa digit
  while (first < n && m.digit(first) == 0) ++first;
  if (first == n) {  // zero with any exponent, even "0e999999999999999999999"
    out = 0;
    return {};
  }

  const int64_t cut = static_cast<int64_t>(m.int_end - m.int_begin) + exponent + 9;
  // Integer digits from the first non-zero one; 20 or more of them are at
  // least 1e19 nano-units, past max_event_spend (19 digits, 9e18).
  if (cut - first > 19) return fail(errc::overflow);

  uint64_t nanos = 0;  // at most 19 digits, plus one from rounding: fits uint64
  for (int64_t k = first; k < cut && k < n; ++k) nanos = nanos * 10 + m.digit(k);
  for (int64_t k = n; k < cut; ++k) nanos *= 10;

  if (cut >= 0 && cut < n) {
    int round_digit = m.digit(cut);
    bool round_up = round_digit > 5;
    if (round_digit == 5) {
      bool above_half = false;
      for (int64_t k = cut + 1; k < n && !above_half; ++k) above_half = m.digit(k) != 0;
      round_up = above_half || (nanos & 1) != 0;  // a tie goes to the even neighbour
    }
    if (round_up) ++nanos;
  }
  // cut < 0: the first digit sits below the tenth decimal, so the value is
  // under half a nano-unit and rounds to zero; nanos is still 0 here.

  if (nanos > static_cast<uint64_t>(max_event_spend)) return fail(errc::overflow);
  out = static_cast<nano_units>(nanos);
  return {};
}

field_error parse_count(std::string_view text, int64_t& out) noexcept {
  return {parse_unsigned(text, max_event_tokens, out), field::none};
}

errc check_id(std::string_view id) noexcept {
  if (id.empty()) return errc::empty_value;
  if (id.size() > max_id_bytes) return errc::id_too_long;
  return is_clean_utf8(id) ? errc::ok : errc::bad_id;
}

errc check_id_field(field f, std::string_view value) noexcept {
  return f == field::tags ? check_tags(value) : check_id(value);
}

field_error validate_values(const event& ev) noexcept {
  bool has_entity = false;
  for (int i = 0; i <= static_cast<int>(field::model); ++i)
    has_entity |= !ev.ids[i].empty();

  auto check_range = [](int64_t value, int64_t limit) {
    if (value < 0) return errc::negative_value;
    if (value > limit) return errc::overflow;
    return errc::ok;
  };
  const struct {
    field f;
    int64_t value;
    int64_t limit;
  } measures[] = {
    {field::spend, ev.spend, max_event_spend},
    {field::prompt_tokens, ev.prompt_tokens, max_event_tokens},
    {field::completion_tokens, ev.completion_tokens, max_event_tokens},
    {field::cache_read_tokens, ev.cache_read_tokens, max_event_tokens},
    {field::cache_creation_tokens, ev.cache_creation_tokens, max_event_tokens},
  };
  for (const auto& m : measures)
    if (errc code = check_range(m.value, m.limit); code != errc::ok) return {code, m.f};

  if (ev.ts_ms < 0 || ev.ts_ms >= ts_limit_ms) return {errc::bad_timestamp, field::ts};
  if (!has_entity) return {errc::no_entity, field::none};
  return {};
}

field_error validate(const event& ev) noexcept {
  for (int i = 0; i < id_field_count; ++i) {
    auto f = static_cast<field>(i);
    std::string_view value = ev.ids[i];
    if (value.empty()) continue;  // absent
    if (errc code = check_id_field(f, value); code != errc::ok) return {code, f};
  }
  return validate_values(ev);
}

field_error event_builder::set(std::string_view name, std::string_view value) noexcept {
  field f = field_from_name(name);
  if (f == field::none) return {errc::unknown_field, field::none};
  uint32_t bit = uint32_t{1} << static_cast<int>(f);
  if (seen_ & bit) return {errc::repeated_field, f};
  seen_ |= bit;

  if (value.empty()) {
    // status has two spellings and no "empty" one; everything else is an id or
    // a number, for which "" has its own code.
    return {f == field::status ? errc::bad_status : errc::empty_value, f};
  }
  if (is_id_field(f)) {
    // Checked in finish() by validate(), which must look at them anyway.
    ev_.id(f) = value;
    return {};
  }

  errc code = errc::ok;
  switch (f) {
    case field::spend: code = parse_spend(value, ev_.spend).code; break;
    case field::prompt_tokens: code = parse_count(value, ev_.prompt_tokens).code; break;
    case field::completion_tokens: code = parse_count(value, ev_.completion_tokens).code; break;
    case field::cache_read_tokens: code = parse_count(value, ev_.cache_read_tokens).code; break;
    case field::cache_creation_tokens:
      code = parse_count(value, ev_.cache_creation_tokens).code;
      break;
    case field::status:
      if (value == "ok") ev_.ok = true;
      else if (value == "error") ev_.ok = false;
      else code = errc::bad_status;
      break;
    case field::ts:
      if (parse_unsigned(value, ts_limit_ms - 1, ev_.ts_ms) != errc::ok)
        code = errc::bad_timestamp;
      break;
    default:
      break;  // ids were handled above; none was refused as unknown
  }
  return {code, code == errc::ok ? field::none : f};
}

field_error event_builder::finish(event& out) noexcept {
  field_error err = validate(ev_);
  if (!err) out = ev_;
  return err;
}

field_error event_builder::build(event& out) noexcept {
  field_error err = validate_values(ev_);
  if (!err) out = ev_;
  return err;
}

} // namespace tally
