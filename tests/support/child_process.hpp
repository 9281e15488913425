// tests/support/child_process.hpp — the test's own helper processes
// (tally_driver, flush_node) with their logs, killed when a test ends.
//
// Multi-process tests start instances as child processes, read their
// progress lines ("node: ... flushes=3 ... active=redis://... ") from the
// log, signal them (SIGKILL, SIGSTOP, SIGTERM) and never leave one behind,
// whatever the test did.
#pragma once

#include <deque>
#include <string>
#include <sys/types.h>
#include <vector>

namespace tally::testing {

/// Returns the whole file (empty when it cannot be read).
std::string slurp(const std::string& path);

/// One child process with its log.
struct proc {
  pid_t pid = -1;
  std::string log;
  std::string name;

  bool alive() const;
  void signal(int sig) const;
  /// Last value of ` field=` in the log (a progress line), or -1.
  long long stat(const std::string& field) const;
};

/// Every child a test started; SIGCONT + SIGKILL + reap for those still
/// running when it goes out of scope.
class procs {
public:
  /// Logs go to <TMPDIR>/<prefix>-<name>-<pid>-<n>.log.
  explicit procs(std::string prefix) : prefix_(std::move(prefix)) {}
  ~procs();
  procs(const procs&) = delete;
  procs& operator=(const procs&) = delete;

  /// Starts `args` (argv[0] looked up in PATH) with `env` ("NAME=value",
  /// through env(1)) added; the reference stays valid for the test.
  proc& start(const std::string& name, std::vector<std::string> args, const std::vector<std::string>& env = {});

  std::deque<proc>& all() { return all_; }

private:
  std::string prefix_;
  std::deque<proc> all_;  // stable references
};

} // namespace tally::testing
