// runtime/http_server.cpp — /metrics /healthz /readyz (see http_server.hpp).
#include "runtime/http_server.hpp"

#include "actors/buffer_writer.hpp"  // key_prefix
#include "actors/resp_server.hpp"
#include "adapters/redis_client.hpp"
#include "core/log.hpp"
#include "runtime/metrics.hpp"
#include "runtime/options.hpp"

#include <httplib.h>

#include <atomic>
#include <mutex>
#include <optional>
#include <thread>

namespace tally {

namespace {

/// Sharing one probe between concurrent scrapes; long enough that a scrape
/// storm is one PING, short enough that /readyz follows a Redis outage
/// within a second.
constexpr auto probe_interval = std::chrono::milliseconds(500);

/// One configured Redis database and the connection the probe keeps to it.
struct probed_redis {
  std::string address;  // host:port, for labels and messages (no password)
  std::optional<adapters::redis_endpoint> endpoint;
  std::optional<adapters::redis_client> client;
  std::string last_error;
};

} // namespace

struct ops_http_server::impl {
  runtime& rt;
  config cfg;
  std::string bind;
  uint16_t requested_port = 0;
  std::atomic<uint16_t> bound_port{0};
  std::atomic<bool> stopping{false};
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  httplib::Server server;
  std::thread thread;

  std::mutex probe_mutex;  // guards everything below
  std::vector<probed_redis> redis;
  std::vector<redis_probe_result> last_probe;
  std::chrono::steady_clock::time_point last_probe_at{};

  impl(runtime& r, const daemon_options& o)
    : rt(r), cfg(o.runtime), bind(o.http_bind), requested_port(o.http_port) {
    for (auto& url : cfg.redis_urls) {
      probed_redis p;
      if (auto ep = adapters::parse_redis_url(url)) {
        p.endpoint = *ep;
        p.address = ep->host + ":" + std::to_string(ep->port);
      } else {
        p.address = "unparseable";
      }
      redis.push_back(std::move(p));
    }
  }

  /// PINGs every configured Redis and reads the stage-1 backlog; blocking,
  /// at most once per probe_interval.
  std::vector<redis_probe_result> probe() {
    std::lock_guard<std::mutex> guard{probe_mutex};
    auto now = std::chrono::steady_clock::now();
    if (!last_probe.empty() && now - last_probe_at < probe_interval)
      return last_probe;
    std::string batches_key = key_prefix(cfg.ns) + ":batches";
    std::vector<redis_probe_result> out;
    for (auto& p : redis) {
      redis_probe_result r;
      r.address = p.address;
      if (p.endpoint) {
        if (!p.client) {
          auto c = adapters::redis_client::connect(*p.endpoint, cfg.redis_timeout);
          if (c)
            p.client.emplace(std::move(*c));
          else
            p.last_error = c.error().message;
        }
        if (p.client) {
          auto replies = p.client->pipeline({{"PING"}, {"LLEN", batches_key}});
          if (replies && replies->size() == 2 && replies->at(0).type != adapters::redis_reply::kind::error) {
            r.up = true;
            p.last_error.clear();
            if (replies->at(1).type == adapters::redis_reply::kind::integer) {
              r.backlog_known = true;
              r.backlog = static_cast<uint64_t>(replies->at(1).integer);
            }
          } else {
            p.last_error = replies ? (replies->empty() ? "no reply" : replies->at(0).str) : replies.error().message;
            p.client.reset();  // reconnect at the next probe
          }
        }
      }
      out.push_back(std::move(r));
    }
    last_probe = out;
    last_probe_at = now;
    return out;
  }

  std::string readiness(const std::vector<redis_probe_result>& probed, const stats& st) {
    if (stopping.load())
      return "stopping";
    bool any_up = false;
    std::string why;
    {
      std::lock_guard<std::mutex> guard{probe_mutex};
      for (size_t i = 0; i < probed.size(); ++i) {
        any_up = any_up || probed[i].up;
        if (!probed[i].up && i < redis.size())
          why += (why.empty() ? "" : "; ") + probed[i].address + ": "
                 + (redis[i].last_error.empty() ? "unreachable" : redis[i].last_error);
      }
    }
    if (!any_up)
      return "no Redis reachable (" + why + ")";
    if (st.pending_batches >= cfg.max_pending_batches)
      return "stage-1 writer holds " + std::to_string(st.pending_batches)
             + " unwritten batches (max_pending_batches): ingest is pushing back";
    return {};
  }

  metrics_snapshot gather() {
    metrics_snapshot m;
    m.runtime = rt.snapshot();
    m.resp = snapshot_resp_metrics();
    m.redis = probe();
    m.instance = rt.instance_id();
    m.ns = cfg.ns;
    m.stopping = stopping.load();
    m.ready = readiness(m.redis, m.runtime).empty();
    m.uptime_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    return m;
  }

  void routes() {
    server.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(render_metrics(gather()), "text/plain; version=0.0.4; charset=utf-8");
    });
    server.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("ok\n", "text/plain");
    });
    server.Get("/readyz", [this](const httplib::Request&, httplib::Response& res) {
      auto why = readiness(probe(), rt.snapshot());
      if (why.empty()) {
        res.set_content("ready\n", "text/plain");
      } else {
        res.status = 503;
        res.set_content("not ready: " + why + "\n", "text/plain");
      }
    });
    // Exceptions must not cross into httplib's threads silently: answer 500
    // and log the reason.
    server.set_exception_handler([](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "unknown exception";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      TALLY_ERROR("http", req.path << ": " << what);
      res.status = 500;
      res.set_content("internal error\n", "text/plain");
    });
  }
};

ops_http_server::ops_http_server(runtime& rt, const daemon_options& opts)
  : impl_(std::make_unique<impl>(rt, opts)) {}

ops_http_server::~ops_http_server() {
  stop();
}

std::string ops_http_server::start() {
  auto& p = *impl_;
  p.routes();
  p.server.set_keep_alive_max_count(100);
  p.server.set_read_timeout(std::chrono::seconds(5));
  p.server.set_write_timeout(std::chrono::seconds(5));
  int port = p.requested_port;
  if (port == 0) {
    port = p.server.bind_to_any_port(p.bind);
    if (port < 0)
      return "http listener " + p.bind + ":0: cannot bind";
  } else if (!p.server.bind_to_port(p.bind, port)) {
    return "http listener " + p.bind + ":" + std::to_string(port) + ": cannot bind (port in use?)";
  }
  p.bound_port = static_cast<uint16_t>(port);
  p.thread = std::thread([&p] {
    if (!p.server.listen_after_bind() && !p.stopping.load())
      TALLY_ERROR("http", "listener stopped unexpectedly");
  });
  TALLY_INFO("http", "listening on " << p.bind << ":" << port << " (/metrics /healthz /readyz)");
  return {};
}

uint16_t ops_http_server::port() const noexcept {
  return impl_->bound_port.load();
}

void ops_http_server::set_stopping() noexcept {
  impl_->stopping = true;
}

void ops_http_server::stop() {
  auto& p = *impl_;
  if (!p.thread.joinable())
    return;
  p.stopping = true;
  // httplib's stop() does nothing until listen has begun; a stop right after
  // start() must not leave the thread listening forever.
  for (int i = 0; i < 1000 && !p.server.is_running(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  p.server.stop();
  p.thread.join();
}

std::string ops_http_server::readiness() {
  return impl_->readiness(impl_->probe(), impl_->rt.snapshot());
}

} // namespace tally
