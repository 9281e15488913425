// runtime/runtime.cpp — starting and stopping the actor system and every actor.
#include "tally/tally.hpp"

#include "actors/aggregator.hpp"
#include "actors/atoms.hpp"
#include "actors/buffer_writer.hpp"
#include "actors/failover.hpp"
#include "actors/flush_supervisor.hpp"
#include "actors/ingest.hpp"
#include "actors/invalidator.hpp"
#include "actors/reader.hpp"
#include "actors/registry.hpp"
#include "actors/resp_backend.hpp"
#include "actors/retention.hpp"
#include "adapters/flush_sql.hpp"
#include "adapters/redis_client.hpp"
#include "adapters/spill_journal.hpp"
#include "core/circuit_breaker.hpp"
#include "core/log.hpp"
#include "core/read_cache.hpp"
#include "runtime/options.hpp"
#include "runtime/runtime_internal.hpp"

#include <caf/all.hpp>
#include <caf/io/middleman.hpp>

#include <cstdlib>
#include <mutex>
#include <set>
#include <thread>
#include <unistd.h>

namespace tally {

struct runtime::impl {
  config cfg;
  std::string instance;
  std::unique_ptr<caf::actor_system_config> system_config;  // outlives the system
  std::unique_ptr<caf::actor_system> system;
  std::unique_ptr<ingest_state> ingest;
  std::unique_ptr<redis_fleet> fleet;  // outlives every actor that reads it
  std::vector<caf::actor> aggregators;
  caf::actor failover;
  caf::actor retention;
  caf::actor registry;
  caf::actor writer;
  caf::actor flush;  // the flush supervisor; null without postgres_url
  // The read path, with a postgres_url. The cache outlives every actor
  // (the writer and retention use it until they stop).
  std::unique_ptr<read_cache> cache;
  std::mutex readers_mu;  // a miss picks a reader while stop() may let them go
  std::vector<caf::actor> readers;
  caf::actor invalidator;
  std::string journal_dir;
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

/// Where the spill journal lives: the option, else what systemd's
/// StateDirectory= exports, else the XDG state directory, else a per-user
/// directory under /tmp (a plain run must work without any setup).
std::string resolve_state_dir(const std::string& configured) {
  if (!configured.empty())
    return configured;
  if (const char* sd = std::getenv("STATE_DIRECTORY"); sd && *sd) {
    std::string first(sd);
    return first.substr(0, first.find(':'));  // systemd lists several with ':'
  }
  if (const char* xdg = std::getenv("XDG_STATE_HOME"); xdg && *xdg)
    return std::string(xdg) + "/tally";
  if (const char* home = std::getenv("HOME"); home && *home)
    return std::string(home) + "/.local/state/tally";
  return "/tmp/tally-" + std::to_string(getuid());
}

void report_recovery(const adapters::spill_journal& j) {
  const auto& r = j.recovery();
  if (r.tail_truncated)
    TALLY_ERROR("runtime", "spill journal " << j.path() << ": " << r.tail_reason << "; cut " << r.truncated_bytes
                           << " bytes, kept the " << r.records << " records before it");
  if (r.records > 0)
    TALLY_INFO("runtime", "spill journal " << j.path() << " holds " << r.records
                          << " batches; they are replayed once a redis database is healthy");
}

/// Opens this instance's journal and adopts the journals of earlier
/// processes of the namespace (an instance id with a pid changes every
/// start) that no live process holds. "" or why not.
std::string open_journals(runtime::impl& p, const config& cfg, journal_set& out) {
  auto own_path = adapters::journal_path(p.journal_dir, cfg.ns, p.instance);
  auto own = adapters::spill_journal::open(own_path, cfg.journal_max_bytes);
  // An instance starting beside us in the same state_dir may hold our new
  // file for a moment: it looks at every journal it finds, and gives back
  // one without records at once (below). A live owner holds it for good.
  auto patience = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (!own && own.error().code == static_cast<int>(adapters::journal_errc::locked)
         && std::chrono::steady_clock::now() < patience) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    own = adapters::spill_journal::open(own_path, cfg.journal_max_bytes);
  }
  if (!own)
    return "option state_dir: cannot open the spill journal " + own_path + ": " + own.error().message;
  report_recovery(*own);
  auto found = adapters::list_journals(p.journal_dir, cfg.ns);
  if (!found)
    return "option state_dir: cannot list " + p.journal_dir + ": " + found.error().message;
  for (const auto& path : *found) {
    if (path == own_path)
      continue;
    auto j = adapters::spill_journal::open(path, UINT64_MAX);
    if (!j) {
      if (j.error().code != static_cast<int>(adapters::journal_errc::locked))
        TALLY_ERROR("runtime", "spill journal " << path << " left alone: " << j.error().message);
      continue;  // locked: a live instance owns it
    }
    if (j->empty()) {
      // Nothing to replay: an earlier process's leftover, or the new file
      // of an instance starting right now (which waits for the lock). Gone
      // while still locked, so that instance makes itself a fresh one.
      (void)j->remove();
      continue;
    }
    report_recovery(*j);
    out.adopted.push_back(std::move(*j));
  }
  out.own.emplace(std::move(*own));
  return {};
}

uint64_t journal_tails_cut(const journal_set& js) {
  uint64_t n = js.own && js.own->recovery().tail_truncated ? 1 : 0;
  for (const auto& j : js.adopted)
    n += j.recovery().tail_truncated ? 1 : 0;
  return n;
}

/// Rows of own unflushed batches the read path keeps (190-270 bytes each,
/// measured: the batch's delta and the row's overlay entry, so about 70 MB
/// at most); past it reads see own events only once flushed, and a counter
/// says so.
constexpr size_t read_ledger_max_rows = size_t{1} << 18;

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
  // An idle CAF worker polls its queue, then sleeps 50 us at a time for up
  // to 25 ms ("moderate" polling), then waits on a condition variable.
  // Aggregators under load take a turn every millisecond (linger_interval),
  // which kept the workers in that 50 us loop for good: a fifth of a core
  // in wake-ups, taken from whatever shares the box. Skipping it, a worker
  // waits on the condition variable at once; a message to it then costs
  // its sender a futex wake, which the linger makes rare on the hot path.
  p.system_config->set("work-stealing.moderate-poll-attempts", size_t{0});
  if (with_io)
    p.system_config->load<caf::io::middleman>();
  p.system = std::make_unique<caf::actor_system>(*p.system_config);
  p.journal_dir = resolve_state_dir(cfg.state_dir);
  auto journals = std::make_shared<journal_set>();
  if (auto err = open_journals(p, cfg, *journals); !err.empty()) {
    p.system.reset();
    return err;
  }
  p.ingest = std::make_unique<ingest_state>(cfg, shards);
  for (auto& s : p.ingest->shards) {
    s->aggregator = spawn_aggregator(*p.system, *p.ingest, *s);
    p.aggregators.push_back(s->aggregator);
  }
  p.ingest->counters.journal_truncated.store(journal_tails_cut(*journals));
  p.fleet = std::make_unique<redis_fleet>();
  p.failover = spawn_failover(*p.system, cfg, *p.fleet, p.ingest->counters);
  // The actors spawned below start with the active database chosen: an
  // operator's first TALLY.INSTANCES or flush does not find "no healthy
  // redis database" only because the process is a millisecond old. One
  // probe decides a first verdict; bounded by a Sentinel lookup plus that
  // probe's timeout (a refused connect is a verdict at once).
  p.fleet->await_first_verdicts(std::chrono::steady_clock::now() + cfg.redis_timeout + cfg.health_check_timeout);
  auto ctx = std::make_shared<flush_context>(cfg, p.instance, *p.ingest, *p.fleet);
  // Retention and the registry run on every instance: a producer-only one
  // needs retention most (nobody else would repair a Redis that lost its
  // batches) and must be visible in the registry.
  p.retention = spawn_retention(*p.system, ctx);
  p.registry = spawn_registry(*p.system, ctx);
  p.writer = spawn_buffer_writer(*p.system, *p.ingest, p.aggregators, p.instance, *p.fleet, p.retention,
                                 std::move(journals));
  p.ingest->writer = p.writer;
  if (!cfg.postgres_url.empty()) {
    p.flush = spawn_flush_supervisor(*p.system, ctx);
    p.cache = std::make_unique<read_cache>(cfg.read_cache_entries, cfg.read_cache_ttl,
                                           read_ledger_max_rows);
    p.ingest->cache = p.cache.get();
    for (uint32_t i = 0; i < cfg.read_connections; ++i)
      p.readers.push_back(spawn_reader(*p.system, ctx, *p.cache));
    p.invalidator = spawn_invalidator(*p.system, ctx, *p.cache);
  }
  p.running = true;
  TALLY_INFO("runtime", "started instance " << p.instance << " (namespace " << cfg.ns << ", "
                        << shards << " shards, spill journal in " << p.journal_dir << ")");
  return {};
}

} // namespace

std::string validate(const config& c) {
  if (c.ns.empty() || c.ns.size() > 64 || c.ns.find_first_of("{}: \t\r\n") != std::string::npos)
    return "option ns: 1-64 characters without braces, colons or spaces";
  if (c.instance_id.size() > 128 || c.instance_id.find_first_of(": \t\r\n") != std::string::npos)
    return "option instance_id: at most 128 characters without colons or spaces";
  if (c.redis_urls.empty())
    return "option redis_urls: at least one Redis URL is needed";
  std::set<std::string> seen;
  for (auto& url : c.redis_urls) {
    auto spec = adapters::parse_redis_database(url);
    if (!spec)
      return "option redis_urls: '" + url + "': " + spec.error().message;
    if (!seen.insert(spec->url).second)
      return "option redis_urls: " + spec->display + " is listed twice";
  }
  // Every bound lives in the options table (runtime/options.cpp), the one
  // place an option is described: each numeric option is read back as text
  // and parsed by its row, which checks the bounds. Only rules across
  // options, and checks no single row can make, stay here.
  if (auto err = check_option_bounds(c); !err.empty())
    return err;
  if (c.retry_backoff_max < c.retry_backoff_min)
    return "option retry_backoff_max: not below retry_backoff_min";
  probe_policy policy;
  if (!parse_probe_policy(c.health_check_policy, policy))
    return "option health_check_policy: one of all, majority, any";
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

namespace {

class runtime_resp_backend final : public resp_backend {
public:
  explicit runtime_resp_backend(runtime& rt) : rt_(rt) {}

  field_error record(const event& ev) noexcept override {
    auto* p = rt_.internals();
    if (!p->running)
      return {errc::stopped, field::none};
    return p->ingest->record(ev, false);
  }

  void wake() noexcept override {
    auto* p = rt_.internals();
    if (p->running)
      p->ingest->wake_mine();
  }

  field_error record_all(const event* evs, size_t n, size_t& failed) noexcept override {
    auto* p = rt_.internals();
    if (!p->running) {
      failed = n;
      return {errc::stopped, field::none};
    }
    return p->ingest->record_all(evs, n, failed);
  }

  void durable_fence(std::function<void(errc)> done) override {
    auto* p = rt_.internals();
    if (!p->running) {
      done(errc::stopped);
      return;
    }
    p->ingest->durable_fence([done = std::move(done)](field_error e) { done(e.code); });
  }

  read_result get(std::string_view type, std::string_view id, std::string_view scope) override {
    return rt_.get(type, id, scope);
  }
  read_result mget(std::string_view type, const std::vector<std::string>& ids, std::string_view team) override {
    return rt_.mget(type, ids, team);
  }
  cluster_view cluster() override { return rt_.cluster(); }
  std::vector<redis_database_status> redis_databases() override { return rt_.redis_databases(); }
  std::string add_redis_database(const std::string& url, uint32_t weight) override {
    return rt_.add_redis_database(url, weight);
  }
  std::string remove_redis_database(const std::string& url) override { return rt_.remove_redis_database(url); }
  std::string set_redis_weight(const std::string& url, uint32_t weight) override {
    return rt_.set_redis_weight(url, weight);
  }
  std::string promote_redis_database(const std::string& url) override {
    return rt_.promote_redis_database(url);
  }
  stats snapshot() override { return rt_.snapshot(); }
  uint64_t interned_ids() override {
    auto* p = rt_.internals();
    return p->ingest ? p->ingest->ids.size() : 0;
  }

private:
  runtime& rt_;
};

} // namespace

std::shared_ptr<resp_backend> make_resp_backend(runtime& rt) {
  return std::make_shared<runtime_resp_backend>(rt);
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

field_error runtime::record_durable(const event& ev, std::function<void(field_error)> done) {
  if (!impl_->running) {
    done({errc::stopped, field::none});
    return {errc::stopped, field::none};
  }
  return impl_->ingest->record_durable(ev, std::move(done));
}

void runtime::stop(std::chrono::milliseconds deadline) {
  auto& p = *impl_;
  if (!p.running)
    return;
  // One deadline for the whole stop, stage 1 and stage 2.
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
  // After stage 1 drained: finish or roll back the flush in progress
  // (draining what is left while leading), release the lease by
  // compare-and-delete, deregister, then exit.
  if (p.flush) {
    caf::scoped_actor self{*p.system};
    self->request(p.flush, caf::infinite, fstop_atom::value, static_cast<int64_t>(stop_until.count()))
      .receive([&](bool) {},
               [&](caf::error& err) { TALLY_ERROR("runtime", "flush stop failed: " << caf::to_string(err)); });
    caf::anon_send_exit(p.flush, caf::exit_reason::user_shutdown);
    p.flush = nullptr;
  }
  {
    caf::scoped_actor self{*p.system};
    self->request(p.registry, std::chrono::seconds(5), fstop_atom::value)
      .receive([&](bool) {}, [&](caf::error&) {});
  }
  for (auto& a : p.aggregators)
    caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
  {
    // The handles must go before the system: a detached actor's thread
    // waits until the last reference to its actor is gone.
    std::lock_guard<std::mutex> lock(p.readers_mu);
    for (auto& r : p.readers)
      caf::anon_send_exit(r, caf::exit_reason::user_shutdown);
    p.readers.clear();
  }
  if (p.invalidator) {
    caf::anon_send_exit(p.invalidator, caf::exit_reason::user_shutdown);
    p.invalidator = nullptr;
  }
  for (auto* a : {&p.writer, &p.registry, &p.retention, &p.failover}) {
    caf::anon_send_exit(*a, caf::exit_reason::user_shutdown);
    *a = nullptr;
  }
  p.fleet->set_failover(nullptr);
  for (auto& s : p.ingest->shards)
    s->aggregator = nullptr;
  p.ingest->writer = nullptr;
  p.aggregators.clear();
  p.system.reset();  // waits for every actor
  stats st;
  p.ingest->add_counters(st);
  TALLY_INFO("runtime", "stopped instance " << p.instance << ": " << st.events_accepted
                        << " events accepted, " << st.batches_written << " batches written"
                        << (st.journal_batches ? ", " + std::to_string(st.journal_batches)
                                                   + " in the spill journal (replayed at the next start)"
                                               : std::string())
                        << (all_written ? "" : ", SOME BATCHES NOT WRITTEN"));
  p.running = false;
  p.stopped = true;
}

const std::string& runtime::instance_id() const noexcept {
  return impl_->instance;
}

std::vector<redis_database_status> runtime::redis_databases() const {
  std::vector<redis_database_status> out;
  if (!impl_->fleet)
    return out;
  auto view = impl_->fleet->view();
  for (size_t i = 0; i < view->dbs.size(); ++i) {
    const auto& db = view->dbs[i];
    redis_database_status s;
    s.url = db.spec.display;
    s.weight = db.spec.weight;
    s.state = to_string(db.state);
    s.active = static_cast<int>(i) == view->active;
    if (db.endpoint)
      s.address = db.endpoint->host + ":" + std::to_string(db.endpoint->port);
    s.last_error = db.last_error;
    s.opens = db.opens;
    out.push_back(std::move(s));
  }
  return out;
}

namespace {

/// One management request to the failover actor; "" or why it was refused.
template <class... Ts>
std::string ask_failover(runtime::impl& p, Ts&&... xs) {
  if (!p.running || !p.failover)
    return "tally is not running";
  std::string answer = "the failover actor did not answer";
  caf::scoped_actor self{*p.system};
  self->request(p.failover, std::chrono::seconds(10), std::forward<Ts>(xs)...)
    .receive([&](std::string& reply) { answer = std::move(reply); },
             [&](caf::error& err) { answer = "failover: " + caf::to_string(err); });
  return answer;
}

} // namespace

std::string runtime::add_redis_database(const std::string& url, uint32_t weight) {
  return ask_failover(*impl_, dbadd_atom::value, url, weight);
}

std::string runtime::remove_redis_database(const std::string& url) {
  return ask_failover(*impl_, dbremove_atom::value, url);
}

std::string runtime::set_redis_weight(const std::string& url, uint32_t weight) {
  return ask_failover(*impl_, dbweight_atom::value, url, weight);
}

std::string runtime::promote_redis_database(const std::string& url) {
  return ask_failover(*impl_, dbpromote_atom::value, url);
}

std::string runtime::set_redis_databases(const std::vector<std::string>& urls) {
  return ask_failover(*impl_, dbset_atom::value, urls);
}

cluster_view runtime::cluster() const {
  auto& p = *impl_;
  cluster_view v;
  if (!p.running || !p.registry) {
    v.error = "tally is not running";
    return v;
  }
  auto reply = std::make_shared<std::promise<cluster_view>>();
  auto answer = reply->get_future();
  caf::anon_send(p.registry, cluster_atom::value, reply);
  // The registry reads Redis: give it a few command timeouts.
  auto timeout = 3 * p.cfg.redis_timeout + std::chrono::seconds(1);
  if (answer.wait_for(timeout) != std::future_status::ready) {
    v.error = "the registry did not answer within " + std::to_string(timeout.count()) + " ms";
    return v;
  }
  try {
    return answer.get();
  } catch (const std::future_error&) {  // the registry stopped with the request unanswered
    v.error = "tally is stopping";
    return v;
  }
}

namespace {

bool known_entity_type(std::string_view t) {
  for (const char* e : entity_types)
    if (t == e)
      return true;
  return false;
}

/// "" when `text` may be an id; else why not, naming it `what`.
std::string id_problem(std::string_view text, const char* what) {
  if (text.size() > max_id_bytes)
    return std::string(what) + " is longer than " + std::to_string(max_id_bytes) + " bytes";
  if (check_id(text) != errc::ok)
    return std::string(what) + " must be 1-" + std::to_string(max_id_bytes)
           + " bytes of UTF-8 without control characters";
  return {};
}

read_result refuse(read_result::status code, std::string why) {
  read_result r;
  r.code = code;
  r.error = std::move(why);
  return r;
}

entity_totals totals_of(adapters::spend_key&& k, const cached_totals& v) {
  entity_totals t;
  t.entity_type = std::move(k.type);
  t.scope = std::move(k.scope);
  t.entity_id = std::move(k.id);
  t.spend = adapters::format_nano_units(v.values.spend);
  t.prompt_tokens = v.values.prompt_tokens;
  t.completion_tokens = v.values.completion_tokens;
  t.cache_read_tokens = v.values.cache_read_tokens;
  t.cache_creation_tokens = v.values.cache_creation_tokens;
  t.requests = v.values.requests;
  t.successful_requests = v.values.successful_requests;
  t.failed_requests = v.values.failed_requests;
  t.found = v.found;
  return t;
}

/// Answers from the cache when every row is there (no lock, no message);
/// else hands the job to the reader its first missing row hashes to, so
/// concurrent misses of one row meet at one reader.
read_result read_rows(runtime::impl& p, std::vector<adapters::spend_key> keys) {
  if (!p.running)
    return refuse(read_result::status::unavailable, "tally is not running");
  if (!p.cache)
    return refuse(read_result::status::unavailable,
                  "reads need a postgres_url: this instance has no Postgres to read totals from");
  std::vector<entity_key> hashed;
  hashed.reserve(keys.size());
  std::vector<cached_totals> values(keys.size());
  std::optional<size_t> first_miss;
  for (size_t i = 0; i < keys.size(); ++i) {
    hashed.push_back(make_entity_key(keys[i].type, keys[i].scope, keys[i].id));
    if (auto hit = p.cache->lookup(hashed[i]))
      values[i] = *hit;
    else if (!first_miss)
      first_miss = i;
  }
  if (first_miss) {
    auto job = std::make_shared<read_job>();
    job->keys = keys;
    job->hashed = std::move(hashed);
    auto answer = job->done.get_future();
    {
      std::lock_guard<std::mutex> lock(p.readers_mu);
      if (p.readers.empty())
        return refuse(read_result::status::unavailable, "tally is stopping");
      caf::anon_send(p.readers[job->hashed[*first_miss].lo % p.readers.size()], read_atom::value, job);
    }
    job.reset();  // the reader's copy is the last: a stop breaks the promise
    auto timeout = p.cfg.read_timeout;
    if (answer.wait_for(timeout) != std::future_status::ready)
      return refuse(read_result::status::unavailable,
                    "postgres did not answer within read_timeout (" + std::to_string(timeout.count()) + " ms)");
    read_job_result r;
    try {
      r = answer.get();
    } catch (const std::future_error&) {
      return refuse(read_result::status::unavailable, "tally is stopping");
    }
    if (!r.error.empty())
      return refuse(read_result::status::unavailable, r.error);
    values = std::move(r.values);
  }
  read_result out;
  out.entities.reserve(keys.size());
  for (size_t i = 0; i < keys.size(); ++i)
    out.entities.push_back(totals_of(std::move(keys[i]), values[i]));
  return out;
}

std::string scope_problem(std::string_view type, std::string_view scope) {
  if (type == "team_member")
    return scope.empty() ? "team_member rows need the team id as scope" : id_problem(scope, "scope");
  return scope.empty() ? std::string() : "a scope is only for team_member rows";
}

} // namespace

namespace {

template <class Ids>
read_result read_checked(runtime::impl& p, std::string_view entity_type, const Ids& ids, std::string_view scope) {
  if (!known_entity_type(entity_type))
    return refuse(read_result::status::bad_request,
                  "unknown entity type '" + std::string(entity_type.substr(0, 64))
                    + "': one of key, user, team, team_member, org, end_user, tag");
  if (std::size(ids) == 0 || std::size(ids) > max_mget_ids)
    return refuse(read_result::status::bad_request,
                  "between 1 and " + std::to_string(max_mget_ids) + " ids per read");
  if (auto why = scope_problem(entity_type, scope); !why.empty())
    return refuse(read_result::status::bad_request, why);
  std::vector<adapters::spend_key> keys;
  keys.reserve(std::size(ids));
  for (const auto& id : ids) {
    if (auto why = id_problem(id, "id"); !why.empty())
      return refuse(read_result::status::bad_request, why);
    keys.push_back({std::string(entity_type), std::string(scope), std::string(id)});
  }
  return read_rows(p, std::move(keys));
}

} // namespace

read_result runtime::get(std::string_view entity_type, std::string_view id, std::string_view scope) const {
  std::string_view one[1] = {id};
  return read_checked(*impl_, entity_type, one, scope);
}

read_result runtime::mget(std::string_view entity_type, const std::vector<std::string>& ids,
                          std::string_view scope) const {
  return read_checked(*impl_, entity_type, ids, scope);
}

stats runtime::snapshot() const noexcept {
  stats st;
  if (impl_->ingest)
    impl_->ingest->add_counters(st);
  if (auto* cache = impl_->cache.get()) {
    auto& c = cache->counters();
    st.read_hits = c.hits.load();
    st.read_misses = c.misses.load();
    st.read_queries = c.queries.load();
    st.read_fills = c.fills.load();
    st.read_stale_fills = c.stale_fills.load();
    st.read_invalidated = c.invalidated.load();
    st.read_invalidate_all = c.invalidate_all.load();
    st.read_evictions = c.evictions.load();
    st.read_entries = cache->entries();
    st.read_ledger_batches = cache->ledger_batches();
    st.read_ledger_overflow = c.ledger_overflow.load();
    st.read_subscribed = cache->enabled() ? 1 : 0;
    st.last_invalidation_ms = c.last_invalidation_ms.load();
  }
  return st;
}

} // namespace tally
