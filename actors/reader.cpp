// actors/reader.cpp — see reader.hpp.
#include "actors/reader.hpp"

#include "actors/stage2_io.hpp"
#include "core/failpoint.hpp"

#include <caf/all.hpp>

#include <unordered_set>

namespace tally {

namespace {

struct reader_state {
  static inline const char* name = "reader";
  flush_context_ptr ctx;
  read_cache* cache = nullptr;
  pg_link pg;
};

using reader_actor = caf::stateful_actor<reader_state>;

read_job_result run(reader_state& st, read_job& job) {
  read_job_result out;
  out.values.resize(job.keys.size());
  std::vector<size_t> pending;
  for (size_t i = 0; i < job.keys.size(); ++i) {
    // Another job may have filled it while this one waited in the mailbox.
    if (auto hit = st.cache->lookup(job.hashed[i], false))
      out.values[i] = *hit;
    else
      pending.push_back(i);
  }
  for (int round = 0; round < read_attempts && !pending.empty(); ++round) {
    std::string why;
    if (!st.pg.ensure(*st.ctx, "reader", why)) {
      out.error = "postgres unavailable: " + why;
      return out;
    }
    std::vector<read_cache::fill_ticket> tickets;
    std::vector<adapters::spend_key> keys;
    std::vector<std::string> ids;
    std::unordered_set<std::string> asked;
    for (size_t i : pending) {
      tickets.push_back(st.cache->begin_fill(job.hashed[i]));
      keys.push_back(job.keys[i]);
      for (auto& id : tickets.back().pending_ids)
        if (asked.insert(id).second)
          ids.push_back(id);
    }
    st.cache->counters().queries.fetch_add(1, std::memory_order_relaxed);
    auto answer = adapters::read_spend(*st.pg.client, st.ctx->cfg.pg_schema, keys, ids);
    TALLY_FAILPOINT("read_before_install");  // a fill racing an invalidation
    if (!answer) {
      st.cache->abandon_fills(tickets);
      if (answer.error().code == static_cast<int>(adapters::pg_errc::connection_lost)
          || answer.error().code == static_cast<int>(adapters::pg_errc::connect_failed))
        st.pg.client.reset();
      out.error = "postgres read failed: " + answer.error().message;
      return out;
    }
    auto values = st.cache->finish_fills(tickets, answer->rows, answer->applied);
    std::vector<size_t> again;
    for (size_t j = 0; j < pending.size(); ++j) {
      if (values[j])
        out.values[pending[j]] = *values[j];
      else
        again.push_back(pending[j]);
    }
    pending = std::move(again);
  }
  if (!pending.empty())
    out.error = "the read raced " + std::to_string(read_attempts) + " invalidations in a row; try again";
  return out;
}

caf::behavior reader(reader_actor* self, flush_context_ptr ctx, read_cache* cache) {
  self->state.ctx = std::move(ctx);
  self->state.cache = cache;
  return {
    [=](read_atom, read_job_ptr& job) { job->done.set_value(run(self->state, *job)); },
  };
}

} // namespace

caf::actor spawn_reader(caf::actor_system& sys, flush_context_ptr ctx, read_cache& cache) {
  return sys.spawn<caf::detached>(reader, std::move(ctx), &cache);
}

} // namespace tally
