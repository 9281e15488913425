// bench/resp_listener.cpp — a runtime plus the RESP server on one port, for
// bench/resp_bench.sh and for poking at the server by hand (redis-cli -p).
//
//   resp_listener --redis redis://127.0.0.1:6379 --port 6380 [--ns bench]
//                 [--requirepass pw] [--shards N] [--workers N] [--buffer-ms N]
//                 [--read-chunk BYTES] [--queue-capacity N] [--null 1]
// Prints "listening <port>" once ready; SIGINT/SIGTERM stop it (drain to Redis).
// --null 1 serves RESP against a backend that takes every event and does
// nothing with it (no validation of ids, no intern, no enqueue): the RESP
// layer alone, for the per-request cost split in bench/README.md.
#include "actors/resp_backend.hpp"
#include "actors/resp_server.hpp"
#include "runtime/runtime_internal.hpp"
#include "tally/tally.hpp"

#include <caf/all.hpp>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

/// Takes every event and keeps nothing: what the RESP layer costs alone.
class null_backend final : public tally::resp_backend {
public:
  tally::field_error record(const tally::event&) noexcept override { return {}; }
  void wake() noexcept override {}
  tally::field_error record_all(const tally::event*, size_t, size_t&) noexcept override { return {}; }
  void durable_fence(std::function<void(tally::errc)> done) override { done(tally::errc::ok); }
  tally::read_result get(std::string_view, std::string_view, std::string_view) override { return unavailable(); }
  tally::read_result mget(std::string_view, const std::vector<std::string>&, std::string_view) override {
    return unavailable();
  }
  tally::cluster_view cluster() override { return {}; }
  std::vector<tally::redis_database_status> redis_databases() override { return {}; }
  std::string add_redis_database(const std::string&, uint32_t) override { return "null backend"; }
  std::string remove_redis_database(const std::string&) override { return "null backend"; }
  std::string set_redis_weight(const std::string&, uint32_t) override { return "null backend"; }
  std::string promote_redis_database(const std::string&) override { return "null backend"; }
  tally::stats snapshot() override { return {}; }
  uint64_t interned_ids() override { return 0; }

private:
  static tally::read_result unavailable() {
    tally::read_result r;
    r.code = tally::read_result::status::unavailable;
    r.error = "null backend";
    return r;
  }
};

} // namespace

int main(int argc, char** argv) {
  bool null = false;
  tally::config cfg;
  cfg.ns = "bench";
  tally::resp_options opts;
  opts.port = 6380;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--redis") cfg.redis_urls = {v};
    else if (k == "--port") opts.port = static_cast<uint16_t>(std::atoi(v.c_str()));
    else if (k == "--ns") cfg.ns = v;
    else if (k == "--state-dir") cfg.state_dir = v;
    else if (k == "--requirepass") opts.requirepass = v;
    else if (k == "--shards") cfg.shards = static_cast<uint32_t>(std::atoi(v.c_str()));
    else if (k == "--workers") cfg.worker_threads = static_cast<uint32_t>(std::atoi(v.c_str()));
    else if (k == "--buffer-ms") cfg.buffer_interval = std::chrono::milliseconds(std::atoi(v.c_str()));
    else if (k == "--read-chunk") opts.read_chunk_bytes = static_cast<uint32_t>(std::atoi(v.c_str()));
    else if (k == "--queue-capacity") cfg.queue_capacity = static_cast<uint32_t>(std::atoi(v.c_str()));
    else if (k == "--null") null = v == "1";
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  sigset_t sigs;  // blocked before any CAF thread exists, then sigwait'ed
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  tally::runtime rt;
  if (auto err = tally::start_with_io(rt, cfg); !err.empty()) {
    std::fprintf(stderr, "start: %s\n", err.c_str());
    return 1;
  }
  auto listener = tally::spawn_resp_server(
    tally::system_of(rt), null ? std::make_shared<null_backend>() : tally::make_resp_backend(rt), opts);
  if (!listener.error.empty()) {
    std::fprintf(stderr, "listen: %s\n", listener.error.c_str());
    return 1;
  }
  std::printf("listening %u\n", listener.port);
  std::fflush(stdout);
  int sig = 0;
  sigwait(&sigs, &sig);
  caf::anon_send_exit(listener.acceptor, caf::exit_reason::user_shutdown);
  listener.acceptor = nullptr;
  rt.stop();
  auto s = rt.snapshot();
  std::printf("events_accepted %llu batches_written %llu\n",
              static_cast<unsigned long long>(s.events_accepted),
              static_cast<unsigned long long>(s.batches_written));
  return 0;
}
