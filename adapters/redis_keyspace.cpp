// adapters/redis_keyspace.cpp — see redis_keyspace.hpp.
#include "adapters/redis_keyspace.hpp"

#include <algorithm>
#include <map>

namespace tally::adapters {

namespace {

// Why scripts: Redis runs a script atomically and logs it whole to the AOF,
// so a multi-step change (marker + push, move between lists) is never seen,
// or persisted, half done.

// KEYS[1] batches, KEYS[2] the batch's written-marker; ARGV[1] the encoded
// batch, ARGV[2] the marker TTL in ms. 1 = pushed, 0 = already known.
constexpr const char* push_script =
  "if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then "
  "redis.call('LPUSH', KEYS[1], ARGV[1]) return 1 end return 0";
// A day outlives any sane retry streak; the Postgres dedup table (kept for
// applied_retention) is what guarantees exactly once beyond it.
constexpr const char* marker_ttl_ms = "86400000";

// KEYS[1] batches, KEYS[2] inflight; ARGV[1] max batches in flight, ARGV[2]
// max bytes to move. Writers LPUSH, so the right end is the oldest: take it
// and push onto the inflight list's left, keeping its right end the oldest.
// Returns {moved, left}.
constexpr const char* claim_script =
  "local have = redis.call('LLEN', KEYS[2]) local moved, bytes = 0, 0 "
  "while have + moved < tonumber(ARGV[1]) and bytes < tonumber(ARGV[2]) do "
  "local v = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') "
  "if not v then break end moved = moved + 1 bytes = bytes + string.len(v) end "
  "return {moved, redis.call('LLEN', KEYS[1])}";

// KEYS[1] inflight, KEYS[2] deadletter; ARGV[1] the encoded batch.
constexpr const char* deadletter_script =
  "if redis.call('LREM', KEYS[1], 1, ARGV[1]) > 0 then redis.call('LPUSH', KEYS[2], ARGV[1]) return 1 end "
  "return 0";

// KEYS[1] an inflight list, KEYS[2] batches: everything back, the oldest
// ending up where the next claim takes first. Returns how many.
constexpr const char* return_script =
  "local n = 0 while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do n = n + 1 end return n";

// KEYS[1] record, KEYS[2] inflight, KEYS[3] batches, KEYS[4] instances;
// ARGV[1] the id. A clean stop: whatever its inflight list still holds (its
// flusher could not hand it back, say Redis timed out under load) goes back
// to batches before the id leaves the set, because a leader's orphan scan
// only visits ids in the set. Returns how many went back.
constexpr const char* deregister_script =
  "local n = 0 while redis.call('LMOVE', KEYS[2], KEYS[3], 'LEFT', 'RIGHT') do n = n + 1 end "
  "redis.call('DEL', KEYS[1]) redis.call('SREM', KEYS[4], ARGV[1]) return n";

// KEYS[1] the instance's record, KEYS[2] its inflight, KEYS[3] batches,
// KEYS[4] instances; ARGV[1] its id. -1 while it is alive; else its inflight
// list goes back to batches, it leaves the set, and the count is returned.
constexpr const char* orphan_script =
  "if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end local n = 0 "
  "while redis.call('LMOVE', KEYS[2], KEYS[3], 'LEFT', 'RIGHT') do n = n + 1 end "
  "redis.call('SREM', KEYS[4], ARGV[1]) return n";

// KEYS[1] lease; ARGV[1] our value, ARGV[2] ttl ms. 1 renewed, 0 not ours.
constexpr const char* renew_script =
  "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0";
// KEYS[1] lease; ARGV[1] our value. 1 deleted, 0 not ours (left alone).
constexpr const char* release_script =
  "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

// KEYS[1] the record, KEYS[2] instances; ARGV[1] ttl ms, ARGV[2] the id,
// ARGV[3..] field, value, ... The record is rewritten whole, so a field an
// older version wrote does not linger.
constexpr const char* heartbeat_script =
  "redis.call('DEL', KEYS[1]) redis.call('HSET', KEYS[1], unpack(ARGV, 3)) "
  "redis.call('PEXPIRE', KEYS[1], ARGV[1]) redis.call('SADD', KEYS[2], ARGV[2]) return 1";

// KEYS[1] a producer's applied set: read and delete in one step, so an id a
// leader adds meanwhile is neither lost nor read twice.
constexpr const char* take_applied_script =
  "local m = redis.call('SMEMBERS', KEYS[1]) redis.call('DEL', KEYS[1]) return m";

/// Turns a reply of a wrong shape into a protocol error.
error_info bad_reply(const char* what) {
  return error_info{static_cast<int>(redis_errc::protocol), std::string("redis: unexpected reply to ") + what, {}};
}

std::string ms_text(std::chrono::milliseconds d) {
  return std::to_string(std::max<long long>(1, d.count()));
}

int64_t to_int64(const std::string& s) {
  try {
    return std::stoll(s);
  } catch (...) {
    return 0;
  }
}

} // namespace

redis_keyspace::redis_keyspace(const std::string& ns) : prefix_("{tally:" + ns + "}") {}

std::string redis_keyspace::inflight(std::string_view instance) const {
  return prefix_ + ":inflight:" + std::string(instance);
}
std::string redis_keyspace::instance(std::string_view instance) const {
  return prefix_ + ":instance:" + std::string(instance);
}
std::string redis_keyspace::written(std::string_view batch_id) const {
  return prefix_ + ":written:" + std::string(batch_id);
}
std::string redis_keyspace::applied(std::string_view instance) const {
  return prefix_ + ":applied:" + std::string(instance);
}

result<bool> redis_keyspace::push_batch(redis_client& c, std::string_view batch_id, std::string_view bytes) const {
  auto marker = written(batch_id);
  auto r = c.command({"EVAL", push_script, "2", batches(), marker, bytes, marker_ttl_ms});
  if (!r)
    return r.error();
  if (r->type != redis_reply::kind::integer)
    return bad_reply("push_batch");
  return r->integer == 1;
}

status redis_keyspace::push_batch_copy(redis_client& c, std::string_view bytes) const {
  auto r = c.command({"LPUSH", batches(), bytes});
  if (!r)
    return r.error();
  return {};
}

result<long long> redis_keyspace::backlog(redis_client& c) const {
  auto r = c.command({"LLEN", batches()});
  if (!r)
    return r.error();
  if (r->type != redis_reply::kind::integer)
    return bad_reply("LLEN");
  return r->integer;
}

result<redis_keyspace::claim> redis_keyspace::claim_chunk(redis_client& c, std::string_view instance,
                                                          int max_batches, uint64_t max_bytes) const {
  auto r = c.command({"EVAL", claim_script, "2", batches(), inflight(instance), std::to_string(max_batches),
                      std::to_string(max_bytes)});
  if (!r)
    return r.error();
  if (r->type != redis_reply::kind::array || r->elements.size() != 2)
    return bad_reply("claim_chunk");
  return claim{r->elements[0].integer, r->elements[1].integer};
}

result<std::vector<std::string>> redis_keyspace::read_inflight(redis_client& c, std::string_view instance,
                                                               long long count) const {
  auto r = c.command({"LRANGE", inflight(instance), std::to_string(-std::max(1LL, count)), "-1"});
  if (!r)
    return r.error();
  if (r->type != redis_reply::kind::array)
    return bad_reply("LRANGE");
  std::vector<std::string> out;
  out.reserve(r->elements.size());
  for (auto& e : r->elements)
    out.push_back(std::move(e.str));
  return out;
}

status redis_keyspace::ack_chunk(redis_client& c, std::string_view instance, size_t taken) const {
  auto r = c.command({"LTRIM", inflight(instance), "0", std::to_string(-static_cast<long long>(taken) - 1)});
  if (!r)
    return r.error();
  return {};
}

result<bool> redis_keyspace::dead_letter(redis_client& c, std::string_view instance, std::string_view bytes) const {
  auto r = c.command({"EVAL", deadletter_script, "2", inflight(instance), deadletter(), bytes});
  if (!r)
    return r.error();
  return r->integer == 1;
}

result<long long> redis_keyspace::return_inflight(redis_client& c, std::string_view instance) const {
  auto r = c.command({"EVAL", return_script, "2", inflight(instance), batches()});
  if (!r)
    return r.error();
  return r->integer;
}

result<std::vector<redis_keyspace::orphan>> redis_keyspace::return_orphans(redis_client& c,
                                                                          std::string_view self) const {
  auto members = c.command({"SMEMBERS", instances()});
  if (!members)
    return members.error();
  std::vector<orphan> out;
  for (const auto& m : members->elements) {
    if (m.str == self)
      continue;
    auto r = c.command({"EVAL", orphan_script, "4", instance(m.str), inflight(m.str), batches(), instances(), m.str});
    if (!r)
      return r.error();
    if (r->integer >= 0)
      out.push_back({m.str, r->integer});
  }
  return out;
}

result<bool> redis_keyspace::acquire_lease(redis_client& c, std::string_view value,
                                           std::chrono::milliseconds ttl) const {
  auto r = c.command({"SET", lease(), value, "NX", "PX", ms_text(ttl)});
  if (!r)
    return r.error();
  return !r->is_nil();
}

result<bool> redis_keyspace::renew_lease(redis_client& c, std::string_view value,
                                         std::chrono::milliseconds ttl) const {
  auto r = c.command({"EVAL", renew_script, "1", lease(), value, ms_text(ttl)});
  if (!r)
    return r.error();
  return r->integer == 1;
}

result<bool> redis_keyspace::release_lease(redis_client& c, std::string_view value) const {
  auto r = c.command({"EVAL", release_script, "1", lease(), value});
  if (!r)
    return r.error();
  return r->integer == 1;
}

result<std::string> redis_keyspace::lease_holder(redis_client& c) const {
  auto r = c.command({"GET", lease()});
  if (!r)
    return r.error();
  return r->is_nil() ? std::string() : r->str;
}

status redis_keyspace::heartbeat(redis_client& c, const instance_record& rec, std::chrono::milliseconds ttl) const {
  auto pid = std::to_string(rec.pid), started = std::to_string(rec.started_ms),
       beat = std::to_string(rec.heartbeat_ms), events = std::to_string(rec.events_accepted),
       epoch = std::to_string(rec.epoch);
  auto key = instance(rec.id);
  auto ttl_text = ms_text(ttl);
  auto r = c.command({"EVAL", heartbeat_script, "2", key, instances(), ttl_text, rec.id,
                      "host", rec.host, "pid", pid, "version", rec.version, "started_ms", started,
                      "heartbeat_ms", beat, "role", rec.role, "active_db", rec.active_db,
                      "events_accepted", events, "epoch", epoch});
  if (!r)
    return r.error();
  return {};
}

status redis_keyspace::register_instance(redis_client& c, std::string_view id) const {
  auto r = c.command({"SADD", instances(), id});
  if (!r)
    return r.error();
  return {};
}

status redis_keyspace::deregister(redis_client& c, std::string_view id) const {
  auto r = c.command({"EVAL", deregister_script, "4", instance(id), inflight(id), batches(), instances(), id});
  if (!r)
    return r.error();
  return {};
}

result<std::vector<instance_record>> redis_keyspace::read_instances(redis_client& c) const {
  auto members = c.command({"SMEMBERS", instances()});
  if (!members)
    return members.error();
  std::vector<std::string> keys;
  std::vector<std::vector<std::string_view>> cmds;
  keys.reserve(members->elements.size());
  for (const auto& m : members->elements)
    keys.push_back(instance(m.str));
  for (const auto& k : keys)
    cmds.push_back({"HGETALL", k});
  auto replies = c.pipeline(cmds);
  if (!replies)
    return replies.error();
  std::vector<instance_record> out;
  for (size_t i = 0; i < replies->size(); ++i) {
    const auto& fields = (*replies)[i].elements;
    if (fields.empty())
      continue;  // expired since SMEMBERS: not live
    instance_record rec;
    rec.id = members->elements[i].str;
    for (size_t f = 0; f + 1 < fields.size(); f += 2) {
      const auto& name = fields[f].str;
      const auto& value = fields[f + 1].str;
      if (name == "host") rec.host = value;
      else if (name == "pid") rec.pid = static_cast<uint64_t>(to_int64(value));
      else if (name == "version") rec.version = value;
      else if (name == "started_ms") rec.started_ms = to_int64(value);
      else if (name == "heartbeat_ms") rec.heartbeat_ms = to_int64(value);
      else if (name == "role") rec.role = value;
      else if (name == "active_db") rec.active_db = value;
      else if (name == "events_accepted") rec.events_accepted = static_cast<uint64_t>(to_int64(value));
      else if (name == "epoch") rec.epoch = static_cast<uint64_t>(to_int64(value));
    }
    out.push_back(std::move(rec));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
  return out;
}

status redis_keyspace::mark_applied(redis_client& c, const std::vector<std::string>& batch_ids,
                                    std::chrono::milliseconds ttl) const {
  std::map<std::string_view, std::vector<std::string_view>> by_producer;
  for (const auto& id : batch_ids)
    if (auto producer = batch_producer(id); !producer.empty())
      by_producer[producer].push_back(id);
  if (by_producer.empty())
    return {};
  std::vector<std::string> keys;
  keys.reserve(by_producer.size());
  for (const auto& [producer, ids] : by_producer)
    keys.push_back(applied(producer));
  auto ttl_text = ms_text(ttl);
  std::vector<std::vector<std::string_view>> cmds;
  size_t k = 0;
  for (const auto& [producer, ids] : by_producer) {
    std::vector<std::string_view> sadd{"SADD", keys[k]};
    sadd.insert(sadd.end(), ids.begin(), ids.end());
    cmds.push_back(std::move(sadd));
    cmds.push_back({"PEXPIRE", keys[k], ttl_text});
    ++k;
  }
  auto r = c.pipeline(cmds);
  if (!r)
    return r.error();
  for (const auto& reply : *r)
    if (reply.type == redis_reply::kind::error)
      return error_info{static_cast<int>(redis_errc::reply_error), reply.str, {}};
  return {};
}

result<std::vector<std::string>> redis_keyspace::take_applied(redis_client& c, std::string_view instance) const {
  auto r = c.command({"EVAL", take_applied_script, "1", applied(instance)});
  if (!r)
    return r.error();
  if (r->type != redis_reply::kind::array)
    return bad_reply("take_applied");
  std::vector<std::string> out;
  out.reserve(r->elements.size());
  for (auto& e : r->elements)
    out.push_back(std::move(e.str));
  return out;
}

status redis_keyspace::publish_invalidation(redis_client& c, std::string_view message) const {
  auto r = c.command({"PUBLISH", invalidate(), message});
  if (!r)
    return r.error();
  return {};
}

std::string_view batch_producer(std::string_view batch_id) noexcept {
  auto colon = batch_id.rfind(':');
  if (colon == std::string_view::npos || colon == 0)
    return {};
  return batch_id.substr(0, colon);
}

} // namespace tally::adapters
