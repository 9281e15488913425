// actors/stage2_io.hpp — connection helpers the stage-2 actors share.
//
// Each stage-2 actor owns its own blocking Redis and Postgres connections
// (one thread each, never shared). These helpers (re)connect them lazily and
// log a failure once per streak, not once per retry.
#pragma once

#include "actors/flush_context.hpp"
#include "adapters/pg_client.hpp"
#include "adapters/redis_client.hpp"

#include <chrono>
#include <optional>
#include <random>
#include <string>

namespace tally {

/// A lazily connected Redis client for one actor. The first configured
/// database that answers is used (multi-database failover is the failover
/// actor's job, not this one's).
struct redis_link {
  std::optional<adapters::redis_client> client;
  std::string failure;  // last connect failure logged, to log once per streak

  /// Connects if needed; false (and logged) when no database answers.
  bool ensure(const flush_context& ctx, const char* component);
  /// Runs one command; a transport failure drops the client.
  result<adapters::redis_reply> run(const std::vector<std::string_view>& argv);
};

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

/// Exponential backoff with jitter between min and max.
class backoff {
public:
  backoff(std::chrono::milliseconds min, std::chrono::milliseconds max) : min_(min), max_(max) {}
  /// The next delay: doubled each call, capped, plus up to 25 % jitter.
  std::chrono::milliseconds next();
  void reset() noexcept { current_ = std::chrono::milliseconds{0}; }

private:
  std::chrono::milliseconds min_, max_, current_{0};
  std::mt19937_64 rng_{std::random_device{}()};
};

} // namespace tally
