// core/resp_parser.hpp — a RESP2 *request* parser: pure, no CAF, no allocation
// per request in steady state.
//
// Why our own and not hiredis's redisReader: hiredis parses *replies*; used on
// requests it allocates a redisReply per argument (malloc + copy) and one per
// array, then we would walk and free them. This parser yields string_views
// over the caller's buffer (a reused vector of views), so parsing a pipelined
// TALLY.RECORD costs no allocation. bench/resp_parser_bench.cpp measures both
// on the same input (numbers in bench/README.md, "RESP ingest").
//
// Wire format, as Redis accepts it (networking.c, processMultibulkBuffer and
// processInlineBuffer):
//   *<argc>\r\n  then argc times  $<len>\r\n<len bytes>\r\n     (multibulk)
//   or a line of space-separated words ending in \n (inline, "PING\r\n"),
//   with "double" (C escapes) and 'single' quotes as in sdssplitargs.
// "*0\r\n", "*-1\r\n" and empty inline lines are empty requests (argc 0):
// the caller skips them, as Redis does.
//
// Use: call parse(data, size) with the unconsumed bytes; on `complete` the
// request's views are in args() and `consumed` bytes belong to it; call again
// at data + consumed. `incomplete` means: wait for more bytes and call again
// from the same start (the parser keeps no state between calls, so a request
// arriving in pieces is re-scanned; bulk payloads are skipped by length, so
// that costs O(argc) per call, not O(bytes)). `error` is a protocol error:
// reply error_text() and close the connection, as Redis does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tally::resp {

/// Bounds a request must stay within (checked before anything is buffered).
struct parse_limits {
  uint32_t max_args = 1024;            // arguments in one request
  uint32_t max_bulk_bytes = 64 * 1024;  // one argument
  uint32_t max_inline_bytes = 64 * 1024;  // one inline line, as Redis' PROTO_INLINE_MAX_SIZE
};

/// Why a request is not valid RESP; each has one fixed text (error_text).
enum class protocol_errc : uint8_t {
  none = 0,
  bad_multibulk_length,   // "*x" not a number, or negative other than -1
  too_many_args,          // argc above max_args
  expected_bulk,          // an element that is not '$' (an integer, array, ...)
  bad_bulk_length,        // "$x" not a number, or negative
  bulk_too_big,           // a length above max_bulk_bytes
  missing_crlf,           // a bulk not followed by \r\n
  inline_too_big,         // no newline within max_inline_bytes
  unbalanced_quotes,      // inline quoting not closed
  header_too_long,        // a "*n" / "$n" line without CRLF within 32 bytes
};

/// Returns the stable snake_case name of `code`, for metrics.
const char* to_string(protocol_errc code) noexcept;

enum class parse_status : uint8_t { complete, incomplete, error };

struct parse_result {
  parse_status status = parse_status::incomplete;
  size_t consumed = 0;        // bytes of the request (complete only)
  protocol_errc error = protocol_errc::none;
};

class request_parser {
public:
  explicit request_parser(parse_limits limits = {}) : limits_(limits) {}

  /// Parses one request at the start of [data, data + size). See the file
  /// comment for the meaning of the three outcomes.
  parse_result parse(const char* data, size_t size);

  /// The arguments of the last complete request: views into the buffer given
  /// to parse() (or, for inline requests with quote escapes, into this
  /// parser's scratch space). Valid until the next parse() call or until the
  /// buffer changes.
  const std::vector<std::string_view>& args() const noexcept { return args_; }

  /// Changes the limits (e.g. tighter ones before AUTH, as Redis 7 does).
  void set_limits(parse_limits limits) noexcept { limits_ = limits; }
  const parse_limits& limits() const noexcept { return limits_; }

  /// The message a server sends for `code`, without "-ERR " and CRLF, e.g.
  /// "Protocol error: expected '$', got ':'". `got` is the byte found for
  /// expected_bulk; the limit values come from the current limits.
  std::string error_text(protocol_errc code) const;

  /// The byte that caused the last expected_bulk error.
  char unexpected_byte() const noexcept { return unexpected_; }

private:
  parse_result parse_multibulk(const char* data, size_t size);
  parse_result parse_inline(const char* data, size_t size);

  parse_limits limits_;
  std::vector<std::string_view> args_;
  std::string scratch_;  // unescaped inline arguments (rare)
  char unexpected_ = 0;
};

/// Parses an optional '-' and 1..18 decimal digits (a RESP length, a SELECT
/// index, a HELLO version); false on anything else.
bool parse_integer(std::string_view s, int64_t& out) noexcept;

/// True when `a` equals the ASCII-uppercase word `upper` ignoring case
/// (command names are case-insensitive, like Redis').
inline bool equals_upper(std::string_view a, std::string_view upper) noexcept {
  if (a.size() != upper.size())
    return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char c = a[i];
    if (c >= 'a' && c <= 'z')
      c = static_cast<char>(c - 'a' + 'A');
    if (c != upper[i])
      return false;
  }
  return true;
}

} // namespace tally::resp
