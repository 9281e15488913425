// adapters/redis_sentinel.hpp — finds the current primary of a database
// managed by Redis Sentinel (a `redis+sentinel://` URL).
//
// Sentinel only answers "who is the primary now"; the caller connects to
// that address itself and asks again after a failure (a failover moves the
// primary, and its old address may keep answering as a master for a while).
// Blocking, on the plain redis_client; no hiredis type appears here.
#pragma once

#include "adapters/redis_client.hpp"
#include "core/result.hpp"

#include <chrono>

namespace tally::adapters {

/// Asks the Sentinels of `spec`, in the order listed, for the current primary
/// of spec.master_name (SENTINEL get-master-addr-by-name), AUTHing with
/// spec.sentinel_password when set. A Sentinel that cannot be reached, refuses,
/// times out or answers nil (does not know the master) is skipped; the first
/// address named wins. Then connects to that address with the spec's
/// credentials and db and checks with ROLE that it really is a master (a
/// Sentinel may briefly name a demoted node during a failover).
///
/// Blocking. Each step (TCP connect, AUTH, the command) is bounded by
/// `timeout`, for every Sentinel and for the primary; host name lookup
/// (getaddrinfo) is not bounded. Returns the primary's endpoint (spec.endpoint
/// with host and port filled in). Errors are redis_errc::connect_failed with
/// a message naming every Sentinel tried and why it gave no answer, or the
/// address named and why it is not usable (no other Sentinel is asked then:
/// they share one view, and the caller retries); redis_errc::bad_url when
/// `spec` is not a Sentinel database.
result<redis_endpoint> resolve_sentinel_primary(const redis_database_spec& spec,
                                                std::chrono::milliseconds timeout);

} // namespace tally::adapters
