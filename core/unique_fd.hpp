// core/unique_fd.hpp — owns a POSIX file descriptor, closes it once.
//
// The spill journal's file and the test harness's sockets and pipes: every
// descriptor has one owner and is closed on every path, like the C handles
// in adapters/ are (header-only; POSIX close() only).
#pragma once

#include <unistd.h>

#include <utility>

namespace tally {

class unique_fd {
public:
  unique_fd() = default;
  explicit unique_fd(int fd) noexcept : fd_(fd) {}
  unique_fd(unique_fd&& other) noexcept : fd_(other.release()) {}
  unique_fd& operator=(unique_fd&& other) noexcept {
    reset(other.release());
    return *this;
  }
  unique_fd(const unique_fd&) = delete;
  unique_fd& operator=(const unique_fd&) = delete;
  ~unique_fd() { reset(); }

  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  /// Gives the descriptor up without closing it.
  int release() noexcept { return std::exchange(fd_, -1); }
  /// Closes the owned descriptor (if any) and owns `fd` instead. close() is
  /// not retried on EINTR: Linux releases the descriptor anyway.
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0)
      ::close(fd_);
    fd_ = fd;
  }

private:
  int fd_ = -1;
};

} // namespace tally
