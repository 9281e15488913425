// actors/flush_supervisor.cpp — see flush_supervisor.hpp.
#include "actors/flush_supervisor.hpp"

#include "actors/flusher.hpp"
#include "actors/lease.hpp"
#include "actors/pruner.hpp"
#include "core/backoff.hpp"
#include "core/log.hpp"

#include <caf/all.hpp>

#include <array>

namespace tally {

namespace {

using namespace std::chrono;

enum child : int { lease_child = 0, flusher_child = 1, pruner_child = 2, child_count = 3 };
constexpr const char* child_names[child_count] = {"lease", "flusher", "pruner"};

struct supervisor_state {
  static inline const char* name = "flush_supervisor";
  flush_context_ptr ctx;
  std::array<caf::actor, child_count> children;
  // Restart delays per child: 100 ms doubling to 5 s, reset after a quiet minute.
  std::vector<backoff> restart_delay{child_count, backoff(milliseconds(100), milliseconds(5000))};
  std::array<int64_t, child_count> last_crash{};
  bool leading = false;
  uint64_t epoch = 0;
  bool stopping = false;
};

using supervisor_actor = caf::stateful_actor<supervisor_state, caf::event_based_actor>;

void start_child(supervisor_actor* self, int which) {
  auto& st = self->state;
  switch (which) {
    case lease_child:
      st.children[which] = spawn_lease(self, st.ctx);
      break;
    case flusher_child:
      st.children[which] = spawn_flusher(self, st.ctx);
      if (st.leading)
        self->send(st.children[which], lead_atom::value, st.epoch);
      break;
    case pruner_child:
      st.children[which] = spawn_pruner(self, st.ctx);
      if (st.leading)
        self->send(st.children[which], lead_atom::value, st.epoch);
      break;
  }
}

int child_of(supervisor_actor* self, const caf::actor_addr& source) {
  for (int i = 0; i < child_count; ++i)
    if (self->state.children[i] && self->state.children[i].address() == source)
      return i;
  return -1;
}

void follow(supervisor_actor* self) {
  auto& st = self->state;
  if (!st.leading)
    return;
  st.leading = false;
  for (int c : {flusher_child, pruner_child})
    if (st.children[c])
      self->send(st.children[c], follow_atom::value);
}

void finish_stop(supervisor_actor* self, caf::response_promise rp, bool ok) {
  auto& st = self->state;
  for (auto& c : st.children)
    if (c)
      self->send_exit(c, caf::exit_reason::user_shutdown);
  st.children = {};
  st.ctx->counters->lease_held.store(0);
  rp.deliver(ok);
  self->quit(caf::exit_reason::user_shutdown);
}

// Steps 2-3 of the stop sequence (header); each step runs even if an earlier
// one failed, so the lease is released whatever the flusher reports.
void stop_children(supervisor_actor* self, caf::response_promise rp, int64_t deadline) {
  auto& st = self->state;
  auto budget = milliseconds(std::max<int64_t>(deadline - wall_ms(), 0)) + seconds(5);
  auto release_and_deregister = [=](bool drained) {
    auto& s = self->state;
    if (!s.children[lease_child])
      return finish_stop(self, rp, drained);
    self->request(s.children[lease_child], seconds(5), release_atom::value)
      .then([=](bool) { finish_stop(self, rp, drained); },
            [=](caf::error& err) {
              TALLY_WARN("flush_supervisor", "lease release failed: " << caf::to_string(err));
              finish_stop(self, rp, drained);
            });
  };
  if (!st.children[flusher_child])
    return release_and_deregister(false);
  self->request(st.children[flusher_child], budget, fstop_atom::value, deadline)
    .then([=](bool drained) { release_and_deregister(drained); },
          [=](caf::error& err) {
            TALLY_WARN("flush_supervisor", "flusher did not stop cleanly: " << caf::to_string(err));
            release_and_deregister(false);
          });
}

caf::behavior flush_supervisor(supervisor_actor* self, flush_context_ptr ctx) {
  auto& st = self->state;
  st.ctx = std::move(ctx);
  self->set_exit_handler([=](caf::exit_msg& msg) {
    auto& s = self->state;
    int which = child_of(self, msg.source);
    if (which < 0) {  // a shutdown request aimed at us
      self->quit(msg.reason);
      return;
    }
    s.children[which] = nullptr;
    if (which == lease_child) {
      // Nobody renews the lease any more: stop flushing now.
      s.ctx->lease_valid_until.store(0);
      s.ctx->counters->lease_held.store(0);
      follow(self);
    }
    if (s.stopping)
      return;
    int64_t now = steady_ms();
    if (now - s.last_crash[which] > 60000)
      s.restart_delay[which].reset();
    s.last_crash[which] = now;
    auto delay = s.restart_delay[which].next();
    TALLY_ERROR("flush_supervisor", child_names[which] << " actor died (" << caf::to_string(msg.reason)
                                                       << "); restarting it in " << delay.count() << " ms");
    self->delayed_send(self, delay, restart_atom::value, which);
  });
  for (int i = 0; i < child_count; ++i)
    start_child(self, i);
  return {
    [=](lease_atom, bool held, uint64_t epoch) {
      auto& s = self->state;
      if (self->current_sender() != s.children[lease_child].address())
        return;
      if (s.stopping) {
        // A stopping leader that took the lease again (a new epoch) drains
        // on under it: the flusher's stop path adopts the epoch itself, and
        // a fence of the old epoch must not drop the new lease.
        if (held && s.leading)
          s.epoch = epoch;
        return;
      }
      if (held) {
        s.leading = true;
        s.epoch = epoch;
        for (int c : {flusher_child, pruner_child})
          if (s.children[c])
            self->send(s.children[c], lead_atom::value, epoch);
      } else {
        follow(self);
      }
    },
    [=](fenced_atom, uint64_t fenced_epoch, uint64_t database_epoch) {
      auto& s = self->state;
      // The fence may have been raised by this instance's own newer lease:
      // after a Redis restart the lease actor can take the lease again (a
      // new epoch) while the flusher still runs a transaction of the old
      // one. That lease is valid and the flusher already has a lead_atom for
      // it queued; dropping it would leave the flusher leading without a
      // lease, its inflight list stranded.
      if (fenced_epoch != s.epoch) {
        TALLY_INFO("flush_supervisor", "stale fence of epoch " << fenced_epoch << " ignored: epoch "
                                       << s.epoch << " is held now");
        return;
      }
      TALLY_WARN("flush_supervisor", "epoch " << fenced_epoch << " fenced by epoch " << database_epoch
                                     << ": giving up the lease");
      follow(self);
      if (s.children[lease_child])
        self->send(s.children[lease_child], drop_atom::value);
    },
    [=](restart_atom, int which) {
      auto& s = self->state;
      if (!s.stopping && !s.children[which]) {
        TALLY_INFO("flush_supervisor", "restarting the " << child_names[which] << " actor");
        start_child(self, which);
      }
    },
    [=](fstop_atom, int64_t deadline) -> caf::result<bool> {
      auto& s = self->state;
      auto rp = self->make_response_promise();
      if (s.stopping)
        return false;
      s.stopping = true;
      // Maintenance can wait for the next leader; the drain cannot.
      if (s.children[pruner_child])
        self->send(s.children[pruner_child], follow_atom::value);
      if (s.leading || !s.children[lease_child]) {
        stop_children(self, rp, deadline);
        return rp;
      }
      // The last instance to stop should still flush what is left in Redis.
      self->request(s.children[lease_child], seconds(10), acquire_atom::value)
        .then(
          [=](uint64_t epoch) {
            auto& s2 = self->state;
            if (epoch != 0 && s2.children[flusher_child]) {
              s2.leading = true;
              s2.epoch = epoch;
              self->send(s2.children[flusher_child], lead_atom::value, epoch);
            }
            stop_children(self, rp, deadline);
          },
          [=](caf::error&) { stop_children(self, rp, deadline); });
      return rp;
    },
  };
}

} // namespace

caf::actor spawn_flush_supervisor(caf::actor_system& sys, flush_context_ptr ctx) {
  return sys.spawn(flush_supervisor, std::move(ctx));
}

} // namespace tally
