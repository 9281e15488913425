// runtime/http_server.cpp — /metrics /healthz /readyz (see http_server.hpp).
#include "runtime/http_server.hpp"

#include "actors/resp_server.hpp"
#include "core/log.hpp"
#include "runtime/metrics.hpp"
#include "runtime/options.hpp"

#include <httplib.h>

#include <atomic>
#include <type_traits>
#include <cstdio>
#include <mutex>
#include <optional>
#include <thread>

namespace tally {

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

  impl(runtime& r, const daemon_options& o)
    : rt(r), cfg(o.runtime), bind(o.http_bind), requested_port(o.http_port) {}

  std::string readiness(const std::vector<redis_database_status>& dbs, const stats& st) {
    if (stopping.load())
      return "stopping";
    bool active = std::any_of(dbs.begin(), dbs.end(), [](const auto& d) { return d.active; });
    if (!active && st.journal_full)
      return "no Redis database is healthy and the spill journal is full (journal_max_bytes): ingest is "
             "pushing back";
    if (st.pending_batches >= cfg.max_pending_batches && st.journal_full)
      return "stage-1 writer holds " + std::to_string(st.pending_batches)
             + " unwritten batches and the spill journal is full: ingest is pushing back";
    return {};
  }

  /// What a ready instance adds to "ready" when it persists only locally.
  std::string ready_detail(const std::vector<redis_database_status>& dbs) {
    if (std::any_of(dbs.begin(), dbs.end(), [](const auto& d) { return d.active; }))
      return {};
    std::string why;
    for (const auto& d : dbs)
      why += (why.empty() ? "" : "; ") + d.url + " " + d.state + (d.last_error.empty() ? "" : ": " + d.last_error);
    return " (no Redis database is healthy: batches go to the spill journal; " + why + ")";
  }

  metrics_snapshot gather() {
    metrics_snapshot m;
    m.runtime = rt.snapshot();
    m.resp = snapshot_resp_metrics();
    m.databases = rt.redis_databases();
    m.instance = rt.instance_id();
    m.ns = cfg.ns;
    m.stopping = stopping.load();
    m.ready = readiness(m.databases, m.runtime).empty();
    m.uptime_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    return m;
  }

  /// JSON string: quotes, backslashes and control characters escaped (ids
  /// are validated, but host names and error texts come from elsewhere).
  static void json_string(std::string& out, const std::string& s) {
    out += '"';
    for (unsigned char c : s) {
      if (c == '"' || c == '\\') {
        out += '\\';
        out += static_cast<char>(c);
      } else if (c < 0x20) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\u%04x", c);
        out += buf;
      } else {
        out += static_cast<char>(c);
      }
    }
    out += '"';
  }

  static std::string cluster_json(const cluster_view& v) {
    std::string out = "{";
    auto field = [&](const char* name, bool first = false) {
      if (!first)
        out += ',';
      out += '"';
      out += name;
      out += "\":";
    };
    if (!v.error.empty()) {
      field("error", true);
      json_string(out, v.error);
      return out + "}\n";
    }
    field("leader", true);
    out += '{';
    field("instance", true);
    json_string(out, v.leader);
    field("epoch");
    out += std::to_string(v.epoch);
    out += '}';
    field("read_at_ms");
    out += std::to_string(v.read_at_ms);
    field("instances");
    out += '[';
    for (size_t n = 0; n < v.instances.size(); ++n) {
      out += n ? ",{" : "{";
      bool first = true;
      for_each_field(v.instances[n], [&](const char* name, const auto& value) {
        using T = std::decay_t<decltype(value)>;
        field(name, first);
        first = false;
        if constexpr (std::is_same_v<T, std::string>)
          json_string(out, value);
        else if constexpr (std::is_same_v<T, bool>)
          out += value ? "true" : "false";
        else
          out += std::to_string(value);
      });
      out += '}';
    }
    return out + "]}\n";
  }

  void routes() {
    server.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(render_metrics(gather()), "text/plain; version=0.0.4; charset=utf-8");
    });
    server.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("ok\n", "text/plain");
    });
    server.Get("/v1/instances", [this](const httplib::Request&, httplib::Response& res) {
      auto v = rt.cluster();
      if (!v.error.empty())
        res.status = 503;
      res.set_content(cluster_json(v), "application/json");
    });
    server.Get("/readyz", [this](const httplib::Request&, httplib::Response& res) {
      auto dbs = rt.redis_databases();
      auto why = readiness(dbs, rt.snapshot());
      if (why.empty()) {
        res.set_content("ready" + ready_detail(dbs) + "\n", "text/plain");
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
  TALLY_INFO("http", "listening on " << p.bind << ":" << port << " (/metrics /healthz /readyz /v1/instances)");
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
  return impl_->readiness(impl_->rt.redis_databases(), impl_->rt.snapshot());
}

} // namespace tally
