// tests/resp_parser_test.cpp — unit tests of core/resp_parser.
#include "core/resp_parser.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

using namespace tally::resp;

namespace {

std::string encode(const std::vector<std::string>& args) {
  std::string s = "*" + std::to_string(args.size()) + "\r\n";
  for (auto& a : args)
    s += "$" + std::to_string(a.size()) + "\r\n" + a + "\r\n";
  return s;
}

std::vector<std::string> args_of(const request_parser& p) {
  return {p.args().begin(), p.args().end()};
}

} // namespace

TEST(RespParser, MultibulkPipelined) {
  std::string buf = encode({"TALLY.RECORD", "key", "k1", "spend", "0.5"}) + encode({"PING"});
  request_parser p;
  auto r = p.parse(buf.data(), buf.size());
  ASSERT_EQ(r.status, parse_status::complete);
  EXPECT_EQ(args_of(p), (std::vector<std::string>{"TALLY.RECORD", "key", "k1", "spend", "0.5"}));
  auto r2 = p.parse(buf.data() + r.consumed, buf.size() - r.consumed);
  ASSERT_EQ(r2.status, parse_status::complete);
  EXPECT_EQ(args_of(p), (std::vector<std::string>{"PING"}));
  EXPECT_EQ(r.consumed + r2.consumed, buf.size());
}

TEST(RespParser, BinarySafeBulk) {
  std::string v("a\r\n\0b", 5);
  std::string buf = encode({"ECHO", v});
  request_parser p;
  auto r = p.parse(buf.data(), buf.size());
  ASSERT_EQ(r.status, parse_status::complete);
  EXPECT_EQ(std::string(p.args()[1]), v);
}

TEST(RespParser, EveryPrefixIsIncomplete) {
  std::string buf = encode({"TALLY.RECORD", "key", "k1", "spend", "0.5"});
  request_parser p;
  for (size_t n = 0; n < buf.size(); ++n)
    EXPECT_EQ(p.parse(buf.data(), n).status, parse_status::incomplete) << "prefix " << n;
  EXPECT_EQ(p.parse(buf.data(), buf.size()).status, parse_status::complete);
}

TEST(RespParser, EmptyRequests) {
  request_parser p;
  for (std::string buf : {"*0\r\n", "*-1\r\n", "\r\n", "   \n"}) {
    auto r = p.parse(buf.data(), buf.size());
    ASSERT_EQ(r.status, parse_status::complete) << buf;
    EXPECT_EQ(r.consumed, buf.size());
    EXPECT_TRUE(p.args().empty());
  }
}

TEST(RespParser, Inline) {
  request_parser p;
  std::string buf = "PING\r\nset  a  \"b c\\x41\\n\" 'it\\'s'\n";
  auto r = p.parse(buf.data(), buf.size());
  ASSERT_EQ(r.status, parse_status::complete);
  EXPECT_EQ(args_of(p), (std::vector<std::string>{"PING"}));
  auto r2 = p.parse(buf.data() + r.consumed, buf.size() - r.consumed);
  ASSERT_EQ(r2.status, parse_status::complete);
  EXPECT_EQ(args_of(p), (std::vector<std::string>{"set", "a", "b cA\n", "it's"}));
  EXPECT_EQ(p.parse("PIN", 3).status, parse_status::incomplete);
}

TEST(RespParser, ProtocolErrors) {
  parse_limits limits;
  limits.max_args = 4;
  limits.max_bulk_bytes = 8;
  limits.max_inline_bytes = 64;
  request_parser p(limits);
  struct tc {
    std::string input;
    protocol_errc want;
    std::string text;
  };
  std::vector<tc> cases = {
    {"*x\r\n", protocol_errc::bad_multibulk_length, "Protocol error: invalid multibulk length"},
    {"*5\r\n", protocol_errc::too_many_args, "Protocol error: invalid multibulk length (more than 4 arguments)"},
    {"*1\r\n:5\r\n", protocol_errc::expected_bulk, "Protocol error: expected '$', got ':'"},
    {"*1\r\n*1\r\n", protocol_errc::expected_bulk, "Protocol error: expected '$', got '*'"},
    {"*1\r\n$-3\r\n", protocol_errc::bad_bulk_length, "Protocol error: invalid bulk length"},
    {"*1\r\n$abc\r\n", protocol_errc::bad_bulk_length, "Protocol error: invalid bulk length"},
    {"*1\r\n$9\r\n", protocol_errc::bulk_too_big, "Protocol error: invalid bulk length (argument over 8 bytes)"},
    {"*1\r\n$2\r\nabcd", protocol_errc::missing_crlf, "Protocol error: bulk argument not followed by CRLF"},
    {"*11111111111111111111111111111111111", protocol_errc::header_too_long, "Protocol error: too big mbulk count string"},
    {std::string(65, 'x'), protocol_errc::inline_too_big, "Protocol error: too big inline request"},
    {"set \"abc\n", protocol_errc::unbalanced_quotes, "Protocol error: unbalanced quotes in request"},
    {"set \"abc\"def\n", protocol_errc::unbalanced_quotes, "Protocol error: unbalanced quotes in request"},
    {"a b c d e\n", protocol_errc::too_many_args, "Protocol error: invalid multibulk length (more than 4 arguments)"},
    {"abcdefghijk\n", protocol_errc::bulk_too_big, "Protocol error: invalid bulk length (argument over 8 bytes)"},
  };
  for (auto& c : cases) {
    auto r = p.parse(c.input.data(), c.input.size());
    ASSERT_EQ(r.status, parse_status::error) << c.input;
    EXPECT_EQ(r.error, c.want) << c.input;
    EXPECT_EQ(p.error_text(r.error), c.text) << c.input;
  }
}

// Bulk headers are read by a one-pass fast path with a general fallback;
// every shape at the edge between the two gets the general path's verdict.
TEST(RespParser, BulkHeaderEdges) {
  request_parser p;
  std::string buffer;  // the parsed arguments point into it
  auto parse = [&](std::string in) {
    buffer = std::move(in);
    return p.parse(buffer.data(), buffer.size());
  };
  // 18 digits is the most a length may have; leading zeros are allowed.
  auto r = parse("*1\r\n$000000000000000003\r\nabc\r\n");
  ASSERT_EQ(r.status, parse_status::complete);
  ASSERT_EQ(p.args().size(), 1u);
  EXPECT_EQ(p.args()[0], "abc");
  r = parse("*1\r\n$0000000000000000003\r\nabc\r\n");  // 19 digits
  ASSERT_EQ(r.status, parse_status::error);
  EXPECT_EQ(r.error, protocol_errc::bad_bulk_length);
  // Past int64: refused, never overflowed (a fuzzer found the overflow).
  r = parse("*1\r\n$" + std::string(25, '9') + "\r\n");
  ASSERT_EQ(r.status, parse_status::error);
  EXPECT_EQ(r.error, protocol_errc::bad_bulk_length);
  r = parse("*1\r\n$" + std::string(60, '9') + "\r\n");
  ASSERT_EQ(r.status, parse_status::error);
  EXPECT_EQ(r.error, protocol_errc::header_too_long);
  r = parse("*1\r\n$\r\n\r\n");  // no digits
  ASSERT_EQ(r.status, parse_status::error);
  EXPECT_EQ(r.error, protocol_errc::bad_bulk_length);
  r = parse("*1\r\n$3\rX");  // '\r' without '\n'
  ASSERT_EQ(r.status, parse_status::error);
  EXPECT_EQ(r.error, protocol_errc::bad_bulk_length);
  r = parse("*1\r\n$3x\r\nabc\r\n");
  ASSERT_EQ(r.status, parse_status::error);
  EXPECT_EQ(r.error, protocol_errc::bad_bulk_length);
  for (std::string in : {"*1\r\n$3", "*1\r\n$3\r", "*1\r\n$12345", "*1\r\n$0\r\n\r"})
    EXPECT_EQ(parse(in).status, parse_status::incomplete) << in;
  r = parse("*1\r\n$0\r\n\r\n");
  ASSERT_EQ(r.status, parse_status::complete);
  EXPECT_EQ(p.args()[0], "");
}

TEST(RespParser, NonPrintableUnexpectedByteIsEscaped) {
  request_parser p;
  std::string buf = "*1\r\n\x01";
  auto r = p.parse(buf.data(), buf.size());
  ASSERT_EQ(r.status, parse_status::error);
  EXPECT_EQ(p.error_text(r.error), "Protocol error: expected '$', got '\\x01'");
}

TEST(RespParser, CaseInsensitiveNames) {
  EXPECT_TRUE(equals_upper("tally.record", "TALLY.RECORD"));
  EXPECT_TRUE(equals_upper("Ping", "PING"));
  EXPECT_FALSE(equals_upper("pin", "PING"));
  EXPECT_FALSE(equals_upper("pinG!", "PING!?"));
}
