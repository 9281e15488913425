// actors/resp_connection.cpp — one RESP client: read, parse, record, reply.
//
// The cycle. CAF delivers a read (new_data_msg, up to read_chunk_bytes). The
// connection parses every complete request in it (core/resp_parser: views,
// no allocation) and executes them in a loop; a TALLY.RECORD goes straight to
// runtime::record (validate, intern, lock-free enqueue): no CAF message per
// event. Replies are appended to CAF's write buffer and flushed once per read.
// An incomplete request at the end stays in `in` for the next read.
//
// Reading is paced with CAF activity tokens (caf-0.17.md §6): the connection
// always holds at most one token and re-grants it at the end of a read it
// wants to follow. Withholding it stops reading *at once* (halt() would not
// stop the current burst). Reading stops when
//   * ingest pushes back (record() says backpressure): the command and all
//     after it stay in `in`; a timer retries every backpressure_retry; the
//     client sees TCP backpressure; nothing is dropped;
//   * replies pile up unsent (client not reading, or durable replies held)
//     past max_buffered_bytes; resumes below half of it.
// Before quit() the connection lifts the token limit (trigger(hdl)): quitting
// inside new_data_msg after the last token was used crashes CAF 0.17.
//
// Durable replies (TALLY.ACK durable). Replies stay in request order: every
// reply after a durable +OK that is not yet persisted is held in `held`,
// behind a "barrier" that marks where the durable reply goes. Ticket choice:
// a run of consecutive durable TALLY.RECORDs in one read shares one durable
// ticket, registered with runtime::record_durable on the run's last event
// (the others use record()). That is enough because this connection records
// from one thread (the multiplexer) into one producer queue, the ticket
// enters the ticket queue after all of the run's events, and the writer
// completes tickets in order only after a shard swap that drained them
// (ingest.cpp record_durable). So a pipelined read of 32 durable events costs
// one ticket and one CAF message back (resp_durable_atom), not 32.
//
// Protocol errors (resp_parser) and QUIT reply, then close once every earlier
// reply is out, as Redis does. A bad field is only an -ERR reply.
#include "actors/resp_connection.hpp"

#include "core/log.hpp"
#include "core/resp_parser.hpp"

#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace tally {

namespace {

using namespace std::chrono;
using std::string_view;

// The durable callback runs inside record_durable on this thread when the
// event is refused at once; it must not send a message then.
thread_local bool in_record_durable = false;
thread_local field_error sync_durable_error{};

const char* version_text = "7.0.0-tally";

/// Where a durable reply goes in `held` and which ticket releases it.
struct barrier {
  size_t pos;       // offset in held: bytes before it go out first
  uint64_t ticket;  // released by resp_durable_atom with this ticket or later
  uint32_t count;   // durable replies at this spot (a run shares one)
};

struct conn_state {
  static inline const char* name = "resp_connection";

  std::shared_ptr<resp_context> ctx;
  caf::io::connection_handle hdl;
  resp::request_parser parser;
  resp::request_parser peek_parser;  // next_is_record: keeps parser's views intact
  event_builder builder;
  std::vector<char> in;           // unprocessed bytes (an incomplete tail, or held back)
  std::vector<char> held;         // replies behind a pending durable reply
  std::vector<barrier> barriers;  // pending durable replies, oldest first
  std::vector<char>* out = nullptr;  // CAF's write buffer while handling a message

  uint64_t client_id = 0;
  std::string client_name;
  bool authed = false;
  bool durable = false;
  bool closing = false;        // QUIT or protocol error: close after pending replies
  bool paused_ingest = false;  // record() pushed back; retry timer armed
  bool paused_output = false;  // too many unsent reply bytes
  bool has_token = false;      // CAF holds one read token for us
  bool counted = false;        // counted in ctx->connections and global gauge
  bool closed = false;
  uint64_t unsent = 0;         // bytes CAF has not written yet (data_transferred_msg)
  uint64_t retry_generation = 0;
  uint64_t next_ticket = 1;    // ticket of the current durable run
  steady_clock::time_point last_activity;

  // Per-read tallies, added to the global counters once per read.
  uint64_t commands = 0;
  uint64_t accepted = 0;

  ~conn_state() {
    if (counted) {
      ctx->connections.fetch_sub(1, std::memory_order_relaxed);
      global_resp_counters().connections_current.fetch_sub(1, std::memory_order_relaxed);
    }
  }
};

using conn_broker = caf::io::stateful_broker<conn_state>;

// -- reply encoding ------------------------------------------------------------

void put(std::vector<char>& b, string_view s) {
  b.insert(b.end(), s.data(), s.data() + s.size());
}

/// Writes the decimal digits of `v` (with '-' when negative) at `out`
/// (room for 20 bytes); returns the end.
char* format_int(char* out, int64_t v) {
  uint64_t u = static_cast<uint64_t>(v);
  if (v < 0) {
    *out++ = '-';
    u = static_cast<uint64_t>(-(v + 1)) + 1;
  }
  char tmp[20];
  int n = 0;
  do {
    tmp[n++] = static_cast<char>('0' + u % 10);
    u /= 10;
  } while (u != 0);
  while (n > 0)
    *out++ = tmp[--n];
  return out;
}

void put_int(std::vector<char>& b, char type, int64_t v) {
  char tmp[24];
  tmp[0] = type;
  char* end = format_int(tmp + 1, v);
  *end++ = '\r';
  *end++ = '\n';
  b.insert(b.end(), tmp, end);
}

void put_bulk(std::vector<char>& b, string_view s) {
  put_int(b, '$', static_cast<int64_t>(s.size()));
  put(b, s);
  put(b, "\r\n");
}

void put_nil(std::vector<char>& b) {
  put(b, "$-1\r\n");
}

/// Appends text fit for an error line: printable ASCII, at most `max` bytes.
void put_sanitized(std::vector<char>& b, string_view s, size_t max = 64) {
  size_t n = 0;
  for (char c : s) {
    if (n++ == max) {
      put(b, "...");
      break;
    }
    auto u = static_cast<unsigned char>(c);
    b.push_back(u >= 0x20 && u < 0x7f ? c : '?');
  }
}

const char* errc_message(errc code, field about) {
  switch (code) {
    case errc::ok: return "ok";
    case errc::unknown_field: return "unknown field";
    case errc::repeated_field: return "field given twice";
    case errc::missing_value: return "field name without a value";
    case errc::empty_value: return "empty value";
    case errc::id_too_long: return "id too long (at most 256 bytes per id or tag, at most 64 tags)";
    case errc::bad_id: return "id must be UTF-8 without control characters";
    case errc::bad_number:
      return about == field::spend ? "not a decimal number" : "not a non-negative integer";
    case errc::negative_value: return "negative values are not allowed";
    case errc::overflow: return "number too large";
    case errc::bad_status: return "status must be ok or error";
    case errc::bad_timestamp: return "ts must be unix milliseconds";
    case errc::no_entity:
      return "an event must name at least one of key user team org end_user tags model";
    case errc::backpressure: return "ingest queues full, retry later";
    case errc::stopped: return "tally is stopping";
    case errc::intern_full: return "identifier table full (raise intern_capacity)";
  }
  return "refused";
}

/// "-ERR <errc> <field>: <message>\r\n". `name` is the field as the client
/// spelled it (for unknown fields); field::none prints "event".
void put_field_error(std::vector<char>& b, field_error err, string_view name = {}) {
  put(b, "-ERR ");
  put(b, to_string(err.code));
  b.push_back(' ');
  if (err.about != field::none)
    put(b, to_string(err.about));
  else if (!name.empty())
    put_sanitized(b, name);
  else
    put(b, "event");
  put(b, ": ");
  put(b, errc_message(err.code, err.about));
  put(b, "\r\n");
}

bool parse_int(string_view s, int64_t& out) {
  if (s.empty() || s.size() > 18)
    return false;
  size_t i = 0;
  bool neg = false;
  if (s[0] == '-') {
    neg = true;
    i = 1;
    if (s.size() == 1)
      return false;
  }
  int64_t v = 0;
  for (; i < s.size(); ++i) {
    if (s[i] < '0' || s[i] > '9')
      return false;
    v = v * 10 + (s[i] - '0');
  }
  out = neg ? -v : v;
  return true;
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

using resp::equals_upper;

// -- the connection ------------------------------------------------------------

class connection {
public:
  explicit connection(conn_broker* self) : self_(self), st_(self->state) {}

  void start() {
    auto& o = st_.ctx->opts;
    st_.authed = o.requirepass.empty();
    apply_parser_limits();
    st_.last_activity = steady_clock::now();
    self_->configure_read(st_.hdl, caf::io::receive_policy::at_most(o.read_chunk_bytes));
    self_->ack_writes(st_.hdl, true);
    grant_read();
    if (o.idle_timeout.count() > 0)
      arm_idle_timer();
  }

  void on_data(const caf::io::new_data_msg& msg) {
    st_.has_token = false;  // this read used it; granted again at the end if wanted
    st_.last_activity = steady_clock::now();
    if (st_.closing) {
      finish_message();
      return;
    }
    const char* data = msg.buf.data();
    size_t size = msg.buf.size();
    begin_message();
    if (st_.in.empty()) {
      size_t used = process(data, size);
      st_.in.assign(data + used, data + size);
    } else {
      st_.in.insert(st_.in.end(), data, data + size);
      consume_in();
    }
    check_input_limit();
    finish_message();
  }

  void on_retry(uint64_t generation) {
    if (generation != st_.retry_generation || !st_.paused_ingest || st_.closed)
      return;
    st_.paused_ingest = false;
    begin_message();
    consume_in();
    finish_message();
  }

  void on_durable(uint64_t ticket, uint8_t code) {
    if (st_.closed)
      return;
    begin_message();
    release_barriers(ticket, static_cast<errc>(code));
    finish_message();
  }

  void on_transferred(const caf::io::data_transferred_msg& msg) {
    st_.unsent = msg.remaining;
    if (st_.paused_output && output_backlog() <= st_.ctx->opts.max_buffered_bytes / 2) {
      st_.paused_output = false;
      if (!st_.closed)
        grant_read();
    }
  }

  void on_idle_check() {
    if (st_.closed)
      return;
    auto idle = st_.ctx->opts.idle_timeout;
    // A connection waiting for us (durable replies, backpressure) is not idle.
    bool waiting_on_us = !st_.barriers.empty() || st_.paused_ingest;
    if (!waiting_on_us && steady_clock::now() - st_.last_activity >= idle) {
      global_resp_counters().idle_closes.fetch_add(1, std::memory_order_relaxed);
      close_now();
      return;
    }
    arm_idle_timer();
  }

  void on_peer_closed() {
    st_.closed = true;
    self_->quit();
  }

private:
  // -- per-message bracket -----------------------------------------------------

  void begin_message() {
    st_.out = &self_->wr_buf(st_.hdl);
    st_.commands = 0;
    st_.accepted = 0;
  }

  /// Flushes replies, updates counters, then decides about reading and closing.
  void finish_message() {
    auto& g = global_resp_counters();
    if (st_.commands != 0)
      g.commands.fetch_add(st_.commands, std::memory_order_relaxed);
    if (st_.accepted != 0)
      g.events_accepted.fetch_add(st_.accepted, std::memory_order_relaxed);
    st_.commands = 0;
    st_.accepted = 0;
    if (st_.out != nullptr && !st_.out->empty()) {
      st_.unsent += st_.out->size();
      self_->flush(st_.hdl);
    }
    st_.out = nullptr;
    if (st_.closing && st_.barriers.empty()) {
      close_now();
      return;
    }
    if (!st_.paused_output && output_backlog() > st_.ctx->opts.max_buffered_bytes) {
      st_.paused_output = true;
      g.output_pauses.fetch_add(1, std::memory_order_relaxed);
    }
    if (wants_read())
      grant_read();
  }

  bool wants_read() const {
    return !st_.closing && !st_.closed && !st_.paused_ingest && !st_.paused_output;
  }

  void grant_read() {
    if (!st_.has_token && wants_read()) {
      self_->trigger(st_.hdl, 1);
      st_.has_token = true;
    }
  }

  uint64_t output_backlog() const {
    return st_.unsent + st_.held.size();
  }

  void close_now() {
    if (st_.closed)
      return;
    st_.closed = true;
    if (st_.out == nullptr)
      begin_message();
    if (!st_.out->empty())
      self_->flush(st_.hdl);
    st_.out = nullptr;
    // Lift the token limit first: quit() right after the read that used the
    // last token crashes CAF 0.17 (caf-0.17.md §6). quit() still sends what
    // was flushed.
    self_->trigger(st_.hdl);
    self_->quit();
  }

  void arm_idle_timer() {
    auto idle = duration_cast<milliseconds>(st_.ctx->opts.idle_timeout);
    auto tick = std::max(milliseconds(250), idle / 4);
    self_->delayed_send(self_, tick, resp_idle_atom::value);
  }

  void apply_parser_limits() {
    auto& o = st_.ctx->opts;
    resp::parse_limits l;
    l.max_args = o.max_args;
    l.max_bulk_bytes = o.max_bulk_bytes;
    if (!st_.authed) {
      // As Redis 7 does: before AUTH, no big requests (a stranger cannot make
      // us buffer megabytes). 40 arguments still let a TALLY.RECORD with
      // every field (35) through, to be refused with NOAUTH.
      l.max_args = std::min<uint32_t>(l.max_args, 40);
      l.max_bulk_bytes = std::min<uint32_t>(l.max_bulk_bytes, 16384);
    }
    st_.parser.set_limits(l);
  }

  void check_input_limit() {
    if (st_.closing || st_.in.size() <= st_.ctx->opts.max_buffered_bytes)
      return;
    global_resp_counters().buffer_limit_closes.fetch_add(1, std::memory_order_relaxed);
    auto& b = sink();
    put(b, "-ERR Protocol error: request larger than the connection buffer limit of ");
    put(b, std::to_string(st_.ctx->opts.max_buffered_bytes));
    put(b, " bytes\r\n");
    st_.closing = true;
    st_.in.clear();
  }

  // -- input ------------------------------------------------------------------

  void consume_in() {
    size_t used = process(st_.in.data(), st_.in.size());
    if (used == st_.in.size())
      st_.in.clear();
    else if (used > 0)
      st_.in.erase(st_.in.begin(), st_.in.begin() + static_cast<std::ptrdiff_t>(used));
  }

  /// Executes every complete request in [data, data + size); returns the
  /// bytes consumed. Stops early at an incomplete request, at backpressure
  /// (the request stays unconsumed) and at a protocol error or QUIT.
  size_t process(const char* data, size_t size) {
    size_t pos = 0;
    while (pos < size && !st_.closing && !st_.paused_ingest) {
      auto r = st_.parser.parse(data + pos, size - pos);
      if (r.status == resp::parse_status::incomplete)
        break;
      if (r.status == resp::parse_status::error) {
        protocol_error(r.error);
        return size;
      }
      const auto& args = st_.parser.args();
      if (args.empty()) {
        pos += r.consumed;
        continue;
      }
      ++st_.commands;
      if (!execute(args, data + pos + r.consumed, size - pos - r.consumed))
        break;  // backpressure: this request runs again on retry
      pos += r.consumed;
    }
    return pos;
  }

  void protocol_error(resp::protocol_errc code) {
    global_resp_counters().protocol_errors.fetch_add(1, std::memory_order_relaxed);
    auto& b = sink();
    put(b, "-ERR ");
    put(b, st_.parser.error_text(code));
    put(b, "\r\n");
    st_.closing = true;  // process() drops the rest of the input
  }

  /// The buffer replies go to: CAF's write buffer, or `held` while a durable
  /// reply before them is pending.
  std::vector<char>& sink() {
    return st_.barriers.empty() ? *st_.out : st_.held;
  }

  // -- commands ---------------------------------------------------------------

  /// Runs one request; false means "backpressure, not consumed".
  bool execute(const std::vector<string_view>& args, const char* rest, size_t rest_size) {
    string_view name = args[0];
    if (equals_upper(name, "TALLY.RECORD"))
      return st_.authed ? record(args, rest, rest_size) : (noauth(), true);
    auto& b = sink();
    if (equals_upper(name, "PING")) {
      if (args.size() == 1)
        put(b, "+PONG\r\n");
      else if (args.size() == 2)
        put_bulk(b, args[1]);
      else
        wrong_args(b, "ping");
      return true;
    }
    if (equals_upper(name, "QUIT")) {
      put(b, "+OK\r\n");
      st_.closing = true;  // the bytes after QUIT are never run
      return true;
    }
    if (equals_upper(name, "AUTH")) {
      auth(b, args);
      return true;
    }
    if (equals_upper(name, "HELLO")) {
      hello(b, args);
      return true;
    }
    if (!st_.authed) {
      noauth();
      return true;
    }
    if (equals_upper(name, "TALLY.ACK")) {
      if (args.size() == 2 && equals_upper(args[1], "DURABLE")) {
        st_.durable = true;
        put(b, "+OK\r\n");
      } else if (args.size() == 2 && equals_upper(args[1], "BUFFERED")) {
        st_.durable = false;
        put(b, "+OK\r\n");
      } else {
        put(b, "-ERR syntax: TALLY.ACK durable|buffered\r\n");
      }
      return true;
    }
    if (equals_upper(name, "TALLY.STATUS")) {
      status(b);
      return true;
    }
    if (equals_upper(name, "TALLY.DB")) {
      redis_db(b, args);
      return true;
    }
    if (equals_upper(name, "TALLY.INSTANCES") || equals_upper(name, "TALLY.LEADER")) {
      if (args.size() != 1)
        wrong_args(b, equals_upper(name, "TALLY.LEADER") ? "tally.leader" : "tally.instances");
      else
        cluster(b, equals_upper(name, "TALLY.LEADER"));
      return true;
    }
    if (equals_upper(name, "TALLY.GET")) {
      get(b, args);
      return true;
    }
    if (equals_upper(name, "TALLY.MGET")) {
      mget(b, args);
      return true;
    }
    if (equals_upper(name, "ECHO")) {
      if (args.size() == 2)
        put_bulk(b, args[1]);
      else
        wrong_args(b, "echo");
      return true;
    }
    if (equals_upper(name, "SELECT")) {
      int64_t db = 0;
      if (args.size() != 2)
        wrong_args(b, "select");
      else if (!parse_int(args[1], db))
        put(b, "-ERR value is not an integer or out of range\r\n");
      else if (db != 0)
        put(b, "-ERR DB index is out of range\r\n");
      else
        put(b, "+OK\r\n");
      return true;
    }
    if (equals_upper(name, "COMMAND")) {
      command(b, args);
      return true;
    }
    if (equals_upper(name, "CLIENT")) {
      client(b, args);
      return true;
    }
    if (equals_upper(name, "INFO")) {
      info(b);
      return true;
    }
    if (equals_upper(name, "CONFIG")) {
      config(b, args);
      return true;
    }
    put(b, "-ERR unknown command '");
    put_sanitized(b, name, 32);
    put(b, "', with args beginning with:");
    for (size_t i = 1; i < args.size() && i <= 3; ++i) {
      put(b, " '");
      put_sanitized(b, args[i], 32);
      b.push_back('\'');
    }
    put(b, "\r\n");
    return true;
  }

  void wrong_args(std::vector<char>& b, const char* cmd) {
    put(b, "-ERR wrong number of arguments for '");
    put(b, cmd);
    put(b, "' command\r\n");
  }

  void noauth() {
    global_resp_counters().noauth_refusals.fetch_add(1, std::memory_order_relaxed);
    put(sink(), "-NOAUTH Authentication required.\r\n");
  }

  void count_rejection(errc code) {
    auto slot = static_cast<size_t>(code);
    if (slot < resp_metrics::errc_slots)
      global_resp_counters().rejections[slot].fetch_add(1, std::memory_order_relaxed);
  }

  void reject(field_error err, string_view name = {}) {
    count_rejection(err.code);
    put_field_error(sink(), err, name);
  }

  /// TALLY.RECORD field value ...: one event.
  bool record(const std::vector<string_view>& args, const char* rest, size_t rest_size) {
    auto& builder = st_.builder;
    builder.reset();
    size_t n = args.size();
    if (n < 2) {
      reject({errc::no_entity, field::none});
      return true;
    }
    for (size_t i = 1; i + 1 < n; i += 2) {
      if (auto err = builder.set(args[i], args[i + 1])) {
        reject(err, args[i]);
        return true;
      }
    }
    if ((n - 1) % 2 != 0) {
      string_view last = args[n - 1];
      reject({errc::missing_value, field_from_name(last)}, last);
      return true;
    }
    event ev;
    if (auto err = builder.build(ev)) {  // record() checks the id texts
      reject(err);
      return true;
    }
    if (!st_.durable) {
      auto err = st_.ctx->rt->record(ev);
      if (err.code == errc::backpressure)
        return pause_for_backpressure();
      if (err) {
        reject(err);
        return true;
      }
      ++st_.accepted;
      put(sink(), "+OK\r\n");
      return true;
    }
    return record_durable(ev, rest, rest_size);
  }

  /// A durable TALLY.RECORD: the reply waits behind a barrier; the last
  /// record of a run of durable records carries the run's ticket.
  bool record_durable(const event& ev, const char* rest, size_t rest_size) {
    uint64_t ticket = st_.next_ticket;
    field_error err;
    bool ends_run = !next_is_record(rest, rest_size);
    if (ends_run) {
      caf::weak_actor_ptr weak = self_->ctrl();
      in_record_durable = true;
      sync_durable_error = {};
      st_.ctx->rt->record_durable(ev, [weak, ticket](field_error e) {
        if (in_record_durable) {  // refused at once, on the recording thread
          sync_durable_error = e;
          return;
        }
        if (auto a = caf::actor_cast<caf::actor>(weak))
          caf::anon_send(a, resp_durable_atom::value, ticket, static_cast<uint8_t>(e.code));
      });
      in_record_durable = false;
      err = sync_durable_error;
    } else {
      err = st_.ctx->rt->record(ev);
    }
    if (err.code == errc::backpressure)
      return pause_for_backpressure();
    if (err) {
      reject(err);
      // The run's earlier records (if any) still need their ticket: the next
      // record, or a later read, registers it; until then they stay held.
      return true;
    }
    ++st_.accepted;
    if (!st_.barriers.empty() && st_.barriers.back().ticket == ticket
        && st_.barriers.back().pos == st_.held.size())
      ++st_.barriers.back().count;
    else
      st_.barriers.push_back({st_.held.size(), ticket, 1});
    if (ends_run)
      ++st_.next_ticket;
    return true;
  }

  /// Whether the next complete request in the buffer is another TALLY.RECORD
  /// (then this one need not carry the ticket). Re-parses it; durable mode only.
  bool next_is_record(const char* rest, size_t rest_size) {
    resp::request_parser& p = st_.peek_parser;
    p.set_limits(st_.parser.limits());
    auto r = p.parse(rest, rest_size);
    return r.status == resp::parse_status::complete && !p.args().empty()
           && equals_upper(p.args()[0], "TALLY.RECORD");
  }

  bool pause_for_backpressure() {
    st_.paused_ingest = true;
    global_resp_counters().backpressure_pauses.fetch_add(1, std::memory_order_relaxed);
    self_->delayed_send(self_, st_.ctx->opts.backpressure_retry, resp_retry_atom::value,
                        ++st_.retry_generation);
    return false;
  }

  /// Sends every reply up to the barriers that `ticket` releases.
  void release_barriers(uint64_t ticket, errc code) {
    auto& out = *st_.out;
    size_t cursor = 0;
    size_t done = 0;
    for (; done < st_.barriers.size() && st_.barriers[done].ticket <= ticket; ++done) {
      auto& bar = st_.barriers[done];
      out.insert(out.end(), st_.held.begin() + static_cast<std::ptrdiff_t>(cursor),
                 st_.held.begin() + static_cast<std::ptrdiff_t>(bar.pos));
      cursor = bar.pos;
      for (uint32_t i = 0; i < bar.count; ++i) {
        if (code == errc::ok) {
          put(out, "+OK\r\n");
        } else {
          count_rejection(code);
          put_field_error(out, {code, field::none});
        }
      }
    }
    if (done == 0)
      return;
    st_.barriers.erase(st_.barriers.begin(), st_.barriers.begin() + static_cast<std::ptrdiff_t>(done));
    if (st_.barriers.empty()) {
      out.insert(out.end(), st_.held.begin() + static_cast<std::ptrdiff_t>(cursor), st_.held.end());
      st_.held.clear();
    } else {
      st_.held.erase(st_.held.begin(), st_.held.begin() + static_cast<std::ptrdiff_t>(cursor));
      for (auto& bar : st_.barriers)
        bar.pos -= cursor;
    }
  }

  void auth(std::vector<char>& b, const std::vector<string_view>& args) {
    if (args.size() < 2 || args.size() > 3) {
      wrong_args(b, "auth");
      return;
    }
    auto& pass = st_.ctx->opts.requirepass;
    if (args.size() == 2 && pass.empty()) {
      put(b, "-ERR AUTH <password> called without any password configured for the default user. "
             "Are you sure your configuration is correct?\r\n");
      return;
    }
    string_view user = args.size() == 3 ? args[1] : string_view("default");
    string_view given = args.back();
    if (check_password(user, given))
      put(b, "+OK\r\n");
    else
      wrongpass(b);
  }

  bool check_password(string_view user, string_view given) {
    auto& pass = st_.ctx->opts.requirepass;
    bool ok = user == "default" && (pass.empty() || same_secret(given, pass));
    if (ok && !st_.authed) {
      st_.authed = true;
      apply_parser_limits();
    }
    return ok;
  }

  void wrongpass(std::vector<char>& b) {
    global_resp_counters().auth_failures.fetch_add(1, std::memory_order_relaxed);
    put(b, "-WRONGPASS invalid username-password pair or user is disabled.\r\n");
  }

  /// HELLO [protover [AUTH user pass] [SETNAME name]], RESP2 only.
  void hello(std::vector<char>& b, const std::vector<string_view>& args) {
    if (args.size() >= 2) {
      int64_t ver = 0;
      if (!parse_int(args[1], ver)) {
        put(b, "-ERR Protocol version is not an integer or out of range\r\n");
        return;
      }
      if (ver != 2) {
        put(b, "-NOPROTO sorry, this protocol version is not supported\r\n");
        return;
      }
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
        put(b, "-ERR Syntax error in HELLO option '");
        put_sanitized(b, args[i], 32);
        put(b, "'\r\n");
        return;
      }
    }
    if (has_auth && !check_password(user, pass)) {
      wrongpass(b);
      return;
    }
    if (!st_.authed) {
      global_resp_counters().noauth_refusals.fetch_add(1, std::memory_order_relaxed);
      put(b, "-NOAUTH HELLO must be called with the client already authenticated, otherwise the "
             "HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and "
             "select the RESP protocol version at the same time\r\n");
      return;
    }
    if (has_name) {
      if (!valid_client_name(setname)) {
        put(b, "-ERR Client names cannot contain spaces, newlines or special characters.\r\n");
        return;
      }
      st_.client_name.assign(setname.data(), setname.size());
    }
    // A RESP2 "map": 7 key/value pairs as a flat array, like Redis.
    put(b, "*14\r\n");
    put_bulk(b, "server");
    put_bulk(b, "tally");
    put_bulk(b, "version");
    put_bulk(b, version_text);
    put_bulk(b, "proto");
    put(b, ":2\r\n");
    put_bulk(b, "id");
    put_int(b, ':', static_cast<int64_t>(st_.client_id));
    put_bulk(b, "mode");
    put_bulk(b, "standalone");
    put_bulk(b, "role");
    put_bulk(b, "master");
    put_bulk(b, "modules");
    put(b, "*0\r\n");
  }

  /// Enough of COMMAND for clients that ask on connect (redis-cli asks for
  /// COMMAND DOCS): tally publishes no command table.
  void command(std::vector<char>& b, const std::vector<string_view>& args) {
    if (args.size() == 1 || equals_upper(args[1], "DOCS") || equals_upper(args[1], "LIST")) {
      put(b, "*0\r\n");
    } else if (equals_upper(args[1], "COUNT")) {
      put(b, ":0\r\n");
    } else if (equals_upper(args[1], "INFO")) {
      put_int(b, '*', static_cast<int64_t>(args.size() - 2));
      for (size_t i = 2; i < args.size(); ++i)
        put(b, "*-1\r\n");
    } else {
      unknown_subcommand(b, args[1], "COMMAND");
    }
  }

  void client(std::vector<char>& b, const std::vector<string_view>& args) {
    if (args.size() < 2) {
      wrong_args(b, "client");
      return;
    }
    string_view sub = args[1];
    if (equals_upper(sub, "SETNAME") && args.size() == 3) {
      if (!valid_client_name(args[2])) {
        put(b, "-ERR Client names cannot contain spaces, newlines or special characters.\r\n");
        return;
      }
      st_.client_name.assign(args[2].data(), args[2].size());
      put(b, "+OK\r\n");
    } else if (equals_upper(sub, "GETNAME")) {
      if (st_.client_name.empty())
        put_nil(b);
      else
        put_bulk(b, st_.client_name);
    } else if (equals_upper(sub, "ID")) {
      put_int(b, ':', static_cast<int64_t>(st_.client_id));
    } else if (equals_upper(sub, "INFO") || equals_upper(sub, "LIST")) {
      std::string line = "id=" + std::to_string(st_.client_id) + " name=" + st_.client_name
                         + " db=0 resp=2" + (st_.durable ? " ack=durable" : " ack=buffered") + "\n";
      put_bulk(b, line);
    } else if (equals_upper(sub, "SETINFO") || equals_upper(sub, "NO-EVICT")
               || equals_upper(sub, "NO-TOUCH") || equals_upper(sub, "REPLY")) {
      put(b, "+OK\r\n");  // accepted and ignored: nothing here depends on them
    } else {
      unknown_subcommand(b, sub, "CLIENT");
    }
  }

  void unknown_subcommand(std::vector<char>& b, string_view sub, const char* cmd) {
    put(b, "-ERR unknown subcommand '");
    put_sanitized(b, sub, 32);
    put(b, "'. Try ");
    put(b, cmd);
    put(b, " HELP.\r\n");
  }

  /// CONFIG GET: redis-benchmark asks for "save" and "appendonly" on start.
  void config(std::vector<char>& b, const std::vector<string_view>& args) {
    if (args.size() < 3 || !equals_upper(args[1], "GET")) {
      put(b, "-ERR CONFIG supports only GET here\r\n");
      return;
    }
    std::vector<std::pair<string_view, string_view>> found;
    for (size_t i = 2; i < args.size(); ++i) {
      if (args[i] == "save")
        found.emplace_back("save", "");
      else if (args[i] == "appendonly")
        found.emplace_back("appendonly", "no");
    }
    put_int(b, '*', static_cast<int64_t>(found.size() * 2));
    for (auto& [k, v] : found) {
      put_bulk(b, k);
      put_bulk(b, v);
    }
  }

  void info(std::vector<char>& b) {
    auto m = snapshot_resp_metrics();
    std::string text = "# Server\r\nredis_version:";
    text += version_text;
    text += "\r\nredis_mode:standalone\r\ntally_version:0.1.0\r\n";
    text += "tcp_port:" + std::to_string(st_.ctx->opts.port) + "\r\n";
    text += "\r\n# Clients\r\nconnected_clients:" + std::to_string(m.connections_current) + "\r\n";
    text += "maxclients:" + std::to_string(st_.ctx->opts.max_connections) + "\r\n";
    text += "\r\n# Stats\r\ntotal_connections_received:" + std::to_string(m.connections_total) + "\r\n";
    text += "total_commands_processed:" + std::to_string(m.commands) + "\r\n";
    text += "rejected_connections:" + std::to_string(m.connections_refused) + "\r\n";
    put_bulk(b, text);
  }

  /// TALLY.INSTANCES: every live instance of the namespace, an array of
  /// field/value arrays (as TALLY.DB LIST). TALLY.LEADER: the lease holder
  /// and its epoch ("" and 0 when nobody holds the lease). Both read the
  /// registry in the active Redis database, at most once a second per
  /// instance (runtime::cluster); an operator command, not the ingest path.
  void cluster(std::vector<char>& b, bool leader_only) {
    auto v = st_.ctx->rt->cluster();
    if (!v.error.empty()) {
      put(b, "-ERR ");
      put_sanitized(b, v.error, 512);
      put(b, "\r\n");
      return;
    }
    if (leader_only) {
      put_int(b, '*', 4);
      put_bulk(b, "instance");
      put_bulk(b, v.leader);
      put_bulk(b, "epoch");
      put_int(b, ':', static_cast<int64_t>(v.epoch));
      return;
    }
    put_int(b, '*', static_cast<int64_t>(v.instances.size()));
    for (const auto& i : v.instances) {
      int64_t fields = 0;
      for_each_field(i, [&](const char*, const auto&) { ++fields; });
      put_int(b, '*', 2 * fields);
      for_each_field(i, [&](const char* name, const auto& value) {
        using T = std::decay_t<decltype(value)>;
        put_bulk(b, name);
        if constexpr (std::is_same_v<T, std::string>)
          put_bulk(b, value);
        else if constexpr (std::is_same_v<T, bool>)
          put_int(b, ':', value ? 1 : 0);
        else
          put_int(b, ':', value);
      });
    }
  }

  /// TALLY.GET entity_type id [scope]: one tally_spend row (runtime::get),
  /// a field/value array. A hit answers at once; a miss waits for Postgres
  /// on this worker (bounded by read_timeout; concurrent misses of one row
  /// cost one query).
  void get(std::vector<char>& b, const std::vector<string_view>& args) {
    if (args.size() != 3 && args.size() != 4) {
      wrong_args(b, "tally.get");
      return;
    }
    auto r = st_.ctx->rt->get(args[1], args[2], args.size() == 4 ? args[3] : string_view{});
    if (r.code != read_result::status::ok) {
      read_error(b, r);
      return;
    }
    put_totals(b, r.entities.front());
  }

  /// TALLY.MGET entity_type id [id ...]; for team_member rows
  /// TALLY.MGET team_member team_id user_id [user_id ...]: an array of GET's
  /// replies, in order.
  void mget(std::vector<char>& b, const std::vector<string_view>& args) {
    bool member = args.size() >= 2 && args[1] == "team_member";
    size_t first = member ? 3 : 2;
    if (args.size() <= first) {
      wrong_args(b, "tally.mget");
      return;
    }
    std::vector<std::string> ids(args.begin() + static_cast<std::ptrdiff_t>(first), args.end());
    auto r = st_.ctx->rt->mget(args[1], ids, member ? args[2] : string_view{});
    if (r.code != read_result::status::ok) {
      read_error(b, r);
      return;
    }
    put_int(b, '*', static_cast<int64_t>(r.entities.size()));
    for (const auto& e : r.entities)
      put_totals(b, e);
  }

  void read_error(std::vector<char>& b, const read_result& r) {
    put(b, r.code == read_result::status::bad_request ? "-ERR " : "-TRYAGAIN ");
    put_sanitized(b, r.error, 512);
    put(b, "\r\n");
  }

  /// One row's reply, formatted into one buffer and appended once: a
  /// read-heavy gateway pipelines these, and two dozen small appends per
  /// reply cost more than the lookup.
  void put_totals(std::vector<char>& b, const entity_totals& e) {
    char buf[1024];  // ids are at most 256 bytes each: the reply fits
    char* p = buf;
    auto raw = [&](string_view s) {
      std::memcpy(p, s.data(), s.size());
      p += s.size();
    };
    auto bulk = [&](string_view s) {
      *p++ = '$';
      p = format_int(p, static_cast<int64_t>(s.size()));
      raw("\r\n");
      raw(s);
      raw("\r\n");
    };
    auto integer = [&](int64_t v) {
      *p++ = ':';
      p = format_int(p, v);
      raw("\r\n");
    };
    raw("*24\r\n$11\r\nentity_type\r\n");
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
    b.insert(b.end(), buf, p);
  }

  /// TALLY.DB LIST | ADD url [weight] | REMOVE url | WEIGHT url weight |
  /// PROMOTE url: the Redis databases, managed at runtime. Behind AUTH like
  /// every command but PING, HELLO and QUIT. The changes are requests to
  /// the failover actor (a round trip of well under a millisecond; this is
  /// an operator command, not the ingest path).
  void redis_db(std::vector<char>& b, const std::vector<string_view>& args) {
    static constexpr string_view usage =
      "-ERR syntax: TALLY.DB LIST | ADD url [weight] | REMOVE url | WEIGHT url weight | PROMOTE url\r\n";
    auto* rt = st_.ctx->rt;
    auto done = [&](const std::string& err) {
      if (err.empty()) {
        put(b, "+OK\r\n");
        return;
      }
      put(b, "-ERR ");
      put_sanitized(b, err, 512);
      put(b, "\r\n");
    };
    auto weight_of = [&](string_view text, uint32_t& out) {
      int64_t w = 0;
      if (!parse_int(text, w) || w < 1 || w > 1000000) {
        put(b, "-ERR weight must be an integer from 1 to 1000000\r\n");
        return false;
      }
      out = static_cast<uint32_t>(w);
      return true;
    };
    if (args.size() == 2 && equals_upper(args[1], "LIST")) {
      auto dbs = rt->redis_databases();
      put_int(b, '*', static_cast<int64_t>(dbs.size()));
      for (const auto& d : dbs) {
        put_int(b, '*', 14);
        put_bulk(b, "url");
        put_bulk(b, d.url);
        put_bulk(b, "weight");
        put_int(b, ':', d.weight);
        put_bulk(b, "state");
        put_bulk(b, d.state);
        put_bulk(b, "active");
        put_int(b, ':', d.active ? 1 : 0);
        put_bulk(b, "address");
        put_bulk(b, d.address);
        put_bulk(b, "opens");
        put_int(b, ':', static_cast<int64_t>(d.opens));
        put_bulk(b, "last_error");
        put_bulk(b, d.last_error);
      }
      return;
    }
    if ((args.size() == 3 || args.size() == 4) && equals_upper(args[1], "ADD")) {
      uint32_t w = 0;
      if (args.size() == 4 && !weight_of(args[3], w))
        return;
      done(rt->add_redis_database(std::string(args[2]), w));
      return;
    }
    if (args.size() == 3 && equals_upper(args[1], "REMOVE")) {
      done(rt->remove_redis_database(std::string(args[2])));
      return;
    }
    if (args.size() == 4 && equals_upper(args[1], "WEIGHT")) {
      uint32_t w = 0;
      if (weight_of(args[3], w))
        done(rt->set_redis_weight(std::string(args[2]), w));
      return;
    }
    if (args.size() == 3 && equals_upper(args[1], "PROMOTE")) {
      done(rt->promote_redis_database(std::string(args[2])));
      return;
    }
    put(b, usage);
  }

  /// TALLY.STATUS: the runtime's counters and this server's, "name:value" lines.
  void status(std::vector<char>& b) {
    auto s = st_.ctx->rt->snapshot();
    auto m = snapshot_resp_metrics();
    std::string text;
    auto line = [&](const char* k, uint64_t v) {
      text += k;
      text += ':';
      text += std::to_string(v);
      text += "\r\n";
    };
    line("events_accepted", s.events_accepted);
    // Refused over RESP, all reasons, as tally_events_rejected_total counts
    // them: most are refused while the command is read, before the runtime
    // sees an event. The runtime's own count (embedded callers included)
    // is validation_failures, as in /metrics.
    line("events_rejected", m.rejections_total());
    line("validation_failures", s.events_rejected);
    line("events_backpressured", s.events_backpressured);
    line("batches_written", s.batches_written);
    line("batch_bytes_written", s.batch_bytes_written);
    line("stage1_failures", s.stage1_failures);
    line("pending_batches", s.pending_batches);
    line("queue_depth", s.queue_depth);
    line("flushes", s.flushes);
    line("rows_upserted", s.rows_upserted);
    line("duplicate_batches", s.duplicate_batches);
    line("dead_lettered", s.dead_lettered);
    line("lease_held", s.lease_held);
    line("epoch", s.epoch);
    for (int i = 0; i < 5; ++i)
      line((std::string("redis_switches_") + redis_switch_reasons[i]).c_str(), s.redis_switches[i]);
    line("journal_batches", s.journal_batches);
    line("journal_bytes", s.journal_bytes);
    line("journaled", s.journaled);
    line("replayed", s.replayed);
    line("retained", s.retained);
    line("repushed", s.repushed);
    line("resp_connections", m.connections_current);
    line("resp_commands", m.commands);
    line("resp_protocol_errors", m.protocol_errors);
    put_bulk(b, text);
  }

  conn_broker* self_;
  conn_state& st_;
};

caf::behavior resp_connection_impl(conn_broker* self, caf::io::connection_handle hdl,
                                   std::shared_ptr<resp_context> ctx) {
  auto& st = self->state;
  st.ctx = std::move(ctx);
  st.hdl = hdl;
  st.counted = true;
  st.client_id = st.ctx->next_client_id.fetch_add(1, std::memory_order_relaxed);
  connection(self).start();
  return {
    [=](const caf::io::new_data_msg& msg) { connection(self).on_data(msg); },
    [=](const caf::io::data_transferred_msg& msg) { connection(self).on_transferred(msg); },
    [=](const caf::io::connection_passivated_msg&) { self->state.has_token = false; },
    [=](const caf::io::connection_closed_msg&) { connection(self).on_peer_closed(); },
    [=](resp_retry_atom, uint64_t generation) { connection(self).on_retry(generation); },
    [=](resp_durable_atom, uint64_t ticket, uint8_t code) { connection(self).on_durable(ticket, code); },
    [=](resp_idle_atom) { connection(self).on_idle_check(); },
  };
}

caf::behavior refused_connection_impl(caf::io::broker* self, caf::io::connection_handle hdl) {
  static constexpr string_view msg = "-ERR max number of clients reached\r\n";
  self->write(hdl, msg.size(), msg.data());
  self->flush(hdl);
  self->quit();  // the flushed reply still goes out, then the socket closes
  return {};
}

} // namespace

resp_counters& global_resp_counters() noexcept {
  static resp_counters counters;
  return counters;
}

resp_metrics snapshot_resp_metrics() noexcept {
  auto& c = global_resp_counters();
  auto r = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  resp_metrics m;
  m.connections_current = r(c.connections_current);
  m.connections_total = r(c.connections_total);
  m.connections_refused = r(c.connections_refused);
  m.commands = r(c.commands);
  m.events_accepted = r(c.events_accepted);
  for (size_t i = 0; i < resp_metrics::errc_slots; ++i)
    m.rejections[i] = r(c.rejections[i]);
  m.protocol_errors = r(c.protocol_errors);
  m.auth_failures = r(c.auth_failures);
  m.noauth_refusals = r(c.noauth_refusals);
  m.backpressure_pauses = r(c.backpressure_pauses);
  m.output_pauses = r(c.output_pauses);
  m.idle_closes = r(c.idle_closes);
  m.buffer_limit_closes = r(c.buffer_limit_closes);
  return m;
}

caf::actor fork_resp_connection(caf::io::broker* acceptor, caf::io::connection_handle hdl,
                                std::shared_ptr<resp_context> ctx) {
  return acceptor->fork(resp_connection_impl, hdl, std::move(ctx));
}

void fork_refused_connection(caf::io::broker* acceptor, caf::io::connection_handle hdl) {
  acceptor->fork(refused_connection_impl, hdl);
}

} // namespace tally
