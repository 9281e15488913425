// adapters/redis_client.cpp — blocking hiredis connection owned by RAII, and
// the parsers of Redis URLs (single endpoint, and weighted databases that
// may sit behind Sentinels).
//
// Written against hiredis 0.14 (Debian 12) and forward compatible with 1.x:
// REDIS_ERR_TIMEOUT and the RESP3 reply types are used only when the header
// defines them. A hiredis context is unusable once ctx->err is set (and after
// a read timeout its reply stream would be out of step with our requests),
// so every transport failure frees the context; the next call connects anew.
#include "adapters/redis_client.hpp"

#include <hiredis/hiredis.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstring>
#include <ctime>
#include <poll.h>
#include <pthread.h>
#include <sys/time.h>

namespace tally::adapters {

const char* to_string(redis_errc code) noexcept {
  switch (code) {
    case redis_errc::ok: return "ok";
    case redis_errc::bad_url: return "bad_url";
    case redis_errc::connect_failed: return "connect_failed";
    case redis_errc::timeout: return "timeout";
    case redis_errc::io_error: return "io_error";
    case redis_errc::protocol: return "protocol";
    case redis_errc::reply_error: return "reply_error";
  }
  return "unknown";
}

namespace {

error_info make_error(redis_errc code, std::string message) {
  return error_info{static_cast<int>(code), std::move(message), {}};
}

// ---------------------------------------------------------------------------
// URL parsing

bool parse_decimal(std::string_view text, int min, int max, int& out) {
  if (text.empty())
    return false;
  int value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size() || value < min || value > max)
    return false;
  out = value;
  return true;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Decodes %XX escapes, so passwords may hold ':', '@' or '/'.
bool percent_decode(std::string_view in, std::string& out) {
  out.clear();
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out.push_back(in[i]);
      continue;
    }
    if (i + 2 >= in.size())
      return false;
    int hi = hex_value(in[i + 1]);
    int lo = hex_value(in[i + 2]);
    if (hi < 0 || lo < 0)
      return false;
    out.push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return true;
}

constexpr int default_sentinel_port = 26379;

// Splits `text` at every `sep`; "" gives one empty piece.
std::vector<std::string_view> split(std::string_view text, char sep) {
  std::vector<std::string_view> pieces;
  for (;;) {
    auto at = text.find(sep);
    pieces.push_back(text.substr(0, at));
    if (at == std::string_view::npos)
      return pieces;
    text.remove_prefix(at + 1);
  }
}

// Parses `[user]:password` (without the '@'), %-decoding both. Returns ""
// or what is wrong.
std::string parse_userinfo(std::string_view userinfo, std::string& user, std::string& password) {
  auto colon = userinfo.find(':');
  if (colon == std::string_view::npos)
    return "credentials must be [user]:password@ (missing ':')";
  if (!percent_decode(userinfo.substr(0, colon), user))
    return "bad %-escape in user name";
  if (!percent_decode(userinfo.substr(colon + 1), password))
    return "bad %-escape in password";
  return {};
}

// Parses `host[:port]` or `[ipv6][:port]`; `port` keeps its value when the
// text has none. Returns "" or what is wrong.
std::string parse_host_port(std::string_view hostport, std::string& host_out, int& port_out) {
  std::string_view host;
  std::string_view port;
  bool has_port = false;
  if (!hostport.empty() && hostport.front() == '[') {
    auto close = hostport.find(']');
    if (close == std::string_view::npos)
      return "unterminated '[' in IPv6 host";
    host = hostport.substr(1, close - 1);
    auto after = hostport.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':')
        return "unexpected text after ']'";
      port = after.substr(1);
      has_port = true;
    }
  } else {
    auto colon = hostport.find(':');
    host = hostport.substr(0, colon);
    if (colon != std::string_view::npos) {
      port = hostport.substr(colon + 1);
      has_port = true;
    }
  }
  if (host.empty())
    return "missing host";
  // The host reaches hiredis as a C string: a NUL would silently cut it to
  // another name, and no host name or address holds spaces, control bytes
  // or a ',' (which only separates Sentinel addresses).
  for (char c : host) {
    auto byte = static_cast<unsigned char>(c);
    if (byte <= 0x20 || byte == 0x7f || c == ',')
      return "host holds a byte no host name can ('" + std::string(1, c == '\0' ? '0' : c) + "', "
             + std::to_string(byte) + ")";
  }
  int parsed_port = port_out;
  if (has_port && !parse_decimal(port, 1, 65535, parsed_port))
    return "port must be a number from 1 to 65535, got '" + std::string(port) + "'";
  host_out.assign(host);
  port_out = parsed_port;
  return {};
}

// Parses the database number of a path ("" is database 0).
std::string parse_db(std::string_view path, int& db) {
  if (!path.empty() && !parse_decimal(path, 0, 1 << 20, db))
    return "database must be a non-negative number, got '" + std::string(path) + "'";
  return {};
}

// Where the parts of a database URL are. The query starts at the first '?';
// before it, the last '@' ends the userinfo (so a raw '@' in a password
// works) and the first '/' after that starts the path.
struct database_url_parts {
  std::string_view scheme;  // "" when the URL has none
  std::string_view userinfo;
  bool has_userinfo = false;
  size_t password_start = 0;  // offsets into the URL of the text to mask
  size_t password_end = 0;
  std::string_view hosts;
  std::string_view path;  // without its leading '/'
  bool has_path = false;
  std::string_view query;  // without the '?'
  bool has_query = false;
  size_t query_start = std::string_view::npos;  // offset of the '?'
};

database_url_parts split_database_url(std::string_view url) {
  database_url_parts parts;
  size_t pos = 0;
  auto scheme_end = url.find("://");
  if (scheme_end != std::string_view::npos) {
    parts.scheme = url.substr(0, scheme_end);
    pos = scheme_end + 3;
  }
  parts.query_start = url.find('?', pos);
  if (parts.query_start != std::string_view::npos) {
    parts.has_query = true;
    parts.query = url.substr(parts.query_start + 1);
  }
  std::string_view rest = url.substr(pos, parts.query_start == std::string_view::npos
                                              ? std::string_view::npos
                                              : parts.query_start - pos);
  auto at = rest.rfind('@');
  if (at != std::string_view::npos) {
    parts.has_userinfo = true;
    parts.userinfo = rest.substr(0, at);
    // Without a ':' the whole userinfo is masked: it is most likely a
    // password whose ':' was forgotten.
    auto colon = parts.userinfo.find(':');
    parts.password_start = colon == std::string_view::npos ? pos : pos + colon + 1;
    parts.password_end = pos + at;
    pos += at + 1;
    rest.remove_prefix(at + 1);
  }
  auto slash = rest.find('/');
  parts.hosts = rest.substr(0, slash);
  if (slash != std::string_view::npos) {
    parts.has_path = true;
    parts.path = rest.substr(slash + 1);
  }
  return parts;
}

// The URL up to its query, with a non-empty userinfo password as "***".
std::string mask_userinfo(std::string_view url, const database_url_parts& parts) {
  std::string_view before_query = url.substr(0, parts.query_start);
  if (parts.password_end <= parts.password_start)
    return std::string(before_query);
  return std::string(url.substr(0, parts.password_start)) + "***"
         + std::string(before_query.substr(parts.password_end));
}

void append_param(std::string& query, std::string_view param) {
  if (!query.empty())
    query += '&';
  query.append(param);
}

// The whole URL (weight included) with every password masked, for errors.
std::string mask_database_url(std::string_view url) {
  const database_url_parts parts = split_database_url(url);
  std::string masked = mask_userinfo(url, parts);
  if (!parts.has_query)
    return masked;
  std::string query;
  bool first = true;
  for (std::string_view param : split(parts.query, '&')) {
    auto eq = param.find('=');
    if (eq != std::string_view::npos && eq + 1 < param.size() && param.substr(0, eq) == "sentinel_password")
      param = "sentinel_password=***";
    if (!first)
      query += '&';
    first = false;
    query.append(param);
  }
  return masked + "?" + query;
}

// ---------------------------------------------------------------------------
// hiredis plumbing

struct context_deleter {
  void operator()(redisContext* ctx) const noexcept { redisFree(ctx); }
};
using context_ptr = std::unique_ptr<redisContext, context_deleter>;

struct reply_deleter {
  void operator()(void* reply) const noexcept { freeReplyObject(reply); }
};
using reply_ptr = std::unique_ptr<redisReply, reply_deleter>;

timeval to_timeval(std::chrono::milliseconds timeout) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  return tv;
}

// hiredis writes with write(2), not send(MSG_NOSIGNAL): writing to a socket
// the server has reset raises SIGPIPE, which by default kills the process.
// While a hiredis call runs, SIGPIPE is blocked in this thread, and one that
// became pending during the call is consumed (the libpq technique), so a
// dead server is an io_error, never a dead process. The signal is
// thread-directed, so other threads are not affected.
class sigpipe_guard {
public:
  sigpipe_guard() noexcept {
    sigemptyset(&pipe_set_);
    sigaddset(&pipe_set_, SIGPIPE);
    masked_ = pthread_sigmask(SIG_BLOCK, &pipe_set_, &old_mask_) == 0;
    if (masked_) {
      sigset_t pending;
      if (sigpending(&pending) == 0)
        was_pending_ = sigismember(&pending, SIGPIPE) == 1;
      else
        was_pending_ = true;  // unknown: do not consume someone else's signal
    }
  }
  ~sigpipe_guard() {
    if (!masked_)
      return;
    int saved_errno = errno;
    if (!was_pending_) {
      sigset_t pending;
      if (sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1) {
        timespec no_wait{0, 0};
        // Returns SIGPIPE, or -1/EAGAIN if it went elsewhere meanwhile.
        (void)sigtimedwait(&pipe_set_, nullptr, &no_wait);
      }
    }
    (void)pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
    errno = saved_errno;
  }
  sigpipe_guard(const sigpipe_guard&) = delete;
  sigpipe_guard& operator=(const sigpipe_guard&) = delete;

private:
  sigset_t pipe_set_;
  sigset_t old_mask_;
  bool masked_ = false;
  bool was_pending_ = false;
};

// Classifies a failed hiredis call. `saved_errno` is errno right after the
// call: hiredis 0.14 reports a socket read/write timeout (SO_RCVTIMEO /
// SO_SNDTIMEO) as REDIS_ERR_IO with errno EAGAIN; connect timeouts come as
// REDIS_ERR_IO with ETIMEDOUT. hiredis >= 1.0 has REDIS_ERR_TIMEOUT.
redis_errc classify_failure(const redisContext* ctx, int saved_errno) {
#ifdef REDIS_ERR_TIMEOUT
  if (ctx->err == REDIS_ERR_TIMEOUT)
    return redis_errc::timeout;
#endif
  if (ctx->err == REDIS_ERR_IO
      && (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK || saved_errno == ETIMEDOUT
          || saved_errno == EINPROGRESS))
    return redis_errc::timeout;
  if (ctx->err == REDIS_ERR_PROTOCOL)
    return redis_errc::protocol;
  return redis_errc::io_error;
}

std::string failure_text(const redisContext* ctx, redis_errc code) {
  std::string text = ctx->errstr[0] != '\0' ? std::string(ctx->errstr) : std::string("unknown error");
  if (code == redis_errc::timeout)
    return "timed out (" + text + ")";
  return text;
}

// Copies a hiredis reply tree into plain values; protocol error on a type it
// does not know.
bool copy_reply(const redisReply* in, redis_reply& out) {
  switch (in->type) {
    case REDIS_REPLY_NIL:
      out.type = redis_reply::kind::nil;
      return true;
    case REDIS_REPLY_STATUS:
      out.type = redis_reply::kind::status;
      out.str.assign(in->str, in->len);
      return true;
    case REDIS_REPLY_ERROR:
      out.type = redis_reply::kind::error;
      out.str.assign(in->str, in->len);
      return true;
    case REDIS_REPLY_INTEGER:
      out.type = redis_reply::kind::integer;
      out.integer = in->integer;
      return true;
    case REDIS_REPLY_STRING:
#ifdef REDIS_REPLY_VERB
    case REDIS_REPLY_VERB:
#endif
#ifdef REDIS_REPLY_DOUBLE
    case REDIS_REPLY_DOUBLE:
#endif
#ifdef REDIS_REPLY_BIGNUM
    case REDIS_REPLY_BIGNUM:
#endif
      out.type = redis_reply::kind::string;
      out.str.assign(in->str, in->len);
      return true;
#ifdef REDIS_REPLY_BOOL
    case REDIS_REPLY_BOOL:
      out.type = redis_reply::kind::integer;
      out.integer = in->integer;
      return true;
#endif
    case REDIS_REPLY_ARRAY:
#ifdef REDIS_REPLY_MAP
    case REDIS_REPLY_MAP:
#endif
#ifdef REDIS_REPLY_SET
    case REDIS_REPLY_SET:
#endif
#ifdef REDIS_REPLY_PUSH
    case REDIS_REPLY_PUSH:
#endif
      out.type = redis_reply::kind::array;
      out.elements.resize(in->elements);
      for (size_t i = 0; i < in->elements; ++i)
        if (!copy_reply(in->element[i], out.elements[i]))
          return false;
      return true;
    default:
      return false;
  }
}

// argv/argvlen arrays for the *Argv calls; string_views are not
// NUL-terminated, hence explicit lengths (binary safe).
struct argv_arrays {
  std::vector<const char*> ptrs;
  std::vector<size_t> lens;
  explicit argv_arrays(const std::vector<std::string_view>& argv) {
    ptrs.reserve(argv.size());
    lens.reserve(argv.size());
    for (auto arg : argv) {
      // hiredis reads exactly `len` bytes; an empty view may have a null data().
      ptrs.push_back(arg.data() != nullptr ? arg.data() : "");
      lens.push_back(arg.size());
    }
  }
  int argc() const noexcept { return static_cast<int>(ptrs.size()); }
};

} // namespace

// ---------------------------------------------------------------------------

result<redis_endpoint> parse_redis_url(std::string_view url) {
  auto bad = [&](const std::string& why) -> result<redis_endpoint> {
    return make_error(redis_errc::bad_url, "bad Redis URL '" + std::string(url) + "': " + why);
  };
  if (url.empty())
    return bad("empty");
  redis_endpoint ep;
  std::string_view rest = url;
  auto scheme_end = rest.find("://");
  if (scheme_end != std::string_view::npos) {
    auto scheme = rest.substr(0, scheme_end);
    if (scheme == "rediss")
      return bad("TLS (rediss://) is not supported");
    if (scheme != "redis")
      return bad("scheme must be redis://, not '" + std::string(scheme) + "://'");
    rest.remove_prefix(scheme_end + 3);
  }
  if (rest.find_first_of("?#") != std::string_view::npos)
    return bad("query strings and fragments are not supported");

  // The last '@' ends the userinfo, so an unescaped '@' in a password works.
  auto at = rest.rfind('@');
  if (at != std::string_view::npos) {
    if (auto why = parse_userinfo(rest.substr(0, at), ep.user, ep.password); !why.empty())
      return bad(why);
    rest.remove_prefix(at + 1);
  }

  std::string_view hostport = rest;
  std::string_view path;
  auto slash = rest.find('/');
  if (slash != std::string_view::npos) {
    hostport = rest.substr(0, slash);
    path = rest.substr(slash + 1);
  }
  if (auto why = parse_host_port(hostport, ep.host, ep.port); !why.empty())
    return bad(why);
  if (auto why = parse_db(path, ep.db); !why.empty())
    return bad(why);
  return ep;
}

result<redis_database_spec> parse_redis_database(std::string_view url) {
  // Error messages end up in logs: they quote the URL with its passwords
  // masked, found by the same split as below (best effort on a broken URL).
  auto bad = [&](const std::string& why) -> result<redis_database_spec> {
    return make_error(redis_errc::bad_url, "bad Redis URL '" + mask_database_url(url) + "': " + why);
  };
  if (url.empty())
    return bad("empty");
  const database_url_parts parts = split_database_url(url);
  redis_database_spec spec;
  if (parts.scheme == "rediss" || parts.scheme == "rediss+sentinel")
    return bad("TLS (" + std::string(parts.scheme) + "://) is not supported");
  if (parts.scheme == "redis+sentinel")
    spec.type = redis_database_spec::kind::sentinel;
  else if (!parts.scheme.empty() && parts.scheme != "redis")
    return bad("scheme must be redis:// or redis+sentinel://, not '" + std::string(parts.scheme) + "://'");
  const bool sentinel = spec.type == redis_database_spec::kind::sentinel;
  if (url.find('#') != std::string_view::npos)
    return bad("fragments ('#') are not supported; %-escape a '#' in a password as %23");

  // Query parameters. The kept ones (all but weight) rebuild `url`/`display`.
  std::string kept_query;
  std::string kept_query_masked;
  if (parts.has_query) {
    bool seen_weight = false;
    bool seen_sentinel_password = false;
    for (std::string_view param : split(parts.query, '&')) {
      if (param.empty())
        return bad("empty query parameter (a stray '?' or '&')");
      auto eq = param.find('=');
      std::string name(param.substr(0, eq));
      if (eq == std::string_view::npos)
        return bad("query parameter '" + name + "' needs a value (name=value)");
      std::string_view value = param.substr(eq + 1);
      if (name == "weight") {
        if (seen_weight)
          return bad("query parameter 'weight' is given more than once");
        seen_weight = true;
        int weight = 0;
        if (!parse_decimal(value, 1, static_cast<int>(max_redis_database_weight), weight))
          return bad("weight must be a whole number from 1 to " + std::to_string(max_redis_database_weight)
                     + ", got '" + std::string(value) + "'");
        spec.weight = static_cast<uint32_t>(weight);
        continue;
      }
      if (name == "sentinel_password") {
        if (!sentinel)
          return bad("query parameter 'sentinel_password' is only for redis+sentinel:// URLs");
        if (seen_sentinel_password)
          return bad("query parameter 'sentinel_password' is given more than once");
        seen_sentinel_password = true;
        if (!percent_decode(value, spec.sentinel_password))
          return bad("bad %-escape in sentinel_password");
        if (spec.sentinel_password.empty())
          return bad("sentinel_password is empty (leave the parameter out when Sentinels need none)");
        append_param(kept_query, param);
        append_param(kept_query_masked, "sentinel_password=***");
        continue;
      }
      return bad("unknown query parameter '" + name + "' (known: weight"
                 + (sentinel ? ", sentinel_password)" : ")"));
    }
  }

  if (parts.has_userinfo) {
    if (auto why = parse_userinfo(parts.userinfo, spec.endpoint.user, spec.endpoint.password); !why.empty())
      return bad(why);
  }

  if (!sentinel) {
    if (parts.hosts.find(',') != std::string_view::npos)
      return bad("several hosts are only allowed in redis+sentinel:// URLs");
    if (auto why = parse_host_port(parts.hosts, spec.endpoint.host, spec.endpoint.port); !why.empty())
      return bad(why);
    if (auto why = parse_db(parts.path, spec.endpoint.db); !why.empty())
      return bad(why);
  } else {
    for (std::string_view address : split(parts.hosts, ',')) {
      if (address.empty())
        return bad(parts.hosts.empty() ? "missing Sentinel host" : "empty Sentinel address in the list");
      std::pair<std::string, int> sentinel_address{std::string(), default_sentinel_port};
      if (auto why = parse_host_port(address, sentinel_address.first, sentinel_address.second); !why.empty())
        return bad("Sentinel '" + std::string(address) + "': " + why);
      spec.sentinels.push_back(std::move(sentinel_address));
    }
    auto slash = parts.path.find('/');
    std::string_view name = parts.path.substr(0, slash);
    if (!parts.has_path || name.empty())
      return bad("missing /master-name after the Sentinel addresses");
    if (!percent_decode(name, spec.master_name))
      return bad("bad %-escape in master name");
    if (slash != std::string_view::npos) {
      if (auto why = parse_db(parts.path.substr(slash + 1), spec.endpoint.db); !why.empty())
        return bad(why);
    }
    // Only resolution knows where the primary is; an empty host cannot be
    // mistaken for a real address.
    spec.endpoint.host.clear();
    spec.endpoint.port = 0;
  }

  const std::string_view before_query = url.substr(0, parts.query_start);
  spec.url.assign(before_query);
  spec.display = mask_userinfo(url, parts);
  if (!kept_query.empty()) {
    spec.url += "?" + kept_query;
    spec.display += "?" + kept_query_masked;
  }
  return spec;
}

// ---------------------------------------------------------------------------

// Owns at most one live redisContext. Invariant: ctx_ is null or has
// ctx->err == 0 (a context with err set is freed at once).
struct redis_client::impl {
  redis_endpoint endpoint;
  std::chrono::milliseconds timeout;
  context_ptr ctx;

  // Turns a failed hiredis call into an error and drops the context, whose
  // reply stream can no longer be trusted.
  error_info fail_and_drop(int saved_errno) {
    redis_errc code = classify_failure(ctx.get(), saved_errno);
    auto err = make_error(code, "redis " + endpoint.host + ":" + std::to_string(endpoint.port) + ": "
                                    + failure_text(ctx.get(), code));
    ctx.reset();
    return err;
  }

  // Blocking redisCommandArgv on the current context. NULL reply means the
  // transport failed (timeout, reset, EOF): the context is dropped.
  result<redis_reply> raw_command(const std::vector<std::string_view>& argv) {
    argv_arrays args(argv);
    reply_ptr reply;
    int saved_errno = 0;
    {
      sigpipe_guard guard;
      errno = 0;
      reply.reset(static_cast<redisReply*>(
          redisCommandArgv(ctx.get(), args.argc(), args.ptrs.data(), args.lens.data())));
      saved_errno = errno;
    }
    if (!reply)
      return fail_and_drop(saved_errno);
    redis_reply out;
    if (!copy_reply(reply.get(), out)) {
      ctx.reset();  // stream position unknown
      return make_error(redis_errc::protocol, "redis: unknown reply type");
    }
    return out;
  }

  // Connect, set timeouts and keepalive, AUTH, SELECT. On failure ctx is null.
  status open() {
    ctx.reset();
    std::string where = endpoint.host + ":" + std::to_string(endpoint.port);
    timeval tv = to_timeval(timeout);
    int saved_errno = 0;
    {
      sigpipe_guard guard;
      errno = 0;
      ctx.reset(redisConnectWithTimeout(endpoint.host.c_str(), endpoint.port, tv));
      saved_errno = errno;
    }
    if (!ctx)
      return make_error(redis_errc::connect_failed, "redis connect to " + where + ": out of memory");
    if (ctx->err != 0) {
      redis_errc code = classify_failure(ctx.get(), saved_errno) == redis_errc::timeout
                            ? redis_errc::timeout
                            : redis_errc::connect_failed;
      auto err = make_error(code, "redis connect to " + where + ": " + failure_text(ctx.get(), code));
      ctx.reset();
      return err;
    }
    // Bounds each later read/write (SO_RCVTIMEO/SO_SNDTIMEO).
    if (redisSetTimeout(ctx.get(), tv) != REDIS_OK) {
      auto err = make_error(redis_errc::connect_failed,
                            "redis " + where + ": cannot set command timeout: " + ctx->errstr);
      ctx.reset();
      return err;
    }
    // Detects a peer that vanished without RST while we are idle.
    if (redisEnableKeepAlive(ctx.get()) != REDIS_OK) {
      auto err = make_error(redis_errc::connect_failed,
                            "redis " + where + ": cannot enable TCP keepalive: " + ctx->errstr);
      ctx.reset();
      return err;
    }
    if (!endpoint.user.empty() || !endpoint.password.empty()) {
      std::vector<std::string_view> auth{"AUTH"};
      if (!endpoint.user.empty())
        auth.emplace_back(endpoint.user);
      auth.emplace_back(endpoint.password);
      if (auto st = handshake(auth, "AUTH"); !st)
        return st;
    }
    if (endpoint.db != 0) {
      std::string db = std::to_string(endpoint.db);
      if (auto st = handshake({"SELECT", db}, "SELECT " + db); !st)
        return st;
    }
    return {};
  }

  // Runs a connection-setup command; a refusal is connect_failed.
  status handshake(const std::vector<std::string_view>& argv, const std::string& what) {
    auto reply = raw_command(argv);
    if (!reply) {
      error_info err = reply.error();
      err.message = "during " + what + ": " + err.message;
      return err;
    }
    if (reply->type == redis_reply::kind::error) {
      ctx.reset();
      return make_error(redis_errc::connect_failed, "redis " + endpoint.host + ":"
                                                        + std::to_string(endpoint.port) + " refused "
                                                        + what + ": " + reply->str);
    }
    return {};
  }

  status ensure_connected() {
    if (ctx)
      return {};
    return open();
  }
};

const char* const moved_from_message = "redis_client used after move";

// Blocks in getaddrinfo (unbounded), then connect (bounded by `timeout`),
// then AUTH/SELECT (each bounded by `timeout`). Refused TCP or a refused
// AUTH/SELECT: connect_failed; a deadline passed: timeout.
result<redis_client> redis_client::connect(const redis_endpoint& ep, std::chrono::milliseconds timeout) {
  auto p = std::make_unique<impl>();
  p->endpoint = ep;
  // A zero timeval would mean "block forever" to the socket layer.
  p->timeout = std::max(timeout, std::chrono::milliseconds(1));
  if (auto st = p->open(); !st)
    return st.error();
  return redis_client(std::move(p));
}

redis_client::redis_client(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
redis_client::redis_client(redis_client&&) noexcept = default;
redis_client& redis_client::operator=(redis_client&&) noexcept = default;
redis_client::~redis_client() = default;

// One blocking round trip via redisCommandArgv, bounded by the timeout for
// each socket read and write. Disconnected at entry: one reconnect first
// (its failure is returned). NULL reply: timeout or io_error, and the client
// is disconnected; the command may or may not have run on the server.
result<redis_reply> redis_client::command(const std::vector<std::string_view>& argv) {
  if (!impl_)
    return make_error(redis_errc::io_error, moved_from_message);
  if (argv.empty())
    return make_error(redis_errc::protocol, "redis: empty command");
  if (auto st = impl_->ensure_connected(); !st)
    return st.error();
  auto reply = impl_->raw_command(argv);
  if (reply && reply->type == redis_reply::kind::error)
    return make_error(redis_errc::reply_error, std::move(reply->str));
  return reply;
}

// Takes a reply already buffered; else polls the socket for `wait` and
// reads what arrived. Only a failed read or a protocol error drops the link.
result<std::optional<redis_reply>> redis_client::receive(std::chrono::milliseconds wait) {
  if (!impl_)
    return make_error(redis_errc::io_error, moved_from_message);
  if (auto st = impl_->ensure_connected(); !st)
    return st.error();
  redisContext* ctx = impl_->ctx.get();
  void* raw = nullptr;
  if (redisGetReplyFromReader(ctx, &raw) != REDIS_OK)
    return impl_->fail_and_drop(0);
  if (raw == nullptr) {
    pollfd p{ctx->fd, POLLIN, 0};
    int n = ::poll(&p, 1, static_cast<int>(std::max<int64_t>(0, wait.count())));
    if (n < 0 && errno != EINTR)
      return impl_->fail_and_drop(errno);
    if (n <= 0)
      return std::optional<redis_reply>{};
    int saved_errno = 0;
    {
      sigpipe_guard guard;
      errno = 0;
      if (redisBufferRead(ctx) != REDIS_OK)
        saved_errno = errno ? errno : ECONNRESET;
    }
    if (saved_errno != 0 || ctx->err != 0)
      return impl_->fail_and_drop(saved_errno);
    if (redisGetReplyFromReader(ctx, &raw) != REDIS_OK)
      return impl_->fail_and_drop(0);
    if (raw == nullptr)
      return std::optional<redis_reply>{};  // part of a reply; the rest comes with the next read
  }
  reply_ptr reply(static_cast<redisReply*>(raw));
  redis_reply out;
  if (!copy_reply(reply.get(), out)) {
    impl_->ctx.reset();
    return make_error(redis_errc::protocol, "redis: unknown reply type");
  }
  return std::optional<redis_reply>(std::move(out));
}

// redisAppendCommandArgv for each command, then redisGetReply for each:
// one write, N reads, each read bounded by the timeout. A transport failure
// part way through fails the whole call and disconnects; commands before it
// may have run.
result<std::vector<redis_reply>>
redis_client::pipeline(const std::vector<std::vector<std::string_view>>& cmds) {
  if (!impl_)
    return make_error(redis_errc::io_error, moved_from_message);
  for (const auto& cmd : cmds)
    if (cmd.empty())
      return make_error(redis_errc::protocol, "redis: empty command in pipeline");
  std::vector<redis_reply> replies;
  if (cmds.empty())
    return replies;
  if (auto st = impl_->ensure_connected(); !st)
    return st.error();
  redisContext* ctx = impl_->ctx.get();

  // redisAppendCommandArgv only formats into the output buffer; the first
  // redisGetReply writes it all, then each call reads one reply.
  for (const auto& cmd : cmds) {
    argv_arrays args(cmd);
    if (redisAppendCommandArgv(ctx, args.argc(), args.ptrs.data(), args.lens.data()) != REDIS_OK) {
      // Earlier commands sit in the output buffer: the context is not reusable.
      return impl_->fail_and_drop(0);
    }
  }
  replies.resize(cmds.size());
  for (auto& out : replies) {
    void* raw = nullptr;
    int rc = REDIS_OK;
    int saved_errno = 0;
    {
      sigpipe_guard guard;
      errno = 0;
      rc = redisGetReply(ctx, &raw);
      saved_errno = errno;
    }
    reply_ptr reply(static_cast<redisReply*>(raw));
    if (rc != REDIS_OK || !reply)
      return impl_->fail_and_drop(saved_errno);
    if (!copy_reply(reply.get(), out)) {
      impl_->ctx.reset();
      return make_error(redis_errc::protocol, "redis: unknown reply type");
    }
  }
  return replies;
}

bool redis_client::connected() const noexcept {
  return impl_ && impl_->ctx;
}

// Frees the context (closing the socket) and runs connect's sequence again.
status redis_client::reconnect() {
  if (!impl_)
    return make_error(redis_errc::io_error, moved_from_message);
  return impl_->open();
}

} // namespace tally::adapters
