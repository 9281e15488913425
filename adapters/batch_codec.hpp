// adapters/batch_codec.hpp — the stage-1 batch record (design §6).
//
// A batch is what one instance writes to Redis per buffer interval: a unique
// id `<instance>:<seq>`, its creation time and, per rollup table, the merged
// delta rows. Wire format, little-endian, version 1:
//
//   "TLYB" | u8 version=1 | u8 flags=0 | u16 reserved | u32 payload_len |
//   u64 XXH3-64 of payload | payload
//   payload = str id | i64 created_ms | u16 tables |
//             per table: str name | u8 nkeys | str key_col* | u8 nmeasures |
//                        str measure_col* | u32 rows |
//                        per row: str key* | zigzag-varint128 measure*
//   str = u16 length | bytes
//
// The decoder checks everything (magic, version, flags and reserved bytes,
// length, checksum, every bound) and returns an error instead of guessing; a
// batch that fails goes to the dead-letter list, never silently away.
//
// XXH3 is not keyed: anything that can write to the stage-1 list can forge a
// valid checksum. So the decoder never allocates for a count it has not
// bounded by the bytes left (each count times its element's smallest
// encoding), and a caller can check each table's shape before its rows are
// built. Memory is then at most a small multiple of the input size.
#pragma once

#include "core/result.hpp"

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace tally::adapters {

enum class codec_errc : int {
  ok = 0,
  too_short,        // fewer bytes than a header
  bad_magic,        // not a tally batch
  unknown_version,  // written by a newer tally
  bad_length,       // header length disagrees with the bytes
  bad_checksum,     // payload corrupted
  truncated,        // a field runs past the end of the payload
  malformed,        // counts or lengths out of bounds, trailing bytes
};
const char* to_string(codec_errc code) noexcept;

inline constexpr uint8_t batch_format_version = 1;

struct batch_row {
  std::vector<std::string> keys;   // one per key column
  std::vector<__int128> values;    // one per measure column
};

struct batch_table {
  std::string name;
  std::vector<std::string> key_columns;
  std::vector<std::string> measure_columns;
  std::vector<batch_row> rows;
};

struct batch {
  std::string id;          // "<instance>:<seq>"
  int64_t created_ms = 0;
  std::vector<batch_table> tables;

  size_t row_count() const noexcept;
};

/// Encodes `b` (never fails: the writer only builds valid batches).
std::string encode_batch(const batch& b);

/// Checks a table's header (name and columns; rows still empty) before its
/// rows are read: "" to go on, else why the batch is refused (malformed).
using table_check = std::function<std::string(const batch_table&)>;

/// Decodes and verifies one encoded batch; `check`, when set, vets every
/// table before its rows are allocated.
result<batch> decode_batch(std::string_view bytes, const table_check& check = {});

/// Reads only the id of an encoded batch (after verifying its checksum).
result<std::string> peek_batch_id(std::string_view bytes);

/// Builds batches row by row and hands each one over as soon as it is full
/// (encodes to about `max_bytes`; a single row larger than that still gets
/// a batch of its own), so a caller forming many batches holds the rows of
/// one at a time. Rows of a table are added after its begin_table().
class batch_splitter {
public:
  using sink = std::function<void(batch&&)>;
  batch_splitter(size_t max_bytes, int64_t created_ms, sink done);

  void begin_table(const std::string& name, const std::vector<std::string>& key_columns,
                   const std::vector<std::string>& measure_columns);
  void add_row(batch_row&& r);
  /// Hands over the last batch, if it has rows.
  void finish();

private:
  void start_part();

  size_t max_bytes_;
  int64_t created_ms_;
  sink done_;
  batch part_;
  size_t used_ = 0;
  batch_table header_;                  // the current table's header, rows empty
  size_t header_bytes_ = 0;
  batch_table* cur_ = nullptr;          // the current table inside part_, if opened
};

/// Splits `b` so no part encodes to more than about `max_bytes` (a single
/// row larger than that still gets a batch of its own). Parts keep b's
/// tables and order; ids are left empty for the caller to assign.
std::vector<batch> split_batch(batch b, size_t max_bytes);

} // namespace tally::adapters
