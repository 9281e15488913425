// adapters/pg_client.hpp — RAII owner of a blocking libpq connection.
//
// Contract against libpq: the connection string is passed to PQconnectdb as
// given (URI or key=value keywords; unset parts come from the PG* environment
// as libpq does). connect_timeout (seconds, rounded up) and TCP keepalives are
// added unless the string sets them. Every call blocks; a lost connection
// returns pg_errc::connection_lost and the next call reconnects once. Errors
// keep the server's SQLSTATE in error_info::sqlstate ("40P01" deadlock,
// "55P03" lock timeout, "57014" statement timeout, "40001" serialization...).
// Parameters are sent as text, NULL never used. COPY FROM STDIN runs only
// through copy_in (which supplies the data); any other COPY is refused. A connection lost inside a
// transaction is never silently replaced: every statement fails with
// connection_lost until the caller sends ROLLBACK (answered at once) or
// BEGIN/START (which reconnects), so nothing runs in autocommit by accident. No libpq type appears here.
#pragma once

#include "core/result.hpp"

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tally::adapters {

enum class pg_errc : int {
  ok = 0,
  connect_failed,
  connection_lost,
  query_failed,     // the server refused the statement; see sqlstate
};
const char* to_string(pg_errc code) noexcept;

/// True for SQLSTATEs worth retrying: deadlock, serialization, lock/statement
/// timeout, connection failure classes (08xxx), admin shutdown (57P01..3).
bool is_transient(const std::string& sqlstate) noexcept;

/// A result set copied into strings (text format).
struct pg_rows {
  std::vector<std::string> columns;
  std::vector<std::vector<std::string>> rows;
  long affected = 0;  // PQcmdTuples for INSERT/UPDATE/DELETE
};

class pg_client {
public:
  static result<pg_client> connect(const std::string& conninfo, std::chrono::milliseconds timeout);

  pg_client(pg_client&&) noexcept;
  pg_client& operator=(pg_client&&) noexcept;
  ~pg_client();

  /// Runs SQL with no parameters (may hold several statements).
  result<pg_rows> exec(const std::string& sql);

  /// Runs one statement with text parameters ($1, $2, ...).
  result<pg_rows> exec_params(const std::string& sql, const std::vector<std::string>& params);

  /// Runs one `COPY ... FROM STDIN` statement and sends `data` as its whole
  /// input (in the statement's format); `affected` is the rows copied.
  result<pg_rows> copy_in(const std::string& sql, std::string_view data);

  /// Prepares `sql` under `name` on this connection (once; a reconnect
  /// re-prepares lazily) and runs it.
  result<pg_rows> exec_prepared(const std::string& name, const std::string& sql,
                                const std::vector<std::string>& params);

  bool connected() const noexcept;
  status reconnect();

  /// Quotes an identifier (schema or table name) safely.
  std::string quote_ident(std::string_view ident) const;

private:
  struct impl;
  explicit pg_client(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

/// Quotes an identifier for SQL ("a""b"), without a connection.
std::string quote_identifier(std::string_view ident);

/// Formats a PostgreSQL text[] literal ("{\"a\",\"b\"}") with escaping, for
/// passing arrays as one text parameter to unnest($1::text[]).
std::string pg_text_array(const std::vector<std::string>& items);

} // namespace tally::adapters
