// tests/support/tallyd_process.hpp — real tallyd processes for integration
// tests, and the small helpers that drive them from the outside.
//
// A test starts tallyd as an operator would (flags, environment, config
// file), waits for its "tallyd ready" line, reads the ports from it, talks to
// it with real clients (RESP, HTTP) and stops it with signals. Nothing here
// links the daemon's code: the binary is TALLYD_PATH, given to this library
// by tests/CMakeLists.txt.
#pragma once

#include "tests/harness/servers.hpp"
#include "tests/support/child_process.hpp"
#include "tests/support/workload.hpp"

#include <chrono>
#include <string>
#include <sys/types.h>
#include <utility>
#include <vector>

namespace tally::testing {

/// Replaces the file's contents with `text`.
void write_file(const std::string& path, const std::string& text);

/// Returns a fresh path (not created) under $TMPDIR (or /tmp) whose name ends
/// in `name`, unique within this process.
std::string temp_path(const std::string& name);

/// Runs a short-lived command to completion; returns (exit code, output).
/// The exit code is 128 + signal for a signalled child and -1 when it did not
/// end within `deadline` (it is SIGKILLed then).
std::pair<int, std::string> run(std::vector<std::string> argv,
                                std::chrono::milliseconds deadline = std::chrono::seconds(30));

/// Returns the tallyd binary under test.
const char* tallyd_path();

/// argv that runs tallyd with `args` and, through env(1), this process's
/// environment plus `env` ("NAME=value" items).
std::vector<std::string> tallyd_argv(const std::vector<std::string>& env, const std::vector<std::string>& args);

/// One running tallyd; SIGKILLed by the destructor if a test left it running.
/// Its stdout and stderr go to `log`.
struct tallyd_process {
  pid_t pid = -1;
  std::string log;
  int resp_port = 0;
  int http_port = 0;

  tallyd_process(const std::vector<std::string>& args, const std::vector<std::string>& env = {});
  ~tallyd_process();
  tallyd_process(const tallyd_process&) = delete;
  tallyd_process& operator=(const tallyd_process&) = delete;

  /// Waits for the "tallyd ready" line and reads the ports from it; false
  /// at once when the process exited, or at the deadline.
  bool wait_ready(std::chrono::milliseconds deadline = std::chrono::seconds(30));

  /// SIGTERM, then the exit code (or -1 when it did not exit in time).
  int terminate(std::chrono::milliseconds deadline = std::chrono::seconds(60));

  /// Waits for the process to end by itself (a failpoint, a fatal error);
  /// returns its exit code, 128 + signal when signalled, or -1 when it is
  /// still running at the deadline (it is left running then).
  int wait_exit(std::chrono::milliseconds deadline);
};

struct http_reply {
  int status = 0;
  std::string body;
};

/// GET http://127.0.0.1:<port><path>; status 0 and the reason in `body` when
/// the request failed.
http_reply http_get(int port, const std::string& path);

/// Returns the value of one sample line of a Prometheus text exposition
/// (`name` includes labels), or -1 when there is none.
long long metric(const std::string& text, const std::string& name);

/// Returns the reference rollups of events 0..n-1 of workload `seed`.
rollup_rows reference(uint64_t seed, uint64_t n);

} // namespace tally::testing
