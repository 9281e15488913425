// core/result.hpp — a value or an error, for layers that do not link CAF.
//
// adapters/ may not include CAF, so it cannot return caf::expected. This is
// the smallest type that carries either a T or an error_info (code, message,
// and for Postgres the SQLSTATE), with no exceptions.
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace tally {

/// An error from an adapter: a layer-specific code, a human message, and
/// (Postgres only) the five-character SQLSTATE.
struct error_info {
  int code = 0;
  std::string message;
  std::string sqlstate;
};

template <class T>
class result {
public:
  result(T value) : v_(std::move(value)) {}
  result(error_info err) : v_(std::move(err)) {}

  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }

  T& value() { assert(ok()); return std::get<0>(v_); }
  const T& value() const { assert(ok()); return std::get<0>(v_); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() { return value(); }

  const error_info& error() const { assert(!ok()); return std::get<1>(v_); }

private:
  std::variant<T, error_info> v_;
};

/// result<void>: success, or an error.
struct status {
  status() = default;
  status(error_info err) : err_(std::move(err)), failed_(true) {}
  bool ok() const noexcept { return !failed_; }
  explicit operator bool() const noexcept { return ok(); }
  const error_info& error() const { return err_; }

private:
  error_info err_;
  bool failed_ = false;
};

} // namespace tally
