// tests/support/driver_config.hpp — the settings the test's instance
// processes (tally_driver, flush_node) share: any tallyd option by name, and
// a spill-journal directory of their own.
#pragma once

#include "tally/tally.hpp"

#include <string>
#include <utility>
#include <vector>

namespace tally::testing {

/// Applies `opts` (NAME, VALUE pairs given as --opt NAME=VALUE) to `cfg`
/// through tallyd's options table (same parsing and bounds as tallyd), and
/// gives the process a fresh state_dir unless a test named one (to restart
/// on the same journal): a journal must never be adopted by another test.
/// Returns "" or what is wrong.
std::string finish_driver_config(config& cfg, const std::vector<std::pair<std::string, std::string>>& opts);

/// Splits "NAME=VALUE" (the argument of --opt).
std::pair<std::string, std::string> split_opt(const std::string& text);

} // namespace tally::testing
