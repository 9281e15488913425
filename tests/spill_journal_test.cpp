// tests/spill_journal_test.cpp — the spill journal against its contract:
// round trips, group commit, torn and corrupt tails, the size bound, the
// lock, clear/remove, listing, and a real SIGKILL in the middle of a write.
//
// Each test works in its own fresh directory under ::testing::TempDir().
// The suite is named after the binary, so `ctest -R spill_journal` finds
// every case gtest_discover_tests registers.
// The crash test re-executes this binary (see main at the bottom): the
// failpoint reads TALLY_FAILPOINT once per process, so only a fresh process
// image can be armed, and TALLY_FAILPOINT_SKIP=3 lets its first three
// appends through so it dies in the middle of the fourth.
#include "adapters/spill_journal.hpp"

#include <gtest/gtest.h>

#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using namespace tally::adapters;
namespace fs = std::filesystem;

constexpr uint64_t plenty = uint64_t{1} << 30;
constexpr const char* crash_child_env = "SPILL_JOURNAL_TEST_CRASH_CHILD";

// Deterministic payload bytes, NULs and high bytes included.
std::string make_payload(size_t index, size_t length) {
  std::string p(length, '\0');
  for (size_t i = 0; i < length; ++i)
    p[i] = static_cast<char>((index * 131 + i * 7) & 0xFF);
  return p;
}

uint64_t record_bytes(size_t payload_length) { return journal_record_overhead + payload_length; }

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::vector<std::string> read_all(const spill_journal& j) {
  std::vector<std::string> out;
  auto st = j.for_each([&](std::string_view p) {
    out.emplace_back(p);
    return true;
  });
  EXPECT_TRUE(st.ok()) << st.error().message;
  return out;
}

journal_errc code_of(const tally::status& st) { return static_cast<journal_errc>(st.error().code); }
template <class T>
journal_errc code_of(const tally::result<T>& r) {
  return static_cast<journal_errc>(r.error().code);
}

class spill_journal_test : public ::testing::Test {
protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "spill_journal_test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr) << std::strerror(errno);
    dir_ = tmpl;
    path_ = dir_ + "/default.test.journal";
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // Opens path_ and fails the test if that does not work.
  spill_journal open_ok(uint64_t max_bytes = plenty) {
    auto j = spill_journal::open(path_, max_bytes);
    EXPECT_TRUE(j.ok()) << j.error().message;
    return std::move(*j);
  }

  // Writes `payloads` to a fresh journal at path_ and closes it.
  void write_journal(const std::vector<std::string>& payloads) {
    auto j = open_ok();
    for (auto& p : payloads)
      ASSERT_TRUE(j.append(p).ok());
    ASSERT_TRUE(j.sync().ok());
  }

  std::string dir_;
  std::string path_;
};

TEST_F(spill_journal_test, RoundTripKeepsOrderAndCounts) {
  // The parent directories do not exist yet: open creates them, 0700.
  path_ = dir_ + "/spill/nested/default.test.journal";
  std::vector<std::string> payloads;
  uint64_t bytes = journal_header_bytes;
  {
    auto j = open_ok();
    EXPECT_EQ(j.records(), 0u);
    EXPECT_TRUE(j.empty());
    EXPECT_EQ(j.size_bytes(), journal_header_bytes);
    EXPECT_FALSE(j.recovery().tail_truncated);
    EXPECT_EQ(j.path(), path_);
    EXPECT_EQ(j.max_bytes(), plenty);
    for (size_t i = 0; i < 7; ++i) {
      payloads.push_back(make_payload(i, 1 + i * 997));
      ASSERT_TRUE(j.append(payloads.back()).ok());
      bytes += record_bytes(payloads.back().size());
    }
    ASSERT_TRUE(j.sync().ok());
    EXPECT_EQ(j.records(), payloads.size());
    EXPECT_EQ(j.size_bytes(), bytes);
    EXPECT_EQ(read_all(j), payloads);
  }
  struct stat st {};
  ASSERT_EQ(::stat((dir_ + "/spill").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  ASSERT_EQ(::stat((dir_ + "/spill/nested").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  ASSERT_EQ(::stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), bytes);
  EXPECT_EQ(read_bytes(path_).substr(0, journal_header_bytes), "TLYJRNL1");

  auto j = open_ok();
  EXPECT_EQ(j.recovery().records, payloads.size());
  EXPECT_EQ(j.recovery().bytes, bytes);
  EXPECT_FALSE(j.recovery().tail_truncated);
  EXPECT_EQ(j.recovery().truncated_bytes, 0u);
  EXPECT_TRUE(j.recovery().tail_reason.empty());
  EXPECT_EQ(j.records(), payloads.size());
  EXPECT_EQ(j.size_bytes(), bytes);
  EXPECT_EQ(read_all(j), payloads);

  // Appends after a reopen follow the recovered records.
  payloads.push_back("after reopen");
  ASSERT_TRUE(j.append(payloads.back()).ok());
  ASSERT_TRUE(j.sync().ok());
  EXPECT_EQ(read_all(j), payloads);
}

TEST_F(spill_journal_test, EmptyPayloadsAreRecords) {
  std::vector<std::string> payloads = {"", "", "x", ""};
  write_journal(payloads);
  auto j = open_ok();
  EXPECT_EQ(j.records(), 4u);
  EXPECT_FALSE(j.empty());
  EXPECT_EQ(j.size_bytes(), journal_header_bytes + 4 * journal_record_overhead + 1);
  EXPECT_FALSE(j.recovery().tail_truncated);
  EXPECT_EQ(read_all(j), payloads);
}

TEST_F(spill_journal_test, GroupCommitManyAppendsOneSync) {
  std::vector<std::string> payloads;
  {
    auto j = open_ok();
    for (size_t i = 0; i < 2000; ++i) {
      payloads.push_back(make_payload(i, i % 300));
      ASSERT_TRUE(j.append(payloads.back()).ok());
    }
    ASSERT_TRUE(j.sync().ok());
  }
  auto j = open_ok();
  EXPECT_EQ(j.recovery().records, payloads.size());
  EXPECT_FALSE(j.recovery().tail_truncated);
  EXPECT_EQ(read_all(j), payloads);
}

TEST_F(spill_journal_test, ForEachStopsWhenVisitReturnsFalse) {
  write_journal({"a", "b", "c", "d"});
  auto j = open_ok();
  std::vector<std::string> seen;
  auto st = j.for_each([&](std::string_view p) {
    seen.emplace_back(p);
    return seen.size() < 2;
  });
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(seen, (std::vector<std::string>{"a", "b"}));
}

TEST_F(spill_journal_test, TornTailAtEveryByteOfTheLastRecord) {
  const std::vector<std::string> prefix = {make_payload(1, 100), "", make_payload(2, 33)};
  const std::string last = make_payload(3, 40);
  write_journal({prefix[0], prefix[1], prefix[2], last});
  const std::string full = read_bytes(path_);
  const uint64_t last_start = full.size() - record_bytes(last.size());

  for (uint64_t cut = last_start; cut < full.size(); ++cut) {
    SCOPED_TRACE("file cut at byte " + std::to_string(cut));
    write_bytes(path_, full.substr(0, cut));
    {
      auto j = open_ok();
      EXPECT_EQ(j.records(), prefix.size());
      EXPECT_EQ(j.size_bytes(), last_start);
      EXPECT_EQ(j.recovery().records, prefix.size());
      EXPECT_EQ(j.recovery().bytes, last_start);
      EXPECT_EQ(j.recovery().tail_truncated, cut > last_start);
      EXPECT_EQ(j.recovery().truncated_bytes, cut - last_start);
      if (cut > last_start) {
        EXPECT_NE(j.recovery().tail_reason.find("record at offset " + std::to_string(last_start)),
                  std::string::npos)
            << j.recovery().tail_reason;
        EXPECT_NE(j.recovery().tail_reason.find("torn"), std::string::npos) << j.recovery().tail_reason;
      }
      // The torn bytes are gone from the disk, not just skipped.
      EXPECT_EQ(fs::file_size(path_), last_start);
      EXPECT_EQ(read_all(j), prefix);
      ASSERT_TRUE(j.append("new").ok());
      ASSERT_TRUE(j.sync().ok());
    }
    auto j = open_ok();
    EXPECT_FALSE(j.recovery().tail_truncated);
    auto want = prefix;
    want.push_back("new");
    EXPECT_EQ(read_all(j), want);
  }
}

TEST_F(spill_journal_test, FlippedByteInAMiddleRecordCutsFromThatRecord) {
  // No record marker follows a bad record, so recovery cannot know where
  // the next one starts: it keeps the prefix before the damage and reports
  // the cut. Every byte of the middle record (length, checksum, payload) is
  // covered by the checksum, so every single flip is caught.
  std::vector<std::string> payloads;
  for (size_t i = 0; i < 5; ++i)
    payloads.push_back(make_payload(i, 20));
  write_journal(payloads);
  const std::string full = read_bytes(path_);
  const uint64_t bad_start = journal_header_bytes + 2 * record_bytes(20);

  for (uint64_t at = bad_start; at < bad_start + record_bytes(20); ++at) {
    SCOPED_TRACE("flipped byte at " + std::to_string(at));
    std::string damaged = full;
    damaged[at] = static_cast<char>(damaged[at] ^ 0x10);
    write_bytes(path_, damaged);
    auto j = open_ok();
    EXPECT_EQ(j.records(), 2u);
    EXPECT_TRUE(j.recovery().tail_truncated);
    EXPECT_EQ(j.recovery().bytes, bad_start);
    EXPECT_EQ(j.recovery().truncated_bytes, full.size() - bad_start);
    EXPECT_NE(j.recovery().tail_reason.find("record at offset " + std::to_string(bad_start)), std::string::npos)
        << j.recovery().tail_reason;
    EXPECT_EQ(fs::file_size(path_), bad_start);
    EXPECT_EQ(read_all(j), (std::vector<std::string>{payloads[0], payloads[1]}));
  }
}

TEST_F(spill_journal_test, LengthAboveTheRecordLimitIsCorruption) {
  write_journal({"keep"});
  std::string bytes = read_bytes(path_);
  std::string bogus(journal_record_overhead + 16, '\0');
  uint32_t huge = journal_record_limit + 1;
  std::memcpy(bogus.data(), &huge, 4);
  write_bytes(path_, bytes + bogus);
  auto j = open_ok();
  EXPECT_EQ(j.records(), 1u);
  EXPECT_TRUE(j.recovery().tail_truncated);
  EXPECT_NE(j.recovery().tail_reason.find("exceeds the record limit"), std::string::npos)
      << j.recovery().tail_reason;
  EXPECT_EQ(read_all(j), std::vector<std::string>{"keep"});
}

TEST_F(spill_journal_test, WrongHeaderIsRefusedAndLeftUntouched) {
  struct wrong_file {
    std::string bytes;
    std::string message;
  };
  const std::vector<wrong_file> cases = {
      {"NOTAJRNL" + make_payload(0, 50), "not a tally spill journal"},
      {"TLYJRNL2" + make_payload(0, 50), "unknown journal format version '2'"},
      {"XY", "not a tally spill journal"},  // short, and not a prefix of the magic
      {"TLYJRNX", "not a tally spill journal"},
  };
  for (auto& c : cases) {
    SCOPED_TRACE(c.message);
    write_bytes(path_, c.bytes);
    auto j = spill_journal::open(path_, plenty);
    ASSERT_FALSE(j.ok());
    EXPECT_EQ(code_of(j), journal_errc::corrupt);
    EXPECT_NE(j.error().message.find(c.message), std::string::npos) << j.error().message;
    EXPECT_NE(j.error().message.find(path_), std::string::npos) << j.error().message;
    EXPECT_EQ(read_bytes(path_), c.bytes);
  }
}

TEST_F(spill_journal_test, CreationTornBeforeTheFirstSyncStartsAfresh) {
  // A crash between creating the file and its first sync can leave it empty
  // or holding part of the magic; nothing in it was ever acknowledged.
  for (std::string torn : {std::string(), std::string("TLY"), std::string("TLYJRNL")}) {
    SCOPED_TRACE("file holds '" + torn + "'");
    write_bytes(path_, torn);
    {
      auto j = open_ok();
      EXPECT_EQ(j.records(), 0u);
      EXPECT_EQ(j.size_bytes(), journal_header_bytes);
      EXPECT_EQ(j.recovery().tail_truncated, !torn.empty());
      if (!torn.empty()) {
        EXPECT_NE(j.recovery().tail_reason.find("header incomplete"), std::string::npos);
      }
      ASSERT_TRUE(j.append("first").ok());
      ASSERT_TRUE(j.sync().ok());
    }
    auto j = open_ok();
    EXPECT_FALSE(j.recovery().tail_truncated);
    EXPECT_EQ(read_all(j), std::vector<std::string>{"first"});
  }
}

TEST_F(spill_journal_test, MaxBytesRefusesTheAppendAndWritesNothing) {
  const uint64_t max = journal_header_bytes + 2 * record_bytes(100);
  auto j = open_ok(max);
  ASSERT_TRUE(j.append(make_payload(0, 100)).ok());
  ASSERT_TRUE(j.append(make_payload(1, 100)).ok());  // fills the bound exactly
  EXPECT_EQ(j.size_bytes(), max);
  for (size_t len : {size_t{100}, size_t{0}}) {
    auto st = j.append(make_payload(2, len));
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(code_of(st), journal_errc::full);
    EXPECT_NE(st.error().message.find("max_bytes"), std::string::npos) << st.error().message;
  }
  ASSERT_TRUE(j.sync().ok());
  EXPECT_EQ(j.records(), 2u);
  EXPECT_EQ(j.size_bytes(), max);
  EXPECT_EQ(fs::file_size(path_), max);

  ASSERT_TRUE(j.clear().ok());
  ASSERT_TRUE(j.append(make_payload(3, 100)).ok());
  ASSERT_TRUE(j.append(make_payload(4, 100)).ok());
  EXPECT_EQ(code_of(j.append("x")), journal_errc::full);
  ASSERT_TRUE(j.sync().ok());
  EXPECT_EQ(read_all(j), (std::vector<std::string>{make_payload(3, 100), make_payload(4, 100)}));
}

TEST_F(spill_journal_test, PayloadAboveTheRecordLimitIsTooLarge) {
  // A readable mapping of untouched zero pages: the size is real without
  // allocating half a gigabyte.
  const size_t len = size_t{journal_record_limit} + 1;
  void* mem = ::mmap(nullptr, len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  auto j = open_ok();
  auto st = j.append(std::string_view(static_cast<const char*>(mem), len));
  ::munmap(mem, len);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(code_of(st), journal_errc::too_large);
  EXPECT_EQ(j.records(), 0u);
  EXPECT_EQ(fs::file_size(path_), journal_header_bytes);
}

TEST_F(spill_journal_test, SecondOpenInTheSameProcessIsLocked) {
  // flock locks belong to the open file description, so a second open() of
  // the same path conflicts even inside one process.
  auto first = open_ok();
  ASSERT_TRUE(first.append("held").ok());
  {
    auto second = spill_journal::open(path_, plenty);
    ASSERT_FALSE(second.ok());
    EXPECT_EQ(code_of(second), journal_errc::locked);
    EXPECT_NE(second.error().message.find(path_), std::string::npos);
  }
  // A move hands the lock over; it is released when the owner dies.
  auto moved = std::move(first);
  EXPECT_EQ(code_of(spill_journal::open(path_, plenty)), journal_errc::locked);
  ASSERT_TRUE(moved.sync().ok());
  { auto gone = std::move(moved); }
  auto again = open_ok();
  EXPECT_EQ(read_all(again), std::vector<std::string>{"held"});
}

TEST_F(spill_journal_test, OpenHeldByAnotherProcessIsLocked) {
  int ready[2], release[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(release), 0);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(ready[0]);
    ::close(release[1]);
    auto j = spill_journal::open(path_, plenty);
    char ok = j.ok() ? 'y' : 'n';
    (void)!::write(ready[1], &ok, 1);
    char byte;
    (void)!::read(release[0], &byte, 1);  // returns 0 when the parent closes its end
    ::_exit(0);
  }
  ::close(ready[1]);
  ::close(release[0]);
  char ok = 0;
  ASSERT_EQ(::read(ready[0], &ok, 1), 1);
  ASSERT_EQ(ok, 'y');
  auto j = spill_journal::open(path_, plenty);
  ASSERT_FALSE(j.ok());
  EXPECT_EQ(code_of(j), journal_errc::locked);
  ::close(release[1]);
  int wstatus = 0;
  ASSERT_EQ(::waitpid(child, &wstatus, 0), child);
  ::close(ready[0]);
  EXPECT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0);
  open_ok();  // the child's exit released the lock
}

TEST_F(spill_journal_test, ClearKeepsOnlyTheHeader) {
  auto j = open_ok();
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(j.append(make_payload(static_cast<size_t>(i), 64)).ok());
  ASSERT_TRUE(j.sync().ok());
  ASSERT_TRUE(j.clear().ok());
  EXPECT_TRUE(j.empty());
  EXPECT_EQ(j.size_bytes(), journal_header_bytes);
  EXPECT_EQ(fs::file_size(path_), journal_header_bytes);
  EXPECT_TRUE(read_all(j).empty());
  ASSERT_TRUE(j.append("after clear").ok());
  ASSERT_TRUE(j.sync().ok());
  { auto closed = std::move(j); }
  auto reopened = open_ok();
  EXPECT_FALSE(reopened.recovery().tail_truncated);
  EXPECT_EQ(read_all(reopened), std::vector<std::string>{"after clear"});
}

TEST_F(spill_journal_test, RemoveUnlinksAndReleases) {
  auto j = open_ok();
  ASSERT_TRUE(j.append("replayed").ok());
  ASSERT_TRUE(j.sync().ok());
  ASSERT_TRUE(j.remove().ok());
  EXPECT_FALSE(fs::exists(path_));
  EXPECT_EQ(code_of(j.append("late")), journal_errc::io_error);
  EXPECT_EQ(code_of(j.sync()), journal_errc::io_error);
  EXPECT_EQ(code_of(j.for_each([](std::string_view) { return true; })), journal_errc::io_error);
  EXPECT_EQ(code_of(j.remove()), journal_errc::io_error);
  EXPECT_EQ(j.path(), path_);

  auto fresh = open_ok();  // same path: a new, empty journal
  EXPECT_TRUE(fresh.empty());
  EXPECT_FALSE(fresh.recovery().tail_truncated);
}

TEST_F(spill_journal_test, FailedWriteLeavesNothingBehind) {
  // RLIMIT_FSIZE makes the payload write stop part-way (a short write, then
  // EFBIG), as a full disk would. It is per process, so a child does it.
  write_journal({"one", "two"});
  const uint64_t good = fs::file_size(path_);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::signal(SIGXFSZ, SIG_IGN);  // EFBIG instead of a signal
    auto j = spill_journal::open(path_, plenty);
    if (!j.ok())
      ::_exit(10);
    rlimit lim{};
    ::getrlimit(RLIMIT_FSIZE, &lim);
    rlimit tight = lim;
    tight.rlim_cur = good + journal_record_overhead + 10;  // header fits, payload does not
    if (::setrlimit(RLIMIT_FSIZE, &tight) != 0)
      ::_exit(11);
    auto st = j->append(make_payload(9, 100));
    if (st.ok() || static_cast<journal_errc>(st.error().code) != journal_errc::io_error)
      ::_exit(12);
    struct stat fst {};
    if (::stat(path_.c_str(), &fst) != 0 || static_cast<uint64_t>(fst.st_size) != good)
      ::_exit(13);  // the partial record stayed
    if (j->size_bytes() != good || j->records() != 2)
      ::_exit(14);
    if (::setrlimit(RLIMIT_FSIZE, &lim) != 0)
      ::_exit(15);
    if (!j->append("three").ok() || !j->sync().ok())
      ::_exit(16);
    ::_exit(0);
  }
  int wstatus = 0;
  ASSERT_EQ(::waitpid(child, &wstatus, 0), child);
  ASSERT_TRUE(WIFEXITED(wstatus)) << "child died of signal " << WTERMSIG(wstatus);
  ASSERT_EQ(WEXITSTATUS(wstatus), 0) << "child check failed (exit code names it)";
  auto j = open_ok();
  EXPECT_FALSE(j.recovery().tail_truncated) << j.recovery().tail_reason;
  EXPECT_EQ(read_all(j), (std::vector<std::string>{"one", "two", "three"}));
}

TEST_F(spill_journal_test, JournalPathEscapesNames) {
  EXPECT_EQ(journal_path("/var/spill", "default", "host-1"), "/var/spill/default.host-1.journal");
  EXPECT_EQ(journal_path("/var/spill/", "default", "host-1"), "/var/spill/default.host-1.journal");
  // Dots in the namespace would make "a" match the journals of "a.b".
  EXPECT_EQ(journal_path("d", "a.b", "h.example.com-7"), "d/a%2Eb.h.example.com-7.journal");
  EXPECT_EQ(journal_path("d", "n/s%", "i/../x"), "d/n%2Fs%25.i%2F..%2Fx.journal");
}

TEST_F(spill_journal_test, ListJournalsFiltersByNamespaceOldestFirst) {
  auto touch = [&](const std::string& path, time_t mtime) {
    write_bytes(path, "");
    timespec times[2] = {{mtime, 0}, {mtime, 0}};
    ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
  };
  const std::string a1 = journal_path(dir_, "a", "i1");
  const std::string a2 = journal_path(dir_, "a", "i2");
  const std::string a3 = journal_path(dir_, "a", "host.example.com-3");
  touch(a1, 3000);
  touch(a2, 1000);
  touch(a3, 2000);
  touch(journal_path(dir_, "a.b", "x"), 500);   // namespace "a.b", not "a"
  touch(journal_path(dir_, "ab", "i1"), 500);   // namespace "ab"
  touch(dir_ + "/a.i1.journal.tmp", 500);        // not a journal name
  touch(dir_ + "/a.notes.txt", 500);
  touch(dir_ + "/a..journal", 500);              // no instance
  fs::create_directory(dir_ + "/a.dir.journal");  // not a regular file

  auto listed = list_journals(dir_, "a");
  ASSERT_TRUE(listed.ok()) << listed.error().message;
  EXPECT_EQ(*listed, (std::vector<std::string>{a2, a3, a1}));

  auto dotted = list_journals(dir_, "a.b");
  ASSERT_TRUE(dotted.ok());
  EXPECT_EQ(*dotted, std::vector<std::string>{journal_path(dir_, "a.b", "x")});

  auto none = list_journals(dir_, "other");
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());

  auto missing = list_journals(dir_ + "/does-not-exist", "a");
  ASSERT_TRUE(missing.ok());
  EXPECT_TRUE(missing->empty());

  auto not_dir = list_journals(a1, "a");
  ASSERT_FALSE(not_dir.ok());
  EXPECT_EQ(code_of(not_dir), journal_errc::io_error);
}

TEST_F(spill_journal_test, KilledInTheMiddleOfAWriteLosesOnlyThatRecord) {
#ifndef TALLY_FAILPOINTS
  GTEST_SKIP() << "built with -DTALLY_FAILPOINTS=OFF";
#endif
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // A fresh image, so the failpoint reads the variables below (see main).
    ::setenv(crash_child_env, path_.c_str(), 1);
    ::setenv("TALLY_FAILPOINT", "journal_mid_write", 1);
    ::setenv("TALLY_FAILPOINT_SKIP", "3", 1);
    ::execl("/proc/self/exe", "spill_journal_test", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int wstatus = 0;
  ASSERT_EQ(::waitpid(child, &wstatus, 0), child);
  ASSERT_TRUE(WIFSIGNALED(wstatus)) << "child exited with " << WEXITSTATUS(wstatus);
  ASSERT_EQ(WTERMSIG(wstatus), SIGKILL);

  auto j = open_ok();
  EXPECT_EQ(j.records(), 3u);
  EXPECT_TRUE(j.recovery().tail_truncated);
  // The record header reached the file, its payload did not.
  EXPECT_EQ(j.recovery().truncated_bytes, journal_record_overhead);
  EXPECT_NE(j.recovery().tail_reason.find("runs past end of file"), std::string::npos)
      << j.recovery().tail_reason;
  EXPECT_EQ(read_all(j), (std::vector<std::string>{make_payload(0, 500), make_payload(1, 500), make_payload(2, 500)}));
  ASSERT_TRUE(j.append("after the crash").ok());
  ASSERT_TRUE(j.sync().ok());
}

// The crash child: three synced appends, then a fourth that the armed
// failpoint kills between the record header and the payload. Returns only
// if the failpoint did not fire.
int run_crash_child(const char* path) {
  auto j = spill_journal::open(path, plenty);
  if (!j.ok())
    return 2;
  for (size_t i = 0; i < 3; ++i)
    if (!j->append(make_payload(i, 500)).ok())
      return 3;
  if (!j->sync().ok())
    return 4;
  (void)j->append(make_payload(3, 500));
  return 5;
}

} // namespace

// Not gtest_main's: the crash test re-executes this binary as its child.
int main(int argc, char** argv) {
  if (const char* path = std::getenv(crash_child_env))
    return run_crash_child(path);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
