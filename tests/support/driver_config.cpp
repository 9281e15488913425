// tests/support/driver_config.cpp — see driver_config.hpp.
#include "tests/support/driver_config.hpp"

#include "runtime/options.hpp"
#include "tests/harness/servers.hpp"

namespace tally::testing {

std::string finish_driver_config(config& cfg, const std::vector<std::pair<std::string, std::string>>& opts) {
  if (cfg.state_dir.empty())
    cfg.state_dir = temp_dir("tally-state-");
  if (opts.empty())
    return {};
  daemon_options d;
  d.runtime = cfg;
  for (const auto& [name, value] : opts) {
    const auto* spec = find_option(name);
    if (!spec)
      return "unknown option " + name;
    if (auto err = apply_option(d, *spec, value, "--opt"); !err.empty())
      return err;
  }
  cfg = d.runtime;
  return {};
}

std::pair<std::string, std::string> split_opt(const std::string& text) {
  auto eq = text.find('=');
  return {text.substr(0, eq), eq == std::string::npos ? std::string() : text.substr(eq + 1)};
}

} // namespace tally::testing
