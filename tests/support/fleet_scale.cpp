// tests/support/fleet_scale.cpp — see fleet_scale.hpp.
#include "tests/support/fleet_scale.hpp"

#include "adapters/redis_client.hpp"
#include "tests/support/batches.hpp"
#include "tests/support/postgres_rows.hpp"
#include "tests/support/tallyd_process.hpp"

#include <algorithm>
#include <csignal>
#include <fstream>
#include <iterator>
#include <unistd.h>
#include <filesystem>
#include <memory>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace tally::testing {

namespace {

using namespace std::chrono;
using clock_type = steady_clock;

double seconds_since(clock_type::time_point t0) {
  return duration<double>(clock_type::now() - t0).count();
}

/// The value of one unlabelled sample of a Prometheus text exposition, 0 when absent.
double sample(const std::string& text, const std::string& name) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (line.size() > name.size() && line.compare(0, name.size(), name) == 0 && line[name.size()] == ' ')
      return std::stod(line.substr(name.size() + 1));
  return 0;
}

void add_metrics(fleet_scale_result& out, const std::string& text) {
  out.events_accepted += static_cast<long long>(sample(text, "tally_events_accepted_total"));
  auto batches = static_cast<long long>(sample(text, "tally_batches_written_total"));
  out.batches_written += batches;
  out.batch_bytes += static_cast<long long>(sample(text, "tally_batch_bytes_written_total"));
  out.flushes += static_cast<long long>(sample(text, "tally_flushes_total"));
  out.rows_upserted += static_cast<long long>(sample(text, "tally_rows_upserted_total"));
  out.duplicate_batches += static_cast<long long>(sample(text, "tally_duplicate_batches_total"));
  out.flush_seconds += sample(text, "tally_flush_duration_seconds_sum");
  out.lease_holders += sample(text, "tally_lease_held") == 1 ? 1 : 0;
}

std::string metrics_of(const tallyd_process& d) {
  auto r = http_get(d.http_port, "/metrics");
  if (r.status != 200)
    throw std::runtime_error("GET /metrics of tallyd on " + std::to_string(d.http_port) + ": " + r.body);
  return r.body;
}

/// INFO commandstats as command -> calls.
std::map<std::string, long long> command_calls(int redis_port) {
  std::map<std::string, long long> out;
  std::istringstream in(redis_command(redis_port, {"INFO", "commandstats"}).value);
  std::string line;
  const std::string prefix = "cmdstat_";
  while (std::getline(in, line)) {
    if (line.compare(0, prefix.size(), prefix) != 0)
      continue;
    auto colon = line.find(':');
    auto calls = line.find("calls=");
    if (colon == std::string::npos || calls == std::string::npos)
      continue;
    out[line.substr(prefix.size(), colon - prefix.size())] = std::stoll(line.substr(calls + 6));
  }
  return out;
}

/// One integer field of INFO stats ("total_net_output_bytes"), 0 when absent.
long long info_stat(int redis_port, const std::string& field) {
  std::istringstream in(redis_command(redis_port, {"INFO", "stats"}).value);
  std::string line;
  while (std::getline(in, line))
    if (line.compare(0, field.size() + 1, field + ":") == 0)
      return std::stoll(line.substr(field.size() + 1));
  return 0;
}

adapters::redis_client connect_to(int port) {
  auto ep = adapters::parse_redis_url("redis://127.0.0.1:" + std::to_string(port));
  if (!ep)
    throw std::runtime_error(ep.error().message);
  auto client = adapters::redis_client::connect(*ep, milliseconds(5000));
  if (!client)
    throw std::runtime_error("connect to tallyd on " + std::to_string(port) + ": " + client.error().message);
  return std::move(*client);
}

/// Sends events [from, to) of the workload to one instance as one pipeline;
/// every one must be answered +OK.
void send_block(adapters::redis_client& client, uint64_t seed, uint64_t from, uint64_t to) {
  std::vector<std::vector<std::string>> owned;
  for (uint64_t i = from; i < to; ++i)
    owned.push_back(generate(seed, i).resp_args());
  std::vector<std::vector<std::string_view>> cmds;
  for (auto& c : owned)
    cmds.emplace_back(c.begin(), c.end());
  auto replies = client.pipeline(cmds);
  if (!replies)
    throw std::runtime_error("TALLY.RECORD pipeline: " + replies.error().message);
  for (auto& r : *replies)
    if (r.str != "OK")
      throw std::runtime_error("TALLY.RECORD answered '" + r.str + "'");
}

/// The sum of tally_minute's requests column of `rows` (one per event).
__int128 total_requests(const rollup_rows& rows) {
  auto table = rows.find("tally_minute");
  if (table == rows.end())
    return 0;
  __int128 sum = 0;
  for (const auto& [key, values] : table->second)
    sum += values.back();  // tally_minute's last measure is requests
  return sum;
}

/// Waits until Postgres holds `expected` in `schema`; returns the last
/// difference. The cheap total of requests is polled first: a flush commits
/// whole batches, so once it matches every row is in.
std::string wait_postgres_equals(const postgres_server& pg, const std::string& schema, const rollup_rows& expected,
                                 milliseconds deadline) {
  const std::string want = to_string_i128(total_requests(expected)) + "\n";
  const std::string sql = "SELECT coalesce(sum(requests), 0) FROM " + schema + ".tally_minute";
  auto attempt = [](auto&& f) -> std::string {
    try {
      return f();
    } catch (const std::exception& e) {
      return e.what();  // the tables do not exist before the first lease holder migrates
    }
  };
  std::string got;
  wait_for([&] { return (got = attempt([&] { return pg.psql(sql); })) == want; }, deadline, milliseconds(50));
  std::string diff;
  wait_for([&] { return (diff = attempt([&] { return diff_rows(expected, read_postgres(pg, schema)); })).empty(); },
           seconds(5), milliseconds(500));
  if (!diff.empty() && got != want)
    diff = "requests in " + schema + ".tally_minute: " + got + " of " + want + diff;
  return diff;
}

/// Batches an instance wrote in its life, from its last log line
/// ("stopped: E events accepted, B batches written, ..."); -1 when absent.
long long stopped_batches(const std::string& log) {
  static const std::regex line(R"(stopped: \d+ events accepted, (\d+) batches written)");
  std::smatch m;
  return std::regex_search(log, m, line) ? std::stoll(m[1]) : -1;
}

/// CPU seconds (user + system) `pid` has used so far; 0 when it is gone.
double cpu_seconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto close = text.rfind(')');  // the command name may hold spaces
  if (close == std::string::npos)
    return 0;
  std::istringstream fields(text.substr(close + 2));
  std::string f;
  double ticks = 0;
  for (int i = 3; fields >> f && i <= 15; ++i)
    if (i == 14 || i == 15)  // utime, stime
      ticks += std::stod(f);
  return ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

double fleet_cpu_seconds(const std::vector<std::unique_ptr<tallyd_process>>& fleet) {
  double sum = 0;
  for (auto& d : fleet)
    sum += d->pid > 0 ? cpu_seconds(d->pid) : 0;
  return sum;
}

/// SIGTERM to every instance at once (each drains on its own), then the exit codes.
std::vector<int> stop_all(std::vector<std::unique_ptr<tallyd_process>>& fleet) {
  for (auto& d : fleet)
    if (d->pid > 0)
      ::kill(d->pid, SIGTERM);
  std::vector<int> codes;
  for (auto& d : fleet)
    codes.push_back(d->pid > 0 ? d->terminate() : -1);
  return codes;
}

} // namespace

size_t row_count(const rollup_rows& rows) {
  size_t n = 0;
  for (const auto& [table, t] : rows)
    n += t.size();
  return n;
}

fleet_scale_result run_fleet_scale(const redis_server& redis, const postgres_server& postgres,
                                   const fleet_scale_options& opts) {
  namespace fs = std::filesystem;
  fleet_scale_result out;
  out.instances = opts.instances;
  out.events = opts.events;
  auto expected = reference(opts.seed, opts.events);
  out.reference_rows = row_count(expected);
  postgres.psql("CREATE SCHEMA IF NOT EXISTS " + opts.ns);
  auto state_dir = temp_dir("tally-scale-state-");

  // A state dir per instance, as on separate hosts: an instance starting
  // adopts the journals it finds in its dir, which would race the owner's
  // own start.
  auto args = [&](const std::string& instance, bool stage2) {
    std::vector<std::string> a{"--ns", opts.ns, "--redis-urls", redis.url(),
                               "--postgres-url", stage2 ? postgres.url() : "", "--pg-schema", opts.ns,
                               "--instance-id", instance, "--state-dir", state_dir + "/" + instance,
                               "--resp-port", "0", "--http-port", "0"};
    a.insert(a.end(), opts.tallyd_args.begin(), opts.tallyd_args.end());
    return a;
  };
  auto ready = [](tallyd_process& d, const std::string& instance) {
    if (!d.wait_ready(seconds(60)))
      throw std::runtime_error("tallyd " + instance + " did not start:\n" + slurp(d.log));
  };

  std::vector<std::unique_ptr<tallyd_process>> fleet;
  for (int i = 0; i < opts.instances; ++i)
    fleet.push_back(std::make_unique<tallyd_process>(args(opts.ns + "-" + std::to_string(i), !opts.drain)));
  for (int i = 0; i < opts.instances; ++i)
    ready(*fleet[i], opts.ns + "-" + std::to_string(i));
  std::vector<adapters::redis_client> clients;
  for (auto& d : fleet)
    clients.push_back(connect_to(d->resp_port));

  redis_command(redis.port(), {"CONFIG", "RESETSTAT"});
  double fleet_cpu0 = fleet_cpu_seconds(fleet), redis_cpu0 = cpu_seconds(redis.pid());
  auto t0 = clock_type::now();
  const uint64_t block_events = std::max<uint64_t>(1, opts.block);
  const uint64_t blocks = (opts.events + block_events - 1) / block_events;
  for (uint64_t b = 0; b < blocks; ++b) {
    if (opts.rate > 0)
      std::this_thread::sleep_until(t0 + duration_cast<clock_type::duration>(
                                             duration<double>(static_cast<double>(b * block_events) / opts.rate)));
    uint64_t from = b * block_events, to = std::min(opts.events, from + block_events);
    send_block(clients[b % clients.size()], opts.seed, from, to);
  }
  out.send_seconds = seconds_since(t0);
  clients.clear();

  std::unique_ptr<tallyd_process> flusher;
  if (opts.drain) {
    for (auto& d : fleet) {
      auto text = metrics_of(*d);
      out.accepted_per_instance.push_back(static_cast<long long>(sample(text, "tally_events_accepted_total")));
    }
    // Stopping writes out everything an instance holds; exit 0 says none was lost.
    out.exit_codes = stop_all(fleet);
    for (auto& d : fleet) {
      long long b = stopped_batches(slurp(d->log));
      out.batches_written += b;
      out.instances_with_batches += b > 0 ? 1 : 0;
    }
    auto stage1 = read_stage1(redis.url(), opts.ns);
    out.stage1_batches = stage1.batches;
    out.stage1_rows = stage1.rows_in_batches;
    out.stage1_diff = diff_rows(expected, stage1.rows);
    for (auto& e : stage1.errors)
      out.stage1_diff += "\nundecodable batch: " + e;
    const std::string id = opts.ns + "-flusher";
    flusher = std::make_unique<tallyd_process>(args(id, true));
    ready(*flusher, id);
  }

  out.totals_diff = wait_postgres_equals(postgres, opts.ns, expected, opts.deadline);
  out.visible_seconds = seconds_since(t0);
  out.redis_seconds = out.visible_seconds;
  out.redis_calls = command_calls(redis.port());
  out.redis_cpu_seconds = cpu_seconds(redis.pid()) - redis_cpu0;
  // CONFIG RESETSTAT zeroed these at t0.
  out.redis_bytes_in = info_stat(redis.port(), "total_net_input_bytes");
  out.redis_bytes_out = info_stat(redis.port(), "total_net_output_bytes");
  if (!opts.drain)  // drain: the producers are gone by now
    out.fleet_cpu_seconds = fleet_cpu_seconds(fleet) - fleet_cpu0;

  if (opts.drain) {
    add_metrics(out, metrics_of(*flusher));
    std::vector<std::unique_ptr<tallyd_process>> last;
    last.push_back(std::move(flusher));
    out.exit_codes.push_back(stop_all(last).front());
  } else {
    for (auto& d : fleet) {
      auto text = metrics_of(*d);
      add_metrics(out, text);
      out.accepted_per_instance.push_back(static_cast<long long>(sample(text, "tally_events_accepted_total")));
      out.instances_with_batches += sample(text, "tally_batches_written_total") > 0 ? 1 : 0;
    }
    out.exit_codes = stop_all(fleet);
  }
  if (opts.drain)
    for (auto n : out.accepted_per_instance)
      out.events_accepted += n;
  std::error_code ec;
  fs::remove_all(state_dir, ec);
  return out;
}

} // namespace tally::testing
