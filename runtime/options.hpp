// runtime/options.hpp — tallyd's options: one declarative table.
//
// Every option tallyd has (the runtime's tally::config, the RESP listener's
// resp_options, the HTTP endpoint, the log level and the config file path) is
// one row of option_table(): name, kind, default, bounds, unit, help and
// whether it can change while tallyd runs. That same table drives
//
//   * the TOML config file   (`tallyd --config FILE`, key = the name),
//   * environment variables  (TALLY_ + the name in upper case),
//   * command-line flags     (-- + the name with '-' for '_'),
//   * `tallyd --help` and the sample config (`--print-sample-config`),
//
// as Redis's standardConfig drives redis.conf, CONFIG SET and its docs.
// Precedence: defaults < file < environment < flags. The defaults come from
// the table too (parsed by the same code as any other value), so the table
// is the one place an option is described.
//
// Conventions an operator sees:
//   * durations are strings with a unit: "250ms", "1s", "5m", "2h", "7d";
//     a bare number is refused (is 1000 seconds or milliseconds?);
//   * lists (redis_urls) are TOML arrays in the file and comma-separated in
//     the environment and on the command line;
//   * an empty string disables what the option names where the help says so
//     (postgres_url = "" runs this instance without stage 2).
//
// Errors are values (style.md point 2): every function returns an empty
// string on success, else one line naming the option and where its value
// came from.
#pragma once

#include "actors/resp_server.hpp"
#include "tally/tally.hpp"

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace tally {

/// Everything tallyd is configured with.
struct daemon_options {
  config runtime;                 // the embedded runtime (tally.hpp)
  resp_options resp;              // the RESP ingest listener
  std::string http_bind;          // operations endpoint: /metrics /healthz /readyz
  uint16_t http_port = 0;
  std::string log_level;          // debug | info | warn | error | off
  std::string config_file;        // TOML file read before the environment
};

/// How an option's text is read and checked.
enum class option_kind : uint8_t {
  text,      // any string (checked by the option's own rule, if any)
  list,      // strings: TOML array, or comma-separated text
  integer,   // unsigned decimal integer within [min, max]
  duration,  // "<n><unit>" with unit ms|s|m|h|d, within [min, max] milliseconds
  choice,    // one of the words in `choices`
};

/// One row of the table.
struct option_spec {
  std::string name;              // TOML key; flag --name-with-dashes; env TALLY_NAME
  option_kind kind = option_kind::text;
  std::string section;           // heading in the sample config and --help
  std::string default_text;      // parsed like any other value
  int64_t min = 0;               // integer: value; duration: milliseconds
  int64_t max = 0;
  std::string unit;              // integer: what is counted; duration: finest unit accepted
  std::vector<std::string> choices;  // choice only
  bool runtime_changeable = false;   // applied on SIGHUP without a restart
  bool file_allowed = true;          // false: only environment and flag (config)
  bool secret = false;               // --print-config shows "<set>" instead of the value
  std::string help;
  /// Parses `text` into the option's field; returns "" or what is wrong
  /// with the value (without the option's name).
  std::function<std::string(daemon_options&, const std::string& text)> set;
  /// The option's current value as text that `set` accepts.
  std::function<std::string(const daemon_options&)> get;

  std::string flag() const;      // --resp-port
  std::string env() const;       // TALLY_RESP_PORT
  /// The value as TOML (quoted string, integer or array).
  std::string toml_value(const daemon_options& o) const;
  /// One line for --help: bounds, unit, default, env variable.
  std::string describe() const;
};

/// The table, in sample-config order.
const std::vector<option_spec>& option_table();

/// The row named `name`, or nullptr.
const option_spec* find_option(const std::string& name);

/// Checks every numeric option of `c` against its row's bounds (the only
/// place they are written); runtime::start's validate() calls it, so an
/// embedding program meets the same bounds as tallyd. "" or the first
/// option out of bounds.
std::string check_option_bounds(const config& c);

/// The defaults of every option, parsed from the table.
daemon_options default_options();

/// Sets one option from text; the error names the option and `origin`
/// (e.g. "flag --resp-port", "TALLY_RESP_PORT", "tallyd.toml:12").
std::string apply_option(daemon_options& o, const option_spec& spec, const std::string& text,
                         const std::string& origin);

/// Reads a TOML file into `o`. Unknown keys, tables and values of the wrong
/// TOML type are errors naming the key and line.
std::string apply_config_file(daemon_options& o, const std::string& path, bool only_runtime_changeable = false);

/// Applies every TALLY_<NAME> variable present in `env` (a name -> value map,
/// see environment_variables()).
std::string apply_environment(daemon_options& o, const std::map<std::string, std::string>& env,
                              bool only_runtime_changeable = false);

/// The TALLY_* variables of this process's environment.
std::map<std::string, std::string> environment_variables();

/// Checks what one option cannot check alone: tally::validate(runtime), the
/// bind addresses, the log level, and that the RESP and HTTP ports differ.
std::string validate(const daemon_options& o);

/// The fully commented sample config (scripts/tallyd.sample.toml).
std::string sample_config();

/// The effective options as TOML (what `tallyd --print-config` prints).
std::string effective_config(const daemon_options& o);

/// Parses "250ms", "1s", "5m", "2h", "7d" into milliseconds; false if malformed.
bool parse_duration_ms(const std::string& text, int64_t& out_ms);
/// Formats milliseconds with the largest unit that divides them ("1s", "7d").
std::string format_duration_ms(int64_t ms);

/// Result of parsing argv: what to do next.
struct command_line {
  enum class action { run, exit_ok, exit_error } what = action::run;
  std::string output;            // --help / --print-sample-config / --print-config text, or the error
  bool print_config = false;     // --print-config: print effective options and exit
  std::map<std::string, std::string> flags;  // option name -> text given on the command line
};

/// Parses tallyd's command line with CLI11; the flags come from the table.
command_line parse_command_line(int argc, char** argv);

/// The whole precedence chain: defaults < file (flag --config or
/// TALLY_CONFIG) < environment < flags, then validate(). Returns "" or one
/// line naming the option.
std::string load_options(daemon_options& out, const command_line& cl,
                         const std::map<std::string, std::string>& env);

} // namespace tally
