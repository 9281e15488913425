// actors/redis_fleet.cpp — see redis_fleet.hpp.
#include "actors/redis_fleet.hpp"

#include "core/log.hpp"

#include <caf/all.hpp>

#include <thread>

namespace tally {

const fleet_db* fleet_view::find(uint32_t id) const noexcept {
  for (const auto& db : dbs)
    if (db.id == id)
      return &db;
  return nullptr;
}

fleet_view_ptr redis_fleet::view() const {
  std::lock_guard<std::mutex> guard{mutex_};
  return view_;
}

void redis_fleet::publish(fleet_view_ptr v) {
  std::lock_guard<std::mutex> guard{mutex_};
  generation_.store(v->generation, std::memory_order_release);
  view_ = std::move(v);
}

void redis_fleet::set_failover(caf::actor failover) {
  std::lock_guard<std::mutex> guard{mutex_};
  failover_ = std::move(failover);
}

caf::actor redis_fleet::failover() const {
  std::lock_guard<std::mutex> guard{mutex_};
  return failover_;
}

void redis_fleet::report(uint32_t db, bool ok) const {
  if (auto f = failover())
    caf::anon_send(f, cmd_atom::value, db, ok);
}

void redis_fleet::await_first_verdicts(std::chrono::steady_clock::time_point until) const {
  for (;;) {
    auto v = view();
    if ((!v->dbs.empty() && !v->judging()) || std::chrono::steady_clock::now() >= until)
      return;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

bool redis_link::ensure() {
  uint64_t gen = fleet_->generation();
  if (client && client->connected() && gen == generation_)
    return true;
  auto v = fleet_->view();
  const fleet_db* active = v->active_db();
  if (gen != generation_ || !active || !connected_db_ || *connected_db_ != active->id) {
    client.reset();
    connected_db_.reset();
    display_.clear();
  }
  generation_ = v->generation;
  std::string why;
  if (!active || !active->endpoint) {
    why = "no healthy redis database";
  } else {
    if (client && client->connected())
      return true;
    auto c = adapters::redis_client::connect(*active->endpoint, timeout_);
    if (c) {
      if (!failure_.empty() || display_ != active->spec.display)
        TALLY_INFO(component_.c_str(), "using redis " << active->spec.display);
      failure_.clear();
      client.emplace(std::move(*c));
      connected_db_ = active->id;
      display_ = active->spec.display;
      return true;
    }
    // Not reported to the failure detector: a refused or timed-out connect
    // is what the health checks see on their own, and callers retry
    // connects far more often than they run logical commands.
    why = c.error().message;
  }
  if (why != failure_)
    TALLY_WARN(component_.c_str(), why);
  failure_ = why;
  return false;
}

} // namespace tally
