// core/resp_reply.cpp — see resp_reply.hpp.
#include "core/resp_reply.hpp"

namespace tally::resp {

char* format_int(char* out, int64_t v) noexcept {
  uint64_t u = static_cast<uint64_t>(v);
  if (v < 0) {
    *out++ = '-';
    u = static_cast<uint64_t>(-(v + 1)) + 1;
  }
  char tmp[20];
  int n = 0;
  do {
    tmp[n++] = static_cast<char>('0' + u % 10);
    u /= 10;
  } while (u != 0);
  while (n > 0)
    *out++ = tmp[--n];
  return out;
}

void reply_writer::header(char type, int64_t n) {
  char tmp[24];
  tmp[0] = type;
  char* end = format_int(tmp + 1, n);
  *end++ = '\r';
  *end++ = '\n';
  b_->insert(b_->end(), tmp, end);
}

void reply_writer::simple(std::string_view text) {
  b_->push_back('+');
  raw(text);
  raw("\r\n");
}

void reply_writer::error(std::string_view text) {
  b_->push_back('-');
  raw(text);
  raw("\r\n");
}

void reply_writer::error(std::string_view code, std::string_view detail, size_t max) {
  b_->push_back('-');
  raw(code);
  b_->push_back(' ');
  sanitized(detail, max);
  raw("\r\n");
}

void reply_writer::field_error(tally::field_error err, std::string_view name) {
  raw("-ERR ");
  raw(to_string(err.code));
  b_->push_back(' ');
  if (err.about != field::none)
    raw(to_string(err.about));
  else if (!name.empty())
    sanitized(name);
  else
    raw("event");
  raw(": ");
  raw(describe(err.code, err.about));
  raw("\r\n");
}

void reply_writer::wrong_args(std::string_view command) {
  raw("-ERR wrong number of arguments for '");
  sanitized(command, 32);
  raw("' command\r\n");
}

void reply_writer::integer(int64_t v) {
  header(':', v);
}

void reply_writer::bulk(std::string_view s) {
  header('$', static_cast<int64_t>(s.size()));
  raw(s);
  raw("\r\n");
}

void reply_writer::null() {
  raw(proto_ == protocol::resp3 ? std::string_view("_\r\n") : std::string_view("$-1\r\n"));
}

void reply_writer::null_array() {
  raw(proto_ == protocol::resp3 ? std::string_view("_\r\n") : std::string_view("*-1\r\n"));
}

void reply_writer::array(size_t n) {
  header('*', static_cast<int64_t>(n));
}

void reply_writer::map(size_t pairs) {
  if (proto_ == protocol::resp3)
    header('%', static_cast<int64_t>(pairs));
  else
    header('*', static_cast<int64_t>(2 * pairs));
}

void reply_writer::sanitized(std::string_view s, size_t max) {
  size_t n = 0;
  for (char c : s) {
    if (n++ == max) {
      raw("...");
      break;
    }
    auto u = static_cast<unsigned char>(c);
    b_->push_back(u >= 0x20 && u < 0x7f ? c : '?');
  }
}

} // namespace tally::resp
