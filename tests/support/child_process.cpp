// tests/support/child_process.cpp — see child_process.hpp.
#include "tests/support/child_process.hpp"

#include "tests/harness/servers.hpp"

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <unistd.h>

namespace tally::testing {

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool proc::alive() const {
  return pid > 0 && process_exists(pid);
}

void proc::signal(int sig) const {
  if (pid > 0)
    ::kill(pid, sig);
}

long long proc::stat(const std::string& field) const {
  auto text = slurp(log);
  auto at = text.rfind(" " + field + "=");
  if (at == std::string::npos)
    return -1;
  return std::atoll(text.c_str() + at + field.size() + 2);
}

procs::~procs() {
  for (auto& p : all_)
    if (p.pid > 0) {
      ::kill(p.pid, SIGCONT);  // a SIGSTOPped child must die too
      ::kill(p.pid, SIGKILL);
      wait_process(p.pid, std::chrono::seconds(10));
    }
}

proc& procs::start(const std::string& name, std::vector<std::string> args, const std::vector<std::string>& env) {
  proc p;
  p.name = name;
  const char* tmp = std::getenv("TMPDIR");
  p.log = std::string(tmp && *tmp ? tmp : "/tmp") + "/" + prefix_ + "-" + name + "-" + std::to_string(getpid()) + "-"
          + std::to_string(all_.size()) + ".log";
  std::remove(p.log.c_str());
  if (!env.empty()) {
    args.insert(args.begin(), env.begin(), env.end());
    args.insert(args.begin(), "env");
  }
  p.pid = spawn_process(args, p.log);
  all_.push_back(p);
  return all_.back();
}

} // namespace tally::testing
