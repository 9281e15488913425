// adapters/batch_codec.cpp — see batch_codec.hpp for the format.
#include "adapters/batch_codec.hpp"

#include <algorithm>
#include <cstring>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace tally::adapters {

namespace {

constexpr char magic[4] = {'T', 'L', 'Y', 'B'};
constexpr size_t header_size = 4 + 1 + 1 + 2 + 4 + 8;

error_info fail(codec_errc code, std::string what) {
  return error_info{static_cast<int>(code), std::string(to_string(code)) + ": " + what, {}};
}

template <class T>
void put_int(std::string& out, T v) {
  char buf[sizeof(T)];
  std::memcpy(buf, &v, sizeof(T));  // x86-64 and aarch64 are little-endian
  out.append(buf, sizeof(T));
}

void put_str(std::string& out, std::string_view s) {
  put_int<uint16_t>(out, static_cast<uint16_t>(s.size()));
  out.append(s.data(), s.size());
}

void put_varint(std::string& out, __int128 v) {
  // zigzag, then 7 bits a byte
  unsigned __int128 z = (static_cast<unsigned __int128>(v) << 1) ^ static_cast<unsigned __int128>(v >> 127);
  while (z >= 0x80) {
    out.push_back(static_cast<char>((z & 0x7F) | 0x80));
    z >>= 7;
  }
  out.push_back(static_cast<char>(z));
}

size_t varint_size(__int128 v) {
  unsigned __int128 z = (static_cast<unsigned __int128>(v) << 1) ^ static_cast<unsigned __int128>(v >> 127);
  size_t n = 1;
  while (z >= 0x80) {
    z >>= 7;
    ++n;
  }
  return n;
}

/// A bounds-checked reader over the payload.
class reader {
public:
  explicit reader(std::string_view data) : data_(data) {}
  template <class T>
  bool get(T& v) {
    if (data_.size() - pos_ < sizeof(T))
      return false;
    std::memcpy(&v, data_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool get_str(std::string& s) {
    uint16_t n = 0;
    if (!get(n) || data_.size() - pos_ < n)
      return false;
    s.assign(data_.data() + pos_, n);
    pos_ += n;
    return true;
  }
  /// A zigzag varint of at most 128 bits: 19 bytes, the last carrying at
  /// most 2 bits. A longer or overflowing one is refused, not truncated.
  bool get_varint(__int128& v) {
    unsigned __int128 z = 0;
    for (int shift = 0; shift < 133; shift += 7) {
      if (pos_ >= data_.size())
        return false;
      auto byte = static_cast<uint8_t>(data_[pos_++]);
      if (shift == 126 && byte > 0x03)
        return false;
      z |= static_cast<unsigned __int128>(byte & 0x7F) << shift;
      if ((byte & 0x80) == 0) {
        v = static_cast<__int128>(z >> 1) ^ -static_cast<__int128>(z & 1);
        return true;
      }
    }
    return false;
  }
  size_t left() const { return data_.size() - pos_; }
  bool at_end() const { return pos_ == data_.size(); }

private:
  std::string_view data_;
  size_t pos_ = 0;
};

size_t row_bytes(const batch_row& r) {
  size_t n = 0;
  for (auto& k : r.keys)
    n += 2 + k.size();
  for (auto v : r.values)
    n += varint_size(v);
  return n;
}

size_t table_header_bytes(const batch_table& t) {
  size_t n = 2 + t.name.size() + 1 + 1 + 4;
  for (auto& c : t.key_columns)
    n += 2 + c.size();
  for (auto& c : t.measure_columns)
    n += 2 + c.size();
  return n;
}

} // namespace

const char* to_string(codec_errc code) noexcept {
  switch (code) {
    case codec_errc::ok: return "ok";
    case codec_errc::too_short: return "too_short";
    case codec_errc::bad_magic: return "bad_magic";
    case codec_errc::unknown_version: return "unknown_version";
    case codec_errc::bad_length: return "bad_length";
    case codec_errc::bad_checksum: return "bad_checksum";
    case codec_errc::truncated: return "truncated";
    case codec_errc::malformed: return "malformed";
  }
  return "unknown";
}

size_t batch::row_count() const noexcept {
  size_t n = 0;
  for (auto& t : tables)
    n += t.rows.size();
  return n;
}

std::string encode_batch(const batch& b) {
  std::string payload;
  size_t estimate = 2 + b.id.size() + 8 + 2;
  for (auto& t : b.tables) {
    estimate += table_header_bytes(t);
    for (auto& r : t.rows)
      estimate += row_bytes(r);
  }
  payload.reserve(estimate);
  put_str(payload, b.id);
  put_int<int64_t>(payload, b.created_ms);
  put_int<uint16_t>(payload, static_cast<uint16_t>(b.tables.size()));
  for (auto& t : b.tables) {
    put_str(payload, t.name);
    put_int<uint8_t>(payload, static_cast<uint8_t>(t.key_columns.size()));
    for (auto& c : t.key_columns)
      put_str(payload, c);
    put_int<uint8_t>(payload, static_cast<uint8_t>(t.measure_columns.size()));
    for (auto& c : t.measure_columns)
      put_str(payload, c);
    put_int<uint32_t>(payload, static_cast<uint32_t>(t.rows.size()));
    for (auto& r : t.rows) {
      for (auto& k : r.keys)
        put_str(payload, k);
      for (auto v : r.values)
        put_varint(payload, v);
    }
  }
  std::string out;
  out.reserve(header_size + payload.size());
  out.append(magic, 4);
  put_int<uint8_t>(out, batch_format_version);
  put_int<uint8_t>(out, 0);
  put_int<uint16_t>(out, 0);
  put_int<uint32_t>(out, static_cast<uint32_t>(payload.size()));
  put_int<uint64_t>(out, XXH3_64bits(payload.data(), payload.size()));
  out += payload;
  return out;
}

namespace {

result<std::string_view> verified_payload(std::string_view bytes) {
  if (bytes.size() < header_size)
    return fail(codec_errc::too_short, std::to_string(bytes.size()) + " bytes");
  if (std::memcmp(bytes.data(), magic, 4) != 0)
    return fail(codec_errc::bad_magic, "not a tally batch");
  auto version = static_cast<uint8_t>(bytes[4]);
  if (version != batch_format_version)
    return fail(codec_errc::unknown_version, "version " + std::to_string(version));
  if (bytes[5] != 0 || bytes[6] != 0 || bytes[7] != 0)
    return fail(codec_errc::malformed, "flags or reserved bytes set (this version defines none)");
  uint32_t length = 0;
  uint64_t checksum = 0;
  std::memcpy(&length, bytes.data() + 8, 4);
  std::memcpy(&checksum, bytes.data() + 12, 8);
  if (bytes.size() - header_size != length)
    return fail(codec_errc::bad_length, "header says " + std::to_string(length) + ", have "
                                          + std::to_string(bytes.size() - header_size));
  auto payload = bytes.substr(header_size);
  if (XXH3_64bits(payload.data(), payload.size()) != checksum)
    return fail(codec_errc::bad_checksum, "checksum mismatch");
  return payload;
}

} // namespace

result<std::string> peek_batch_id(std::string_view bytes) {
  auto payload = verified_payload(bytes);
  if (!payload)
    return payload.error();
  reader in(*payload);
  std::string id;
  if (!in.get_str(id))
    return fail(codec_errc::truncated, "batch id");
  return id;
}

result<batch> decode_batch(std::string_view bytes, const table_check& check) {
  auto payload = verified_payload(bytes);
  if (!payload)
    return payload.error();
  reader in(*payload);
  batch b;
  uint16_t ntables = 0;
  if (!in.get_str(b.id) || !in.get(b.created_ms) || !in.get(ntables))
    return fail(codec_errc::truncated, "batch header");
  if (b.id.empty())
    return fail(codec_errc::malformed, "empty batch id");
  // The smallest table: empty name, no columns, a row count.
  constexpr size_t min_table_bytes = 2 + 1 + 1 + 4;
  if (ntables > in.left() / min_table_bytes)
    return fail(codec_errc::malformed, std::to_string(ntables) + " tables in " + std::to_string(in.left()) + " bytes");
  b.tables.reserve(std::min<size_t>(ntables, 8));  // grows with tables actually read
  for (uint16_t ti = 0; ti < ntables; ++ti) {
    auto& t = b.tables.emplace_back();
    uint8_t nkeys = 0, nmeasures = 0;
    uint32_t nrows = 0;
    if (!in.get_str(t.name) || !in.get(nkeys))
      return fail(codec_errc::truncated, "table header");
    // A column name takes at least its 2 length bytes.
    if (nkeys > in.left() / 2)
      return fail(codec_errc::truncated, "key column names");
    t.key_columns.resize(nkeys);
    for (auto& c : t.key_columns)
      if (!in.get_str(c))
        return fail(codec_errc::truncated, "key column name");
    if (!in.get(nmeasures))
      return fail(codec_errc::truncated, "measure count");
    if (nmeasures > in.left() / 2)
      return fail(codec_errc::truncated, "measure column names");
    t.measure_columns.resize(nmeasures);
    for (auto& c : t.measure_columns)
      if (!in.get_str(c))
        return fail(codec_errc::truncated, "measure column name");
    if (!in.get(nrows))
      return fail(codec_errc::truncated, "row count");
    if (check) {
      if (auto why = check(t); !why.empty())
        return fail(codec_errc::malformed, why);
    }
    // A row takes at least 2 bytes per key and 1 per measure; a table whose
    // rows would take none cannot hold any.
    size_t min_row_bytes = 2 * size_t{nkeys} + nmeasures;
    if (nrows > 0 && (min_row_bytes == 0 || nrows > in.left() / min_row_bytes))
      return fail(codec_errc::malformed, "table '" + t.name + "': " + std::to_string(nrows) + " rows of at least "
                                           + std::to_string(min_row_bytes) + " bytes in " + std::to_string(in.left()));
    t.rows.resize(nrows);
    for (auto& r : t.rows) {
      r.keys.resize(nkeys);
      for (auto& k : r.keys)
        if (!in.get_str(k))
          return fail(codec_errc::truncated, "row key");
      r.values.resize(nmeasures);
      for (auto& v : r.values)
        if (!in.get_varint(v))
          return fail(codec_errc::truncated, "row measure (cut off, or longer than 128 bits)");
    }
  }
  if (!in.at_end())
    return fail(codec_errc::malformed, "trailing bytes");
  return b;
}

batch_splitter::batch_splitter(size_t max_bytes, int64_t created_ms, sink done)
  : max_bytes_(max_bytes), created_ms_(created_ms), done_(std::move(done)) {
  start_part();
}

void batch_splitter::start_part() {
  part_ = batch{};
  part_.created_ms = created_ms_;
  used_ = header_size + 2 + 64 + 8 + 2;  // generous for the id
  cur_ = nullptr;
}

void batch_splitter::begin_table(const std::string& name, const std::vector<std::string>& key_columns,
                                 const std::vector<std::string>& measure_columns) {
  header_ = batch_table{name, key_columns, measure_columns, {}};
  header_bytes_ = table_header_bytes(header_);
  cur_ = nullptr;
}

void batch_splitter::add_row(batch_row&& r) {
  size_t rb = row_bytes(r);
  if (cur_ == nullptr || used_ + rb > max_bytes_) {
    // A full part goes now; so does one that could not take this table's
    // header and first row (unless it is still empty).
    if (cur_ != nullptr || (used_ + header_bytes_ + rb > max_bytes_ && part_.row_count() > 0)) {
      done_(std::move(part_));
      start_part();
    }
    part_.tables.push_back(header_);
    cur_ = &part_.tables.back();
    used_ += header_bytes_;
  }
  cur_->rows.push_back(std::move(r));
  used_ += rb;
}

void batch_splitter::finish() {
  if (part_.row_count() > 0)
    done_(std::move(part_));
  start_part();
}

std::vector<batch> split_batch(batch b, size_t max_bytes) {
  std::vector<batch> parts;
  batch_splitter splitter(max_bytes, b.created_ms, [&](batch&& p) { parts.push_back(std::move(p)); });
  for (auto& t : b.tables) {
    splitter.begin_table(t.name, t.key_columns, t.measure_columns);
    for (auto& r : t.rows)
      splitter.add_row(std::move(r));
  }
  splitter.finish();
  if (parts.empty()) {  // an empty batch is still one (empty) part
    batch p;
    p.created_ms = b.created_ms;
    parts.push_back(std::move(p));
  }
  return parts;
}

} // namespace tally::adapters
