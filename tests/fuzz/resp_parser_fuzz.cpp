// tests/fuzz/resp_parser_fuzz.cpp — libFuzzer target for the RESP request
// parser (core/resp_parser).
//
// Properties, beyond "no sanitizer finding":
//  * a complete request consumes at least one byte and no more than it was
//    given, and every argument view lies inside the input or the parser's
//    own scratch space (never past the buffer: libFuzzer's input is an exact
//    heap allocation, so ASan also catches any read beyond it);
//  * the parser keeps no state between calls: the request's own bytes alone
//    parse to the same request, and a strict prefix of them is incomplete;
//  * the arguments, written back as a multibulk request, parse to the same
//    arguments (what the connection sees does not depend on the framing);
//  * the whole input parses request by request to its end or to an error,
//    each step moving forward.
#include "core/resp_parser.hpp"
#include "tests/fuzz/fuzz_check.hpp"

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

using namespace tally::resp;

namespace {

bool within(std::string_view v, const char* begin, size_t size) {
  return v.data() >= begin && v.data() + v.size() <= begin + size;
}

std::string as_multibulk(const std::vector<std::string>& args) {
  std::string out = "*" + std::to_string(args.size()) + "\r\n";
  for (const auto& a : args)
    out += "$" + std::to_string(a.size()) + "\r\n" + a + "\r\n";
  return out;
}

std::vector<std::string> copy_args(const request_parser& p) {
  return std::vector<std::string>(p.args().begin(), p.args().end());
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* bytes, size_t size) {
  // Small limits so that the fuzzer reaches every limit error quickly.
  parse_limits limits;
  limits.max_args = 16;
  limits.max_bulk_bytes = 64;
  limits.max_inline_bytes = 128;
  request_parser parser(limits);
  const char* data = reinterpret_cast<const char*>(bytes);

  size_t offset = 0;
  while (offset < size) {
    const char* start = data + offset;
    size_t left = size - offset;
    parse_result r = parser.parse(start, left);
    if (r.status == parse_status::error) {
      FUZZ_CHECK(r.error != protocol_errc::none);
      FUZZ_CHECK(!parser.error_text(r.error).empty());
      break;
    }
    if (r.status == parse_status::incomplete)
      break;
    FUZZ_CHECK(r.consumed >= 1);
    FUZZ_CHECK(r.consumed <= left);
    FUZZ_CHECK(parser.args().size() <= limits.max_args);
    for (std::string_view a : parser.args())
      FUZZ_CHECK(within(a, start, r.consumed) || !within(a, start, left));
    std::vector<std::string> args = copy_args(parser);

    // The request's bytes alone, in an exact-size allocation of their own.
    std::vector<char> own(start, start + r.consumed);
    request_parser again(limits);
    parse_result r2 = again.parse(own.data(), own.size());
    FUZZ_CHECK(r2.status == parse_status::complete);
    FUZZ_CHECK(r2.consumed == r.consumed);
    FUZZ_CHECK(copy_args(again) == args);
    for (size_t cut : {r.consumed - 1, r.consumed / 2}) {
      if (cut == 0 || cut >= r.consumed)
        continue;
      std::vector<char> prefix(start, start + cut);
      parse_result rp = again.parse(prefix.data(), prefix.size());
      FUZZ_CHECK(rp.status != parse_status::complete);
    }

    // The same arguments, framed as multibulk, within limits that fit them.
    parse_limits roomy;
    roomy.max_args = 1u << 20;
    roomy.max_bulk_bytes = 1u << 20;
    request_parser reframed(roomy);
    std::string wire = as_multibulk(args);
    parse_result r3 = reframed.parse(wire.data(), wire.size());
    FUZZ_CHECK(r3.status == parse_status::complete);
    FUZZ_CHECK(r3.consumed == wire.size());
    FUZZ_CHECK(copy_args(reframed) == args);

    offset += r.consumed;
  }
  return 0;
}
