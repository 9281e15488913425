// actors/stage2_io.cpp — see stage2_io.hpp.
#include "actors/stage2_io.hpp"

#include "adapters/pg_schema.hpp"
#include "core/log.hpp"

namespace tally {

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

} // namespace tally
