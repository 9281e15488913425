// tests/support/netns.cpp — see netns.hpp.
#include "tests/support/netns.hpp"

#include "tests/harness/servers.hpp"
#include "tests/support/child_process.hpp"

#include <stdexcept>
#include <sys/wait.h>
#include <unistd.h>

namespace tally::testing {

namespace {

/// Runs a command to completion; returns its exit status (-1: killed or hung).
int run_command(const std::vector<std::string>& argv, std::string* output = nullptr) {
  std::string log = temp_dir("tally-ip-") + "/out";
  pid_t pid = spawn_process(argv, log);
  int status = wait_process(pid, std::chrono::seconds(30));
  if (output)
    *output = slurp(log);
  ::unlink(log.c_str());
  ::rmdir(log.substr(0, log.rfind('/')).c_str());
  return status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

void ip(const std::vector<std::string>& args) {
  std::vector<std::string> argv{"ip"};
  argv.insert(argv.end(), args.begin(), args.end());
  std::string out;
  if (run_command(argv, &out) != 0) {
    std::string line;
    for (auto& a : argv)
      line += a + " ";
    throw std::runtime_error("netns_host: failed: " + line + "\n" + out);
  }
}

} // namespace

netns_host::netns_host(int index) {
  const std::string tag = std::to_string(::getpid() % 100000) + "x" + std::to_string(index);
  name_ = "tly" + tag;
  // 10.<100 + pid % 100>.<2i or 2i+1>.0/24: private, and distinct per test
  // process and per namespace.
  const std::string net = "10." + std::to_string(100 + ::getpid() % 100) + ".";
  links_[0] = {"t" + tag + "r", net + std::to_string(2 * index) + "."};
  links_[1] = {"t" + tag + "p", net + std::to_string(2 * index + 1) + "."};
  ip({"netns", "add", name_});
  created_ = true;
  ip({"-n", name_, "link", "set", "lo", "up"});
  for (auto& l : links_) {
    ip({"link", "add", l.host_side(), "type", "veth", "peer", "name", l.ns_side()});
    ip({"link", "set", l.ns_side(), "netns", name_});
    ip({"addr", "add", l.prefix + "1/24", "dev", l.host_side()});
    ip({"link", "set", l.host_side(), "up"});
    ip({"-n", name_, "addr", "add", l.prefix + "2/24", "dev", l.ns_side()});
    ip({"-n", name_, "link", "set", l.ns_side(), "up"});
  }
}

netns_host::~netns_host() {
  if (!created_)
    return;
  for (auto& l : links_)
    run_command({"ip", "link", "del", l.host_side()});
  run_command({"ip", "netns", "del", name_});
}

void netns_host::cut_redis() { ip({"link", "set", links_[0].host_side(), "down"}); }
void netns_host::heal_redis() { ip({"link", "set", links_[0].host_side(), "up"}); }
void netns_host::cut_postgres() { ip({"link", "set", links_[1].host_side(), "down"}); }
void netns_host::heal_postgres() { ip({"link", "set", links_[1].host_side(), "up"}); }

std::vector<std::string> netns_host::inside(std::vector<std::string> argv) const {
  argv.insert(argv.begin(), {"ip", "netns", "exec", name_});
  return argv;
}

} // namespace tally::testing
