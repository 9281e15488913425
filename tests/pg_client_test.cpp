// tests/pg_client_test.cpp — adapters/pg_client against a real postgres:
// rows, parameters, prepared statements across a restart, SQLSTATEs
// (syntax, unique violation, deadlock), text[] literals, lost connections.
#include "adapters/pg_client.hpp"
#include "tests/harness/servers.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <optional>
#include <string>
#include <thread>

using namespace std::chrono_literals;
using tally::adapters::is_transient;
using tally::adapters::pg_client;
using tally::adapters::pg_errc;
using tally::adapters::pg_rows;
using tally::adapters::pg_text_array;
namespace harness = tally::testing;

namespace {

constexpr auto client_timeout = std::chrono::milliseconds(5000);

int code(pg_errc c) { return static_cast<int>(c); }

// One server for the whole suite: initdb costs seconds. Tests that stop or
// kill it start it again before they end.
harness::postgres_server* server = nullptr;

class PgEnvironment : public ::testing::Environment {
public:
  void SetUp() override { server = new harness::postgres_server(); }
  void TearDown() override {
    delete server;
    server = nullptr;
  }
};
const auto* const pg_environment = ::testing::AddGlobalTestEnvironment(new PgEnvironment);

pg_client connect_or_die(const std::string& conninfo = server->url()) {
  auto client = pg_client::connect(conninfo, client_timeout);
  if (!client.ok())
    ADD_FAILURE() << "connect: " << client.error().message;
  return std::move(client.value());
}

std::string scalar(pg_client& client, const std::string& sql) {
  auto rows = client.exec(sql);
  if (!rows.ok()) {
    ADD_FAILURE() << sql << ": " << rows.error().message;
    return {};
  }
  if (rows->rows.size() != 1 || rows->rows[0].size() != 1) {
    ADD_FAILURE() << sql << ": not one value";
    return {};
  }
  return rows->rows[0][0];
}

} // namespace

// ---------------------------------------------------------------------------
// Pure functions

TEST(PgTextArray, Formats) {
  EXPECT_EQ(pg_text_array({}), "{}");
  EXPECT_EQ(pg_text_array({"a"}), R"({"a"})");
  EXPECT_EQ(pg_text_array({"a", ""}), R"({"a",""})");
  EXPECT_EQ(pg_text_array({R"(q"b\s)"}), R"({"q\"b\\s"})");
}

TEST(PgTransient, ClassifiesSqlstates) {
  for (const char* s : {"40P01", "40001", "55P03", "57014", "08006", "08001", "08003", "57P01",
                        "57P02", "57P03"})
    EXPECT_TRUE(is_transient(s)) << s;
  for (const char* s : {"", "23505", "42601", "42P01", "22P02", "57P04", "0800", "080000"})
    EXPECT_FALSE(is_transient(s)) << s;
}

TEST(PgErrc, HasNames) {
  EXPECT_STREQ(to_string(pg_errc::connection_lost), "connection_lost");
  EXPECT_STREQ(to_string(pg_errc::query_failed), "query_failed");
}

// ---------------------------------------------------------------------------
// Against a server

TEST(PgClient, ExecReturnsRowsColumnsAndCounts) {
  auto client = connect_or_die();
  EXPECT_TRUE(client.connected());
  auto rows = client.exec("select 1 as a, 'x'::text as b union all select 2, ''");
  ASSERT_TRUE(rows.ok()) << rows.error().message;
  EXPECT_EQ(rows->columns, (std::vector<std::string>{"a", "b"}));
  ASSERT_EQ(rows->rows.size(), 2u);
  EXPECT_EQ(rows->rows[0], (std::vector<std::string>{"1", "x"}));
  EXPECT_EQ(rows->rows[1], (std::vector<std::string>{"2", ""}));

  auto ddl = client.exec("drop table if exists exec_t; create table exec_t (id int primary key, v text)");
  ASSERT_TRUE(ddl.ok()) << ddl.error().message;
  EXPECT_TRUE(ddl->rows.empty());
  auto ins = client.exec("insert into exec_t values (1,'a'),(2,'b'),(3,'c')");
  ASSERT_TRUE(ins.ok()) << ins.error().message;
  EXPECT_EQ(ins->affected, 3);
  auto upd = client.exec("update exec_t set v = 'z' where id >= 2");
  ASSERT_TRUE(upd.ok());
  EXPECT_EQ(upd->affected, 2);

  auto empty = client.exec("");
  EXPECT_TRUE(empty.ok()) << empty.error().message;
}

TEST(PgClient, SessionUsesUtf8) {
  auto client = connect_or_die();
  EXPECT_EQ(scalar(client, "show client_encoding"), "UTF8");
}

TEST(PgClient, ExecParamsSendsText) {
  auto client = connect_or_die();
  auto sum = client.exec_params("select $1::int + $2::int", {"2", "40"});
  ASSERT_TRUE(sum.ok()) << sum.error().message;
  EXPECT_EQ(sum->rows.at(0).at(0), "42");

  const std::string tricky = "it's \"quoted\"; drop table x; -- ünï";
  auto echo = client.exec_params("select $1::text, length($1::text)", {tricky});
  ASSERT_TRUE(echo.ok()) << echo.error().message;
  EXPECT_EQ(echo->rows.at(0).at(0), tricky);

  auto bad = client.exec_params("select $1::int", {"forty-two"});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, code(pg_errc::query_failed));
  EXPECT_EQ(bad.error().sqlstate, "22P02");
  EXPECT_TRUE(client.connected());
}

TEST(PgClient, SyntaxErrorCarriesSqlstate42601) {
  auto client = connect_or_die();
  auto bad = client.exec("selec 1");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, code(pg_errc::query_failed));
  EXPECT_EQ(bad.error().sqlstate, "42601");
  EXPECT_NE(bad.error().message.find("syntax error"), std::string::npos) << bad.error().message;
  EXPECT_EQ(bad.error().message.find('\n'), std::string::npos);
  EXPECT_FALSE(is_transient(bad.error().sqlstate));
  EXPECT_TRUE(client.connected());
  EXPECT_EQ(scalar(client, "select 7"), "7");
}

TEST(PgClient, UniqueViolationCarriesSqlstate23505) {
  auto client = connect_or_die();
  ASSERT_TRUE(client.exec("drop table if exists uniq_t; create table uniq_t (id int primary key)").ok());
  ASSERT_TRUE(client.exec_params("insert into uniq_t values ($1::int)", {"1"}).ok());
  auto dup = client.exec_params("insert into uniq_t values ($1::int)", {"1"});
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(dup.error().code, code(pg_errc::query_failed));
  EXPECT_EQ(dup.error().sqlstate, "23505");
  EXPECT_FALSE(is_transient(dup.error().sqlstate));
}

TEST(PgClient, QuoteIdentEscapes) {
  auto client = connect_or_die();
  EXPECT_EQ(client.quote_ident("plain"), "\"plain\"");
  EXPECT_EQ(client.quote_ident("we\"ird"), "\"we\"\"ird\"");
  const std::string table = client.quote_ident("Tab \"le\"; drop");
  ASSERT_TRUE(client.exec("drop table if exists " + table + "; create table " + table + " (x int)").ok());
  auto found = client.exec_params("select count(*) from pg_tables where tablename = $1",
                                  {"Tab \"le\"; drop"});
  ASSERT_TRUE(found.ok());
  EXPECT_EQ(found->rows.at(0).at(0), "1");
}

TEST(PgClient, TextArrayRoundTrip) {
  auto client = connect_or_die();
  const std::vector<std::string> items = {
      "plain", "with,comma", "quote\"d", "back\\slash", "both\\\"", "{brace}", "", "NULL",
      " spaced ", "ünïcödé ✓ 日本語 🚀", "tab\there", "new\nline", "trailing\\",
  };
  auto rows = client.exec_params("select v from unnest($1::text[]) with ordinality as t(v, i) order by i",
                                 {pg_text_array(items)});
  ASSERT_TRUE(rows.ok()) << rows.error().message;
  ASSERT_EQ(rows->rows.size(), items.size());
  for (size_t i = 0; i < items.size(); ++i)
    EXPECT_EQ(rows->rows[i].at(0), items[i]) << i;

  auto nulls = client.exec_params("select count(*) from unnest($1::text[]) v where v is null",
                                  {pg_text_array(items)});
  ASSERT_TRUE(nulls.ok());
  EXPECT_EQ(nulls->rows.at(0).at(0), "0");

  auto none = client.exec_params("select count(*) from unnest($1::text[])", {pg_text_array({})});
  ASSERT_TRUE(none.ok()) << none.error().message;
  EXPECT_EQ(none->rows.at(0).at(0), "0");
}

TEST(PgClient, PreparedStatementRunsRepeatedly) {
  auto client = connect_or_die();
  for (int i = 0; i < 3; ++i) {
    auto r = client.exec_prepared("add_one", "select $1::int + 1", {std::to_string(i)});
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r->rows.at(0).at(0), std::to_string(i + 1));
  }
  EXPECT_EQ(scalar(client, "select count(*) from pg_prepared_statements where name = 'add_one'"), "1");

  auto clash = client.exec_prepared("add_one", "select $1::int + 2", {"0"});
  ASSERT_FALSE(clash.ok());
  EXPECT_EQ(clash.error().code, code(pg_errc::query_failed));

  // The server forgot it (DEALLOCATE, a pooler): prepared again once.
  ASSERT_TRUE(client.exec("deallocate all").ok());
  auto again = client.exec_prepared("add_one", "select $1::int + 1", {"9"});
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_EQ(again->rows.at(0).at(0), "10");

  auto broken = client.exec_prepared("broken", "selec $1", {"1"});
  ASSERT_FALSE(broken.ok());
  EXPECT_EQ(broken.error().sqlstate, "42601");
}

TEST(PgClient, DeadlockGives40P01ToOneSide) {
  auto setup = connect_or_die();
  ASSERT_TRUE(setup.exec("drop table if exists dl_t; create table dl_t (id int primary key, n int);"
                         "insert into dl_t values (1, 0), (2, 0)")
                  .ok());
  auto a = connect_or_die();
  auto b = connect_or_die();
  // Superuser may lower it per session: detection after 50 ms, not 1 s.
  ASSERT_TRUE(a.exec("set deadlock_timeout = '50ms'").ok());
  ASSERT_TRUE(b.exec("set deadlock_timeout = '50ms'").ok());
  auto a_pid = scalar(a, "select pg_backend_pid()");

  ASSERT_TRUE(a.exec("begin; update dl_t set n = n + 1 where id = 1").ok());
  ASSERT_TRUE(b.exec("begin; update dl_t set n = n + 1 where id = 2").ok());

  std::optional<tally::result<pg_rows>> a_second;
  std::thread a_thread([&] { a_second.emplace(a.exec("update dl_t set n = n + 1 where id = 2")); });
  // Wait until a is really blocked on b's row lock before closing the cycle.
  bool a_waits = harness::wait_for(
      [&] {
        auto r = setup.exec_params(
            "select count(*) from pg_stat_activity where pid = $1::int and wait_event_type = 'Lock'",
            {a_pid});
        return r.ok() && r->rows.at(0).at(0) == "1";
      },
      10s);
  auto b_second = b.exec("update dl_t set n = n + 1 where id = 1");
  a_thread.join();
  ASSERT_TRUE(a_waits);
  ASSERT_TRUE(a_second.has_value());

  const auto& ra = *a_second;
  const auto& rb = b_second;
  ASSERT_NE(ra.ok(), rb.ok()) << "exactly one side must be the deadlock victim";
  const auto& victim = ra.ok() ? rb.error() : ra.error();
  EXPECT_EQ(victim.code, code(pg_errc::query_failed));
  EXPECT_EQ(victim.sqlstate, "40P01") << victim.message;
  EXPECT_TRUE(is_transient(victim.sqlstate));
  EXPECT_NE(victim.message.find("deadlock"), std::string::npos) << victim.message;

  ASSERT_TRUE(a.exec(ra.ok() ? "commit" : "rollback").ok());
  ASSERT_TRUE(b.exec(rb.ok() ? "commit" : "rollback").ok());
  EXPECT_EQ(scalar(setup, "select sum(n) from dl_t"), "2");
}

TEST(PgClient, CopyIsRefusedAndTheClientRecovers) {
  auto client = connect_or_die();
  auto copy = client.exec("copy (select 1) to stdout");
  ASSERT_FALSE(copy.ok());
  EXPECT_EQ(copy.error().code, code(pg_errc::query_failed));
  EXPECT_EQ(scalar(client, "select 5"), "5");
}

TEST(PgClient, CopyInSendsRowsAndReportsTheirCount) {
  auto client = connect_or_die();
  ASSERT_TRUE(client.exec("create table copy_t (n int, s text)").ok());
  // More than one 1 MiB piece, so the data crosses several PQputCopyData calls.
  std::string data;
  for (int i = 0; i < 100000; ++i)
    data += std::to_string(i) + "\tvalue-" + std::string(10, 'x') + "\\\\" + "\n";
  ASSERT_GT(data.size(), size_t{2u << 20});
  auto copied = client.copy_in("copy copy_t from stdin", data);
  ASSERT_TRUE(copied.ok()) << copied.error().message;
  EXPECT_EQ(copied->affected, 100000);
  EXPECT_EQ(scalar(client, "select count(*) from copy_t where s = 'value-xxxxxxxxxx\\'"), "100000");
}

TEST(PgClient, CopyInBadDataFailsWithSqlstateAndTheClientGoesOn) {
  auto client = connect_or_die();
  ASSERT_TRUE(client.exec("create table copy_bad (n int)").ok());
  auto copied = client.copy_in("copy copy_bad from stdin", "1\nnot-a-number\n");
  ASSERT_FALSE(copied.ok());
  EXPECT_EQ(copied.error().code, code(pg_errc::query_failed));
  EXPECT_EQ(copied.error().sqlstate, "22P02");
  EXPECT_EQ(scalar(client, "select count(*) from copy_bad"), "0");
  // A statement that is no COPY FROM STDIN is answered as by exec.
  auto plain = client.copy_in("select 1", "");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(scalar(client, "select 6"), "6");
}

TEST(PgClient, ConnectionDefaultsMergeWithUriAndKeywords) {
  // A URI with its own query string gets the defaults after '&'.
  auto uri = connect_or_die(server->url() + "?application_name=tally_uri_test");
  EXPECT_EQ(scalar(uri, "show application_name"), "tally_uri_test");

  // Keyword form, setting connect_timeout itself (not overridden, not doubled).
  const std::string keywords = "host=127.0.0.1 port=" + std::to_string(server->port())
                               + " user=postgres dbname=tally connect_timeout=7 keepalives=1"
                                 " application_name=tally_kw_test";
  auto kw = connect_or_die(keywords);
  EXPECT_EQ(scalar(kw, "show application_name"), "tally_kw_test");

  auto malformed = pg_client::connect("host=127.0.0.1 port='unterminated", client_timeout);
  ASSERT_FALSE(malformed.ok());
  EXPECT_EQ(malformed.error().code, code(pg_errc::connect_failed));
  EXPECT_NE(malformed.error().message.find("connection string"), std::string::npos)
      << malformed.error().message;
}

TEST(PgClient, ConnectFailsWhenNothingListens) {
  const int port = harness::free_port();
  auto client = pg_client::connect("postgresql://postgres@127.0.0.1:" + std::to_string(port) + "/tally",
                                   client_timeout);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.error().code, code(pg_errc::connect_failed));
  EXPECT_TRUE(is_transient(client.error().sqlstate)) << client.error().sqlstate;
}

TEST(PgClient, PreparedStatementSurvivesRestart) {
  auto client = connect_or_die();
  auto first = client.exec_prepared("mul", "select $1::int * $2::int", {"6", "7"});
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_EQ(first->rows.at(0).at(0), "42");

  server->restart();

  // The old session is gone: the first call reports it...
  auto lost = client.exec_prepared("mul", "select $1::int * $2::int", {"6", "7"});
  ASSERT_FALSE(lost.ok());
  EXPECT_EQ(lost.error().code, code(pg_errc::connection_lost)) << lost.error().message;
  EXPECT_TRUE(is_transient(lost.error().sqlstate)) << lost.error().sqlstate;
  EXPECT_FALSE(client.connected());

  // ...and the next one reconnects and prepares the statement again.
  auto again = client.exec_prepared("mul", "select $1::int * $2::int", {"5", "5"});
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_EQ(again->rows.at(0).at(0), "25");
  EXPECT_TRUE(client.connected());
}

TEST(PgClient, KilledServerIsConnectionLostThenReconnects) {
  auto client = connect_or_die();
  ASSERT_TRUE(client.exec("drop table if exists kill_t; create table kill_t (x int); insert into kill_t values (1)").ok());

  server->kill();
  auto lost = client.exec("select count(*) from kill_t");
  ASSERT_FALSE(lost.ok());
  EXPECT_EQ(lost.error().code, code(pg_errc::connection_lost)) << lost.error().message;
  EXPECT_TRUE(is_transient(lost.error().sqlstate)) << lost.error().sqlstate;
  EXPECT_FALSE(client.connected());

  auto down = client.exec("select 1");
  ASSERT_FALSE(down.ok());
  EXPECT_EQ(down.error().code, code(pg_errc::connect_failed)) << down.error().message;

  server->start();
  auto back = client.exec("select count(*) from kill_t");
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(back->rows.at(0).at(0), "1");
  EXPECT_TRUE(client.connected());
}

// A transaction lost with its connection is not silently continued in
// autocommit on a new session: statements fail until ROLLBACK or BEGIN.
TEST(PgClient, TransactionLostWithConnectionIsNotContinued) {
  auto client = connect_or_die();
  ASSERT_TRUE(client.exec("drop table if exists orphan_t; create table orphan_t (x int)").ok());
  ASSERT_TRUE(client.exec("BEGIN").ok());
  ASSERT_TRUE(client.exec("insert into orphan_t values (1)").ok());
  server->kill();
  server->start();
  auto lost = client.exec("insert into orphan_t values (2)");
  ASSERT_FALSE(lost.ok());
  EXPECT_EQ(lost.error().code, code(pg_errc::connection_lost));
  // Not reconnected in autocommit: the insert and the COMMIT are refused.
  auto again = client.exec_params("insert into orphan_t values ($1)", {"3"});
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, code(pg_errc::connection_lost)) << again.error().message;
  EXPECT_FALSE(client.exec("COMMIT").ok());
  EXPECT_FALSE(client.exec("ROLLBACK TO SAVEPOINT s").ok());  // continues the lost transaction
  EXPECT_FALSE(client.exec("insert into orphan_t values (3)").ok());
  EXPECT_TRUE(client.exec("rollback").ok());
  auto count = client.exec("select count(*) from orphan_t");
  ASSERT_TRUE(count.ok()) << count.error().message;
  EXPECT_EQ(count->rows.at(0).at(0), "0");
  // BEGIN also starts over after a loss.
  ASSERT_TRUE(client.exec("BEGIN").ok());
  server->kill();
  server->start();
  EXPECT_FALSE(client.exec("insert into orphan_t values (4)").ok());
  ASSERT_TRUE(client.exec("  begin").ok());
  ASSERT_TRUE(client.exec("insert into orphan_t values (5)").ok());
  ASSERT_TRUE(client.exec("COMMIT").ok());
  count = client.exec("select string_agg(x::text, ',') from orphan_t");
  ASSERT_TRUE(count.ok());
  EXPECT_EQ(count->rows.at(0).at(0), "5");
}

TEST(PgClient, ExplicitReconnectGivesNewSession) {
  auto client = connect_or_die();
  auto pid1 = scalar(client, "select pg_backend_pid()");
  ASSERT_TRUE(client.reconnect().ok());
  auto pid2 = scalar(client, "select pg_backend_pid()");
  EXPECT_NE(pid1, pid2);
  EXPECT_EQ(scalar(client, "show client_encoding"), "UTF8");
}
