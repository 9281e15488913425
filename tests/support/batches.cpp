// tests/support/batches.cpp — see batches.hpp.
#include "tests/support/batches.hpp"

#include "adapters/batch_codec.hpp"
#include "adapters/redis_client.hpp"

#include <stdexcept>

namespace tally::testing {

void add_batch_rows(rollup_rows& out, const adapters::batch& b) {
  for (const auto& t : b.tables) {
    auto& dst = out[t.name];
    for (const auto& r : t.rows) {
      auto& row = dst[r.keys];
      if (row.empty())
        row.assign(r.values.size(), 0);
      for (size_t i = 0; i < r.values.size(); ++i)
        row[i] += r.values[i];
    }
  }
}

stage1_contents read_stage1(const std::string& redis_url, const std::string& ns) {
  auto ep = adapters::parse_redis_url(redis_url);
  if (!ep)
    throw std::runtime_error("bad redis url " + redis_url);
  auto client = adapters::redis_client::connect(*ep, std::chrono::milliseconds(5000));
  if (!client)
    throw std::runtime_error("redis: " + client.error().message);
  auto reply = client->command({"LRANGE", "{tally:" + ns + "}:batches", "0", "-1"});
  if (!reply)
    throw std::runtime_error("LRANGE: " + reply.error().message);
  stage1_contents out;
  rows_accumulator rows;
  for (auto& item : reply->elements) {
    auto b = adapters::decode_batch(item.str);
    if (!b) {
      out.errors.push_back(b.error().message);
      continue;
    }
    ++out.batches;
    out.rows_in_batches += b->row_count();
    if (!out.ids.insert(b->id).second)
      out.duplicate_ids.push_back(b->id);
    for (const auto& t : b->tables)
      for (const auto& r : t.rows)
        rows.add(t.name, r.keys, r.values);
  }
  out.rows = rows.take();
  return out;
}

} // namespace tally::testing
