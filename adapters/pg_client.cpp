// adapters/pg_client.cpp — blocking libpq connection owned by RAII.
//
// One pg_client is one PGconn, used by one thread at a time. PGconn and
// PGresult live in unique_ptrs with PQfinish / PQclear as deleters, so no
// path leaks them. libpq sends with MSG_NOSIGNAL on Linux, so a dead server
// never raises SIGPIPE here.
#include "adapters/pg_client.hpp"

#include <cstring>

#include <cctype>

#include <libpq-fe.h>

#include <algorithm>
#include <charconv>
#include <unordered_map>

namespace tally::adapters {

const char* to_string(pg_errc code) noexcept {
  switch (code) {
    case pg_errc::ok: return "ok";
    case pg_errc::connect_failed: return "connect_failed";
    case pg_errc::connection_lost: return "connection_lost";
    case pg_errc::query_failed: return "query_failed";
  }
  return "unknown";
}

bool is_transient(const std::string& sqlstate) noexcept {
  if (sqlstate.size() != 5)
    return false;
  return sqlstate == "40P01"                 // deadlock_detected
         || sqlstate == "40001"              // serialization_failure
         || sqlstate == "55P03"              // lock_not_available (lock_timeout)
         || sqlstate == "57014"              // query_canceled (statement_timeout)
         || sqlstate.compare(0, 2, "08") == 0  // connection exceptions
         || sqlstate == "57P01"              // admin_shutdown
         || sqlstate == "57P02"              // crash_shutdown
         || sqlstate == "57P03";             // cannot_connect_now (starting up)
}

std::string pg_text_array(const std::vector<std::string>& items) {
  // Every element is quoted, so empty strings, NULL, commas, braces and
  // blanks are taken literally; inside quotes only '\' and '"' need escaping.
  size_t size = 2;
  for (const auto& item : items)
    size += item.size() + 3;
  std::string out;
  out.reserve(size);
  out.push_back('{');
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0)
      out.push_back(',');
    out.push_back('"');
    for (char c : items[i]) {
      if (c == '\\' || c == '"')
        out.push_back('\\');
      out.push_back(c);
    }
    out.push_back('"');
  }
  out.push_back('}');
  return out;
}

namespace {

struct conn_deleter {
  void operator()(PGconn* conn) const noexcept { PQfinish(conn); }
};
using conn_ptr = std::unique_ptr<PGconn, conn_deleter>;

struct result_deleter {
  void operator()(PGresult* res) const noexcept { PQclear(res); }
};
using result_ptr = std::unique_ptr<PGresult, result_deleter>;

struct conninfo_options_deleter {
  void operator()(PQconninfoOption* opts) const noexcept { PQconninfoFree(opts); }
};

struct pq_memory_deleter {
  void operator()(void* p) const noexcept { PQfreemem(p); }
};
using pq_string = std::unique_ptr<char, pq_memory_deleter>;

// SQLSTATE put on errors that libpq reports without one.
constexpr const char* sqlstate_cannot_connect = "08001";
constexpr const char* sqlstate_connection_failure = "08006";

error_info make_error(pg_errc code, std::string message, std::string sqlstate = {}) {
  return error_info{static_cast<int>(code), std::move(message), std::move(sqlstate)};
}

// libpq messages span lines ("ERROR: ...\nLINE 1: ...", "\n\tIs the server
// running..."); logs want one line, so each line break and the blanks
// around it become one space.
std::string one_line(const char* text) {
  std::string out;
  bool pending_space = false;
  for (const char* p = text != nullptr ? text : ""; *p != '\0'; ++p) {
    if (*p == '\n') {
      pending_space = true;
      while (!out.empty() && (out.back() == ' ' || out.back() == '\t'))
        out.pop_back();
      while (p[1] == ' ' || p[1] == '\t')
        ++p;
      continue;
    }
    if (pending_space && !out.empty())
      out.push_back(' ');
    pending_space = false;
    out.push_back(*p);
  }
  while (!out.empty() && (out.back() == ' ' || out.back() == '\t'))
    out.pop_back();
  return out.empty() ? std::string("unknown libpq error") : out;
}

// Notices (e.g. "relation already exists, skipping") would go to stderr by
// default and break the one-line-per-event log format; they carry nothing
// the caller acts on.
void ignore_notice(void*, const char*) {}

bool is_uri(const std::string& conninfo) {
  return conninfo.rfind("postgresql://", 0) == 0 || conninfo.rfind("postgres://", 0) == 0;
}

// Adds connect_timeout and TCP keepalive settings that `conninfo` does not
// set itself. PQconninfoParse reports only what the string sets (no
// environment or defaults) and validates it, so a malformed string fails
// here with libpq's own message.
result<std::string> with_connection_defaults(const std::string& conninfo,
                                             std::chrono::milliseconds timeout) {
  char* raw_error = nullptr;
  std::unique_ptr<PQconninfoOption, conninfo_options_deleter> opts(
      PQconninfoParse(conninfo.c_str(), &raw_error));
  pq_string parse_error(raw_error);
  if (!opts)
    return make_error(pg_errc::connect_failed,
                      "bad Postgres connection string: "
                          + (parse_error ? one_line(parse_error.get()) : std::string("out of memory")));

  // connect_timeout is whole seconds; round up so the bound is never shorter.
  long long timeout_s = (timeout.count() + 999) / 1000;
  if (timeout_s < 1)
    timeout_s = 1;
  std::vector<std::pair<std::string, std::string>> defaults{
      {"connect_timeout", std::to_string(timeout_s)},
      {"keepalives", "1"},
      {"keepalives_idle", "10"},
      {"keepalives_interval", "5"},
      {"keepalives_count", "3"},
  };
  std::vector<std::pair<std::string, std::string>> missing;
  for (const auto& [key, value] : defaults) {
    bool set = false;
    for (const PQconninfoOption* o = opts.get(); o->keyword != nullptr; ++o)
      if (key == o->keyword && o->val != nullptr)
        set = true;
    if (!set)
      missing.emplace_back(key, value);
  }

  std::string out = conninfo;
  bool uri = is_uri(conninfo);
  for (const auto& [key, value] : missing) {
    if (uri) {
      if (out.find('?') == std::string::npos)
        out.push_back('?');
      else if (out.back() != '?' && out.back() != '&')
        out.push_back('&');
    } else if (!out.empty()) {
      out.push_back(' ');
    }
    out += key;
    out.push_back('=');
    out += value;
  }
  return out;
}

pg_rows copy_rows(const PGresult* res) {
  pg_rows rows;
  int ncols = PQnfields(res);
  int ntuples = PQntuples(res);
  rows.columns.reserve(static_cast<size_t>(ncols));
  for (int c = 0; c < ncols; ++c)
    rows.columns.emplace_back(PQfname(res, c));
  rows.rows.resize(static_cast<size_t>(ntuples));
  for (int r = 0; r < ntuples; ++r) {
    auto& row = rows.rows[static_cast<size_t>(r)];
    row.reserve(static_cast<size_t>(ncols));
    // SQL NULL comes back as "" (PQgetvalue's convention).
    for (int c = 0; c < ncols; ++c)
      row.emplace_back(PQgetvalue(res, r, c), static_cast<size_t>(PQgetlength(res, r, c)));
  }
  // "" when the command reports no count (SELECT reports its row count).
  const char* tuples = PQcmdTuples(const_cast<PGresult*>(res));
  if (tuples != nullptr && *tuples != '\0') {
    long affected = 0;
    auto end = tuples + std::char_traits<char>::length(tuples);
    if (std::from_chars(tuples, end, affected).ec == std::errc{})
      rows.affected = affected;
  }
  return rows;
}

} // namespace

// ---------------------------------------------------------------------------

// Owns one PGconn; null only when a COPY or a failed client_encoding forced
// a drop (the next call then runs PQconnectdb again). Invariant: `prepared` names exactly the
// statements prepared on the current server session; every (re)connect and
// every lost connection clears it.
struct pg_client::impl {
  std::string conninfo;  // as given plus the defaults above
  conn_ptr conn;
  std::unordered_map<std::string, std::string> prepared;  // name -> SQL
  // The connection was lost inside a transaction. Reconnecting silently
  // would run the caller's next statement in autocommit on a new session,
  // outside the transaction it believes is open (a later COMMIT would
  // "succeed" with nothing to commit). So until the caller starts over with
  // BEGIN (or acknowledges with ROLLBACK), every statement fails.
  bool orphaned = false;
  bool in_transaction = false;  // as of the last statement's result

  bool usable() const noexcept { return conn && PQstatus(conn.get()) == CONNECTION_OK; }

  // PQconnectdb the first time, PQreset afterwards (same parameters). Both
  // block up to connect_timeout per host tried.
  status open() {
    prepared.clear();
    if (conn)
      PQreset(conn.get());
    else
      conn.reset(PQconnectdb(conninfo.c_str()));
    if (!conn)
      return make_error(pg_errc::connect_failed, "postgres connect: out of memory",
                        sqlstate_cannot_connect);
    if (PQstatus(conn.get()) != CONNECTION_OK)
      return make_error(pg_errc::connect_failed,
                        "postgres connect: " + one_line(PQerrorMessage(conn.get())),
                        sqlstate_cannot_connect);
    PQsetNoticeProcessor(conn.get(), ignore_notice, nullptr);
    // Runs SET client_encoding; blocks one round trip. 0 is success. On
    // failure the handle is dropped: it would still look CONNECTION_OK and
    // the next call would use it without UTF8.
    if (PQsetClientEncoding(conn.get(), "UTF8") != 0) {
      auto err = make_error(pg_errc::connect_failed,
                            "postgres: cannot set client_encoding UTF8: "
                                + one_line(PQerrorMessage(conn.get())),
                            sqlstate_cannot_connect);
      conn.reset();
      return err;
    }
    return {};
  }

  status ensure_connected() {
    if (usable())
      return {};
    return open();
  }

  static bool starts_with_word(const std::string& sql, const char* word) {
    size_t i = sql.find_first_not_of(" \t\r\n");
    size_t n = std::strlen(word);
    if (i == std::string::npos || sql.size() - i < n)
      return false;
    for (size_t k = 0; k < n; ++k)
      if (std::toupper(static_cast<unsigned char>(sql[i + k])) != word[k])
        return false;
    return sql.size() == i + n || !std::isalnum(static_cast<unsigned char>(sql[i + n]));
  }

  /// ROLLBACK / ABORT [WORK|TRANSACTION] alone; not ROLLBACK TO SAVEPOINT,
  /// which continues the transaction and must be refused.
  static bool is_plain_rollback(const std::string& sql) {
    std::string words;
    for (char c : sql) {
      if (c == ';')
        break;
      if (std::isspace(static_cast<unsigned char>(c))) {
        if (!words.empty() && words.back() != ' ')
          words += ' ';
      } else {
        words += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      }
    }
    if (!words.empty() && words.back() == ' ')
      words.pop_back();
    for (const char* plain : {"ROLLBACK", "ROLLBACK WORK", "ROLLBACK TRANSACTION", "ABORT", "ABORT WORK",
                              "ABORT TRANSACTION"})
      if (words == plain)
        return true;
    return false;
  }

  /// Decides what a statement may do after a transaction was lost with its
  /// connection: ROLLBACK is answered at once (the server already aborted
  /// it), BEGIN / START starts over, anything else is refused.
  enum class orphan_step { run, refuse, rolled_back };
  orphan_step check_orphan(const std::string& sql) {
    if (!orphaned)
      return orphan_step::run;
    if (is_plain_rollback(sql)) {
      orphaned = false;
      return orphan_step::rolled_back;
    }
    if (starts_with_word(sql, "BEGIN") || starts_with_word(sql, "START")) {
      orphaned = false;
      return orphan_step::run;
    }
    return orphan_step::refuse;
  }

  /// Runs `statement` unless an orphaned transaction forbids it.
  template <class Statement>
  result<pg_rows> guarded(const std::string& sql, Statement statement) {
    switch (check_orphan(sql)) {
      case orphan_step::refuse:
        return make_error(pg_errc::connection_lost,
                          "postgres: the transaction was lost with its connection; "
                          "ROLLBACK or BEGIN again",
                          sqlstate_connection_failure);
      case orphan_step::rolled_back:
        return pg_rows{};
      case orphan_step::run:
        break;
    }
    if (auto st = ensure_connected(); !st)
      return st.error();
    auto out = statement();
    if (usable())
      in_transaction = PQtransactionStatus(conn.get()) != PQTRANS_IDLE;
    return out;
  }

  // Error for a failed statement. A connection found CONNECTION_BAD makes it
  // connection_lost (SQLSTATE from the server, e.g. 57P01 on shutdown, else
  // 08006) and forgets the prepared statements.
  error_info failure(const PGresult* res) {
    std::string sqlstate;
    if (res != nullptr) {
      if (const char* field = PQresultErrorField(res, PG_DIAG_SQLSTATE))
        sqlstate = field;
    }
    std::string message = one_line(res != nullptr ? PQresultErrorMessage(res)
                                                   : PQerrorMessage(conn.get()));
    if (PQstatus(conn.get()) == CONNECTION_BAD) {
      prepared.clear();
      if (in_transaction)
        orphaned = true;
      in_transaction = false;
      if (sqlstate.empty())
        sqlstate = sqlstate_connection_failure;
      return make_error(pg_errc::connection_lost, "postgres: connection lost: " + message,
                        std::move(sqlstate));
    }
    return make_error(pg_errc::query_failed, "postgres: " + message, std::move(sqlstate));
  }

  // Takes ownership of a result from PQexec* / PQprepare and turns it into
  // rows or an error.
  result<pg_rows> finish(PGresult* raw) {
    result_ptr res(raw);
    if (!res)  // out of memory or could not send the query
      return failure(nullptr);
    switch (PQresultStatus(res.get())) {
      case PGRES_COMMAND_OK:
      case PGRES_TUPLES_OK:
      case PGRES_EMPTY_QUERY:
        return copy_rows(res.get());
      case PGRES_COPY_IN:
      case PGRES_COPY_OUT:
      case PGRES_COPY_BOTH:
        // The session now waits for COPY data this API cannot supply; a
        // fresh connection is simpler and safer than draining it.
        conn.reset();
        prepared.clear();
        return make_error(pg_errc::query_failed, "postgres: COPY is not supported by pg_client");
      default:
        return failure(res.get());
    }
  }

  static std::vector<const char*> param_pointers(const std::vector<std::string>& params) {
    std::vector<const char*> values;
    values.reserve(params.size());
    for (const auto& p : params)
      values.push_back(p.c_str());
    return values;
  }

  result<pg_rows> run_prepared(const std::string& name, const std::vector<std::string>& params) {
    auto values = param_pointers(params);
    return finish(PQexecPrepared(conn.get(), name.c_str(), static_cast<int>(values.size()),
                                 values.data(), nullptr, nullptr, 0));
  }

  status prepare(const std::string& name, const std::string& sql) {
    auto rows = finish(PQprepare(conn.get(), name.c_str(), sql.c_str(), 0, nullptr));
    if (!rows)
      return rows.error();
    prepared.emplace(name, sql);
    return {};
  }
};

const char* const moved_from_message = "pg_client used after move";

// Blocks in PQconnectdb up to connect_timeout (rounded up to whole seconds;
// libpq waits at least 2 s) per host, then one round trip for
// client_encoding. Any failure: connect_failed with libpq's message.
result<pg_client> pg_client::connect(const std::string& conninfo, std::chrono::milliseconds timeout) {
  auto full = with_connection_defaults(conninfo, timeout);
  if (!full)
    return full.error();
  auto p = std::make_unique<impl>();
  p->conninfo = std::move(full.value());
  if (auto st = p->open(); !st)
    return st.error();
  return pg_client(std::move(p));
}

pg_client::pg_client(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
pg_client::pg_client(pg_client&&) noexcept = default;
pg_client& pg_client::operator=(pg_client&&) noexcept = default;
pg_client::~pg_client() = default;

// PQexec: blocks until the server answers every statement (no client-side
// deadline; use statement_timeout). Only the last statement's rows return.
// Lost connection: connection_lost; the next call reconnects first.
result<pg_rows> pg_client::exec(const std::string& sql) {
  if (!impl_)
    return make_error(pg_errc::connection_lost, moved_from_message);
  return impl_->guarded(sql, [&] { return impl_->finish(PQexec(impl_->conn.get(), sql.c_str())); });
}

// PQexecParams with text parameters and text results: blocks like exec. A
// parameter stops at its first NUL byte (text format).
result<pg_rows> pg_client::exec_params(const std::string& sql, const std::vector<std::string>& params) {
  if (!impl_)
    return make_error(pg_errc::connection_lost, moved_from_message);
  return impl_->guarded(sql, [&] {
    auto values = impl::param_pointers(params);
    return impl_->finish(PQexecParams(impl_->conn.get(), sql.c_str(), static_cast<int>(values.size()),
                                      nullptr, values.data(), nullptr, nullptr, 0));
  });
}

// PQprepare (once per server session) then PQexecPrepared; each blocks one
// round trip. A name is bound to one SQL text for the client's life. If the
// server forgot the statement (DEALLOCATE, a pooler) outside a transaction,
// it is prepared again once.
result<pg_rows> pg_client::exec_prepared(const std::string& name, const std::string& sql,
                                         const std::vector<std::string>& params) {
  if (!impl_)
    return make_error(pg_errc::connection_lost, moved_from_message);
  return impl_->guarded(sql, [&]() -> result<pg_rows> {
  auto known = impl_->prepared.find(name);
  if (known != impl_->prepared.end() && known->second != sql)
    return make_error(pg_errc::query_failed,
                      "postgres: prepared statement '" + name + "' reused with different SQL");
  if (known == impl_->prepared.end())
    if (auto st = impl_->prepare(name, sql); !st)
      return st.error();
  auto rows = impl_->run_prepared(name, params);
  if (!rows && rows.error().sqlstate == "26000" && impl_->usable()
      && PQtransactionStatus(impl_->conn.get()) == PQTRANS_IDLE) {
    impl_->prepared.erase(name);
    if (auto st = impl_->prepare(name, sql); !st)
      return st.error();
    rows = impl_->run_prepared(name, params);
  }
  return rows;
  });
}

// PQexec starts the COPY (one round trip), PQputCopyData queues the input in
// pieces (blocking mode: each call returns only once libpq took the piece,
// flushing to the socket as its buffer fills), PQputCopyEnd ends it and
// PQgetResult waits for the server's verdict. A statement that does not
// start a COPY IN is answered like exec (an error, or refused if it is some
// other COPY). A server error during the copy comes back from PQgetResult;
// a lost connection as connection_lost.
result<pg_rows> pg_client::copy_in(const std::string& sql, std::string_view data) {
  if (!impl_)
    return make_error(pg_errc::connection_lost, moved_from_message);
  return impl_->guarded(sql, [&]() -> result<pg_rows> {
    PGconn* conn = impl_->conn.get();
    result_ptr start(PQexec(conn, sql.c_str()));
    if (!start || PQresultStatus(start.get()) != PGRES_COPY_IN)
      return impl_->finish(start.release());
    // Pieces of 1 MiB: large enough to amortize the call, small enough not
    // to double a big payload inside libpq's output buffer.
    constexpr size_t piece = 1u << 20;
    const char* failed = nullptr;
    for (size_t at = 0; at < data.size() && failed == nullptr; at += piece) {
      size_t n = std::min(piece, data.size() - at);
      if (PQputCopyData(conn, data.data() + at, static_cast<int>(n)) != 1)
        failed = "send";
    }
    if (PQputCopyEnd(conn, failed) != 1 && failed == nullptr)
      failed = "end";
    // The COPY's own result, then null; a later non-null result would be
    // the server's answer to a protocol error, kept if it is the failure.
    result<pg_rows> out = impl_->finish(PQgetResult(conn));
    while (PGresult* extra = PQgetResult(conn)) {
      auto more = impl_->finish(extra);
      if (out && !more)
        out = more;
    }
    if (out && failed != nullptr)
      return impl_->failure(nullptr);
    return out;
  });
}

bool pg_client::connected() const noexcept {
  return impl_ && impl_->usable();
}

// PQreset (or PQconnectdb if there is no handle): blocks like connect.
status pg_client::reconnect() {
  if (!impl_)
    return make_error(pg_errc::connection_lost, moved_from_message);
  impl_->orphaned = false;  // an explicit reconnect is the caller starting over
  impl_->in_transaction = false;
  return impl_->open();
}

// PQescapeIdentifier: no round trip; uses the connection's encoding. If it
// fails (invalid multibyte text) the identifier is quoted by hand and the
// server rejects the bad encoding itself, so nothing unquoted ever escapes.
std::string pg_client::quote_ident(std::string_view ident) const {
  if (impl_ && impl_->conn) {
    pq_string quoted(PQescapeIdentifier(impl_->conn.get(), ident.data(), ident.size()));
    if (quoted)
      return std::string(quoted.get());
  }
  return quote_identifier(ident);
}

std::string quote_identifier(std::string_view ident) {
  std::string out = "\"";
  for (char c : ident) {
    if (c == '"')
      out.push_back('"');
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

} // namespace tally::adapters
