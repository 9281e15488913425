// tests/fuzz/spill_journal_fuzz.cpp — libFuzzer target for the spill
// journal's reader: open()'s recovery scan and for_each (adapters/
// spill_journal), over files a crash or a bad disk could leave.
//
// The first input byte picks how the rest becomes the file:
//   0: as it is (any header, any records);
//   1: the journal magic, then the rest as records (checksums must be forged);
//   2: the magic, then the rest read as chunks "u8 n, n bytes" each written
//      as a correct record, and a last chunk shorter than it says written
//      raw: a torn tail after good records, the damage a crash causes.
// Properties:
//  * a wrong header is refused as corrupt and the file is left as it was;
//  * otherwise open() keeps a prefix: size_bytes() is the file's size on
//    disk, for_each visits records() records, and in mode 2 exactly the
//    complete chunks, in order, with their bytes;
//  * recovery is idempotent: a second open finds nothing to cut and the
//    same records;
//  * an append after recovery is read back after the recovered records.
#include "adapters/spill_journal.hpp"
#include "tests/fuzz/fuzz_check.hpp"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

#define XXH_INLINE_ALL
#include <xxhash.h>

using namespace tally::adapters;

namespace {

constexpr char magic[] = "TLYJRNL1";

const std::string& scratch_dir() {
  // Never destroyed: the exit handler below still needs it.
  static const std::string* dir = [] {
    const char* base = std::getenv("TMPDIR");
    std::string templ = std::string(base && *base ? base : "/tmp") + "/tally-journal-fuzz-XXXXXX";
    std::vector<char> buf(templ.begin(), templ.end());
    buf.push_back('\0');
    if (::mkdtemp(buf.data()) == nullptr)
      std::abort();
    auto* made = new std::string(buf.data());
    std::atexit([] {
      ::unlink((scratch_dir() + "/j").c_str());
      ::rmdir(scratch_dir().c_str());
    });
    return made;
  }();
  return *dir;
}

std::string record(std::string_view payload) {
  std::string out;
  uint32_t len = static_cast<uint32_t>(payload.size());
  char lenb[4];
  std::memcpy(lenb, &len, 4);
  std::string summed(lenb, 4);
  summed.append(payload);
  uint64_t sum = XXH3_64bits(summed.data(), summed.size());
  char sumb[8];
  std::memcpy(sumb, &sum, 8);
  out.append(lenb, 4);
  out.append(sumb, 8);
  out.append(payload);
  return out;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::vector<std::string> all_records(const spill_journal& j) {
  std::vector<std::string> out;
  auto st = j.for_each([&](std::string_view p) {
    out.emplace_back(p);
    return true;
  });
  FUZZ_CHECK(st.ok());
  return out;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* bytes, size_t size) {
  if (size == 0)
    return 0;
  const int mode = bytes[0] % 3;
  std::string_view rest(reinterpret_cast<const char*>(bytes) + 1, size - 1);
  std::string file;
  std::vector<std::string> expected;
  bool know_expected = false;
  if (mode == 0) {
    file.assign(rest);
  } else if (mode == 1) {
    file = std::string(magic, 8);
    file.append(rest);
  } else {
    file = std::string(magic, 8);
    know_expected = true;
    size_t i = 0;
    while (i < rest.size()) {
      size_t n = static_cast<uint8_t>(rest[i]);
      if (i + 1 + n > rest.size()) {
        // Torn: the record header and part of the payload reached the disk.
        std::string torn = record(rest.substr(i + 1));
        torn.resize(std::min(torn.size(), 12 + (rest.size() - i - 1)) - 1);
        file += torn;
        break;
      }
      expected.emplace_back(rest.substr(i + 1, n));
      file += record(expected.back());
      i += 1 + n;
    }
  }

  const std::string path = scratch_dir() + "/j";
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(file.data(), static_cast<std::streamsize>(file.size()));
  }
  const uint64_t max_bytes = 1u << 20;

  std::vector<std::string> kept;
  {
    auto j = spill_journal::open(path, max_bytes);
    if (!j.ok()) {
      FUZZ_CHECK(j.error().code == static_cast<int>(journal_errc::corrupt));
      FUZZ_CHECK(read_file(path) == file);  // a foreign file is never touched
      FUZZ_CHECK(mode == 0);
      ::unlink(path.c_str());
      return 0;
    }
    struct stat st {};
    FUZZ_CHECK(::stat(path.c_str(), &st) == 0);
    FUZZ_CHECK(static_cast<uint64_t>(st.st_size) == j->size_bytes());
    FUZZ_CHECK(j->recovery().bytes == j->size_bytes());
    kept = all_records(j.value());
    FUZZ_CHECK(kept.size() == j->records());
    FUZZ_CHECK(kept.size() == j->recovery().records);
    if (know_expected)
      FUZZ_CHECK(kept == expected);
    // What is kept is a prefix of what was there.
    std::string now = read_file(path);
    if (file.size() >= 8)
      FUZZ_CHECK(file.compare(0, now.size(), now) == 0);
    // A file shorter than the header is a torn creation: its header is
    // written again, whatever recovery calls it.
    if (file.size() >= 8)
      FUZZ_CHECK(j->recovery().tail_truncated == (now.size() < file.size()));
  }
  {
    auto j = spill_journal::open(path, max_bytes);
    FUZZ_CHECK(j.ok());
    FUZZ_CHECK(!j->recovery().tail_truncated);
    FUZZ_CHECK(all_records(j.value()) == kept);
    FUZZ_CHECK(j->append("appended after recovery").ok());
    FUZZ_CHECK(j->sync().ok());
    kept.emplace_back("appended after recovery");
    FUZZ_CHECK(all_records(j.value()) == kept);
  }
  ::unlink(path.c_str());
  return 0;
}
