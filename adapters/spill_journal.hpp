// adapters/spill_journal.hpp — the local spill journal of stage 1 (design §6).
//
// When no Redis database is healthy, or too many batches wait in memory, the
// buffer writer appends its encoded batches here instead of losing them, and
// replays them in order once Redis is healthy again or at the next start.
// Batches carry their own id and checksum, so a batch replayed twice (crash
// between a replay and clear()) is deduplicated downstream; the journal only
// has to lose nothing that sync() acknowledged, and keep the order.
//
// File format, little-endian:
//
//   "TLYJRNL1"                                   8-byte magic + format version
//   record* = u32 payload_len | u64 checksum | payload
//             checksum = XXH3-64 over the 4 length bytes and the payload
//
// Why this shape: appends only ever add bytes at the end, so a crash can
// damage at most the record being written (a torn tail) and never one that
// an earlier sync() made durable. The checksum covers the length too, so a
// torn or flipped length field cannot make the scan skip to a wrong place
// and accept garbage as a record. There is no per-record resync marker:
// after a bad record the scan cannot know where the next one starts, so
// recovery keeps only the prefix before it (fine for a torn tail, the one
// damage a crash causes; a bit flip in the middle of a synced file is disk
// failure, and losing the records after it is reported, not hidden).
//
// Contract against the system calls: every call blocks on the local disk;
// there is no timeout. Writes use pwrite(2) at the journal's own idea of the
// end of file, retried on EINTR and on short writes; a failed append
// truncates back to the last good size so the next one never builds on
// garbage. Durability comes only from sync() (fdatasync, plus, the first
// time, an fsync of the directory, so a new file's name survives). A failed
// fdatasync poisons the journal: on Linux the kernel may have dropped the
// dirty pages and a retry could report success for data that is gone, so
// every later append/sync fails and the caller must keep the unsynced
// batches elsewhere and reopen.
//
// One process owns a journal at a time: open() takes an exclusive flock, so
// two processes never replay the same batches into Redis concurrently.
#pragma once

#include "core/result.hpp"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace tally::adapters {

enum class journal_errc : int {
  ok = 0,
  io_error,   // a system call failed (message holds the call, path and strerror), or the journal is closed
  locked,     // another open journal (this process or another) holds the file's lock
  full,       // the append would make the file larger than max_bytes; nothing was written
  corrupt,    // the file header is not a journal's, or a record fails its check during for_each
  too_large,  // the payload is larger than journal_record_limit
};
const char* to_string(journal_errc code) noexcept;

/// The largest payload one record may hold. A length field above it is
/// treated as corruption: no real batch is near it (batches are split far
/// below), and it keeps recovery from trusting a garbage length.
inline constexpr uint32_t journal_record_limit = 512u * 1024 * 1024;
/// Bytes of the file header (the magic).
inline constexpr size_t journal_header_bytes = 8;
/// Bytes in front of each payload (length + checksum).
inline constexpr size_t journal_record_overhead = 4 + 8;

/// What open() found in an existing file.
struct journal_recovery {
  size_t records = 0;            // good records kept
  uint64_t bytes = 0;            // file size after recovery
  bool tail_truncated = false;   // a torn or corrupt tail was cut off
  uint64_t truncated_bytes = 0;  // how many bytes were cut
  std::string tail_reason;       // e.g. "record at offset 4096: length 500 runs past end of file (...; torn write)"
};

/// An append-only file of opaque records, owned by one process.
///
/// Invariant: the file holds exactly the header and records() good records,
/// size_bytes() long, apart from the moments inside append() and clear().
/// Order of calls: open() (recovers the file) → for_each() to replay what an
/// earlier process left → append()* + sync() (group commit: many appends,
/// one sync) → for_each() to replay → clear() (keep the file) or remove()
/// (an adopted file). Not thread-safe: one owner calls it.
class spill_journal {
public:
  /// Opens or creates `path` and recovers it. Creates missing parent
  /// directories with mode 0700 and the file with 0600 (batches are usage
  /// data). Takes an exclusive non-blocking flock: held elsewhere → error
  /// journal_errc::locked. Validates the header: a wrong one → error corrupt
  /// and the file is not touched; a file shorter than the header that is a
  /// prefix of it (a creation torn by a crash, nothing ever synced) gets its
  /// header rewritten. Scans every record and cuts a torn or corrupt tail
  /// (ftruncate + fsync) keeping every record before it; recovery() says
  /// what was found. `max_bytes` bounds the whole file, header included.
  static result<spill_journal> open(const std::string& path, uint64_t max_bytes);

  spill_journal(spill_journal&&) noexcept;
  spill_journal& operator=(spill_journal&&) noexcept;
  ~spill_journal();  // closes the file, which releases the lock

  /// Appends one record with two pwrite calls, the record header and then
  /// the payload (not durable until sync()). Errors, with nothing left in
  /// the file: too_large when the payload exceeds journal_record_limit,
  /// full when the file would pass max_bytes(), io_error when a write fails.
  status append(std::string_view payload);

  /// Makes every append before it durable: fdatasync, and the first time
  /// after open() an fsync of the file's directory (and of the parents of
  /// directories open() created), so a new file survives a crash. A failed
  /// fdatasync poisons the journal (see the file comment); a failed
  /// directory fsync is retried by the next sync().
  status sync();

  /// Calls visit(payload) for every record in file order, reading one
  /// record at a time from disk (memory stays at the largest record). The
  /// view is valid only during the call. Stops early, successfully, when
  /// visit returns false. A record that no longer passes its checksum →
  /// error corrupt (the disk changed under us) after visiting those before.
  status for_each(const std::function<bool(std::string_view)>& visit) const;

  /// Removes every record: truncates to the header and syncs. Called after
  /// a complete replay.
  status clear();

  /// Unlinks the file (while still holding the lock, so no other process
  /// can adopt it in between), fsyncs its directory and closes it. For a
  /// journal adopted from an earlier process and fully replayed. Afterwards
  /// every call but the accessors fails with io_error.
  status remove();

  /// Returns the file size in bytes (header included).
  uint64_t size_bytes() const noexcept;
  /// Returns how many records the file holds.
  size_t records() const noexcept;
  /// Returns whether the file holds no record.
  bool empty() const noexcept;
  /// Returns the bound given to open().
  uint64_t max_bytes() const noexcept;
  /// Returns what open() found.
  const journal_recovery& recovery() const noexcept;
  /// Returns the path given to open().
  const std::string& path() const noexcept;

private:
  struct impl;
  explicit spill_journal(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

/// Returns the journal file of one instance: <dir>/<ns>.<instance>.journal.
/// '%', '/' and control bytes are %XX-escaped in both names, and '.' in
/// `ns` too, so the name stays one file in `dir` and list_journals(ns) can
/// never match the journal of a namespace that merely starts with "ns.".
std::string journal_path(const std::string& dir, const std::string& ns, const std::string& instance);

/// Returns every journal file of namespace `ns` in `dir` (regular files
/// named as journal_path makes them), oldest modification time first (then
/// by name), for adoption at start. A missing `dir` is an empty list; a
/// directory that cannot be read is error io_error (journals must not be
/// skipped silently).
result<std::vector<std::string>> list_journals(const std::string& dir, const std::string& ns);

} // namespace tally::adapters
