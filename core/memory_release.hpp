// core/memory_release.hpp — giving a burst's freed memory back to the OS.
//
// glibc keeps what its arenas freed for reuse. After a flood of distinct
// keys (the writer's row maps, the flusher's decoded batches, each in its
// own thread's arena) tallyd's RSS stayed at 148 MB, where the heap was
// back near the 30 MB of an idle process (tallyd_flood_test). An operator
// reads that as a leak, and a container limit counts it. The threads that
// free a burst's memory say how much they handled; once enough has passed
// through and a few seconds have gone by since the last release, the
// allocator returns its free pages (malloc_trim: 0.2-5 ms measured here,
// and the pages fault back in only if a next burst needs them).
#pragma once

#include <cstddef>

namespace tally {

/// Adds `bytes` (an estimate of what a cycle allocated and freed) to the
/// work since the last release; releases free memory when that reaches
/// release_after_bytes and release_min_gap_ms has passed. Thread-safe;
/// at most one caller releases at a time. A no-op without glibc.
void release_memory_after(size_t bytes) noexcept;

constexpr size_t release_after_bytes = size_t{8} << 20;
constexpr long long release_min_gap_ms = 5000;

} // namespace tally
