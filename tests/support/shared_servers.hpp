// tests/support/shared_servers.hpp — a suite whose tests share one
// redis-server and one postgres (an initdb per test would dominate the run).
// Each test keeps apart by its own namespace and schema.
#pragma once

#include "tests/harness/servers.hpp"

#include <gtest/gtest.h>

namespace tally::testing {

class shared_servers : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    redis_ = new redis_server();
    postgres_ = new postgres_server();
  }
  static void TearDownTestSuite() {
    delete postgres_;
    postgres_ = nullptr;
    delete redis_;
    redis_ = nullptr;
  }

  static inline redis_server* redis_ = nullptr;
  static inline postgres_server* postgres_ = nullptr;
};

} // namespace tally::testing
