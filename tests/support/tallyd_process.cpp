// tests/support/tallyd_process.cpp — see tallyd_process.hpp.
#include "tests/support/tallyd_process.hpp"

#include <httplib.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <random>
#include <regex>
#include <sstream>
#include <sys/wait.h>
#include <unistd.h>

namespace tally::testing {

using namespace std::chrono_literals;

namespace {

/// Turns a waitpid status into an exit code (128 + signal when signalled).
int exit_code_of(int status) {
  if (status == -1)
    return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

} // namespace

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc | std::ios::binary);
  out << text;
}

std::string temp_path(const std::string& name) {
  static std::atomic<int> counter{0};
  // The pid alone repeats: pid_max is often 32768, and one CI run forks far
  // more processes than that (every psql, every Postgres backend). A test
  // process that got an earlier one's pid would append to its old log (logs
  // are opened for appending) and read that run's ready line and ports.
  static const std::string process_token = [] {
    std::random_device rd;
    char buf[17];
    std::snprintf(buf, sizeof buf, "%08x%08x", rd(), rd());
    return std::string(buf);
  }();
  const char* env = std::getenv("TMPDIR");
  std::string base = env && *env ? env : "/tmp";
  return base + "/tallyd-test-" + std::to_string(getpid()) + "-" + process_token + "-" + std::to_string(++counter)
         + "-" + name;
}

std::pair<int, std::string> run(std::vector<std::string> argv, std::chrono::milliseconds deadline) {
  auto log = temp_path("run.log");
  pid_t pid = spawn_process(argv, log);
  int status = wait_process(pid, deadline);
  if (status == -1) {
    ::kill(pid, SIGKILL);
    wait_process(pid, 5s);
    return {-1, slurp(log)};
  }
  return {exit_code_of(status), slurp(log)};
}

const char* tallyd_path() {
  return TALLYD_PATH;
}

std::vector<std::string> tallyd_argv(const std::vector<std::string>& env, const std::vector<std::string>& args) {
  // `env -i`-less `env`: the child sees this process's environment plus `env`.
  std::vector<std::string> argv{"env"};
  argv.insert(argv.end(), env.begin(), env.end());
  argv.push_back(tallyd_path());
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

tallyd_process::tallyd_process(const std::vector<std::string>& args, const std::vector<std::string>& env) {
  log = temp_path("tallyd.log");
  pid = spawn_process(tallyd_argv(env, args), log);
}

tallyd_process::~tallyd_process() {
  if (pid > 0) {
    ::kill(pid, SIGKILL);
    wait_process(pid, 10s);
  }
}

bool tallyd_process::wait_ready(std::chrono::milliseconds deadline) {
  static const std::regex ready(R"(tallyd ready: resp [^ ]+:(\d+) http [^ ]+:(\d+))");
  std::smatch m;
  bool ok = wait_for([&] {
    if (!process_exists(pid))
      return true;  // exited: fail at once, not at the deadline
    auto text = slurp(log);
    if (!std::regex_search(text, m, ready))
      return false;
    resp_port = std::stoi(m[1]);
    http_port = std::stoi(m[2]);
    return true;
  }, deadline);
  return ok && resp_port != 0;
}

int tallyd_process::terminate(std::chrono::milliseconds deadline) {
  ::kill(pid, SIGTERM);
  int status = wait_process(pid, deadline);
  pid = -1;
  return exit_code_of(status);
}

int tallyd_process::wait_exit(std::chrono::milliseconds deadline) {
  int status = wait_process(pid, deadline);
  if (status == -1)
    return -1;
  pid = -1;
  return exit_code_of(status);
}

http_reply http_get(int port, const std::string& path) {
  httplib::Client cli("127.0.0.1", port);
  cli.set_connection_timeout(5);
  cli.set_read_timeout(10);
  auto res = cli.Get(path.c_str());
  if (!res)
    return {0, "request failed: " + httplib::to_string(res.error())};
  return {res->status, res->body};
}

long long metric(const std::string& text, const std::string& name) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (line.size() > name.size() && line.compare(0, name.size(), name) == 0 && line[name.size()] == ' ')
      return std::stoll(line.substr(name.size() + 1));
  return -1;
}

rollup_rows reference(uint64_t seed, uint64_t n) {
  return reference_range(seed, 0, n);
}

} // namespace tally::testing
