// tests/fuzz/options_fuzz.cpp — libFuzzer target for tallyd's option parsing
// (runtime/options): the TOML config file, TALLY_* environment variables and
// command-line flags, all driven by the one options table.
//
// The first input byte picks the source, the rest is its text:
//   0: a TOML config file;
//   1: environment lines NAME=VALUE;
//   2: command-line arguments, one per line.
// Properties:
//  * every source either applies or returns one error line, never throws
//    (toml++ and CLI11 throw; the options code must catch all of it);
//  * whatever was applied round-trips: each option's value as text, set on
//    fresh defaults, is accepted and reads back as the same text (what
//    --print-config and the sample config rely on);
//  * validate() on the result returns without a finding.
#include "runtime/options.hpp"
#include "tests/fuzz/fuzz_check.hpp"

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>
#include <unistd.h>
#include <vector>

using namespace tally;

namespace {

std::vector<std::string> lines_of(std::string_view text) {
  std::vector<std::string> out;
  for (size_t pos = 0; pos < text.size();) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) nl = text.size();
    out.emplace_back(text.substr(pos, nl - pos));
    pos = nl + 1;
  }
  return out;
}

const std::string& config_path() {
  // Never destroyed: the exit handler below still needs it.
  static const std::string* path = [] {
    const char* base = std::getenv("TMPDIR");
    std::string templ = std::string(base && *base ? base : "/tmp") + "/tally-options-fuzz-XXXXXX";
    std::vector<char> buf(templ.begin(), templ.end());
    buf.push_back('\0');
    int fd = ::mkstemp(buf.data());
    if (fd < 0)
      std::abort();
    ::close(fd);
    auto* made = new std::string(buf.data());
    std::atexit([] { ::unlink(config_path().c_str()); });
    return made;
  }();
  return *path;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* bytes, size_t size) {
  if (size == 0)
    return 0;
  std::string_view text(reinterpret_cast<const char*>(bytes) + 1, size - 1);
  daemon_options o = default_options();
  std::string err;
  try {
    switch (bytes[0] % 3) {
      case 0: {
        {
          std::ofstream out(config_path(), std::ios::binary | std::ios::trunc);
          out.write(text.data(), static_cast<std::streamsize>(text.size()));
        }
        err = apply_config_file(o, config_path());
        break;
      }
      case 1: {
        std::map<std::string, std::string> env;
        for (const std::string& line : lines_of(text)) {
          size_t eq = line.find('=');
          if (eq != std::string::npos)
            env[line.substr(0, eq)] = line.substr(eq + 1);
        }
        err = apply_environment(o, env);
        break;
      }
      default: {
        std::vector<std::string> args = lines_of(text);
        args.insert(args.begin(), "tallyd");
        std::vector<char*> argv;
        for (std::string& a : args)
          argv.push_back(a.data());
        argv.push_back(nullptr);
        command_line cl = parse_command_line(static_cast<int>(args.size()), argv.data());
        if (cl.what == command_line::action::exit_error) {
          FUZZ_CHECK(!cl.output.empty());
          return 0;
        }
        if (cl.what == command_line::action::exit_ok)
          return 0;
        for (const auto& [name, value] : cl.flags) {
          const option_spec* spec = find_option(name);
          FUZZ_CHECK(spec != nullptr);
          err = apply_option(o, *spec, value, "flag " + spec->flag());
          if (!err.empty())
            break;
        }
        break;
      }
    }
  } catch (...) {
    FUZZ_CHECK(!"an option parser let an exception escape");
  }
  if (!err.empty())
    return 0;

  for (const option_spec& spec : option_table()) {
    std::string value = spec.get(o);
    daemon_options fresh = default_options();
    std::string again = apply_option(fresh, spec, value, "round trip");
    if (!again.empty())
      std::fprintf(stderr, "option %s: '%s' does not parse back: %s\n", spec.name.c_str(), value.c_str(),
                   again.c_str());
    FUZZ_CHECK(again.empty());
    FUZZ_CHECK(spec.get(fresh) == value);
  }
  (void)validate(o);
  return 0;
}
