// actors/stage2_io.hpp — the Postgres connection helper the stage-2 actors
// share (their Redis links are redis_fleet.hpp's redis_link).
//
// Each stage-2 actor owns its own blocking connections (one thread each,
// never shared). This helper (re)connects lazily and logs a failure once per
// streak, not once per retry.
#pragma once

#include "actors/flush_context.hpp"
#include "adapters/pg_client.hpp"

#include <chrono>
#include <optional>
#include <string>

namespace tally {

/// A lazily connected Postgres client, with tally's schema migrated once
/// per process lifetime of the link.
struct pg_link {
  std::optional<adapters::pg_client> client;
  bool migrated = false;
  std::string failure;

  /// Connects (and migrates the schema the first time); false when not
  /// possible now; `why` says why.
  bool ensure(const flush_context& ctx, const char* component, std::string& why);
};

} // namespace tally
