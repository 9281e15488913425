// actors/resp_commands.cpp — every command tallyd answers (see
// resp_commands.hpp for the table's contract).
#include "actors/resp_commands.hpp"

#include "core/resp_parser.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <cstdio>
#include <string>
#include <type_traits>

namespace tally {

namespace {

using resp::equals_upper;
using resp::reply_writer;
using std::string_view;

const char* version_text = "7.0.0-tally";

resp_counters& counters() noexcept {
  return global_resp_counters();
}

/// Compares secrets without an early exit on the first differing byte.
bool same_secret(string_view a, string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i)
    diff |= static_cast<unsigned char>(a[i] ^ b[i % (b.empty() ? 1 : b.size())]);
  return diff == 0 && !b.empty();
}

bool valid_client_name(string_view s) {
  for (char c : s)
    if (c < '!' || c > '~')
      return false;
  return true;
}

void reject(reply_writer& out, field_error err, string_view name = {}) {
  counters().reject(err.code);
  out.field_error(err, name);
}

bool check_password(resp_session& s, string_view user, string_view given) {
  auto& pass = s.ctx->opts.requirepass;
  bool ok = user == "default" && (pass.empty() || same_secret(given, pass));
  if (ok)
    s.authed = true;
  return ok;
}

void wrongpass(reply_writer& out) {
  counters().add(&resp_counters::auth_failures);
  out.error("WRONGPASS invalid username-password pair or user is disabled.");
}

void unknown_subcommand(reply_writer& out, string_view sub, const char* cmd) {
  out.raw("-ERR unknown subcommand '");
  out.sanitized(sub, 32);
  out.raw("'. Try ");
  out.raw(cmd);
  out.raw(" HELP.\r\n");
}

/// A "name:value" line block as INFO and TALLY.STATUS send it.
struct info_text {
  std::string text;
  void section(const char* name) {
    if (!text.empty())
      text += "\r\n";
    text += "# ";
    text += name;
    text += "\r\n";
  }
  void line(string_view k, uint64_t v) { line(k, std::to_string(v)); }
  void line(string_view k, string_view v) {
    text.append(k.data(), k.size());
    text += ':';
    text.append(v.data(), v.size());
    text += "\r\n";
  }
};

// -- ingest ---------------------------------------------------------------------

resp_outcome cmd_record(resp_session& s, const resp_args& args, reply_writer& out) {
  event ev;
  string_view name;
  if (auto err = build_record(s, args, ev, name)) {
    reject(out, err, name);
    return resp_outcome::replied;
  }
  auto err = s.ctx->backend->record(ev);
  if (err.code == errc::backpressure)
    return resp_outcome::backpressure;
  if (err) {
    reject(out, err);
    return resp_outcome::replied;
  }
  ++s.accepted;
  if (s.durable)
    return resp_outcome::recorded_durable;
  out.ok();
  return resp_outcome::replied;
}

// TALLY.ACK and TALLY.DB answer a wrong argument count with their usage,
// not Redis's generic arity error: an operator typing them bare learns more.
resp_outcome cmd_ack(resp_session& s, const resp_args& args, reply_writer& out) {
  if (args.size() == 2 && equals_upper(args[1], "DURABLE"))
    s.durable = true;
  else if (args.size() == 2 && equals_upper(args[1], "BUFFERED"))
    s.durable = false;
  else {
    out.error("ERR syntax: TALLY.ACK durable|buffered");
    return resp_outcome::replied;
  }
  out.ok();
  return resp_outcome::replied;
}

// -- connection -------------------------------------------------------------------

resp_outcome cmd_ping(resp_session&, const resp_args& args, reply_writer& out) {
  if (args.size() == 1)
    out.raw("+PONG\r\n");
  else if (args.size() == 2)
    out.bulk(args[1]);
  else
    out.wrong_args("ping");
  return resp_outcome::replied;
}

resp_outcome cmd_echo(resp_session&, const resp_args& args, reply_writer& out) {
  out.bulk(args[1]);
  return resp_outcome::replied;
}

resp_outcome cmd_quit(resp_session&, const resp_args&, reply_writer& out) {
  out.ok();
  return resp_outcome::close;
}

resp_outcome cmd_auth(resp_session& s, const resp_args& args, reply_writer& out) {
  if (args.size() > 3) {
    out.wrong_args("auth");
    return resp_outcome::replied;
  }
  if (args.size() == 2 && s.ctx->opts.requirepass.empty()) {
    out.error("ERR AUTH <password> called without any password configured for the default user. "
              "Are you sure your configuration is correct?");
    return resp_outcome::replied;
  }
  string_view user = args.size() == 3 ? args[1] : string_view("default");
  if (check_password(s, user, args.back()))
    out.ok();
  else
    wrongpass(out);
  return resp_outcome::replied;
}

/// HELLO [protover [AUTH user pass] [SETNAME name]]: RESP2 or RESP3.
resp_outcome cmd_hello(resp_session& s, const resp_args& args, reply_writer& out) {
  resp::protocol proto = s.proto;
  if (args.size() >= 2) {
    int64_t ver = 0;
    if (!resp::parse_integer(args[1], ver)) {
      out.error("ERR Protocol version is not an integer or out of range");
      return resp_outcome::replied;
    }
    if (ver != 2 && ver != 3) {
      out.error("NOPROTO sorry, this protocol version is not supported");
      return resp_outcome::replied;
    }
    proto = ver == 3 ? resp::protocol::resp3 : resp::protocol::resp2;
  }
  string_view user, pass, setname;
  bool has_auth = false, has_name = false;
  for (size_t i = 2; i < args.size();) {
    if (equals_upper(args[i], "AUTH") && i + 2 < args.size()) {
      user = args[i + 1];
      pass = args[i + 2];
      has_auth = true;
      i += 3;
    } else if (equals_upper(args[i], "SETNAME") && i + 1 < args.size()) {
      setname = args[i + 1];
      has_name = true;
      i += 2;
    } else {
      out.raw("-ERR Syntax error in HELLO option '");
      out.sanitized(args[i], 32);
      out.raw("'\r\n");
      return resp_outcome::replied;
    }
  }
  if (has_auth && !check_password(s, user, pass)) {
    wrongpass(out);
    return resp_outcome::replied;
  }
  if (!s.authed) {
    counters().add(&resp_counters::noauth_refusals);
    out.error("NOAUTH HELLO must be called with the client already authenticated, otherwise the "
              "HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and "
              "select the RESP protocol version at the same time");
    return resp_outcome::replied;
  }
  if (has_name) {
    if (!valid_client_name(setname)) {
      out.error("ERR Client names cannot contain spaces, newlines or special characters.");
      return resp_outcome::replied;
    }
    s.name.assign(setname.data(), setname.size());
  }
  // The switch applies to this reply already, as in Redis.
  s.proto = proto;
  reply_writer w(out.buffer(), proto);
  w.map(7);
  w.bulk("server");
  w.bulk("tally");
  w.bulk("version");
  w.bulk(version_text);
  w.bulk("proto");
  w.integer(static_cast<int64_t>(proto));
  w.bulk("id");
  w.integer(static_cast<int64_t>(s.client_id));
  w.bulk("mode");
  w.bulk("standalone");
  w.bulk("role");
  w.bulk("master");
  w.bulk("modules");
  w.array(0);
  return resp_outcome::replied;
}

/// RESET: back to a fresh connection's state (RESP2, buffered acks, no
/// name, authenticated only when no password is set), as Redis's RESET.
resp_outcome cmd_reset(resp_session& s, const resp_args&, reply_writer& out) {
  s.proto = resp::protocol::resp2;
  s.durable = false;
  s.name.clear();
  s.authed = s.ctx->opts.requirepass.empty();
  out.raw("+RESET\r\n");
  return resp_outcome::replied;
}

resp_outcome cmd_select(resp_session&, const resp_args& args, reply_writer& out) {
  int64_t db = 0;
  if (!resp::parse_integer(args[1], db))
    out.error("ERR value is not an integer or out of range");
  else if (db != 0)
    out.error("ERR DB index is out of range (tally has one database: SELECT 0)");
  else
    out.ok();
  return resp_outcome::replied;
}

/// Enough of COMMAND for clients that ask on connect (redis-cli asks for
/// COMMAND DOCS): the names and arities of the table.
resp_outcome cmd_command(resp_session&, const resp_args& args, reply_writer& out) {
  const auto& table = resp_command_table();
  if (args.size() == 1 || equals_upper(args[1], "DOCS")) {
    if (args.size() > 1) {
      out.map(0);  // no docs: clients fall back to their own help
      return resp_outcome::replied;
    }
    out.array(table.size());
    for (const auto& c : table) {
      out.array(2);
      std::string lower(c.name);
      std::transform(lower.begin(), lower.end(), lower.begin(), [](char ch) {
        return static_cast<char>(ch >= 'A' && ch <= 'Z' ? ch - 'A' + 'a' : ch);
      });
      out.bulk(lower);
      out.integer(c.arity);
    }
  } else if (equals_upper(args[1], "LIST")) {
    out.array(table.size());
    for (const auto& c : table)
      out.bulk(c.name);
  } else if (equals_upper(args[1], "COUNT")) {
    out.integer(static_cast<int64_t>(table.size()));
  } else if (equals_upper(args[1], "INFO")) {
    out.array(args.size() - 2);
    for (size_t i = 2; i < args.size(); ++i) {
      const auto* c = find_resp_command(args[i]);
      if (c == nullptr) {
        out.null_array();
        continue;
      }
      out.array(2);
      out.bulk(args[i]);
      out.integer(c->arity);
    }
  } else {
    unknown_subcommand(out, args[1], "COMMAND");
  }
  return resp_outcome::replied;
}

resp_outcome cmd_client(resp_session& s, const resp_args& args, reply_writer& out) {
  string_view sub = args[1];
  if (equals_upper(sub, "SETNAME") && args.size() == 3) {
    if (!valid_client_name(args[2])) {
      out.error("ERR Client names cannot contain spaces, newlines or special characters.");
      return resp_outcome::replied;
    }
    s.name.assign(args[2].data(), args[2].size());
    out.ok();
  } else if (equals_upper(sub, "GETNAME")) {
    if (s.name.empty())
      out.null();
    else
      out.bulk(s.name);
  } else if (equals_upper(sub, "ID")) {
    out.integer(static_cast<int64_t>(s.client_id));
  } else if (equals_upper(sub, "INFO") || equals_upper(sub, "LIST")) {
    std::string line = "id=" + std::to_string(s.client_id) + " name=" + s.name
                       + " db=0 resp=" + std::to_string(static_cast<int>(s.proto))
                       + (s.durable ? " ack=durable" : " ack=buffered") + "\n";
    out.bulk(line);
  } else if (equals_upper(sub, "TRACKING") || equals_upper(sub, "CACHING")) {
    // Saying yes would promise invalidation pushes that never come.
    out.error("ERR client-side caching is not supported by tally (read totals with TALLY.GET)");
  } else if (equals_upper(sub, "KILL") || equals_upper(sub, "PAUSE") || equals_upper(sub, "UNPAUSE")
             || equals_upper(sub, "UNBLOCK")) {
    out.error("ERR this CLIENT subcommand is not supported by tally");
  } else {
    // SETINFO, NO-EVICT, NO-TOUCH, REPLY, MAINT_NOTIFICATIONS and whatever
    // a client library sends next on connect: client-side preferences that
    // nothing here depends on. Refusing them makes some libraries treat the
    // connection as broken.
    out.ok();
  }
  return resp_outcome::replied;
}

/// CONFIG GET: redis-benchmark asks for "save" and "appendonly" on start.
resp_outcome cmd_config(resp_session&, const resp_args& args, reply_writer& out) {
  if (!equals_upper(args[1], "GET")) {
    out.error("ERR CONFIG supports only GET here");
    return resp_outcome::replied;
  }
  std::vector<std::pair<string_view, string_view>> found;
  for (size_t i = 2; i < args.size(); ++i) {
    if (args[i] == "save")
      found.emplace_back("save", "");
    else if (args[i] == "appendonly")
      found.emplace_back("appendonly", "no");
    else if (args[i] == "databases")
      found.emplace_back("databases", "1");
  }
  out.map(found.size());
  for (auto& [k, v] : found) {
    out.bulk(k);
    out.bulk(v);
  }
  return resp_outcome::replied;
}

uint64_t resident_bytes() {
  unsigned long pages = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%lu %lu", &pages, &resident) != 2)
      resident = 0;
    std::fclose(f);
  }
  return static_cast<uint64_t>(resident) * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

std::string human_bytes(uint64_t n) {
  char buf[32];
  if (n >= (1ull << 30))
    std::snprintf(buf, sizeof buf, "%.2fG", static_cast<double>(n) / (1ull << 30));
  else if (n >= (1ull << 20))
    std::snprintf(buf, sizeof buf, "%.2fM", static_cast<double>(n) / (1ull << 20));
  else
    std::snprintf(buf, sizeof buf, "%.2fK", static_cast<double>(n) / 1024.0);
  return buf;
}

/// INFO [section ...]: every section, whatever is asked. Carries the fields
/// redis-cli --stat and monitoring agents read; "keys" is the ids interned.
resp_outcome cmd_info(resp_session& s, const resp_args&, reply_writer& out) {
  auto m = snapshot_resp_metrics();
  uint64_t rss = resident_bytes();
  info_text t;
  t.section("Server");
  t.line("redis_version", version_text);
  t.line("redis_mode", "standalone");
  t.line("tally_version", "0.1.0");
  t.line("process_id", static_cast<uint64_t>(getpid()));
  t.line("tcp_port", s.ctx->opts.port);
  t.section("Clients");
  t.line("connected_clients", m.connections_current);
  t.line("blocked_clients", uint64_t{0});
  t.line("maxclients", s.ctx->opts.max_connections);
  t.section("Memory");
  t.line("used_memory", rss);
  t.line("used_memory_human", human_bytes(rss));
  t.line("used_memory_rss", rss);
  t.section("Stats");
  t.line("total_connections_received", m.connections_total);
  t.line("total_commands_processed", m.commands);
  t.line("rejected_connections", m.connections_refused);
  t.section("Keyspace");
  t.line("db0", "keys=" + std::to_string(s.ctx->backend->interned_ids()) + ",expires=0,avg_ttl=0");
  out.bulk(t.text);
  return resp_outcome::replied;
}

// -- tally's own commands -----------------------------------------------------------

/// TALLY.STATUS: the runtime's counters and this server's, "name:value" lines.
resp_outcome cmd_status(resp_session& s, const resp_args&, reply_writer& out) {
  auto st = s.ctx->backend->snapshot();
  auto m = snapshot_resp_metrics();
  info_text t;
  t.line("events_accepted", st.events_accepted);
  // Refused over RESP, all reasons, as tally_events_rejected_total counts
  // them: most are refused while the command is read, before the runtime
  // sees an event. The runtime's own count (embedded callers included)
  // is validation_failures, as in /metrics.
  t.line("events_rejected", m.rejections_total());
  t.line("validation_failures", st.events_rejected);
  t.line("events_backpressured", st.events_backpressured);
  t.line("batches_written", st.batches_written);
  t.line("batch_bytes_written", st.batch_bytes_written);
  t.line("stage1_failures", st.stage1_failures);
  t.line("pending_batches", st.pending_batches);
  t.line("queue_depth", st.queue_depth);
  t.line("flushes", st.flushes);
  t.line("rows_upserted", st.rows_upserted);
  t.line("duplicate_batches", st.duplicate_batches);
  t.line("rows_deferred", st.rows_deferred);
  t.line("deferred_applied", st.deferred_applied);
  t.line("deferred_waiting", st.deferred_waiting);
  t.line("deferred_oldest_seconds", st.deferred_oldest_seconds);
  t.line("dead_lettered", st.dead_lettered);
  t.line("ids_interned", st.ids_interned);
  t.line("id_reclaims", st.id_reclaims);
  t.line("lease_held", st.lease_held);
  t.line("epoch", st.epoch);
  for (int i = 0; i < 5; ++i)
    t.line(std::string("redis_switches_") + redis_switch_reasons[i], st.redis_switches[i]);
  t.line("journal_batches", st.journal_batches);
  t.line("journal_bytes", st.journal_bytes);
  t.line("journaled", st.journaled);
  t.line("replayed", st.replayed);
  t.line("retained", st.retained);
  t.line("repushed", st.repushed);
#define TALLY_RESP_STATUS(member, kind, metric, help) t.line("resp_" #member, m.member);
  TALLY_RESP_COUNTERS(TALLY_RESP_STATUS)
#undef TALLY_RESP_STATUS
  out.bulk(t.text);
  return resp_outcome::replied;
}

/// TALLY.INSTANCES: every live instance of the namespace, a map per
/// instance. Read from the registry in the active Redis database, at most
/// once a second per instance; an operator command, not the ingest path.
resp_outcome cluster_reply(resp_session& s, reply_writer& out, bool leader_only) {
  auto v = s.ctx->backend->cluster();
  if (!v.error.empty()) {
    out.error("ERR", v.error);
    return resp_outcome::replied;
  }
  if (leader_only) {
    out.map(2);
    out.bulk("instance");
    out.bulk(v.leader);
    out.bulk("epoch");
    out.integer(static_cast<int64_t>(v.epoch));
    return resp_outcome::replied;
  }
  out.array(v.instances.size());
  for (const auto& i : v.instances) {
    size_t fields = 0;
    for_each_field(i, [&](const char*, const auto&) { ++fields; });
    out.map(fields);
    for_each_field(i, [&](const char* name, const auto& value) {
      using T = std::decay_t<decltype(value)>;
      out.bulk(name);
      if constexpr (std::is_same_v<T, std::string>)
        out.bulk(value);
      else if constexpr (std::is_same_v<T, bool>)
        out.integer(value ? 1 : 0);
      else
        out.integer(static_cast<int64_t>(value));
    });
  }
  return resp_outcome::replied;
}

resp_outcome cmd_instances(resp_session& s, const resp_args&, reply_writer& out) {
  return cluster_reply(s, out, false);
}

/// TALLY.LEADER: the lease holder and its epoch ("" and 0 when nobody holds it).
resp_outcome cmd_leader(resp_session& s, const resp_args&, reply_writer& out) {
  return cluster_reply(s, out, true);
}

void read_error(reply_writer& out, const read_result& r) {
  out.error(r.code == read_result::status::bad_request ? "ERR" : "TRYAGAIN", r.error);
}

/// One row's reply, formatted into one buffer and appended once: a
/// read-heavy gateway pipelines these, and two dozen small appends per
/// reply cost more than the lookup.
void put_totals(reply_writer& out, const entity_totals& e) {
  char buf[1024];  // ids are at most 256 bytes each: the reply fits
  char* p = buf;
  auto raw = [&](string_view s) {
    std::memcpy(p, s.data(), s.size());
    p += s.size();
  };
  auto bulk = [&](string_view s) {
    *p++ = '$';
    p = resp::format_int(p, static_cast<int64_t>(s.size()));
    raw("\r\n");
    raw(s);
    raw("\r\n");
  };
  auto integer = [&](int64_t v) {
    *p++ = ':';
    p = resp::format_int(p, v);
    raw("\r\n");
  };
  raw(out.proto() == resp::protocol::resp3 ? "%12\r\n" : "*24\r\n");
  raw("$11\r\nentity_type\r\n");
  bulk(e.entity_type);
  raw("$5\r\nscope\r\n");
  bulk(e.scope);
  raw("$9\r\nentity_id\r\n");
  bulk(e.entity_id);
  raw("$5\r\nfound\r\n");
  integer(e.found ? 1 : 0);
  raw("$5\r\nspend\r\n");
  bulk(e.spend);
  raw("$13\r\nprompt_tokens\r\n");
  integer(e.prompt_tokens);
  raw("$17\r\ncompletion_tokens\r\n");
  integer(e.completion_tokens);
  raw("$17\r\ncache_read_tokens\r\n");
  integer(e.cache_read_tokens);
  raw("$21\r\ncache_creation_tokens\r\n");
  integer(e.cache_creation_tokens);
  raw("$8\r\nrequests\r\n");
  integer(e.requests);
  raw("$19\r\nsuccessful_requests\r\n");
  integer(e.successful_requests);
  raw("$15\r\nfailed_requests\r\n");
  integer(e.failed_requests);
  out.raw(string_view(buf, static_cast<size_t>(p - buf)));
}

/// TALLY.GET entity_type id [scope]: one tally_spend row, a map. A hit
/// answers at once; a miss waits for Postgres on this worker (bounded by
/// read_timeout; concurrent misses of one row cost one query).
resp_outcome cmd_get(resp_session& s, const resp_args& args, reply_writer& out) {
  if (args.size() > 4) {
    out.wrong_args("tally.get");
    return resp_outcome::replied;
  }
  auto r = s.ctx->backend->get(args[1], args[2], args.size() == 4 ? args[3] : string_view{});
  if (r.code != read_result::status::ok)
    read_error(out, r);
  else
    put_totals(out, r.entities.front());
  return resp_outcome::replied;
}

/// TALLY.MGET entity_type id [id ...]; for team_member rows
/// TALLY.MGET team_member team_id user_id [user_id ...]: an array of GET's
/// replies, in order.
resp_outcome cmd_mget(resp_session& s, const resp_args& args, reply_writer& out) {
  bool member = args[1] == "team_member";
  size_t first = member ? 3 : 2;
  if (args.size() <= first) {
    out.wrong_args("tally.mget");
    return resp_outcome::replied;
  }
  std::vector<std::string> ids(args.begin() + static_cast<std::ptrdiff_t>(first), args.end());
  auto r = s.ctx->backend->mget(args[1], ids, member ? args[2] : string_view{});
  if (r.code != read_result::status::ok) {
    read_error(out, r);
    return resp_outcome::replied;
  }
  out.array(r.entities.size());
  for (const auto& e : r.entities)
    put_totals(out, e);
  return resp_outcome::replied;
}

/// TALLY.DB LIST | ADD url [weight] | REMOVE url | WEIGHT url weight |
/// PROMOTE url: the Redis databases, managed at runtime. The changes are
/// requests to the failover actor (well under a millisecond; an operator
/// command, not the ingest path).
resp_outcome cmd_db(resp_session& s, const resp_args& args, reply_writer& out) {
  auto& be = *s.ctx->backend;
  auto done = [&](const std::string& err) {
    if (err.empty())
      out.ok();
    else
      out.error("ERR", err);
    return resp_outcome::replied;
  };
  auto weight_of = [&](string_view text, uint32_t& w) {
    int64_t v = 0;
    if (!resp::parse_integer(text, v) || v < 1 || v > 1000000) {
      out.error("ERR weight must be an integer from 1 to 1000000");
      return false;
    }
    w = static_cast<uint32_t>(v);
    return true;
  };
  if (args.size() == 2 && equals_upper(args[1], "LIST")) {
    auto dbs = be.redis_databases();
    out.array(dbs.size());
    for (const auto& d : dbs) {
      out.map(7);
      out.bulk("url");
      out.bulk(d.url);
      out.bulk("weight");
      out.integer(d.weight);
      out.bulk("state");
      out.bulk(d.state);
      out.bulk("active");
      out.integer(d.active ? 1 : 0);
      out.bulk("address");
      out.bulk(d.address);
      out.bulk("opens");
      out.integer(static_cast<int64_t>(d.opens));
      out.bulk("last_error");
      out.bulk(d.last_error);
    }
    return resp_outcome::replied;
  }
  uint32_t w = 0;
  if ((args.size() == 3 || args.size() == 4) && equals_upper(args[1], "ADD")) {
    if (args.size() == 4 && !weight_of(args[3], w))
      return resp_outcome::replied;
    return done(be.add_redis_database(std::string(args[2]), w));
  }
  if (args.size() == 3 && equals_upper(args[1], "REMOVE"))
    return done(be.remove_redis_database(std::string(args[2])));
  if (args.size() == 4 && equals_upper(args[1], "WEIGHT"))
    return weight_of(args[3], w) ? done(be.set_redis_weight(std::string(args[2]), w)) : resp_outcome::replied;
  if (args.size() == 3 && equals_upper(args[1], "PROMOTE"))
    return done(be.promote_redis_database(std::string(args[2])));
  out.error("ERR syntax: TALLY.DB LIST | ADD url [weight] | REMOVE url | WEIGHT url weight | PROMOTE url");
  return resp_outcome::replied;
}

resp_outcome cmd_unwatch(resp_session&, const resp_args&, reply_writer& out) {
  out.ok();  // nothing is ever watched
  return resp_outcome::replied;
}

// TALLY.RECORD first: it is nearly every request, and the lookup tries it
// before anything else.
const std::vector<resp_command> table = {
  {"TALLY.RECORD", -1, true, true, resp_special::none, cmd_record},
  {"PING", -1, false, false, resp_special::none, cmd_ping},
  {"QUIT", -1, false, false, resp_special::none, cmd_quit},
  {"AUTH", -2, false, false, resp_special::none, cmd_auth},
  {"HELLO", -1, false, false, resp_special::none, cmd_hello},
  {"RESET", 1, false, false, resp_special::none, cmd_reset},
  {"MULTI", 1, true, false, resp_special::multi, nullptr},
  {"EXEC", 1, true, false, resp_special::exec, nullptr},
  {"DISCARD", 1, true, false, resp_special::discard, nullptr},
  {"WATCH", -2, true, false, resp_special::watch, nullptr},
  {"UNWATCH", 1, true, false, resp_special::none, cmd_unwatch},
  {"TALLY.ACK", -1, true, false, resp_special::none, cmd_ack},
  {"TALLY.GET", -3, true, false, resp_special::none, cmd_get},
  {"TALLY.MGET", -3, true, false, resp_special::none, cmd_mget},
  {"TALLY.STATUS", 1, true, false, resp_special::none, cmd_status},
  {"TALLY.DB", -1, true, false, resp_special::none, cmd_db},
  {"TALLY.INSTANCES", 1, true, false, resp_special::none, cmd_instances},
  {"TALLY.LEADER", 1, true, false, resp_special::none, cmd_leader},
  {"ECHO", 2, true, false, resp_special::none, cmd_echo},
  {"SELECT", 2, true, false, resp_special::none, cmd_select},
  {"COMMAND", -1, true, false, resp_special::none, cmd_command},
  {"CLIENT", -2, true, false, resp_special::none, cmd_client},
  {"INFO", -1, true, false, resp_special::none, cmd_info},
  {"CONFIG", -2, true, false, resp_special::none, cmd_config},
};

} // namespace

const std::vector<resp_command>& resp_command_table() noexcept {
  return table;
}

const resp_command* find_resp_command(string_view name) noexcept {
  for (const auto& c : table)
    if (equals_upper(name, c.name))
      return &c;
  return nullptr;
}

void reply_unknown_command(reply_writer& out, const resp_args& args) {
  out.raw("-ERR unknown command '");
  out.sanitized(args[0], 32);
  out.raw("', with args beginning with:");
  for (size_t i = 1; i < args.size() && i <= 3; ++i) {
    out.raw(" '");
    out.sanitized(args[i], 32);
    out.raw("'");
  }
  out.raw("\r\n");
}

void reply_noauth(reply_writer& out) {
  counters().add(&resp_counters::noauth_refusals);
  out.error("NOAUTH Authentication required.");
}

field_error build_record(resp_session& s, const resp_args& args, event& ev, string_view& name) noexcept {
  auto& builder = s.builder;
  builder.reset();
  size_t n = args.size();
  if (n < 2)
    return {errc::no_entity, field::none};
  for (size_t i = 1; i + 1 < n; i += 2) {
    if (auto err = builder.set(args[i], args[i + 1])) {
      name = args[i];
      return err;
    }
  }
  if ((n - 1) % 2 != 0) {
    name = args[n - 1];
    return {errc::missing_value, field_from_name(name)};
  }
  auto err = builder.build(ev);  // record() checks the id texts
  if (!err && ev.ts_ms == 0)
    ev.ts_ms = s.now_ms;
  return err;
}

} // namespace tally
