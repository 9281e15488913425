// tests/fuzz/fuzz_check.hpp — what a fuzz target does when a property fails.
//
// A property that does not hold must stop the run the way a sanitizer
// finding does: libFuzzer keeps the input as crash-<sha1> and exits non-zero.
// abort() does exactly that; the line before it says which property failed,
// so a reproducer in CI's log is readable without a debugger.
#pragma once

#include <cstdio>
#include <cstdlib>

#define FUZZ_CHECK(cond)                                                              \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      std::fprintf(stderr, "property failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                   \
    }                                                                                 \
  } while (0)
