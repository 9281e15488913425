// actors/resp_backend.hpp — what the RESP layer asks of the rest of tally.
//
// The RESP connection records events, reads totals and serves operator
// commands through this interface, never through tally::runtime: the
// actors library then has no link-time dependency on the runtime library
// above it, and the RESP layer can be run against a stand-in backend (a
// benchmark of parsing and replies alone, bench/resp_listener.cpp --null).
// The runtime's implementation is make_resp_backend (runtime_internal.hpp).
//
// Threads: record, record_all and durable_fence are called on the broker's
// thread (the CAF multiplexer) for every request and must not block; the
// others are operator or read commands and may wait (bounded).
#pragma once

#include "tally/tally.hpp"

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace tally {

class resp_backend {
public:
  virtual ~resp_backend() = default;

  /// Validates, interns and enqueues one event (runtime::record), without
  /// waking the aggregator: the connection calls wake() once per read.
  virtual field_error record(const event& ev) noexcept = 0;

  /// Wakes the aggregator that this thread's records went to.
  virtual void wake() noexcept = 0;

  /// All or nothing: enqueues every event of [evs, evs + n) in order, or
  /// none. On refusal `failed` is the index of the refused event, or n when
  /// the batch as a whole was refused (backpressure, stopping).
  virtual field_error record_all(const event* evs, size_t n, size_t& failed) noexcept = 0;

  /// Calls `done` once every event this thread recorded before the call is
  /// in Redis (errc::ok) or cannot be (the reason). `done` runs on another
  /// tally thread, never inside this call.
  virtual void durable_fence(std::function<void(errc)> done) = 0;

  virtual read_result get(std::string_view entity_type, std::string_view id, std::string_view scope) = 0;
  virtual read_result mget(std::string_view entity_type, const std::vector<std::string>& ids,
                           std::string_view team) = 0;
  virtual cluster_view cluster() = 0;
  virtual std::vector<redis_database_status> redis_databases() = 0;
  /// The changes answer "" on success, else why not.
  virtual std::string add_redis_database(const std::string& url, uint32_t weight) = 0;
  virtual std::string remove_redis_database(const std::string& url) = 0;
  virtual std::string set_redis_weight(const std::string& url, uint32_t weight) = 0;
  virtual std::string promote_redis_database(const std::string& url) = 0;
  virtual stats snapshot() = 0;
  /// Distinct ids interned so far (INFO's keyspace line).
  virtual uint64_t interned_ids() = 0;
};

} // namespace tally
