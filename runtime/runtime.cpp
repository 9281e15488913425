// runtime/runtime.cpp — starting and stopping the actor system and every actor.
#include "tally/tally.hpp"

#include "actors/aggregator.hpp"
#include "actors/atoms.hpp"
#include "actors/buffer_writer.hpp"
#include "actors/flush_supervisor.hpp"  // stage 2 (issue 3)
#include "actors/ingest.hpp"
#include "adapters/redis_client.hpp"
#include "core/log.hpp"
#include "runtime/runtime_internal.hpp"

#include <caf/all.hpp>
#include <caf/io/middleman.hpp>

#include <thread>
#include <unistd.h>

namespace tally {

struct runtime::impl {
  config cfg;
  std::string instance;
  std::unique_ptr<caf::actor_system_config> system_config;  // outlives the system
  std::unique_ptr<caf::actor_system> system;
  std::unique_ptr<ingest_state> ingest;
  std::vector<caf::actor> aggregators;
  caf::actor writer;
  caf::actor flush;  // stage 2 (issue 3): flush supervisor; null without postgres_url
  bool running = false;
  bool stopped = false;
};

namespace {

std::string default_instance_id() {
  char host[256] = {0};
  if (gethostname(host, sizeof host - 1) != 0)
    std::snprintf(host, sizeof host, "host");
  return std::string(host) + "-" + std::to_string(getpid());
}

template <class Rep, class Period>
bool within(std::chrono::duration<Rep, Period> d, std::chrono::milliseconds lo, std::chrono::milliseconds hi) {
  return d >= lo && d <= hi;
}

std::string start_impl(runtime::impl& p, const config& cfg, bool with_io) {
  if (p.running || p.stopped)
    return "runtime: start called twice";
  if (auto err = validate(cfg); !err.empty())
    return err;
  p.cfg = cfg;
  p.instance = cfg.instance_id.empty() ? default_instance_id() : cfg.instance_id;
  uint32_t cores = std::max(1u, std::thread::hardware_concurrency());
  uint32_t shards = cfg.shards != 0 ? cfg.shards : cores;
  p.system_config = std::make_unique<caf::actor_system_config>();
  p.system_config->set("scheduler.max-threads", static_cast<size_t>(cfg.worker_threads != 0 ? cfg.worker_threads : cores));
  if (with_io)
    p.system_config->load<caf::io::middleman>();
  p.system = std::make_unique<caf::actor_system>(*p.system_config);
  p.ingest = std::make_unique<ingest_state>(cfg, shards);
  for (auto& s : p.ingest->shards) {
    s->aggregator = spawn_aggregator(*p.system, *p.ingest, *s);
    p.aggregators.push_back(s->aggregator);
  }
  p.writer = spawn_buffer_writer(*p.system, *p.ingest, p.aggregators, p.instance);
  p.ingest->writer = p.writer;
  // --- stage 2 (issue 3): the flush supervisor, when there is a Postgres to flush to.
  if (!cfg.postgres_url.empty())
    p.flush = spawn_flush_supervisor(*p.system, *p.ingest, p.instance);
  // --- end stage 2
  p.running = true;
  TALLY_INFO("runtime", "started instance " << p.instance << " (namespace " << cfg.ns << ", "
                        << shards << " shards)");
  return {};
}

} // namespace

std::string validate(const config& c) {
  using std::chrono::milliseconds;
  if (c.ns.empty() || c.ns.size() > 64 || c.ns.find_first_of("{}: \t\r\n") != std::string::npos)
    return "option ns: 1-64 characters without braces, colons or spaces";
  if (c.instance_id.size() > 128 || c.instance_id.find_first_of(": \t\r\n") != std::string::npos)
    return "option instance_id: at most 128 characters without colons or spaces";
  if (c.redis_urls.empty())
    return "option redis_urls: at least one Redis URL is needed";
  for (auto& url : c.redis_urls)
    if (auto ep = adapters::parse_redis_url(url); !ep)
      return "option redis_urls: '" + url + "': " + ep.error().message;
  if (c.shards > 256)
    return "option shards: at most 256";
  if (c.queue_capacity < 1024 || c.queue_capacity > (1u << 26))
    return "option queue_capacity: between 1024 and 67108864";
  if (c.max_keys_per_shard < 1024 || c.max_keys_per_shard > (1u << 26))
    return "option max_keys_per_shard: between 1024 and 67108864";
  if (c.intern_capacity < 1024 || c.intern_capacity > (1u << 30))
    return "option intern_capacity: between 1024 and 1073741824";
  if (c.worker_threads > 256)
    return "option worker_threads: at most 256";
  if (!within(c.buffer_interval, milliseconds(10), milliseconds(60000)))
    return "option buffer_interval: between 10ms and 60s";
  if (c.max_batch_bytes < 4096 || c.max_batch_bytes > (256u << 20))
    return "option max_batch_bytes: between 4096 and 268435456";
  if (c.max_pending_batches < 1)
    return "option max_pending_batches: at least 1";
  if (!within(c.redis_timeout, milliseconds(1), milliseconds(60000)))
    return "option redis_timeout: between 1ms and 60s";
  if (c.retry_backoff_min.count() < 1 || c.retry_backoff_max < c.retry_backoff_min)
    return "option retry_backoff_min/max: min at least 1ms and max not below min";
  if (!within(c.flush_interval, milliseconds(10), milliseconds(600000)))
    return "option flush_interval: between 10ms and 10min";
  if (!within(c.lease_ttl, milliseconds(500), milliseconds(600000)))
    return "option lease_ttl: between 500ms and 10min";
  if (c.lock_timeout.count() < 1 || c.statement_timeout.count() < 1)
    return "option lock_timeout/statement_timeout: at least 1ms";
  if (c.applied_retention.count() < 1)
    return "option applied_retention: at least 1h";
  if (c.repush_after < milliseconds(1000))
    return "option repush_after: at least 1s";
  return {};
}

runtime::runtime() : impl_(std::make_unique<impl>()) {}

runtime::~runtime() {
  stop();
}

std::string runtime::start(const config& cfg) {
  return start_impl(*impl_, cfg, false);
}

std::string start_with_io(runtime& rt, const config& cfg) {
  return start_impl(*rt.internals(), cfg, true);
}

caf::actor_system& system_of(runtime& rt) {
  return *rt.internals()->system;
}

field_error runtime::record(const event& ev) noexcept {
  if (!impl_->running)
    return {errc::stopped, field::none};
  return impl_->ingest->record(ev);
}

std::future<field_error> runtime::record_durable(const event& ev) {
  auto promise = std::make_shared<std::promise<field_error>>();
  auto future = promise->get_future();
  record_durable(ev, [promise](field_error e) { promise->set_value(e); });
  return future;
}

void runtime::record_durable(const event& ev, std::function<void(field_error)> done) {
  if (!impl_->running) {
    done({errc::stopped, field::none});
    return;
  }
  impl_->ingest->record_durable(ev, std::move(done));
}

void runtime::stop(std::chrono::milliseconds deadline) {
  auto& p = *impl_;
  if (!p.running)
    return;
  // stage 2 (issue 3): one deadline for the whole stop, stage 1 and stage 2.
  auto stop_until = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::system_clock::now().time_since_epoch()) + deadline;
  p.ingest->close();  // from here on record() says errc::stopped
  bool all_written = false;
  {
    caf::scoped_actor self{*p.system};
    auto until = std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::system_clock::now().time_since_epoch()) + deadline;
    self->request(p.writer, caf::infinite, drain_atom::value, static_cast<int64_t>(until.count()))
      .receive([&](bool ok) { all_written = ok; },
               [&](caf::error& err) { TALLY_ERROR("runtime", "drain failed: " << caf::to_string(err)); });
  }
  // --- stage 2 (issue 3): after stage 1 drained, finish or roll back the
  // flush in progress (draining what is left while leading), release the
  // lease by compare-and-delete, deregister, then exit.
  if (p.flush) {
    caf::scoped_actor self{*p.system};
    self->request(p.flush, caf::infinite, fstop_atom::value, static_cast<int64_t>(stop_until.count()))
      .receive([&](bool) {},
               [&](caf::error& err) { TALLY_ERROR("runtime", "flush stop failed: " << caf::to_string(err)); });
    caf::anon_send_exit(p.flush, caf::exit_reason::user_shutdown);
    p.flush = nullptr;
  }
  // --- end stage 2
  for (auto& a : p.aggregators)
    caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(p.writer, caf::exit_reason::user_shutdown);
  for (auto& s : p.ingest->shards)
    s->aggregator = nullptr;
  p.ingest->writer = nullptr;
  p.aggregators.clear();
  p.writer = nullptr;
  p.system.reset();  // waits for every actor
  stats st;
  p.ingest->add_counters(st);
  TALLY_INFO("runtime", "stopped instance " << p.instance << ": " << st.events_accepted
                        << " events accepted, " << st.batches_written << " batches written"
                        << (all_written ? "" : ", SOME BATCHES NOT WRITTEN"));
  p.running = false;
  p.stopped = true;
}

const std::string& runtime::instance_id() const noexcept {
  return impl_->instance;
}

stats runtime::snapshot() const noexcept {
  stats st;
  if (impl_->ingest)
    impl_->ingest->add_counters(st);
  return st;
}

} // namespace tally
