// actors/resp_connection.cpp — one RESP client: read, parse, run, reply in order.
//
// The cycle. CAF delivers a read (new_data_msg, up to read_chunk_bytes). The
// connection parses every complete request in it (core/resp_parser: views,
// no allocation), looks each up in the command table (resp_commands.hpp)
// and runs it; a TALLY.RECORD goes straight to the backend's record()
// (validate, intern, lock-free enqueue): no CAF message per event. Replies
// are appended to CAF's write buffer and flushed once per read. An
// incomplete request at the end stays in `in` for the next read.
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
// A token granted too soon after a pause is lost. When the last token is
// used, CAF 0.17 queues the removal of the socket's read interest and
// applies it only at the end of the multiplexer round; until then
// stream::activate() sees its reader still set and does nothing, and the
// removal then lands on top of the new token. The same round often carries
// the socket's write event (data_transferred_msg) or a timer or fence reply
// through the multiplexer's pipe, and each of those resumes reading: the
// connection stalled for ever with input waiting. So after a pause the
// connection is "parked": it grants no token until a message posted to the
// multiplexer's own queue (run at the start of the next round, after the
// removal) says the pause has landed.
//
// Reply order: a queue of slots. While nothing waits, replies go straight
// into CAF's write buffer and the queue is empty (the steady state). A
// durable +OK (TALLY.ACK durable) cannot be sent before its event is in
// Redis, so it opens a waiting slot; every later reply goes into ready
// slots behind it, and the queue is flushed from the front as waiting slots
// fill. Durable records of one read share one fence: at the end of the read
// the connection asks the backend for one durable_fence (completed once
// every event this thread recorded before it is in Redis, ingest.hpp), so a
// pipelined read of 32 durable events costs one ticket and one CAF message
// back (resp_durable_atom), not 32. A refused event is only its own error
// reply; the fence is asked for regardless, so earlier replies never wait
// on a later event.
//
// Transactions. MULTI queues the raw bytes of each command (+QUEUED) after
// checking its name, arity and AUTH (a failure makes EXEC answer
// EXECABORT, as Redis does). EXEC builds every queued TALLY.RECORD's event,
// then records them with one all-or-nothing record_all: a refused event
// fails the whole EXEC, with its error at its place and "not counted" at
// the others, and nothing is counted; backpressure holds the EXEC back like
// any record. The other queued commands run in order into the EXEC array.
//
// Stopping. When the listener stops (an exit message from the acceptor), a
// connection with durable replies still waiting stops reading and waits for
// them (the runtime's stop drains ingest, which completes every fence), then
// closes; replies still waiting after resp_stop_grace are answered
// "-ERR stopped", never dropped.
//
// Protocol errors (resp_parser) and QUIT reply, then close once every earlier
// reply is out, as Redis does. A bad field is only an -ERR reply.
#include "actors/resp_connection.hpp"

#include "actors/resp_commands.hpp"
#include "core/log.hpp"
#include "core/resp_parser.hpp"
#include "core/resp_reply.hpp"

#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include <deque>
#include <string>
#include <string_view>
#include <vector>

namespace tally {

namespace {

using namespace std::chrono;
using std::string_view;

using resp_stop_atom = caf::atom_constant<caf::atom("respstop")>;

/// The smallest read the connection asks CAF for (see adapt_read_size).
constexpr uint32_t min_read_size = 4096;

/// How long a stopping connection waits for its durable replies.
constexpr seconds stop_grace{15};

/// Replies that go out together, in order. A waiting slot (ticket != 0) is
/// released by the durable fence `ticket`: `bytes` is what it sends when
/// the fence succeeds; on failure it sends one error per owed reply.
struct reply_slot {
  std::vector<char> bytes;
  uint64_t ticket = 0;  // 0: ready
  uint32_t owed = 0;    // replies this waiting slot stands for
};

struct conn_state {
  static inline const char* name = "resp_connection";

  std::shared_ptr<resp_context> ctx;
  caf::io::connection_handle hdl;
  resp::request_parser parser;
  resp_session session;
  std::vector<char> in;           // unprocessed bytes (an incomplete tail, or held back)
  std::deque<reply_slot> slots;   // replies behind a waiting one; empty in steady state
  std::vector<char>* out = nullptr;  // CAF's write buffer while handling a message

  bool closing = false;        // QUIT, protocol error or stop: close after pending replies
  bool stopping = false;       // the listener stopped
  bool paused_ingest = false;  // record() pushed back; retry timer armed
  bool paused_output = false;  // too many unsent reply bytes
  bool has_token = false;      // CAF holds one read token for us
  bool parked = false;         // reading paused; CAF has not yet applied it (see top)
  bool counted = false;        // counted in ctx->connections and global gauge
  bool closed = false;
  uint64_t unsent = 0;         // bytes CAF has not written yet (data_transferred_msg)
  size_t out_base = 0;         // bytes already in CAF's buffer when this message began
  uint32_t read_size = 0;      // the read size CAF is configured with now
  uint64_t retry_generation = 0;
  uint64_t next_ticket = 1;    // the fence the current durable replies wait for
  bool fence_owed = false;     // replies wait on next_ticket, not yet asked for
  uint64_t held_bytes = 0;     // bytes in slots

  // MULTI state: the queued requests' raw bytes, parsed again at EXEC.
  bool in_multi = false;
  bool multi_dirty = false;    // a queued command was refused: EXEC aborts
  std::string queued;
  uint32_t queued_count = 0;
  resp::request_parser exec_parser;
  std::vector<event> exec_events;
  std::vector<char> exec_reply;

  steady_clock::time_point last_activity;
  uint64_t commands = 0;  // per-read tally, added to the global counters once per read

  ~conn_state() {
    if (counted) {
      ctx->connections.fetch_sub(1, std::memory_order_relaxed);
      global_resp_counters().connections_current.fetch_sub(1, std::memory_order_relaxed);
    }
  }
};

using conn_broker = caf::io::stateful_broker<conn_state>;

constexpr string_view not_counted_reply =
  "-ERR not_counted event: this transaction counted nothing (another command in it was refused)\r\n";

class connection {
public:
  explicit connection(conn_broker* self) : self_(self), st_(self->state) {}

  void start() {
    auto& o = st_.ctx->opts;
    st_.session.ctx = st_.ctx.get();
    st_.session.authed = o.requirepass.empty();
    apply_parser_limits();
    st_.last_activity = steady_clock::now();
    set_read_size(std::min<uint32_t>(o.read_chunk_bytes, min_read_size));
    self_->ack_writes(st_.hdl, true);
    grant_read();
    if (o.idle_timeout.count() > 0)
      arm_idle_timer();
  }

  void on_data(const caf::io::new_data_msg& msg) {
    st_.has_token = false;  // this read used it; granted again at the end if wanted
    st_.last_activity = steady_clock::now();
    if (st_.closing) {
      begin_message();
      finish_message();
      return;
    }
    const char* data = msg.buf.data();
    size_t size = msg.buf.size();
    adapt_read_size(size);
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
    if (!st_.closing)
      consume_in();
    finish_message();
  }

  void on_durable(uint64_t ticket, uint8_t code) {
    if (st_.closed)
      return;
    begin_message();
    for (auto& s : st_.slots)
      if (s.ticket == ticket)
        settle(s, static_cast<errc>(code));
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

  /// CAF used the last token and will stop reading at the end of this
  /// multiplexer round. A function posted to the multiplexer runs at the
  /// start of the next round; the message it sends arrives after the stop.
  /// One is outstanding at most: no token is granted, so no new pause comes,
  /// until it has arrived.
  void on_passivated() {
    st_.has_token = false;
    st_.parked = true;
    caf::weak_actor_ptr weak = self_->ctrl();
    self_->backend().post([weak] {
      if (auto a = caf::actor_cast<caf::actor>(weak))
        caf::anon_send(a, resp_unpark_atom::value);
    });
  }

  void on_unpark() {
    st_.parked = false;
    if (!st_.closed)
      grant_read();
  }

  void on_idle_check() {
    if (st_.closed)
      return;
    auto idle = st_.ctx->opts.idle_timeout;
    // A connection waiting for us (durable replies, backpressure) is not idle.
    bool waiting_on_us = !st_.slots.empty() || st_.paused_ingest;
    if (!waiting_on_us && steady_clock::now() - st_.last_activity >= idle) {
      global_resp_counters().add(&resp_counters::idle_closes);
      close_now();
      return;
    }
    arm_idle_timer();
  }

  /// The listener stopped: answer what is owed, then close.
  void on_stop() {
    if (st_.closed || st_.stopping)
      return;
    st_.stopping = true;
    st_.closing = true;
    begin_message();
    finish_message();  // asks for an owed fence; closes now if nothing waits
    if (!st_.closed)
      self_->delayed_send(self_, stop_grace, resp_stop_atom::value);
  }

  /// The stop grace ran out: every reply still waiting becomes an error.
  void on_stop_deadline() {
    if (st_.closed)
      return;
    begin_message();
    for (auto& s : st_.slots) {
      if (s.ticket != 0) {
        global_resp_counters().add(&resp_counters::stop_abandoned_replies, s.owed);
        settle(s, errc::stopped);
      }
    }
    finish_message();
  }

  void on_peer_closed() {
    st_.closed = true;
    self_->quit();
  }

private:
  // -- per-message bracket -----------------------------------------------------

  void begin_message() {
    st_.session.now_ms = duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
    st_.out = &self_->wr_buf(st_.hdl);
    // While CAF is writing, its buffer keeps bytes an earlier message added
    // (and counted): count only what this message adds.
    st_.out_base = st_.out->size();
    st_.commands = 0;
  }

  /// Asks for the owed fence, sends what is ready, updates counters, then
  /// decides about reading and closing.
  void finish_message() {
    auto& g = global_resp_counters();
    if (st_.commands != 0)
      g.add(&resp_counters::commands, st_.commands);
    if (st_.session.accepted != 0) {
      st_.ctx->backend->wake();  // once per read, not per event
      g.add(&resp_counters::events_accepted, st_.session.accepted);
    }
    st_.commands = 0;
    st_.session.accepted = 0;
    if (st_.fence_owed)
      ask_fence();
    release_ready();
    if (st_.out != nullptr && !st_.out->empty()) {
      st_.unsent += st_.out->size() - st_.out_base;
      self_->flush(st_.hdl);
    }
    st_.out = nullptr;
    if (st_.closing && st_.slots.empty()) {
      close_now();
      return;
    }
    if (!st_.paused_output && output_backlog() > st_.ctx->opts.max_buffered_bytes) {
      st_.paused_output = true;
      g.add(&resp_counters::output_pauses);
    }
    if (wants_read())
      grant_read();
  }

  bool wants_read() const {
    return !st_.closing && !st_.closed && !st_.paused_ingest && !st_.paused_output;
  }

  void grant_read() {
    if (!st_.has_token && !st_.parked && wants_read()) {
      self_->trigger(st_.hdl, 1);
      st_.has_token = true;
    }
  }

  uint64_t output_backlog() const {
    return st_.unsent + st_.held_bytes;
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

  /// CAF 0.17 shrinks its read buffer to each read's size and grows it back,
  /// zero-filled, before the next read: a 64 KiB buffer that receives 4 KiB
  /// costs a 60 KiB memset per read. So the read size follows what arrives:
  /// doubled when a read fills it, halved when reads use an eighth of it.
  void adapt_read_size(size_t got) {
    uint32_t max = st_.ctx->opts.read_chunk_bytes;
    uint32_t size = st_.read_size;
    if (got >= size && size < max)
      set_read_size(std::min<uint32_t>(max, size * 2));
    else if (got < size / 8 && size > min_read_size)
      set_read_size(std::max<uint32_t>(min_read_size, size / 2));
  }

  void set_read_size(uint32_t size) {
    st_.read_size = size;
    self_->configure_read(st_.hdl, caf::io::receive_policy::at_most(size));
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
    if (!st_.session.authed) {
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
    global_resp_counters().add(&resp_counters::buffer_limit_closes);
    writer().raw("-ERR Protocol error: request larger than the connection buffer limit of "
                 + std::to_string(st_.ctx->opts.max_buffered_bytes) + " bytes\r\n");
    st_.closing = true;
    st_.in.clear();
  }

  // -- reply slots ---------------------------------------------------------------

  /// Where the next reply goes: CAF's write buffer, or a ready slot behind
  /// the waiting ones.
  std::vector<char>& sink() {
    if (st_.slots.empty())
      return *st_.out;
    if (st_.slots.back().ticket != 0)
      st_.slots.emplace_back();
    return st_.slots.back().bytes;
  }

  resp::reply_writer writer() { return resp::reply_writer(sink(), st_.session.proto); }

  /// Appends `reply` as a waiting slot released by the next fence, standing
  /// for `owed` replies (merged into the last slot when it waits on the same
  /// fence).
  void owe(string_view reply, uint32_t owed) {
    if (!st_.slots.empty() && st_.slots.back().ticket == 0 && st_.slots.back().bytes.empty())
      st_.slots.pop_back();  // opened by writer() for a reply that never came
    if (st_.slots.empty() || st_.slots.back().ticket != st_.next_ticket)
      st_.slots.push_back(reply_slot{{}, st_.next_ticket, 0});
    auto& s = st_.slots.back();
    s.bytes.insert(s.bytes.end(), reply.begin(), reply.end());
    s.owed += owed;
    st_.fence_owed = true;
  }

  void ask_fence() {
    uint64_t ticket = st_.next_ticket++;
    st_.fence_owed = false;
    caf::weak_actor_ptr weak = self_->ctrl();
    st_.ctx->backend->durable_fence([weak, ticket](errc code) {
      if (auto a = caf::actor_cast<caf::actor>(weak))
        caf::anon_send(a, resp_durable_atom::value, ticket, static_cast<uint8_t>(code));
    });
  }

  /// Fills a waiting slot: its success bytes, or one error per owed reply.
  void settle(reply_slot& s, errc code) {
    s.ticket = 0;
    if (code == errc::ok)
      return;
    s.bytes.clear();
    resp::reply_writer w(s.bytes, st_.session.proto);
    for (uint32_t i = 0; i < s.owed; ++i) {
      global_resp_counters().reject(code);
      w.field_error({code, field::none});
    }
  }

  /// Moves every ready slot at the front into CAF's buffer.
  void release_ready() {
    auto& out = *st_.out;
    while (!st_.slots.empty() && st_.slots.front().ticket == 0) {
      auto& b = st_.slots.front().bytes;
      out.insert(out.end(), b.begin(), b.end());
      st_.slots.pop_front();
    }
    uint64_t held = 0;
    for (auto& s : st_.slots)
      held += s.bytes.size();
    st_.held_bytes = held;
  }

  // -- input ------------------------------------------------------------------

  void consume_in() {
    size_t used = process(st_.in.data(), st_.in.size());
    if (used == st_.in.size())
      st_.in.clear();
    else if (used > 0)
      st_.in.erase(st_.in.begin(), st_.in.begin() + static_cast<std::ptrdiff_t>(used));
  }

  /// Runs every complete request in [data, data + size); returns the bytes
  /// consumed. Stops early at an incomplete request, at backpressure (the
  /// request stays unconsumed) and at a protocol error or QUIT.
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
      if (!execute(args, string_view(data + pos, r.consumed)))
        break;  // backpressure: this request runs again on retry
      pos += r.consumed;
    }
    return pos;
  }

  void protocol_error(resp::protocol_errc code) {
    global_resp_counters().add(&resp_counters::protocol_errors);
    writer().error("ERR " + st_.parser.error_text(code));
    st_.closing = true;  // process() drops the rest of the input
  }

  /// Runs one request (`raw` is its bytes); false means "backpressure, not
  /// consumed".
  bool execute(const resp_args& args, string_view raw) {
    const resp_command* cmd = find_resp_command(args[0]);
    if (st_.in_multi && !runs_inside_multi(cmd)) {
      queue(cmd, args, raw);
      return true;
    }
    auto w = writer();
    if (cmd == nullptr) {
      reply_unknown_command(w, args);
      return true;
    }
    if (!arity_ok(*cmd, args.size())) {
      wrong_args(w, *cmd);
      return true;
    }
    if (cmd->needs_auth && !st_.session.authed) {
      reply_noauth(w);
      return true;
    }
    switch (cmd->special) {
      case resp_special::multi:
        if (st_.in_multi) {
          w.error("ERR MULTI calls can not be nested");
        } else {
          st_.in_multi = true;
          w.ok();
        }
        return true;
      case resp_special::discard:
        if (!st_.in_multi) {
          w.error("ERR DISCARD without MULTI");
        } else {
          end_multi();
          w.ok();
        }
        return true;
      case resp_special::exec:
        return exec();  // writes through its own writer: owe() may drop w's slot
      case resp_special::watch:
        w.error(st_.in_multi ? "ERR WATCH inside MULTI is not allowed"
                             : "ERR WATCH is not supported by tally: no key changes between commands, "
                               "so MULTI/EXEC needs no WATCH");
        return true;
      case resp_special::none:
        break;
    }
    return run(*cmd, args, w);
  }

  /// Runs a table command outside a transaction.
  bool run(const resp_command& cmd, const resp_args& args, resp::reply_writer& w) {
    bool was_authed = st_.session.authed;
    auto outcome = cmd.handler(st_.session, args, w);
    if (st_.session.authed != was_authed)
      apply_parser_limits();
    if (cmd.special == resp_special::none && cmd.name == "RESET")
      end_multi();
    switch (outcome) {
      case resp_outcome::replied:
        return true;
      case resp_outcome::recorded_durable:
        owe("+OK\r\n", 1);
        return true;
      case resp_outcome::backpressure:
        pause_for_backpressure();
        return false;
      case resp_outcome::close:
        st_.closing = true;  // the bytes after QUIT are never run
        return true;
    }
    return true;
  }

  void wrong_args(resp::reply_writer& w, const resp_command& cmd) {
    std::string lower(cmd.name);
    for (auto& c : lower)
      if (c >= 'A' && c <= 'Z')
        c = static_cast<char>(c - 'A' + 'a');
    w.wrong_args(lower);
  }

  // -- transactions ---------------------------------------------------------------

  /// Inside MULTI, these run at once; every other command is queued.
  static bool runs_inside_multi(const resp_command* cmd) {
    return cmd != nullptr
           && (cmd->special != resp_special::none || cmd->name == "QUIT" || cmd->name == "RESET");
  }

  void queue(const resp_command* cmd, const resp_args& args, string_view raw) {
    auto w = writer();
    if (cmd == nullptr) {
      reply_unknown_command(w, args);
      st_.multi_dirty = true;
    } else if (!arity_ok(*cmd, args.size())) {
      wrong_args(w, *cmd);
      st_.multi_dirty = true;
    } else if (cmd->needs_auth && !st_.session.authed) {
      reply_noauth(w);
      st_.multi_dirty = true;
    } else if (cmd->name == "TALLY.ACK") {
      w.error("ERR TALLY.ACK inside MULTI is not allowed (set it before MULTI)");
      st_.multi_dirty = true;
    } else if (st_.queued.size() + raw.size() > st_.ctx->opts.max_buffered_bytes) {
      w.error("ERR transaction larger than resp_max_buffered_bytes; split it");
      st_.multi_dirty = true;
    } else {
      st_.queued.append(raw.data(), raw.size());
      ++st_.queued_count;
      w.raw("+QUEUED\r\n");
    }
  }

  void end_multi() {
    st_.in_multi = false;
    st_.multi_dirty = false;
    st_.queued.clear();
    st_.queued_count = 0;
  }

  /// Calls fn(index, cmd, args) for each queued request, in order.
  template <class F>
  void for_each_queued(F&& fn) {
    auto& p = st_.exec_parser;
    p.set_limits(st_.parser.limits());
    const char* data = st_.queued.data();
    size_t size = st_.queued.size(), pos = 0;
    for (uint32_t i = 0; i < st_.queued_count && pos < size; ++i) {
      auto r = p.parse(data + pos, size - pos);
      if (r.status != resp::parse_status::complete)
        return;  // the bytes were parsed once already; cannot happen
      pos += r.consumed;
      fn(i, *find_resp_command(p.args()[0]), p.args());
    }
  }

  /// EXEC: false means backpressure (the EXEC runs again on retry).
  bool exec() {
    if (!st_.in_multi) {
      writer().error("ERR EXEC without MULTI");
      return true;
    }
    if (st_.multi_dirty) {
      end_multi();
      global_resp_counters().add(&resp_counters::transactions_refused);
      writer().error("EXECABORT Transaction discarded because of previous errors.");
      return true;
    }
    // Build every event first: a malformed one refuses the whole EXEC.
    auto& events = st_.exec_events;
    events.clear();
    int64_t bad_cmd = -1;
    field_error bad{};
    std::string bad_name;
    for_each_queued([&](uint32_t i, const resp_command& cmd, const resp_args& args) {
      if (!cmd.record || bad_cmd >= 0)
        return;
      event ev;
      string_view name;
      if (auto err = build_record(st_.session, args, ev, name)) {
        bad_cmd = i;
        bad = err;
        bad_name.assign(name.data(), name.size());
        return;
      }
      events.push_back(ev);
    });
    if (bad_cmd < 0) {
      size_t failed = 0;
      auto err = st_.ctx->backend->record_all(events.data(), events.size(), failed);
      if (err.code == errc::backpressure) {
        pause_for_backpressure();
        return false;
      }
      if (err) {
        bad = err;
        // The failed event's command; n means every record failed alike.
        size_t seen = 0;
        bad_cmd = failed == events.size() ? -2 : -1;
        for_each_queued([&](uint32_t i, const resp_command& cmd, const resp_args&) {
          if (cmd.record && seen++ == failed)
            bad_cmd = i;
        });
      }
    }
    auto& reply = st_.exec_reply;
    reply.clear();
    resp::reply_writer rw(reply, st_.session.proto);
    rw.array(st_.queued_count);
    if (bad_cmd != -1) {
      global_resp_counters().add(&resp_counters::transactions_refused);
      global_resp_counters().reject(bad.code);
      for_each_queued([&](uint32_t i, const resp_command& cmd, const resp_args&) {
        if (static_cast<int64_t>(i) == bad_cmd || (bad_cmd == -2 && cmd.record))
          rw.field_error(bad, bad_name);
        else
          rw.raw(not_counted_reply);
      });
      end_multi();
      writer().raw(string_view(reply.data(), reply.size()));
      return true;
    }
    st_.session.accepted += events.size();
    global_resp_counters().add(&resp_counters::transactions);
    for_each_queued([&](uint32_t, const resp_command& cmd, const resp_args& args) {
      if (cmd.record) {
        rw.ok();
        return;
      }
      bool was_authed = st_.session.authed;
      cmd.handler(st_.session, args, rw);  // never backpressure, durable or close: not records, not QUIT
      if (st_.session.authed != was_authed)
        apply_parser_limits();
    });
    end_multi();
    string_view bytes(reply.data(), reply.size());
    if (st_.session.durable && !events.empty())
      owe(bytes, 1);
    else
      writer().raw(bytes);
    return true;
  }

  void pause_for_backpressure() {
    st_.paused_ingest = true;
    global_resp_counters().add(&resp_counters::backpressure_pauses);
    self_->delayed_send(self_, st_.ctx->opts.backpressure_retry, resp_retry_atom::value,
                        ++st_.retry_generation);
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
  st.session.client_id = st.ctx->next_client_id.fetch_add(1, std::memory_order_relaxed);
  connection(self).start();
  self->set_exit_handler([=](caf::exit_msg&) { connection(self).on_stop(); });
  return {
    [=](const caf::io::new_data_msg& msg) { connection(self).on_data(msg); },
    [=](const caf::io::data_transferred_msg& msg) { connection(self).on_transferred(msg); },
    [=](const caf::io::connection_passivated_msg&) { connection(self).on_passivated(); },
    [=](const caf::io::connection_closed_msg&) { connection(self).on_peer_closed(); },
    [=](resp_retry_atom, uint64_t generation) { connection(self).on_retry(generation); },
    [=](resp_durable_atom, uint64_t ticket, uint8_t code) { connection(self).on_durable(ticket, code); },
    [=](resp_idle_atom) { connection(self).on_idle_check(); },
    [=](resp_unpark_atom) { connection(self).on_unpark(); },
    [=](resp_stop_atom) { connection(self).on_stop_deadline(); },
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
  resp_metrics m;
#define TALLY_RESP_LOAD(member, kind, metric, help) m.member = c.member.load(std::memory_order_relaxed);
  TALLY_RESP_COUNTERS(TALLY_RESP_LOAD)
#undef TALLY_RESP_LOAD
  for (size_t i = 0; i < resp_metrics::errc_slots; ++i)
    m.rejections[i] = c.rejections[i].load(std::memory_order_relaxed);
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
