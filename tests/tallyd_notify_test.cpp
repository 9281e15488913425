// tests/tallyd_notify_test.cpp — tallyd speaking systemd's notify protocol
// (sd_notify(3)) to a real NOTIFY_SOCKET, as it does under Type=notify.
//
// The test plays systemd's part: it binds an AF_UNIX datagram socket, starts
// a real tallyd with NOTIFY_SOCKET (and WATCHDOG_USEC) pointing at it, and
// reads the datagrams. READY=1 must come first, when the RESP port already
// answers and /readyz says ready; WATCHDOG=1 must follow while it runs;
// SIGHUP must give RELOADING=1 then READY=1; SIGTERM must give STOPPING=1,
// with nothing after it, and exit 0.
#include "tests/harness/servers.hpp"
#include "tests/support/shared_servers.hpp"
#include "tests/support/tallyd_process.hpp"

#include <gtest/gtest.h>

#include <csignal>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

using namespace tally::testing;
using namespace std::chrono_literals;

namespace {

/// The systemd side: an AF_UNIX SOCK_DGRAM socket bound to a fresh path.
class notify_socket {
public:
  notify_socket() : path_(temp_dir("tally-notify-") + "/notify") {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    path_.copy(addr.sun_path, sizeof addr.sun_path - 1);
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
      throw std::runtime_error("cannot bind the notify socket " + path_);
  }
  ~notify_socket() {
    ::close(fd_);
    ::unlink(path_.c_str());
  }
  notify_socket(const notify_socket&) = delete;
  notify_socket& operator=(const notify_socket&) = delete;

  const std::string& path() const noexcept { return path_; }

  /// Returns the next datagram, or "" when none came within `deadline`.
  std::string next(std::chrono::milliseconds deadline) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(deadline.count())) != 1)
      return "";
    char buf[4096];
    auto n = ::recv(fd_, buf, sizeof buf, 0);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
  }

  /// Returns the first datagram that is not a WATCHDOG=1 ping, counting
  /// the pings skipped on the way in `pings`.
  std::string next_state(std::chrono::milliseconds deadline, int& pings) {
    auto until = std::chrono::steady_clock::now() + deadline;
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
      if (left.count() <= 0)
        return "";
      auto msg = next(left);
      if (msg != "WATCHDOG=1")
        return msg;
      ++pings;
    }
  }

private:
  std::string path_;
  int fd_ = -1;
};

/// Returns whether the datagram carries the assignment `line` ("READY=1").
bool has(const std::string& datagram, const std::string& line) {
  return ("\n" + datagram + "\n").find("\n" + line + "\n") != std::string::npos;
}

class TallydNotify : public shared_servers {
protected:
};

} // namespace

TEST_F(TallydNotify, ReadyWatchdogReloadStoppingInOrder) {
  notify_socket systemd;
  const std::string config = temp_path("tallyd.toml");
  write_file(config, "redis_urls = [\"" + redis_->url() + "\"]\n");
  // 400 ms: a ping every 200 ms, so a few arrive within the test's waits.
  tallyd_process d({"--config", config, "--ns", "notify", "--postgres-url", postgres_->url(), "--resp-port", "0",
                    "--http-port", "0", "--worker-threads", "2", "--state-dir", temp_dir("tally-state-")},
                   {"NOTIFY_SOCKET=" + systemd.path(), "WATCHDOG_USEC=400000"});

  int pings = 0;
  auto first = systemd.next_state(30s, pings);
  ASSERT_TRUE(has(first, "READY=1")) << "first datagram: '" << first << "'\n" << slurp(d.log);
  EXPECT_EQ(pings, 0) << "WATCHDOG=1 before READY=1";
  EXPECT_NE(first.find("STATUS="), std::string::npos) << first;
  // READY=1 means the listeners answer now, not soon: no waiting here.
  ASSERT_TRUE(d.wait_ready(0ms)) << "READY=1 before the 'tallyd ready' line\n" << slurp(d.log);
  EXPECT_EQ(redis_command(d.resp_port, {"PING"}).value, "PONG");
  auto readyz = http_get(d.http_port, "/readyz");
  EXPECT_EQ(readyz.status, 200) << readyz.body;

  // The watchdog: pings while the daemon runs, and events still go through.
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(systemd.next(2s), "WATCHDOG=1") << slurp(d.log);
  EXPECT_EQ(redis_command(d.resp_port, {"TALLY.RECORD", "key", "k1", "spend", "0.5"}).value, "OK");

  // A reload: RELOADING=1, then READY=1 again.
  ::kill(d.pid, SIGHUP);
  auto reloading = systemd.next_state(10s, pings);
  EXPECT_TRUE(has(reloading, "RELOADING=1")) << reloading << "\n" << slurp(d.log);
  EXPECT_NE(reloading.find("MONOTONIC_USEC="), std::string::npos) << reloading;
  auto reloaded = systemd.next_state(10s, pings);
  EXPECT_TRUE(has(reloaded, "READY=1")) << reloaded << "\n" << slurp(d.log);

  // SIGTERM: STOPPING=1 is the last word, and the stop is clean.
  ::kill(d.pid, SIGTERM);
  auto stopping = systemd.next_state(10s, pings);
  EXPECT_TRUE(has(stopping, "STOPPING=1")) << stopping << "\n" << slurp(d.log);
  EXPECT_EQ(d.terminate(), 0) << slurp(d.log);
  auto after = systemd.next(200ms);
  EXPECT_EQ(after, "") << "a datagram after STOPPING=1";
}

// Stage 1 can persist through the spill journal: with no Redis reachable,
// tallyd is still ready (as /readyz says) and tells systemd so.
TEST_F(TallydNotify, ReadyWithEveryRedisDownThroughTheJournal) {
  notify_socket systemd;
  const int nobody = free_port();
  tallyd_process d({"--ns", "notify_down", "--redis-urls", "redis://127.0.0.1:" + std::to_string(nobody),
                    "--postgres-url", "", "--resp-port", "0", "--http-port", "0", "--worker-threads", "2",
                    "--state-dir", temp_dir("tally-state-")},
                   {"NOTIFY_SOCKET=" + systemd.path()});
  int pings = 0;
  auto first = systemd.next_state(30s, pings);
  ASSERT_TRUE(has(first, "READY=1")) << first << "\n" << slurp(d.log);
  ASSERT_TRUE(d.wait_ready(0ms)) << slurp(d.log);
  auto readyz = http_get(d.http_port, "/readyz");
  EXPECT_EQ(readyz.status, 200) << readyz.body;
  EXPECT_EQ(redis_command(d.resp_port, {"PING"}).value, "PONG");
  // No WATCHDOG_USEC: no pings.
  EXPECT_EQ(systemd.next(300ms), "");
  ::kill(d.pid, SIGTERM);
  EXPECT_TRUE(has(systemd.next_state(10s, pings), "STOPPING=1")) << slurp(d.log);
  EXPECT_EQ(d.terminate(), 0) << slurp(d.log);
  EXPECT_EQ(pings, 0);
}
