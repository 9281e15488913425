// core/resp_parser.cpp — see resp_parser.hpp.
#include "core/resp_parser.hpp"

#include <cstring>

namespace tally::resp {

namespace {

/// Longest "*<n>" or "$<n>" line we wait for before calling it garbage.
constexpr size_t max_header_bytes = 32;

/// Parses the optional '-' and 1..18 digits of [p, end); false on anything else.
bool parse_length(const char* p, const char* end, int64_t& out) noexcept {
  bool negative = false;
  if (p < end && *p == '-') {
    negative = true;
    ++p;
  }
  if (p == end || end - p > 18)
    return false;
  int64_t v = 0;
  for (; p < end; ++p) {
    if (*p < '0' || *p > '9')
      return false;
    v = v * 10 + (*p - '0');
  }
  out = negative ? -v : v;
  return true;
}

/// The common bulk header "$<1-18 digits>\r\n", read in one pass: memchr's
/// call costs more than the few bytes it scans, twelve times a request.
/// False for anything else, which find_header and parse_length then judge
/// (the same '\r' and value when this succeeds: no '\r' precedes it).
bool fast_bulk_header(const char* h, size_t size, size_t& line_end, int64_t& len) noexcept {
  const size_t digits_end = size < 19 ? size : 19;  // '$' and at most 18 digits: no overflow
  size_t i = 1;
  int64_t v = 0;
  for (; i < digits_end && h[i] >= '0' && h[i] <= '9'; ++i)
    v = v * 10 + (h[i] - '0');
  if (i == 1 || i + 1 >= size || h[i] != '\r' || h[i + 1] != '\n')
    return false;
  line_end = i;
  len = v;
  return true;
}

/// Finds the header line that starts at data[0] (the type byte). On success
/// `line_end` is the index of its '\r' and the line ends 2 bytes later.
parse_status find_header(const char* data, size_t size, size_t& line_end) noexcept {
  size_t scan = size < max_header_bytes ? size : max_header_bytes;
  auto* cr = static_cast<const char*>(std::memchr(data, '\r', scan));
  if (cr == nullptr)
    return size >= max_header_bytes ? parse_status::error : parse_status::incomplete;
  line_end = static_cast<size_t>(cr - data);
  if (line_end + 1 >= size)
    return parse_status::incomplete;
  return parse_status::complete;
}

bool is_space(char c) noexcept {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

int hex_value(char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

} // namespace

bool parse_integer(std::string_view s, int64_t& out) noexcept {
  return parse_length(s.data(), s.data() + s.size(), out);
}

const char* to_string(protocol_errc code) noexcept {
  switch (code) {
    case protocol_errc::none: return "none";
    case protocol_errc::bad_multibulk_length: return "bad_multibulk_length";
    case protocol_errc::too_many_args: return "too_many_args";
    case protocol_errc::expected_bulk: return "expected_bulk";
    case protocol_errc::bad_bulk_length: return "bad_bulk_length";
    case protocol_errc::bulk_too_big: return "bulk_too_big";
    case protocol_errc::missing_crlf: return "missing_crlf";
    case protocol_errc::inline_too_big: return "inline_too_big";
    case protocol_errc::unbalanced_quotes: return "unbalanced_quotes";
    case protocol_errc::header_too_long: return "header_too_long";
  }
  return "unknown";
}

std::string request_parser::error_text(protocol_errc code) const {
  switch (code) {
    case protocol_errc::none: return "";
    case protocol_errc::bad_multibulk_length: return "Protocol error: invalid multibulk length";
    case protocol_errc::too_many_args:
      return "Protocol error: invalid multibulk length (more than " + std::to_string(limits_.max_args)
             + " arguments)";
    case protocol_errc::expected_bulk: {
      std::string got;
      auto c = static_cast<unsigned char>(unexpected_);
      if (c >= 0x20 && c < 0x7f) {
        got.assign(1, static_cast<char>(c));
      } else {
        static const char digits[] = "0123456789abcdef";
        got = std::string("\\x") + digits[c >> 4] + digits[c & 15];
      }
      return "Protocol error: expected '$', got '" + got + "'";
    }
    case protocol_errc::bad_bulk_length: return "Protocol error: invalid bulk length";
    case protocol_errc::bulk_too_big:
      return "Protocol error: invalid bulk length (argument over " + std::to_string(limits_.max_bulk_bytes)
             + " bytes)";
    case protocol_errc::missing_crlf: return "Protocol error: bulk argument not followed by CRLF";
    case protocol_errc::inline_too_big: return "Protocol error: too big inline request";
    case protocol_errc::unbalanced_quotes: return "Protocol error: unbalanced quotes in request";
    case protocol_errc::header_too_long: return "Protocol error: too big mbulk count string";
  }
  return "Protocol error";
}

parse_result request_parser::parse(const char* data, size_t size) {
  args_.clear();
  if (size == 0)
    return {parse_status::incomplete, 0, protocol_errc::none};
  if (data[0] == '*')
    return parse_multibulk(data, size);
  return parse_inline(data, size);
}

parse_result request_parser::parse_multibulk(const char* data, size_t size) {
  auto fail = [](protocol_errc e) { return parse_result{parse_status::error, 0, e}; };
  auto incomplete = parse_result{parse_status::incomplete, 0, protocol_errc::none};
  size_t line_end = 0;
  switch (find_header(data, size, line_end)) {
    case parse_status::incomplete: return incomplete;
    case parse_status::error: return fail(protocol_errc::header_too_long);
    case parse_status::complete: break;
  }
  int64_t argc = 0;
  if (data[line_end + 1] != '\n' || !parse_length(data + 1, data + line_end, argc))
    return fail(protocol_errc::bad_multibulk_length);
  size_t pos = line_end + 2;
  if (argc <= 0)  // "*0" and "*-1": an empty request, skipped like Redis does
    return {parse_status::complete, pos, protocol_errc::none};
  if (static_cast<uint64_t>(argc) > limits_.max_args)
    return fail(protocol_errc::too_many_args);
  for (int64_t i = 0; i < argc; ++i) {
    if (pos >= size)
      return incomplete;
    if (data[pos] != '$') {
      unexpected_ = data[pos];
      return fail(protocol_errc::expected_bulk);
    }
    int64_t len = 0;
    const char* header = data + pos;
    if (!fast_bulk_header(header, size - pos, line_end, len)) {
      switch (find_header(header, size - pos, line_end)) {
        case parse_status::incomplete: return incomplete;
        case parse_status::error: return fail(protocol_errc::header_too_long);
        case parse_status::complete: break;
      }
      if (header[line_end + 1] != '\n' || !parse_length(header + 1, header + line_end, len) || len < 0)
        return fail(protocol_errc::bad_bulk_length);
    }
    if (static_cast<uint64_t>(len) > limits_.max_bulk_bytes)
      return fail(protocol_errc::bulk_too_big);
    pos += line_end + 2;
    size_t n = static_cast<size_t>(len);
    if (size - pos < n + 2)
      return incomplete;
    if (data[pos + n] != '\r' || data[pos + n + 1] != '\n')
      return fail(protocol_errc::missing_crlf);
    args_.emplace_back(data + pos, n);
    pos += n + 2;
  }
  return {parse_status::complete, pos, protocol_errc::none};
}

parse_result request_parser::parse_inline(const char* data, size_t size) {
  auto fail = [](protocol_errc e) { return parse_result{parse_status::error, 0, e}; };
  size_t scan = size < size_t{limits_.max_inline_bytes} + 1 ? size : size_t{limits_.max_inline_bytes} + 1;
  auto* nl = static_cast<const char*>(std::memchr(data, '\n', scan));
  if (nl == nullptr) {
    if (size > limits_.max_inline_bytes)
      return fail(protocol_errc::inline_too_big);
    return {parse_status::incomplete, 0, protocol_errc::none};
  }
  size_t consumed = static_cast<size_t>(nl - data) + 1;
  const char* p = data;
  const char* end = nl;  // a '\r' before it is whitespace
  // Quoted arguments are unescaped into scratch_, sized once so that views
  // into it stay valid while the line is split (unescaping only shrinks).
  bool scratch_ready = false;
  size_t out = 0;
  while (true) {
    while (p < end && is_space(*p))
      ++p;
    if (p == end)
      break;
    if (args_.size() >= limits_.max_args)
      return fail(protocol_errc::too_many_args);
    if (*p != '"' && *p != '\'') {
      const char* start = p;
      while (p < end && !is_space(*p))
        ++p;
      args_.emplace_back(start, static_cast<size_t>(p - start));
      continue;
    }
    if (!scratch_ready) {
      scratch_.assign(static_cast<size_t>(end - data), '\0');
      scratch_ready = true;
    }
    char quote = *p++;
    size_t start = out;
    bool closed = false;
    while (p < end) {
      char c = *p;
      if (quote == '"' && c == '\\' && p + 3 < end && p[1] == 'x'
          && hex_value(p[2]) >= 0 && hex_value(p[3]) >= 0) {
        scratch_[out++] = static_cast<char>(hex_value(p[2]) * 16 + hex_value(p[3]));
        p += 4;
      } else if (quote == '"' && c == '\\' && p + 1 < end) {
        char e = p[1];
        switch (e) {
          case 'n': e = '\n'; break;
          case 'r': e = '\r'; break;
          case 't': e = '\t'; break;
          case 'b': e = '\b'; break;
          case 'a': e = '\a'; break;
          default: break;
        }
        scratch_[out++] = e;
        p += 2;
      } else if (quote == '\'' && c == '\\' && p + 1 < end && p[1] == '\'') {
        scratch_[out++] = '\'';
        p += 2;
      } else if (c == quote) {
        ++p;
        // Like sdssplitargs: a closing quote must end the argument.
        if (p < end && !is_space(*p))
          return fail(protocol_errc::unbalanced_quotes);
        closed = true;
        break;
      } else {
        scratch_[out++] = c;
        ++p;
      }
    }
    if (!closed)
      return fail(protocol_errc::unbalanced_quotes);
    if (static_cast<size_t>(out - start) > limits_.max_bulk_bytes)
      return fail(protocol_errc::bulk_too_big);
    args_.emplace_back(scratch_.data() + start, out - start);
  }
  for (auto& a : args_)
    if (a.size() > limits_.max_bulk_bytes)
      return fail(protocol_errc::bulk_too_big);
  return {parse_status::complete, consumed, protocol_errc::none};
}

} // namespace tally::resp
