// adapters/spill_journal.cpp — see spill_journal.hpp for the format and the
// contract.
//
// Every read and write is positional (pread/pwrite at an offset the journal
// tracks itself) rather than through the file offset or O_APPEND: the good
// size is then the single truth about where the next record starts, and a
// failed write whose rollback also failed cannot make the next append land
// behind the garbage.
#include "adapters/spill_journal.hpp"

#include "core/failpoint.hpp"
#include "core/unique_fd.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <tuple>
#include <unistd.h>
#include <utility>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace tally::adapters {

const char* to_string(journal_errc code) noexcept {
  switch (code) {
    case journal_errc::ok: return "ok";
    case journal_errc::io_error: return "io_error";
    case journal_errc::locked: return "locked";
    case journal_errc::full: return "full";
    case journal_errc::corrupt: return "corrupt";
    case journal_errc::too_large: return "too_large";
  }
  return "unknown";
}

namespace {

constexpr char magic[journal_header_bytes] = {'T', 'L', 'Y', 'J', 'R', 'N', 'L', '1'};
// Recovery hashes a record's payload in pieces of this size, so a huge
// record costs no huge buffer during open().
constexpr size_t scan_chunk_bytes = 1 << 20;
// open() retries this often when the file it locked was unlinked or
// replaced by its previous owner in between (see lock_path).
constexpr int lock_attempts = 8;

error_info make_error(journal_errc code, std::string message) {
  return error_info{static_cast<int>(code), std::move(message), {}};
}

// "journal <path>: <what>: <strerror>" for a failed system call.
error_info sys_error(const std::string& path, const std::string& what, int err) {
  return make_error(journal_errc::io_error, "journal " + path + ": " + what + ": " + std::strerror(err));
}

struct dir_deleter {
  void operator()(DIR* d) const noexcept { ::closedir(d); }
};
using dir_ptr = std::unique_ptr<DIR, dir_deleter>;

// Writes all `len` bytes at `offset`, retrying EINTR and short writes.
// Returns 0 or the errno of the failure (ENOSPC, EIO, ...).
int write_all(int fd, const char* data, size_t len, uint64_t offset) {
  while (len > 0) {
    ssize_t n = ::pwrite(fd, data, len, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return errno;
    }
    if (n == 0)
      return EIO;  // no progress and no error: do not spin
    data += n;
    len -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return 0;
}

// Reads up to `len` bytes at `offset`, retrying EINTR and short reads.
// Returns the count read (less than `len` only at end of file), or -errno.
ssize_t read_full(int fd, char* data, size_t len, uint64_t offset) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = ::pread(fd, data + done, len - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (n == 0)
      break;
    done += static_cast<size_t>(n);
  }
  return static_cast<ssize_t>(done);
}

// Returns 0 or errno.
int truncate_to(int fd, uint64_t size) {
  while (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
    if (errno != EINTR)
      return errno;
  }
  return 0;
}

// Returns 0 or errno.
int datasync(int fd) {
  while (::fdatasync(fd) != 0) {
    if (errno != EINTR)
      return errno;
  }
  return 0;
}

// Returns 0 or errno.
int full_sync(int fd) {
  while (::fsync(fd) != 0) {
    if (errno != EINTR)
      return errno;
  }
  return 0;
}

// Makes the entries of `dir` durable (a file created or unlinked in it).
status sync_directory(const std::string& dir) {
  unique_fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd)
    return sys_error(dir, "open directory for fsync", errno);
  if (int err = full_sync(fd.get()))
    return sys_error(dir, "fsync directory", err);
  return {};
}

std::string parent_of(const std::string& path) {
  auto slash = path.find_last_of('/');
  if (slash == std::string::npos)
    return ".";
  if (slash == 0)
    return "/";
  return path.substr(0, slash);
}

// Creates `dir` and its missing ancestors with mode 0700 (mkdir -p). Every
// directory that gains a new entry is added to `to_sync`: the new
// directories exist durably only once their parents are fsynced.
status make_directories(const std::string& dir, std::vector<std::string>& to_sync) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode))
      return {};
    return sys_error(dir, "parent directory", ENOTDIR);
  }
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = dir.find('/', pos + 1);
    std::string prefix = dir.substr(0, pos);
    if (prefix.empty() || prefix.back() == '/')
      continue;  // "//" in the path
    if (::mkdir(prefix.c_str(), 0700) == 0) {
      to_sync.push_back(parent_of(prefix));
      continue;
    }
    if (errno != EEXIST)
      return sys_error(prefix, "mkdir", errno);
    if (::stat(prefix.c_str(), &st) != 0)
      return sys_error(prefix, "stat", errno);
    if (!S_ISDIR(st.st_mode))
      return sys_error(prefix, "parent directory", ENOTDIR);
  }
  return {};
}

/// Streams XXH3-64 over a record's length bytes and payload, which may
/// arrive in pieces (recovery hashes big payloads chunk by chunk).
class record_hasher {
public:
  /// Starts a record's hash with its 4 length bytes.
  explicit record_hasher(const char* length_bytes) noexcept {
#ifdef XXH3_INITSTATE
    XXH3_INITSTATE(&state_);
#endif
    (void)XXH3_64bits_reset(&state_);
    update(length_bytes, 4);
  }
  void update(const char* data, size_t len) noexcept {
    if (len > 0)
      (void)XXH3_64bits_update(&state_, data, len);
  }
  uint64_t digest() const noexcept { return XXH3_64bits_digest(&state_); }

private:
  XXH3_state_t state_;
};

// The record header: u32 length | u64 checksum, little-endian (x86-64 and
// aarch64 are; memcpy keeps it free of alignment assumptions).
struct record_header {
  char bytes[journal_record_overhead];

  uint32_t length() const noexcept {
    uint32_t v;
    std::memcpy(&v, bytes, 4);
    return v;
  }
  uint64_t checksum() const noexcept {
    uint64_t v;
    std::memcpy(&v, bytes + 4, 8);
    return v;
  }
  const char* length_bytes() const noexcept { return bytes; }
};

record_header make_header(std::string_view payload) noexcept {
  record_header h{};
  auto length = static_cast<uint32_t>(payload.size());
  std::memcpy(h.bytes, &length, 4);
  record_hasher hasher(h.length_bytes());
  hasher.update(payload.data(), payload.size());
  uint64_t sum = hasher.digest();
  std::memcpy(h.bytes + 4, &sum, 8);
  return h;
}

std::string hex_bytes(const char* data, size_t len) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < len; ++i) {
    auto b = static_cast<unsigned char>(data[i]);
    out.push_back(digits[b >> 4]);
    out.push_back(digits[b & 15]);
  }
  return out;
}

// %XX-escapes bytes that would break the file name or its parsing.
std::string escape_name(const std::string& name, bool escape_dots) {
  static const char digits[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(name.size());
  for (char c : name) {
    auto b = static_cast<unsigned char>(c);
    if (c == '%' || c == '/' || b < 0x20 || b == 0x7F || (escape_dots && c == '.')) {
      out.push_back('%');
      out.push_back(digits[b >> 4]);
      out.push_back(digits[b & 15]);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string join_path(const std::string& dir, const std::string& name) {
  if (dir.empty())
    return name;
  if (dir.back() == '/')
    return dir + name;
  return dir + "/" + name;
}

constexpr std::string_view journal_suffix = ".journal";

} // namespace

// ---------------------------------------------------------------------------

// Invariant (while fd is open and not poisoned): the file is exactly
// `size` bytes — the header and `records` good records — except inside
// append() and clear(), or when `dirty_tail` says a rollback failed.
struct spill_journal::impl {
  std::string path;
  unique_fd fd;
  uint64_t max_bytes = 0;
  uint64_t size = 0;
  size_t records = 0;
  journal_recovery recovery;
  // Directories whose new entries are not yet durable; fsynced by the next
  // sync() or clear().
  std::vector<std::string> dirs_to_sync;
  // An append failed and truncating back to `size` failed too: garbage may
  // follow the last good record. The next append truncates first.
  bool dirty_tail = false;
  // fdatasync failed: unsynced appends may be lost, so nothing more is
  // acknowledged (see the header).
  bool poisoned = false;
  std::string poison_reason;

  error_info closed_error() const {
    return make_error(journal_errc::io_error, "journal " + path + ": closed");
  }

  // Checks that a mutating call may run.
  status usable() const {
    if (!fd)
      return closed_error();
    if (poisoned)
      return make_error(journal_errc::io_error,
                        "journal " + path + ": unusable after a failed fdatasync (" + poison_reason
                            + "); reopen it and write the unsynced batches again");
    return {};
  }

  // Opens `path`, creating it if missing, and takes the exclusive lock.
  status lock_path() {
    for (int attempt = 0; attempt < lock_attempts; ++attempt) {
      unique_fd candidate(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
      if (!candidate)
        return sys_error(path, "open", errno);
      int rc;
      while ((rc = ::flock(candidate.get(), LOCK_EX | LOCK_NB)) != 0 && errno == EINTR) {
      }
      if (rc != 0) {
        if (errno == EWOULDBLOCK)
          return make_error(journal_errc::locked,
                            "journal " + path + ": locked by another open journal (another process, "
                            "or this one); a journal has one owner");
        return sys_error(path, "flock", errno);
      }
      // The previous owner may have unlinked (remove()) or replaced the
      // file between our open and our flock; a lock on that inode guards
      // nothing, and records appended to it would vanish with it.
      struct stat locked_st {}, path_st {};
      if (::fstat(candidate.get(), &locked_st) != 0)
        return sys_error(path, "fstat", errno);
      if (::stat(path.c_str(), &path_st) != 0) {
        if (errno == ENOENT)
          continue;
        return sys_error(path, "stat", errno);
      }
      if (locked_st.st_dev != path_st.st_dev || locked_st.st_ino != path_st.st_ino)
        continue;
      if (!S_ISREG(locked_st.st_mode))
        return sys_error(path, "open", EINVAL);
      fd = std::move(candidate);
      return {};
    }
    return make_error(journal_errc::io_error,
                      "journal " + path + ": the file kept being replaced while opening it");
  }

  // Validates the header, or writes it into a new or torn-at-creation file.
  status check_header(uint64_t file_size) {
    char head[journal_header_bytes] = {};
    ssize_t got = read_full(fd.get(), head, std::min<uint64_t>(file_size, sizeof head), 0);
    if (got < 0)
      return sys_error(path, "read header", static_cast<int>(-got));
    auto have = static_cast<size_t>(got);
    if (have == sizeof head && std::memcmp(head, magic, sizeof magic) == 0)
      return {};
    if (have < sizeof head && std::memcmp(head, magic, have) == 0) {
      // Empty, or a prefix of the magic: the creating process died before
      // its first sync(), which is the only thing that promises anything.
      // Nothing was ever acknowledged from this file, so it starts afresh.
      if (int err = write_all(fd.get(), magic, sizeof magic, 0))
        return sys_error(path, "write header", err);
      if (have > 0) {
        recovery.tail_truncated = true;
        recovery.truncated_bytes = have;
        recovery.tail_reason = "header incomplete (" + std::to_string(have) + " of "
                               + std::to_string(sizeof magic)
                               + " bytes: creation torn by a crash, nothing was synced); header rewritten";
      }
      return {};
    }
    if (have == sizeof head && std::memcmp(head, magic, sizeof magic - 1) == 0)
      return make_error(journal_errc::corrupt,
                        "journal " + path + ": unknown journal format version '" + std::string(1, head[7])
                            + "' (this tally reads TLYJRNL1); file left untouched");
    return make_error(journal_errc::corrupt,
                      "journal " + path + ": not a tally spill journal (first bytes 0x" + hex_bytes(head, have)
                          + ", " + std::to_string(file_size) + " bytes); file left untouched");
  }

  // Walks every record from the header on; stops at the first one that is
  // torn or fails its checksum and names it in `reason`. Sets `good_end`
  // to the end of the last good record.
  status scan(uint64_t file_size, uint64_t& good_end, std::string& reason) {
    uint64_t offset = journal_header_bytes;
    std::string chunk;
    while (offset < file_size) {
      auto where = [&] { return "record at offset " + std::to_string(offset) + ": "; };
      uint64_t remaining = file_size - offset;
      if (remaining < journal_record_overhead) {
        reason = where() + (remaining < 4 ? "length field incomplete" : "checksum field incomplete") + " ("
                 + std::to_string(remaining) + " of " + std::to_string(journal_record_overhead)
                 + " header bytes; torn write)";
        break;
      }
      record_header h{};
      ssize_t got = read_full(fd.get(), h.bytes, sizeof h.bytes, offset);
      if (got < 0)
        return sys_error(path, "read at offset " + std::to_string(offset), static_cast<int>(-got));
      if (static_cast<size_t>(got) < sizeof h.bytes)
        return make_error(journal_errc::io_error, "journal " + path + ": file shrank while being recovered");
      uint32_t length = h.length();
      if (length > journal_record_limit) {
        reason = where() + "length " + std::to_string(length) + " exceeds the record limit of "
                 + std::to_string(journal_record_limit) + " bytes (corrupt)";
        break;
      }
      if (length > remaining - journal_record_overhead) {
        reason = where() + "length " + std::to_string(length) + " runs past end of file ("
                 + std::to_string(remaining - journal_record_overhead) + " payload bytes present; torn write)";
        break;
      }
      record_hasher hasher(h.length_bytes());
      uint64_t at = offset + journal_record_overhead;
      for (uint64_t left = length; left > 0;) {
        size_t piece = static_cast<size_t>(std::min<uint64_t>(left, scan_chunk_bytes));
        chunk.resize(piece);
        got = read_full(fd.get(), chunk.data(), piece, at);
        if (got < 0)
          return sys_error(path, "read at offset " + std::to_string(at), static_cast<int>(-got));
        if (static_cast<size_t>(got) < piece)
          return make_error(journal_errc::io_error, "journal " + path + ": file shrank while being recovered");
        hasher.update(chunk.data(), piece);
        at += piece;
        left -= piece;
      }
      if (hasher.digest() != h.checksum()) {
        reason = where() + "checksum mismatch over " + std::to_string(length)
                 + " payload bytes (corrupt, or a torn write)";
        break;
      }
      offset += journal_record_overhead + length;
      ++records;
    }
    good_end = offset;
    return {};
  }

  // fdatasync, then the pending directory fsyncs. A failed fdatasync
  // poisons the journal; a failed directory fsync stays pending and is
  // retried by the next call.
  status sync_all() {
    if (int err = datasync(fd.get())) {
      poisoned = true;
      poison_reason = std::string("fdatasync: ") + std::strerror(err);
      return sys_error(path, "fdatasync", err);
    }
    while (!dirs_to_sync.empty()) {
      if (auto st = sync_directory(dirs_to_sync.back()); !st)
        return st;
      dirs_to_sync.pop_back();
    }
    return {};
  }
};

// ---------------------------------------------------------------------------

spill_journal::spill_journal(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
spill_journal::spill_journal(spill_journal&&) noexcept = default;
spill_journal& spill_journal::operator=(spill_journal&&) noexcept = default;
spill_journal::~spill_journal() = default;

result<spill_journal> spill_journal::open(const std::string& path, uint64_t max_bytes) {
  auto j = std::make_unique<impl>();
  j->path = path;
  j->max_bytes = max_bytes;
  if (path.empty() || path.back() == '/')
    return make_error(journal_errc::io_error, "journal '" + path + "': not a file path");
  if (auto st = make_directories(parent_of(path), j->dirs_to_sync); !st)
    return st.error();
  if (auto st = j->lock_path(); !st)
    return st.error();
  // The first sync() also fsyncs the directory: the file may be new, or
  // left by a process that died before its name was durable, and records
  // synced into a file whose name a power loss takes away are lost too.
  j->dirs_to_sync.push_back(parent_of(path));

  struct stat st {};
  if (::fstat(j->fd.get(), &st) != 0)
    return sys_error(path, "fstat", errno);
  auto file_size = static_cast<uint64_t>(st.st_size);
  if (auto hs = j->check_header(file_size); !hs)
    return hs.error();
  if (file_size < journal_header_bytes) {
    j->size = journal_header_bytes;
  } else {
    uint64_t good_end = 0;
    std::string reason;
    if (auto ss = j->scan(file_size, good_end, reason); !ss)
      return ss.error();
    if (good_end < file_size) {
      // Cut the damaged tail now: appends must follow the last good record,
      // and a later scan must not stop at the same damage before them.
      if (int err = truncate_to(j->fd.get(), good_end))
        return sys_error(path, "ftruncate torn tail to " + std::to_string(good_end), err);
      if (int err = full_sync(j->fd.get()))
        return sys_error(path, "fsync after truncating torn tail", err);
      j->recovery.tail_truncated = true;
      j->recovery.truncated_bytes = file_size - good_end;
      j->recovery.tail_reason = std::move(reason);
    }
    j->size = good_end;
  }
  j->recovery.records = j->records;
  j->recovery.bytes = j->size;
  return spill_journal(std::move(j));
}

status spill_journal::append(std::string_view payload) {
  if (!impl_)
    return make_error(journal_errc::io_error, "journal: moved from");
  impl& j = *impl_;
  if (auto st = j.usable(); !st)
    return st;
  if (payload.size() > journal_record_limit)
    return make_error(journal_errc::too_large, "journal " + j.path + ": payload of " + std::to_string(payload.size())
                                                   + " bytes exceeds the record limit of "
                                                   + std::to_string(journal_record_limit));
  uint64_t need = journal_record_overhead + payload.size();
  if (need > j.max_bytes || j.size > j.max_bytes - need)
    return make_error(journal_errc::full, "journal " + j.path + ": full (" + std::to_string(j.size) + " + "
                                              + std::to_string(need) + " bytes would pass max_bytes "
                                              + std::to_string(j.max_bytes) + ")");
  if (j.dirty_tail) {
    if (int err = truncate_to(j.fd.get(), j.size))
      return sys_error(j.path, "ftruncate leftover of a failed append", err);
    j.dirty_tail = false;
  }
  record_header h = make_header(payload);
  int err = write_all(j.fd.get(), h.bytes, sizeof h.bytes, j.size);
  // Crash tests kill the process here: a record header without its payload
  // is the torn tail recovery must cut.
  TALLY_FAILPOINT("journal_mid_write");
  if (err == 0)
    err = write_all(j.fd.get(), payload.data(), payload.size(), j.size + sizeof h.bytes);
  if (err != 0) {
    // A partial record must not stay: a later append would follow it and
    // recovery would cut that one too.
    if (truncate_to(j.fd.get(), j.size) != 0)
      j.dirty_tail = true;
    return sys_error(j.path, "write record at offset " + std::to_string(j.size), err);
  }
  j.size += need;
  ++j.records;
  return {};
}

status spill_journal::sync() {
  if (!impl_)
    return make_error(journal_errc::io_error, "journal: moved from");
  if (auto st = impl_->usable(); !st)
    return st;
  return impl_->sync_all();
}

status spill_journal::for_each(const std::function<bool(std::string_view)>& visit) const {
  if (!impl_)
    return make_error(journal_errc::io_error, "journal: moved from");
  const impl& j = *impl_;
  if (!j.fd)
    return j.closed_error();
  std::string payload;  // reused: memory stays at the largest record
  uint64_t offset = journal_header_bytes;
  while (offset < j.size) {
    auto corrupt = [&](const std::string& what) {
      return make_error(journal_errc::corrupt,
                        "journal " + j.path + ": record at offset " + std::to_string(offset) + ": " + what
                            + " (the file changed after it was recovered)");
    };
    record_header h{};
    ssize_t got = read_full(j.fd.get(), h.bytes, sizeof h.bytes, offset);
    if (got < 0)
      return sys_error(j.path, "read at offset " + std::to_string(offset), static_cast<int>(-got));
    if (static_cast<size_t>(got) < sizeof h.bytes)
      return corrupt("header past end of file");
    uint32_t length = h.length();
    if (length > journal_record_limit || length > j.size - offset - journal_record_overhead)
      return corrupt("length " + std::to_string(length) + " out of bounds");
    payload.resize(length);
    got = read_full(j.fd.get(), payload.data(), length, offset + journal_record_overhead);
    if (got < 0)
      return sys_error(j.path, "read at offset " + std::to_string(offset), static_cast<int>(-got));
    if (static_cast<size_t>(got) < length)
      return corrupt("payload past end of file");
    record_hasher hasher(h.length_bytes());
    hasher.update(payload.data(), payload.size());
    if (hasher.digest() != h.checksum())
      return corrupt("checksum mismatch");
    if (!visit(std::string_view(payload)))
      return {};
    offset += journal_record_overhead + length;
  }
  return {};
}

status spill_journal::clear() {
  if (!impl_)
    return make_error(journal_errc::io_error, "journal: moved from");
  impl& j = *impl_;
  if (auto st = j.usable(); !st)
    return st;
  if (int err = truncate_to(j.fd.get(), journal_header_bytes))
    return sys_error(j.path, "ftruncate to the header", err);
  j.size = journal_header_bytes;
  j.records = 0;
  j.dirty_tail = false;
  return j.sync_all();
}

status spill_journal::remove() {
  if (!impl_)
    return make_error(journal_errc::io_error, "journal: moved from");
  impl& j = *impl_;
  if (!j.fd)
    return j.closed_error();
  // Unlink before closing: while we hold the lock nobody else can adopt the
  // file, and lock_path() makes a process that opened it just before the
  // unlink notice and start over.
  if (::unlink(j.path.c_str()) != 0)
    return sys_error(j.path, "unlink", errno);
  auto dir_synced = sync_directory(parent_of(j.path));
  j.fd.reset();
  j.size = 0;
  j.records = 0;
  if (!dir_synced)
    return make_error(journal_errc::io_error,
                      dir_synced.error().message
                          + " after unlinking (after a power loss the file may come back and be replayed again; "
                            "batch ids make that harmless)");
  return {};
}

uint64_t spill_journal::size_bytes() const noexcept { return impl_ ? impl_->size : 0; }
size_t spill_journal::records() const noexcept { return impl_ ? impl_->records : 0; }
bool spill_journal::empty() const noexcept { return records() == 0; }
uint64_t spill_journal::max_bytes() const noexcept { return impl_ ? impl_->max_bytes : 0; }

const journal_recovery& spill_journal::recovery() const noexcept {
  static const journal_recovery none;
  return impl_ ? impl_->recovery : none;
}

const std::string& spill_journal::path() const noexcept {
  static const std::string none;
  return impl_ ? impl_->path : none;
}

// ---------------------------------------------------------------------------

std::string journal_path(const std::string& dir, const std::string& ns, const std::string& instance) {
  return join_path(dir, escape_name(ns, true) + "." + escape_name(instance, false) + std::string(journal_suffix));
}

result<std::vector<std::string>> list_journals(const std::string& dir, const std::string& ns) {
  dir_ptr d(::opendir(dir.empty() ? "." : dir.c_str()));
  if (!d) {
    if (errno == ENOENT)
      return std::vector<std::string>{};
    return sys_error(dir, "opendir", errno);
  }
  // The escaped namespace holds no '.', so the first '.' ends it and a
  // namespace that merely starts with `ns` never matches.
  const std::string prefix = escape_name(ns, true) + ".";
  struct found {
    timespec mtime;
    std::string name;
  };
  std::vector<found> files;
  for (;;) {
    errno = 0;
    dirent* entry = ::readdir(d.get());
    if (entry == nullptr) {
      if (errno != 0)
        return sys_error(dir, "readdir", errno);
      break;
    }
    std::string_view name(entry->d_name);
    if (name.size() <= prefix.size() + journal_suffix.size() || name.compare(0, prefix.size(), prefix) != 0
        || name.substr(name.size() - journal_suffix.size()) != journal_suffix)
      continue;
    struct stat st {};
    if (::fstatat(::dirfd(d.get()), entry->d_name, &st, 0) != 0) {
      if (errno == ENOENT)
        continue;  // removed since readdir saw it
      return sys_error(join_path(dir, entry->d_name), "stat", errno);
    }
    if (!S_ISREG(st.st_mode))
      continue;
    files.push_back(found{st.st_mtim, std::string(name)});
  }
  std::sort(files.begin(), files.end(), [](const found& a, const found& b) {
    return std::tie(a.mtime.tv_sec, a.mtime.tv_nsec, a.name) < std::tie(b.mtime.tv_sec, b.mtime.tv_nsec, b.name);
  });
  std::vector<std::string> paths;
  paths.reserve(files.size());
  for (auto& f : files)
    paths.push_back(join_path(dir, f.name));
  return paths;
}

} // namespace tally::adapters
