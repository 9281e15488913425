// tests/harness/servers.cpp — child processes for integration tests: a
// fork/exec spawner, a raw RESP client, and redis-server / redis-sentinel /
// postgres owners.
//
// Why by hand instead of system() or a client library: the harness must know
// the pid it started (to SIGKILL exactly that server, and its descendants),
// must set PR_SET_PDEATHSIG so a crashed test cannot leak servers, and must
// not depend on hiredis/libpq, which are under test elsewhere.
#include "tests/harness/servers.hpp"

#include "core/unique_fd.hpp"

#include <algorithm>
#include <arpa/inet.h>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <grp.h>
#include <iostream>
#include <map>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <sstream>
#include <stdexcept>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <utility>

namespace tally::testing {
namespace {

using namespace std::chrono_literals;
using std::chrono::milliseconds;
using steady = std::chrono::steady_clock;
namespace fs = std::filesystem;

constexpr milliseconds redis_start_deadline = 10s;
constexpr milliseconds redis_stop_deadline = 10s;
constexpr milliseconds postgres_start_deadline = 30s;
constexpr milliseconds postgres_stop_deadline = 30s;
constexpr milliseconds initdb_deadline = 120s;  // generous: slow CI disks
constexpr milliseconds psql_deadline = 60s;
constexpr milliseconds kill_deadline = 10s;
// Another test process may grab the port between free_port() and the server's
// bind(); the first start then retries on a fresh port.
constexpr int first_start_attempts = 5;

[[noreturn]] void throw_errno(const std::string& what) {
  throw std::runtime_error(what + ": " + std::strerror(errno));
}

std::string describe_status(int status) {
  if (status == -1)
    return "did not exit in time";
  if (WIFEXITED(status))
    return "exit code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return "killed by signal " + std::to_string(WTERMSIG(status));
  return "wait status " + std::to_string(status);
}

// --- files ---------------------------------------------------------------------

std::uintmax_t file_size_or_zero(const std::string& path) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  return ec ? 0 : size;
}

/// Returns the file's bytes from `offset` on (empty if it does not exist).
std::string read_from(const std::string& path, std::uintmax_t offset) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return {};
  in.seekg(static_cast<std::streamoff>(offset));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

/// Returns the end of a server log, framed, for exception messages.
std::string log_tail(const std::string& path, std::uintmax_t max_bytes = 4000) {
  const auto size = file_size_or_zero(path);
  const auto from = size > max_bytes ? size - max_bytes : 0;
  return "\n--- " + path + (from ? " (tail)" : "") + " ---\n" + read_from(path, from) + "--- end ---";
}

/// Returns whether every directory on the way to `path` lets other users in
/// (the postgres user must reach its data dir when we run as root).
bool traversable_by_others(const fs::path& path) {
  std::error_code ec;
  for (fs::path p = fs::weakly_canonical(path, ec); !ec && !p.empty(); p = p.parent_path()) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0 || !(st.st_mode & S_IXOTH))
      return false;
    if (p == p.root_path())
      break;
  }
  return !ec;
}

/// Creates a fresh 0700 directory under $TMPDIR (or /tmp when unset, or when
/// `max_base_length` / `other_user` rule $TMPDIR out).
std::string make_temp_dir(const std::string& prefix, bool other_user = false,
                          std::size_t max_base_length = 4096) {
  const char* env = std::getenv("TMPDIR");
  std::string base = env && *env ? env : "/tmp";
  if (base.size() > max_base_length || (other_user && !traversable_by_others(base)))
    base = "/tmp";
  std::string path = base + "/" + prefix + "XXXXXX";
  if (::mkdtemp(path.data()) == nullptr)
    throw_errno("mkdtemp " + path);
  return path;
}

void remove_dir(const std::string& dir) noexcept {
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (ec)
    std::cerr << "tally harness: cannot remove " << dir << ": " << ec.message() << '\n';
}

// --- processes -----------------------------------------------------------------

struct run_as {
  bool enabled = false;
  uid_t uid = 0;
  gid_t gid = 0;
};

/// Everything spawn() needs; the plain spawn_process() uses only argv and log_file.
struct spawn_spec {
  std::vector<std::string> argv;
  std::string log_file;  // stdout and stderr appended here when set
  int stdout_fd = -1;    // otherwise dup2'd onto 1 and 2 when >= 0
  int stderr_fd = -1;
  std::string cwd;       // empty: inherit
  run_as user;
};

// Which setup step failed in the child, reported to the parent through a pipe.
enum class child_step : int { stdin_null, open_log, redirect, credentials, chdir, pdeathsig, exec };

const char* to_string(child_step step) {
  switch (step) {
    case child_step::stdin_null: return "redirect stdin";
    case child_step::open_log: return "open log file";
    case child_step::redirect: return "redirect output";
    case child_step::credentials: return "switch user";
    case child_step::chdir: return "chdir";
    case child_step::pdeathsig: return "set parent-death signal";
    case child_step::exec: return "exec";
  }
  return "?";
}

[[noreturn]] void fail_child(int report_fd, child_step step) {
  const int message[2] = {static_cast<int>(step), errno};
  // Nothing more to do if this write fails: the parent then sees a clean EOF
  // and the child's exit code 127.
  [[maybe_unused]] auto ignored = ::write(report_fd, message, sizeof message);
  ::_exit(127);
}

/// Forks and execs spec.argv; returns the child's pid once exec succeeded.
/// Throws std::runtime_error (naming the failed step) otherwise.
pid_t spawn(const spawn_spec& spec) {
  if (spec.argv.empty())
    throw std::invalid_argument("spawn_process: empty argv");
  // After fork() in a multithreaded process the child may only call
  // async-signal-safe functions, so every string and number it needs is
  // prepared here.
  std::vector<char*> argv;
  for (const auto& arg : spec.argv)
    argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  const char* log_file = spec.log_file.empty() ? nullptr : spec.log_file.c_str();
  const char* cwd = spec.cwd.empty() ? nullptr : spec.cwd.c_str();
  const pid_t parent = ::getpid();
  const long open_max = ::sysconf(_SC_OPEN_MAX);
  const int fd_limit = open_max > 0 && open_max < 65536 ? static_cast<int>(open_max) : 65536;

  int report[2];
  if (::pipe2(report, O_CLOEXEC) != 0)
    throw_errno("pipe2");
  unique_fd report_read(report[0]), report_write(report[1]);

  const pid_t pid = ::fork();
  if (pid < 0)
    throw_errno("fork");
  if (pid == 0) {
    const int rfd = report_write.get();
    const int null_fd = ::open("/dev/null", O_RDONLY);
    if (null_fd < 0 || ::dup2(null_fd, STDIN_FILENO) < 0)
      fail_child(rfd, child_step::stdin_null);
    int out = spec.stdout_fd, err = spec.stderr_fd;
    if (log_file) {
      out = err = ::open(log_file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (out < 0)
        fail_child(rfd, child_step::open_log);
    }
    if ((out >= 0 && ::dup2(out, STDOUT_FILENO) < 0) || (err >= 0 && ::dup2(err, STDERR_FILENO) < 0))
      fail_child(rfd, child_step::redirect);
    // Descriptors inherited from the test (sockets, pipes of other children)
    // must not live on in the server: a listening socket kept open by redis
    // would outlive the test's own close().
    if (::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) != 0)
      for (int fd = 3; fd < fd_limit; ++fd)
        ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    if (spec.user.enabled) {
      const gid_t gid = spec.user.gid;
      if (::setgroups(1, &gid) != 0 || ::setgid(gid) != 0 || ::setuid(spec.user.uid) != 0)
        fail_child(rfd, child_step::credentials);
    }
    if (cwd && ::chdir(cwd) != 0)
      fail_child(rfd, child_step::chdir);
    // After setuid: changing credentials clears the parent-death signal.
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
      fail_child(rfd, child_step::pdeathsig);
    if (::getppid() != parent)  // the test died before prctl took effect
      ::_exit(127);
    // Blocked and ignored signals survive exec; a test that blocks SIGTERM on
    // its threads must not make the server deaf to stop().
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; ++sig)
      ::sigaction(sig, &dfl, nullptr);  // fails harmlessly for SIGKILL/SIGSTOP
    ::execvp(argv[0], argv.data());
    fail_child(rfd, child_step::exec);
  }

  report_write.reset();
  // A successful exec closes the O_CLOEXEC pipe: read() sees EOF.
  int message[2] = {0, 0};
  ssize_t n;
  do
    n = ::read(report_read.get(), message, sizeof message);
  while (n < 0 && errno == EINTR);
  if (n > 0) {
    ::waitpid(pid, nullptr, 0);
    throw std::runtime_error("cannot run " + spec.argv[0] + ": " +
                             to_string(static_cast<child_step>(message[0])) + " failed: " +
                             std::strerror(message[1]));
  }
  return pid;
}

struct proc_stat {
  char state = 0;  // 0: no such process
  pid_t ppid = 0;
};

proc_stat read_proc_stat(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line))
    return {};
  // The command name (field 2) may contain spaces and parentheses; the fields
  // after its closing parenthesis are "state ppid ...".
  const auto close = line.rfind(')');
  if (close == std::string::npos)
    return {};
  std::istringstream rest(line.substr(close + 1));
  proc_stat st;
  rest >> st.state >> st.ppid;
  return st;
}

/// Returns every process below `root`, read from /proc in one pass.
std::vector<pid_t> descendants(pid_t root) {
  std::multimap<pid_t, pid_t> children;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/proc", ec)) {
    const auto name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos)
      continue;
    const pid_t pid = std::stoi(name);
    if (const auto st = read_proc_stat(pid); st.state != 0)
      children.emplace(st.ppid, pid);
  }
  std::vector<pid_t> found;
  std::vector<pid_t> queue{root};
  while (!queue.empty()) {
    const pid_t parent = queue.back();
    queue.pop_back();
    for (auto [it, end] = children.equal_range(parent); it != end; ++it) {
      found.push_back(it->second);
      queue.push_back(it->second);
    }
  }
  return found;
}

/// SIGKILLs our child `pid` and everything below it at once, like a crash,
/// and returns when all of them are gone.
///
/// Why not a process-group kill: postgres children call setsid(). Why stop
/// first: once the postmaster is dead its children are reparented and cannot
/// be found by parent pid any more, and a running postmaster could fork while
/// we list them. Why wait for the descendants: postgres refuses to start while
/// a backend of the old postmaster still holds its shared memory.
void kill_tree(pid_t pid) noexcept {
  try {
    ::kill(pid, SIGSTOP);
    wait_for([&] { const char s = read_proc_stat(pid).state; return s == 'T' || s == 't' || s == 'Z' || s == 0; },
             1000ms, 1ms);
    const auto below = descendants(pid);
    ::kill(pid, SIGKILL);
    for (const pid_t p : below)
      ::kill(p, SIGKILL);
    if (wait_process(pid, kill_deadline) == -1)
      std::cerr << "tally harness: pid " << pid << " not reaped after SIGKILL\n";
    if (!wait_for([&] {
          for (const pid_t p : below)
            if (process_exists(p))
              return false;
          return true;
        }, kill_deadline, 2ms))
      std::cerr << "tally harness: descendants of pid " << pid << " survive SIGKILL\n";
  } catch (const std::exception& e) {  // /proc unreadable, out of memory
    ::kill(pid, SIGKILL);
    wait_process(pid, kill_deadline);
    std::cerr << "tally harness: kill_tree(" << pid << "): " << e.what() << '\n';
  }
}

/// Asks `pid` to exit with `sig`; SIGKILLs it (and its descendants) after `deadline`.
void terminate_child(pid_t pid, int sig, milliseconds deadline) noexcept {
  ::kill(pid, sig);
  if (wait_process(pid, deadline) == -1) {
    std::cerr << "tally harness: pid " << pid << " ignored signal " << sig << ", sending SIGKILL\n";
    kill_tree(pid);
  }
}

struct captured {
  int status = -1;
  std::string out;
  std::string err;
};

/// Runs spec.argv to completion, collecting stdout and stderr separately.
/// Throws when it cannot run or does not finish within `deadline`.
captured run_capture(spawn_spec spec, milliseconds deadline) {
  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0)
    throw_errno("pipe2");
  unique_fd out_read(out_pipe[0]), out_write(out_pipe[1]);
  if (::pipe2(err_pipe, O_CLOEXEC) != 0)
    throw_errno("pipe2");
  unique_fd err_read(err_pipe[0]), err_write(err_pipe[1]);

  spec.log_file.clear();
  spec.stdout_fd = out_write.get();
  spec.stderr_fd = err_write.get();
  const pid_t pid = spawn(spec);
  // Our copies of the write ends must go, or the reads below never see EOF.
  out_write.reset();
  err_write.reset();

  captured result;
  const auto until = steady::now() + deadline;
  // Both pipes are drained together: a child blocked writing a full stderr
  // pipe would otherwise never close stdout.
  pollfd fds[2] = {{out_read.get(), POLLIN, 0}, {err_read.get(), POLLIN, 0}};
  std::string* sinks[2] = {&result.out, &result.err};
  int open_pipes = 2;
  while (open_pipes > 0) {
    const auto left = std::chrono::duration_cast<milliseconds>(until - steady::now()).count();
    if (left <= 0) {
      kill_tree(pid);
      throw std::runtime_error(spec.argv[0] + " did not finish within " +
                               std::to_string(deadline.count()) + " ms");
    }
    if (::poll(fds, 2, static_cast<int>(left)) < 0 && errno != EINTR)
      throw_errno("poll");
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0)
        continue;
      char buf[4096];
      const ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
      if (n > 0) {
        sinks[i]->append(buf, static_cast<std::size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        fds[i].fd = -1;  // poll ignores negative descriptors
        --open_pipes;
      }
    }
  }
  result.status = wait_process(pid, std::max(milliseconds(1000), std::chrono::duration_cast<milliseconds>(until - steady::now())));
  if (result.status == -1) {
    kill_tree(pid);
    throw std::runtime_error(spec.argv[0] + " closed its output but did not exit");
  }
  return result;
}

// --- RESP over a raw socket ------------------------------------------------------

/// Connects to 127.0.0.1:port, giving up after `timeout`; returns an empty
/// fd when nothing accepts. Non-blocking connect: a full accept queue makes a
/// blocking connect() retry SYNs for a long time.
unique_fd connect_loopback(int port, milliseconds timeout) {
  unique_fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd)
    throw_errno("socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    if (errno != EINPROGRESS)
      return {};
    pollfd pfd{fd.get(), POLLOUT, 0};
    if (::poll(&pfd, 1, static_cast<int>(timeout.count())) != 1)
      return {};
    int error = 0;
    socklen_t len = sizeof error;
    if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &error, &len) != 0 || error != 0)
      return {};
  }
  return fd;
}

/// One client connection that sends commands and reads single replies, all
/// bounded by one deadline.
class resp_connection {
public:
  resp_connection(unique_fd fd, steady::time_point deadline) : fd_(std::move(fd)), deadline_(deadline) {}

  resp_reply call(const std::vector<std::string>& args) {
    std::string request = "*" + std::to_string(args.size()) + "\r\n";
    for (const auto& arg : args)
      request += "$" + std::to_string(arg.size()) + "\r\n" + arg + "\r\n";
    send_all(request);
    return read_reply();
  }

private:
  int wait_ready(short events) {
    const auto left = std::chrono::duration_cast<milliseconds>(deadline_ - steady::now()).count();
    if (left <= 0)
      throw std::runtime_error("redis_command: timed out");
    pollfd pfd{fd_.get(), events, 0};
    return ::poll(&pfd, 1, static_cast<int>(left));
  }

  void send_all(const std::string& data) {
    std::size_t sent = 0;
    while (sent < data.size()) {
      const ssize_t n = ::send(fd_.get(), data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
      if (n > 0)
        sent += static_cast<std::size_t>(n);
      else if (errno == EAGAIN || errno == EINTR)
        wait_ready(POLLOUT);
      else
        throw_errno("redis_command: send");
    }
  }

  void fill() {
    for (;;) {
      char buf[4096];
      const ssize_t n = ::recv(fd_.get(), buf, sizeof buf, 0);
      if (n > 0) {
        buffer_.append(buf, static_cast<std::size_t>(n));
        return;
      }
      if (n == 0)
        throw std::runtime_error("redis_command: connection closed by server");
      if (errno != EAGAIN && errno != EINTR)
        throw_errno("redis_command: recv");
      wait_ready(POLLIN);
    }
  }

  std::string read_line() {
    std::size_t end;
    while ((end = buffer_.find("\r\n")) == std::string::npos)
      fill();
    std::string line = buffer_.substr(0, end);
    buffer_.erase(0, end + 2);
    return line;
  }

  resp_reply read_reply() {
    const std::string line = read_line();
    if (line.empty())
      throw std::runtime_error("redis_command: empty reply line");
    resp_reply reply;
    reply.type = line[0];
    switch (reply.type) {
      case '+':
      case '-':
      case ':':
        reply.value = line.substr(1);
        return reply;
      case '$': {
        const long long length = std::stoll(line.substr(1));
        if (length < 0) {
          reply.nil = true;
          return reply;
        }
        const auto needed = static_cast<std::size_t>(length) + 2;
        while (buffer_.size() < needed)
          fill();
        reply.value = buffer_.substr(0, static_cast<std::size_t>(length));
        buffer_.erase(0, needed);
        return reply;
      }
      case '*': {
        const long long count = std::stoll(line.substr(1));
        if (count < 0) {
          reply.nil = true;
          return reply;
        }
        // Each element is a whole reply of its own, nested arrays included.
        reply.elements.reserve(static_cast<std::size_t>(count));
        for (long long i = 0; i < count; ++i)
          reply.elements.push_back(read_reply());
        return reply;
      }
      default:
        throw std::runtime_error("redis_command: unsupported reply type '" + line.substr(0, 1) + "'");
    }
  }

  unique_fd fd_;
  steady::time_point deadline_;
  std::string buffer_;
};

enum class probe_result { not_ready, ready, someone_else };

/// Asks the redis on `port` whether it serves (PING answers PONG only after
/// the AOF is loaded) and whether it is the process we started.
probe_result probe_redis(int port, const std::string& password, pid_t expected_pid) {
  try {
    auto fd = connect_loopback(port, 200ms);
    if (!fd)
      return probe_result::not_ready;
    resp_connection conn(std::move(fd), steady::now() + 500ms);
    if (!password.empty() && conn.call({"AUTH", password}).type != '+')
      return probe_result::not_ready;
    if (const auto pong = conn.call({"PING"}); pong.type != '+' || pong.value != "PONG")
      return probe_result::not_ready;
    // Another test's redis may answer on a port we lost the race for; ours
    // then fails to bind, but possibly after this probe.
    const auto info = conn.call({"INFO", "server"});
    const std::string wanted = "process_id:" + std::to_string(expected_pid) + "\r\n";
    return info.value.find(wanted) != std::string::npos ? probe_result::ready : probe_result::someone_else;
  } catch (const std::exception&) {  // reset while starting, timeout: try again
    return probe_result::not_ready;
  }
}

/// Reads line `line` (1-based) of a file, or "" when it is shorter.
std::string read_line_of(const std::string& path, int line) {
  std::ifstream in(path);
  std::string text;
  for (int i = 0; i < line; ++i)
    if (!std::getline(in, text))
      return {};
  return text;
}

// --- postgres ----------------------------------------------------------------------

/// Debian keeps the server binaries out of PATH; TALLY_PG_BINDIR overrides.
std::string pg_bin(const std::string& name) {
  const char* env = std::getenv("TALLY_PG_BINDIR");
  return std::string(env && *env ? env : "/usr/lib/postgresql/15/bin") + "/" + name;
}

} // namespace

// --- public helpers ----------------------------------------------------------------

std::string temp_dir(const std::string& prefix) {
  return make_temp_dir(prefix);
}

int free_port() {
  unique_fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd)
    throw_errno("free_port: socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;  // the kernel picks an unused ephemeral port
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0)
    throw_errno("free_port: bind");
  socklen_t len = sizeof addr;
  if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    throw_errno("free_port: getsockname");
  return ntohs(addr.sin_port);
}

bool port_open(int port) {
  return static_cast<bool>(connect_loopback(port, 1000ms));
}

bool process_exists(pid_t pid) {
  if (pid <= 0)
    return false;
  if (::kill(pid, 0) != 0 && errno == ESRCH)
    return false;
  // An orphan that nobody reaped yet is a zombie: it holds no resources.
  const char state = read_proc_stat(pid).state;
  return state != 0 && state != 'Z';
}

resp_reply redis_command(int port, const std::vector<std::string>& args, const std::string& password,
                         milliseconds timeout) {
  const auto deadline = steady::now() + timeout;
  auto fd = connect_loopback(port, timeout);
  if (!fd)
    throw std::runtime_error("redis_command: cannot connect to 127.0.0.1:" + std::to_string(port));
  resp_connection conn(std::move(fd), deadline);
  if (!password.empty()) {
    if (auto auth = conn.call({"AUTH", password}); auth.type != '+')
      return auth;
  }
  return conn.call(args);
}

pid_t spawn_process(const std::vector<std::string>& argv, const std::string& log_file) {
  spawn_spec spec;
  spec.argv = argv;
  spec.log_file = log_file;
  return spawn(spec);
}

int wait_process(pid_t pid, milliseconds deadline) {
  const auto until = steady::now() + deadline;
  auto pause = 1ms;  // short first: most children we wait for exit at once
  for (;;) {
    int status = 0;
    const pid_t reaped = ::waitpid(pid, &status, WNOHANG);
    if (reaped == pid)
      return status;
    if (reaped < 0 && errno != EINTR)
      return -1;  // not our child, or reaped already
    if (steady::now() >= until)
      return -1;
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, milliseconds(20));
  }
}

// --- redis_server ------------------------------------------------------------------

redis_server::redis_server(redis_options opts)
    : opts_(std::move(opts)), dir_(make_temp_dir("tally-redis-")) {
  try {
    for (int attempt = 1;; ++attempt) {
      port_ = free_port();
      if (try_start())
        return;
      if (attempt == first_start_attempts)
        throw std::runtime_error("redis-server: lost the race for a free port " +
                                 std::to_string(attempt) + " times" + log_tail(log_file()));
    }
  } catch (...) {
    // No destructor runs for a half-built object.
    if (running())
      kill();
    remove_dir(dir_);
    throw;
  }
}

redis_server::~redis_server() {
  stop();
  remove_dir(dir_);
}

std::string redis_server::url() const {
  const std::string auth = opts_.requirepass.empty() ? "" : ":" + opts_.requirepass + "@";
  return "redis://" + auth + "127.0.0.1:" + std::to_string(port_);
}

namespace {

/// Waits until the redis-server or redis-sentinel just spawned as `pid`
/// answers on `port`. False when the port turned out to be taken (the
/// process exited with EADDRINUSE, or another process answers there): `pid`
/// is then -1 and the caller tries another port. Throws with the log tail
/// when it exits otherwise or is not ready by redis_start_deadline.
bool await_redis(const char* what, int port, pid_t& pid, const std::string& password, const std::string& log,
                 std::uintmax_t log_offset) {
  const auto until = steady::now() + redis_start_deadline;
  auto give_up = [&] {
    kill_tree(pid);
    pid = -1;
  };
  for (;;) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      pid = -1;
      if (read_from(log, log_offset).find("Address already in use") != std::string::npos)
        return false;
      throw std::runtime_error(std::string(what) + " on port " + std::to_string(port) + " exited while starting ("
                               + describe_status(status) + ")" + log_tail(log));
    }
    switch (probe_redis(port, password, pid)) {
      case probe_result::ready:
        return true;
      case probe_result::someone_else:
        give_up();
        return false;
      case probe_result::not_ready:
        break;
    }
    if (steady::now() >= until) {
      give_up();
      throw std::runtime_error(std::string(what) + " on port " + std::to_string(port) + " not ready after "
                               + std::to_string(redis_start_deadline.count()) + " ms" + log_tail(log));
    }
    std::this_thread::sleep_for(5ms);
  }
}

} // namespace

bool redis_server::try_start() {
  const std::string log = log_file();
  // The log is appended to across restarts; only this start's lines count.
  const auto log_offset = file_size_or_zero(log);
  spawn_spec spec;
  spec.argv = {"redis-server",
               "--port", std::to_string(port_),
               "--bind", opts_.bind,
               // Reached from other network namespaces when bound beyond
               // loopback: the tests' own servers need no protection.
               "--protected-mode", "no",
               "--save", "",  // no RDB snapshots: persistence is the AOF or nothing
               "--daemonize", "no",
               "--dir", dir_,
               "--logfile", log,
               "--appendonly", opts_.appendonly ? "yes" : "no",
               // A primary otherwise waits 5 s for more replicas to share one
               // diskless full sync; tests attach their replicas one by one.
               "--repl-diskless-sync-delay", "0"};
  if (opts_.appendonly)
    spec.argv.insert(spec.argv.end(), {"--appendfsync", "always"});
  if (!opts_.requirepass.empty())
    spec.argv.insert(spec.argv.end(), {"--requirepass", opts_.requirepass});
  if (opts_.replica_of_port > 0) {
    spec.argv.insert(spec.argv.end(), {"--replicaof", "127.0.0.1", std::to_string(opts_.replica_of_port)});
    if (!opts_.requirepass.empty())
      spec.argv.insert(spec.argv.end(), {"--masterauth", opts_.requirepass});
  }
  spec.log_file = log;  // stdout/stderr: errors printed before the logfile opens
  spec.cwd = dir_;
  pid_ = spawn(spec);

  return await_redis("redis-server", port_, pid_, opts_.requirepass, log, log_offset);
}

void redis_server::start() {
  if (running())
    throw std::logic_error("redis_server::start: already running");
  // Same port on purpose: clients under test reconnect to the address they know.
  if (!try_start())
    throw std::runtime_error("redis-server: port " + std::to_string(port_) +
                             " was taken by another process while stopped" + log_tail(log_file()));
}

void redis_server::stop() {
  if (!running())
    return;
  // SIGTERM is redis' SHUTDOWN: it fsyncs the AOF and exits.
  terminate_child(pid_, SIGTERM, redis_stop_deadline);
  pid_ = -1;
}

void redis_server::kill() {
  if (!running())
    return;
  kill_tree(pid_);  // also any BGREWRITEAOF child
  pid_ = -1;
}

bool redis_server::replica_link_up() const {
  const auto info = redis_command(port_, {"INFO", "replication"}, opts_.requirepass);
  return info.value.find("master_link_status:up\r\n") != std::string::npos;
}

// --- redis_sentinel_server ---------------------------------------------------------

redis_sentinel_server::redis_sentinel_server(std::string master_name, int master_port, int quorum,
                                             milliseconds down_after, milliseconds failover_timeout,
                                             std::string requirepass)
    : master_name_(std::move(master_name)), master_port_(master_port), quorum_(quorum),
      down_after_(down_after), failover_timeout_(failover_timeout), requirepass_(std::move(requirepass)),
      dir_(make_temp_dir("tally-sentinel-")) {
  try {
    for (int attempt = 1;; ++attempt) {
      port_ = free_port();
      // The port is in the file: a retry on another port needs a new one.
      write_config();
      if (try_start())
        return;
      if (attempt == first_start_attempts)
        throw std::runtime_error("redis-sentinel: lost the race for a free port " +
                                 std::to_string(attempt) + " times" + log_tail(log_file()));
    }
  } catch (...) {
    if (running())
      kill();
    remove_dir(dir_);
    throw;
  }
}

redis_sentinel_server::~redis_sentinel_server() {
  stop();
  remove_dir(dir_);
}

std::string redis_sentinel_server::url() const {
  std::string url = "redis+sentinel://127.0.0.1:" + std::to_string(port_) + "/" + master_name_;
  if (!requirepass_.empty())
    url += "?sentinel_password=" + requirepass_;
  return url;
}

void redis_sentinel_server::write_config() const {
  // Sentinel parses its config with sdssplitargs: double quotes keep a value
  // with spaces whole, and a backslash escapes '"' and '\' inside them.
  auto quoted = [](const std::string& value) {
    std::string out = "\"";
    for (const char c : value) {
      if (c == '"' || c == '\\')
        out += '\\';
      out += c;
    }
    return out + "\"";
  };
  const std::string name = quoted(master_name_);
  std::ofstream conf(config_file(), std::ios::trunc);
  conf << "port " << port_ << "\n"
       << "bind 127.0.0.1\n"
       << "daemonize no\n"
       << "logfile " << quoted(log_file()) << "\n"
       << "dir " << quoted(dir_) << "\n"
       // The tests name every node by IP; Sentinel then never calls the resolver.
       << "sentinel resolve-hostnames no\n"
       << "sentinel monitor " << name << " 127.0.0.1 " << master_port_ << " " << quorum_ << "\n"
       << "sentinel down-after-milliseconds " << name << " " << down_after_.count() << "\n"
       << "sentinel failover-timeout " << name << " " << failover_timeout_.count() << "\n";
  if (!requirepass_.empty())
    conf << "requirepass " << quoted(requirepass_) << "\n";
  conf.close();
  if (!conf)
    throw std::runtime_error("redis-sentinel: cannot write " + config_file());
}

bool redis_sentinel_server::try_start() {
  const std::string log = log_file();
  const auto log_offset = file_size_or_zero(log);
  spawn_spec spec;
  // The redis-sentinel name matters: Debian's /usr/bin/redis-sentinel is a
  // symlink to the redis-server binary, which runs as Sentinel when argv[0]
  // says so. Sentinel needs its config as a writable file, not flags: it
  // saves what it learns there.
  spec.argv = {"redis-sentinel", config_file()};
  spec.log_file = log;  // config errors are printed before the logfile opens
  spec.cwd = dir_;
  pid_ = spawn(spec);

  // INFO server answers in Sentinel mode too, with its process_id.
  return await_redis("redis-sentinel", port_, pid_, requirepass_, log, log_offset);
}

void redis_sentinel_server::start() {
  if (running())
    throw std::logic_error("redis_sentinel_server::start: already running");
  // Same port and the config Sentinel rewrote: it resumes what it knew.
  if (!try_start())
    throw std::runtime_error("redis-sentinel: port " + std::to_string(port_) +
                             " was taken by another process while stopped" + log_tail(log_file()));
}

void redis_sentinel_server::stop() {
  if (!running())
    return;
  terminate_child(pid_, SIGTERM, redis_stop_deadline);
  pid_ = -1;
}

void redis_sentinel_server::kill() {
  if (!running())
    return;
  kill_tree(pid_);
  pid_ = -1;
}

std::pair<std::string, int> redis_sentinel_server::master_address() const {
  const auto reply = redis_command(port_, {"SENTINEL", "get-master-addr-by-name", master_name_}, requirepass_);
  if (reply.nil)
    return {"", 0};
  if (reply.type != '*' || reply.elements.size() != 2)
    throw std::runtime_error("redis-sentinel: unexpected reply to get-master-addr-by-name: " + reply.value);
  return {reply.elements[0].value, std::stoi(reply.elements[1].value)};
}

void redis_sentinel_server::failover() const {
  const auto reply = redis_command(port_, {"SENTINEL", "FAILOVER", master_name_}, requirepass_);
  if (reply.type != '+')
    throw std::runtime_error("redis-sentinel: SENTINEL FAILOVER " + master_name_ + ": " + reply.value);
}

bool redis_sentinel_server::wait_for_replicas(int n, milliseconds deadline) const {
  // Mirrors what Sentinel checks before it promotes a replica
  // (sentinelSelectSlave): a live link, not down, and a recent INFO of its
  // own, which is what sets master-link-status.
  auto fit_replicas = [&] {
    const auto reply = redis_command(port_, {"SENTINEL", "REPLICAS", master_name_}, requirepass_);
    if (reply.type != '*')
      throw std::runtime_error("redis-sentinel: SENTINEL REPLICAS " + master_name_ + ": " + reply.value);
    int fit = 0;
    for (const auto& replica : reply.elements) {
      std::map<std::string, std::string> fields;  // a flat field, value, field, value... list
      for (std::size_t i = 0; i + 1 < replica.elements.size(); i += 2)
        fields[replica.elements[i].value] = replica.elements[i + 1].value;
      const std::string flags = "," + fields["flags"] + ",";
      const bool healthy = flags.find(",slave,") != std::string::npos &&
                           flags.find(",disconnected,") == std::string::npos &&
                           flags.find(",s_down,") == std::string::npos &&
                           flags.find(",o_down,") == std::string::npos;
      if (healthy && fields["master-link-status"] == "ok")
        ++fit;
    }
    return fit >= n;
  };
  return wait_for(fit_replicas, deadline);
}

// --- postgres_server ---------------------------------------------------------------

postgres_server::postgres_server(postgres_options opts) : opts_(std::move(opts)) {
  if (::geteuid() == 0) {
    // initdb and postgres refuse root. getpwnam is fine here (before fork).
    const passwd* pw = ::getpwnam("postgres");
    if (pw == nullptr)
      throw std::runtime_error("postgres_server: running as root but there is no `postgres` user");
    drop_root_ = true;
    run_uid_ = pw->pw_uid;
    run_gid_ = pw->pw_gid;
  }
  // -k puts the unix socket in dir_: its path must fit sockaddr_un (108 bytes),
  // so a long $TMPDIR is skipped.
  dir_ = make_temp_dir("tally-pg-", drop_root_, 60);
  try {
    if (drop_root_ && ::chown(dir_.c_str(), run_uid_, run_gid_) != 0)
      throw_errno("postgres_server: chown " + dir_);

    spawn_spec initdb;
    initdb.argv = {pg_bin("initdb"), "-D", data_dir(), "-A", "trust", "-U", "postgres",
                   "--no-sync", "-E", "UTF8", "--locale=C", "--no-instructions"};
    initdb.log_file = dir_ + "/initdb.log";
    initdb.cwd = dir_;  // the postgres user may not be allowed into our cwd
    initdb.user = {drop_root_, run_uid_, run_gid_};
    const pid_t initdb_pid = spawn(initdb);
    const int status = wait_process(initdb_pid, initdb_deadline);
    if (status == -1)
      kill_tree(initdb_pid);
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
      throw std::runtime_error("initdb failed (" + describe_status(status) + ")" + log_tail(initdb.log_file));
    if (!opts_.trust_cidr.empty()) {
      std::ofstream hba(data_dir() + "/pg_hba.conf", std::ios::app);
      hba << "host all all " << opts_.trust_cidr << " trust\n";
      if (!hba.flush())
        throw std::runtime_error("postgres_server: cannot extend pg_hba.conf");
    }

    for (int attempt = 1;; ++attempt) {
      port_ = free_port();
      if (try_start())
        break;
      if (attempt == first_start_attempts)
        throw std::runtime_error("postgres: lost the race for a free port " + std::to_string(attempt) +
                                 " times" + log_tail(log_file()));
    }
    run_psql("postgres", "CREATE DATABASE tally");
    if (const char* role = std::getenv("TALLY_TEST_PG_ROLE"); role != nullptr && *role != '\0') {
      // What a production deployment runs as: an ordinary role that owns
      // its database, without the superuser's rights (SET deadlock_timeout
      // among them). The harness itself stays superuser (psql()).
      role_ = role;
      for (char c : role_)
        if (!(std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) || c == '_'))
          throw std::runtime_error("TALLY_TEST_PG_ROLE must be a plain lower-case name, got '" + role_ + "'");
      run_psql("postgres", "CREATE ROLE " + role_ + " LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE");
      run_psql("postgres", "ALTER DATABASE tally OWNER TO " + role_);
    }
  } catch (...) {
    if (running())
      kill();
    remove_dir(dir_);
    throw;
  }
}

postgres_server::~postgres_server() {
  stop();
  remove_dir(dir_);
}

std::string postgres_server::url() const {
  return "postgresql://" + (role_.empty() ? std::string("postgres") : role_) + "@127.0.0.1:" + std::to_string(port_)
         + "/tally";
}

bool postgres_server::try_start() {
  const std::string log = log_file();
  const auto log_offset = file_size_or_zero(log);
  spawn_spec spec;
  spec.argv = {pg_bin("postgres"), "-D", data_dir(), "-k", dir_, "-h", opts_.listen, "-p", std::to_string(port_),
               // Durability against process crashes is all tests need; the
               // page cache survives kill -9.
               "-c", "fsync=off", "-c", "full_page_writes=off",
               "-c", "max_connections=200", "-c", "log_min_messages=warning"};
  spec.log_file = log;
  spec.cwd = dir_;
  spec.user = {drop_root_, run_uid_, run_gid_};
  pid_ = spawn(spec);

  const std::string pid_file = data_dir() + "/postmaster.pid";
  const auto until = steady::now() + postgres_start_deadline;
  for (;;) {
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      if (read_from(log, log_offset).find("Address already in use") != std::string::npos)
        return false;
      throw std::runtime_error("postgres on port " + std::to_string(port_) + " exited while starting (" +
                               describe_status(status) + ")" + log_tail(log));
    }
    // postmaster.pid names our process and says "ready" once it accepts
    // connections (what pg_ctl waits for). That rules out answering another
    // test's postgres on a port we lost the race for, and a stale file left
    // by kill(). TCP + pg_isready then check the path clients will use.
    const bool ours_ready = read_line_of(pid_file, 1) == std::to_string(pid_) &&
                            read_line_of(pid_file, 8).rfind("ready", 0) == 0;
    if (ours_ready && port_open(port_)) {
      spawn_spec isready;
      isready.argv = {pg_bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", std::to_string(port_),
                      "-U", "postgres", "-d", "postgres", "-t", "2"};
      isready.cwd = dir_;
      isready.user = spec.user;
      const auto result = run_capture(isready, 10s);
      if (WIFEXITED(result.status) && WEXITSTATUS(result.status) == 0)
        return true;
    }
    if (steady::now() >= until) {
      kill();
      throw std::runtime_error("postgres on port " + std::to_string(port_) + " not ready after " +
                               std::to_string(postgres_start_deadline.count()) + " ms" + log_tail(log));
    }
    std::this_thread::sleep_for(10ms);
  }
}

void postgres_server::start() {
  if (running())
    throw std::logic_error("postgres_server::start: already running");
  if (!try_start())
    throw std::runtime_error("postgres: port " + std::to_string(port_) +
                             " was taken by another process while stopped" + log_tail(log_file()));
}

void postgres_server::stop() {
  if (!running())
    return;
  // SIGINT is "fast shutdown": abort sessions, checkpoint, exit. SIGTERM
  // ("smart") would wait for clients that a failing test may never close.
  terminate_child(pid_, SIGINT, postgres_stop_deadline);
  pid_ = -1;
}

void postgres_server::kill() {
  if (!running())
    return;
  // Backends and auxiliary processes die with the postmaster (kill_tree), so
  // start() right after finds no one attached to the old shared memory and
  // runs crash recovery.
  kill_tree(pid_);
  pid_ = -1;
}

std::string postgres_server::psql(const std::string& sql) const {
  return run_psql("tally", sql);
}

std::string postgres_server::psql_or_empty(const std::string& sql) const {
  try {
    return psql(sql);
  } catch (const std::runtime_error&) {
    return {};
  }
}

std::string postgres_server::run_psql(const std::string& database, const std::string& sql) const {
  spawn_spec spec;
  spec.argv = {pg_bin("psql"), "-h", "127.0.0.1", "-p", std::to_string(port_), "-U", "postgres",
               "-d", database, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql};
  spec.cwd = dir_;
  spec.user = {drop_root_, run_uid_, run_gid_};
  const auto result = run_capture(spec, psql_deadline);
  if (!WIFEXITED(result.status) || WEXITSTATUS(result.status) != 0)
    throw std::runtime_error("psql failed (" + describe_status(result.status) + ") on: " + sql + "\n" + result.err);
  return result.out;
}

} // namespace tally::testing
