// actors/stage2_io.cpp — see stage2_io.hpp.
#include "actors/stage2_io.hpp"

#include "adapters/pg_schema.hpp"
#include "core/log.hpp"

namespace tally {

bool redis_link::ensure(const flush_context& ctx, const char* component) {
  if (client && client->connected())
    return true;
  client.reset();
  std::string why;
  for (const auto& url : ctx.cfg.redis_urls) {
    auto ep = adapters::parse_redis_url(url);
    if (!ep)
      continue;
    auto c = adapters::redis_client::connect(*ep, ctx.cfg.redis_timeout);
    if (c) {
      if (!failure.empty())
        TALLY_INFO(component, "redis reachable again at " << ep->host << ":" << ep->port);
      failure.clear();
      client.emplace(std::move(*c));
      return true;
    }
    why = c.error().message;
  }
  if (why != failure)
    TALLY_WARN(component, "no redis database reachable: " << why);
  failure = why;
  return false;
}

result<adapters::redis_reply> redis_link::run(const std::vector<std::string_view>& argv) {
  auto r = client->command(argv);
  if (!r && r.error().code != static_cast<int>(adapters::redis_errc::reply_error))
    client.reset();
  return r;
}

bool pg_link::ensure(const flush_context& ctx, const char* component, std::string& why) {
  if (!client) {
    auto c = adapters::pg_client::connect(ctx.cfg.postgres_url, ctx.cfg.lock_timeout);
    if (!c) {
      why = c.error().message;
      if (why != failure)
        TALLY_WARN(component, why);
      failure = why;
      return false;
    }
    if (!failure.empty())
      TALLY_INFO(component, "postgres reachable again");
    failure.clear();
    client.emplace(std::move(*c));
  }
  if (!migrated) {
    auto st = adapters::migrate_schema(*client, ctx.cfg.pg_schema);
    if (!st) {
      why = st.error().message;
      if (why != failure)
        TALLY_WARN(component, why);
      failure = why;
      return false;
    }
    migrated = true;
  }
  return true;
}

std::chrono::milliseconds backoff::next() {
  current_ = current_.count() == 0 ? min_ : std::min(max_, current_ * 2);
  auto jitter = std::chrono::milliseconds(rng_() % (current_.count() / 4 + 1));
  return current_ + jitter;
}

} // namespace tally
