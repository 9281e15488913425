// core/resp_reply.hpp — every reply tallyd sends, in RESP2 or RESP3.
//
// A connection speaks RESP2 until the client says HELLO 3. The two differ
// only in a few types: a map is "*2n" (a flat key/value array) in RESP2 and
// "%n" in RESP3; a null is "$-1" / "*-1" in RESP2 and "_" in RESP3. Every
// other reply (simple strings, errors, integers, bulk strings, arrays) is
// the same bytes in both, so handlers write through this class and never
// branch on the protocol themselves.
//
// The writer appends to a caller's buffer (CAF's write buffer, or a reply
// slot waiting behind a durable reply); it allocates only when that buffer
// grows.
#pragma once

#include "core/event.hpp"

#include <cstdint>
#include <string_view>
#include <vector>

namespace tally::resp {

enum class protocol : uint8_t { resp2 = 2, resp3 = 3 };

/// Writes the decimal digits of `v` (with '-' when negative) at `out`, which
/// has room for 20 bytes; returns the end.
char* format_int(char* out, int64_t v) noexcept;

class reply_writer {
public:
  reply_writer(std::vector<char>& buffer, protocol proto) noexcept : b_(&buffer), proto_(proto) {}

  std::vector<char>& buffer() noexcept { return *b_; }
  protocol proto() const noexcept { return proto_; }

  void raw(std::string_view bytes) { b_->insert(b_->end(), bytes.data(), bytes.data() + bytes.size()); }
  void ok() { raw("+OK\r\n"); }
  /// "+<text>\r\n"; `text` must not hold CR or LF.
  void simple(std::string_view text);
  /// "-<text>\r\n" where `text` starts with the error code ("ERR ...",
  /// "NOAUTH ..."); must not hold CR or LF.
  void error(std::string_view text);
  /// "-<code> <detail>\r\n" with `detail` made printable and cut at `max`.
  void error(std::string_view code, std::string_view detail, size_t max = 512);
  /// "-ERR <errc> <field>: <sentence>\r\n". `name` is the field as the client
  /// spelled it, for unknown fields; field::none prints "event".
  void field_error(tally::field_error err, std::string_view name = {});
  /// "-ERR wrong number of arguments for '<command>' command\r\n".
  void wrong_args(std::string_view command);
  void integer(int64_t v);
  void bulk(std::string_view s);
  void null();        // a missing string
  void null_array();  // a missing array (COMMAND INFO of an unknown command)
  void array(size_t n);
  void map(size_t pairs);
  /// Appends `s` fit for an error line: printable ASCII, at most `max` bytes
  /// then "...".
  void sanitized(std::string_view s, size_t max = 64);

private:
  void header(char type, int64_t n);

  std::vector<char>* b_;
  protocol proto_;
};

} // namespace tally::resp
