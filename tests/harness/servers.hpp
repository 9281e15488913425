// tests/harness/servers.hpp — real redis-server, redis-sentinel and postgres
// for tests.
//
// Each server runs on a free loopback port in its own temp dir, is waited for
// with a deadline, and is torn down (SIGKILL if SIGTERM does not do) when the
// object dies, whatever the test did. postgres refuses to run as root: when
// root, initdb and postgres run as the `postgres` user (its data dir is
// chowned to it). A server that cannot be started is a hard failure
// (std::runtime_error with the server's log tail), never a skip.
//
// Children are started with PR_SET_PDEATHSIG(SIGKILL), so a test binary that
// crashes does not leak servers. The kernel sends that signal when the
// *thread* that spawned the child exits: create servers on a thread that
// outlives them (the gtest main thread, a fixture), not on a short-lived one.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <sys/types.h>
#include <utility>
#include <vector>

namespace tally::testing {

/// Creates a fresh 0700 directory under $TMPDIR (or /tmp) and returns its
/// path; the caller removes it (or leaves it to the OS's tmp cleaning).
std::string temp_dir(const std::string& prefix);

/// Returns a TCP port that was free on 127.0.0.1 a moment ago.
int free_port();

/// Returns whether something accepts TCP connections on 127.0.0.1:port now.
bool port_open(int port);

/// Returns whether `pid` names a live process (a zombie counts as dead).
bool process_exists(pid_t pid);

/// One RESP2 reply read by redis_command (RESP3 types throw: the harness
/// never sends HELLO 3).
struct resp_reply {
  char type = 0;        // '+' simple string, '-' error, ':' integer, '$' bulk, '*' array
  std::string value;    // without the type byte and CRLF; empty for arrays
  bool nil = false;     // '$' or '*' with length -1
  std::vector<resp_reply> elements;  // '*': the elements, nested arrays included
};

/// Sends one command as raw RESP on a fresh connection to 127.0.0.1:port
/// (AUTH first when `password` is set) and returns the reply. Throws
/// std::runtime_error when it cannot connect or the reply is not complete
/// within `timeout`. Independent of hiredis on purpose: the harness must not
/// depend on the client it helps to test.
resp_reply redis_command(int port, const std::vector<std::string>& args,
                         const std::string& password = "",
                         std::chrono::milliseconds timeout = std::chrono::milliseconds(5000));

struct redis_options {
  bool appendonly = true;           // appendonly yes + appendfsync always
  std::string requirepass;          // empty: no password
  /// > 0: starts as `replicaof 127.0.0.1 <port>` (with masterauth =
  /// requirepass: a replica of a harness server shares its password).
  int replica_of_port = 0;
  /// Addresses to listen on: loopback unless a test reaches the server from
  /// another network namespace ("0.0.0.0"); redis_command() always uses
  /// 127.0.0.1.
  std::string bind = "127.0.0.1";
};

/// One redis-server child process. The constructor picks a free port and
/// starts it (retrying on another port if the port was taken meanwhile);
/// later start() calls reuse that port and dir, so with appendonly the data
/// survives stop()/kill() + start(), as it would for a real restart.
class redis_server {
public:
  explicit redis_server(redis_options opts = {});
  ~redis_server();                   // stops the server, removes the dir
  redis_server(const redis_server&) = delete;
  redis_server& operator=(const redis_server&) = delete;

  int port() const noexcept { return port_; }
  std::string url() const;           // redis://127.0.0.1:<port> (with :<password>@ when set)
  pid_t pid() const noexcept { return pid_; }
  const std::string& dir() const noexcept { return dir_; }

  void start();                      // (re)start on the same port and dir; waits for PING
  void stop();                       // SHUTDOWN-like: SIGTERM, wait for exit
  void kill();                       // SIGKILL, wait for exit
  void restart() { stop(); start(); }
  bool running() const noexcept { return pid_ > 0; }

  /// Returns whether this replica has finished its sync with its primary
  /// (INFO replication says master_link_status:up); false for a primary.
  bool replica_link_up() const;

private:
  /// Starts once on port_; returns false if another process holds the port.
  bool try_start();
  std::string log_file() const { return dir_ + "/redis.log"; }

  redis_options opts_;
  std::string dir_;
  int port_ = 0;
  pid_t pid_ = -1;
};

/// One redis-sentinel child process monitoring one primary on 127.0.0.1.
///
/// The constructor picks a free port, writes sentinel.conf into its own temp
/// dir (`sentinel monitor <name> 127.0.0.1 <master_port> <quorum>`, the
/// down-after and failover timeouts, `resolve-hostnames no`) and starts it.
/// Sentinel rewrites that file as it learns (its id, replicas, other
/// Sentinels, epochs, a failover's new primary), so stop()/kill() + start()
/// resumes with what it knew, as a real restart does. Sentinel discovers
/// replicas through the primary's INFO (every 10 s, at once on connect):
/// start it after the replicas are in sync, and wait_for_replicas() before a
/// failover(), which needs a replica it has seen healthy.
class redis_sentinel_server {
public:
  redis_sentinel_server(std::string master_name, int master_port, int quorum = 1,
                        std::chrono::milliseconds down_after = std::chrono::milliseconds(1000),
                        std::chrono::milliseconds failover_timeout = std::chrono::milliseconds(5000),
                        std::string requirepass = "");  // non-empty: clients must AUTH with it
  ~redis_sentinel_server();          // stops the Sentinel, removes the dir
  redis_sentinel_server(const redis_sentinel_server&) = delete;
  redis_sentinel_server& operator=(const redis_sentinel_server&) = delete;

  int port() const noexcept { return port_; }
  pid_t pid() const noexcept { return pid_; }
  const std::string& dir() const noexcept { return dir_; }
  const std::string& master_name() const noexcept { return master_name_; }
  /// redis+sentinel://127.0.0.1:<port>/<master name> (with
  /// ?sentinel_password=<requirepass> when set).
  std::string url() const;
  bool running() const noexcept { return pid_ > 0; }

  void start();                      // (re)start on the same port and dir; waits for PING
  void stop();                       // SIGTERM, wait for exit
  void kill();                       // SIGKILL, wait for exit

  /// Asks it for the master's address (SENTINEL get-master-addr-by-name);
  /// {"", 0} when it does not know the master. Throws when it cannot ask.
  std::pair<std::string, int> master_address() const;
  /// Starts a failover now, without agreement from other Sentinels
  /// (SENTINEL FAILOVER). Throws on an error reply (-NOGOODSLAVE: no replica
  /// it knows is fit; -INPROG: one is running).
  void failover() const;
  /// Waits until it knows at least `n` replicas of the master that are fit
  /// for promotion (connected, not down, their own INFO says the link to the
  /// master is ok); returns whether that happened within `deadline`.
  bool wait_for_replicas(int n, std::chrono::milliseconds deadline) const;

private:
  /// Writes a fresh sentinel.conf for port_.
  void write_config() const;
  /// Starts once on port_; returns false if another process holds the port.
  bool try_start();
  std::string config_file() const { return dir_ + "/sentinel.conf"; }
  std::string log_file() const { return dir_ + "/sentinel.log"; }

  std::string master_name_;
  int master_port_;
  int quorum_;
  std::chrono::milliseconds down_after_;
  std::chrono::milliseconds failover_timeout_;
  std::string requirepass_;
  std::string dir_;
  int port_ = 0;
  pid_t pid_ = -1;
};

/// One postgres 15 cluster (initdb once, then a postmaster child process)
/// with a database "tally", trust auth for user postgres on 127.0.0.1.
/// With TALLY_TEST_PG_ROLE=<name> set, the database is owned by a new
/// ordinary role of that name (no superuser, no CREATEDB/CREATEROLE) and
/// url() connects as it, so whatever tally runs against it has only the
/// rights a production role has; psql() still connects as postgres.
/// Runs with fsync=off: a kill() loses nothing that the OS page cache holds,
/// which is what a process crash (not a power cut) looks like.
struct postgres_options {
  /// Addresses to listen on ("-h"): loopback unless a test reaches the
  /// server from another network namespace ("*").
  std::string listen = "127.0.0.1";
  /// A CIDR from which connections are trusted besides loopback's.
  std::string trust_cidr;
};

class postgres_server {
public:
  explicit postgres_server(postgres_options opts = {});  // initdb + start; database "tally"
  ~postgres_server();
  postgres_server(const postgres_server&) = delete;
  postgres_server& operator=(const postgres_server&) = delete;

  int port() const noexcept { return port_; }
  /// postgresql://<postgres or TALLY_TEST_PG_ROLE>@127.0.0.1:<port>/tally
  std::string url() const;
  /// Whether url() connects as a superuser (no TALLY_TEST_PG_ROLE).
  bool superuser() const noexcept { return role_.empty(); }
  pid_t pid() const noexcept { return pid_; }
  const std::string& dir() const noexcept { return dir_; }
  std::string data_dir() const { return dir_ + "/data"; }
  bool running() const noexcept { return pid_ > 0; }

  void start();                      // waits until it accepts connections
  void stop();                       // fast shutdown (SIGINT)
  void kill();                       // SIGKILL of the postmaster
  void restart() { stop(); start(); }

  /// Runs SQL through psql and returns its unaligned, tuples-only output.
  std::string psql(const std::string& sql) const;
  /// As psql(), but "" when psql fails: for polls that may start before
  /// tallyd's migration has created the table they read.
  std::string psql_or_empty(const std::string& sql) const;

private:
  /// Starts once on port_; returns false if another process holds the port.
  bool try_start();
  std::string run_psql(const std::string& database, const std::string& sql) const;
  std::string log_file() const { return dir_ + "/postgres.log"; }

  std::string dir_;
  int port_ = 0;
  pid_t pid_ = -1;
  postgres_options opts_;
  std::string role_;                 // TALLY_TEST_PG_ROLE; empty: postgres
  bool drop_root_ = false;           // run binaries as run_uid_/run_gid_
  uid_t run_uid_ = 0;
  gid_t run_gid_ = 0;
};

/// Waits until `pred()` holds or `deadline` passes; returns pred()'s last value.
template <class Pred>
bool wait_for(Pred pred, std::chrono::milliseconds deadline,
              std::chrono::milliseconds poll = std::chrono::milliseconds(20));

/// Runs a child process (argv[0] looked up in PATH); returns its pid.
/// Throws std::runtime_error when it cannot be executed.
pid_t spawn_process(const std::vector<std::string>& argv, const std::string& log_file = "");
/// Waits for a child; returns its exit status as from waitpid (or -1 on
/// timeout, or when `pid` is not a child of this process).
int wait_process(pid_t pid, std::chrono::milliseconds deadline);

} // namespace tally::testing

#include "tests/harness/servers_inl.hpp"
